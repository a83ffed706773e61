#!/usr/bin/env bash
# scripts/watch-leases.sh NETWORK — run on a node by `vmctl watch-ip`, for as long as its SSH
# channel stays open. Prints the DHCP leases of libvirt network NETWORK, as libvirt's lease
# status file holds them (JSON, put on one line after "leases "), once at start and again each
# time they change. The file is read every 0.2 s with shell builtins only (no process per look),
# and the script ends as soon as its standard input closes: when the watcher stops or its
# connection dies, nothing is left running on the node.
# Exit 3: the network does not exist or has no bridge (nothing to follow; the watcher polls).
set -uo pipefail

net=${1:?usage: watch-leases.sh NETWORK}
bridge=
while read -r key value; do
  [[ $key == Bridge: ]] && bridge=$value
done < <(virsh -q -c qemu:///system net-info "$net" 2>/dev/null)
if [[ -z $bridge ]]; then
  echo "watch-leases: libvirt network $net not found, or it has no bridge" >&2
  exit 3
fi
file=/var/lib/libvirt/dnsmasq/$bridge.status # written by libvirt's leaseshelper (dnsmasq)

last=unread
while :; do
  now='[]'
  [[ -r $file ]] && { IFS= read -r -d '' now <"$file" || true; }
  if [[ $now != "$last" ]]; then
    last=$now
    printf 'leases %s\n' "${now//$'\n'/ }" || exit 0 # the reader is gone
  fi
  read -r -t 0.2 -u 0 _
  (($? > 128)) || exit 0 # not a timeout: standard input closed (or spoke): the watcher is gone
done

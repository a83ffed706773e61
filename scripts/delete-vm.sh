#!/usr/bin/env bash
# delete-vm.sh — runs ON a virtualization node: stops and removes a VM made by create-vm.sh.
# Usage: delete-vm.sh --name NAME --storage DIR [--network NET --mac MAC] [--installation UUID]
#                     [RBD options of scripts/lib/rbd.sh] [--keep-disks]
# Removes the domain, STORAGE/NAME (disks, seed, console log) and any staging directory of NAME
# left by a create that died (STORAGE/.staging/NAME.*). With --installation, a VM directory whose
# .vmctl mark names another installation is left alone (exit 4): it belongs to another vmctl.
# With the RBD options, the images vmctl.NAME.{root,data,seed} of the pool go too, with their
# snapshots (an image whose mark names another installation: exit 4, nothing removed);
# --keep-disks leaves them (the VM moved to another node that shares the pool).
# With --network/--mac (both or none), once the domain is gone, every DHCP reservation (<host>
# entry) for MAC in the libvirt network NET is deleted, from its running state and its persistent
# definition, and a current DHCP lease of MAC there is released with dhcp_release (package
# dnsmasq-utils; skipped with a warning if it is missing).
# Safe to re-run: a VM that is already gone is success; so are no reservation, no lease and no
# network NET (what was skipped is said on stderr).
# Exit codes: 0 removed (or was not there), 2 bad arguments,
#             4 the domain exists but was not made by vmctl (left alone), 1 other failure.
set -euo pipefail

die() { local code=$1; shift; echo "delete-vm.sh: $*" >&2; exit "$code"; }

# rbd_option, rbd_check, rbdc...: scripts/lib/rbd.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/rbd.sh
[[ $(type -t rbd_option) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/rbd.sh"

name='' storage='' net='' mac='' net_set=0 mac_set=0 installation='' keep_disks=0
while (($#)); do
  case $1 in
    --keep-disks) keep_disks=1; shift; continue ;;
    --name) name=${2-} ;;
    --storage) storage=${2-} ;;
    --network) net=${2-} net_set=1 ;;
    --mac) mac=${2-} mac_set=1 ;;
    --installation) installation=${2-} ;;
    *) rbd_option "$1" "${2-}" || die 2 "unknown argument: $1" ;;
  esac
  (($# >= 2)) || die 2 "missing value after $1"
  shift 2
done
[[ $name =~ ^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$ ]] || die 2 "invalid --name '$name'"
[[ $storage == /* && $storage != *..* ]] || die 2 "invalid --storage '$storage'"
[[ -z $installation || $installation =~ ^[0-9a-f-]{36}$ ]] || die 2 "invalid --installation '$installation'"
rbd_check delete-vm.sh
if ((net_set != mac_set)); then
  die 2 "--network and --mac go together: missing $( ((net_set)) && echo --mac || echo --network)"
fi
if ((net_set)); then
  [[ $net =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die 2 "invalid --network '$net'"
  [[ $mac =~ ^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$ ]] || die 2 "invalid --mac '$mac'"
  mac=${mac,,}  # libvirt and dnsmasq write MACs in lower case
fi

vmdir=$storage/$name
virsh() { command virsh -q -c qemu:///system "$@"; }

# dhcp_hosts, host_xml, dhcp_leases: scripts/lib/dhcp.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/dhcp.sh
[[ $(type -t dhcp_hosts) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/dhcp.sh"

# unreserve: delete every DHCP reservation of $mac in $net and release its leases.
unreserve() {
  local info scope i found=0
  local -a scopes=()
  if ! info=$(virsh net-info --network "$net" 2>&1); then
    if [[ $info == *'Network not found'* ]]; then
      echo "delete-vm.sh: no network $net on $(hostname); no DHCP reservation to delete" >&2
      return 0
    fi
    echo "$info" >&2
    return 1
  fi
  [[ $info =~ Active:[[:space:]]+yes ]] && scopes+=(live)
  [[ $info =~ Persistent:[[:space:]]+yes ]] && scopes+=(config)
  for scope in "${scopes[@]}"; do
    dhcp_hosts "$scope"
    for i in "${!H_MAC[@]}"; do
      [[ ${H_MAC[i]} == "$mac" ]] || continue
      host_xml "$i"
      virsh net-update --network "$net" --command delete --section ip-dhcp-host \
        --xml "$REPLY" "--$scope" >/dev/null
      echo "delete-vm.sh: deleted DHCP reservation $REPLY from $net ($scope)" >&2
      found=1
    done
  done
  if ((!found)); then
    echo "delete-vm.sh: no DHCP reservation for $mac in $net" >&2
  fi
  if [[ " ${scopes[*]} " != *' live '* ]]; then
    echo "delete-vm.sh: network $net is not active; no DHCP lease to release" >&2
    return 0
  fi
  local bridge=''
  [[ $info =~ Bridge:[[:space:]]+([^[:space:]]+) ]] && bridge=${BASH_REMATCH[1]}
  dhcp_leases
  for i in "${!L_MAC[@]}"; do
    [[ ${L_MAC[i]} == "$mac" ]] || continue
    if ! command -v dhcp_release >/dev/null; then
      echo "delete-vm.sh: warning: dhcp_release (dnsmasq-utils) is not installed; the lease of ${L_IP[i]} to $mac in $net stays until it expires" >&2
    elif dhcp_release "$bridge" "${L_IP[i]}" "$mac"; then
      echo "delete-vm.sh: released the lease of ${L_IP[i]} to $mac in $net" >&2
    else
      echo "delete-vm.sh: warning: dhcp_release $bridge ${L_IP[i]} $mac failed; the lease stays until it expires" >&2
    fi
  done
}

# "No such domain" must mean that, not "libvirtd is down": only then are the files removed.
virsh uri >/dev/null || die 1 "libvirt on $(hostname) does not answer; nothing removed"
if [[ -n $installation && -s $vmdir/.vmctl ]] && ! grep -qx "installation=$installation" "$vmdir/.vmctl"; then
  die 4 "$vmdir belongs to another vmctl installation; left alone"
fi
images=()
if rbd_used && ((!keep_disks)); then
  for kind in root data seed; do
    rbd_vm_image "$name" "$kind"
    rbd_image_exists "$REPLY" || continue
    images+=("$REPLY")
    image=$REPLY
    rbd_mark "$image"
    if [[ -n $installation && $REPLY != "installation=$installation "* ]]; then
      die 4 "RBD image $image belongs to another vmctl installation (or none); left alone"
    fi
  done
fi
if virsh dominfo "$name" >/dev/null 2>&1; then
  [[ -f $vmdir/.vmctl ]] || die 4 "domain $name on $(hostname) was not made by vmctl; left alone"
  if [[ $(virsh domstate "$name") != "shut off" ]]; then
    virsh destroy "$name" >/dev/null
  fi
  virsh undefine "$name" >/dev/null
fi
rm -rf -- "$vmdir" "$storage/.staging/$name".*
for image in "${images[@]}"; do
  rbd_remove "$image"
  echo "delete-vm.sh: removed RBD image $image" >&2
done
echo "delete-vm.sh: $name removed" >&2
if ((net_set)); then
  unreserve
fi

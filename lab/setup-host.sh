#!/usr/bin/env bash
# Prepares this machine for the lab and the tests: Debian packages, then a virtualenv with vmctl.
# Safe to re-run: it installs only what is missing. Never starts a distribution daemon
# (the lab starts its own PostgreSQL, Redis, sshd and libvirtd with private state).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)

APT_PACKAGES=(
  libvirt-daemon-system libvirt-clients qemu-system-x86 qemu-utils qemu-block-extra
  dnsmasq-base dnsmasq-utils iptables openssh-server openssh-client postgresql redis-server
  mmdebstrap genisoimage parted e2fsprogs iproute2 procps psmisc util-linux
  python3-venv python3-libvirt ca-certificates haproxy openssl curl
  ceph-mon ceph-mgr ceph-osd ceph-common
  prometheus prometheus-alertmanager prometheus-node-exporter prometheus-libvirt-exporter
  prometheus-postgres-exporter prometheus-redis-exporter
  ceph-mgr-modules-core python3-cherrypy3 python3-yaml
  ansible ansible-lint apt-cacher-ng systemd-container
  patroni etcd-server  # `lab/lab up --ha`: PostgreSQL 15 under Patroni, one etcd
  busybox  # its udhcpc stands in for a guest's DHCP client in tests (a lease in 0.1 s, not a boot)
)

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}" >&2
  # Keep package scripts from starting distribution daemons (there is no systemd here).
  created_policy=0
  if [[ ! -e /usr/sbin/policy-rc.d ]]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    created_policy=1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  ((created_policy)) && rm -f /usr/sbin/policy-rc.d
fi

venv="$here/.venv"
stamp="$venv/.installed-$(sha256sum "$here/pyproject.toml" | cut -c1-16)"
if [[ ! -e "$stamp" ]]; then
  echo "setup: creating $venv" >&2
  [[ -x "$venv/bin/python" ]] || /usr/bin/python3 -m venv --system-site-packages "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -e "$here[dev]" >&2
  rm -f "$venv"/.installed-*
  touch "$stamp"
fi

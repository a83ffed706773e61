#!/usr/bin/env bash
# create-vm.sh — runs ON a virtualization node (vmctl sends it over SSH on stdin: `bash -s -- ARGS`).
#
# Makes a VM from files the manager uploaded to a staging directory:
#   STAGING/domain.xml  libvirt domain definition (disk paths point into STORAGE/NAME/)
#   STAGING/user-data STAGING/meta-data [STAGING/network-config]   NoCloud seed contents
# and creates STORAGE/NAME/{root.qcow2 (copy-on-write overlay of BASE), data.qcow2, seed.iso},
# then defines and starts the domain.
#
# Usage: create-vm.sh --name NAME --base BASE_QCOW2 --root-gb N --data-gb N
#                     --storage DIR --staging DIR [--no-start]
#
# Safe to re-run: a VM that already exists with this name and was made by vmctl is left as it is
# (exit 0). On failure everything this run created is removed and the staging directory is deleted.
#
# Exit codes: 0 created (or already there), 2 bad arguments, 3 base image missing,
#             4 a domain or directory of that name exists and was not made by vmctl,
#             1 any other failure (the failing command is on stderr).
set -euo pipefail

die() { local code=$1; shift; echo "create-vm.sh: $*" >&2; exit "$code"; }

name='' base='' root_gb='' data_gb='' storage='' staging='' start=1
while (($#)); do
  case $1 in
    --name) name=${2-}; shift 2 ;;
    --base) base=${2-}; shift 2 ;;
    --root-gb) root_gb=${2-}; shift 2 ;;
    --data-gb) data_gb=${2-}; shift 2 ;;
    --storage) storage=${2-}; shift 2 ;;
    --staging) staging=${2-}; shift 2 ;;
    --no-start) start=0; shift ;;
    *) die 2 "unknown argument: $1" ;;
  esac
done

[[ $name =~ ^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$ ]] || die 2 "invalid --name '$name' (lower-case letters, digits, '-'; 1-63 characters)"
[[ $root_gb =~ ^[1-9][0-9]{0,3}$ ]] || die 2 "invalid --root-gb '$root_gb' (1-9999)"
[[ $data_gb =~ ^[0-9]{1,5}$ ]] || die 2 "invalid --data-gb '$data_gb' (0-99999)"
[[ $storage == /* && $storage != *..* ]] || die 2 "invalid --storage '$storage' (an absolute path)"
[[ $staging == /* && $staging != *..* && -d $staging ]] || die 2 "invalid --staging '$staging' (an existing directory)"
for f in domain.xml user-data meta-data; do
  [[ -f $staging/$f ]] || die 2 "missing $staging/$f"
done
[[ -f $base ]] || die 3 "base image $base does not exist on $(hostname)"

vmdir=$storage/$name
marker=$vmdir/.vmctl
virsh() { command virsh -q -c qemu:///system "$@"; }

# Remove the staging directory however we leave.
trap 'rm -rf -- "$staging"' EXIT

if virsh dominfo "$name" >/dev/null 2>&1; then
  [[ -f $marker ]] || die 4 "a domain named $name exists on $(hostname) and was not made by vmctl"
  if ((start)) && [[ $(virsh domstate "$name") != running ]]; then
    virsh start "$name" >/dev/null
  fi
  echo "create-vm.sh: $name exists already" >&2
  exit 0
fi
[[ ! -e $vmdir || -f $marker ]] || die 4 "$vmdir exists and was not made by vmctl"

made_dir=0 defined=0
cleanup() {
  local status=$?
  trap - ERR
  echo "create-vm.sh: failed (exit $status) at line ${BASH_LINENO[0]}: $BASH_COMMAND; removing what this run made" >&2
  if ((defined)); then
    virsh destroy "$name" >/dev/null 2>&1 || true
    virsh undefine "$name" --nvram >/dev/null 2>&1 || virsh undefine "$name" >/dev/null 2>&1 || true
  fi
  ((made_dir)) && rm -rf -- "$vmdir"
  rm -rf -- "$staging"
  exit 1
}
trap cleanup ERR

if [[ ! -d $vmdir ]]; then
  mkdir -p -- "$vmdir"
  made_dir=1
fi
touch -- "$marker"
qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$vmdir/root.qcow2" "${root_gb}G"
if ((data_gb > 0)); then
  qemu-img create -q -f qcow2 "$vmdir/data.qcow2" "${data_gb}G"
fi
seed_files=("$staging/user-data" "$staging/meta-data")
[[ -f $staging/network-config ]] && seed_files+=("$staging/network-config")
genisoimage -quiet -output "$vmdir/seed.iso" -volid cidata -joliet -rock "${seed_files[@]}"
chmod 0600 -- "$vmdir/seed.iso"  # holds the guest's SSH host key
virsh define "$staging/domain.xml" >/dev/null
defined=1
if ((start)); then
  virsh start "$name" >/dev/null
fi
echo "create-vm.sh: $name created in $vmdir" >&2

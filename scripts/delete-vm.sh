#!/usr/bin/env bash
# delete-vm.sh — runs ON a virtualization node: stops and removes a VM made by create-vm.sh.
# Usage: delete-vm.sh --name NAME --storage DIR
# Safe to re-run: a VM that is already gone is success.
# Exit codes: 0 removed (or was not there), 2 bad arguments,
#             4 the domain exists but was not made by vmctl (left alone), 1 other failure.
set -euo pipefail

die() { local code=$1; shift; echo "delete-vm.sh: $*" >&2; exit "$code"; }

name='' storage=''
while (($#)); do
  case $1 in
    --name) name=${2-}; shift 2 ;;
    --storage) storage=${2-}; shift 2 ;;
    *) die 2 "unknown argument: $1" ;;
  esac
done
[[ $name =~ ^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$ ]] || die 2 "invalid --name '$name'"
[[ $storage == /* && $storage != *..* ]] || die 2 "invalid --storage '$storage'"

vmdir=$storage/$name
virsh() { command virsh -q -c qemu:///system "$@"; }

if virsh dominfo "$name" >/dev/null 2>&1; then
  [[ -f $vmdir/.vmctl ]] || die 4 "domain $name on $(hostname) was not made by vmctl; left alone"
  if [[ $(virsh domstate "$name") != "shut off" ]]; then
    virsh destroy "$name" >/dev/null
  fi
  virsh undefine "$name" >/dev/null
fi
rm -rf -- "$vmdir"
echo "delete-vm.sh: $name removed" >&2

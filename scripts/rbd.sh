#!/usr/bin/env bash
# rbd.sh — runs ON a virtualization node (vmctl sends it over SSH: `bash -c SCRIPT rbd.sh ARGS`).
# What vmctl does to a VM's images in a Ceph RBD pool besides making and removing them
# (create-vm.sh, delete-vm.sh): grow, snapshots, and asking the cluster for room.
#
# Usage: rbd.sh RBD_OPTIONS SUBCOMMAND ARGS...   (RBD_OPTIONS: scripts/lib/rbd.sh, all four)
#   df                                   `ceph df` of the cluster, JSON
#   grow IMAGE GB                        grow IMAGE to GB GiB (never shrinks: exit 1 then)
#   snap-list IMAGE...                   "== IMAGE" then one snapshot name a line, per image
#   snap-create DOMAIN yes|try|no SNAP IMAGE...
#                                        SNAP of every IMAGE, all or none; DOMAIN "-" when the
#                                        VM is not running, else its filesystems are frozen
#                                        through the guest agent first and thawed in an EXIT
#                                        trap (yes: no freeze -> exit NO_FREEZE; try: taken
#                                        unfrozen; no: not tried); prints "quiesced=0|1"
#   snap-revert SNAP IMAGE...            every IMAGE back to SNAP (the VM must not run); checks
#                                        first that each has SNAP (exit 3, nothing changed)
#   snap-delete SNAP IMAGE...            delete SNAP from every IMAGE (one missing is fine)
# IMAGE: a name in the pool (vmctl.NAME.root ...).
# Exit codes: 0 done, 2 bad arguments, 3 snapshot missing, 4 (EXISTS) snapshot exists already,
#             10 (NO_FREEZE) the guest agent did not freeze, 1 any other failure.
set -uo pipefail

EXISTS=4
NO_FREEZE=10
die() { local code=$1; shift; echo "rbd.sh: $*" >&2; exit "$code"; }
# shellcheck source=lib/rbd.sh
[[ $(type -t rbd_option) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/rbd.sh"

rbd_leading_options rbd.sh "$@"
shift "$REPLY"
rbd_used || die 2 "the RBD options are needed"
(($# >= 1)) || die 2 "missing subcommand"
sub=$1
shift
for arg in "$@"; do
  [[ $arg =~ ^[A-Za-z0-9_.-]{1,128}$ ]] || die 2 "invalid argument '$arg'"
done

vt() { timeout --foreground "$1" virsh -q -c qemu:///system "${@:2}"; }

# snaps IMAGE: the image's snapshot names, one a line (exit 1 if it cannot be read)
snaps() { rbdc snap ls "$rbd_pool/$1" | awk '$1 ~ /^[0-9]+$/ {print $2}' || exit 1; }
has() {
  local list
  list=$(snaps "$2") || exit 1
  [[ $'\n'$list$'\n' == *$'\n'"$1"$'\n'* ]]
}

name='' attempted=0 quiesced=0
thaw() {
  if ((attempted)); then
    attempted=0
    vt 60 domfsthaw "$name" >/dev/null 2>&1 || ((!quiesced)) || echo "rbd.sh: domfsthaw $name failed" >&2
  fi
}

case $sub in
  df)
    command ceph --id "$rbd_user" -m "$rbd_mons" --keyring "$rbd_keyring" df --format json || exit 1
    ;;
  grow)
    (($# == 2)) && [[ $2 =~ ^[1-9][0-9]{0,5}$ ]] || die 2 "grow: usage: IMAGE GB"
    size=$(rbdc info --format json "$rbd_pool/$1" | sed -n 's/.*"size":\([0-9]*\).*/\1/p')
    [[ -n $size ]] || exit 1
    (($2 * 1073741824 >= size)) || die 1 "grow: $1 is larger than $2 GiB already; disks never shrink"
    rbdc resize --no-progress --size "$2G" "$rbd_pool/$1" || exit 1
    ;;
  snap-list)
    for image in "$@"; do
      rbd_image_exists "$rbd_pool/$image" || continue
      echo "== $image"
      snaps "$image"
    done
    ;;
  snap-create)
    (($# >= 4)) || die 2 "snap-create: usage: DOMAIN yes|try|no SNAP IMAGE..."
    name=$1 quiesce=$2 snap=$3
    shift 3
    [[ $quiesce =~ ^(yes|try|no)$ ]] || die 2 "snap-create: quiesce must be yes, try or no"
    for image in "$@"; do
      if has "$snap" "$image"; then
        echo "snapshot-create: $image has a snapshot named $snap already" >&2
        exit "$EXISTS"
      fi
    done
    trap thaw EXIT
    trap 'exit 1' HUP INT TERM PIPE
    if [[ $name != - && $quiesce != no ]]; then
      attempted=1
      if err=$(vt 30 domfsfreeze "$name" 2>&1 >/dev/null); then
        quiesced=1
      elif [[ $quiesce == try ]]; then
        echo "snapshot-create: no fs-freeze, taking it unfrozen: ${err//$'\n'/ }" >&2
      else
        echo "snapshot-create: the guest agent did not freeze the filesystems: ${err//$'\n'/ }" >&2
        exit "$NO_FREEZE"
      fi
    fi
    done_=()
    for image in "$@"; do
      if ! rbdc snap create "$rbd_pool/$image@$snap"; then
        for d in "${done_[@]}"; do rbdc snap rm --no-progress "$rbd_pool/$d@$snap" || true; done
        echo "snapshot-create: rbd snap create $image@$snap failed" >&2
        exit 1
      fi
      done_+=("$image")
    done
    thaw
    echo "quiesced=$quiesced"
    ;;
  snap-revert)
    (($# >= 2)) || die 2 "snap-revert: usage: SNAP IMAGE..."
    snap=$1
    shift
    for image in "$@"; do
      has "$snap" "$image" || { echo "snapshot-revert: $image has no snapshot $snap" >&2; exit 3; }
    done
    for image in "$@"; do
      rbdc snap rollback --no-progress "$rbd_pool/$image@$snap" || exit 1
    done
    ;;
  snap-delete)
    (($# >= 2)) || die 2 "snap-delete: usage: SNAP IMAGE..."
    snap=$1 rc=0
    shift
    for image in "$@"; do
      has "$snap" "$image" || continue
      rbdc snap rm --no-progress "$rbd_pool/$image@$snap" || rc=1
    done
    exit $rc
    ;;
  *) die 2 "unknown subcommand: $sub" ;;
esac

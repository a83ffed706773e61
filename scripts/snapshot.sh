#!/usr/bin/env bash
# snapshot.sh — runs ON a virtualization node (vmctl sends it over SSH: `bash -c SCRIPT snapshot.sh ARGS`).
#
# Internal snapshots of a VM's qcow2 disks (DISK...: root.qcow2, and data.qcow2 when the VM has a
# data disk; never the raw seed). A snapshot is one internal snapshot of the same name in each disk.
#
# Usage: snapshot.sh list DISK...
#        snapshot.sh create-stopped SNAPSHOT DISK...
#        snapshot.sh create-running DOMAIN yes|try|no QMP_TRANSACTION SNAPSHOT DISK...
#        snapshot.sh revert SNAPSHOT DISK...
#        snapshot.sh delete-stopped SNAPSHOT DISK...
#
# list            for each DISK that exists, a line "== DISK" and then `qemu-img snapshot -l -U DISK`
#                 (-U: images in use too). A DISK that does not exist is skipped.
# create-stopped  (the domain is not running) takes SNAPSHOT in each DISK in turn with qemu-img;
#                 when one fails, those done are undone: no disk keeps a snapshot the others lack.
# create-running  freezes DOMAIN's filesystems (guest agent), sends QMP_TRANSACTION (one QMP
#                 `transaction` taking every disk's snapshot at once, all or none) with
#                 `virsh qemu-monitor-command`, thaws; prints "quiesced=1" or "quiesced=0".
#                 The thaw is in an EXIT trap, so it runs whatever happens (a failed transaction,
#                 a signal, the manager's SSH connection dropped): the guest is never left frozen.
#                 yes: a freeze that fails exits NO_FREEZE; try: the snapshot is then taken
#                 unfrozen; no: no freeze is attempted. Agent calls are bounded by `timeout`.
# revert          (the disks must not be in use) first checks that every DISK holds SNAPSHOT,
#                 then applies it to each: a missing one changes no disk.
# delete-stopped  deletes SNAPSHOT from each DISK (of a stopped domain); tries every DISK.
# Both creates first refuse (exit EXISTS, nothing changed, nothing frozen) when a DISK has a
# snapshot named SNAPSHOT already: qemu-img would add a second one of that name, and QMP would fail.
#
# Exit codes: 0 done, 2 bad arguments, 3 revert: a DISK lacks SNAPSHOT (no disk changed),
#             4 (EXISTS) create-*: a DISK has a snapshot named SNAPSHOT already,
#             10 (NO_FREEZE) create-running yes: the guest agent did not freeze the filesystems,
#             1 any other failure (the failing command is on stderr).
# EXISTS and NO_FREEZE equal vmctl.core.snapshots.EXISTS and .NO_FREEZE (a unit test checks).
set -u  # not -e: every failure is handled where it happens (undo the disks done, thaw, go on)

EXISTS=4
NO_FREEZE=10

die() { local code=$1; shift; echo "snapshot.sh: $*" >&2; exit "$code"; }

v() { virsh -q -c qemu:///system "$@"; }
vt() { timeout --foreground "$1" virsh -q -c qemu:///system "${@:2}"; }  # agent calls may hang

# has SNAPSHOT DISK: whether DISK holds a snapshot named SNAPSHOT; exits 1 when DISK cannot be read.
has() {
  local list
  list=$(qemu-img snapshot -l -U "$2") || exit 1
  awk -v s="$1" '$1 ~ /^[0-9]+$/ && $2 == s {found=1} END {exit !found}' <<<"$list"
}

# check_new SNAPSHOT DISK...: exit EXISTS when a DISK has SNAPSHOT already.
check_new() {
  local snap=$1 f
  shift
  for f in "$@"; do
    if has "$snap" "$f"; then
      echo "snapshot-create: $f has a snapshot named $snap already" >&2
      exit "$EXISTS"
    fi
  done
}

list_snapshots() {
  local f
  for f in "$@"; do
    [ -f "$f" ] || continue
    echo "== $f"
    qemu-img snapshot -l -U "$f" || exit 1
  done
}

create_stopped() {
  local snap=$1 f d
  local -a done_=()
  shift
  check_new "$snap" "$@"
  for f in "$@"; do
    if ! qemu-img snapshot -c "$snap" "$f"; then
      for d in "${done_[@]}"; do qemu-img snapshot -d "$snap" "$d" || true; done
      echo "snapshot-create: qemu-img snapshot -c $snap $f failed" >&2
      exit 1
    fi
    done_+=("$f")
  done
}

# create-running's state is global: thaw, the EXIT trap, runs after create_running has returned.
name='' attempted=0 quiesced=0
thaw() {
  if [ "$attempted" = 1 ]; then
    attempted=0
    vt 60 domfsthaw "$name" >/dev/null 2>&1 \
      || [ "$quiesced" = 0 ] || echo "snapshot-create: domfsthaw $name failed" >&2
  fi
}

create_running() {
  local quiesce=$2 command=$3 snap=$4 err out
  name=$1
  shift 4
  check_new "$snap" "$@"
  trap thaw EXIT
  trap 'exit 1' HUP INT TERM PIPE
  if [ "$quiesce" != no ]; then
    attempted=1
    if err=$(vt 30 domfsfreeze "$name" 2>&1 >/dev/null); then
      quiesced=1
    elif [ "$quiesce" = try ]; then
      echo "snapshot-create: no fs-freeze, taking it unfrozen: ${err//$'\n'/ }" >&2
    else
      echo "snapshot-create: the guest agent did not freeze the filesystems: ${err//$'\n'/ }" >&2
      exit "$NO_FREEZE"
    fi
  fi
  out=$(v qemu-monitor-command "$name" "$command") || { echo "$out" >&2; exit 1; }
  case $out in
    *'"return"'*) ;;
    *) echo "snapshot-create: QMP: $out" >&2; exit 1 ;;
  esac
  thaw
  echo "quiesced=$quiesced"
}

revert() {
  local snap=$1 f list
  shift
  for f in "$@"; do
    list=$(qemu-img snapshot -l "$f") || exit 1
    awk -v s="$snap" '$1 ~ /^[0-9]+$/ && $2 == s {found=1} END {exit !found}' <<<"$list" \
      || { echo "snapshot-revert: $f has no snapshot $snap" >&2; exit 3; }
  done
  for f in "$@"; do
    qemu-img snapshot -a "$snap" "$f" || exit 1
  done
}

delete_stopped() {
  local snap=$1 f rc=0
  shift
  for f in "$@"; do qemu-img snapshot -d "$snap" "$f" || rc=1; done
  exit $rc
}

(($# >= 1)) || die 2 "missing subcommand: list, create-stopped, create-running, revert or delete-stopped"
sub=$1
shift
case $sub in
  list) list_snapshots "$@" ;;
  create-stopped) (($# >= 1)) || die 2 "$sub: missing SNAPSHOT"; create_stopped "$@" ;;
  revert) (($# >= 1)) || die 2 "$sub: missing SNAPSHOT"; revert "$@" ;;
  delete-stopped) (($# >= 1)) || die 2 "$sub: missing SNAPSHOT"; delete_stopped "$@" ;;
  create-running)
    (($# >= 4)) || die 2 "create-running: usage: DOMAIN yes|try|no QMP_TRANSACTION SNAPSHOT DISK..."
    [[ $2 =~ ^(yes|try|no)$ ]] || die 2 "create-running: quiesce must be yes, try or no, not '$2'"
    create_running "$@" ;;
  *) die 2 "unknown subcommand: $sub" ;;
esac

# scripts/lib/rbd.sh — VM disks in a Ceph RBD pool: the options that say where, and helpers.
# vmctl sends every file of scripts/lib ahead of a node script; these are definitions only.
#
# A script's argument loop hands each option to rbd_option first:
#   --rbd-pool POOL --rbd-user USER --rbd-mons HOST:PORT[,...] --rbd-keyring FILE
# (all four, or none: then the VM's disks are files in its directory). rbd_check checks them.
# VM images are named vmctl.NAME.root, vmctl.NAME.data and vmctl.NAME.seed (vmctl.core.storage);
# each carries vmctl's mark as the image-meta key vmctl.mark ("installation=UUID id=N").
rbd_pool='' rbd_user='' rbd_mons='' rbd_keyring=''

# rbd_option OPTION VALUE: 0 when OPTION is one of the RBD options (VALUE taken), else 1.
rbd_option() {
  case $1 in
    --rbd-pool) rbd_pool=${2-} ;;
    --rbd-user) rbd_user=${2-} ;;
    --rbd-mons) rbd_mons=${2-} ;;
    --rbd-keyring) rbd_keyring=${2-} ;;
    *) return 1 ;;
  esac
}

# rbd_check SCRIPT: exit 2 naming what is wrong with the RBD options (none given is fine).
rbd_check() {
  [[ -n $rbd_pool$rbd_user$rbd_mons$rbd_keyring ]] || return 0
  local what=''
  [[ $rbd_pool =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$ ]] || what+=" --rbd-pool '$rbd_pool'"
  [[ $rbd_user =~ ^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$ ]] || what+=" --rbd-user '$rbd_user'"
  [[ $rbd_mons =~ ^[][A-Za-z0-9_.:,-]+$ ]] || what+=" --rbd-mons '$rbd_mons'"
  [[ $rbd_keyring == /* && $rbd_keyring != *..* ]] || what+=" --rbd-keyring '$rbd_keyring'"
  if [[ -n $what ]]; then
    echo "$1: invalid or missing RBD option:$what" >&2
    exit 2
  fi
}

# rbd_leading_options SCRIPT ARGS...: take the RBD options at the front of ARGS and check them
# (exit 2 naming SCRIPT when one is wrong); REPLY = how many arguments they were (for `shift`).
rbd_leading_options() {
  local script=$1 n=0
  shift
  while (($#)) && [[ $1 == --rbd-* ]]; do
    rbd_option "$1" "${2-}" || { echo "$script: unknown argument: $1" >&2; exit 2; }
    (($# >= 2)) || { echo "$script: missing value after $1" >&2; exit 2; }
    shift 2
    n=$((n + 2))
  done
  rbd_check "$script"
  REPLY=$n
}

rbd_used() { [[ -n $rbd_pool ]]; }

# rbdc ARGS...: the rbd command as the configured cephx user.
rbdc() { command rbd --id "$rbd_user" -m "$rbd_mons" --keyring "$rbd_keyring" "$@"; }

rbd_vm_image() { REPLY="$rbd_pool/vmctl.$1.$2"; }

# rbd_image_exists POOL/IMAGE: 0 yes, 1 no, exits 1 when the cluster cannot say.
rbd_image_exists() {
  local out
  if out=$(rbdc info "$1" 2>&1 >/dev/null); then return 0; fi
  [[ $out == *'No such file or directory'* ]] && return 1
  echo "rbd info $1: $out" >&2
  exit 1
}

# rbd_mark POOL/IMAGE: REPLY = the image's vmctl.mark ("" when it has none).
rbd_mark() { REPLY=$(rbdc image-meta get "$1" vmctl.mark 2>/dev/null) || REPLY=''; }

# rbd_remove POOL/IMAGE: delete the image and all its snapshots; gone already is fine.
rbd_remove() {
  rbd_image_exists "$1" || return 0
  rbdc snap purge --no-progress "$1" >/dev/null
  rbdc rm --no-progress "$1" >/dev/null
}

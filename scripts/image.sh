#!/usr/bin/env bash
# image.sh — runs ON a virtualization node (vmctl sends it over SSH: `bash -c SCRIPT image.sh ARGS`).
# Base images where the node's storage needs them (`vmctl images import`, `vmctl images list`):
# a qcow2 file at the image's path (dir storage; VM root disks are qcow2 overlays backed by it),
# or an RBD image NAME with the snapshot NAME@base that VM root disks are cloned from (the pool
# the RBD_OPTIONS of scripts/lib/rbd.sh name). Nothing in use is ever overwritten.
#
# Usage: image.sh [RBD_OPTIONS] SUBCOMMAND ARGS...
#   stage DIR                 make DIR (where an upload goes; mode 0755)
#   discard UPLOAD            remove an upload (a file named *.vmctl-upload-8HEX); gone is fine
#   file-status STORAGE_DIR yes|no PATH...
#                             per PATH: "== PATH", "present=0|1", "size=BYTES", "sha256=HEX"
#                             (yes: computed; absent files have none), and "user=VM" for each
#                             VM overlay STORAGE_DIR/VM/root.qcow2 whose backing file is PATH
#   file-install STORAGE_DIR PATH UPLOAD SHA256
#                             UPLOAD (in PATH's directory) must have SHA256 and be a qcow2
#                             without a backing file; PATH with SHA256 already: "unchanged";
#                             overlays using PATH: refused (IN_USE); else UPLOAD is renamed to
#                             PATH (atomic): "installed". Prints result=installed|unchanged.
#   rbd-status NAME...        (RBD options) per NAME: "== NAME", "present=0|1" (1: NAME@base
#                             exists), "size=BYTES", "sha256=HEX" (its image-meta vmctl.sha256,
#                             written by rbd-install), "user=POOL/IMAGE" for each clone of
#                             NAME@base
#   rbd-install NAME UPLOAD SHA256 qcow2|raw
#                             UPLOAD (a file on this node) must have SHA256; NAME with SHA256
#                             already: "unchanged"; clones of NAME@base: refused (IN_USE);
#                             else written to NAME.vmctl-importing (qemu-img convert to raw),
#                             snapshotted @base, checked for clones once more, and renamed to
#                             NAME (the old NAME removed, or kept as NAME.vmctl-replaced-RANDOM
#                             if a clone of it appeared meanwhile: said on stderr). UPLOAD is
#                             removed whatever happens. Prints result=installed|unchanged.
# Exit codes: 0 done, 2 bad arguments, 4 (IN_USE) the image is in use ("user=" lines on
#             stdout, nothing changed), 5 (BAD_SUM) the upload's sha256 differs (upload removed,
#             nothing changed), 6 (BAD_IMAGE) the upload is not a usable base image (removed,
#             nothing changed), 1 any other failure.
set -uo pipefail

IN_USE=4
BAD_SUM=5
BAD_IMAGE=6
die() { local code=$1; shift; echo "image.sh: $*" >&2; exit "$code"; }
# shellcheck source=lib/rbd.sh
[[ $(type -t rbd_option) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/rbd.sh"

rbd_leading_options image.sh "$@"
shift "$REPLY"
(($# >= 1)) || die 2 "missing subcommand"
sub=$1
shift

PATH_RE='^/[A-Za-z0-9_./+-]{1,4000}$'
NAME_RE='^[a-z][a-z0-9.-]{0,62}$'
SUM_RE='^[0-9a-f]{64}$'
UPLOAD_RE='\.vmctl-upload-[0-9a-f]{8}$'
path_ok() { [[ $1 =~ $PATH_RE && $1 != *..* && $1 != */ ]]; }
need_rbd() { rbd_used || die 2 "$sub: the RBD options are needed"; }

sum_of() { sha256sum <"$1" | awk '{print $1}'; }

# backing FILE: the full backing file name of a qcow2 ("" when it has none)
backing() {
  qemu-img info -U --output=json -- "$1" 2>/dev/null \
    | sed -n 's/^ *"full-backing-filename": "\(.*\)",\{0,1\}$/\1/p' | head -n 1
}

# overlays STORAGE_DIR PATH: "user=VM" for each VM root disk backed by PATH
overlays() {
  local f
  for f in "$1"/*/root.qcow2; do
    [[ -f $f ]] || continue
    [[ $(backing "$f") == "$2" ]] && { f=${f%/root.qcow2}; echo "user=${f##*/}"; }
  done
  return 0
}

# check_upload UPLOAD SHA256 FORMAT: exit BAD_SUM / BAD_IMAGE (the trap removes UPLOAD)
check_upload() {
  local got info
  [[ -f $1 ]] || die 1 "no upload at $1"
  got=$(sum_of "$1") || die 1 "cannot read $1"
  [[ $got == "$2" ]] || die "$BAD_SUM" "the upload's sha256 is $got, not $2 (removed)"
  info=$(qemu-img info --output=json -f "$3" -- "$1" 2>&1) \
    || die "$BAD_IMAGE" "qemu-img cannot read the upload as $3: ${info//$'\n'/ }"
  [[ $info != *'"backing-filename"'* ]] || die "$BAD_IMAGE" "the upload has a backing file: a base image must stand alone"
}

# rbd_clones IMAGE@SNAP: "user=POOL/CHILD" for each clone (trashed ones too); exit 1 if unknown
rbd_clones() {
  local out
  out=$(rbdc children --all "$1" 2>&1) || { echo "rbd children $1: $out" >&2; exit 1; }
  [[ -z $out ]] || printf 'user=%s\n' $out
}

rbd_meta_sum() { rbdc image-meta get "$1" vmctl.sha256 2>/dev/null || true; }

rbd_has_base() {
  rbdc snap ls "$1" 2>/dev/null | awk '$2 == "base" {found=1} END {exit !found}'
}

upload='' importing=''
cleanup() {
  [[ -n $upload ]] && rm -f -- "$upload"
  [[ -n $importing ]] && rbd_remove "$importing"
  return 0
}

case $sub in
  stage)
    (($# == 1)) && path_ok "$1" || die 2 "stage: usage: DIR (an absolute path)"
    mkdir -p -m 0755 -- "$1" || exit 1
    ;;
  discard)
    (($# == 1)) && path_ok "$1" && [[ $1 =~ $UPLOAD_RE ]] || die 2 "discard: not an upload: '${1-}'"
    rm -f -- "$1" || exit 1
    ;;
  file-status)
    (($# >= 3)) && path_ok "$1" && [[ $2 =~ ^(yes|no)$ ]] || die 2 "file-status: usage: STORAGE_DIR yes|no PATH..."
    storage=$1 with_sum=$2
    shift 2
    for path in "$@"; do path_ok "$path" || die 2 "file-status: invalid path '$path'"; done
    for path in "$@"; do
      echo "== $path"
      if [[ -f $path ]]; then
        echo "present=1"
        echo "size=$(stat -c %s -- "$path")"
        [[ $with_sum == yes ]] && echo "sha256=$(sum_of "$path")"
      else
        echo "present=0"
      fi
      overlays "$storage" "$path"
    done
    ;;
  file-install)
    (($# == 4)) || die 2 "file-install: usage: STORAGE_DIR PATH UPLOAD SHA256"
    storage=$1 path=$2 sum=$4
    path_ok "$storage" && path_ok "$path" || die 2 "file-install: invalid path"
    [[ $3 == "$(dirname -- "$path")/."*  && $3 =~ $UPLOAD_RE ]] && path_ok "$3" \
      || die 2 "file-install: the upload must be a file of ${path%/*} named .*.vmctl-upload-8HEX"
    [[ $sum =~ $SUM_RE ]] || die 2 "file-install: invalid sha256 '$sum'"
    upload=$3
    trap cleanup EXIT
    trap 'exit 1' HUP INT TERM PIPE
    check_upload "$upload" "$sum" qcow2
    if [[ -f $path && $(sum_of "$path") == "$sum" ]]; then
      echo "result=unchanged"
      exit 0
    fi
    users=$(overlays "$storage" "$path")
    if [[ -n $users ]]; then
      echo "$users"
      die "$IN_USE" "$path is the backing file of VM disks in $storage: not replaced"
    fi
    chmod 0644 -- "$upload" && mv -f -- "$upload" "$path" || die 1 "cannot move the upload to $path"
    upload=''
    echo "result=installed"
    ;;
  rbd-status)
    need_rbd
    (($# >= 1)) || die 2 "rbd-status: usage: NAME..."
    for name in "$@"; do [[ $name =~ $NAME_RE ]] || die 2 "rbd-status: invalid name '$name'"; done
    for name in "$@"; do
      image="$rbd_pool/$name"
      echo "== $name"
      if rbd_image_exists "$image" && rbd_has_base "$image"; then
        echo "present=1"
        size=$(rbdc info --format json "$image" | sed -n 's/.*"size":\([0-9]*\).*/\1/p')
        echo "size=${size:-0}"
        meta=$(rbd_meta_sum "$image")
        [[ -n $meta ]] && echo "sha256=$meta"
        rbd_clones "$image@base"
      else
        echo "present=0"
      fi
    done
    ;;
  rbd-install)
    need_rbd
    (($# == 4)) || die 2 "rbd-install: usage: NAME UPLOAD SHA256 qcow2|raw"
    name=$1 sum=$3 format=$4
    [[ $name =~ $NAME_RE ]] || die 2 "rbd-install: invalid name '$name'"
    path_ok "$2" && [[ $2 =~ $UPLOAD_RE ]] || die 2 "rbd-install: invalid upload '$2'"
    [[ $sum =~ $SUM_RE ]] || die 2 "rbd-install: invalid sha256 '$sum'"
    [[ $format =~ ^(qcow2|raw)$ ]] || die 2 "rbd-install: format must be qcow2 or raw"
    upload=$2
    trap cleanup EXIT
    trap 'exit 1' HUP INT TERM PIPE
    check_upload "$upload" "$sum" "$format"
    image="$rbd_pool/$name"
    exists=0
    if rbd_image_exists "$image"; then
      exists=1
      if [[ $(rbd_meta_sum "$image") == "$sum" ]] && rbd_has_base "$image"; then
        echo "result=unchanged"
        exit 0
      fi
      if rbd_has_base "$image"; then
        users=$(rbd_clones "$image@base")
        [[ -z $users ]] || { echo "$users"; die "$IN_USE" "$image@base has clones: not replaced"; }
      fi
    fi
    importing="$rbd_pool/$name.vmctl-importing"
    rbd_remove "$importing"  # what an import that died left
    mons=${rbd_mons//:/\\:}
    mons=${mons//,/\\;}
    target="rbd:$importing:id=$rbd_user:keyring=$rbd_keyring:mon_host=$mons"
    err=$(qemu-img convert -f "$format" -O raw -- "$upload" "$target" 2>&1) \
      || die 1 "qemu-img convert to $importing failed: ${err//$'\n'/ }"
    rm -f -- "$upload"
    upload=''
    rbdc image-meta set "$importing" vmctl.sha256 "$sum" >/dev/null || exit 1
    rbdc snap create --no-progress "$importing@base" || exit 1
    old=''
    if ((exists)) && rbd_image_exists "$image"; then
      if rbd_has_base "$image"; then
        users=$(rbd_clones "$image@base")
        [[ -z $users ]] || { echo "$users"; die "$IN_USE" "$image@base has clones: not replaced"; }
      fi
      old="$image.vmctl-replaced-$(printf '%04x%04x' $RANDOM $RANDOM)"
      rbdc rename "$image" "$old" || exit 1
    fi
    if ! rbdc rename "$importing" "$image"; then
      [[ -z $old ]] || rbdc rename "$old" "$image" || echo "image.sh: $image is now $old" >&2
      exit 1
    fi
    importing=''
    if [[ -n $old ]]; then
      users=$(rbd_clones "$old@base")
      if [[ -n $users ]]; then
        echo "image.sh: a clone of the old $image appeared meanwhile; it is kept as $old" >&2
      else
        rbd_remove "$old" || echo "image.sh: could not remove the old image $old" >&2
      fi
    fi
    echo "result=installed"
    ;;
  *) die 2 "unknown subcommand: $sub" ;;
esac

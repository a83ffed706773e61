#!/usr/bin/env bash
# survey.sh — runs ON a virtualization node (vmctl sends it over SSH: `bash -c SCRIPT survey.sh ARGS`).
# Read-only: prints what the node holds, for `vmctl reconcile` to compare with PostgreSQL.
#
# Usage: survey.sh --storage DIR [--network NET] [RBD options of scripts/lib/rbd.sh]
#
# Output: one record a line, fields separated by one TAB (vmctl.core.survey.parse_survey):
#   survey	1                                 first line: the format's version
#   domain	NAME	STATE	METADATA              every libvirt domain; STATE as `virsh domstate`
#                                             prints it; METADATA: vmctl's <vm> metadata element
#                                             on one line, or empty when the domain has none
#   dir	NAME	MARKER	INSTALLATION	ID	FILES   every directory DIR/NAME (hidden ones aside);
#                                             MARKER none (no .vmctl), empty, or set (then
#                                             INSTALLATION and ID are the .vmctl values); FILES:
#                                             the names inside, separated by '/'
#   snapshot	NAME	FILE	TAG                   each internal snapshot of each qcow2 file of a
#                                             marked directory (`qemu-img snapshot -l -U`)
#   staging	ENTRY	AGE_S                       every entry of DIR/.staging and its age in seconds
#   network	NET	STATE                         STATE: active, inactive or absent
#   host	SCOPE	MAC	NAME	IP                    every DHCP <host> of NET; SCOPE live or config
#   image	NAME	MARK                            (RBD options) every image of the pool named
#                                             as vmctl names VM images (vmctl.VM.KIND); MARK its
#                                             vmctl.mark ("installation=UUID id=N"), or empty
#   rbdsnap	NAME	SNAP                          each snapshot of each such image
#   end                                       last line: the survey is complete
# Exit codes: 0 surveyed, 2 bad arguments, 1 libvirt does not answer (nothing printed after it).
set -uo pipefail

die() { local code=$1; shift; echo "survey.sh: $*" >&2; exit "$code"; }

# rbd_option, rbd_check, rbdc...: scripts/lib/rbd.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/rbd.sh
[[ $(type -t rbd_option) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/rbd.sh"

storage='' net=''
while (($#)); do
  case $1 in
    --storage) storage=${2-} ;;
    --network) net=${2-} ;;
    *) rbd_option "$1" "${2-}" || die 2 "unknown argument: $1" ;;
  esac
  (($# >= 2)) || die 2 "missing value after $1"
  shift 2
done
[[ $storage == /* && $storage != *..* ]] || die 2 "invalid --storage '$storage' (an absolute path)"
[[ -z $net || $net =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die 2 "invalid --network '$net'"
rbd_check survey.sh

virsh() { command virsh -q -c qemu:///system "$@"; }
# dhcp_hosts: scripts/lib/dhcp.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/dhcp.sh
[[ $(type -t dhcp_hosts) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/dhcp.sh"

oneline() { local s=${1//$'\n'/ }; REPLY=${s//$'\t'/ }; }

virsh uri >/dev/null || die 1 "libvirt on $(hostname) does not answer"
names=$(virsh list --all --name) || die 1 "virsh list failed on $(hostname)"
echo "survey	1"
while IFS= read -r name; do
  [[ -n $name ]] || continue
  state=$(virsh domstate "$name" 2>/dev/null) || continue  # undefined meanwhile
  meta=$(virsh metadata "$name" https://github.com/vmctl/vmctl/xmlns/1 2>/dev/null) || meta=''
  oneline "$meta"
  printf 'domain\t%s\t%s\t%s\n' "$name" "$state" "$REPLY"
done <<<"$names"

now=$(date +%s)
if [[ -d $storage ]]; then
  for path in "$storage"/*/; do
    [[ -d $path ]] || continue
    path=${path%/}
    dname=${path##*/}
    marker=none installation='' id=''
    if [[ -f $path/.vmctl ]]; then
      marker=empty
      while IFS='=' read -r key value; do
        case $key in
          installation) installation=$value marker=set ;;
          id) id=$value marker=set ;;
        esac
      done <"$path/.vmctl"
    fi
    files=''
    for f in "$path"/* "$path"/.[!.]*; do
      [[ -e $f ]] || continue
      files+=${files:+/}${f##*/}
    done
    oneline "$files"
    printf 'dir\t%s\t%s\t%s\t%s\t%s\n' "$dname" "$marker" "$installation" "$id" "$REPLY"
    [[ $marker == none ]] && continue  # snapshots: of vmctl's disks only
    for f in "$path"/*.qcow2; do
      [[ -f $f ]] || continue
      qemu-img snapshot -l -U "$f" 2>/dev/null | while read -r sid tag _; do
        [[ $sid =~ ^[0-9]+$ && -n $tag ]] && printf 'snapshot\t%s\t%s\t%s\n' "$dname" "${f##*/}" "$tag"
      done
    done
  done
  for path in "$storage"/.staging/*; do
    [[ -e $path ]] || continue
    mtime=$(stat -c %Y -- "$path" 2>/dev/null) || continue
    printf 'staging\t%s\t%s\n' "${path##*/}" "$((now - mtime))"
  done
fi

if [[ -n $net ]]; then
  if ! info=$(virsh net-info --network "$net" 2>/dev/null); then
    printf 'network\t%s\tabsent\n' "$net"
  else
    scopes=()
    if [[ $info =~ Active:[[:space:]]+yes ]]; then
      printf 'network\t%s\tactive\n' "$net"
      scopes+=(live)
    else
      printf 'network\t%s\tinactive\n' "$net"
    fi
    [[ $info =~ Persistent:[[:space:]]+yes ]] && scopes+=(config)
    for scope in "${scopes[@]}"; do
      dhcp_hosts "$scope" || die 1 "virsh net-dumpxml $net failed on $(hostname)"
      for i in "${!H_MAC[@]}"; do
        printf 'host\t%s\t%s\t%s\t%s\n' "$scope" "${H_MAC[i]}" "${H_NAME[i]}" "${H_IP[i]}"
      done
    done
  fi
fi
if rbd_used; then
  images=$(rbdc ls "$rbd_pool") || die 1 "rbd ls $rbd_pool failed on $(hostname)"
  while IFS= read -r image; do
    [[ $image =~ ^vmctl\.[a-z0-9-]+\.(root|data|seed)$ ]] || continue
    rbd_mark "$rbd_pool/$image"
    oneline "$REPLY"
    printf 'image\t%s\t%s\n' "$image" "$REPLY"
    rbdc snap ls "$rbd_pool/$image" 2>/dev/null | awk -v i="$image" '$1 ~ /^[0-9]+$/ {print "rbdsnap\t" i "\t" $2}'
  done <<<"$images"
fi
echo "end"

#!/usr/bin/env bash
# create-vm.sh — runs ON a virtualization node (vmctl sends it over SSH: `bash -c SCRIPT create-vm.sh ARGS`).
#
# Makes a VM from files the manager uploaded to a staging directory:
#   STAGING/domain.xml  libvirt domain definition (disk paths point into STORAGE/NAME/)
#   STAGING/user-data STAGING/meta-data [STAGING/network-config]   NoCloud seed contents
# and creates STORAGE/NAME/{root.qcow2 (copy-on-write overlay of BASE), data.qcow2, seed.iso},
# then defines and starts the domain.
# With the RBD options of scripts/lib/rbd.sh (--rbd-pool POOL ...), the disks are images in POOL
# instead: vmctl.NAME.root (a clone of BASE@base, BASE then being an image of POOL, grown to
# --root-gb), vmctl.NAME.data and vmctl.NAME.seed, each marked (image-meta vmctl.mark); STORAGE/NAME
# keeps only the VM's local files (console log, .vmctl). Images of ours left by a run that died
# are replaced; an image of that name without our mark is another's (exit 4).
# --adopt (RBD only): the images exist already (the VM moves here from another node that shares
# the pool): they must carry our mark (and --record-id's id), else exit 3 (missing) or 4; nothing
# is made in the pool, and nothing in it is removed on failure. Only domain.xml is staged.
#
# Usage: create-vm.sh --name NAME --base BASE_QCOW2|BASE_IMAGE --root-gb N --data-gb N
#                     --storage DIR --staging DIR [--unpack-stdin] [--no-start] [RBD options]
#                     [--network NET --mac MAC --ip IPV4] [--installation UUID --record-id N]
#
# --unpack-stdin: the staged files come as a tar archive on standard input (the whole create is then
# one SSH round trip); STAGING must not exist yet and be STORAGE/.staging/NAME.<8 hex digits>: it
# is made (mode 0700) once every argument has been checked, and removed however the script ends.
#
# STORAGE/NAME/.vmctl marks the VM directory as vmctl's; with --installation/--record-id it holds
# `installation=UUID` and `id=N` (the installation and row that made it: vmctl's ownership mark).
#
# With --network/--mac/--ip (all three or none), before the domain is defined, the libvirt network
# NET (which must exist and be active) gets exactly one DHCP reservation
# <host mac='MAC' name='NAME' ip='IPV4'/>, in its running state and its persistent definition.
# Other entries for this address, this MAC or this name are stale (the manager never gives one
# address to two VMs) and are deleted first; a DHCP lease of the address held by another MAC is
# released with dhcp_release (package dnsmasq-utils; skipped with a warning if it is missing),
# because dnsmasq would not hand out a reserved address that is leased to someone else.
#
# Safe to re-run: a VM that already exists with this name and was made by vmctl is left as it is
# (exit 0), apart from its DHCP reservation, which is ensured again. On failure everything this run
# created is removed (including a reservation this run added) and the staging directory is deleted.
#
# Exit codes: 0 created (or already there), 2 bad arguments, 3 base image missing,
#             4 a domain or directory of that name exists and was not made by vmctl,
#             1 any other failure, e.g. NET missing or inactive (the failing command is on stderr).
set -Eeuo pipefail  # -E: the ERR trap (cleanup) also fires inside functions such as virsh()

die() { local code=$1; shift; echo "create-vm.sh: $*" >&2; exit "$code"; }
# rbd_option, rbd_check, rbdc...: scripts/lib/rbd.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/rbd.sh
[[ $(type -t rbd_option) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/rbd.sh"

name='' base='' root_gb='' data_gb='' storage='' staging='' start=1 installation='' record_id=''
adopt=0 unpack=0
net='' mac='' ip='' net_set=0 mac_set=0 ip_set=0
while (($#)); do
  case $1 in
    --name) name=${2-} ;;
    --base) base=${2-} ;;
    --root-gb) root_gb=${2-} ;;
    --data-gb) data_gb=${2-} ;;
    --storage) storage=${2-} ;;
    --staging) staging=${2-} ;;
    --network) net=${2-} net_set=1 ;;
    --mac) mac=${2-} mac_set=1 ;;
    --ip) ip=${2-} ip_set=1 ;;
    --installation) installation=${2-} ;;
    --record-id) record_id=${2-} ;;
    --no-start) start=0; shift; continue ;;
    --adopt) adopt=1; shift; continue ;;
    --unpack-stdin) unpack=1; shift; continue ;;
    *) rbd_option "$1" "${2-}" || die 2 "unknown argument: $1" ;;
  esac
  (($# >= 2)) || die 2 "missing value after $1"
  shift 2
done

[[ $name =~ ^[a-z][a-z0-9-]{0,61}[a-z0-9]$|^[a-z]$ ]] || die 2 "invalid --name '$name' (lower-case letters, digits, '-'; 1-63 characters)"
[[ $root_gb =~ ^[1-9][0-9]{0,3}$ ]] || die 2 "invalid --root-gb '$root_gb' (1-9999)"
[[ $data_gb =~ ^[0-9]{1,5}$ ]] || die 2 "invalid --data-gb '$data_gb' (0-99999)"
[[ $storage == /* && $storage != *..* ]] || die 2 "invalid --storage '$storage' (an absolute path)"
if ((unpack)); then
  [[ ${staging%.*} == "$storage/.staging/$name" && ${staging##*.} =~ ^[0-9a-f]{8}$ && ! -e $staging ]] \
    || die 2 "invalid --staging '$staging' (with --unpack-stdin: $storage/.staging/$name.<8 hex digits>, not existing)"
else
  [[ $staging == /* && $staging != *..* && -d $staging ]] || die 2 "invalid --staging '$staging' (an existing directory)"
fi
[[ -z $installation || $installation =~ ^[0-9a-f-]{36}$ ]] || die 2 "invalid --installation '$installation' (a UUID)"
rbd_check create-vm.sh
[[ -z $record_id || $record_id =~ ^[1-9][0-9]{0,18}$ ]] || die 2 "invalid --record-id '$record_id'"
if ((net_set + mac_set + ip_set)); then
  missing=''
  ((net_set)) || missing+=' --network'
  ((mac_set)) || missing+=' --mac'
  ((ip_set)) || missing+=' --ip'
  [[ -z $missing ]] || die 2 "--network, --mac and --ip go together: missing$missing"
  [[ $net =~ ^[A-Za-z0-9_.-]{1,64}$ ]] || die 2 "invalid --network '$net' (letters, digits, '_', '.', '-'; 1-64 characters)"
  [[ $mac =~ ^[0-9A-Fa-f]{2}(:[0-9A-Fa-f]{2}){5}$ ]] || die 2 "invalid --mac '$mac' (xx:xx:xx:xx:xx:xx, hexadecimal)"
  octet='(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])'
  [[ $ip =~ ^$octet(\.$octet){3}$ ]] || die 2 "invalid --ip '$ip' (a dotted IPv4 address)"
  mac=${mac,,}  # libvirt and dnsmasq write MACs in lower case
fi
if ((adopt)); then
  rbd_used || die 2 "--adopt needs the RBD options (disks in shared storage)"
fi
if ((adopt)); then
  for kind in root seed $( ((data_gb > 0)) && echo data); do
    rbd_vm_image "$name" "$kind"
    rbd_image_exists "$REPLY" || die 3 "RBD image $REPLY does not exist: nothing to adopt"
    image=$REPLY
    rbd_mark "$image"
    [[ $REPLY == "installation=$installation id=$record_id" ]] \
      || die 4 "RBD image $image is marked '$REPLY', not as row $record_id of installation $installation"
  done
elif rbd_used; then
  [[ $base =~ ^[a-z][a-z0-9.-]{0,62}$ ]] || die 2 "invalid --base '$base' (an image name)"
  rbdc snap ls "$rbd_pool/$base" 2>/dev/null | awk '$2 == "base" {found=1} END {exit !found}' \
    || die 3 "base image $rbd_pool/$base@base does not exist (vmctl images import puts it there)"
else
  [[ -f $base ]] || die 3 "base image $base does not exist on $(hostname)"
fi

if ((unpack)); then
  mkdir -p -m 0700 "$storage/.staging"
  mkdir -m 0700 "$staging"
  trap 'rm -rf -- "$staging"' EXIT
  tar -x -C "$staging" --no-same-owner -f - || die 2 "cannot unpack the staged files (a tar archive) from standard input"
fi
if ((adopt)); then
  [[ -f $staging/domain.xml ]] || die 2 "missing $staging/domain.xml"
else
  for f in domain.xml user-data meta-data; do
    [[ -f $staging/$f ]] || die 2 "missing $staging/$f"
  done
fi

vmdir=$storage/$name
marker=$vmdir/.vmctl
virsh() { command virsh -q -c qemu:///system "$@"; }

# --- DHCP reservation in the libvirt network (--network/--mac/--ip) ---------------------------
# dhcp_hosts, host_xml, dhcp_leases: scripts/lib/dhcp.sh (vmctl sends it ahead of this script).
# shellcheck source=lib/dhcp.sh
[[ $(type -t dhcp_hosts) == function ]] || source "$(dirname "${BASH_SOURCE[0]}")/lib/dhcp.sh"

# net_info: fails (virsh's error on stderr) if network $net does not exist; sets net_active,
# net_persistent (0/1) and bridge.
net_info() {
  local info
  info=$(virsh net-info --network "$net")
  net_active=0 net_persistent=0 bridge=''
  [[ $info =~ Active:[[:space:]]+yes ]] && net_active=1
  [[ $info =~ Persistent:[[:space:]]+yes ]] && net_persistent=1
  [[ $info =~ Bridge:[[:space:]]+([^[:space:]]+) ]] && bridge=${BASH_REMATCH[1]}
  return 0
}

# reserve: exactly one <host mac='$mac' name='$name' ip='$ip'/> in $net, live and persistent;
# the scopes this run added it to go to `added` (for cleanup).
added=()
reserve() {
  local scope i kept
  local -a scopes=(live)
  net_info
  if ((!net_active)); then
    echo "create-vm.sh: network $net on $(hostname) is not active" >&2
    return 1
  fi
  ((net_persistent)) && scopes+=(config)
  for scope in "${scopes[@]}"; do
    dhcp_hosts "$scope"
    kept=0
    for i in "${!H_MAC[@]}"; do
      if ((!kept)) && [[ ${H_MAC[i]} == "$mac" && ${H_IP[i]} == "$ip" ]]; then
        kept=1
      elif [[ ${H_MAC[i]} == "$mac" || ${H_IP[i]} == "$ip" || ${H_NAME[i]} == "$name" ]]; then
        host_xml "$i"
        echo "create-vm.sh: deleting stale DHCP reservation $REPLY from $net ($scope)" >&2
        virsh net-update --network "$net" --command delete --section ip-dhcp-host --xml "$REPLY" "--$scope" >/dev/null
      fi
    done
    if ((!kept)); then
      virsh net-update --network "$net" --command add-last --section ip-dhcp-host \
        --xml "<host mac='$mac' name='$name' ip='$ip'/>" "--$scope" >/dev/null
      added+=("$scope")
    fi
  done
  if ((${#added[@]})); then
    echo "create-vm.sh: reserved $ip for $mac in $net (${added[*]})" >&2
  fi
  # dnsmasq does not hand out a reserved address while another MAC holds a lease of it.
  dhcp_leases
  for i in "${!L_MAC[@]}"; do
    [[ ${L_IP[i]} == "$ip" && ${L_MAC[i]} != "$mac" ]] || continue
    if ! command -v dhcp_release >/dev/null; then
      echo "create-vm.sh: warning: $ip is leased to ${L_MAC[i]} in $net and dhcp_release (dnsmasq-utils) is not installed; $name may not get $ip until that lease expires" >&2
    elif dhcp_release "$bridge" "$ip" "${L_MAC[i]}"; then
      echo "create-vm.sh: released the stale lease of $ip to ${L_MAC[i]} in $net" >&2
    else
      echo "create-vm.sh: warning: dhcp_release $bridge $ip ${L_MAC[i]} failed; $name may not get $ip until that lease expires" >&2
    fi
  done
}

# Remove the staging directory however we leave.
trap 'rm -rf -- "$staging"' EXIT

if virsh dominfo "$name" >/dev/null 2>&1; then
  [[ -f $marker ]] || die 4 "a domain named $name exists on $(hostname) and was not made by vmctl"
  if ((net_set)); then
    reserve  # a re-run repairs the reservation
  fi
  if ((start)) && [[ $(virsh domstate "$name") != running ]]; then
    virsh start "$name" >/dev/null
  fi
  echo "create-vm.sh: $name exists already" >&2
  exit 0
fi
[[ ! -e $vmdir || -f $marker ]] || die 4 "$vmdir exists and was not made by vmctl"

made_dir=0 defined=0
made_images=()
cleanup() {
  local status=$? scope
  trap - ERR
  [[ $BASHPID == "$$" ]] || exit "$status"  # in a $(...): the main shell cleans up
  echo "create-vm.sh: failed (exit $status) at line ${BASH_LINENO[0]}: $BASH_COMMAND; removing what this run made" >&2
  if ((defined)); then
    virsh destroy "$name" >/dev/null 2>&1 || true
    virsh undefine "$name" --nvram >/dev/null 2>&1 || virsh undefine "$name" >/dev/null 2>&1 || true
  fi
  ((made_dir)) && rm -rf -- "$vmdir"
  for image in "${made_images[@]}"; do
    rbd_remove "$image" || echo "create-vm.sh: could not remove $image" >&2
  done
  for scope in "${added[@]}"; do
    virsh net-update --network "$net" --command delete --section ip-dhcp-host \
      --xml "<host mac='$mac' ip='$ip'/>" "--$scope" >/dev/null || true
  done
  rm -rf -- "$staging"
  exit 1
}
trap cleanup ERR

if ((net_set)); then
  reserve
fi
if [[ ! -d $vmdir ]]; then
  mkdir -p -- "$vmdir"
  made_dir=1
fi
if [[ -n $installation ]]; then
  printf 'installation=%s\nid=%s\n' "$installation" "$record_id" >"$marker"
else
  touch -- "$marker"
fi
seed_files=("$staging/user-data" "$staging/meta-data")
[[ -f $staging/network-config ]] && seed_files+=("$staging/network-config")
if ((adopt)); then
  :  # the disks are in the pool already (checked above)
elif rbd_used; then
  mark="installation=$installation id=$record_id"
  # Images of ours by these names were left by a create that died: they go; others' stay.
  for kind in root data seed; do
    rbd_vm_image "$name" "$kind"
    image=$REPLY
    rbd_image_exists "$image" || continue
    rbd_mark "$image"
    if [[ -z $REPLY || ( -n $installation && $REPLY != "installation=$installation "* ) ]]; then
      ((made_dir)) && rm -rf -- "$vmdir"
      die 4 "RBD image $image exists and was not made by this vmctl; left alone"
    fi
    echo "create-vm.sh: removing $image, left by a create that did not finish" >&2
    rbd_remove "$image"
  done
  rbd_new() { rbd_vm_image "$name" "$1"; }
  rbd_new root
  root=$REPLY
  rbdc clone "$rbd_pool/$base@base" "$root"
  made_images+=("$root")
  rbdc image-meta set "$root" vmctl.mark "$mark"
  size=$(rbdc info --format json "$root" | sed -n 's/.*"size":\([0-9]*\).*/\1/p')
  if ((size < root_gb * 1073741824)); then
    rbdc resize --no-progress --size "${root_gb}G" "$root"
  fi
  if ((data_gb > 0)); then
    rbd_new data
    rbdc create --size "${data_gb}G" "$REPLY"
    made_images+=("$REPLY")
    rbdc image-meta set "$REPLY" vmctl.mark "$mark"
  fi
  genisoimage -quiet -output "$staging/seed.iso" -volid cidata -joliet -rock "${seed_files[@]}"
  rbd_new seed
  rbdc import --no-progress "$staging/seed.iso" "$REPLY"
  made_images+=("$REPLY")
  rbdc image-meta set "$REPLY" vmctl.mark "$mark"
else
  qemu-img create -q -f qcow2 -F qcow2 -b "$base" "$vmdir/root.qcow2" "${root_gb}G"
  if ((data_gb > 0)); then
    qemu-img create -q -f qcow2 "$vmdir/data.qcow2" "${data_gb}G"
  fi
  genisoimage -quiet -output "$vmdir/seed.iso" -volid cidata -joliet -rock "${seed_files[@]}"
  chmod 0600 -- "$vmdir/seed.iso"  # holds the guest's SSH host key
fi
virsh define "$staging/domain.xml" >/dev/null
defined=1
if ((start)); then
  virsh start "$name" >/dev/null
fi
if rbd_used; then
  echo "create-vm.sh: $name created in pool $rbd_pool" >&2
else
  echo "create-vm.sh: $name created in $vmdir" >&2
fi

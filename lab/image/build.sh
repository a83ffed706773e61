#!/usr/bin/env bash
# Build the vmctl lab guest image from Debian bookworm packages (no cloud image download).
#
#   lab/image/build.sh [--print-key] [--force]
#
# The image is cached in ${VMCTL_IMAGE_CACHE:-/var/cache/vmctl-lab/images}/<key>/, where <key> is
# the first 16 hex digits of a sha256 over every file under lab/image/ (paths and contents) except
# README.md and boot-test.sh.
# stdout carries only the image directory (or the key with --print-key); progress goes to stderr.
# Needs root, mmdebstrap, parted, e2fsprogs (mkfs.ext4 -d), qemu-utils (qemu-img), python3.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_root=${VMCTL_IMAGE_CACHE:-/var/cache/vmctl-lab/images}

suite=bookworm
mirror=http://deb.debian.org
disk_size_mib=2048   # virtual size of disk.qcow2; cloud-init growpart/resizefs grow it per VM
part_start_mib=1     # the root partition starts at 1 MiB, like cloud images
default_user=debian
cmdline_args="console=ttyS0 net.ifnames=0 quiet loglevel=0 mitigations=off tsc=reliable no_timer_check audit=0"
cmdline="root=/dev/vda1 ro $cmdline_args"
packages=(
  linux-image-cloud-amd64 initramfs-tools lz4 systemd-sysv systemd-resolved udev kmod
  cloud-init cloud-guest-utils openssh-server qemu-guest-agent sudo
  e2fsprogs xfsprogs iproute2 netbase ca-certificates grub-pc-bin grub2-common
)

log() { printf '%s build.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() { log "error: $*"; exit 1; }

usage() {
  cat >&2 <<EOF
usage: $0 [--print-key] [--force]
  builds (or reuses) the lab guest image and prints its directory on stdout
  --print-key  print the cache key of the current recipe and exit
  --force      rebuild even if a complete image for the key is cached
environment: VMCTL_IMAGE_CACHE (default /var/cache/vmctl-lab/images)
EOF
}

# Key: sha256 over the "<sha256>  ./<path>" lines of every file under lab/image/, sorted by path,
# except the two that do not go into the image (this README and the boot test).
recipe_key() {
  (cd "$here" && find . -type f ! -path ./README.md ! -path ./boot-test.sh -print0 |
    LC_ALL=C sort -z | xargs -0 sha256sum) | sha256sum | cut -c1-16
}

is_complete() {
  local d=$1 f
  for f in manifest.json disk.qcow2 vmlinuz initrd.img; do
    [[ -s $d/$f ]] || return 1
  done
}

print_key=0 force=0
for arg in "$@"; do
  case $arg in
    --print-key) print_key=1 ;;
    --force) force=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage; exit 2 ;;
  esac
done

key=$(recipe_key)
if ((print_key)); then
  echo "$key"
  exit 0
fi
out=$cache_root/$key
if ((!force)) && is_complete "$out"; then
  echo "$out"
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap root mode, chroot)"
for tool in mmdebstrap parted mkfs.ext4 qemu-img python3 chroot flock; do
  command -v "$tool" >/dev/null || die "missing tool: $tool"
done

# Remove a build tree: first anything still mounted below it (mmdebstrap unmounts /dev, /proc
# and /sys itself; this covers an interrupted run), then the files, never crossing into a mount.
remove_tree() {
  local dir=$1 m
  [[ -e $dir ]] || return 0
  for m in $(awk -v p="$dir/" 'index($2, p) == 1 { print $2 }' /proc/self/mounts | sort -r); do
    umount -l "$m" 2>/dev/null || true
  done
  rm -rf --one-file-system "$dir"
}

mkdir -p "$cache_root"
# One builder per key at a time; a second caller waits, then finds the finished image.
exec 9>"$cache_root/.$key.lock"
flock 9
if ((!force)) && is_complete "$out"; then
  echo "$out"
  exit 0
fi
# Holding the lock, any temp dir of this key is left over from a killed build.
for stale in "$cache_root/.build-$key."* "$cache_root/.old-$key."*; do
  [[ -e $stale ]] || continue
  log "removing leftover $stale"
  remove_tree "$stale"
done

started=$(date +%s.%N)
tmp=$(mktemp -d "$cache_root/.build-$key.XXXXXX")
old=""
cleanup() {
  local rc=$?
  remove_tree "$tmp"
  if [[ -n $old ]]; then remove_tree "$old"; fi
  if ((rc != 0)); then log "failed (exit $rc); removed $tmp"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

rootfs=$tmp/rootfs
work=$tmp/work
mkdir -p "$work"

log "key $key: bootstrapping Debian $suite into $rootfs"
include=$(IFS=,; echo "${packages[*]}")
mmdebstrap --variant=minbase --include="$include" \
  --dpkgopt='path-exclude=/usr/share/man/*' \
  --dpkgopt='path-exclude=/usr/share/doc/*' \
  --dpkgopt='path-include=/usr/share/doc/*/copyright' \
  --dpkgopt='path-exclude=/usr/share/locale/*' \
  --customize-hook="cp -rT --preserve=mode '$here/rootfs' \"\$1\"" \
  --customize-hook="chroot \"\$1\" /bin/sh -s < '$here/customize.sh'" \
  "$suite" "$rootfs" \
  "deb $mirror/debian $suite main" \
  "deb $mirror/debian $suite-updates main" \
  "deb $mirror/debian-security $suite-security main" >&2

# GRUB reads this static config; /vmlinuz and /initrd.img are the kernel's symlinks, so a kernel
# upgrade inside the guest keeps booting (zz-update-grub regenerates it from /etc/default/grub.d).
cat >"$rootfs/boot/grub/grub.cfg" <<EOF
# vmctl lab image (static; written by lab/image/build.sh)
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set default=0
set timeout=0
set timeout_style=menu
insmod part_msdos
insmod ext2
set root=(hd0,msdos1)
menuentry 'Debian GNU/Linux ($suite, vmctl lab)' {
	linux /vmlinuz $cmdline
	initrd /initrd.img
}
EOF
mkdir -p "$rootfs/etc/default/grub.d"
cat >"$rootfs/etc/default/grub.d/vmctl-lab.cfg" <<EOF
# vmctl lab image: used only if update-grub runs in the guest (zz-update-grub after a kernel upgrade)
GRUB_TIMEOUT=0
GRUB_TIMEOUT_STYLE=menu
GRUB_TERMINAL=serial
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_CMDLINE_LINUX="$cmdline_args"
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_DISABLE_RECOVERY=true
GRUB_DISABLE_OS_PROBER=true
EOF

kernel=$(readlink -f "$rootfs/vmlinuz")
initrd=$(readlink -f "$rootfs/initrd.img")
[[ -f $kernel && -f $initrd ]] || die "no kernel/initrd in the rootfs"
cp "$kernel" "$tmp/vmlinuz"
cp "$initrd" "$tmp/initrd.img"
chroot "$rootfs" dpkg-query -W -f '${Package}=${Version}\n' | LC_ALL=C sort >"$work/installed.txt"

log "making the disk: msdos label, ext4 'root' at ${part_start_mib} MiB, GRUB i386-pc"
raw=$work/disk.raw
part_bytes=$(((disk_size_mib - part_start_mib) * 1024 * 1024))
truncate -s "${disk_size_mib}M" "$raw"
# (parted calls udevadm, which this host lacks; keep its output only if it fails)
parted_out=$(parted -s "$raw" mklabel msdos mkpart primary ext4 "${part_start_mib}MiB" 100% \
  set 1 boot on 2>&1) || die "parted failed: $parted_out"
mkfs.ext4 -q -L root -d "$rootfs" -E offset=$((part_start_mib * 1024 * 1024)) "$raw" "$((part_bytes / 1024))k"

# GRUB for BIOS, as grub-bios-setup lays it out: boot.img's code (440 bytes, so the disk
# signature and partition table stay) in the MBR and core.img from sector 1, in the gap before
# the partition. boot.img's default kernel sector is 1 and grub-mkimage filled in core.img's
# length, so nothing needs patching; core.img has the prefix (hd0,msdos1)/boot/grub built in.
# No loop device, no mount (grub-bios-setup insists on the directory being on a mounted disk).
grubdir=$rootfs/boot/grub/i386-pc
core_sectors=$((($(stat -c %s "$grubdir/core.img") + 511) / 512))
((core_sectors < part_start_mib * 2048 - 1)) || die "core.img does not fit before the partition"
dd if="$grubdir/boot.img" of="$raw" bs=440 count=1 conv=notrunc status=none
dd if="$grubdir/core.img" of="$raw" bs=512 seek=1 conv=notrunc status=none

qemu-img convert -f raw -O qcow2 "$raw" "$tmp/disk.qcow2"
virtual_size=$(qemu-img info --output=json "$tmp/disk.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')

build_seconds=$(python3 -c "import time; print(round(time.time() - $started, 1))")
KEY=$key SUITE=$suite USER_NAME=$default_user CMDLINE=$cmdline VSIZE=$virtual_size \
  SECS=$build_seconds PKGS="${packages[*]}" python3 - "$work/installed.txt" >"$tmp/manifest.json" <<'EOF'
import datetime, json, os, sys
env = os.environ
installed = [line.strip() for line in open(sys.argv[1]) if line.strip()]
manifest = {
    "key": env["KEY"],
    "built_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    "build_seconds": float(env["SECS"]),
    "debian": env["SUITE"],
    "default_user": env["USER_NAME"],
    "disk": "disk.qcow2",
    "disk_virtual_size_bytes": int(env["VSIZE"]),
    "kernel": "vmlinuz",
    "initrd": "initrd.img",
    "kernel_cmdline": env["CMDLINE"],
    "packages": env["PKGS"].split(),
    "installed_packages": installed,
}
json.dump(manifest, sys.stdout, indent=2)
sys.stdout.write("\n")
EOF

remove_tree "$rootfs"
remove_tree "$work"
chmod 755 "$tmp"
if [[ -e $out ]]; then
  old=$(mktemp -d "$cache_root/.old-$key.XXXXXX")
  mv -T "$out" "$old/img"
fi
mv -T "$tmp" "$out"
log "done in ${build_seconds}s: $out ($(du -sh "$out" | cut -f1))"
# Images of older recipes (~0.5 GB each): keep the newest two others, remove the rest. Nodes that
# still boot from one hold hard links, so removing the cache entry never breaks a running lab.
# (grep finds nothing on a first build: that is no failure under pipefail)
ls -1dt "$cache_root"/[0-9a-f]*/ 2>/dev/null | { grep -v "/$key/\$" || true; } | tail -n +3 |
  while read -r stale; do log "pruning old image ${stale%/}"; rm -rf -- "${stale%/}"; done
echo "$out"

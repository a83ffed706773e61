#!/bin/sh
# Runs inside the image's chroot (mmdebstrap --customize-hook) after the files under
# lab/image/rootfs/ were copied in. Keep it idempotent and quiet on stdout.
set -eu

# Host keys are made per instance by cloud-init (ssh_genkeytypes: [ed25519]).
rm -f /etc/ssh/ssh_host_*

# Network: cloud-init renders systemd-networkd config (see cloud.cfg.d/90_vmctl_lab.cfg).
systemctl enable systemd-networkd.service systemd-resolved.service >/dev/null 2>&1

# Units a short-lived lab guest does not need; each costs time on the first boot under emulation.
systemctl mask >/dev/null 2>&1 \
  apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer e2scrub_all.timer \
  fstrim.timer systemd-tmpfiles-clean.timer e2scrub_reap.service \
  getty@tty1.service systemd-binfmt.service proc-sys-fs-binfmt_misc.automount \
  ldconfig.service systemd-update-done.service systemd-journal-catalog-update.service \
  systemd-pstore.service systemd-network-generator.service \
  modprobe@configfs.service modprobe@drm.service modprobe@efi_pstore.service modprobe@fuse.service \
  sys-kernel-config.mount sys-kernel-debug.mount sys-kernel-tracing.mount \
  sys-fs-fuse-connections.mount dev-hugepages.mount modprobe@dm_mod.service modprobe@loop.service \
  systemd-update-utmp.service systemd-update-utmp-runlevel.service

# Generators for things this image has no use for (GPT auto-mounts, dm-crypt/verity/integrity,
# hibernation, sysv scripts: every service here has a native unit).
mkdir -p /etc/systemd/system-generators
for g in systemd-gpt-auto-generator systemd-cryptsetup-generator systemd-integritysetup-generator \
  systemd-veritysetup-generator systemd-hibernate-resume-generator systemd-system-update-generator \
  systemd-sysv-generator systemd-rc-local-generator systemd-run-generator systemd-debug-generator; do
  ln -sf /dev/null "/etc/systemd/system-generators/$g"
done

# Small initramfs (conf.d/vmctl-lab.conf: MODULES=list, lz4).
update-initramfs -u -k all >/dev/null

# GRUB for BIOS boot: modules under /boot/grub/i386-pc and a core.img that finds them at
# (hd0,msdos1)/boot/grub. build.sh writes grub.cfg and puts boot.img/core.img on the disk.
mkdir -p /boot/grub/i386-pc
cp /usr/lib/grub/i386-pc/*.mod /usr/lib/grub/i386-pc/*.lst /usr/lib/grub/i386-pc/*.img \
  /boot/grub/i386-pc/
grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
  biosdisk part_msdos ext2

# Python bytecode is already compiled by the packages' postinst scripts; make sure of it so the
# first boot does not write .pyc files.
# (compileall exits non-zero if any file does not compile; that must not stop the build.)
python3 -m compileall -q -j 0 /usr/lib/python3/dist-packages /usr/lib/python3.11 >/dev/null || true

# No state from the build: cloud-init runs as on a fresh instance.
rm -rf /var/lib/cloud/* /var/log/cloud-init*.log
: >/etc/machine-id
rm -f /var/lib/dbus/machine-id

#!/usr/bin/env bash
# Builds the plain lab VM: image/out/plain/debian12.qcow2, a blank Debian 12 host (UEFI,
# GPT, systemd-boot, ext4 root, serial console) with openssh-server, python3 and sudo, and
# NO Outpost: the Ansible roles install it (tests/image/test_ansible_vms.py) and `make box`
# packages it as the Vagrant box. The same tooling as the appliance (image/lib.sh, shared
# with image/build.sh): mmdebstrap base cached in out/cache, no loop devices (mkfs.ext4 -d,
# mcopy, sfdisk).
#
# The user is `vagrant` (passwordless sudo), authorized with Vagrant's well-known insecure
# key (vagrant replaces it on the first `vagrant up`). A lab run adds its own key, hostname
# and a systemd-networkd file per boot through QEMU's fw_cfg, without rebuilding:
#   -fw_cfg name=opt/lab/authorized_keys,file=id.pub
#   -fw_cfg name=opt/lab/hostname,string=primary
#   -fw_cfg name=opt/lab/network,file=10-lab.network
# (image/plain/rootfs/usr/local/sbin/lab-seed). SSH host keys are made on first boot.
# Needs root. Environment: OUT (default image/out), FRESH=1, MIRROR, SECURITY_MIRROR.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out}
WORK=$OUT/work-plain
DEST=$OUT/plain
LOG=$DEST/build.log
NAME=build-plain
ROOT_FREE_MB=${ROOT_FREE_MB:-1536}
PLAIN=$HERE/plain
INSECURE_KEY=${INSECURE_KEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  2>/dev/null | sort -V | tail -n 1)}

DISK_UUID=6f757470-6c61-4000-8000-000000000001
ESP_PARTUUID=6f757470-6c61-4000-8000-000000000002
ROOT_PARTUUID=6f757470-6c61-4000-8000-000000000003
ROOT_FSUUID=6f757470-6c61-4000-8000-000000000004
ESP_VOLID=0f05706c

STEPS=5
STEP=0
# shellcheck source=image/lib.sh
source "$HERE/lib.sh"
require_root_and_tools
[[ -r $INSECURE_KEY ]] || { echo "build-plain: Vagrant's insecure key not found (vagrant package)" >&2; exit 2; }

mkdir -p "$CACHE" "$WORK" "$DEST"
: >"$LOG"
T_BUILD=$(date +%s)

ROOT=$WORK/root
BASE=$(base_tar plain "$PLAIN/packages.txt")

make_root_tree() {
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  tar -C "$ROOT" --numeric-owner -xpf "$BASE"
  prune_modules
  cp -r --no-preserve=ownership "$PLAIN/rootfs/." "$ROOT/"
  chmod 0440 "$ROOT/etc/sudoers.d/vagrant"
  in_root useradd --create-home --shell /bin/bash --uid 1000 --user-group vagrant
  install -d -m 0700 "$ROOT/home/vagrant/.ssh"
  install -m 0600 "$INSECURE_KEY" "$ROOT/home/vagrant/.ssh/authorized_keys"
  chroot "$ROOT" chown -R vagrant:vagrant /home/vagrant/.ssh
  systemctl --root="$ROOT" enable systemd-networkd.service systemd-resolved.service \
    ssh.service ssh-hostkeys.service lab-seed.service
  systemctl --root="$ROOT" disable apt-daily.timer apt-daily-upgrade.timer || true
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
  cat >"$ROOT/etc/fstab" <<EOF
PARTUUID=$ROOT_PARTUUID / ext4 defaults,noatime,errors=remount-ro 0 1
EOF
  : >"$ROOT/etc/machine-id"
  rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT"/etc/ssh/ssh_host_*
  rm -rf "$ROOT"/var/log/* "$ROOT"/tmp/*
}

make_esp() {
  local esp=$WORK/esp
  rm -rf "$esp" "$WORK/esp.img"
  mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/debian"
  cp "$ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
  cp "$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)" "$esp/debian/linux"
  cp "$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n 1)" "$esp/debian/initrd"
  # The kernel and initrd also beside the image: direct kernel boot (vagrant-libvirt's
  # kernel/initrd/cmd_line, qemu -kernel) skips the firmware, much faster under emulation.
  cp "$esp/debian/linux" "$DEST/linux"
  cp "$esp/debian/initrd" "$DEST/initrd"
  echo "root=PARTUUID=$ROOT_PARTUUID ro console=ttyS0,115200 net.ifnames=0 no_timer_check" >"$DEST/cmdline"
  printf 'timeout 0\ndefault debian.conf\n' >"$esp/loader/loader.conf"
  cat >"$esp/loader/entries/debian.conf" <<EOF
title   Debian 12 (Outpost lab)
linux   /debian/linux
initrd  /debian/initrd
options root=PARTUUID=$ROOT_PARTUUID ro console=tty0 console=ttyS0,115200 net.ifnames=0 no_timer_check
EOF
  mkfs.fat -F 32 -i "$ESP_VOLID" -n ESP -C "$WORK/esp.img" $((ESP_MB * 1024))
  mcopy -s -p -m -i "$WORK/esp.img" "$esp"/* ::/
}

make_root() { make_root_fs debian-root "$ROOT_FSUUID"; }

make_disk() {
  make_gpt_disk "$DEST/debian12.qcow2" "$DISK_UUID" "$ESP_PARTUUID" "$ROOT_PARTUUID" root
}

base_step "$BASE" "$PLAIN/packages.txt" --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*'
step "Root tree: vagrant user, sshd, lab seed, networkd" make_root_tree
step "EFI system partition (systemd-boot, kernel, initrd)" make_esp
step "Root filesystem (ext4)" make_root
step "GPT disk -> out/plain/debian12.qcow2" make_disk
rm -rf "$ROOT"
echo "build-plain: $DEST/debian12.qcow2  $(du -m --apparent-size "$DEST/debian12.qcow2" | cut -f1) MiB," \
  "built in $(($(date +%s) - T_BUILD)) s"

#!/usr/bin/env bash
# Builds the plain lab VM: image/out/plain/debian12.qcow2, a blank Debian 12 host (UEFI,
# GPT, systemd-boot, ext4 root, serial console) with openssh-server, python3 and sudo, and
# NO Outpost: the Ansible roles install it (tests/image/test_ansible_vms.py) and `make box`
# packages it as the Vagrant box. The same tooling as the appliance (image/build.sh):
# mmdebstrap base cached in out/cache, no loop devices (mkfs.ext4 -d, mcopy, sfdisk).
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
CACHE=$OUT/cache
WORK=$OUT/work-plain
DEST=$OUT/plain
LOG=$DEST/build.log
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ROOT_FREE_MB=${ROOT_FREE_MB:-1536}
ESP_MB=128
PLAIN=$HERE/plain
INSECURE_KEY=${INSECURE_KEY:-$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub \
  2>/dev/null | sort -V | tail -n 1)}

DISK_UUID=6f757470-6c61-4000-8000-000000000001
ESP_PARTUUID=6f757470-6c61-4000-8000-000000000002
ROOT_PARTUUID=6f757470-6c61-4000-8000-000000000003
ROOT_FSUUID=6f757470-6c61-4000-8000-000000000004
ESP_VOLID=0f05706c
GPT_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export SOURCE_DATE_EPOCH

if [[ $(id -u) -ne 0 ]]; then
  echo "build-plain: needs root (chroot, file ownership)" >&2
  exit 2
fi
for tool in mmdebstrap mkfs.ext4 mkfs.fat mcopy sfdisk qemu-img; do
  command -v "$tool" >/dev/null || {
    echo "build-plain: $tool is missing; run scripts/setup-image.sh" >&2; exit 2; }
done
[[ -r $INSECURE_KEY ]] || { echo "build-plain: Vagrant's insecure key not found (vagrant package)" >&2; exit 2; }

mkdir -p "$CACHE" "$WORK" "$DEST"
: >"$LOG"
STEPS=5
STEP=0
T_BUILD=$(date +%s)

step() {
  local title=$1; shift
  STEP=$((STEP + 1))
  local t0 now last pid
  t0=$(date +%s)
  printf '[%d/%d] %s\n' "$STEP" "$STEPS" "$title"
  echo "=== [$STEP/$STEPS] $title" >>"$LOG"
  ( "$@" ) >>"$LOG" 2>&1 &
  pid=$!
  last=$t0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    if ((now - last >= 20)); then
      printf '      %4ds  %s\n' "$((now - t0))" "$(tail -n 1 "$LOG" | cut -c1-90)"
      last=$now
    fi
  done
  if ! wait "$pid"; then
    echo "build-plain: step failed: $title (last lines of $LOG):" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  printf '      done in %ds\n' "$(($(date +%s) - t0))"
}

ROOT=$WORK/root
packages() { grep -v '^\s*#' "$PLAIN/packages.txt" | grep -v '^\s*$' | paste -sd, -; }

STAGE1_OPTS=(--variant=minbase --mode=root --format=tar
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*')
KEY=$(printf '%s\n' "$(packages)" "${STAGE1_OPTS[*]}" "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)
BASE=$CACHE/plain-$KEY.tar

build_base() {
  rm -f "$BASE.part"
  mmdebstrap "${STAGE1_OPTS[@]}" --include="$(packages)" \
    --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" "$BASE.part" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
  mv "$BASE.part" "$BASE"
}

in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 "$@"; }

# The appliance's list (image/prune-modules.txt): sound, GPU, radios, ... Fewer modules for
# udev to load at boot, which under emulation is much of the time to SSH.
prune_modules() {
  local kdir kver
  for kdir in "$ROOT"/usr/lib/modules/*/; do
    kver=$(basename "$kdir")
    grep -v '^\s*#' "$HERE/prune-modules.txt" | grep -v '^\s*$' | while read -r sub; do
      rm -rf "${kdir}kernel/$sub"
    done
    in_root depmod -a "$kver"
  done
}

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

make_root() {
  local used
  rm -f "$WORK/root.img"
  used=$(du -sm --apparent-size "$ROOT" | cut -f1)
  ROOT_MB=$(( (used * 115 / 100) + ROOT_FREE_MB ))
  echo "root: ${used} MiB used, filesystem ${ROOT_MB} MiB"
  echo "$ROOT_MB" >"$WORK/root.mb"
  mkfs.ext4 -q -L debian-root -U "$ROOT_FSUUID" -E "root_owner=0:0" -d "$ROOT" \
    "$WORK/root.img" "${ROOT_MB}M"
}

make_disk() {
  local root_mb total raw=$WORK/disk.raw
  root_mb=$(cat "$WORK/root.mb")
  total=$((1 + ESP_MB + root_mb + 1))
  rm -f "$raw"
  truncate -s "${total}M" "$raw"
  sfdisk --quiet "$raw" <<EOF
label: gpt
label-id: $DISK_UUID
start=1MiB, size=${ESP_MB}MiB, type=$GPT_ESP, uuid=$ESP_PARTUUID, name="esp"
start=$((1 + ESP_MB))MiB, size=${root_mb}MiB, type=$GPT_ROOT_X86_64, uuid=$ROOT_PARTUUID, name="root"
EOF
  dd if="$WORK/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$WORK/root.img" of="$raw" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
  rm -f "$DEST/debian12.qcow2.part"
  qemu-img convert -O qcow2 "$raw" "$DEST/debian12.qcow2.part"
  mv "$DEST/debian12.qcow2.part" "$DEST/debian12.qcow2"
  rm -f "$raw" "$WORK/esp.img" "$WORK/root.img"
}

if [[ -f $BASE && -z ${FRESH:-} ]]; then
  STEP=$((STEP + 1))
  printf '[%d/%d] Debian base: cached %s\n' "$STEP" "$STEPS" "${BASE#"$REPO"/}"
else
  step "Debian base with mmdebstrap ($SUITE, $(packages | tr ',' '\n' | wc -l) packages; cached after)" build_base
fi
step "Root tree: vagrant user, sshd, lab seed, networkd" make_root_tree
step "EFI system partition (systemd-boot, kernel, initrd)" make_esp
step "Root filesystem (ext4)" make_root
step "GPT disk -> out/plain/debian12.qcow2" make_disk
rm -rf "$ROOT"
echo "build-plain: $DEST/debian12.qcow2  $(du -m --apparent-size "$DEST/debian12.qcow2" | cut -f1) MiB," \
  "built in $(($(date +%s) - T_BUILD)) s"

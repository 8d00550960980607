#!/usr/bin/env bash
# Builds the Outpost appliance image: image/out/outpost.qcow2 (UEFI, GPT, systemd-boot,
# ext4 root, serial console, a LUKS2 state partition formatted on first boot). Sources:
# Debian packages (mmdebstrap) and PyPI (the wheels of Outpost's dependencies); Outpost
# itself is a wheel built from this tree.
#
#   stage 1  mmdebstrap -> out/cache/base-<key>.tar   (cached: key = packages.txt + the
#            stage-1 settings in image/lib.sh; delete the file or FRESH=1 to rebuild)
#   stage 2  unpack, install the Outpost venv, units, vendor files; ESP + ext4 + GPT,
#            no loop devices (mkfs.ext4 -d, mkfs.fat + mcopy, sfdisk on a file)
#
# Reproducibility: fixed partition/filesystem UUIDs, SOURCE_DATE_EPOCH (the last commit's
# time) for mtimes, mkfs timestamps and .pyc files. The package set is whatever the mirror
# serves when the base is built; MIRROR=http://snapshot.debian.org/archive/debian/<ts>
# pins it where snapshot.debian.org is reachable (not from the build machines here).
# Needs root (chroot, file ownership). Environment: OUT (default image/out), FRESH=1,
# MIRROR, SECURITY_MIRROR, ROOT_FREE_MB (free space on the root filesystem, default 768),
# STATE_MB (the state partition, default 1024).
#
# Disk: 1 ESP (systemd-boot, kernel, initrd), 2 root (ext4, no secrets), 3 outpost-state:
# left empty here (zeros, so it costs nothing in the qcow2); on first boot
# outpost-state.service (appliance/state_partition.py) formats it as LUKS2, binds it to the
# TPM2 (or a key from the seed), makes an ext4 inside and, on every boot, unlocks it before
# /var/lib/outpost and /var/lib/outpost-secrets (bind mounts from it, see fstab) are mounted.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO=$(cd "$HERE/.." && pwd)
OUT=${OUT:-$HERE/out}
WORK=$OUT/work
LOG=$OUT/build.log
NAME=image
ROOT_FREE_MB=${ROOT_FREE_MB:-768}
STATE_MB=${STATE_MB:-1024}
PYTHON=${PYTHON:-$REPO/.venv/bin/python}

# Fixed identities, so that two builds of one tree give one image. (A fleet of appliances
# shares them; nothing relies on their uniqueness.)
DISK_UUID=6f757470-6f73-4000-8000-000000000001
ESP_PARTUUID=6f757470-6f73-4000-8000-000000000002
ROOT_PARTUUID=6f757470-6f73-4000-8000-000000000003
ROOT_FSUUID=6f757470-6f73-4000-8000-000000000004
# Must match appliance/state_partition.py (STATE_PARTUUID).
STATE_PARTUUID=6f757470-6f73-4000-8000-000000000005
ESP_VOLID=0f057057
# Plain "Linux filesystem data", not the discoverable /var type: systemd-gpt-auto-generator
# must not try to mount it (it is LUKS, unlocked by outpost-state.service).
GPT_LINUX_DATA=0FC63DAF-8483-4772-8E79-3D69D8477DE4

STEPS=8
STEP=0
# shellcheck source=image/lib.sh
source "$HERE/lib.sh"
require_root_and_tools
mkdir -p "$CACHE" "$WORK"
: >"$LOG"
T_BUILD=$(date +%s)

ROOT=$WORK/root
MOUNTED=()
cleanup() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

BASE=$(base_tar base "$HERE/packages.txt")

# out/wheels is also what the Ansible roles install from (outpost_common_wheel_dir).
build_wheels() {
  rm -rf "$OUT/wheels"
  "$PYTHON" -m pip wheel --quiet --wheel-dir "$OUT/wheels" "$REPO"
  ls "$OUT/wheels"
}

unpack() {
  rm -rf "$ROOT"
  mkdir -p "$ROOT"
  tar -C "$ROOT" --numeric-owner -xpf "$BASE"
}

install_outpost() {
  mount --bind /dev "$ROOT/dev"; MOUNTED+=("$ROOT/dev")
  mount -t proc proc "$ROOT/proc"; MOUNTED+=("$ROOT/proc")
  mkdir -p "$ROOT/tmp/wheels"
  cp "$OUT"/wheels/*.whl "$ROOT/tmp/wheels/"
  in_root python3 -m venv /opt/outpost/venv
  in_root /opt/outpost/venv/bin/pip install --quiet --no-index --no-compile \
    --find-links /tmp/wheels outpost
  in_root /opt/outpost/venv/bin/pip uninstall --quiet --yes pip setuptools || true
  # The service cannot write .pyc files (ProtectSystem=strict): compile them now,
  # hash-checked so that they are the same in every build.
  in_root /opt/outpost/venv/bin/python -m compileall -q \
    --invalidation-mode unchecked-hash /opt/outpost/venv/lib
  in_root /opt/outpost/venv/bin/outpost serve --help >/dev/null
  # What went in, for the record (and for comparing two builds).
  { in_root dpkg-query -W -f '${Package} ${Version}\n'
    (cd "$ROOT/opt/outpost/venv/lib/python3.11/site-packages" && ls -d *.dist-info); } >"$OUT/manifest.txt"
  rm -rf "$ROOT/tmp/wheels"
  umount "$ROOT/proc" "$ROOT/dev"; MOUNTED=()
}

install_system() {
  local sd=$REPO/packaging/systemd
  prune_modules
  install -m 0644 "$sd"/system/* "$ROOT/usr/lib/systemd/system/"
  install -D -m 0644 "$sd/sysusers.d/outpost.conf" "$ROOT/usr/lib/sysusers.d/outpost.conf"
  install -D -m 0644 "$sd/tmpfiles.d/outpost.conf" "$ROOT/usr/lib/tmpfiles.d/outpost.conf"
  install -D -m 0644 "$sd/system-preset/50-outpost.preset" \
    "$ROOT/usr/lib/systemd/system-preset/50-outpost.preset"
  cp -r --no-preserve=ownership "$HERE/rootfs/." "$ROOT/"
  install -m 0644 "$REPO/README.md" "$ROOT/opt/outpost/README.md"
  systemd-sysusers --root="$ROOT"
  systemd-tmpfiles --create --root="$ROOT" "$ROOT/usr/lib/tmpfiles.d/outpost.conf"
  systemctl --root="$ROOT" enable systemd-networkd.service systemd-resolved.service \
    systemd-timesyncd.service outpost-firstboot.service outpost-site.service \
    outpost-primary.service outpost-state.service
  # The state partition: what the first boot puts in its new ext4 (appliance/state_partition.py,
  # mkfs.ext4 -d), where a key lives when there is neither a TPM2 nor a key in the seed, and
  # where it is mounted. /var/lib/outpost and /var/lib/outpost-secrets stay empty on the root
  # filesystem: they are only mount points.
  in_root install -d -m 0700 -o outpost -g outpost /usr/lib/outpost/state-template/outpost \
    /usr/lib/outpost/state-template/outpost-secrets
  install -d -m 0700 "$ROOT/etc/outpost-state"
  install -d -m 0755 "$ROOT/var/lib/outpost-state"
  ln -sf ../run/systemd/resolve/stub-resolv.conf "$ROOT/etc/resolv.conf"
  install -D -m 0644 "$sd/udev/70-outpost-seed.rules" "$ROOT/usr/lib/udev/rules.d/70-outpost-seed.rules"
  # No apt lists in the image: the daily apt timers would only fail.
  systemctl --root="$ROOT" disable apt-daily.timer apt-daily-upgrade.timer || true
  cat >"$ROOT/etc/fstab" <<EOF
# The root filesystem is named by PARTUUID on the kernel command line and mounted
# read-only first, so that systemd-fsck-root checks it before it is remounted read-write.
PARTUUID=$ROOT_PARTUUID / ext4 defaults,noatime,errors=remount-ro 0 1
# The encrypted state (database, spool, card key): /dev/mapper/outpost-state is opened by
# outpost-state.service, which also checks the filesystem (so no fsck pass here: systemd's
# fsck would race the first boot's mkfs). nofail: a state partition that cannot be unlocked
# leaves the system up with the console; the role units require these mounts
# (RequiresMountsFor=, drop-ins in /usr/lib/systemd/system/outpost-*.service.d/), so no role
# ever writes its state to the unencrypted root instead.
/dev/mapper/outpost-state /var/lib/outpost-state ext4 noatime,nodev,nosuid,noexec,nofail,x-systemd.requires=outpost-state.service,x-systemd.device-timeout=600s 0 0
/var/lib/outpost-state/outpost /var/lib/outpost none bind,nofail,x-systemd.requires-mounts-for=/var/lib/outpost-state 0 0
/var/lib/outpost-state/outpost-secrets /var/lib/outpost-secrets none bind,nofail,x-systemd.requires-mounts-for=/var/lib/outpost-state 0 0
EOF
  # The root account stays locked: the appliance is managed through its configuration.
  # First boot: an empty machine-id makes systemd generate one and run its presets.
  : >"$ROOT/etc/machine-id"
  rm -f "$ROOT/var/lib/dbus/machine-id" "$ROOT/etc/hostid"
  rm -rf "$ROOT"/var/log/* "$ROOT"/var/cache/ldconfig/aux-cache "$ROOT"/tmp/* \
    "$ROOT"/var/cache/debconf/*-old "$ROOT"/var/lib/dpkg/*-old
  # Clamp every mtime to SOURCE_DATE_EPOCH.
  find "$ROOT" -newermt "@$SOURCE_DATE_EPOCH" -print0 |
    xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
}

make_esp() {
  local esp=$WORK/esp
  rm -rf "$esp" "$WORK/esp.img"
  mkdir -p "$esp/EFI/BOOT" "$esp/loader/entries" "$esp/outpost"
  cp "$ROOT/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
  cp "$(ls "$ROOT"/boot/vmlinuz-* | sort -V | tail -n 1)" "$esp/outpost/linux"
  cp "$(ls "$ROOT"/boot/initrd.img-* | sort -V | tail -n 1)" "$esp/outpost/initrd"
  printf 'timeout 0\ndefault outpost.conf\neditor no\n' >"$esp/loader/loader.conf"
  # Seed by kernel command line: add outpost.role=site outpost.name=... to `options`.
  cat >"$esp/loader/entries/outpost.conf" <<EOF
title   Outpost appliance
linux   /outpost/linux
initrd  /outpost/initrd
options root=PARTUUID=$ROOT_PARTUUID ro console=tty0 console=ttyS0,115200 loglevel=4 no_timer_check
EOF
  find "$esp" -print0 | xargs -0r touch --no-dereference --date="@$SOURCE_DATE_EPOCH"
  mkfs.fat --invariant -F 32 -i "$ESP_VOLID" -n ESP -C "$WORK/esp.img" $((ESP_MB * 1024))
  mcopy -s -p -m -i "$WORK/esp.img" "$esp"/* ::/
}

make_root() { make_root_fs outpost-root "$ROOT_FSUUID"; }

make_disk() {
  make_gpt_disk "$OUT/outpost.qcow2" "$DISK_UUID" "$ESP_PARTUUID" "$ROOT_PARTUUID" outpost-root \
    "$STATE_MB $GPT_LINUX_DATA $STATE_PARTUUID outpost-state"
}

base_step "$BASE" "$HERE/packages.txt"
step "Outpost wheels (this tree + dependencies from PyPI)" build_wheels
step "Unpack the base" unpack
step "Outpost venv in /opt/outpost (no network: the wheels only)" install_outpost
step "systemd units, sysusers, tmpfiles, network, fstab" install_system
step "EFI system partition (systemd-boot, kernel, initrd)" make_esp
step "Root filesystem (ext4)" make_root
step "GPT disk -> out/outpost.qcow2" make_disk
rm -rf "$ROOT"

size=$(du -m --apparent-size "$OUT/outpost.qcow2" | cut -f1)
virt=$(qemu-img info --output=json "$OUT/outpost.qcow2" | "$PYTHON" -c \
  'import json,sys; print(json.load(sys.stdin)["virtual-size"] // 2**20)')
echo "image: $OUT/outpost.qcow2  ${size} MiB file, ${virt} MiB disk, built in $(($(date +%s) - T_BUILD)) s"
sha256sum "$OUT/outpost.qcow2" | tee "$OUT/outpost.qcow2.sha256"

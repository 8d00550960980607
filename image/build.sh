#!/usr/bin/env bash
# Builds the Outpost appliance image: image/out/outpost.qcow2 (UEFI, GPT, systemd-boot,
# ext4 root, serial console, a LUKS2 state partition formatted on first boot). Sources:
# Debian packages (mmdebstrap) and PyPI (the wheels of Outpost's dependencies); Outpost
# itself is a wheel built from this tree.
#
#   stage 1  mmdebstrap -> out/cache/base-<key>.tar   (cached: key = packages.txt + this
#            script's stage-1 settings; delete the file or FRESH=1 to rebuild)
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
CACHE=$OUT/cache
WORK=$OUT/work
LOG=$OUT/build.log
SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ROOT_FREE_MB=${ROOT_FREE_MB:-768}
ESP_MB=128
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
GPT_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709
# Plain "Linux filesystem data", not the discoverable /var type: systemd-gpt-auto-generator
# must not try to mount it (it is LUKS, unlocked by outpost-state.service).
GPT_LINUX_DATA=0FC63DAF-8483-4772-8E79-3D69D8477DE4

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export SOURCE_DATE_EPOCH

if [[ $(id -u) -ne 0 ]]; then
  echo "image: needs root (chroot, file ownership); run as root or with sudo" >&2
  exit 2
fi
for tool in mmdebstrap mkfs.ext4 mkfs.fat mcopy sfdisk qemu-img; do
  command -v "$tool" >/dev/null || {
    echo "image: $tool is missing; run scripts/setup-image.sh" >&2; exit 2; }
done

mkdir -p "$CACHE" "$WORK"
: >"$LOG"
STEPS=8
STEP=0
T_BUILD=$(date +%s)

# One line per step, a live line (elapsed seconds and the log's last line) while it runs;
# without a terminal, a line every 20 s instead. The full output is in $LOG.
step() {
  local title=$1; shift
  STEP=$((STEP + 1))
  local t0 now last pid
  t0=$(date +%s)
  printf '[%d/%d] %s\n' "$STEP" "$STEPS" "$title"
  echo "=== [$STEP/$STEPS] $title" >>"$LOG"
  ( trap cleanup EXIT; "$@" ) >>"$LOG" 2>&1 &
  pid=$!
  last=$t0
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    now=$(date +%s)
    if [[ -t 1 ]]; then
      printf '\r\033[K      %4ds  %s' "$((now - t0))" "$(tail -n 1 "$LOG" | tr -d '\r' | cut -c1-90)"
    elif ((now - last >= 20)); then
      printf '      %4ds  %s\n' "$((now - t0))" "$(tail -n 1 "$LOG" | cut -c1-90)"
      last=$now
    fi
  done
  if ! wait "$pid"; then
    [[ -t 1 ]] && printf '\r\033[K'
    echo "image: step failed: $title (last lines of $LOG):" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  [[ -t 1 ]] && printf '\r\033[K'
  printf '      done in %ds\n' "$(($(date +%s) - t0))"
}

ROOT=$WORK/root
MOUNTED=()
cleanup() {
  local i
  for ((i = ${#MOUNTED[@]} - 1; i >= 0; i--)); do umount -l "${MOUNTED[$i]}" 2>/dev/null || true; done
}
trap cleanup EXIT

packages() { grep -v '^\s*#' "$HERE/packages.txt" | grep -v '^\s*$' | paste -sd, -; }

STAGE1_OPTS=(--variant=minbase --mode=root --format=tar
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*')
KEY=$(printf '%s\n' "$(packages)" "${STAGE1_OPTS[*]}" "$SUITE" "$MIRROR" | sha256sum | cut -c1-16)
BASE=$CACHE/base-$KEY.tar

build_base() {
  rm -f "$BASE.part"
  mmdebstrap "${STAGE1_OPTS[@]}" --include="$(packages)" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" "$BASE.part" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
  mv "$BASE.part" "$BASE"
}

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

# The chroot gets a clean environment: the build machine's PIP_* settings are not the image's.
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" PYTHONHASHSEED=0 "$@"; }

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

make_root() {
  local used
  rm -f "$WORK/root.img"
  used=$(du -sm --apparent-size "$ROOT" | cut -f1)
  ROOT_MB=$(( (used * 115 / 100) + ROOT_FREE_MB ))
  echo "root: ${used} MiB used, filesystem ${ROOT_MB} MiB"
  echo "$ROOT_MB" >"$WORK/root.mb"
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -L outpost-root -U "$ROOT_FSUUID" \
    -E "hash_seed=$ROOT_FSUUID,root_owner=0:0" -d "$ROOT" "$WORK/root.img" "${ROOT_MB}M"
}

make_disk() {
  local root_mb total raw=$WORK/disk.raw
  root_mb=$(cat "$WORK/root.mb")
  total=$((1 + ESP_MB + root_mb + STATE_MB + 1))
  rm -f "$raw"
  truncate -s "${total}M" "$raw"
  sfdisk --quiet "$raw" <<EOF
label: gpt
label-id: $DISK_UUID
start=1MiB, size=${ESP_MB}MiB, type=$GPT_ESP, uuid=$ESP_PARTUUID, name="esp"
start=$((1 + ESP_MB))MiB, size=${root_mb}MiB, type=$GPT_ROOT_X86_64, uuid=$ROOT_PARTUUID, name="outpost-root"
start=$((1 + ESP_MB + root_mb))MiB, size=${STATE_MB}MiB, type=$GPT_LINUX_DATA, uuid=$STATE_PARTUUID, name="outpost-state"
EOF
  dd if="$WORK/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$WORK/root.img" of="$raw" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
  rm -f "$OUT/outpost.qcow2.part"
  qemu-img convert -O qcow2 "$raw" "$OUT/outpost.qcow2.part"
  mv "$OUT/outpost.qcow2.part" "$OUT/outpost.qcow2"
  rm -f "$raw" "$WORK/esp.img" "$WORK/root.img"
}

if [[ -f $BASE && -z ${FRESH:-} ]]; then
  STEP=$((STEP + 1))
  printf '[%d/%d] Debian base: cached %s\n' "$STEP" "$STEPS" "${BASE#"$REPO"/}"
else
  step "Debian base with mmdebstrap ($SUITE, $(packages | tr ',' '\n' | wc -l) packages; cached after)" build_base
fi
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

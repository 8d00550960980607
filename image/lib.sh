# shellcheck shell=bash
# What image/build.sh (the appliance) and image/build-plain.sh (the plain lab VM) share:
# the Debian base settings and its cache key, progress lines per step, the chroot runner,
# module pruning, the ext4 root filesystem and the GPT disk. Both images are built without
# loop devices (mkfs.ext4 -d, mkfs.fat + mcopy, sfdisk on a file) and reproducibly (fixed
# UUIDs, SOURCE_DATE_EPOCH for mtimes and mkfs timestamps).
#
# Sourced after the caller has set: HERE, REPO, OUT, WORK, LOG, NAME (the prefix of error
# messages) and STEPS; a caller that mounts things defines cleanup() (run when each step
# ends, and at exit).

SUITE=bookworm
MIRROR=${MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${SECURITY_MIRROR:-http://deb.debian.org/debian-security}
ESP_MB=128
CACHE=$OUT/cache
GPT_ESP=C12A7328-F81F-11D2-BA4B-00A0C93EC93B
GPT_ROOT_X86_64=4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709

SOURCE_DATE_EPOCH=${SOURCE_DATE_EPOCH:-$(git -C "$REPO" log -1 --format=%ct 2>/dev/null || echo 1700000000)}
export SOURCE_DATE_EPOCH

cleanup() { :; }

# Root (chroot, file ownership) and the tools every build uses.
require_root_and_tools() {
  if [[ $(id -u) -ne 0 ]]; then
    echo "$NAME: needs root (chroot, file ownership); run as root or with sudo" >&2
    exit 2
  fi
  local tool
  for tool in mmdebstrap mkfs.ext4 mkfs.fat mcopy sfdisk qemu-img; do
    command -v "$tool" >/dev/null || {
      echo "$NAME: $tool is missing; run scripts/setup-image.sh" >&2; exit 2; }
  done
}

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
    echo "$NAME: step failed: $title (last lines of $LOG):" >&2
    tail -n 40 "$LOG" >&2
    exit 1
  fi
  [[ -t 1 ]] && printf '\r\033[K'
  printf '      done in %ds\n' "$(($(date +%s) - t0))"
}

# The package list of a packages.txt, comma-separated (comments and blank lines dropped).
packages_of() { grep -v '^\s*#' "$1" | grep -v '^\s*$' | paste -sd, -; }

STAGE1_OPTS=(--variant=minbase --mode=root --format=tar
  --aptopt='Acquire::Languages "none"'
  --dpkgopt='path-exclude=/usr/share/man/*'
  --dpkgopt='path-exclude=/usr/share/locale/*'
  --dpkgopt='path-include=/usr/share/locale/locale.alias'
  --dpkgopt='path-exclude=/usr/share/doc/*'
  --dpkgopt='path-include=/usr/share/doc/*/copyright'
  --dpkgopt='path-exclude=/usr/share/info/*')

# The cached base tarball for a package list: out/cache/<prefix>-<key>.tar, where the key
# covers the packages and every stage-1 setting (delete the file or FRESH=1 to rebuild).
base_tar() {
  local prefix=$1 list=$2 key
  key=$(printf '%s\n' "$(packages_of "$list")" "${STAGE1_OPTS[*]}" "$SUITE" "$MIRROR" |
    sha256sum | cut -c1-16)
  echo "$CACHE/$prefix-$key.tar"
}

# mmdebstrap the base into $1 from package list $2; further arguments are extra
# mmdebstrap options (hooks). Written to a .part file first: an interrupted build leaves
# no half base in the cache.
build_base_tar() {
  local base=$1 list=$2; shift 2
  rm -f "$base.part"
  mmdebstrap "${STAGE1_OPTS[@]}" --include="$(packages_of "$list")" "$@" \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
    "$SUITE" "$base.part" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb $SECURITY_MIRROR $SUITE-security main"
  mv "$base.part" "$base"
}

# The base step: the cached tarball, or mmdebstrap (build_base_tar's arguments).
base_step() {
  local base=$1 list=$2
  if [[ -f $base && -z ${FRESH:-} ]]; then
    STEP=$((STEP + 1))
    printf '[%d/%d] Debian base: cached %s\n' "$STEP" "$STEPS" "${base#"$REPO"/}"
  else
    step "Debian base with mmdebstrap ($SUITE, $(packages_of "$list" | tr ',' '\n' | wc -l) packages; cached after)" \
      build_base_tar "$@"
  fi
}

# The chroot gets a clean environment: the build machine's settings are not the image's.
in_root() { chroot "$ROOT" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
  SOURCE_DATE_EPOCH="$SOURCE_DATE_EPOCH" PYTHONHASHSEED=0 "$@"; }

# image/prune-modules.txt: sound, GPU, radios, ... Fewer modules for udev to load at boot,
# which under emulation is much of the time to a serving appliance or to SSH.
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

# $WORK/root.img: the ext4 root filesystem made from $ROOT, sized to its contents plus
# ROOT_FREE_MB (the size goes to $WORK/root.mb for make_gpt_disk). Arguments: label, UUID.
make_root_fs() {
  local label=$1 uuid=$2 used root_mb
  rm -f "$WORK/root.img"
  used=$(du -sm --apparent-size "$ROOT" | cut -f1)
  root_mb=$(( (used * 115 / 100) + ROOT_FREE_MB ))
  echo "root: ${used} MiB used, filesystem ${root_mb} MiB"
  echo "$root_mb" >"$WORK/root.mb"
  E2FSPROGS_FAKE_TIME=$SOURCE_DATE_EPOCH mkfs.ext4 -q -L "$label" -U "$uuid" \
    -E "hash_seed=$uuid,root_owner=0:0" -d "$ROOT" "$WORK/root.img" "${root_mb}M"
}

# A GPT disk of $WORK/esp.img and $WORK/root.img, converted to qcow2 at $1 (through a
# .part file). Arguments: qcow2 path, disk UUID, ESP PARTUUID, root PARTUUID, root
# partition name, then optional extra partitions after the root: "MiB type uuid name"
# each, left empty (zeros cost nothing in the qcow2).
make_gpt_disk() {
  local dest=$1 disk_uuid=$2 esp_uuid=$3 root_uuid=$4 root_name=$5; shift 5
  local root_mb total start raw=$WORK/disk.raw extra mb type uuid name table
  root_mb=$(cat "$WORK/root.mb")
  total=$((1 + ESP_MB + root_mb + 1))
  for extra in "$@"; do
    read -r mb _ <<<"$extra"
    total=$((total + mb))
  done
  table="label: gpt
label-id: $disk_uuid
start=1MiB, size=${ESP_MB}MiB, type=$GPT_ESP, uuid=$esp_uuid, name=\"esp\"
start=$((1 + ESP_MB))MiB, size=${root_mb}MiB, type=$GPT_ROOT_X86_64, uuid=$root_uuid, name=\"$root_name\""
  start=$((1 + ESP_MB + root_mb))
  for extra in "$@"; do
    read -r mb type uuid name <<<"$extra"
    table+="
start=${start}MiB, size=${mb}MiB, type=$type, uuid=$uuid, name=\"$name\""
    start=$((start + mb))
  done
  rm -f "$raw"
  truncate -s "${total}M" "$raw"
  sfdisk --quiet "$raw" <<<"$table"
  dd if="$WORK/esp.img" of="$raw" bs=1M seek=1 conv=notrunc,sparse status=none
  dd if="$WORK/root.img" of="$raw" bs=1M seek=$((1 + ESP_MB)) conv=notrunc,sparse status=none
  rm -f "$dest.part"
  qemu-img convert -O qcow2 "$raw" "$dest.part"
  mv "$dest.part" "$dest"
  rm -f "$raw" "$WORK/esp.img" "$WORK/root.img"
}

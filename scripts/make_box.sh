#!/usr/bin/env bash
# `make box`: the Vagrant box outpost/debian12 for the libvirt provider, from the plain lab
# VM (image/build-plain.sh: Debian 12, sshd, python3, sudo, the vagrant user authorized
# with Vagrant's insecure key, which `vagrant up` replaces by a key of its own; no Outpost,
# the Ansible provisioner installs it). Writes image/out/box/outpost-debian12.box
# (metadata.json, box.img, Vagrantfile) and adds it: `vagrant box add --name outpost/debian12`.
# Environment: BOX_NAME (default outpost/debian12), NO_ADD=1 (package only), COMPRESS=1.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
OUT=${OUT:-$REPO/image/out}
PLAIN=$OUT/plain/debian12.qcow2
DEST=$OUT/box
BOX_NAME=${BOX_NAME:-outpost/debian12}
BOX=$DEST/outpost-debian12.box

if [[ ! -f $PLAIN || $REPO/image/build-plain.sh -nt $PLAIN || $REPO/image/lib.sh -nt $PLAIN ]] ||
   [[ -n $(find "$REPO/image/plain" -newer "$PLAIN" -type f -print -quit) ]]; then
  bash "$REPO/image/build-plain.sh"
fi
command -v vagrant >/dev/null || { echo "make box: vagrant is missing; run scripts/setup-image.sh" >&2; exit 2; }

t0=$(date +%s)
rm -rf "$DEST/staging"
mkdir -p "$DEST/staging"
# COMPRESS=1: a compressed qcow2 (about 300 MiB instead of 800, but minutes of CPU).
echo "box: $PLAIN -> box.img${COMPRESS:+ (compressed)}"
qemu-img convert ${COMPRESS:+-c} -O qcow2 "$PLAIN" "$DEST/staging/box.img"
bytes=$(qemu-img info --output=json "$PLAIN" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')
gib=$(( (bytes + 2**30 - 1) / 2**30 ))
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": %d}\n' "$gib" >"$DEST/staging/metadata.json"
cp "$REPO/image/box/Vagrantfile" "$DEST/staging/Vagrantfile"
tar -C "$DEST/staging" -cf "$BOX.part" metadata.json Vagrantfile box.img
mv "$BOX.part" "$BOX"
rm -rf "$DEST/staging"
echo "box: $BOX  $(du -m "$BOX" | cut -f1) MiB (disk ${gib} GiB), packaged in $(($(date +%s) - t0)) s"
if [[ -z ${NO_ADD:-} ]]; then
  vagrant box add --force --name "$BOX_NAME" "$BOX"
  # vagrant-libvirt copies a box into the storage pool on first use, under a name with the
  # box's add time: the copies of earlier adds are stale.
  if virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
    prefix=$(printf '%s' "$BOX_NAME" | sed 's,/,-VAGRANTSLASH-,')_vagrant_box_image_
    virsh -c qemu:///system vol-list default | awk -v p="$prefix" 'index($1, p) == 1 {print $1}' |
      while read -r vol; do virsh -c qemu:///system vol-delete --pool default "$vol" >/dev/null; done
  fi
fi

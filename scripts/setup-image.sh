#!/usr/bin/env bash
# Installs what `make image`, `make test-image` and the Vagrant lab need, only when missing:
# mmdebstrap (the Debian base), mkfs/mtools/sfdisk (the disk, without loop devices),
# qemu + OVMF (booting it), ipptool (the test's IPP peer), swtpm (the VMs' TPM2, which
# unlocks the image's encrypted state partition), vagrant + vagrant-libvirt.
# Kept apart from setup-debian.sh: these are large, and `make test` does not need them.
set -euo pipefail

declare -A PROBES=(
  [mmdebstrap]=/usr/bin/mmdebstrap
  [qemu-system-x86]=/usr/bin/qemu-system-x86_64
  [qemu-utils]=/usr/bin/qemu-img
  [ovmf]=/usr/share/OVMF/OVMF_CODE.fd
  [dosfstools]=/usr/sbin/mkfs.fat
  [mtools]=/usr/bin/mcopy
  [e2fsprogs]=/usr/sbin/mkfs.ext4
  [fdisk]=/usr/sbin/sfdisk
  [cups-ipp-utils]=/usr/bin/ipptool
  [swtpm]=/usr/bin/swtpm
  [swtpm-tools]=/usr/bin/swtpm_setup
  # The Vagrant lab's libvirt (scripts/lab-libvirt.sh starts it without systemd) and the
  # Ansible VM test's SSH client.
  [libvirt-daemon-system]=/usr/sbin/libvirtd
  [libvirt-clients]=/usr/bin/virsh
  [dnsmasq-base]=/usr/sbin/dnsmasq
  [openssh-client]=/usr/bin/ssh
  [vagrant]=/usr/bin/vagrant
  [vagrant-libvirt]=/usr/share/rubygems-integration/all/specifications/vagrant-libvirt-0.11.2.gemspec
)

missing=()
for pkg in "${!PROBES[@]}"; do
  [[ -e "${PROBES[$pkg]}" ]] || dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null |
    grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]} == 0)); then
  echo "setup-image: image tools present"
  exit 0
fi
SUDO=
[[ $(id -u) -eq 0 ]] || SUDO=sudo
echo "setup-image: installing Debian packages: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"

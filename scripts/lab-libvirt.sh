#!/usr/bin/env bash
# Starts the Debian-packaged libvirt for the Vagrant lab where systemd is not PID 1 (build
# machines, CI containers): virtlogd and libvirtd as daemons (-d), the system instance
# (qemu:///system), and the `default` storage pool vagrant-libvirt uploads boxes into.
# On a host with systemd: `systemctl start libvirtd` does the same. Idempotent.
set -euo pipefail

for pkg in libvirt-daemon-system libvirt-clients dnsmasq-base; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || {
    echo "lab-libvirt: $pkg is missing; run scripts/setup-image.sh" >&2; exit 2; }
done
running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }
mkdir -p /run/libvirt
running /run/virtlogd.pid || /usr/sbin/virtlogd -d -p /run/virtlogd.pid
running /run/virtlockd.pid || /usr/sbin/virtlockd -d -p /run/virtlockd.pid
running /run/libvirtd.pid || /usr/sbin/libvirtd -d -p /run/libvirtd.pid
for _ in $(seq 50); do
  virsh -c qemu:///system version >/dev/null 2>&1 && break
  sleep 0.2
done
virsh -c qemu:///system version >/dev/null
if ! virsh -c qemu:///system pool-info default >/dev/null 2>&1; then
  mkdir -p /var/lib/libvirt/images
  virsh -c qemu:///system pool-define-as default dir --target /var/lib/libvirt/images >/dev/null
fi
if [[ $(virsh -c qemu:///system pool-info default) != *running* ]]; then
  virsh -c qemu:///system pool-start default >/dev/null
fi
echo "lab-libvirt: libvirtd $(virsh -c qemu:///system version | sed -n 's/^Running hypervisor: //p'), pool default running"

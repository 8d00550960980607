"""The Vagrant lab for real: `vagrant up` with vagrant-libvirt and the local box
outpost/debian12 (`make box`, from the plain lab image) brings up the primary and branch-1
of the example inventory; the Vagrantfile's Ansible provisioner (the real playbook over the
real inventory) makes a primary and a site that syncs with it over mutual TLS; the site
serves IPP; `vagrant destroy -f`.

libvirt is Debian's (libvirt-daemon-system), started by scripts/lab-libvirt.sh as daemons
(systemd is not PID 1 on the build machines), the system instance qemu:///system. Its
networks are isolated (no NAT): the host is .1 on each bridge, which is how the controller
reaches the VMs (SSH, IPP, sync).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "image/out"
MEASUREMENTS = OUT / "measurements.json"
BOX = "outpost/debian12"
MACHINES = "primary,branch-1"
PRIMARY_IP = "192.168.56.10"
SITE_IP = "192.168.56.11"

pytestmark = [pytest.mark.image, pytest.mark.timeout(4200)]


def record(**figures: object) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(figures)
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


def vagrant_env(tmp: Path) -> dict[str, str]:
    serial = tmp / "serial"  # written by qemu as libvirt-qemu: a folder it may enter
    serial.mkdir(mode=0o777, exist_ok=True)
    for folder in (tmp, *tmp.parents):
        if folder == Path("/tmp") or folder == Path("/"):
            break
        folder.chmod(folder.stat().st_mode | 0o711)
    return {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()),
            "VAGRANT_DEFAULT_PROVIDER": "libvirt", "OUTPOST_LAB_MACHINES": MACHINES,
            "OUTPOST_LAB_PKI": str(tmp / "pki"), "OUTPOST_LAB_SERIAL_DIR": str(serial),
            "VAGRANT_DOTFILE_PATH": str(tmp / "dot-vagrant"), "ANSIBLE_NOCOLOR": "1",
            "LIBVIRT_DEFAULT_URI": "qemu:///system"}


def vagrant(env: dict[str, str], *args: str, log: Path | None = None,
            timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    if log is None:
        return subprocess.run(["vagrant", *args], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=timeout)
    with log.open("w") as out:  # streamed: `tail -f` it while vagrant works
        done = subprocess.run(["vagrant", *args], cwd=REPO, env=env, stdout=out,
                              stderr=subprocess.STDOUT, timeout=timeout)
    return subprocess.CompletedProcess(done.args, done.returncode, log.read_text(), "")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[dict[str, str]]:
    for tool in ("vagrant", "virsh", "ansible-playbook", "ipptool", "curl"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup-image.sh (make test-image does)")
    subprocess.run(["bash", str(REPO / "scripts/lab-libvirt.sh")], check=True)
    # The box from the current plain image (make_box.sh rebuilds that when its inputs
    # changed); OUTPOST_KEEP_BOX=1 uses the box already added.
    boxes = subprocess.run(["vagrant", "box", "list"], capture_output=True, text=True).stdout
    if BOX not in boxes or not os.environ.get("OUTPOST_KEEP_BOX"):
        subprocess.run(["bash", str(REPO / "scripts/make_box.sh")], check=True)
    if not list((OUT / "wheels").glob("outpost-*.whl")):
        pytest.fail("image/out/wheels has no Outpost wheel: make image builds it")
    pki = tmp_path / "pki"
    outpost = [str(REPO / ".venv/bin/outpost"), "pki"]
    subprocess.run([*outpost, "init", str(pki)], check=True, capture_output=True)
    subprocess.run([*outpost, "issue", str(pki), "--kind", "primary", "--name", "primary",
                    "--host", PRIMARY_IP], check=True, capture_output=True)
    subprocess.run([*outpost, "issue", str(pki), "--kind", "site", "--name", "branch-1"],
                   check=True, capture_output=True)
    env = vagrant_env(tmp_path)
    try:
        yield env
    finally:
        if (tmp_path / "up.log").exists():
            shutil.copy(tmp_path / "up.log", OUT / "last-vagrant-up.log")
        done = vagrant(env, "destroy", "-f", timeout=600)
        for name in MACHINES.split(","):
            # vagrant-libvirt leaves the UEFI variable store behind (the Vagrantfile's path)
            Path(f"/var/lib/libvirt/qemu/nvram/outpost-lab-{name}_VARS.fd").unlink(missing_ok=True)
            serial = tmp_path / "serial" / f"outpost-vagrant-{name}.log"
            if serial.exists():
                shutil.copy(serial, OUT / f"last-vagrant-{name}-console.log")
        assert done.returncode == 0, done.stdout + done.stderr


def test_vagrant_up_gives_a_primary_and_a_serving_site(lab: dict[str, str],
                                                       tmp_path: Path) -> None:
    t0 = time.monotonic()
    up = vagrant(lab, "up", "--provider=libvirt", "--no-parallel", log=tmp_path / "up.log",
                 timeout=float(os.environ.get("OUTPOST_VAGRANT_UP_TIMEOUT", "3000")))
    up_s = time.monotonic() - t0
    assert up.returncode == 0, up.stdout[-8000:]
    recap = {m.group(1): dict(re.findall(r"(\w+)=(\d+)", m.group(2)))
             for m in re.finditer(r"^(\S+)\s+:\s+(ok=.*)$", up.stdout, re.M)}
    assert set(recap) == {"primary", "branch-1"}, up.stdout[-4000:]
    assert all(r["failed"] == "0" and r["unreachable"] == "0" for r in recap.values()), recap

    status = vagrant(lab, "status", "--machine-readable")
    states = {line.split(",")[1]: line.split(",")[3] for line in status.stdout.splitlines()
              if ",state," in line}
    assert states == {"primary": "running", "branch-1": "running"}, status.stdout

    # The site serves IPP on the lab network, and the primary has heard from it.
    deadline = time.monotonic() + 180
    ipp = None
    while time.monotonic() < deadline:
        ipp = subprocess.run(["ipptool", "-T", "10", "-t",
                              f"ipp://{SITE_IP}:631/printers/findme",
                              "get-printer-attributes.test"],
                             capture_output=True, text=True, timeout=30)
        if ipp.returncode == 0:
            break
        time.sleep(3)
    assert ipp is not None and ipp.returncode == 0 and "[PASS]" in ipp.stdout, \
        (ipp.stdout + ipp.stderr) if ipp else ""
    query = ("sudo python3 -c \"import sqlite3; c = sqlite3.connect("
             "'file:/var/lib/outpost/outpost.sqlite3?mode=ro', uri=True); "
             "print(c.execute('SELECT name FROM sync_sites').fetchall())\"")
    deadline = time.monotonic() + 180
    seen = ""
    while time.monotonic() < deadline:
        seen = vagrant(lab, "ssh", "primary", "-c", query, timeout=120).stdout
        if "'branch-1'" in seen:
            break
        time.sleep(5)
    assert "'branch-1'" in seen, seen
    pki = Path(lab["OUTPOST_LAB_PKI"])
    curl = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}",
                           "--max-time", "20", "--cacert", str(pki / "ca.crt"),
                           "--cert", str(pki / "branch-1.crt"), "--key", str(pki / "branch-1.key"),
                           f"https://{PRIMARY_IP}:8633/sync/v1/snapshot"],
                          capture_output=True, text=True, timeout=60)
    assert curl.stdout == "200", curl.stdout + curl.stderr
    record(vagrant_up_primary_and_site_s=round(up_s, 1))
    print(f"\nvagrant up (primary + branch-1, provisioned): {up_s:.1f} s")

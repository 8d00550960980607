"""The appliance image, built and booted: first-boot seed from a config drive, the site
serving IPP through a host port forward, ipptool's get-printer-attributes, a clean ACPI
power-off. Run with `make test-image` (builds the image first; not part of `make test`).

Figures (boot-to-serving, image size, accelerator) go to image/out/measurements.json.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.image.vm import Vm, free_port, make_config_drive

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(os.environ.get("OUTPOST_IMAGE", REPO / "image/out/outpost.qcow2"))
MEASUREMENTS = IMAGE.parent / "measurements.json"
SERVE_TIMEOUT = float(os.environ.get("OUTPOST_SERVE_TIMEOUT", "600"))

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

SITE = """role = "site"
name = "image-test"
state_dir = "/var/lib/outpost"
secrets_dir = "/var/lib/outpost-secrets"

[ipp]
host = "0.0.0.0"
port = 631

[lpd]
host = "0.0.0.0"
port = 515

[device_api]
host = "0.0.0.0"
port = 8632
"""


def record(**figures: object) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(figures)
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


@pytest.fixture(scope="module")
def image() -> Path:
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.fat", "mcopy", "ipptool"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup-image.sh (make test-image does)")
    if not IMAGE.exists():
        subprocess.run([str(REPO / "image/build.sh")], check=True)
    record(image_file_mib=round(IMAGE.stat().st_size / 2**20, 1))
    return IMAGE


@pytest.fixture
def site_vm(image: Path, tmp_path: Path) -> Iterator[tuple[Vm, int]]:
    port = free_port()
    seed = make_config_drive(tmp_path / "seed.img", {"site.toml": SITE})
    vm = Vm(image, tmp_path, seed=seed, forwards={port: 631})
    try:
        yield vm, port
    finally:
        vm.kill()
        keep = IMAGE.parent / "last-console.log"
        if vm.console.exists():
            keep.write_text(vm.console_text())


def ipptool(port: int, timeout: int = 10) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ipptool", "-T", str(timeout), "-t",
                           f"ipp://127.0.0.1:{port}/printers/findme",
                           "get-printer-attributes.test"],
                          capture_output=True, text=True, timeout=timeout + 15)


def test_boots_serves_ipp_and_powers_off_cleanly(site_vm: tuple[Vm, int]) -> None:
    vm, port = site_vm
    vm.start()
    deadline = time.monotonic() + SERVE_TIMEOUT
    serving_after = None
    while time.monotonic() < deadline:
        assert vm.alive(), f"qemu exited early:\n{vm.console_text()[-3000:]}"
        try:
            answered = ipptool(port, timeout=5).returncode == 0
        except subprocess.TimeoutExpired:  # slirp accepts before the guest listens; ipptool retries
            answered = False
        if answered:
            serving_after = time.monotonic() - vm.started
            break
        time.sleep(2)
    assert serving_after is not None, f"not serving after {SERVE_TIMEOUT}s:\n" \
        f"{vm.console_text()[-4000:]}"

    done = ipptool(port)
    assert done.returncode == 0 and "[PASS]" in done.stdout, done.stdout + done.stderr

    t0 = time.monotonic()
    status = vm.power_off()
    power_off = time.monotonic() - t0
    console = vm.console_text()
    record(accelerator=vm.accel, boot_to_serving_s=round(serving_after, 1),
           power_off_s=round(power_off, 1))
    print(f"\naccelerator {vm.accel}: serving after {serving_after:.1f} s, "
          f"powered off in {power_off:.1f} s")
    assert status == 0
    assert "Stopped outpost-site.service" in console
    assert "reboot: Power down" in console
    assert "outpost-site.service: Failed" not in console


ROOT_PARTUUID = "6f757470-6f73-4000-8000-000000000003"


def test_kernel_command_line_seed_without_a_drive(image: Path, tmp_path: Path) -> None:
    """outpost.role=site on the command line gives the default site (IPP on 631), and a boot
    with no config drive waits for none."""
    port = free_port()
    vm = Vm(image, tmp_path, forwards={port: 631},
            append=f"root=PARTUUID={ROOT_PARTUUID} ro console=ttyS0,115200 no_timer_check "
                   "outpost.role=site outpost.name=from-cmdline")
    try:
        vm.start()
        deadline = time.monotonic() + SERVE_TIMEOUT
        serving_after = None
        while time.monotonic() < deadline and serving_after is None:
            assert vm.alive(), f"qemu exited early:\n{vm.console_text()[-3000:]}"
            try:
                if ipptool(port, timeout=5).returncode == 0:
                    serving_after = time.monotonic() - vm.started
            except subprocess.TimeoutExpired:
                pass
            time.sleep(2)
        assert serving_after is not None, vm.console_text()[-4000:]
        record(cmdline_seed_boot_to_serving_s=round(serving_after, 1))
        assert vm.power_off() == 0
        assert "reboot: Power down" in vm.console_text()
    finally:
        vm.kill()


def test_primary_role_serves_sync_over_mutual_tls(image: Path, tmp_path: Path) -> None:
    """The primary's unit (no capabilities, PrivateUsers=yes) reads its configuration and
    certificates from a config drive and answers a site's certificate over mutual TLS."""
    pki = tmp_path / "pki"
    outpost = [str(REPO / ".venv/bin/outpost"), "pki"]
    subprocess.run([*outpost, "init", str(pki)], check=True, capture_output=True)
    subprocess.run([*outpost, "issue", str(pki), "--kind", "primary", "--name", "hq",
                    "--host", "127.0.0.1"], check=True, capture_output=True)
    subprocess.run([*outpost, "issue", str(pki), "--kind", "site", "--name", "branch-1"],
                   check=True, capture_output=True)
    primary = ('role = "primary"\nname = "hq"\nstate_dir = "/var/lib/outpost"\n'
               'secrets_dir = "/var/lib/outpost-secrets"\n[sync]\nhost = "0.0.0.0"\nport = 8633\n'
               'ca_file = "/etc/outpost/tls/ca.crt"\ncert_file = "/etc/outpost/tls/hq.crt"\n'
               'key_file = "/etc/outpost/tls/hq.key"\n')
    drive = tmp_path / "seed.img"
    make_config_drive(drive, {"primary.toml": primary})
    subprocess.run(["mmd", "-i", str(drive), "::tls"], check=True)
    for name in ("ca.crt", "hq.crt", "hq.key"):
        subprocess.run(["mcopy", "-i", str(drive), str(pki / name), f"::tls/{name}"], check=True)
    port = free_port()
    vm = Vm(image, tmp_path, seed=drive, forwards={port: 8633})
    curl = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
            "--cacert", str(pki / "ca.crt"), "--cert", str(pki / "branch-1.crt"),
            "--key", str(pki / "branch-1.key"), f"https://127.0.0.1:{port}/sync/v1/snapshot"]
    try:
        vm.start()
        deadline = time.monotonic() + SERVE_TIMEOUT
        status = ""
        while time.monotonic() < deadline:
            assert vm.alive(), f"qemu exited early:\n{vm.console_text()[-3000:]}"
            status = subprocess.run(curl, capture_output=True, text=True, timeout=30).stdout
            if status not in ("", "000"):
                break
            time.sleep(2)
        record(primary_boot_to_serving_s=round(time.monotonic() - vm.started, 1))
        assert status == "200", f"HTTP {status}\n{vm.console_text()[-4000:]}"
        assert vm.power_off() == 0
        assert "Stopped outpost-primary.service" in vm.console_text()
    finally:
        vm.kill()

"""The appliance's state partition is encrypted: a stolen disk gives away no card number and
no password, in any encoding, and the appliance still boots and serves from it (TPM2 by swtpm).

One site VM with a software TPM2, seeded by a config drive, syncing users from a primary that
runs on the host (`outpost serve`, mutual TLS through QEMU's user network, 10.0.2.2). A lab
workload with card numbers, PINs and passwords made up for this run goes through the site's
public wires only (host port forwards): device-API sessions by username + password, card
link, card, card + PIN, username + PIN, a wrong password, and an IPP Print-Job held in
Find-Me. After a clean ACPI power-off the whole disk is converted to raw and every byte is
scanned for each secret as plain text, hex (either case), base64 (every alignment, standard
and URL-safe) and UTF-16 (tests/integration/leak_scan.py's forms): nothing may be found. As a
control, the scan must find the site's name, a marker written by the first boot to the
unencrypted root filesystem (/etc/outpost/site.toml), so the scan is shown to see what is
there. The state partition's header must be LUKS2 with one key slot, sealed to the TPM2.
The same disk with the same TPM state then boots again: the linked card still logs in and
the held job is still there.

A second test boots without a TPM, with `state.key` on the config drive: the key formats and
opens the partition and is not on the disk afterwards.

Figures (image size, first boot to serving with the LUKS format, second boot to serving with
the unlock, the scan's time) go to image/out/measurements.json and are printed.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from appliance.pki import issue, make_ca
from simulators.lab.workstation import make_pdf, print_file
from tests.image.tpm import Swtpm
from tests.image.vm import Vm, free_port, make_config_drive
from tests.integration.leak_scan import forms

REPO = Path(__file__).resolve().parents[2]
IMAGE = Path(os.environ.get("OUTPOST_IMAGE", REPO / "image/out/outpost.qcow2"))
MEASUREMENTS = IMAGE.parent / "measurements.json"
SERVE_TIMEOUT = float(os.environ.get("OUTPOST_SERVE_TIMEOUT", "900"))
STATE_PARTUUID = "6f757470-6f73-4000-8000-000000000005"

pytestmark = [pytest.mark.image, pytest.mark.timeout(3600)]


def record(**figures: object) -> None:
    data = json.loads(MEASUREMENTS.read_text()) if MEASUREMENTS.exists() else {}
    data.update(figures)
    MEASUREMENTS.write_text(json.dumps(data, indent=2) + "\n")


def digits(n: int) -> str:
    return str(secrets.choice(range(1, 10))) + "".join(
        str(secrets.randbelow(10)) for _ in range(n - 1))


# --- the scan --------------------------------------------------------------------------------

CHUNK = 32 << 20


def scan_raw(path: Path, secret_values: dict[str, str]) -> dict[tuple[str, str], int]:
    """{(secret name, form): first byte offset} for every form of every secret found anywhere
    in the file. Every byte is looked at; all-zero chunks are recognised by one comparison."""
    needles = [(name, form, needle.lower() if form in ("hex", "HEX") else needle)
               for name, value in secret_values.items()
               for form, needle in forms(value).items()]
    overlap = max(len(n) for _, _, n in needles) - 1
    zeros = bytes(CHUNK)
    found: dict[tuple[str, str], int] = {}
    size = path.stat().st_size
    with path.open("rb") as f:
        offset = 0
        while offset < size:
            f.seek(offset)
            chunk = f.read(CHUNK)
            if chunk != zeros[:len(chunk)]:
                lowered = chunk.lower()
                for name, form, needle in needles:
                    if (name, form) in found:
                        continue
                    at = (lowered if form in ("hex", "HEX") else chunk).find(needle)
                    if at >= 0:
                        found[(name, form)] = offset + at
            if offset + len(chunk) >= size:
                break
            offset += len(chunk) - overlap
    return found


def partition_offset(raw: Path, partuuid: str) -> int:
    table = json.loads(subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True,
                                      text=True, check=True).stdout)["partitiontable"]
    (part,) = [p for p in table["partitions"] if p["uuid"].lower() == partuuid]
    return int(part["start"]) * int(table.get("sectorsize", 512))


def luks2_header(raw: Path, offset: int) -> dict[str, Any]:
    """The LUKS2 JSON metadata of the partition at `offset` (checks the binary header)."""
    with raw.open("rb") as f:
        f.seek(offset)
        binary = f.read(4096)
        assert binary[:6] == b"LUKS\xba\xbe", f"no LUKS header at {offset}: {binary[:16]!r}"
        version, header_size = struct.unpack(">HQ", binary[6:16])
        assert version == 2
        text = f.read(header_size - 4096)
    return dict(json.loads(text.rstrip(b"\0")))


# --- the host's primary ----------------------------------------------------------------------

def primary_on_host(tmp_path: Path, site_name: str, users: list[dict[str, Any]]) -> dict[str, Any]:
    ca = make_ca()
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    # The VM reaches the host's loopback as 10.0.2.2 (QEMU user networking).
    hq_cert, hq_key = issue(ca, kind="primary", name="hq",
                            hosts=["10.0.2.2", "127.0.0.1"]).write(pki, "hq")
    site_cert, site_key = issue(ca, kind="site", name=site_name).write(pki, site_name)
    sync_port = free_port()
    config = tmp_path / "hq.toml"
    config.write_text(
        f'role = "primary"\nname = "hq"\nstate_dir = "{tmp_path}/hq/state"\n'
        f'secrets_dir = "{tmp_path}/hq/secrets"\n[auth]\nargon2_memory_kib = 8192\n'
        f'[sync]\nhost = "127.0.0.1"\nport = {sync_port}\nca_file = "{pki}/ca.crt"\n'
        f'cert_file = "{hq_cert}"\nkey_file = "{hq_key}"\n')
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps(users))
    subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                    str(config), str(users_file)], check=True, capture_output=True, cwd=REPO)
    users_file.unlink()
    return {"config": config, "sync_port": sync_port, "pki": pki,
            "site_files": {"ca.crt": pki / "ca.crt", f"{site_name}.crt": Path(site_cert),
                           f"{site_name}.key": Path(site_key)}}


@pytest.fixture
def primary_process(tmp_path: Path) -> Iterator[list[subprocess.Popen[bytes]]]:
    holder: list[subprocess.Popen[bytes]] = []
    yield holder
    for process in holder:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# --- the site's wires --------------------------------------------------------------------------

def api(port: int, path: str, body: dict[str, Any] | None = None, token: str | None = None,
        method: str | None = None) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        data=None if body is None else json.dumps(body).encode(), method=method,
        headers={"content-type": "application/json", "x-outpost-device": "mfd-1",
                 **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, dict(json.loads(response.read()))
    except urllib.error.HTTPError as exc:
        return exc.code, dict(json.loads(exc.read() or b"{}"))


def wait_serving(vm: Vm, api_port: int) -> float:
    """Seconds from qemu's start until the device API answers (any HTTP answer)."""
    deadline = time.monotonic() + SERVE_TIMEOUT
    while time.monotonic() < deadline:
        assert vm.alive(), f"qemu exited early:\n{vm.console_text()[-4000:]}"
        console = vm.console_text()
        for fatal in ("Kernel panic", "Failed to start outpost-state.service"):
            assert fatal not in console, f"{fatal}:\n{console[-5000:]}"
        try:
            api(api_port, "session")
            return time.monotonic() - vm.started
        except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError):
            time.sleep(2)
    raise AssertionError(f"not serving after {SERVE_TIMEOUT}s:\n{vm.console_text()[-5000:]}")


def login_once_synced(vm: Vm, api_port: int, username: str, password: str,
                      timeout: float = 600) -> dict[str, Any]:
    """The user's password session, once the primary's users reached the site."""
    deadline = time.monotonic() + timeout
    answer: dict[str, Any] = {}
    while time.monotonic() < deadline:
        assert vm.alive(), vm.console_text()[-4000:]
        status, answer = api(api_port, "sessions", {"username": username, "password": password})
        if status == 201:
            return answer
        retry = answer.get("retry_after")
        time.sleep(float(retry) if isinstance(retry, (int, float)) else 5)
    raise AssertionError(f"{username} never reached the site: {answer}\n"
                         f"{vm.console_text()[-4000:]}")


# --- the test ---------------------------------------------------------------------------------

def test_state_partition_is_encrypted_and_survives_a_reboot(
        tmp_path: Path, primary_process: list[subprocess.Popen[bytes]]) -> None:
    for tool in ("qemu-system-x86_64", "qemu-img", "mkfs.fat", "mcopy", "mmd", "sfdisk",
                 "swtpm"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is missing: run scripts/setup-image.sh (make test-image does)")
    if not IMAGE.exists():
        subprocess.run([str(REPO / "image/build.sh")], check=True)

    # What this run makes up: nothing of it can be on the disk by chance.
    marker = f"rootmarker{secrets.token_hex(6)}"
    known = {
        "password": f"Pw-{secrets.token_urlsafe(18)}",
        "wrong password": f"Wr-{secrets.token_urlsafe(18)}",
        "pin": digits(12),
        "linked card": digits(16),
        "imported card": digits(16),
    }

    primary = primary_on_host(tmp_path, marker, [{
        "username": "alice", "full_name": "Alice Archer", "card": known["imported card"],
        "pin": known["pin"], "password": known["password"], "balance": 10000}])
    log = open(tmp_path / "hq.log", "ab")
    primary_process.append(subprocess.Popen(
        [sys.executable, "-m", "appliance.cli", "serve", "--config", str(primary["config"])],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
        start_new_session=True))

    site = (f'role = "site"\nname = "{marker}"\nstate_dir = "/var/lib/outpost"\n'
            'secrets_dir = "/var/lib/outpost-secrets"\n\n'
            '[ipp]\nhost = "0.0.0.0"\nport = 631\n\n[lpd]\nhost = "0.0.0.0"\nport = 515\n\n'
            '[device_api]\nhost = "0.0.0.0"\nport = 8632\n\n'
            '[auth]\nargon2_memory_kib = 8192\n\n'
            '[[devices]]\nname = "mfd-1"\nuri = "ipp://10.0.2.2:9/ipp/print"\n\n'
            f'[primary]\nurl = "https://10.0.2.2:{primary["sync_port"]}"\n'
            'ca_file = "/etc/outpost/tls/ca.crt"\n'
            f'cert_file = "/etc/outpost/tls/{marker}.crt"\n'
            f'key_file = "/etc/outpost/tls/{marker}.key"\n')
    drive = make_config_drive(tmp_path / "seed.img", {"site.toml": site})
    subprocess.run(["mmd", "-i", str(drive), "::tls"], check=True)
    for name, path in primary["site_files"].items():
        subprocess.run(["mcopy", "-i", str(drive), str(path), f"::tls/{name}"], check=True)

    api_port, ipp_port = free_port(), free_port()
    vm = Vm(IMAGE, tmp_path, seed=drive, forwards={api_port: 8632, ipp_port: 631})
    tpm = Swtpm(tmp_path / "tpm")
    vm.command += tpm.qemu_args()
    document = make_pdf(tmp_path / "held.pdf", 2)
    try:
        # First boot: the state partition is formatted, bound to the TPM, mounted.
        tpm.start()
        vm.start()
        first_boot = wait_serving(vm, api_port)
        session = login_once_synced(vm, api_port, "alice", known["password"])
        token = session["session"]
        status, linked = api(api_port, "cards", {"card": known["linked card"]}, token)
        assert status == 201 and linked["linked"] is True, linked
        status, by_card = api(api_port, "sessions", {"card": known["linked card"]})
        assert status == 201, by_card
        status, answer = api(api_port, "sessions", {"card": known["linked card"],
                                                   "pin": known["pin"]})
        assert status == 201, answer
        status, answer = api(api_port, "sessions", {"username": "alice", "pin": known["pin"]})
        assert status == 201, answer
        status, answer = api(api_port, "sessions", {"username": "alice",
                                                   "password": known["wrong password"]})
        assert status == 401, answer
        job_id = print_file(f"ipp://127.0.0.1:{ipp_port}/printers/findme", "alice", document,
                            document_format="application/pdf")
        status, jobs = api(api_port, "jobs", token=by_card["session"])
        assert status == 200 and [j["id"] for j in jobs["jobs"]] == [job_id], jobs

        assert vm.power_off() == 0
        first_console = vm.console_text()
        tpm.stop()
        assert "state partition formatted, unlocked by: tpm2" in first_console, \
            first_console[-5000:]
        assert "reboot: Power down" in first_console

        # The disk, every byte of it.
        raw = tmp_path / "disk.raw"
        subprocess.run(["qemu-img", "convert", "-O", "raw", str(vm.disk), str(raw)], check=True)
        t0 = time.monotonic()
        hits = scan_raw(raw, {**known, "root marker": marker})
        scan_s = time.monotonic() - t0
        assert ("root marker", "plain") in hits, \
            "the control failed: the scan did not find the site name written to the root"
        leaks = {k: v for k, v in hits.items() if k[0] != "root marker"}
        assert leaks == {}, f"secrets on the disk (name, form): byte offset: {leaks}"

        header = luks2_header(raw, partition_offset(raw, STATE_PARTUUID))
        tokens = [t["type"] for t in header["tokens"].values()]
        assert tokens == ["systemd-tpm2"], header["tokens"]
        assert len(header["keyslots"]) == 1, "the formatting key's slot was not wiped"
        raw_size_mib = raw.stat().st_size / 2**20
        raw.unlink()

        # Second boot: the same disk and TPM; unlocked by the TPM, the state is all there.
        tpm.start()
        vm.start()
        second_boot = wait_serving(vm, api_port)
        status, by_card = api(api_port, "sessions", {"card": known["linked card"]})
        assert status == 201, by_card
        status, jobs = api(api_port, "jobs", token=by_card["session"])
        assert status == 200 and [j["id"] for j in jobs["jobs"]] == [job_id], jobs
        assert vm.power_off() == 0
        second_console = vm.console_text()
        assert "state partition unlocked (tpm2)" in second_console, second_console[-5000:]
        assert "first boot" not in second_console
    finally:
        vm.kill()
        tpm.stop()
        log.close()
        if vm.console.exists():
            (IMAGE.parent / "last-console-encrypted.log").write_text(vm.console_text())

    image_mib = IMAGE.stat().st_size / 2**20
    record(image_file_mib=round(image_mib, 1),
           encrypted_first_boot_to_serving_s=round(first_boot, 1),
           encrypted_second_boot_to_serving_s=round(second_boot, 1),
           encrypted_disk_scan_s=round(scan_s, 1),
           encrypted_disk_raw_mib=round(raw_size_mib))
    print(f"\n{vm.accel}: image {image_mib:.0f} MiB (qcow2), raw disk {raw_size_mib:.0f} MiB "
          f"scanned in {scan_s:.1f} s; first boot (LUKS format + TPM2 enrolment) serving after "
          f"{first_boot:.1f} s, second boot (TPM2 unlock) after {second_boot:.1f} s")


def test_without_a_tpm_the_seed_key_unlocks_and_is_not_on_the_disk(tmp_path: Path) -> None:
    """No TPM: `state.key` on the config drive formats and opens the partition; the key is
    used from the drive, never copied to the disk (the raw disk does not hold it)."""
    if not IMAGE.exists():
        subprocess.run([str(REPO / "image/build.sh")], check=True)
    key = secrets.token_urlsafe(48)
    marker = f"rootmarker{secrets.token_hex(6)}"
    site = (f'role = "site"\nname = "{marker}"\nstate_dir = "/var/lib/outpost"\n'
            'secrets_dir = "/var/lib/outpost-secrets"\n\n'
            '[device_api]\nhost = "0.0.0.0"\nport = 8632\n')
    drive = make_config_drive(tmp_path / "seed.img", {"site.toml": site, "state.key": key})
    api_port = free_port()
    vm = Vm(IMAGE, tmp_path, seed=drive, forwards={api_port: 8632})
    try:
        vm.start()
        serving = wait_serving(vm, api_port)
        assert vm.power_off() == 0
        console = vm.console_text()
    finally:
        vm.kill()
    assert "state partition formatted, unlocked by: seed" in console, console[-5000:]
    assert "state partition unlocked (seed key)" in console, console[-5000:]
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(vm.disk), str(raw)], check=True)
    hits = scan_raw(raw, {"seed key": key, "root marker": marker})
    raw.unlink()
    assert ("root marker", "plain") in hits
    assert not [h for h in hits if h[0] == "seed key"], hits
    record(encrypted_seed_key_boot_to_serving_s=round(serving, 1))

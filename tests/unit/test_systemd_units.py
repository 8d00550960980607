"""The appliance's systemd units, checked offline with systemd's own tools.

systemd is not PID 1 on the build machines, so the units cannot run here; what
can be checked without a manager is checked: `systemd-analyze verify` against
a throw-away root that holds the units, the targets they name and stand-ins for
the executables; `systemd-analyze security --offline=yes` for the exposure
score; sysusers.d and tmpfiles.d applied to that root. The units run for real
in the booted image (tests/image).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

PACKAGING = Path(__file__).resolve().parents[2] / "packaging" / "systemd"
UNITS = sorted(p.name for p in (PACKAGING / "system").iterdir())
SERVICES = [u for u in UNITS if u.endswith(".service")]
HOST_UNITS = Path("/usr/lib/systemd/system")
MAX_EXPOSURE = 2.0

# systemd's tools come from `make setup` (package systemd): a missing one fails, never skips.


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A root with the host's units (for the targets ours name), ours, and stub executables."""
    root = tmp_path_factory.mktemp("root")
    unit_dir = root / "usr/lib/systemd/system"
    shutil.copytree(HOST_UNITS, unit_dir, symlinks=True)
    for unit in UNITS:
        shutil.copy(PACKAGING / "system" / unit, unit_dir / unit)
    for exe in ("outpost", "python"):
        stub = root / "opt/outpost/venv/bin" / exe
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\n")
        stub.chmod(0o755)
    return root


ROLE_UNITS = ["outpost-site.service", "outpost-primary.service", "outpost-provider.service"]


def test_the_role_units_exist() -> None:
    assert {*ROLE_UNITS, "outpost-firstboot.service"} <= set(UNITS)


def test_the_preset_enables_every_role_unit() -> None:
    preset = (PACKAGING / "system-preset/50-outpost.preset").read_text().splitlines()
    for unit in ROLE_UNITS:
        assert f"enable {unit}" in preset, unit


def test_each_role_unit_runs_its_own_configuration() -> None:
    for unit in ROLE_UNITS:
        role = unit.removeprefix("outpost-").removesuffix(".service")
        text = (PACKAGING / "system" / unit).read_text()
        assert f"\nConditionPathExists=/etc/outpost/{role}.toml\n" in text, unit
        assert f"\nExecStart=/opt/outpost/venv/bin/outpost serve --config " \
               f"/etc/outpost/{role}.toml\n" in text, unit
    # A provider promoted by moving its file to site.toml is not run twice.
    provider = (PACKAGING / "system/outpost-provider.service").read_text()
    assert "\nConditionPathExists=!/etc/outpost/site.toml\n" in provider


@pytest.mark.parametrize("unit", UNITS)
def test_verify_is_silent(root: Path, unit: str) -> None:
    # verify exits 0 on unknown keys and bad values; it only complains on stderr.
    done = subprocess.run(["systemd-analyze", "verify", "--man=no", f"--root={root}", unit],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr.strip() == "" and done.stdout.strip() == "", done.stderr + done.stdout


def exposure(unit: Path) -> float:
    done = subprocess.run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(unit)],
                          capture_output=True, text=True, timeout=60)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", done.stdout)
    assert match, done.stdout + done.stderr
    return float(match.group(1))


@pytest.mark.parametrize("unit", SERVICES)
def test_exposure_at_most_2(unit: str) -> None:
    assert exposure(PACKAGING / "system" / unit) <= MAX_EXPOSURE


def test_only_the_queue_hosts_may_bind_privileged_ports() -> None:
    for unit in ("outpost-site.service", "outpost-provider.service"):   # IPP 631, LPD 515
        text = (PACKAGING / "system" / unit).read_text()
        assert "\nCapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in text, unit
        assert "\nAmbientCapabilities=CAP_NET_BIND_SERVICE\n" in text, unit
    primary = (PACKAGING / "system/outpost-primary.service").read_text()
    assert "\nCapabilityBoundingSet=\n" in primary
    assert "AmbientCapabilities" not in primary


def test_the_provider_unit_is_hardened_as_the_sites() -> None:
    """Everything but the comments, the description and the role's file names is the
    site's: a hardening added to one and forgotten in the other fails here."""
    def settings(unit: str) -> list[str]:
        text = (PACKAGING / "system" / unit).read_text()
        return [line for line in text.splitlines()
                if line and not line.startswith(("#", "Description=", "ConditionPathExists="))]

    site, provider = settings("outpost-site.service"), settings("outpost-provider.service")
    assert [line.replace("provider.toml", "site.toml") for line in provider] == site


@pytest.mark.parametrize("unit", ROLE_UNITS)
def test_role_units_are_watched_and_restarted(unit: str) -> None:
    text = (PACKAGING / "system" / unit).read_text()
    for line in ("Type=notify", "NotifyAccess=main", "Restart=on-failure", "User=outpost",
                 "ProtectSystem=strict", "StateDirectory=outpost outpost-secrets",
                 "ConfigurationDirectory=outpost", "PrivateTmp=yes", "NoNewPrivileges=yes"):
        assert f"\n{line}\n" in text, line
    assert re.search(r"\nWatchdogSec=\d+s\n", text)


def test_sysusers_and_tmpfiles_apply_to_a_root(tmp_path: Path) -> None:
    import os

    (tmp_path / "etc").mkdir()
    done = subprocess.run(["systemd-sysusers", f"--root={tmp_path}",
                           str(PACKAGING / "sysusers.d/outpost.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    passwd = (tmp_path / "etc/passwd").read_text()
    entry = next(line for line in passwd.splitlines() if line.startswith("outpost:"))
    assert entry.endswith(":/var/lib/outpost:/usr/sbin/nologin")
    assert int(entry.split(":")[2]) < 1000          # a system user
    done = subprocess.run(["systemd-tmpfiles", "--create", f"--root={tmp_path}",
                           str(PACKAGING / "tmpfiles.d/outpost.conf")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    secrets = (tmp_path / "var/lib/outpost-secrets").stat()
    assert secrets.st_mode & 0o777 == 0o700
    if os.geteuid() == 0:
        assert secrets.st_uid == int(entry.split(":")[2])
    assert (tmp_path / "etc/outpost").stat().st_mode & 0o777 == 0o750

"""First-boot seeding (appliance.seed): config drive first, then the kernel command line."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from appliance import seed as seed_module
from appliance.seed import (
    SeedError,
    check,
    default_config,
    install,
    parse_cmdline,
    seed_from_cmdline,
    seed_from_directory,
)

SITE = 'role = "site"\nname = "branch-12"\n[ipp]\nhost = "0.0.0.0"\nport = 631\n'


def b64(text: str) -> str:
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def test_cmdline_parameters() -> None:
    line = "BOOT_IMAGE=/vmlinuz root=UUID=x console=ttyS0 outpost.role=site outpost.name=b12 quiet"
    assert parse_cmdline(line) == {"role": "site", "name": "b12"}
    assert seed_from_cmdline({}) is None


def test_cmdline_role_gives_a_default_that_checks() -> None:
    for role in ("site", "primary"):
        seed = seed_from_cmdline({"role": role, "name": "x1"})
        assert seed is not None and seed.role == role
        check(seed)
    site = seed_from_cmdline({"role": "site", "name": "x1"})
    assert site is not None and "port = 631" in site.config_text and "port = 515" in site.config_text


def test_cmdline_whole_config_base64url() -> None:
    seed = seed_from_cmdline(parse_cmdline(f"outpost.config={b64(SITE)} outpost.token=t0k "
                                           "outpost.primary=https://p:8633 outpost.ca_pin=sha256:ab"))
    assert seed is not None and seed.config_text == SITE and seed.role == "site"
    assert seed.enroll == {"token": "t0k", "primary": "https://p:8633", "ca_pin": "sha256:ab"}


@pytest.mark.parametrize("params", [
    {"role": "provider"},
    {"config": "%%%"},
    {"config": b64('role = "site"\n'), "role": "primary"},
    {"config": b64("role = ")},
])
def test_bad_cmdline_seeds_are_refused(params: dict[str, str]) -> None:
    with pytest.raises(SeedError):
        seed_from_cmdline(params)


def test_a_config_that_does_not_parse_is_refused() -> None:
    seed = seed_from_cmdline({"config": b64(SITE + "[ipp2]\nport = 1\n")})
    assert seed is not None
    with pytest.raises(SeedError, match="ipp2: unknown setting"):
        check(seed)


def test_config_drive(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE)
    (tmp_path / "tls").mkdir()
    (tmp_path / "tls" / "ca.pem").write_bytes(b"CA")
    (tmp_path / "enroll.toml").write_text('token = "abc"\nprimary = "https://p:8633"\nother = 1\n')
    seed = seed_from_directory(tmp_path)
    assert seed is not None
    assert (seed.role, seed.tls_files, seed.enroll) == (
        "site", {"ca.pem": b"CA"}, {"token": "abc", "primary": "https://p:8633"})
    assert seed_from_directory(tmp_path / "tls") is None


def test_config_drive_with_two_roles_or_a_lying_name(tmp_path: Path) -> None:
    (tmp_path / "primary.toml").write_text(SITE)
    with pytest.raises(SeedError, match="says role"):
        seed_from_directory(tmp_path)
    (tmp_path / "site.toml").write_text(SITE)
    with pytest.raises(SeedError, match="one role"):
        seed_from_directory(tmp_path)


def test_install_writes_private_files_role_last(tmp_path: Path) -> None:
    seed = seed_from_cmdline({"role": "site", "name": "b1", "token": "t"})
    assert seed is not None
    seed.tls_files = {"ca.pem": b"CA"}
    written = install(seed, tmp_path / "etc", group=None)
    assert [p.name for p in written] == ["ca.pem", "enroll.toml", "site.toml"]
    for path in written:
        assert path.stat().st_mode & 0o777 == 0o640
    assert (tmp_path / "etc/enroll.toml").read_text() == 'token = "t"\n'


def test_main_prefers_the_drive(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    drive, etc, cmdline = tmp_path / "drive", tmp_path / "etc", tmp_path / "cmdline"
    drive.mkdir()
    (drive / "site.toml").write_text(SITE)
    cmdline.write_text("outpost.role=primary")
    monkeypatch.setattr(seed_module, "install",
                        lambda seed, etc: install(seed, etc, group=None))
    monkeypatch.setenv("OUTPOST_ETC", str(etc))
    monkeypatch.setenv("OUTPOST_SEED_DIR", str(drive))
    monkeypatch.setenv("OUTPOST_CMDLINE", str(cmdline))
    assert seed_module.main() == 0
    assert (etc / "site.toml").read_text() == SITE
    assert not (etc / "primary.toml").exists()
    monkeypatch.setenv("OUTPOST_SEED_DIR", str(tmp_path / "absent"))
    (etc / "site.toml").unlink()
    assert seed_module.main() == 0
    assert (etc / "primary.toml").read_text() == default_config("primary", os.uname().nodename)


def test_wait_for_drive(tmp_path: Path) -> None:
    link, mountpoint = tmp_path / "OUTPOSTSEED", tmp_path / "mnt"
    assert not seed_module.wait_for_drive(link, mountpoint)       # no drive: no wait
    link.touch()
    with pytest.raises(SeedError, match="not mounted within"):
        seed_module.wait_for_drive(link, mountpoint, timeout=0.2, poll=0.05)
    assert seed_module.wait_for_drive(link, Path("/"), timeout=0.2)   # / is a mount point

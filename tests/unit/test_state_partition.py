"""appliance.state_partition's choices, with the system's tools recorded instead of run: what
binds a new LUKS2 volume (TPM2, a seed key, a local key) and how each boot opens it. The real
thing (cryptsetup, systemd-cryptenroll, swtpm) runs in tests/image/test_encrypted_state.py."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from appliance import state_partition as sp


class Tools:
    """Records every command; answers `cryptsetup isLuks/luksDump` and `blkid` as told."""

    def __init__(self, *, luks: bool = False, tpm2_token: bool = False, fs: str = "") -> None:
        self.luks, self.tpm2_token, self.fs = luks, tpm2_token, fs
        self.calls: list[tuple[list[str], bytes | None, dict[str, str] | None]] = []

    def __call__(self, argv: list[str], *, input: bytes | None = None,
                 env: dict[str, str] | None = None,
                 check: bool = True) -> subprocess.CompletedProcess[bytes]:
        self.calls.append((argv, input, env))
        out, code = b"", 0
        if argv[:2] == ["cryptsetup", "isLuks"]:
            code = 0 if self.luks else 1
        elif argv[:2] == ["cryptsetup", "luksDump"]:
            out = b"Tokens:\n  0: systemd-tpm2\n" if self.tpm2_token else b"Tokens:\n"
        elif argv[0] == "blkid":
            out, code = (self.fs.encode() + b"\n", 0) if self.fs else (b"", 2)
        elif argv[:2] == ["cryptsetup", "luksFormat"]:
            self.luks = True
        elif argv[0] == "systemd-cryptenroll":
            self.tpm2_token = True
        return subprocess.CompletedProcess(argv, code, out, b"")

    def commands(self) -> list[str]:
        return [" ".join(argv[:2]) for argv, _, _ in self.calls]


@pytest.fixture
def system(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, path in {"DEVICE": "dev/state", "MAPPER": "dev/mapper/outpost-state",
                       "TPM_DEVICE": "dev/tpmrm0", "SEED_LABEL_LINK": "dev/by-label/SEED",
                       "SEED_MOUNTPOINT": "run/outpostseed",
                       "LOCAL_KEY": "etc/outpost-state/state.key"}.items():
        monkeypatch.setattr(sp, name, tmp_path / path)
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev/state").touch()
    (tmp_path / "etc/outpost-state").mkdir(parents=True)
    return tmp_path


def test_with_a_tpm_the_formatting_key_is_sealed_and_its_slot_wiped(
        system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (system / "dev/tpmrm0").touch()
    tools = Tools()
    monkeypatch.setattr(sp, "run", tools)
    sp.start()
    formats = [c for c in tools.calls if c[0][:2] == ["cryptsetup", "luksFormat"]]
    (argv, key, _), = formats
    assert key is not None and len(key) == 64
    assert argv[argv.index("--pbkdf") + 1] == "pbkdf2" and "--type" in argv
    (enroll_argv, _, env), = [c for c in tools.calls if c[0][0] == "systemd-cryptenroll"]
    assert "--tpm2-device=auto" in enroll_argv and "--wipe-slot=0" in enroll_argv
    assert env is not None and env["PASSWORD"] == key.decode()
    (attach, _, _), = [c for c in tools.calls if c[0][1:2] == ["attach"]]
    assert attach[-2:] == ["-", "tpm2-device=auto,headless=true"]
    assert "mkfs.ext4 -q" in tools.commands()
    assert not sp.LOCAL_KEY.exists(), "with a TPM no key is written anywhere"


def test_a_failed_tpm_enrolment_wipes_the_header_for_the_next_boot(
        system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (system / "dev/tpmrm0").touch()
    tools = Tools()

    def failing(argv: list[str], **kw: object) -> subprocess.CompletedProcess[bytes]:
        if argv[0] == "systemd-cryptenroll":
            raise sp.StateError("no TPM answer")
        return tools(argv, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(sp, "run", failing)
    assert sp.main(["start"]) == 1
    assert "wipefs --all" in tools.commands()
    assert not any(argv[1:2] == ["attach"] for argv, _, _ in tools.calls)


def test_without_a_tpm_the_seed_key_is_used_and_never_copied(
        system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = system / "run/outpostseed"
    seed.mkdir(parents=True)
    (seed / "state.key").write_bytes(b"k" * 40)
    monkeypatch.setattr("appliance.seed.wait_for_drive", lambda link, mount: True)
    tools = Tools()
    monkeypatch.setattr(sp, "run", tools)
    sp.start()
    (_, key, _), = [c for c in tools.calls if c[0][:2] == ["cryptsetup", "luksFormat"]]
    assert key == b"k" * 40
    (attach, _, _), = [c for c in tools.calls if c[0][1:2] == ["attach"]]
    assert attach[-2:] == [str(seed / "state.key"), "headless=true"]
    assert not sp.LOCAL_KEY.exists()


def test_a_short_seed_key_is_refused(system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seed = system / "run/outpostseed"
    seed.mkdir(parents=True)
    (seed / "state.key").write_bytes(b"password")
    monkeypatch.setattr("appliance.seed.wait_for_drive", lambda link, mount: True)
    tools = Tools()
    monkeypatch.setattr(sp, "run", tools)
    assert sp.main(["start"]) == 1
    assert not tools.luks


def test_with_neither_a_local_key_is_written_and_opens_later_boots(
        system: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr("appliance.seed.wait_for_drive", lambda link, mount: False)
    tools = Tools()
    monkeypatch.setattr(sp, "run", tools)
    sp.start()
    assert sp.LOCAL_KEY.stat().st_mode & 0o777 == 0o400
    (_, key, _), = [c for c in tools.calls if c[0][:2] == ["cryptsetup", "luksFormat"]]
    assert key == sp.LOCAL_KEY.read_bytes()
    assert "WARNING" in capsys.readouterr().out
    # The next boot: LUKS already, an ext4 inside; opened with the key, checked, not remade.
    later = Tools(luks=True, fs="ext4")
    monkeypatch.setattr(sp, "run", later)
    sp.start()
    assert "cryptsetup luksFormat" not in later.commands()
    (attach, _, _), = [c for c in later.calls if c[0][1:2] == ["attach"]]
    assert attach[-2:] == [str(sp.LOCAL_KEY), "headless=true"]
    assert "e2fsck -p" in later.commands() and "mkfs.ext4 -q" not in later.commands()


def test_a_locked_volume_with_no_key_anywhere_stays_locked(
        system: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("appliance.seed.wait_for_drive", lambda link, mount: False)
    tools = Tools(luks=True)
    monkeypatch.setattr(sp, "run", tools)
    assert sp.main(["start"]) == 1
    assert not any(argv[1:2] == ["attach"] for argv, _, _ in tools.calls)


def test_usage() -> None:
    assert subprocess.run([sys.executable, "-m", "appliance.state_partition", "bogus"],
                          capture_output=True).returncode == 2

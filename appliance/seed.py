"""First-boot configuration of the appliance image from a seed.

A freshly flashed appliance has no /etc/outpost/site.toml or primary.toml, so
neither role unit starts. `outpost-firstboot.service` runs
`python -m appliance.seed` once, before them, and writes the configuration
from the first seed it finds:

1. A **config drive**: any filesystem labelled ``OUTPOSTSEED`` (a FAT USB
   stick, a second virtual disk, an ISO), which ``run-outpostseed.mount``
   mounts read-only at /run/outpostseed (so this code needs no mount rights).
   ``site.toml`` or ``primary.toml`` on it is checked and copied to
   /etc/outpost/; files under ``tls/`` go to /etc/outpost/tls/ (a primary's
   ``ca.key``, for ``[enroll] ca_key_file``, mode 0600 and owned by the service);
   ``enroll.toml`` (primary URL, join token, CA pin) is kept for enrollment.
2. The **kernel command line**: ``outpost.role=site|primary``,
   ``outpost.name=NAME``, and either ``outpost.config=<base64url TOML>`` (a
   whole file) or nothing (a default configuration for the role: the site
   serves IPP on 631 and LPD on 515 on every address). ``outpost.primary=URL``,
   ``outpost.token=T`` and ``outpost.ca_pin=sha256:...`` go to enroll.toml.

A site seeded with a primary URL but no ``[primary]`` section of its own also gets
``site.toml.d/50-enroll.toml``: ``[primary]`` with that URL and its certificate files
in ``secrets_dir/tls/`` (where the site may rewrite them when it renews). This unit has
no network; ``outpost serve`` enrolls when it finds enroll.toml and no certificate
(docs/wire/enroll.md).

A configuration that does not pass `appliance.config.parse` is not written:
the errors go to the console (journal) and no role starts, which is louder
than a role that starts half-configured. Nothing here runs when a
configuration already exists (the unit's ConditionPathExists=), so a seed
left in the drive does not overwrite an administrator's later changes.
"""

from __future__ import annotations

import base64
import binascii
import os
import shutil
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

SEED_LABEL = "OUTPOSTSEED"
#: run-outpostseed.mount mounts the drive here, read-only, for as long as the seed runs.
SEED_MOUNTPOINT = "/run/outpostseed"
ROLES = ("site", "primary")
ENROLL_KEYS = ("primary", "token", "ca_pin", "enroll_url")


class SeedError(Exception):
    pass


@dataclass
class Seed:
    """What a seed asks for: the role's configuration text and the files beside it."""

    role: str
    config_text: str
    tls_files: dict[str, bytes] = field(default_factory=dict)
    enroll: dict[str, str] = field(default_factory=dict)
    source: str = ""


def parse_cmdline(text: str) -> dict[str, str]:
    """The ``outpost.*`` parameters of a kernel command line, without their prefix."""
    found: dict[str, str] = {}
    for word in text.split():
        key, sep, value = word.partition("=")
        if key.startswith("outpost.") and sep:
            found[key.removeprefix("outpost.")] = value
    return found


def default_config(role: str, name: str) -> str:
    """A configuration an appliance serves with out of the box."""
    if role == "site":
        return (
            f'role = "site"\nname = "{name}"\n'
            'state_dir = "/var/lib/outpost"\nsecrets_dir = "/var/lib/outpost-secrets"\n\n'
            '[ipp]\nhost = "0.0.0.0"\nport = 631\n\n'
            '[lpd]\nhost = "0.0.0.0"\nport = 515\n\n'
            '[device_api]\nhost = "0.0.0.0"\nport = 8632\n'
        )
    return (
        f'role = "primary"\nname = "{name}"\n'
        'state_dir = "/var/lib/outpost"\nsecrets_dir = "/var/lib/outpost-secrets"\n\n'
        '[sync]\nhost = "0.0.0.0"\nport = 8633\n'
        'ca_file = "/etc/outpost/tls/ca.crt"\ncert_file = "/etc/outpost/tls/primary.crt"\n'
        'key_file = "/etc/outpost/tls/primary.key"\n'
    )


def role_of(config_text: str) -> str:
    try:
        role = tomllib.loads(config_text).get("role", "site")
    except tomllib.TOMLDecodeError as exc:
        raise SeedError(f"not valid TOML: {exc}") from None
    if role not in ROLES:
        raise SeedError(f"role {role!r}: expected one of {', '.join(ROLES)}")
    return str(role)


def seed_from_cmdline(params: dict[str, str]) -> Seed | None:
    if not any(key in params for key in ("role", "config")):
        return None
    enroll = {key: params[key] for key in ENROLL_KEYS if key in params}
    if "config" in params:
        raw = params["config"]
        try:
            text = base64.b64decode(raw + "=" * (-len(raw) % 4), altchars=b"-_",
                                    validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise SeedError(f"outpost.config: not base64url-encoded TOML ({exc})") from None
        role = role_of(text)
        if params.get("role", role) != role:
            raise SeedError(f"outpost.role={params['role']} but outpost.config says {role!r}")
        return Seed(role, text, enroll=enroll, source="kernel command line")
    role = params["role"]
    if role not in ROLES:
        raise SeedError(f"outpost.role={role}: expected one of {', '.join(ROLES)}")
    name = params.get("name") or os.uname().nodename or role
    return Seed(role, default_config(role, name), enroll=enroll, source="kernel command line")


def seed_from_directory(root: Path) -> Seed | None:
    """A mounted config drive (or any folder laid out like one)."""
    configs = [root / f"{role}.toml" for role in ROLES if (root / f"{role}.toml").is_file()]
    if not configs:
        return None
    if len(configs) > 1:
        raise SeedError(f"{root}: both site.toml and primary.toml; an appliance has one role")
    text = configs[0].read_text()
    role = role_of(text)
    if configs[0].stem != role:
        raise SeedError(f"{configs[0].name} says role = {role!r}")
    tls = {p.name: p.read_bytes() for p in sorted((root / "tls").glob("*")) if p.is_file()} \
        if (root / "tls").is_dir() else {}
    enroll: dict[str, str] = {}
    if (root / "enroll.toml").is_file():
        enroll = {k: str(v) for k, v in tomllib.loads((root / "enroll.toml").read_text()).items()
                  if k in ENROLL_KEYS}
    return Seed(role, text, tls, enroll, source=str(root))


def enroll_dropin(seed: Seed) -> str | None:
    """The `[primary]` drop-in of a site seeded for enrollment without one, or None."""
    if seed.role != "site" or "primary" not in seed.enroll:
        return None
    root = tomllib.loads(seed.config_text)
    if "primary" in root:
        return None
    name = str(root.get("name", "site"))
    tls = Path(str(root.get("secrets_dir", "/var/lib/outpost-secrets"))) / "tls"
    return (f'[primary]\nurl = "{seed.enroll["primary"]}"\n'
            f'ca_file = "{tls / "ca.crt"}"\ncert_file = "{tls / f"{name}.crt"}"\n'
            f'key_file = "{tls / f"{name}.key"}"\n')


def check(seed: Seed) -> None:
    from appliance.config import ConfigError, parse

    try:
        parse(tomllib.loads(seed.config_text))
    except ConfigError as exc:
        raise SeedError(f"{seed.source}: {exc}") from None


def install(seed: Seed, etc: Path, group: str | None = "outpost") -> list[Path]:
    """Write the seed under `etc` (/etc/outpost): root-owned, readable by the service's group."""
    etc.mkdir(parents=True, exist_ok=True)
    written = []

    def write(path: Path, data: bytes, mode: int, owner: str | None = None) -> None:
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if group is not None:
            shutil.chown(tmp, user=owner, group=group)
        os.replace(tmp, path)
        written.append(path)

    for name, data in seed.tls_files.items():
        (etc / "tls").mkdir(exist_ok=True)
        if name == "ca.key" and seed.role == "primary":
            # A primary that enrolls sites signs with it ([enroll] ca_key_file): only the
            # service may read it (it refuses a key with any group or other bits).
            write(etc / "tls" / name, data, 0o600, owner=group)   # user outpost = group
        else:
            write(etc / "tls" / name, data, 0o640)
    if seed.enroll:
        body = "".join(f'{k} = "{v}"\n' for k, v in sorted(seed.enroll.items()))
        write(etc / "enroll.toml", body.encode(), 0o640)
    dropin = enroll_dropin(seed)
    if dropin is not None:
        folder = etc / f"{seed.role}.toml.d"
        folder.mkdir(mode=0o750, exist_ok=True)
        if group is not None:
            shutil.chown(folder, group=group)
        write(folder / "50-enroll.toml", dropin.encode(), 0o640)
    # The role's file last: its existence is what starts the role's unit.
    write(etc / f"{seed.role}.toml", seed.config_text.encode(), 0o640)
    return written


def wait_for_drive(label_link: Path, mountpoint: Path, timeout: float = 60.0,
                   poll: float = 0.5) -> bool:
    """Whether the config drive is mounted; waits when udev has seen it but PID 1 has not
    mounted it yet (udev-settle can finish just before the mount job runs)."""
    import time

    if not label_link.exists():
        return os.path.ismount(mountpoint)
    deadline = time.monotonic() + timeout
    while not os.path.ismount(mountpoint):
        if time.monotonic() > deadline:
            raise SeedError(f"{label_link} exists but {mountpoint} was not mounted within "
                            f"{timeout:.0f}s (run-outpostseed.mount)")
        time.sleep(poll)
    return True


def main(argv: list[str] | None = None) -> int:
    etc = Path(os.environ.get("OUTPOST_ETC", "/etc/outpost"))
    drive = Path(os.environ.get("OUTPOST_SEED_DIR", SEED_MOUNTPOINT))
    cmdline = Path(os.environ.get("OUTPOST_CMDLINE", "/proc/cmdline"))
    try:
        if "OUTPOST_SEED_DIR" not in os.environ:
            wait_for_drive(Path("/dev/disk/by-label") / SEED_LABEL, drive)
        seed = seed_from_directory(drive) if drive.is_dir() else None
        if seed is None:
            seed = seed_from_cmdline(parse_cmdline(cmdline.read_text()))
        if seed is not None:
            check(seed)
            install(seed, etc)
    except (SeedError, OSError) as exc:
        print(f"outpost seed: {exc}", file=sys.stderr)
        return 1
    if seed is None:
        print(f"outpost seed: no config drive labelled {SEED_LABEL} and no outpost.role= on the "
              "kernel command line; no role configured", file=sys.stderr)
        return 0
    print(f"outpost seed: configured role {seed.role} from {seed.source}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The appliance's encrypted state partition: LUKS2, formatted on first boot, unlocked at boot.

Everything an appliance must not give away with a stolen disk lives on the third partition
of the image (GPT name ``outpost-state``): the database (card HMACs, Argon2id verifiers of
PINs and passwords, the ledger), the spool and the card HMAC key. The image leaves it empty;
``outpost-state.service`` runs ``python -m appliance.state_partition start`` early on every
boot, before /var/lib/outpost-state (and the bind mounts /var/lib/outpost and
/var/lib/outpost-secrets from it, see the image's fstab) is mounted:

* **First boot** (the partition is not LUKS yet): a LUKS2 header is written and bound to

  1. the **TPM2** when there is one (``/dev/tpmrm0``): a random 256-bit key formats it, then
     ``systemd-cryptenroll --tpm2-device=auto --tpm2-pcrs=7`` seals a new key slot to the
     TPM and wipes the first slot. The random key only ever exists in this process's memory
     and a pipe: no key of this volume is on the disk in any form the disk alone can open.
  2. else a **key from the seed**: ``state.key`` on the config drive (OUTPOSTSEED), at least
     32 bytes (``head -c 32 /dev/urandom > state.key``). It is used as it is and never
     copied: the drive must stay in the appliance, as the key to its state.
  3. else (no TPM, no key in the seed) a random key in ``/etc/outpost-state/state.key`` on
     the root filesystem, with a warning on the console: the state is still on LUKS (a
     wiped key is a wiped state) but a stolen disk opens. Use a TPM2 or a seed key.

  Then an ext4 is made inside from ``/usr/lib/outpost/state-template`` (the two folders,
  owned by the outpost user).
* **Every boot**: the volume is opened with systemd's own ``systemd-cryptsetup attach``
  (``tpm2-device=auto`` when the header has a systemd-tpm2 token, else the key file), as
  ``/dev/mapper/outpost-state``, and its filesystem checked (``e2fsck -p``).
* ``stop`` (shutdown) closes it again, after systemd has unmounted it.

Key derivation: every key slot is opened by a high-entropy key (256 random bits from the
TPM, or a seed key of 32 bytes or more), never by a password a person chose. A slow KDF
protects low-entropy passwords and adds nothing against guessing a 256-bit key, so the slots
use PBKDF2 at its 1000-iteration minimum (what systemd-cryptenroll itself uses for its TPM2
slot). LUKS2's default, Argon2id with up to 1 GiB of memory and a 2-second target, would
cost tens of seconds per boot under emulation (TCG) and most of a small appliance's RAM.

If the TPM is cleared, or PCR 7 changes (Secure Boot turned on or off, its keys changed),
the volume no longer opens and the roles do not start (their units require the mounts):
the state is lost, never silently replaced by an unencrypted one.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

NAME = "outpost-state"
#: Fixed in image/build.sh (STATE_PARTUUID).
STATE_PARTUUID = "6f757470-6f73-4000-8000-000000000005"
DEVICE = Path("/dev/disk/by-partuuid") / STATE_PARTUUID
MAPPER = Path("/dev/mapper") / NAME
TPM_DEVICE = Path("/dev/tpmrm0")
SEED_LABEL_LINK = Path("/dev/disk/by-label/OUTPOSTSEED")
SEED_MOUNTPOINT = Path("/run/outpostseed")
SEED_KEY_NAME = "state.key"
LOCAL_KEY = Path("/etc/outpost-state/state.key")
TEMPLATE = Path("/usr/lib/outpost/state-template")
SYSTEMD_CRYPTSETUP = "/usr/lib/systemd/systemd-cryptsetup"
MIN_SEED_KEY = 32
#: PCR 7: the Secure Boot policy (the firmware's state, not the kernel's hash: a kernel
#: update does not lock the state out).
TPM2_PCRS = "7"


class StateError(Exception):
    pass


def say(message: str) -> None:
    """A line in the journal, and on the console (``<4>``: at warning level, which the
    appliance's journald forwards to the serial console, where an installer looks)."""
    print(f"<4>outpost-state: {message}", flush=True)


def run(argv: list[str], *, input: bytes | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess[bytes]:
    done = subprocess.run(argv, input=input, env=env, capture_output=True)
    if check and done.returncode != 0:
        raise StateError(f"{' '.join(argv[:2])} failed ({done.returncode}): "
                         f"{(done.stderr or done.stdout).decode(errors='replace').strip()}")
    return done


def is_luks(device: Path) -> bool:
    return run(["cryptsetup", "isLuks", str(device)], check=False).returncode == 0


def has_tpm2_token(device: Path) -> bool:
    return b"systemd-tpm2" in run(["cryptsetup", "luksDump", str(device)]).stdout


def seed_key() -> bytes | None:
    """``state.key`` from the config drive, if the drive is there and holds one."""
    from appliance.seed import SeedError, wait_for_drive

    try:
        if not wait_for_drive(SEED_LABEL_LINK, SEED_MOUNTPOINT):
            return None
    except SeedError as exc:
        raise StateError(str(exc)) from None
    path = SEED_MOUNTPOINT / SEED_KEY_NAME
    if not path.is_file():
        return None
    key = path.read_bytes()
    if len(key) < MIN_SEED_KEY:
        raise StateError(f"{SEED_KEY_NAME} on the config drive: {len(key)} bytes; at least "
                         f"{MIN_SEED_KEY} random bytes (head -c 32 /dev/urandom > state.key)")
    return key


def luks_format(device: Path, key: bytes) -> None:
    run(["cryptsetup", "luksFormat", "--batch-mode", "--type", "luks2",
         "--cipher", "aes-xts-plain64", "--key-size", "512", "--hash", "sha256",
         "--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000",
         "--label", NAME, "--key-file=-", str(device)], input=key)


def enroll_tpm2(device: Path, key: bytes) -> None:
    """A TPM2-sealed key slot; the formatting key's slot (0) is wiped once it exists."""
    env = {"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
           "PASSWORD": key.decode()}
    run(["systemd-cryptenroll", "--tpm2-device=auto", f"--tpm2-pcrs={TPM2_PCRS}",
         "--wipe-slot=0", str(device)], env=env)


def format_partition(device: Path) -> str:
    """Write the LUKS2 header; returns what unlocks it ("tpm2", "seed" or "local")."""
    if TPM_DEVICE.exists():
        key = secrets.token_hex(32).encode()
        luks_format(device, key)
        try:
            enroll_tpm2(device, key)
        except StateError:
            # The only key that opens it is about to be forgotten: start over next boot.
            run(["wipefs", "--all", "--quiet", str(device)], check=False)
            raise
        return "tpm2"
    from_seed = seed_key()
    if from_seed is not None:
        luks_format(device, from_seed)
        return "seed"
    key = secrets.token_hex(32).encode()
    tmp = LOCAL_KEY.with_name(LOCAL_KEY.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, LOCAL_KEY)
    luks_format(device, key)
    say(f"WARNING: no TPM2 and no {SEED_KEY_NAME} on a config drive: the state partition's "
        f"key is in {LOCAL_KEY} on the root filesystem; the disk alone opens it")
    return "local"


def attach(device: Path) -> str:
    """Open the volume as /dev/mapper/outpost-state with systemd-cryptsetup; returns how."""
    if has_tpm2_token(device):
        how, key_file, options = "tpm2", "-", "tpm2-device=auto,headless=true"
    elif LOCAL_KEY.is_file():
        how, key_file, options = "local key", str(LOCAL_KEY), "headless=true"
    else:
        if seed_key() is None:
            raise StateError(f"the state partition has no TPM2 token and no key in {LOCAL_KEY}, "
                             f"and no config drive with {SEED_KEY_NAME} is present: it stays locked")
        how, key_file, options = "seed key", str(SEED_MOUNTPOINT / SEED_KEY_NAME), "headless=true"
    run([SYSTEMD_CRYPTSETUP, "attach", NAME, str(device), key_file, options])
    return how


def ensure_filesystem() -> bool:
    """An ext4 inside the opened volume (made from the template the first time); True if made."""
    found = run(["blkid", "-p", "-o", "value", "-s", "TYPE", str(MAPPER)], check=False)
    if found.stdout.strip() == b"ext4":
        checked = run(["e2fsck", "-p", str(MAPPER)], check=False)
        if checked.returncode >= 4:
            raise StateError(f"e2fsck -p {MAPPER}: exit {checked.returncode}: "
                             f"{checked.stdout.decode(errors='replace').strip()}")
        return False
    if found.returncode == 0 and found.stdout.strip():
        raise StateError(f"{MAPPER} holds {found.stdout.decode().strip()}, not ext4")
    run(["mkfs.ext4", "-q", "-L", NAME, "-d", str(TEMPLATE),
         "-E", "lazy_itable_init=1,lazy_journal_init=1", str(MAPPER)])
    return True


def start() -> None:
    if not DEVICE.exists():
        raise StateError(f"{DEVICE} (the image's state partition) does not exist")
    if MAPPER.exists():
        say(f"{MAPPER} is open already")
    else:
        if not is_luks(DEVICE):
            say("first boot: formatting the state partition (LUKS2)")
            bound = format_partition(DEVICE)
            say(f"state partition formatted, unlocked by: {bound}")
        how = attach(DEVICE)
        say(f"state partition unlocked ({how})")
    if ensure_filesystem():
        say("state filesystem created")


def stop() -> None:
    if MAPPER.exists():
        run([SYSTEMD_CRYPTSETUP, "detach", NAME])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    verb = args[0] if args else "start"
    if verb not in ("start", "stop"):
        print("usage: python -m appliance.state_partition start|stop", file=sys.stderr)
        return 2
    try:
        start() if verb == "start" else stop()
    except (StateError, OSError) as exc:
        print(f"<3>outpost-state: {exc}", file=sys.stderr, flush=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

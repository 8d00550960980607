"""Card, PIN and password handling: what is stored, how it is checked, how guessing is slowed.

- A card number is stored only as HMAC-SHA256 under a per-deployment key, so a
  swipe is one indexed lookup and a stolen database without the key does not
  reveal card numbers (and a 10-digit card space cannot be brute-forced
  offline without the key).
- PINs and passwords are stored only as Argon2id verifiers. Checking one costs
  tens of milliseconds of CPU and `ARGON2_MEMORY_KIB` of memory on purpose; it
  runs in a worker thread, never on the reactor.
- Failed attempts are counted per identity and per device; past a threshold
  the identity (or device) is locked for a while that doubles on repeats.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

#: Argon2id parameters (RFC 9106's second recommended option, with one lane so
#: that a 2-core site can verify several logins at once). Stated in the README.
ARGON2_TIME_COST = 3
ARGON2_MEMORY_KIB = 65536
ARGON2_PARALLELISM = 1


def password_hasher(
    time_cost: int = ARGON2_TIME_COST,
    memory_kib: int = ARGON2_MEMORY_KIB,
    parallelism: int = ARGON2_PARALLELISM,
) -> PasswordHasher:
    return PasswordHasher(
        time_cost=time_cost, memory_cost=memory_kib, parallelism=parallelism, hash_len=32,
        salt_len=16,
    )


def make_verifier(hasher: PasswordHasher, secret: str) -> str:
    return hasher.hash(secret)


def check_verifier(hasher: PasswordHasher, verifier: str, secret: str) -> bool:
    try:
        return hasher.verify(verifier, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


CARD_FORMATS = ("raw", "decimal", "hex", "hex-reversed")


@dataclass(frozen=True)
class CardRule:
    """How one device's reader reports a card, and how to get the card's one number.

    - `format`: `raw` (the default: the text as read, trimmed, without separators,
      upper case), `decimal` (a decimal number), `hex` (a hexadecimal number, most
      significant byte first), `hex-reversed` (hexadecimal, least significant byte
      first, as some readers send the UID).
    - `strip_facility`: keep only the low `number_bits` bits (a Wiegand-26 reader
      sends facility code << 16 | card number; the card number is what users own).
    - Every rule but `raw` yields the number in decimal, zero-padded to `digits`
      (10 by default, the common printed form: "0004123456"), so that a decimal
      reader and a hex reader of the same card give the same canonical text and
      therefore the same HMAC.
    """

    format: str = "raw"
    strip_facility: bool = False
    number_bits: int = 16
    digits: int = 10

    def __post_init__(self) -> None:
        if self.format not in CARD_FORMATS:
            raise ValueError(f"card format must be one of {', '.join(CARD_FORMATS)}")
        if self.strip_facility and self.format == "raw":
            raise ValueError("strip_facility needs a numeric card format (decimal, hex, ...)")
        if not 1 <= self.number_bits <= 128 or not 1 <= self.digits <= 40:
            raise ValueError("number_bits must be 1..128 and digits 1..40")


RAW_CARDS = CardRule()


class CardFormatError(ValueError):
    """What the reader sent is not a card number in the device's format."""


def normalise_card(card: str, rule: CardRule | None = None) -> str:
    """The canonical form of a card number before hashing.

    Without a rule (or with `raw`): trimmed, no separators, upper case. With a
    device's rule: the card's number in decimal (see `CardRule`).
    """
    text = "".join(ch for ch in card.strip() if ch not in " -:").upper()
    if rule is None or rule.format == "raw":
        return text
    if not text or len(text) > 64:
        raise CardFormatError("card number is empty or too long")
    try:
        if rule.format == "decimal":
            if not text.isdigit() or not text.isascii():
                raise ValueError(text)
            value = int(text, 10)
        else:
            if text.startswith("0X"):
                text = text[2:]
            if not text or any(ch not in "0123456789ABCDEF" for ch in text):
                raise ValueError(text)
            if rule.format == "hex-reversed":
                if len(text) % 2:
                    text = "0" + text
                text = "".join(reversed([text[i:i + 2] for i in range(0, len(text), 2)]))
            value = int(text, 16)
    except ValueError:
        raise CardFormatError(f"not a {rule.format} card number") from None
    if rule.strip_facility:
        value &= (1 << rule.number_bits) - 1
    return f"{value:0{rule.digits}d}"


class CardKey:
    """The per-deployment HMAC key for card numbers, read from a 0600 file."""

    def __init__(self, key: bytes) -> None:
        if len(key) < 32:
            raise ValueError("card HMAC key must be at least 32 bytes")
        self._key = key

    @classmethod
    def load_or_create(cls, path: Path) -> CardKey:
        """Read the key; make one (mode 0600, written atomically) on first start."""
        if path.exists():
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                raise PermissionError(f"{path} must not be readable by group or others")
            return cls(bytes.fromhex(path.read_text().strip()))
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = secrets.token_bytes(32)
        temp = path.with_name(path.name + ".tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, key.hex().encode() + b"\n")
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
        return cls(key)

    def lookup(self, card: str, rule: CardRule | None = None) -> str:
        """HMAC-SHA256 of the card's canonical number (`rule`: the reader's device rule)."""
        return hmac.new(self._key, normalise_card(card, rule).encode(),
                        hashlib.sha256).hexdigest()

    def __repr__(self) -> str:  # never print the key
        return "CardKey(<secret>)"


@dataclass
class _Failures:
    count: int = 0
    first_at: float = 0.0
    locked_until: float = 0.0
    lockouts: int = 0


@dataclass
class Throttle:
    """Counts failures per key; `max_failures` within `window` locks the key.

    The lock lasts `lockout` seconds, doubling for each lock in a row (up to
    `max_lockout`); a success clears the count. Keys are strings such as
    `card:<hmac>`, `user:alice`, `device:mfd-1`.
    """

    clock: Callable[[], float] = time.monotonic
    max_failures: int = 5
    window: float = 300.0
    lockout: float = 60.0
    max_lockout: float = 3600.0
    _state: dict[str, _Failures] = field(default_factory=dict)

    def retry_after(self, key: str) -> float:
        """Seconds until `key` may try again (0 if not locked)."""
        state = self._state.get(key)
        if state is None:
            return 0.0
        return max(0.0, state.locked_until - self.clock())

    def failed(self, key: str) -> None:
        now = self.clock()
        state = self._state.setdefault(key, _Failures())
        if now - state.first_at > self.window:
            state.count, state.first_at = 0, now
        state.count += 1
        if state.count >= self.max_failures:
            duration = min(self.max_lockout, self.lockout * (2**state.lockouts))
            state.locked_until = now + duration
            state.lockouts += 1
            state.count = 0
            state.first_at = now

    def succeeded(self, key: str) -> None:
        state = self._state.get(key)
        if state is not None and state.locked_until <= self.clock():
            del self._state[key]

    def prune(self) -> None:
        now = self.clock()
        for key in [
            k for k, s in self._state.items()
            if s.locked_until <= now and now - s.first_at > self.window
        ]:
            del self._state[key]


@dataclass
class Session:
    token: str
    user_id: int
    username: str
    full_name: str
    account_id: int
    device: str
    created_at: float
    last_seen: float
    #: How the session was opened: 'card', 'card+pin', 'pin', 'password' ('' if unknown).
    #: Linking a new card needs a 'password' session.
    method: str = ""


class SessionTable:
    """Panel sessions: opaque random tokens, idle and absolute expiry.

    Kept in memory on purpose: a session is a few minutes at one MFD, and a
    site restart asking the user to swipe again is the safe outcome.
    """

    def __init__(
        self, clock: Callable[[], float] = time.monotonic, idle_timeout: float = 300.0,
        max_age: float = 3600.0,
    ) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.max_age = max_age
        self._sessions: dict[str, Session] = {}

    def open(self, *, user_id: int, username: str, full_name: str, account_id: int,
             device: str, method: str = "") -> Session:
        now = self.clock()
        token = secrets.token_urlsafe(32)
        session = Session(token, user_id, username, full_name, account_id, device, now, now,
                          method)
        self._sessions[token] = session
        self._expire(now)
        return session

    def get(self, token: str, device: str) -> Session | None:
        """The live session for `token` at `device`, refreshed; None if gone or expired."""
        session = self._sessions.get(token)
        if session is None:
            return None
        now = self.clock()
        if self._expired(session, now) or not hmac.compare_digest(session.device, device):
            if self._expired(session, now):
                del self._sessions[token]
            return None
        session.last_seen = now
        return session

    def expires_in(self, session: Session) -> int:
        now = self.clock()
        return int(max(0.0, min(session.last_seen + self.idle_timeout,
                                session.created_at + self.max_age) - now))

    def close(self, token: str) -> None:
        self._sessions.pop(token, None)

    def _expired(self, session: Session, now: float) -> bool:
        return (now - session.last_seen > self.idle_timeout
                or now - session.created_at > self.max_age)

    def _expire(self, now: float) -> None:
        for token in [t for t, s in self._sessions.items() if self._expired(s, now)]:
            del self._sessions[token]

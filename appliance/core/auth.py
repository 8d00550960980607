"""Logging a user in at an MFD: card, card + PIN, username + PIN, username + password.

Cost per attempt is bounded and independent of the user count: a card is one
indexed HMAC lookup, a username one indexed row, then at most one Argon2id
verification (in a worker thread). Unknown users cost a dummy verification so
that timing does not reveal which names exist.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from twisted.internet import threads

from appliance.core.credentials import (
    CardKey,
    Session,
    SessionTable,
    Throttle,
    check_verifier,
    make_verifier,
)
from appliance.core.model import User


class AuthError(Exception):
    """Login refused. `code` is the device API's error code."""

    def __init__(self, code: str, message: str, retry_after: float = 0.0) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after


@dataclass(frozen=True)
class Credentials:
    card: str | None = None
    username: str | None = None
    pin: str | None = None
    password: str | None = None


class AuthService:
    def __init__(
        self,
        *,
        store: Any,
        card_key: CardKey,
        hasher: PasswordHasher,
        sessions: SessionTable,
        throttle: Throttle,
        device_throttle: Throttle | None = None,
        verify_in_thread: Callable[..., Any] = threads.deferToThread,
    ) -> None:
        self.store = store
        self.card_key = card_key
        self.hasher = hasher
        self.sessions = sessions
        self.throttle = throttle
        #: Devices see many users, so a device locks only at a much higher count.
        self.device_throttle = device_throttle or Throttle(max_failures=30, lockout=30.0)
        self._in_thread = verify_in_thread
        self._dummy = make_verifier(hasher, "outpost-timing-equaliser")

    async def login(self, device: str, credentials: Credentials) -> Session:
        user = await self._authenticate(device, credentials)
        if user.disabled:
            raise AuthError("account_disabled", "this account may not log in")
        return self.sessions.open(user_id=user.id, username=user.username,
                                  full_name=user.full_name, account_id=user.account_id,
                                  device=device)

    async def _authenticate(self, device: str, c: Credentials) -> User:
        if c.card:
            lookup = self.card_key.lookup(c.card)
            identity_key = f"card:{lookup}"
            self._check_throttle(device, identity_key)
            found = await self.store.user_by_card(lookup)
            if c.pin is None:
                if found is None:
                    return self._fail(device, identity_key)
                self._succeeded(device, identity_key)
                user: User = found[0]
                return user
            verifier = found[1] if found else None
            ok = await self._verify(verifier, c.pin)
            if found is None or not ok:
                return self._fail(device, identity_key)
            self._succeeded(device, identity_key)
            return found[0]  # type: ignore[no-any-return]
        if c.username and (c.pin is not None or c.password is not None):
            kind = "pin" if c.pin is not None else "password"
            secret = c.pin if c.pin is not None else c.password
            assert secret is not None
            identity_key = f"user:{c.username}"
            self._check_throttle(device, identity_key)
            found = await self.store.user_with_verifier(c.username, kind)
            ok = await self._verify(found[1] if found else None, secret)
            if found is None or not ok:
                return self._fail(device, identity_key)
            self._succeeded(device, identity_key)
            return found[0]  # type: ignore[no-any-return]
        raise AuthError("bad_request",
                        "give card, card and pin, username and pin, or username and password")

    async def _verify(self, verifier: str | None, secret: str) -> bool:
        if verifier is None:
            await self._in_thread(check_verifier, self.hasher, self._dummy, secret + "\x00")
            return False
        ok: bool = await self._in_thread(check_verifier, self.hasher, verifier, secret)
        return ok

    def _check_throttle(self, device: str, identity_key: str) -> None:
        wait = max(self.throttle.retry_after(identity_key),
                   self.device_throttle.retry_after(f"device:{device}"))
        if wait > 0:
            raise AuthError("throttled", "too many failed attempts; try again later", wait)

    def _fail(self, device: str, identity_key: str) -> User:
        self.throttle.failed(identity_key)
        self.device_throttle.failed(f"device:{device}")
        raise AuthError("invalid_credentials", "card, user name, PIN or password not accepted")

    def _succeeded(self, device: str, identity_key: str) -> None:
        self.throttle.succeeded(identity_key)

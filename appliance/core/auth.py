"""Logging a user in at an MFD: card, card + PIN, username + PIN, username + password.

Cost per attempt is bounded and independent of the user count: a card is one
indexed HMAC lookup, a username one indexed row, then at most one Argon2id
verification (in a worker thread). Unknown users cost a dummy verification so
that timing does not reveal which names exist.

With a directory (`core/directory.py`), a username + password is checked by the
directory while it answers, and by the verifier it last confirmed while it does
not; cards are read through the device's `CardRule` before the HMAC.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from argon2 import PasswordHasher
from twisted.internet import threads

from appliance.core.credentials import (
    CardFormatError,
    CardKey,
    CardRule,
    Session,
    SessionTable,
    Throttle,
    check_verifier,
    make_verifier,
)
from appliance.core.directory import (
    UNAVAILABLE_EXPIRED,
    UNAVAILABLE_NO_CACHE,
    Directory,
    DirectoryUnavailable,
    UnusableUsername,
    check_username,
    is_fresh,
)
from appliance.core.model import User

log = logging.getLogger(__name__)


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
        directory: Directory | None = None,
        directory_max_age: float = 7 * 24 * 3600.0,
        credential_store: Any = None,
        card_rules: Mapping[str, CardRule] | None = None,
        clock: Callable[[], float] = time.time,
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
        #: The organisation's directory: decides passwords while it answers.
        self.directory = directory
        #: How long a password the directory confirmed may be used while it does not.
        self.directory_max_age = directory_max_age
        self._credentials = credential_store
        #: Per-device card reader rules (device name -> rule); others read cards raw.
        self.card_rules: Mapping[str, CardRule] = card_rules or {}
        self.clock = clock

    @property
    def credentials(self) -> Any:
        """The store for directory password caches and linked cards."""
        if self._credentials is None:
            from appliance.storage.credential_store import CredentialStore

            return CredentialStore(self.store.database)
        return self._credentials

    async def login(self, device: str, credentials: Credentials) -> Session:
        user = await self._authenticate(device, credentials)
        if user.disabled:
            raise AuthError("account_disabled", "this account may not log in")
        c = credentials
        method = ("card+pin" if c.card and c.pin is not None else "card" if c.card
                  else "pin" if c.pin is not None else "password")
        return self.sessions.open(user_id=user.id, username=user.username,
                                  full_name=user.full_name, account_id=user.account_id,
                                  device=device, method=method)

    async def check_password(self, origin: str, username: str, password: str) -> User:
        """Username + password as every entry point checks them (panel, IPP Basic): the
        directory or its cache, throttled per identity and per `origin`."""
        user = await self._password(origin, username, password)
        if user.disabled:
            raise AuthError("account_disabled", "this account may not log in")
        return user

    async def link_card(self, session: Session, card: str) -> str:
        """Link a card to the session's user: 'linked' or 'already'. Needs a session opened
        with username and password (a found card must not be able to link another)."""
        if session.method != "password":
            raise AuthError("password_session_required",
                            "log in with your user name and password to link a card")
        try:
            lookup = self.card_key.lookup(card, self.card_rules.get(session.device))
        except CardFormatError:
            raise AuthError("bad_request", "the reader sent something that is not a card "
                            "number in this device's format") from None
        result: str = await self.credentials.link_card(session.user_id, lookup)
        if result == "taken":
            raise AuthError("card_in_use", "this card belongs to another user")
        return result

    def _card_lookup(self, device: str, card: str) -> str:
        try:
            return self.card_key.lookup(card, self.card_rules.get(device))
        except CardFormatError:
            self.device_throttle.failed(f"device:{device}")
            raise AuthError("invalid_credentials",
                            "card, user name, PIN or password not accepted") from None

    async def _authenticate(self, device: str, c: Credentials) -> User:
        if c.card:
            lookup = self._card_lookup(device, c.card)
            identity_key = f"card:{lookup}"
            self._check_throttle(device, identity_key)
            found = await self.store.user_by_card(lookup)
            # An unknown card is refused also offline under `unknown_users = "account"`:
            # it names nobody (docs/offline-allowance.md, "Refusals").
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
        if c.username and c.password is not None and c.pin is None:
            return await self._password(device, c.username, c.password)
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

    async def _password(self, device: str, username: str, password: str) -> User:
        try:
            name = check_username(username)
        except UnusableUsername as exc:
            raise AuthError("bad_request", f"that user name cannot be used ({exc})") from None
        identity_key = f"user:{name}"
        self._check_throttle(device, identity_key)
        if self.directory is None:
            found = await self.store.user_with_verifier(name, "password")
            ok = await self._verify(found[1] if found else None, password)
            if found is None or not ok:
                return self._fail(device, identity_key)
            self._succeeded(device, identity_key)
            return found[0]  # type: ignore[no-any-return]
        try:
            answer = await self.directory.check(name, password)
        except DirectoryUnavailable as exc:
            log.warning("directory unavailable for a password login at %s: %s; the site's "
                        "saved passwords decide", device, exc)
            return await self._offline_password(device, identity_key, name, password)
        if not answer.accepted:
            return self._fail(device, identity_key)
        user: User | None = await self.store.user_by_name(answer.username or name)
        if user is None:
            raise AuthError("unknown_user", "The directory accepted your password, but this "
                            "site does not know your account yet: try again after the next sync.")
        verifier = await self._in_thread(make_verifier, self.hasher, password)
        await self.credentials.remember_password(user.id, verifier, self.clock())
        self._succeeded(device, identity_key)
        return user

    async def _offline_password(self, device: str, identity_key: str, name: str,
                                password: str) -> User:
        cached = await self.credentials.cached_password(name)
        if cached is None or cached.verifier is None or cached.verified_at is None:
            await self._verify(None, password)  # the same time as a real check
            raise AuthError("directory_unavailable", UNAVAILABLE_NO_CACHE)
        if not await self._verify(cached.verifier, password):
            return self._fail(device, identity_key)
        if not is_fresh(cached.verified_at, self.clock(), self.directory_max_age):
            raise AuthError("directory_unavailable", UNAVAILABLE_EXPIRED)
        self._succeeded(device, identity_key)
        user: User = cached.user
        return user

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

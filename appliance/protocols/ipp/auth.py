"""Who is printing: each queue trusts `requesting-user-name` or asks for HTTP Basic.

A queue in `basic` mode answers every operation but Get-Printer-Attributes
without valid credentials with HTTP 401, `WWW-Authenticate: Basic
realm="outpost"` and the IPP status client-error-not-authenticated (RFC 8011
4.1.6.2, RFC 7617). With credentials, the password is checked exactly as at a
panel (`AuthService.check_password`: the directory, or its cached verifier
while it is away; throttled per user and per client address), and the request
acts as the authenticated user: a job's owner is never what the client claims
in requesting-user-name.
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Callable
from typing import Any

from twisted.web.http import Request

from appliance.core.auth import AuthError, AuthService

from .constants import Operation, Status

log = logging.getLogger(__name__)

REALM = "outpost"
CHALLENGE = f'Basic realm="{REALM}", charset="UTF-8"'.encode()
#: Set on the request when the answer must be HTTP 401 with this challenge.
CHALLENGE_ATTRIBUTE = "outpost_challenge"

#: Operations a client may use without credentials on a `basic` queue.
ANONYMOUS_OPERATIONS = frozenset({Operation.GET_PRINTER_ATTRIBUTES})


class NotAuthenticated(Exception):
    def __init__(self, message: str, status: int = Status.CLIENT_ERROR_NOT_AUTHENTICATED) -> None:
        super().__init__(message)
        self.status = status


def basic_credentials(header: bytes | str | None) -> tuple[str, str] | None:
    """(user, password) from an `Authorization: Basic ...` header, or None."""
    if header is None:
        return None
    if isinstance(header, str):
        header = header.encode("latin-1", "replace")
    scheme, _, encoded = header.strip().partition(b" ")
    if scheme.lower() != b"basic" or not encoded.strip() or len(encoded) > 4096:
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError, UnicodeDecodeError):
        return None
    user, colon, password = decoded.partition(":")
    if not colon or not user:
        return None
    return user, password


class QueueAuthenticator:
    """Decides per queue whether a request needs Basic credentials, and checks them."""

    def __init__(self, auth: AuthService, mode_for: Callable[[str], str]) -> None:
        self.auth = auth
        self.mode_for = mode_for

    def required(self, queue: str, operation: int) -> bool:
        return self.mode_for(queue) == "basic" and operation not in ANONYMOUS_OPERATIONS

    async def authenticate(self, request: Request, queue: str) -> str:
        """The authenticated username, or NotAuthenticated (the request is marked for a 401)."""
        credentials = basic_credentials(request.getHeader(b"authorization"))
        if credentials is None:
            setattr(request, CHALLENGE_ATTRIBUTE, CHALLENGE)
            raise NotAuthenticated(f"queue {queue} needs your user name and password "
                                   "(HTTP Basic)")
        username, password = credentials
        peer: Any = request.getClientAddress()
        origin = f"ipp:{getattr(peer, 'host', 'unknown')}"
        try:
            user = await self.auth.check_password(origin, username, password)
        except AuthError as exc:
            if exc.code == "account_disabled":
                raise NotAuthenticated(str(exc), Status.CLIENT_ERROR_NOT_AUTHORIZED) from None
            setattr(request, CHALLENGE_ATTRIBUTE, CHALLENGE)
            if exc.code in ("throttled", "directory_unavailable"):
                raise NotAuthenticated(str(exc)) from None
            raise NotAuthenticated("user name or password not accepted") from None
        return user.username

"""Password logins against the organisation's directory, with a cache for when it is away.

Online, the directory decides (an LDAP bind as the user, `protocols/ldap/client.py`);
after it accepted a password the site keeps an Argon2id verifier of it and when it
was confirmed (`identities.verified_at`). While the directory cannot be reached, a
verifier younger than `max_age` decides; an older or absent one is refused with a
reason the panel shows (`directory_unavailable`). A directory that *answers* "no"
is final: the cache is never consulted then.

Usernames are checked here before anything goes on the wire: 1..256 characters,
no control characters (NUL included). Filter metacharacters are legal in names
(`o'brien`, `Smith, John`, even `*`) and are escaped by the client, never refused.
"""

from __future__ import annotations

import logging
import unicodedata
from dataclasses import dataclass
from typing import Protocol

log = logging.getLogger(__name__)

MAX_USERNAME = 256


class UnusableUsername(ValueError):
    pass


def check_username(username: str) -> str:
    """The username to look up, or UnusableUsername (control characters, too long, blank)."""
    if not isinstance(username, str) or not username.strip():
        raise UnusableUsername("empty username")
    if len(username) > MAX_USERNAME:
        raise UnusableUsername("username too long")
    if any(unicodedata.category(ch) in ("Cc", "Cs") for ch in username):
        raise UnusableUsername("control characters in username")
    return username.strip()


class DirectoryUnavailable(Exception):
    """The directory could not give an answer (refused, timed out, TLS not trusted, garbage,
    busy): the only case in which the cached verifier may decide."""


@dataclass(frozen=True)
class DirectoryAnswer:
    accepted: bool
    #: The entry's username attribute (canonical spelling), when accepted.
    username: str | None = None
    dn: str | None = None
    reason: str = ""


class Directory(Protocol):
    """What `protocols.ldap.client.LdapDirectory` offers (a fake in unit tests)."""

    async def check(self, username: str, password: str) -> DirectoryAnswer: ...


def is_fresh(verified_at: float | None, now: float, max_age: float) -> bool:
    return verified_at is not None and 0 <= now - verified_at <= max_age


UNAVAILABLE_NO_CACHE = ("The directory cannot be reached and this site has no saved password "
                        "for you: log in with your card or PIN, or try again later.")
UNAVAILABLE_EXPIRED = ("The directory cannot be reached and the password this site saved "
                       "for you is too old: log in with your card or PIN, or try again later.")

"""The directory on the wire: search-then-bind with ldap3, in a bounded thread pool of its own.

ldap3 is blocking, so every exchange runs in `LdapDirectory`'s own `ThreadPool`
(never the reactor thread, never the database thread, never the shared default
pool that Argon2id uses). Three limits keep a bad directory from hurting the
site: ldap3's connect and receive timeouts, an overall deadline per check on the
reactor side, and a cap on checks in flight (a full pool answers "unavailable"
at once instead of queueing logins behind a directory that does not answer).

A check is: bind as the service account, search `base_dn` for `user_filter` with
the username escaped (RFC 4515, ldap3's `escape_filter_chars`), then bind as the
one entry found, with the user's password. The user's DN is taken from the
server's answer as it is (DN metacharacters such as `cn=Smith\\, John` stay
escaped as the server sent them); no DN is ever built from what the user typed.

Outcomes: `accepted`, `rejected` (wrong password, no such entry, more than one),
or `DirectoryUnavailable` (refused, timed out, TLS not trusted, garbage, busy):
the caller falls back to the site's cached verifier only in the last case.
Neither the password nor the service account's password is ever logged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import ssl
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from twisted.internet import defer, threads
from twisted.python.threadpool import ThreadPool

from appliance.core.directory import DirectoryAnswer, DirectoryUnavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LdapSettings:
    url: str
    base_dn: str
    user_filter: str = "(uid={username})"
    username_attribute: str = "uid"
    bind_dn: str = ""
    bind_password: str = field(default="", repr=False)
    ca_file: str | None = None
    starttls: bool = False
    timeout: float = 5.0
    pool_size: int = 4

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError("directory url must be ldap://host[:port] or ldaps://host[:port]")
        if "{username}" not in self.user_filter:
            raise ValueError("user_filter must contain {username}")
        if parts.scheme == "ldaps" and self.starttls:
            raise ValueError("starttls is for ldap:// URLs; ldaps:// is TLS already")


def _entries(response: Any) -> list[dict[str, Any]]:
    if not isinstance(response, list):
        raise DirectoryUnavailable("the directory's search answer is not a list")
    return [e for e in response if isinstance(e, dict) and e.get("type") == "searchResEntry"]


class LdapDirectory:
    """Checks usernames and passwords against one LDAP server."""

    def __init__(self, settings: LdapSettings, reactor: Any) -> None:
        self.settings = settings
        self.reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=settings.pool_size, name="outpost-ldap")
        self._slots = threading.BoundedSemaphore(settings.pool_size)
        self._started = False

    def start(self) -> None:
        if not self._started:
            self._pool.start()
            self._started = True
            self.reactor.addSystemEventTrigger("during", "shutdown", self.stop)

    def stop(self) -> None:
        if self._started:
            self._started = False
            self._pool.stop()

    @property
    def deadline(self) -> float:
        """Longest a check may take: connect, TLS, two binds and a search, then give up."""
        return self.settings.timeout * 3 + 1.0

    async def check(self, username: str, password: str) -> DirectoryAnswer:
        """Does the directory accept this username and password? Off the reactor thread."""
        if not password:
            # An empty password is an unauthenticated bind (RFC 4513 5.1.2): it "succeeds".
            return DirectoryAnswer(False, reason="empty password")
        self.start()
        if not self._slots.acquire(blocking=False):
            raise DirectoryUnavailable("the directory is not answering (every connection busy)")

        def run() -> DirectoryAnswer:
            try:
                return self.check_blocking(username, password)
            finally:
                self._slots.release()

        d = threads.deferToThreadPool(self.reactor, self._pool, run)
        d.addTimeout(self.deadline, self.reactor)
        try:
            answer: DirectoryAnswer = await d
        except defer.TimeoutError:
            raise DirectoryUnavailable(
                f"the directory did not answer within {self.deadline:.0f}s") from None
        return answer

    # ------------------------------------------------------------ blocking part (pool threads)

    def _server(self) -> Any:
        import ldap3

        parts = urlsplit(self.settings.url)
        secure = parts.scheme == "ldaps"
        tls = None
        if secure or self.settings.starttls:
            tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=self.settings.ca_file,
                            version=ssl.PROTOCOL_TLS_CLIENT)
        return ldap3.Server(parts.hostname, port=parts.port or (636 if secure else 389),
                            use_ssl=secure, tls=tls, get_info=ldap3.NONE,
                            connect_timeout=self.settings.timeout)

    def _connection(self, server: Any, user: str | None, password: str | None) -> Any:
        import ldap3

        conn = ldap3.Connection(server, user=user, password=password, auto_bind=ldap3.AUTO_BIND_NONE,
                                raise_exceptions=False, read_only=True, auto_referrals=False,
                                # ldap3 packs it into SO_RCVTIMEO as whole seconds
                                receive_timeout=max(1, math.ceil(self.settings.timeout)))
        conn.open()
        if self.settings.starttls and not conn.start_tls():
            raise DirectoryUnavailable("StartTLS failed")
        return conn

    def check_blocking(self, username: str, password: str) -> DirectoryAnswer:
        """The whole exchange; raises DirectoryUnavailable for anything but an answer."""
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars

        settings = self.settings
        service = user_conn = None
        try:
            server = self._server()
            service = self._connection(server, settings.bind_dn or None,
                                       settings.bind_password or None)
            if not service.bind():
                raise DirectoryUnavailable(
                    f"the directory refused the service account ({service.result.get('description')})")
            search_filter = settings.user_filter.replace("{username}",
                                                         escape_filter_chars(username))
            import ldap3

            service.search(settings.base_dn, search_filter, search_scope=ldap3.SUBTREE,
                           attributes=[settings.username_attribute], size_limit=2,
                           time_limit=max(1, int(settings.timeout)))
            result = service.result or {}
            code = result.get("result")
            if code not in (0, 4, 32):  # success, sizeLimitExceeded (we asked for 2), noSuchObject
                raise DirectoryUnavailable(f"search failed ({result.get('description')})")
            entries = _entries(service.response)
            if not entries:
                return DirectoryAnswer(False, reason="no such user in the directory")
            if len(entries) > 1 or code == 4:
                log.warning("directory: the user filter matches several entries; refusing")
                return DirectoryAnswer(False, reason="ambiguous user")
            entry = entries[0]
            dn = entry.get("dn")
            if not isinstance(dn, str) or not dn:
                raise DirectoryUnavailable("the directory's entry has no DN")
            values = (entry.get("attributes") or {}).get(settings.username_attribute)
            if isinstance(values, list):
                values = values[0] if values else None
            canonical = values if isinstance(values, str) and values else username
            user_conn = self._connection(server, dn, password)
            if user_conn.bind():
                return DirectoryAnswer(True, username=canonical, dn=dn)
            code = (user_conn.result or {}).get("result")
            if code in (49, 48, 50, 53):  # invalidCredentials, inappropriateAuth, ..., unwilling
                return DirectoryAnswer(False, reason="password not accepted")
            raise DirectoryUnavailable(
                f"the directory failed the bind ({(user_conn.result or {}).get('description')})")
        except DirectoryUnavailable:
            raise
        except LDAPException as exc:
            raise DirectoryUnavailable(f"{type(exc).__name__}: {_short(exc)}") from None
        except (OSError, ssl.SSLError) as exc:
            raise DirectoryUnavailable(f"{type(exc).__name__}: {_short(exc)}") from None
        except Exception as exc:  # a garbage answer can trip the decoder anywhere
            raise DirectoryUnavailable(f"unreadable answer ({type(exc).__name__})") from None
        finally:
            for conn in (user_conn, service):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.unbind()


def _short(exc: BaseException) -> str:
    """An exception's text for a log line: one line, bounded (certificates are long)."""
    text = " ".join(str(exc).split())
    if "doesn't match" in text:
        return "the directory's TLS certificate does not match its name"
    if "CERTIFICATE_VERIFY_FAILED" in text:
        return "the directory's TLS certificate is not trusted (ca_file)"
    return text[:200]

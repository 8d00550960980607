"""Directory sync, the wire: paged searches for users and groups (ldap3, blocking).

Every search is paged (RFC 2696, `page_size` entries a page), so a directory with
a `sizelimit` below its user count is read whole; an unpaged search would stop
at the limit with sizeLimitExceeded. Entries become `core.directory_sync`
records through an attribute mapping (`SyncMapping`); stable ids are read as the
operational attribute `entryUUID` (OpenLDAP and most others) or `objectGUID`
(Active Directory, 16 bytes, shown as a UUID). Run it in a thread
(`DirectoryReader.snapshot` does, in a pool of its own).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from typing import Any

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

from appliance.core.directory import DirectoryUnavailable
from appliance.core.directory_sync import (
    DirectoryGroup,
    DirectoryUser,
    ad_disabled,
    resolve_groups,
)

from .client import LdapDirectory, LdapSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyncMapping:
    """Which directory attributes fill which user fields (OpenLDAP defaults; AD below)."""

    user_filter: str = "(objectClass=inetOrgPerson)"
    group_filter: str = "(|(objectClass=groupOfNames)(objectClass=groupOfUniqueNames))"
    group_base_dn: str | None = None           # default: the directory's base_dn
    username: str = "uid"
    full_name: str = "cn"
    email: str = "mail"
    card: str | None = "employeeNumber"
    stable_id: str = "entryUUID"
    #: An attribute saying the account is disabled: `userAccountControl` (AD, bit 2),
    #: or any attribute whose value is one of `disabled_values`.
    disabled: str | None = None
    disabled_values: tuple[str, ...] = ("true", "disabled", "1", "yes")
    group_name: str = "cn"
    member: tuple[str, ...] = ("member", "uniqueMember")


ACTIVE_DIRECTORY = SyncMapping(
    user_filter="(&(objectCategory=person)(objectClass=user))",
    group_filter="(objectClass=group)", username="sAMAccountName", full_name="displayName",
    email="mail", card="employeeID", stable_id="objectGUID", disabled="userAccountControl",
    group_name="cn", member=("member",))


def _first(attributes: dict[str, Any], name: str | None) -> Any:
    if not name:
        return None
    for key, value in attributes.items():
        if key.lower() == name.lower():
            if isinstance(value, list):
                return value[0] if value else None
            return value
    return None


def _all(attributes: dict[str, Any], name: str) -> list[Any]:
    for key, value in attributes.items():
        if key.lower() == name.lower():
            return list(value) if isinstance(value, list) else [value]
    return []


def _stable_id(value: Any) -> str | None:
    if isinstance(value, bytes):
        if len(value) == 16:   # AD objectGUID: little-endian fields
            return str(uuid.UUID(bytes_le=value))
        return value.hex()
    if isinstance(value, str) and value:
        return value.strip("{}").lower()
    return None


class DirectoryReader:
    """Reads every user and group in scope, page by page."""

    def __init__(self, settings: LdapSettings, mapping: SyncMapping | None = None,
                 page_size: int = 200, reactor: Any = None) -> None:
        self.settings = settings
        self.mapping = mapping or SyncMapping()
        self.page_size = page_size
        self.reactor = reactor
        self._connector = LdapDirectory(settings, reactor)
        self._pool = ThreadPool(minthreads=0, maxthreads=1, name="outpost-ldap-sync")

    def _bound(self) -> Any:
        conn = self._connector._connection(self._connector._server(),
                                           self.settings.bind_dn or None,
                                           self.settings.bind_password or None)
        if not conn.bind():
            raise DirectoryUnavailable(
                f"the directory refused the sync account ({conn.result.get('description')})")
        return conn

    def _paged(self, conn: Any, base: str, search_filter: str,
               attributes: list[str]) -> list[dict[str, Any]]:
        import ldap3

        entries = conn.extend.standard.paged_search(
            base, search_filter, search_scope=ldap3.SUBTREE, attributes=attributes,
            paged_size=self.page_size, generator=False)
        result = conn.result or {}
        if result.get("result") not in (0, None):
            raise DirectoryUnavailable(f"paged search failed ({result.get('description')})")
        return [e for e in entries if e.get("type") == "searchResEntry"]

    def read_users(self, since: str | None = None) -> list[DirectoryUser]:
        """Users in scope; with `since` (GeneralizedTime, e.g. 20261126110000Z) only those
        modified since then (an incremental run: deletions come from `user_ids`)."""
        m = self.mapping
        wanted = [a for a in (m.username, m.full_name, m.email, m.card, m.stable_id, m.disabled)
                  if a]
        search_filter = m.user_filter
        if since is not None:
            from ldap3.utils.conv import escape_filter_chars

            search_filter = f"(&{m.user_filter}(modifyTimestamp>={escape_filter_chars(since)}))"
        conn = self._bound()
        try:
            entries = self._paged(conn, self.settings.base_dn, search_filter, wanted)
        finally:
            conn.unbind()
        users = []
        for entry in entries:
            user = self._user(entry)
            if user is not None:
                users.append(user)
        return users

    def _user(self, entry: dict[str, Any]) -> DirectoryUser | None:
        m = self.mapping
        attributes = entry.get("attributes") or {}
        raw = entry.get("raw_attributes") or {}
        stable = _stable_id(_first(raw, m.stable_id) if m.stable_id == "objectGUID"
                            else _first(attributes, m.stable_id))
        username = _first(attributes, m.username)
        if stable is None or not isinstance(username, str) or not username:
            log.warning("directory sync: %s has no %s or %s; skipped", entry.get("dn"),
                        m.stable_id, m.username)
            return None
        disabled = False
        if m.disabled:
            value = _first(attributes, m.disabled)
            if m.disabled.lower() == "useraccountcontrol":
                disabled = ad_disabled(value)
            elif value is not None:
                disabled = str(value).strip().lower() in m.disabled_values
        card = _first(attributes, m.card)
        return DirectoryUser(
            stable_id=stable, dn=str(entry.get("dn")), username=username,
            full_name=str(_first(attributes, m.full_name) or ""),
            email=str(_first(attributes, m.email) or ""),
            card=str(card) if card not in (None, "") else None, disabled=disabled)

    def user_ids(self) -> list[str]:
        """Every user's stable id (cheap: one attribute), for deletions in incremental runs."""
        conn = self._bound()
        try:
            entries = self._paged(conn, self.settings.base_dn, self.mapping.user_filter,
                                  [self.mapping.stable_id])
        finally:
            conn.unbind()
        m = self.mapping
        ids = [_stable_id(_first(e.get("raw_attributes") or {}, m.stable_id)
                          if m.stable_id == "objectGUID"
                          else _first(e.get("attributes") or {}, m.stable_id)) for e in entries]
        return [i for i in ids if i is not None]

    def read_groups(self) -> list[DirectoryGroup]:
        m = self.mapping
        conn = self._bound()
        try:
            entries = self._paged(conn, m.group_base_dn or self.settings.base_dn,
                                  m.group_filter, [m.group_name, m.stable_id, *m.member])
        finally:
            conn.unbind()
        groups = []
        for entry in entries:
            attributes = entry.get("attributes") or {}
            name = _first(attributes, m.group_name)
            stable = _stable_id(_first(attributes, m.stable_id)) or str(entry.get("dn"))
            members = frozenset(str(v) for attr in m.member for v in _all(attributes, attr))
            if isinstance(name, str) and name:
                groups.append(DirectoryGroup(stable, str(entry.get("dn")), name, members))
        return groups

    def snapshot_blocking(self) -> list[DirectoryUser]:
        """Every user in scope with her resolved (nested) groups."""
        return resolve_groups(self.read_users(), self.read_groups())

    async def snapshot(self) -> list[DirectoryUser]:
        """`snapshot_blocking` in this reader's own thread (never the reactor's)."""
        if not self._pool.started:
            self._pool.start()
        try:
            users: list[DirectoryUser] = await threads.deferToThreadPool(
                self.reactor, self._pool, self.snapshot_blocking)
            return users
        finally:
            self._pool.stop()

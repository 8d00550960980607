"""Directory sync, the logic: from what the directory holds to what the primary must change.

Pure functions over plain records (no LDAP, no SQL): the reader
(`protocols/ldap/sync.py`) turns entries into `DirectoryUser`s and
`DirectoryGroup`s; `resolve_groups` flattens nested groups in code (directories
differ in whether they can, and cycles happen); `plan` compares a run with the
previous one by **stable id** (`entryUUID`, or `objectGUID` on Active Directory),
so that a renamed person keeps her account, her ledger and her balance: a rename
is an update of the username, never a delete and a create.

Applying a plan to the primary's tables, and carrying it to sites, belongs to the
primary and its sync stream (issue 5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

#: Active Directory's userAccountControl bit for a disabled account (ACCOUNTDISABLE).
AD_ACCOUNT_DISABLE = 0x2


@dataclass(frozen=True)
class DirectoryUser:
    stable_id: str
    dn: str
    username: str
    full_name: str = ""
    email: str = ""
    card: str | None = None
    disabled: bool = False
    groups: frozenset[str] = field(default_factory=frozenset)   # resolved group names


@dataclass(frozen=True)
class DirectoryGroup:
    stable_id: str
    dn: str
    name: str
    members: frozenset[str] = field(default_factory=frozenset)  # member DNs (users or groups)


def ad_disabled(user_account_control: object) -> bool:
    """Is the AD account disabled? Unreadable values count as enabled (and are logged by
    the reader): a sync must not lock everyone out over one odd attribute."""
    try:
        return bool(int(str(user_account_control)) & AD_ACCOUNT_DISABLE)
    except ValueError:
        return False


def normalise_dn(dn: str) -> str:
    """A DN for comparing member values: RDNs trimmed, case folded (attribute values in
    naming attributes are case-insensitive in the schemas we meet)."""
    return ",".join(part.strip() for part in dn.split(",")).casefold()


def resolve_groups(users: Iterable[DirectoryUser],
                   groups: Iterable[DirectoryGroup]) -> list[DirectoryUser]:
    """Each user with the names of every group she is in, directly or through groups in
    groups (any depth; cycles are harmless)."""
    users = list(users)
    groups = list(groups)
    group_by_dn = {normalise_dn(g.dn): g for g in groups}
    user_dns = {normalise_dn(u.dn) for u in users}
    memo: dict[str, frozenset[str]] = {}

    def members(group: DirectoryGroup, visiting: frozenset[str]) -> frozenset[str]:
        key = normalise_dn(group.dn)
        if key in memo:
            return memo[key]
        found: set[str] = set()
        for member in group.members:
            m = normalise_dn(member)
            if m in user_dns:
                found.add(m)
            elif m in group_by_dn and m not in visiting:
                found |= members(group_by_dn[m], visiting | {key})
        result = frozenset(found)
        if not visiting:      # only a top-level answer is complete under cycles
            memo[key] = result
        return result

    names_of: dict[str, set[str]] = {}
    for group in groups:
        for user_dn in members(group, frozenset()):
            names_of.setdefault(user_dn, set()).add(group.name)
    return [replace(u, groups=frozenset(names_of.get(normalise_dn(u.dn), ()))) for u in users]


@dataclass
class SyncPlan:
    created: list[DirectoryUser] = field(default_factory=list)
    updated: list[DirectoryUser] = field(default_factory=list)      # any field but the name
    renamed: list[tuple[str, DirectoryUser]] = field(default_factory=list)  # (old username, user)
    deleted: list[DirectoryUser] = field(default_factory=list)      # gone from the directory
    conflicts: list[str] = field(default_factory=list)              # refused, with the reason

    @property
    def empty(self) -> bool:
        return not (self.created or self.updated or self.renamed or self.deleted)


def plan(previous: Mapping[str, DirectoryUser], current: Iterable[DirectoryUser],
         *, complete: bool = True) -> SyncPlan:
    """What changed since `previous` (by stable id).

    `complete`: `current` is every user in scope (a full run), so a missing id was
    deleted. An incremental run (changed entries only) passes False and learns of
    deletions from a full listing of ids instead (`deleted_ids`).
    """
    result = SyncPlan()
    seen: set[str] = set()
    usernames: dict[str, str] = {}
    for user in current:
        if user.stable_id in seen:
            result.conflicts.append(f"{user.dn}: stable id {user.stable_id} seen twice")
            continue
        seen.add(user.stable_id)
        other = usernames.get(user.username.casefold())
        if other is not None:
            result.conflicts.append(f"{user.dn}: username {user.username!r} is also {other}'s")
            continue
        usernames[user.username.casefold()] = user.stable_id
        before = previous.get(user.stable_id)
        if before is None:
            result.created.append(user)
        elif before.username != user.username:
            result.renamed.append((before.username, user))
        elif before != user:
            result.updated.append(user)
    if complete:
        result.deleted = [u for sid, u in previous.items() if sid not in seen]
    return result


def deleted_ids(previous: Mapping[str, DirectoryUser], present: Iterable[str]) -> list[DirectoryUser]:
    """Users of `previous` whose stable id is no longer in the directory's full id listing."""
    still = set(present)
    return [u for sid, u in previous.items() if sid not in still]

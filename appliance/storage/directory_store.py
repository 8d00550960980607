"""SQL of the directory sync at the primary: applying a `core.directory_sync.SyncPlan`.

Everything goes through the ordinary tables (users, accounts, identities), so the
change-log triggers of migration 0003 carry every change to the sites; nothing here
knows the sync wire. A user is matched by `users.directory_id` (the entry's stable
id): a rename updates her username in place and keeps her account, so her ledger
and balance stay hers. Card numbers are stored only as HMACs (`card_lookup`).

Sites key users by username, so a rename also (a) re-announces the user's
identities under the new name (a site then moves the card to the new row) and
(b) announces the old name as disabled, so that no site keeps a live account
under a name the directory no longer has. A deleted entry's user is disabled,
never deleted: the ledger refers to her account.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import sqlite_utils

from appliance.core.directory_sync import DirectoryUser, SyncPlan

from .store import _one, _q, add_user_sync

log = logging.getLogger(__name__)


def previous_entries_sync(db: sqlite_utils.Database) -> dict[str, DirectoryUser]:
    out = {}
    for row in _q(db, "SELECT stable_id, body FROM directory_entries"):
        body = json.loads(row["body"])
        body["groups"] = frozenset(body.get("groups", ()))
        out[row["stable_id"]] = DirectoryUser(**body)
    return out


def hashed(user: DirectoryUser, card_lookup: Callable[[str], str]) -> DirectoryUser:
    """The record as stored and compared: the card number replaced by its HMAC."""
    return replace(user, card=card_lookup(user.card) if user.card else None)


def _remember(db: sqlite_utils.Database, user: DirectoryUser) -> None:
    body = asdict(user)
    body["groups"] = sorted(user.groups)
    db.conn.execute(
        "INSERT INTO directory_entries (stable_id, body, seen_at) VALUES (?, ?, ?) "
        "ON CONFLICT(stable_id) DO UPDATE SET body = excluded.body, seen_at = excluded.seen_at",
        (user.stable_id, json.dumps(body, sort_keys=True), time.time()))


def _set_card(db: sqlite_utils.Database, user_id: int, old: str | None, new: str | None,
              conflicts: list[str], who: str) -> None:
    if old == new:
        return
    if old:
        db.conn.execute("DELETE FROM identities WHERE user_id = ? AND kind = 'card' AND lookup = ?",
                        (user_id, old))
    if new:
        holder = _one(db, "SELECT user_id FROM identities WHERE kind = 'card' AND lookup = ?",
                      (new,))
        if holder is None:
            db.conn.execute("INSERT INTO identities (user_id, kind, lookup, verifier, created_at) "
                            "VALUES (?, 'card', ?, NULL, ?)", (user_id, new, time.time()))
        elif holder["user_id"] != user_id:
            conflicts.append(f"{who}: the directory's card is another user's; not linked")


def _set_groups(db: sqlite_utils.Database, user_id: int, groups: frozenset[str]) -> None:
    db.conn.execute("DELETE FROM directory_groups WHERE user_id = ?", (user_id,))
    db.conn.executemany("INSERT INTO directory_groups (user_id, name) VALUES (?, ?)",
                        [(user_id, g) for g in sorted(groups)])


def _announce_gone(db: sqlite_utils.Database, username: str, account_id: int) -> None:
    """A 'user' change for a name no row has any more: sites disable their row of that name."""
    account = _one(db, "SELECT name FROM accounts WHERE id = ?", (account_id,))
    db.conn.execute(
        "INSERT INTO changes (kind, key, body) VALUES ('user', ?, json_object('username', ?, "
        "'full_name', '', 'email', '', 'account', ?, 'disabled', 1))",
        (username, username, account["name"] if account else f"user:{username}"))


def _reannounce_identities(db: sqlite_utils.Database, user_id: int) -> None:
    """Delete and re-insert the user's identities, so the triggers send them under her
    current username (sites move cards and verifiers to the renamed row)."""
    rows = [dict(r) for r in _q(db, "SELECT * FROM identities WHERE user_id = ?", (user_id,))]
    for row in rows:
        db.conn.execute("DELETE FROM identities WHERE id = ?", (row["id"],))
        columns = [c for c in row if c != "id"]
        db.conn.execute(f"INSERT INTO identities ({', '.join(columns)}) VALUES "
                        f"({', '.join('?' * len(columns))})", [row[c] for c in columns])


def apply_plan_sync(db: sqlite_utils.Database, result: SyncPlan) -> dict[str, int]:
    """Apply a plan whose records already carry card HMACs (see `hashed`). Conflicts are
    appended to `result.conflicts`; returns counts of what was done."""
    previous = previous_entries_sync(db)
    counts = {"created": 0, "adopted": 0, "updated": 0, "renamed": 0, "disabled": 0}
    for user in result.created:
        row = _one(db, "SELECT id, directory_id FROM users WHERE username = ?", (user.username,))
        if row is not None and row["directory_id"] not in (None, user.stable_id):
            result.conflicts.append(f"{user.dn}: username {user.username!r} belongs to another "
                                    "directory entry")
            continue
        if row is None:
            made = add_user_sync(db, user.username, user.full_name, user.email, [], 0)
            user_id = made.id
            counts["created"] += 1
        else:   # a user imported by hand before the directory knew her: adopt
            user_id = row["id"]
            counts["adopted"] += 1
        db.conn.execute("UPDATE users SET directory_id = ?, full_name = ?, email = ?, "
                        "disabled = ? WHERE id = ?", (user.stable_id, user.full_name,
                                                      user.email, int(user.disabled), user_id))
        _set_card(db, user_id, None, user.card, result.conflicts, user.dn)
        _set_groups(db, user_id, user.groups)
        _remember(db, user)
    changed = [(None, u) for u in result.updated] + list(result.renamed)
    for old_name, user in changed:
        row = _one(db, "SELECT id, username, account_id FROM users WHERE directory_id = ?",
                   (user.stable_id,))
        if row is None:
            result.conflicts.append(f"{user.dn}: known entry without its user; skipped")
            continue
        if old_name is not None:
            taken = _one(db, "SELECT id FROM users WHERE username = ? AND id != ?",
                         (user.username, row["id"]))
            if taken is not None:
                result.conflicts.append(f"{user.dn}: cannot rename to {user.username!r}, "
                                        "which another user has")
                continue
        db.conn.execute("UPDATE users SET username = ?, full_name = ?, email = ?, disabled = ? "
                        "WHERE id = ?", (user.username, user.full_name, user.email,
                                         int(user.disabled), row["id"]))
        before = previous.get(user.stable_id)
        _set_card(db, row["id"], before.card if before else None, user.card, result.conflicts,
                  user.dn)
        _set_groups(db, row["id"], user.groups)
        if old_name is not None:
            _reannounce_identities(db, row["id"])
            _announce_gone(db, old_name, row["account_id"])
            counts["renamed"] += 1
        else:
            counts["updated"] += 1
        _remember(db, user)
    for user in result.deleted:
        db.conn.execute("UPDATE users SET disabled = 1 WHERE directory_id = ?", (user.stable_id,))
        db.conn.execute("DELETE FROM directory_entries WHERE stable_id = ?", (user.stable_id,))
        counts["disabled"] += 1
    for conflict in result.conflicts:
        log.warning("directory sync: %s", conflict)
    return counts


def directory_groups_sync(db: sqlite_utils.Database, username: str) -> set[str]:
    return {r["name"] for r in _q(
        db, "SELECT g.name FROM directory_groups g JOIN users u ON u.id = g.user_id "
            "WHERE u.username = ?", (username,))}


def state_rows(db: sqlite_utils.Database) -> dict[str, Any]:
    row = _one(db, "SELECT COUNT(*) AS n FROM directory_entries")
    return {"entries": row["n"] if row else 0}

"""SQL of the pushed event kinds beyond ledger rows, at the primary (migration 0007).

`apply_record_sync` runs inside `sync_store.apply_batch_sync`'s transaction, after the
event was found new (not in `sync_events`) and valid (`core/sync_events.py`). It either
applies the event and returns None, or changes nothing and returns why it cannot apply
(the caller quarantines it and reports the reason).

- `job`, `counter_check`: a row in `site_job_log` / `site_counter_checks`, keyed by the
  event id (which names the site).
- `user`: the user and her personal account, unless the primary knows the name (then the
  primary's record rules and the event changes nothing). The users trigger of the change
  log carries a new user to every site.
- `card`: an identity of the named user, so the identities trigger carries the card to
  every site (a card linked at site A works at site B). A card the primary already gives
  to another user is a conflict, reported, never applied.
"""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

from .store import _one, ensure_account_sync


def apply_record_sync(db: sqlite_utils.Database, site: str, event_id: str, kind: str,
                      record: dict[str, Any]) -> str | None:
    if kind == "job":
        _insert(db, "site_job_log", {"event_id": event_id, "site": site,
                                     **{k: v for k, v in record.items() if k != "created_at"},
                                     "job_created_at": record["created_at"]})
        return None
    if kind == "counter_check":
        _insert(db, "site_counter_checks", {"event_id": event_id, "site": site, **record})
        return None
    if kind == "user":
        return _apply_user(db, record)
    if kind == "card":
        return _apply_card(db, record)
    return f"no apply rule for event kind {kind!r}"


def _insert(db: sqlite_utils.Database, table: str, row: dict[str, Any]) -> None:
    columns = list(row)
    db.conn.execute(f"INSERT INTO {table} ({', '.join(columns)}) "
                    f"VALUES ({', '.join('?' * len(columns))})", [row[c] for c in columns])


def _apply_user(db: sqlite_utils.Database, record: dict[str, Any]) -> str | None:
    if _one(db, "SELECT 1 FROM users WHERE username = ?", (record["username"],)) is not None:
        return None     # the primary's user of that name rules; nothing to do
    directory_id = record["directory_id"]
    if directory_id is not None:
        holder = _one(db, "SELECT username FROM users WHERE directory_id = ?", (directory_id,))
        if holder is not None:
            return (f"directory id {directory_id!r} belongs to the primary's user "
                    f"{holder['username']!r}")
    account = _one(db, "SELECT kind FROM accounts WHERE name = ?", (record["account"],))
    if account is not None and account["kind"] != "personal":
        return f"account {record['account']!r} is a {account['kind']} account, not personal"
    account_id = ensure_account_sync(db, record["account"], "personal", 0)
    db.conn.execute(
        "INSERT INTO users (username, full_name, email, account_id, disabled, created_at, "
        "directory_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        (record["username"], record["full_name"], record["email"], account_id,
         record["disabled"], float(record["created_at"]), directory_id))
    return None


def _apply_card(db: sqlite_utils.Database, record: dict[str, Any]) -> str | None:
    user = _one(db, "SELECT id FROM users WHERE username = ?", (record["username"],))
    if user is None:
        return f"unknown user {record['username']!r}"
    holder = _one(db, "SELECT i.user_id, u.username FROM identities i JOIN users u "
                      "ON u.id = i.user_id WHERE i.kind = 'card' AND i.lookup = ?",
                  (record["lookup"],))
    if holder is not None:
        if holder["user_id"] == user["id"]:
            return None     # hers already (linked at two sites, or by the directory)
        return f"the card belongs to the primary's user {holder['username']!r}"
    db.conn.execute("INSERT INTO identities (user_id, kind, lookup, verifier, created_at) "
                    "VALUES (?, 'card', ?, NULL, ?)", (user["id"], record["lookup"], time.time()))
    return None

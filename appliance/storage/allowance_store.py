"""Every SQL statement of offline allowances (docs/offline-allowance.md), both sides.

Primary: the reservations (`offline_reservations`), made and released in the
transaction of one allowance request. Site: the grants it holds (`offline_grants`),
the policy (`sync_state.offline_policy`), and `offline_charges`, written by
`tag_offline_charge_sync` from `store._insert_ledger`, i.e. in the transaction of
every ledger row, so no charging path can forget it.

Each `AllowanceStore` coroutine is one committed transaction (`Database.run`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from appliance.core.allowance import OfflinePolicy, Position, SitePolicy, grant_amount, split_charge

from .database import Database
from .store import _one, _q, ensure_account_sync

OFFLINE_POLICY = "offline_policy"          # sync_state key at a site: JSON, absent = off
OFFLINE_REFRESHED = "offline_refreshed_at"  # sync_state key at a site: site clock
GRANT_SEQ = "offline_grant_seq"             # sync_state key at the primary: last grant number


# ---------------------------------------------------------------- site: state and tagging


def _site_policy_sync(db: sqlite_utils.Database) -> tuple[bool, OfflinePolicy | None]:
    """(offline?, policy): offline as `SiteSync` saved the mode of `core/mode.py`."""
    rows = db.conn.execute("SELECT key, value FROM sync_state WHERE key IN "
                           "('role', 'mode', 'offline_policy')").fetchall()
    values = {r[0]: r[1] for r in rows}
    if values.get("role") != "site" or OFFLINE_POLICY not in values:
        return False, None
    policy = OfflinePolicy.from_wire(json.loads(values[OFFLINE_POLICY]))
    return values.get("mode") == "offline", policy


def _position_sync(db: sqlite_utils.Database, account: str, now: float) -> Position:
    grant = _one(db, "SELECT grant_id, amount, expires_at FROM offline_grants "
                     "WHERE account = ? AND state = 'active' ORDER BY received_at DESC LIMIT 1",
                 (account,))
    if grant is None:
        return Position(None, 0, 0, 0)
    row = _one(db, "SELECT COALESCE(SUM(amount - over), 0) AS within, "
                   "COALESCE(SUM(over), 0) AS over FROM offline_charges WHERE grant_id = ?",
               (grant["grant_id"],))
    assert row is not None
    return Position(grant["grant_id"], int(grant["amount"]), int(row["within"]),
                    int(row["over"]), expired=now >= float(grant["expires_at"]))


def _account_name(db: sqlite_utils.Database, account_id: int) -> str | None:
    row = _one(db, "SELECT name FROM accounts WHERE id = ?", (account_id,))
    return None if row is None else str(row["name"])


def position_sync(db: sqlite_utils.Database, account_id: int,
                  now: float) -> tuple[OfflinePolicy, Position] | None:
    """The account's offline position, or None when the site is online or has no policy."""
    offline, policy = _site_policy_sync(db)
    if not offline or policy is None:
        return None
    name = _account_name(db, account_id)
    if name is not None and name == policy.offline_account:
        # The unknown-user account is the organisation's: not bounded by a grant.
        return policy, Position(None, 1 << 62, 0, 0)
    return policy, _position_sync(db, name or "", now)


def tag_offline_charge_sync(db: sqlite_utils.Database, entry_id: str, account_id: int,
                            amount: int, now: float) -> dict[str, Any] | None:
    """Called for every ledger row a site writes, in its transaction. With a policy, a
    charge (negative amount) is recorded against the account's grant: offline, with the
    part past the grant, and the returned tag goes into the row's body; online, it uses
    the grant up (no tag). None: nothing to tag."""
    if amount >= 0:
        return None
    offline, policy = _site_policy_sync(db)
    if policy is None:
        return None
    name = _account_name(db, account_id) or ""
    if not offline:
        grant = _one(db, "SELECT grant_id FROM offline_grants WHERE account = ? "
                         "AND state = 'active' ORDER BY received_at DESC LIMIT 1", (name,))
        if grant is not None:
            db.conn.execute("INSERT OR IGNORE INTO offline_charges (entry_id, grant_id, "
                            "account, amount, over, created_at, offline) "
                            "VALUES (?, ?, ?, ?, 0, ?, 0)",
                            (entry_id, grant["grant_id"], name, -amount, now))
        return None
    if name == policy.offline_account:
        grant_id, over = None, 0
    else:
        position = _position_sync(db, name, now)
        grant_id, over = position.grant_id, split_charge(position, -amount)[1]
    db.conn.execute("INSERT OR IGNORE INTO offline_charges (entry_id, grant_id, account, amount, "
                    "over, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    (entry_id, grant_id, name, -amount, over, now))
    return {"grant": grant_id, "over": over}


def reserved_elsewhere_sync(db: sqlite_utils.Database, account_id: int) -> int:
    """Online, with a policy: what other sites had reserved for the account when this
    site got its grant (0: no policy, no grant)."""
    offline, policy = _site_policy_sync(db)
    if offline or policy is None:
        return 0
    # The latest grant, superseded or not: while a renewal is in flight the other sites'
    # reserves are still there.
    row = _one(db, "SELECT g.elsewhere FROM offline_grants g JOIN accounts a "
                   "ON a.name = g.account WHERE a.id = ? "
                   "ORDER BY g.received_at DESC LIMIT 1", (account_id,))
    return 0 if row is None else int(row["elsewhere"])


def unknown_user_account_sync(db: sqlite_utils.Database) -> tuple[bool, int | None]:
    offline, policy = _site_policy_sync(db)
    if not offline or policy is None:
        return False, None
    if policy.unknown_users != "account":
        return True, None
    return True, ensure_account_sync(db, policy.offline_account, "system", None)


# ---------------------------------------------------------------- site: requests and answers


def supersede_sync(db: sqlite_utils.Database) -> tuple[list[dict[str, Any]], list[str]]:
    """Before a request goes out: the active grants stop authorising (an answer that never
    comes must not leave the site with grants the primary released). Returns the usage
    report (superseded grants with charges) and every superseded grant id."""
    db.conn.execute("UPDATE offline_grants SET state = 'superseded' WHERE state = 'active'")
    superseded = [str(r[0]) for r in db.conn.execute(
        "SELECT grant_id FROM offline_grants WHERE state = 'superseded'").fetchall()]
    used = []
    for r in _q(db, "SELECT g.grant_id, g.account, SUM(c.amount) AS spent, "
                    "SUM(c.over) AS over, COUNT(*) AS charges "
                    "FROM offline_grants g JOIN offline_charges c ON c.grant_id = g.grant_id "
                    "WHERE g.state = 'superseded' GROUP BY g.grant_id ORDER BY g.grant_id"):
        used.append({"grant": r["grant_id"], "account": r["account"], "spent": int(r["spent"]),
                     "over": int(r["over"]), "charges": int(r["charges"])})
    return used, superseded


@dataclass(frozen=True)
class GrantAnswer:
    enabled: bool
    valid_for: float
    refresh: float
    policy: OfflinePolicy | None
    grants: list[tuple[str, str, int, int]]   # (grant id, account, amount, elsewhere)


def store_answer_sync(db: sqlite_utils.Database, answer: GrantAnswer, reported: Sequence[str],
                      sent_at: float) -> None:
    """The primary answered: forget the superseded grants (their usage was reported), hold
    the new ones. Expiry is counted from when the request was sent, by the site's clock
    (never later than the primary's own expiry of the reservation, clock drift aside)."""
    for grant_id in reported:
        db.conn.execute("DELETE FROM offline_grants WHERE grant_id = ? AND state = 'superseded'",
                        (grant_id,))
        # Online charges were kept only to use the grant up; offline ones stay (history).
        db.conn.execute("DELETE FROM offline_charges WHERE grant_id = ? AND offline = 0",
                        (grant_id,))
    db.conn.execute("DELETE FROM offline_grants WHERE state = 'active'")
    for grant_id, account, amount, elsewhere in answer.grants:
        db.conn.execute("INSERT OR REPLACE INTO offline_grants (grant_id, account, amount, "
                        "expires_at, received_at, state, elsewhere) "
                        "VALUES (?, ?, ?, ?, ?, 'active', ?)",
                        (grant_id, account, amount, sent_at + answer.valid_for, sent_at,
                         elsewhere))
    if answer.enabled and answer.policy is not None:
        db.conn.execute("INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                        "DO UPDATE SET value = excluded.value",
                        (OFFLINE_POLICY, json.dumps(answer.policy.to_wire(), sort_keys=True)))
    else:
        db.conn.execute("DELETE FROM sync_state WHERE key = ?", (OFFLINE_POLICY,))
    db.conn.execute("INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = excluded.value", (OFFLINE_REFRESHED, repr(sent_at)))


# ---------------------------------------------------------------- primary: reservations


def grant_sync(db: sqlite_utils.Database, site: str, policy: SitePolicy | None,
               used: Sequence[dict[str, Any]], now: float,
               validity: float) -> list[tuple[str, str, int, int]]:
    """One allowance request, as one transaction: record what the site reports it spent
    under its grants, release all its reservations, and (with a policy) reserve fresh
    grants for every account of an enabled user. Returns (grant id, account, amount,
    reserved by other sites)."""
    for u in used:
        db.conn.execute(
            "UPDATE offline_reservations SET spent = ?, over = ?, charges = ?, "
            "released_at = COALESCE(released_at, ?) WHERE grant_id = ? AND site = ?",
            (u["spent"], u["over"], u["charges"], now, u["grant"], site))
    db.conn.execute("UPDATE offline_reservations SET released_at = ? "
                    "WHERE site = ? AND released_at IS NULL", (now, site))
    # Released grants nothing was charged under are forgotten (a site reports every grant
    # it charged under, in this request or, after a lost answer, the next one): the table
    # keeps the active reservations and the history of the used ones.
    db.conn.execute("DELETE FROM offline_reservations WHERE site = ? "
                    "AND released_at IS NOT NULL AND spent IS NULL", (site,))
    if policy is None:
        return []
    others = {r[0]: int(r[1]) for r in db.conn.execute(
        "SELECT account, SUM(amount) FROM offline_reservations WHERE released_at IS NULL "
        "AND expires_at > ? AND site != ? GROUP BY account", (now, site)).fetchall()}
    accounts = _q(db, "SELECT a.id, a.name, a.overdraft_limit, "
                      "(SELECT COALESCE(SUM(l.amount), 0) FROM ledger l "
                      " WHERE l.account_id = a.id) AS balance "
                      "FROM users u JOIN accounts a ON a.id = u.account_id "
                      "WHERE u.disabled = 0 ORDER BY a.id")
    # Grant ids are never reused (rows of unused grants are deleted): a counter of its own.
    row = _one(db, "SELECT value FROM sync_state WHERE key = ?", (GRANT_SEQ,))
    n = int(row["value"]) if row is not None else 0
    grants = []
    for a in accounts:
        amount = grant_amount(policy, balance=int(a["balance"]),
                              overdraft_limit=a["overdraft_limit"],
                              reserved_by_others=others.get(a["name"], 0))
        n += 1
        grant_id = f"{site}/{n}"
        db.conn.execute(
            "INSERT INTO offline_reservations (grant_id, site, account, amount, granted_at, "
            "expires_at) VALUES (?, ?, ?, ?, ?, ?)",
            (grant_id, site, a["name"], amount, now, now + validity))
        grants.append((grant_id, str(a["name"]), amount, others.get(a["name"], 0)))
    db.conn.execute("INSERT INTO sync_state (key, value) VALUES (?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET value = excluded.value", (GRANT_SEQ, str(n)))
    return grants


def offline_over(ledger_body: str) -> int:
    """The over part recorded in a pushed ledger event's body (0 when not offline)."""
    if '"offline"' not in ledger_body:
        return 0
    try:
        tag = json.loads(ledger_body).get("offline")
        over = tag.get("over", 0) if isinstance(tag, dict) else 0
    except (ValueError, AttributeError):
        return 0
    return over if isinstance(over, int) and not isinstance(over, bool) and over > 0 else 0


class AllowanceStore:
    """Offline allowances' data, one committed transaction per call."""

    def __init__(self, database: Database, clock: Callable[[], float] = time.time) -> None:
        self.database = database
        self.clock = clock

    async def position(self, account_id: int) -> tuple[OfflinePolicy, Position] | None:
        now = self.clock()
        return await self.database.run(lambda db: position_sync(db, account_id, now))

    async def reserved_elsewhere(self, account_id: int) -> int:
        return await self.database.run(lambda db: reserved_elsewhere_sync(db, account_id))

    async def unknown_user_account(self) -> tuple[bool, int | None]:
        return await self.database.run(unknown_user_account_sync)

    async def supersede(self) -> tuple[list[dict[str, Any]], list[str]]:
        return await self.database.run(supersede_sync)

    async def store_answer(self, answer: GrantAnswer, reported: Sequence[str],
                           sent_at: float) -> None:
        await self.database.run(lambda db: store_answer_sync(db, answer, reported, sent_at))

    async def state(self, key: str) -> str | None:
        def work(db: sqlite_utils.Database) -> str | None:
            row = _one(db, "SELECT value FROM sync_state WHERE key = ?", (key,))
            return None if row is None else str(row["value"])

        return await self.database.run(work)

    async def grant(self, site: str, policy: SitePolicy | None, used: Sequence[dict[str, Any]],
                    now: float, validity: float) -> list[tuple[str, str, int, int]]:
        return await self.database.run(
            lambda db: grant_sync(db, site, policy, used, now, validity))

    async def rows(self, table: str) -> list[dict[str, Any]]:
        if table not in ("offline_reservations", "offline_grants", "offline_charges"):
            raise ValueError(table)
        return await self.database.run(
            lambda db: [dict(r) for r in _q(db, f"SELECT * FROM {table} ORDER BY rowid")])

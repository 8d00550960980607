"""Every SQL statement the site runs. The only module, with `database.py`, that speaks SQL.

Each public coroutine runs one transaction in the database thread (see
`Database.run`) and returns when it is committed; the `_sync` functions are
the transaction bodies, usable directly at start-up and in tools.
"""

from __future__ import annotations

import json
import sqlite3
import time
import uuid as uuidlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlite_utils

from appliance.core.charging import CostPolicy
from appliance.core.model import Device, Job, JobOptions, JobState, LedgerResult, User

from .database import Database

#: Charged for direct-queue jobs of users the site does not know, when the database has
#: no sync name; otherwise `unattributed_account_name` (one per site, so that the
#: primary keeps every site's apart).
SYSTEM_ACCOUNT = "site:unattributed"


def _now() -> float:
    return time.time()


def _user(row: sqlite3.Row) -> User:
    return User(row["id"], row["username"], row["full_name"], row["account_id"],
                bool(row["disabled"]))


def _job(row: sqlite3.Row) -> Job:
    return Job(
        id=row["id"],
        uuid=row["uuid"],
        queue=row["queue"],
        owner=row["owner"],
        user_id=row["user_id"],
        name=row["name"],
        document_format=row["document_format"],
        spool_name=row["spool_name"],
        size=row["size"],
        pages=row["pages"],
        colour=bool(row["colour"]),
        analysed=bool(row["analysed"]),
        options=JobOptions(
            copies=row["copies"], sides=row["sides"], number_up=row["number_up"],
            media=row["media"], colour_mode=row["colour_mode"], hold_until=row["hold_until"],
        ),
        state=JobState(row["state"]),
        state_reasons=tuple(r for r in row["state_reasons"].split(",") if r),
        state_message=row["state_message"],
        device=row["device"],
        remote_job_uri=row["remote_job_uri"],
        attempts=row["attempts"],
        impressions_completed=row["impressions_completed"],
        charged=row["charged"],
        created_at=row["created_at"],
        processing_at=row["processing_at"],
        completed_at=row["completed_at"],
        expires_at=row["expires_at"],
    )


def _device(row: sqlite3.Row) -> Device:
    return Device(row["name"], row["protocol"], row["uri"], bool(row["colour"]),
                  bool(row["duplex"]), row["cost_policy"], bool(row["enabled"]))


def _q(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
    rows: list[sqlite3.Row] = db.conn.execute(sql, params).fetchall()
    return rows


def _one(db: sqlite_utils.Database, sql: str, params: Sequence[Any] = ()) -> sqlite3.Row | None:
    row: sqlite3.Row | None = db.conn.execute(sql, params).fetchone()
    return row


# ---------------------------------------------------------------- accounts & users


def ensure_account_sync(db: sqlite_utils.Database, name: str, kind: str,
                        overdraft_limit: int | None = 0) -> int:
    row = _one(db, "SELECT id FROM accounts WHERE name = ?", (name,))
    if row is not None:
        account_id: int = row["id"]
        return account_id
    cur = db.conn.execute(
        "INSERT INTO accounts (name, kind, overdraft_limit, created_at) VALUES (?, ?, ?, ?)",
        (name, kind, overdraft_limit, _now()),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def balance_sync(db: sqlite_utils.Database, account_id: int) -> int:
    row = _one(db, "SELECT COALESCE(SUM(amount), 0) AS b FROM ledger WHERE account_id = ?",
               (account_id,))
    assert row is not None
    balance: int = row["b"]
    return balance


def overdraft_limit_sync(db: sqlite_utils.Database, account_id: int) -> int | None:
    row = _one(db, "SELECT overdraft_limit FROM accounts WHERE id = ?", (account_id,))
    if row is None:
        return 0
    limit: int | None = row["overdraft_limit"]
    return limit


def unattributed_account_name(db: sqlite_utils.Database) -> str:
    """`site:<sync name>:unattributed`: each site's unknown users' charges in an account of
    its own, so that sites merging into one primary ledger never share (or collide on) it."""
    row = _one(db, "SELECT value FROM sync_state WHERE key = 'name'")
    return SYSTEM_ACCOUNT if row is None else f"site:{row['value']}:unattributed"


@dataclass(frozen=True)
class NewIdentity:
    kind: str               # 'card', 'pin', 'password'
    lookup: str | None      # HMAC of a card
    verifier: str | None    # Argon2id of a PIN or password


def add_user_sync(
    db: sqlite_utils.Database, username: str, full_name: str, email: str,
    identities: Iterable[NewIdentity], initial_balance: int = 0,
) -> User:
    """Create a user, her personal account, credentials and opening credit."""
    account_id = ensure_account_sync(db, f"user:{username}", "personal", 0)
    cur = db.conn.execute(
        "INSERT INTO users (username, full_name, email, account_id, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (username, full_name, email, account_id, _now()),
    )
    assert cur.lastrowid is not None
    user_id = cur.lastrowid
    for identity in identities:
        set_identity_sync(db, user_id, identity)
    if initial_balance:
        _insert_ledger(db, f"seed:{username}:{uuidlib.uuid4().hex}", account_id, initial_balance,
                       "credit", "seed", {})
    row = _one(db, "SELECT * FROM users WHERE id = ?", (user_id,))
    assert row is not None
    return _user(row)


def set_identity_sync(db: sqlite_utils.Database, user_id: int, identity: NewIdentity) -> None:
    if identity.kind in ("pin", "password"):
        db.conn.execute("DELETE FROM identities WHERE user_id = ? AND kind = ?",
                        (user_id, identity.kind))
    db.conn.execute(
        "INSERT INTO identities (user_id, kind, lookup, verifier, created_at) "
        "VALUES (?, ?, ?, ?, ?)",
        (user_id, identity.kind, identity.lookup, identity.verifier, _now()),
    )


def _insert_ledger(
    db: sqlite_utils.Database, entry_id: str, account_id: int, amount: int, kind: str,
    source: str, body: dict[str, Any], *, job_id: int | None = None, device: str | None = None,
    impressions: int | None = None, colour: bool | None = None,
) -> None:
    from .allowance_store import tag_offline_charge_sync

    now = _now()
    # Offline with an allowance policy, a charge names its grant (docs/offline-allowance.md).
    tag = tag_offline_charge_sync(db, entry_id, account_id, amount, now)
    if tag is not None:
        body = {**body, "offline": tag}
    db.conn.execute(
        "INSERT INTO ledger (entry_id, account_id, amount, kind, source, job_id, device, "
        "impressions, colour, body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry_id, account_id, amount, kind, source, job_id, device, impressions,
         None if colour is None else int(colour), json.dumps(body, sort_keys=True), now),
    )


class SiteStore:
    """The site's data, one committed transaction per call."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # ------------------------------------------------------------ users

    async def user_by_card(self, lookup: str) -> tuple[User, str | None] | None:
        """The card's owner and her PIN verifier (for card + PIN): one indexed lookup."""

        def work(db: sqlite_utils.Database) -> tuple[User, str | None] | None:
            row = _one(
                db,
                "SELECT u.* FROM identities i JOIN users u ON u.id = i.user_id "
                "WHERE i.kind = 'card' AND i.lookup = ?",
                (lookup,),
            )
            if row is None:
                return None
            pin = _one(db, "SELECT verifier FROM identities WHERE user_id = ? AND kind = 'pin'",
                       (row["id"],))
            return _user(row), (pin["verifier"] if pin else None)

        return await self.database.run(work)

    async def user_with_verifier(self, username: str, kind: str) -> tuple[User, str | None] | None:
        def work(db: sqlite_utils.Database) -> tuple[User, str | None] | None:
            row = _one(db, "SELECT * FROM users WHERE username = ?", (username,))
            if row is None:
                return None
            secret = _one(db, "SELECT verifier FROM identities WHERE user_id = ? AND kind = ?",
                          (row["id"], kind))
            return _user(row), (secret["verifier"] if secret else None)

        return await self.database.run(work)

    async def user_by_name(self, username: str) -> User | None:
        def work(db: sqlite_utils.Database) -> User | None:
            row = _one(db, "SELECT * FROM users WHERE username = ?", (username,))
            return _user(row) if row else None

        return await self.database.run(work)

    async def balance(self, account_id: int) -> tuple[int, int | None]:
        """(balance, overdraft limit) of an account, from the ledger."""

        def work(db: sqlite_utils.Database) -> tuple[int, int | None]:
            return balance_sync(db, account_id), overdraft_limit_sync(db, account_id)

        return await self.database.run(work)

    async def unattributed_account(self) -> int:
        return await self.database.run(
            lambda db: ensure_account_sync(db, unattributed_account_name(db), "system", None)
        )

    # ------------------------------------------------------------ ledger

    async def post_usage(
        self, *, usage_id: str, device: str, user_id: int, account_id: int, kind: str,
        pages: int, colour: bool, sides: str, cost: int, body: dict[str, Any],
    ) -> LedgerResult:
        """Record copy/scan/fax usage and its charge, idempotently by the device's id."""

        def work(db: sqlite_utils.Database) -> LedgerResult:
            encoded = json.dumps(body, sort_keys=True)
            existing = _one(db, "SELECT body, cost FROM usage WHERE usage_id = ?", (usage_id,))
            if existing is not None:
                return LedgerResult(False, balance_sync(db, account_id), existing["cost"],
                                    existing["body"] == encoded)
            db.conn.execute(
                "INSERT INTO usage (usage_id, device, user_id, kind, pages, colour, sides, cost, "
                "body, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (usage_id, device, user_id, kind, pages, int(colour), sides, cost, encoded,
                 _now()),
            )
            if cost:
                _insert_ledger(db, f"usage:{usage_id}", account_id, -cost, "charge", kind, body,
                               device=device, impressions=pages, colour=colour)
            return LedgerResult(True, balance_sync(db, account_id), cost)

        return await self.database.run(work)

    # ------------------------------------------------------------ devices & policies

    async def devices(self) -> list[Device]:
        def work(db: sqlite_utils.Database) -> list[Device]:
            return [_device(r) for r in _q(db, "SELECT * FROM devices ORDER BY name")]

        return await self.database.run(work)

    async def cost_policies(self) -> dict[str, CostPolicy]:
        def work(db: sqlite_utils.Database) -> dict[str, CostPolicy]:
            return {r["name"]: CostPolicy.from_json(r["body"])
                    for r in _q(db, "SELECT name, body FROM cost_policies")}

        return await self.database.run(work)

    # ------------------------------------------------------------ jobs

    async def insert_job(
        self, *, uuid: str, queue: str, owner: str, user_id: int | None, name: str,
        document_format: str, spool_name: str | None, size: int, pages: int | None,
        colour: bool, analysed: bool, options: JobOptions, state: JobState,
        state_reasons: Sequence[str], expires_at: float | None,
    ) -> Job:
        def work(db: sqlite_utils.Database) -> Job:
            cur = db.conn.execute(
                "INSERT INTO jobs (uuid, queue, owner, user_id, name, document_format, "
                "spool_name, size, pages, colour, analysed, copies, sides, number_up, media, "
                "colour_mode, hold_until, state, state_reasons, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (uuid, queue, owner, user_id, name, document_format, spool_name, size, pages,
                 int(colour), int(analysed), options.copies, options.sides, options.number_up,
                 options.media, options.colour_mode, options.hold_until, state.value,
                 ",".join(state_reasons), _now(), expires_at),
            )
            row = _one(db, "SELECT * FROM jobs WHERE id = ?", (cur.lastrowid,))
            assert row is not None
            return _job(row)

        return await self.database.run(work)

    async def job(self, job_id: int) -> Job | None:
        def work(db: sqlite_utils.Database) -> Job | None:
            row = _one(db, "SELECT * FROM jobs WHERE id = ?", (job_id,))
            return _job(row) if row else None

        return await self.database.run(work)

    async def jobs(
        self, *, queue: str | None = None, owner: str | None = None,
        states: Iterable[JobState] | None = None, limit: int | None = None,
        newest_first: bool = False,
    ) -> list[Job]:
        clauses, params = [], []  # type: ignore[var-annotated]
        if queue is not None:
            clauses.append("queue = ?")
            params.append(queue)
        if owner is not None:
            clauses.append("owner = ?")
            params.append(owner)
        if states is not None:
            wanted = [s.value for s in states]
            clauses.append(f"state IN ({','.join('?' * len(wanted))})")
            params.extend(wanted)
        sql = "SELECT * FROM jobs"
        if clauses:
            sql += " WHERE " + " AND ".join(clauses)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"

        def work(db: sqlite_utils.Database) -> list[Job]:
            return [_job(r) for r in _q(db, sql, params)]

        return await self.database.run(work)

    async def spool_usage(self, owner: str) -> tuple[int, int]:
        """Bytes held in the spool by `owner` and in total."""

        def work(db: sqlite_utils.Database) -> tuple[int, int]:
            mine = _one(db, "SELECT COALESCE(SUM(size), 0) AS s FROM jobs "
                            "WHERE spool_name IS NOT NULL AND owner = ?", (owner,))
            total = _one(db, "SELECT COALESCE(SUM(size), 0) AS s FROM jobs "
                             "WHERE spool_name IS NOT NULL")
            assert mine is not None and total is not None
            return int(mine["s"]), int(total["s"])

        return await self.database.run(work)

    async def update_job(self, job_id: int, *, expect_states: Iterable[JobState] | None = None,
                         require_no_document: bool = False, **fields: Any) -> Job | None:
        """Change a job's columns; with `expect_states`, only if it is in one of them.

        Returns the updated job, or None when the state check failed (someone
        else moved the job first: e.g. two MFDs releasing the same job).
        """
        sets = []
        params: list[Any] = []
        for key, value in fields.items():
            if key == "state" and isinstance(value, JobState):
                value = value.value
            if key == "state_reasons" and not isinstance(value, str):
                value = ",".join(value)
            sets.append(f"{key} = ?")
            params.append(value)

        def work(db: sqlite_utils.Database) -> Job | None:
            sql = f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?"
            args = [*params, job_id]
            if expect_states is not None:
                wanted = [s.value for s in expect_states]
                sql += f" AND state IN ({','.join('?' * len(wanted))})"
                args.extend(wanted)
            if require_no_document:
                sql += " AND spool_name IS NULL"
            cur = db.conn.execute(sql, args)
            if cur.rowcount == 0:
                return None
            row = _one(db, "SELECT * FROM jobs WHERE id = ?", (job_id,))
            assert row is not None
            return _job(row)

        return await self.database.run(work)

    async def finish_print(
        self, job_id: int, *, entry_id: str, account_id: int | None, amount: int,
        impressions: int, colour: bool, device: str, completed: bool, state_message: str,
        body: dict[str, Any],
    ) -> tuple[Job, LedgerResult]:
        """Charge what a device printed and move the job on, in one transaction.

        `completed`: the job is done (document may go). Otherwise the job is held
        again (a jam after some pages: those pages are charged, the job stays
        releasable). The entry id makes a repeat of the same attempt harmless.
        """

        def work(db: sqlite_utils.Database) -> tuple[Job, LedgerResult]:
            inserted = False
            fresh = _one(db, "SELECT 1 FROM ledger WHERE entry_id = ?", (entry_id,)) is None
            if account_id is not None and amount and fresh:
                _insert_ledger(db, entry_id, account_id, -amount, "charge", "print", body,
                               job_id=job_id, device=device, impressions=impressions,
                               colour=colour)
                inserted = True
            if completed:
                db.conn.execute(
                    "UPDATE jobs SET state = 'completed', state_reasons = 'job-completed-successfully', "
                    "state_message = ?, completed_at = ?, impressions_completed = ?, "
                    "charged = charged + ? WHERE id = ?",
                    (state_message, _now(), impressions, amount if inserted else 0, job_id),
                )
            else:
                db.conn.execute(
                    "UPDATE jobs SET state = 'held', state_reasons = 'job-hold-until-specified', "
                    "state_message = ?, device = NULL, remote_job_uri = NULL, "
                    "impressions_completed = ?, charged = charged + ? WHERE id = ?",
                    (state_message, impressions, amount if inserted else 0, job_id),
                )
            row = _one(db, "SELECT * FROM jobs WHERE id = ?", (job_id,))
            assert row is not None
            balance = balance_sync(db, account_id) if account_id is not None else 0
            return _job(row), LedgerResult(inserted, balance, amount if inserted else 0)

        return await self.database.run(work)

    async def post_adjustment(
        self, *, entry_id: str, account_id: int, amount: int, job_id: int | None,
        device: str | None, impressions: int | None, colour: bool | None,
        body: dict[str, Any],
    ) -> LedgerResult:
        """An adjustment (negative: a charge) idempotent by `entry_id`; the job's
        `charged` follows it."""

        def work(db: sqlite_utils.Database) -> LedgerResult:
            if _one(db, "SELECT 1 FROM ledger WHERE entry_id = ?", (entry_id,)) is not None:
                return LedgerResult(False, balance_sync(db, account_id), 0)
            _insert_ledger(db, entry_id, account_id, amount, "adjustment", "print", body,
                           job_id=job_id, device=device, impressions=impressions,
                           colour=colour)
            if job_id is not None:
                db.conn.execute("UPDATE jobs SET charged = charged + ? WHERE id = ?",
                                (-amount, job_id))
            return LedgerResult(True, balance_sync(db, account_id), amount)

        return await self.database.run(work)

    async def ledger_entries(self, account_id: int | None = None) -> list[dict[str, Any]]:
        def work(db: sqlite_utils.Database) -> list[dict[str, Any]]:
            if account_id is None:
                rows = _q(db, "SELECT * FROM ledger ORDER BY id")
            else:
                rows = _q(db, "SELECT * FROM ledger WHERE account_id = ? ORDER BY id",
                          (account_id,))
            return [dict(r) for r in rows]

        return await self.database.run(work)

    # ------------------------------------------------------------ device page-counter checks

    async def add_counter_check(self, check: Any) -> None:
        """Store a `core.devices.CounterCheck` (a repeat of the same attempt is ignored)."""

        def work(db: sqlite_utils.Database) -> None:
            db.conn.execute(
                "INSERT OR IGNORE INTO device_counter_checks (job_id, attempt, device, "
                "counter_before, counter_after, counter_delta, impressions, difference, status, "
                "detail, started_at, finished_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (check.job_id, check.attempt, check.device, check.counter_before,
                 check.counter_after, check.counter_delta, check.impressions, check.difference,
                 check.status, check.detail, check.started_at, check.finished_at),
            )

        await self.database.run(work)

    async def counter_checks(self, device: str | None = None,
                             status: str | None = None) -> list[dict[str, Any]]:
        """Page-counter checks, oldest first, optionally of one device and/or one status."""

        def work(db: sqlite_utils.Database) -> list[dict[str, Any]]:
            where, params = [], []
            if device is not None:
                where.append("device = ?")
                params.append(device)
            if status is not None:
                where.append("status = ?")
                params.append(status)
            clause = f" WHERE {' AND '.join(where)}" if where else ""
            rows = _q(db, f"SELECT * FROM device_counter_checks{clause} ORDER BY id", params)
            return [dict(r) for r in rows]

        return await self.database.run(work)


def configure_sync(
    db: sqlite_utils.Database, devices: Iterable[Device], policies: dict[str, CostPolicy]
) -> None:
    """Make the devices and cost policies tables match the configuration."""
    now = _now()
    for name, policy in policies.items():
        db.conn.execute(
            "INSERT INTO cost_policies (name, body, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
            (name, policy.to_json(), now),
        )
    names = []
    for device in devices:
        names.append(device.name)
        db.conn.execute(
            "INSERT INTO devices (name, protocol, uri, colour, duplex, cost_policy, enabled, "
            "updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET "
            "protocol = excluded.protocol, uri = excluded.uri, colour = excluded.colour, "
            "duplex = excluded.duplex, cost_policy = excluded.cost_policy, "
            "enabled = excluded.enabled, updated_at = excluded.updated_at",
            (device.name, device.protocol, device.uri, int(device.colour), int(device.duplex),
             device.cost_policy, int(device.enabled), now),
        )
    if names:
        db.conn.execute(
            f"UPDATE devices SET enabled = 0 WHERE name NOT IN ({','.join('?' * len(names))})",
            names,
        )

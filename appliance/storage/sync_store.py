"""Every SQL statement of replication (docs/wire/sync.md), for both sides of the wire.

Site side: the outbox (written by the `ledger_outbox` trigger of migration 0003, in
the transaction of the ledger row), its acknowledgement, and applying the primary's
change stream to the replica. Primary side: applying a pushed batch idempotently, the
change stream (`changes`, written by triggers), the snapshot, heartbeats and outage
reports.

Each `SyncStore` coroutine is one committed transaction (`Database.run`); the `_sync`
functions are the transaction bodies.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlite_utils

from appliance import failpoints

from .database import Database
from .store import _one, _q, ensure_account_sync
from .sync_records import apply_record_sync

log = logging.getLogger(__name__)

ROLE = "role"
NAME = "name"
PULL_TOKEN = "pull_token"
PUSH_CHECKPOINT = "push_checkpoint"
MODE = "mode"
MODE_SINCE = "mode_since"
REPLICATING = "replicating"
SNAPSHOT_NEXT = "snapshot_next"


def _now() -> float:
    return time.time()


# ---------------------------------------------------------------- shapes


@dataclass(frozen=True)
class OutboxEvent:
    seq: int
    event_id: str
    kind: str
    body: str   # JSON text as the trigger wrote it


@dataclass(frozen=True)
class Change:
    """One entry of the pull stream; `token` is the stream position after it."""

    token: int
    kind: str
    key: str
    body: dict[str, Any]

    def to_wire(self) -> dict[str, Any]:
        return {"token": str(self.token), "kind": self.kind, "key": self.key, "body": self.body}


@dataclass(frozen=True)
class LedgerEvent:
    """The fields of a pushed ledger event the primary needs (checked by core.sync)."""

    entry_id: str
    account: str
    account_kind: str
    amount: int
    kind: str
    source: str
    device: str | None
    impressions: int | None
    colour: int | None
    body: str          # canonical JSON of the event body's `body`
    created_at: float


@dataclass(frozen=True)
class IncomingEvent:
    """A pushed event as core.sync checked it: canonical body, its digest, its verdict."""

    seq: int
    event_id: str
    kind: str
    body: str
    sha256: str
    invalid: str | None = None     # why it cannot apply (it is quarantined)
    ledger: LedgerEvent | None = None
    #: Where the event was made when not the pusher (a provider's event a site relays).
    origin: str | None = None
    #: The checked fields of a job, counter_check, card or user event (core/sync_events.py).
    record: dict[str, Any] | None = None


@dataclass
class BatchOutcome:
    checkpoint: int
    applied: int = 0
    duplicates: int = 0
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    gap_after: int | None = None   # the batch started past checkpoint + 1
    released: int = 0              # held relay events applied (the pusher's first contact)


# ---------------------------------------------------------------- state


def state_sync(db: sqlite_utils.Database, key: str) -> str | None:
    row = _one(db, "SELECT value FROM sync_state WHERE key = ?", (key,))
    return None if row is None else str(row["value"])


def set_state_sync(db: sqlite_utils.Database, key: str, value: str) -> None:
    db.conn.execute("INSERT INTO sync_state (key, value) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET value = excluded.value", (key, value))


def declare_role_sync(db: sqlite_utils.Database, role: str, name: str) -> None:
    """Say which side of sync this database plays; the triggers act on it from now on.

    Changes made before a primary declared itself are not in its change log; sites
    that bootstrap from the snapshot (which reads the tables) still get them.
    """
    if role not in ("site", "primary"):
        raise ValueError(f"no sync role {role!r}")
    if "/" in name:
        raise ValueError("a sync name must not contain '/'")
    set_state_sync(db, ROLE, role)
    set_state_sync(db, NAME, name)


# ---------------------------------------------------------------- site: outbox


def outbox_batch_sync(db: sqlite_utils.Database, limit: int) -> list[OutboxEvent]:
    rows = _q(db, "SELECT seq, event_id, kind, body FROM outbox ORDER BY seq LIMIT ?", (limit,))
    return [OutboxEvent(r["seq"], r["event_id"], r["kind"], r["body"]) for r in rows]


def outbox_ack_sync(db: sqlite_utils.Database, checkpoint: int) -> int:
    """Forget what the primary acknowledged; returns how many events went."""
    cur = db.conn.execute("DELETE FROM outbox WHERE seq <= ?", (checkpoint,))
    previous = int(state_sync(db, PUSH_CHECKPOINT) or 0)
    set_state_sync(db, PUSH_CHECKPOINT, str(max(previous, checkpoint)))
    return int(cur.rowcount)


def outbox_size_sync(db: sqlite_utils.Database) -> int:
    row = _one(db, "SELECT COUNT(*) AS n FROM outbox")
    assert row is not None
    return int(row["n"])


# ---------------------------------------------------------------- site: applying the stream


def apply_changes_sync(db: sqlite_utils.Database, changes: Sequence[Change], token: int,
                       me: str, snapshot_next: str | None = None) -> int:
    """Apply a page of the primary's stream and move the pull token, in one transaction.

    Ledger rows are deduplicated by their global id, so the site's own rows coming
    back (origin == me) are recognised by their local entry id and not doubled.
    Returns how many ledger rows were added.
    """
    added = 0
    # What comes from the primary is not pushed back: migration 0007's user and card
    # triggers are silent while this marker exists (it lives only in this transaction).
    set_state_sync(db, REPLICATING, "1")
    for change in changes:
        body = change.body
        if change.kind == "ledger":
            added += _apply_ledger_change(db, body, me)
            continue
        db.conn.execute(
            "INSERT INTO replica (kind, key, body, token) VALUES (?, ?, ?, ?) "
            "ON CONFLICT(kind, key) DO UPDATE SET body = excluded.body, token = excluded.token",
            (change.kind, change.key, json.dumps(body, sort_keys=True), change.token))
        if change.kind == "account":
            db.conn.execute(
                "INSERT INTO accounts (name, kind, overdraft_limit, created_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(name) DO UPDATE SET kind = excluded.kind, "
                "overdraft_limit = excluded.overdraft_limit",
                (body["name"], body["kind"], body.get("overdraft_limit"), _now()))
        elif change.kind == "user":
            _apply_user_change(db, body)
        elif change.kind == "identity":
            _apply_identity_change(db, body)
        # devices and cost policies: kept in `replica` only (see migration 0003)
    if snapshot_next is None:
        set_state_sync(db, PULL_TOKEN, str(token))
        db.conn.execute("DELETE FROM sync_state WHERE key = ?", (SNAPSHOT_NEXT,))
    else:
        # A page of a paged snapshot: no pull token until the last page (a restart
        # resumes the bootstrap from here, then follows the stream from its first token).
        set_state_sync(db, SNAPSHOT_NEXT, snapshot_next)
    db.conn.execute("DELETE FROM sync_state WHERE key = ?", (REPLICATING,))
    return added


def _apply_user_change(db: sqlite_utils.Database, body: dict[str, Any]) -> None:
    account_id = ensure_account_sync(db, body["account"], "personal", 0)
    row = _one(db, "SELECT id FROM users WHERE username = ?", (body["username"],))
    if row is None:
        db.conn.execute(
            "INSERT INTO users (username, full_name, email, account_id, disabled, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (body["username"], body.get("full_name", ""), body.get("email", ""), account_id,
             int(bool(body.get("disabled"))), _now()))
    else:
        db.conn.execute(
            "UPDATE users SET full_name = ?, email = ?, account_id = ?, disabled = ? WHERE id = ?",
            (body.get("full_name", ""), body.get("email", ""), account_id,
             int(bool(body.get("disabled"))), row["id"]))


def _apply_identity_change(db: sqlite_utils.Database, body: dict[str, Any]) -> None:
    user = _one(db, "SELECT id FROM users WHERE username = ?", (body.get("username"),))
    if user is None:
        return
    kind, lookup, verifier = body["kind"], body.get("lookup"), body.get("verifier")
    if body.get("deleted"):
        db.conn.execute("DELETE FROM identities WHERE user_id = ? AND kind = ? AND lookup IS ? "
                        "AND verifier IS ?", (user["id"], kind, lookup, verifier))
        return
    if kind == "card":
        db.conn.execute("DELETE FROM identities WHERE kind = 'card' AND lookup = ?", (lookup,))
    else:
        db.conn.execute("DELETE FROM identities WHERE user_id = ? AND kind = ?",
                        (user["id"], kind))
    db.conn.execute("INSERT INTO identities (user_id, kind, lookup, verifier, created_at) "
                    "VALUES (?, ?, ?, ?, ?)", (user["id"], kind, lookup, verifier, _now()))


def _apply_ledger_change(db: sqlite_utils.Database, body: dict[str, Any], me: str) -> int:
    global_id, origin = str(body["id"]), str(body["origin"])
    entry_id = global_id
    if origin == me and global_id.startswith(me + "/"):
        entry_id = global_id[len(me) + 1:]
    if _one(db, "SELECT 1 FROM ledger WHERE entry_id = ?", (entry_id,)) is not None:
        return 0
    account_id = ensure_account_sync(db, body["account"], body.get("account_kind") or "personal",
                                     0)
    db.conn.execute(
        "INSERT INTO ledger (entry_id, account_id, amount, kind, source, device, impressions, "
        "colour, body, created_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (entry_id, account_id, int(body["amount"]), body["kind"], body["source"],
         body.get("device"), body.get("impressions"), body.get("colour"),
         json.dumps(body.get("body") or {}, sort_keys=True), float(body["created_at"]), origin))
    return 1


# ---------------------------------------------------------------- primary: pushed batches


def apply_batch_sync(db: sqlite_utils.Database, site: str, batch_id: str,
                     events: Sequence[IncomingEvent], now: float) -> BatchOutcome:
    """Apply a site's batch: new → applied, same body → duplicate, other body → quarantined.

    The caller runs this as one transaction: a batch is applied whole or not at all.
    """
    db.conn.execute("INSERT INTO sync_sites (name) VALUES (?) ON CONFLICT(name) DO NOTHING",
                    (site,))
    site_row = _one(db, "SELECT checkpoint FROM sync_sites WHERE name = ?", (site,))
    assert site_row is not None
    stored = int(site_row["checkpoint"])
    outcome = BatchOutcome(checkpoint=stored)
    if events and events[0].seq > stored + 1:
        outcome.gap_after = stored
    newly_quarantined = 0
    # Event ids are unique within a batch (core.sync checks), so what the primary already
    # has can be read up front: one query per chunk instead of two per event.
    ids = [e.event_id for e in events]
    applied = dict(_in_chunks(db, "SELECT event_id, body_sha256 FROM sync_events "
                                  "WHERE event_id IN ({})", ids))
    in_ledger = {row[0] for row in _in_chunks(db, "SELECT entry_id, 1 FROM ledger "
                                                  "WHERE entry_id IN ({})", ids)}
    origins = sorted({e.origin for e in events if e.origin is not None})
    kinds: dict[str, set[str]] = {}
    for name, kind in _in_chunks(db, "SELECT name, kind FROM peer_kinds WHERE name IN ({})",
                                 origins):
        kinds.setdefault(name, set()).add(kind)
    accounts: dict[tuple[str, str], int] = {}
    middle = len(events) // 2
    for index, event in enumerate(events):
        if index == middle:
            failpoints.hit("primary.batch.mid_apply")
        known = applied.get(event.event_id)
        reason: str | None = None
        if known is not None:
            if known == event.sha256:
                outcome.duplicates += 1
                continue
            reason = f"event id already applied with another body (applied sha256 {known})"
        elif event.invalid is not None:
            reason = event.invalid
        elif event.origin is not None and "provider" not in kinds.get(event.origin, ()):
            reason = relay_origin_problem(event.origin, kinds.get(event.origin, set()))
        elif event.ledger is not None and event.event_id in in_ledger:
            reason = "a ledger entry with this id exists that no site event made"
        elif event.record is not None:
            # Applied here, or not at all: a conflict (a card another user holds) is the reason.
            reason = apply_record_sync(db, event.origin or site, event.event_id, event.kind,
                                       event.record)
        if reason is not None:
            cur = db.conn.execute(
                "INSERT OR IGNORE INTO sync_quarantine (event_id, site, seq, kind, body, "
                "body_sha256, reason, batch_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, site, event.seq, event.kind, event.body, event.sha256, reason,
                 batch_id, now))
            newly_quarantined += cur.rowcount
            outcome.quarantined.append({"seq": event.seq, "event_id": event.event_id,
                                        "reason": reason})
            continue
        if event.ledger is not None:
            _apply_ledger_event(db, event.origin or site, event.event_id, event.ledger,
                                accounts)
        db.conn.execute(
            "INSERT INTO sync_events (event_id, site, seq, kind, body_sha256, body, batch_id, "
            "applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, site, event.seq, event.kind, event.sha256, event.body, batch_id,
             now))
        outcome.applied += 1
    if events:
        outcome.checkpoint = events[-1].seq
    db.conn.execute(
        "UPDATE sync_sites SET checkpoint = MAX(checkpoint, ?), events_applied = events_applied + ?, "
        "duplicates = duplicates + ?, quarantined = quarantined + ? WHERE name = ?",
        (outcome.checkpoint, outcome.applied, outcome.duplicates, newly_quarantined, site))
    db.conn.execute(
        "UPDATE outage_reports SET events_merged = events_merged + ?, "
        "duplicates = duplicates + ?, quarantined = quarantined + ? "
        "WHERE site = ? AND merged_at IS NULL",
        (outcome.applied, outcome.duplicates, newly_quarantined, site))
    _add_offline_overspend(db, site, events, applied, outcome)
    return outcome


#: The reason of a relay event held until its origin is known (see `release_held_sync`).
HELD = "held: "


def relay_origin_problem(origin: str, kinds: set[str]) -> str:
    """Why a relayed event of `origin` is not applied: `origin` was seen only with other
    certificate kinds (a site: refused for good), or never (held until it connects)."""
    if kinds:
        return (f"invalid relay event: origin {origin!r} is a {'/'.join(sorted(kinds))}, "
                "not a provider (only a provider's events are relayed)")
    return (f"{HELD}relay origin {origin!r} is not a known provider (never seen with a "
            "provider certificate); applied when it connects with one")


def record_peer_sync(db: sqlite_utils.Database, name: str, kind: str, now: float) -> bool:
    """Record that `name` connected with a `kind` certificate; True the first time."""
    cur = db.conn.execute("INSERT OR IGNORE INTO peer_kinds (name, kind, first_seen) "
                          "VALUES (?, ?, ?)", (name, kind, now))
    return cur.rowcount == 1


@dataclass(frozen=True)
class Peer:
    """A pusher's certificate kind, and how a held relay event is checked again
    (`core.sync.reparse_held`) when that pusher is a provider seen for the first time."""

    kind: str
    reparse: Callable[[dict[str, Any]], IncomingEvent]


def see_peer_sync(db: sqlite_utils.Database, name: str, peer: Peer, now: float) -> int:
    """Record `name`'s certificate kind; a provider seen for the first time has the relay
    events held for it applied here, in the caller's transaction (returns how many)."""
    if record_peer_sync(db, name, peer.kind, now) and peer.kind == "provider":
        released = release_held_sync(db, name, peer.reparse, now)
        if released:
            log.info("sync: %s connected as a provider: %d relayed events held for it applied",
                     name, released)
        return released
    return 0


def release_held_sync(db: sqlite_utils.Database, origin: str,
                      reparse: Callable[[dict[str, Any]], IncomingEvent],
                      now: float) -> int:
    """Apply the relay events held for `origin` (now a known provider), oldest first, each
    as its relaying site's batch would have: `reparse` turns a held quarantine row (the
    inner event's id, kind and body, the relaying site and seq) back into the checked
    event. Returns how many were applied; the others are quarantined again with their
    reason (e.g. the provider pushed the same id with another body meanwhile)."""
    rows = [dict(r) for r in db.conn.execute(
        "SELECT id, event_id, site, seq, kind, body, batch_id FROM sync_quarantine "
        "WHERE reason LIKE 'held: %' AND substr(event_id, 1, ?) = ? ORDER BY id",
        (len(origin) + 1, origin + "/")).fetchall()]
    applied = 0
    for row in rows:
        db.conn.execute("DELETE FROM sync_quarantine WHERE id = ?", (row["id"],))
        db.conn.execute("UPDATE sync_sites SET quarantined = MAX(quarantined - 1, 0) "
                        "WHERE name = ?", (row["site"],))
        # One event per call: two held bodies under one id must not both reach sync_events.
        outcome = apply_batch_sync(db, row["site"], row["batch_id"], [reparse(row)], now)
        applied += outcome.applied
    return applied


def _add_offline_overspend(db: sqlite_utils.Database, site: str,
                           events: Sequence[IncomingEvent], known: dict[str, str],
                           outcome: BatchOutcome) -> None:
    """The outage report's "overspend allowed by policy": the `offline.over` of the ledger
    events this batch newly applied (docs/offline-allowance.md)."""
    from .allowance_store import offline_over

    refused = {q["event_id"] for q in outcome.quarantined}
    over = sum(offline_over(e.ledger.body) for e in events
               if e.ledger is not None and e.event_id not in known and e.event_id not in refused)
    if over:
        db.conn.execute("UPDATE outage_reports SET overspend = overspend + ? "
                        "WHERE site = ? AND merged_at IS NULL", (over, site))


def _in_chunks(db: sqlite_utils.Database, sql: str,
               values: Sequence[str]) -> list[tuple[Any, Any]]:
    """Run `sql` (with one `IN ({})`) over `values` in chunks below SQLite's variable cap."""
    rows: list[tuple[Any, Any]] = []
    for start in range(0, len(values), 900):
        chunk = values[start:start + 900]
        query = sql.format(",".join("?" * len(chunk)))
        rows.extend((r[0], r[1]) for r in db.conn.execute(query, chunk).fetchall())
    return rows


def _apply_ledger_event(db: sqlite_utils.Database, site: str, event_id: str,
                        event: LedgerEvent, accounts: dict[tuple[str, str], int]) -> None:
    key = (event.account, event.account_kind)
    account_id = accounts.get(key)
    if account_id is None:
        account_id = accounts[key] = ensure_account_sync(
            db, event.account, event.account_kind, None if event.account_kind == "system" else 0)
    db.conn.execute(
        "INSERT INTO ledger (entry_id, account_id, amount, kind, source, device, impressions, "
        "colour, body, created_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event_id, account_id, event.amount, event.kind, event.source, event.device,
         event.impressions, event.colour, event.body, event.created_at, site))


# ---------------------------------------------------------------- primary: the stream


def changes_since_sync(db: sqlite_utils.Database, since: int,
                       limit: int) -> tuple[list[Change], int, bool]:
    """(changes after `since`, the token to ask from next, whether more remain).

    Synapse's `get_updates_since` shape: `limited` (here `more`) says the page was cut.
    """
    rows = _q(db, "SELECT seq, kind, key, body FROM changes WHERE seq > ? ORDER BY seq LIMIT ?",
              (since, limit + 1))
    more = len(rows) > limit
    rows = rows[:limit]
    changes = [Change(r["seq"], r["kind"], r["key"], json.loads(r["body"])) for r in rows]
    token = changes[-1].token if changes else max(since, 0)
    if not changes:
        # A token past the end (a primary restored from an old backup) is answered with
        # the real end, so that the site notices and does not wait for rows that never come.
        head = latest_token_sync(db)
        token = min(token, head)
    return changes, token, more


def latest_token_sync(db: sqlite_utils.Database) -> int:
    row = _one(db, "SELECT COALESCE(MAX(seq), 0) AS t FROM changes")
    assert row is not None
    return int(row["t"])


# The snapshot, table by table: (kind, query of the rows after a rowid, the change it makes).
# Bodies have exactly the shapes the change-log triggers write (test_sync_pull checks).
def _identity_key(r: Any) -> str:
    return f"{r['username']}:{r['kind']}" + (f":{r['lookup']}" if r["kind"] == "card" else "")


def _ledger_change(r: Any, name: str) -> tuple[str, dict[str, Any]]:
    global_id = r["entry_id"] if r["origin"] is not None else f"{name}/{r['entry_id']}"
    return global_id, {
        "id": global_id, "origin": r["origin"] or name, "account": r["account"],
        "account_kind": r["account_kind"], "amount": r["amount"], "kind": r["kind"],
        "source": r["source"], "device": r["device"], "impressions": r["impressions"],
        "colour": r["colour"], "body": json.loads(r["body"]),
        # As json_object renders a REAL (15 digits, its own rounding), so that the
        # snapshot and the trigger-written change log agree to the bit.
        "created_at": json.loads(r["created_json"])["v"]}


SNAPSHOT_SECTIONS: list[tuple[str, str, Callable[[Any, str], tuple[str, dict[str, Any]]]]] = [
    ("account", "SELECT rowid AS _r, name, kind, overdraft_limit FROM accounts",
     lambda r, _: (r["name"], {"name": r["name"], "kind": r["kind"],
                               "overdraft_limit": r["overdraft_limit"]})),
    ("user", "SELECT u.rowid AS _r, u.*, a.name AS account FROM users u "
             "JOIN accounts a ON a.id = u.account_id",
     lambda r, _: (r["username"], {
         "username": r["username"], "full_name": r["full_name"], "email": r["email"],
         "account": r["account"], "disabled": r["disabled"],
         "directory_id": r["directory_id"]})),
    ("identity", "SELECT i.rowid AS _r, i.*, u.username FROM identities i "
                 "JOIN users u ON u.id = i.user_id",
     lambda r, _: (_identity_key(r), {
         "username": r["username"], "kind": r["kind"], "lookup": r["lookup"],
         "verifier": r["verifier"], "deleted": False})),
    ("device", "SELECT rowid AS _r, * FROM devices",
     lambda r, _: (r["name"], {
         "name": r["name"], "kind": r["kind"], "protocol": r["protocol"], "uri": r["uri"],
         "colour": r["colour"], "duplex": r["duplex"], "cost_policy": r["cost_policy"],
         "enabled": r["enabled"]})),
    ("cost_policy", "SELECT rowid AS _r, name, body FROM cost_policies",
     lambda r, _: (r["name"], {"name": r["name"], "policy": json.loads(r["body"])})),
    ("ledger", "SELECT l.rowid AS _r, l.*, a.name AS account, a.kind AS account_kind, "
               "json_object('v', l.created_at) AS created_json FROM ledger l "
               "JOIN accounts a ON a.id = l.account_id", _ledger_change),
]
_ROWID = {"account": "rowid", "user": "u.rowid", "identity": "i.rowid", "device": "rowid",
          "cost_policy": "rowid", "ledger": "l.rowid"}


@dataclass(frozen=True)
class SnapshotCursor:
    """Where a paged snapshot stands: the stream token of its first page, the section
    (index into SNAPSHOT_SECTIONS) and the last rowid sent. On the wire: 'T.S.R'."""

    token: int
    section: int = 0
    rowid: int = 0

    def __str__(self) -> str:
        return f"{self.token}.{self.section}.{self.rowid}"

    @classmethod
    def parse(cls, text: str) -> SnapshotCursor | None:
        parts = text.split(".")
        if len(parts) != 3 or not all(p.isdigit() and len(p) <= 19 for p in parts):
            return None
        token, section, rowid = (int(p) for p in parts)
        return cls(token, section, rowid) if section <= len(SNAPSHOT_SECTIONS) else None


def snapshot_page_sync(db: sqlite_utils.Database, after: SnapshotCursor | None,
                       limit: int | None) -> tuple[list[Change], int, SnapshotCursor | None]:
    """Up to `limit` rows of the snapshot after `after` (None: from the start), the token
    of the snapshot's first page, and the cursor of the next page (None: that was all).

    Pages are read in separate transactions, so rows may change between them; the site
    follows the stream from the first page's token once it has every page, and the
    stream replays every change made since (applying a change twice is harmless).
    """
    cursor = after or SnapshotCursor(latest_token_sync(db))
    name = state_sync(db, NAME) or "primary"
    out: list[Change] = []
    section, rowid = cursor.section, cursor.rowid
    while section < len(SNAPSHOT_SECTIONS):
        kind, sql, make = SNAPSHOT_SECTIONS[section]
        room = -1 if limit is None else limit - len(out)
        if room == 0:
            return out, cursor.token, SnapshotCursor(cursor.token, section, rowid)
        rows = _q(db, f"{sql} WHERE {_ROWID[kind]} > ? ORDER BY {_ROWID[kind]} LIMIT ?",
                  (rowid, room))
        for r in rows:
            key, body = make(r, name)
            out.append(Change(cursor.token, kind, key, body))
        if limit is not None and len(out) >= limit and rows:
            return out, cursor.token, SnapshotCursor(cursor.token, section, rows[-1]["_r"])
        section, rowid = section + 1, 0
    return out, cursor.token, None


def snapshot_sync(db: sqlite_utils.Database) -> tuple[list[Change], int]:
    """Every master-data row and ledger row, as changes, and the stream token they are at.

    Read in one transaction, so the site that applies it and then follows the stream
    from the token misses nothing and sees nothing twice (ledger rows dedup anyway).
    Bodies have exactly the shapes the change-log triggers write.
    """
    changes, token, _ = snapshot_page_sync(db, None, None)
    return changes, token


# ---------------------------------------------------------------- primary: heartbeats, reports


def heartbeat_sync(db: sqlite_utils.Database, site: str, *, mode: str, outbox: int,
                   pull_token: str | None, outage: tuple[float, float] | None,
                   now: float) -> int:
    """Record a site's heartbeat (and the outage it reports); returns the stream head."""
    db.conn.execute("INSERT INTO sync_sites (name) VALUES (?) ON CONFLICT(name) DO NOTHING",
                    (site,))
    db.conn.execute("UPDATE sync_sites SET last_seen = ?, mode = ?, outbox = ?, pull_token = ? "
                    "WHERE name = ?", (now, mode, outbox, pull_token, site))
    if outage is not None:
        db.conn.execute(
            "INSERT INTO outage_reports (site, started_at, ended_at, reported_at) "
            "VALUES (?, ?, ?, ?) ON CONFLICT(site, started_at) DO NOTHING",
            (site, outage[0], outage[1], now))
    if outbox == 0:
        db.conn.execute("UPDATE outage_reports SET merged_at = ? "
                        "WHERE site = ? AND merged_at IS NULL", (now, site))
    return latest_token_sync(db)


def table_rows_sync(db: sqlite_utils.Database, table: str) -> list[dict[str, Any]]:
    """All rows of one sync table (reports and tests)."""
    if table not in ("sync_sites", "sync_events", "sync_quarantine", "outage_reports",
                     "changes", "outbox", "replica", "sync_state", "peer_kinds"):
        raise ValueError(table)
    return [dict(r) for r in _q(db, f"SELECT * FROM {table} ORDER BY rowid")]


class SyncStore:
    """Replication's data, one committed transaction per call."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def state(self, key: str) -> str | None:
        return await self.database.run(lambda db: state_sync(db, key))

    async def set_state(self, key: str, value: str) -> None:
        await self.database.run(lambda db: set_state_sync(db, key, value))

    async def set_states(self, values: dict[str, str]) -> None:
        def work(db: sqlite_utils.Database) -> None:
            for key, value in values.items():
                set_state_sync(db, key, value)

        await self.database.run(work)

    async def outbox_batch(self, limit: int) -> list[OutboxEvent]:
        return await self.database.run(lambda db: outbox_batch_sync(db, limit))

    async def outbox_ack(self, checkpoint: int) -> int:
        return await self.database.run(lambda db: outbox_ack_sync(db, checkpoint))

    async def outbox_size(self) -> int:
        return await self.database.run(outbox_size_sync)

    async def apply_changes(self, changes: Sequence[Change], token: int, me: str,
                            snapshot_next: str | None = None) -> int:
        return await self.database.run(
            lambda db: apply_changes_sync(db, changes, token, me, snapshot_next))

    async def apply_batch(self, site: str, batch_id: str, events: Sequence[IncomingEvent],
                          now: float, peer: Peer | None = None) -> BatchOutcome:
        """Apply a batch; with `peer`, first record the pusher's certificate kind in the
        same transaction (a failed batch leaves no trace)."""
        def work(db: sqlite_utils.Database) -> BatchOutcome:
            released = see_peer_sync(db, site, peer, now) if peer is not None else 0
            outcome = apply_batch_sync(db, site, batch_id, events, now)
            outcome.released = released
            return outcome

        return await self.database.run(work)

    async def changes_since(self, since: int, limit: int) -> tuple[list[Change], int, bool]:
        return await self.database.run(lambda db: changes_since_sync(db, since, limit))

    async def snapshot(self) -> tuple[list[Change], int]:
        return await self.database.run(snapshot_sync)

    async def snapshot_page(self, after: SnapshotCursor | None, limit: int
                            ) -> tuple[list[Change], int, SnapshotCursor | None]:
        return await self.database.run(lambda db: snapshot_page_sync(db, after, limit))

    async def heartbeat(self, site: str, *, mode: str, outbox: int, pull_token: str | None,
                        outage: tuple[float, float] | None, now: float,
                        peer: Peer | None = None) -> int:
        def work(db: sqlite_utils.Database) -> int:
            if peer is not None:
                see_peer_sync(db, site, peer, now)
            return heartbeat_sync(db, site, mode=mode, outbox=outbox, pull_token=pull_token,
                                  outage=outage, now=now)

        return await self.database.run(work)

    async def rows(self, table: str) -> list[dict[str, Any]]:
        return await self.database.run(lambda db: table_rows_sync(db, table))

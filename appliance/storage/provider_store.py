"""A site's SQL for the providers that fail over to it (docs/providers.md).

A provider's batch is applied at the site in one transaction: each new event is
recorded in the site's `sync_events` (its id and the SHA-256 of its canonical body,
as the primary records them), its charge enters the site's ledger under the
provider's id with `origin` = the provider, and a `relay` event enters the site's own
outbox, to be forwarded to the primary under the provider's id. The ledger row has an
origin, so migration 0003's outbox trigger leaves it alone: the relay row is the one
and only report of it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import sqlite_utils

from .store import _one
from .sync_store import BatchOutcome, IncomingEvent, _apply_ledger_event, _in_chunks

RELAY = "relay"


def relay_event_id(site: str, event_id: str) -> str:
    """The site's outbox id for a provider's event: `<site>/relay:<provider>/<entry id>`."""
    return f"{site}/{RELAY}:{event_id}"


def accept_provider_batch_sync(db: sqlite_utils.Database, site: str, provider: str,
                               batch_id: str, events: Sequence[IncomingEvent],
                               now: float) -> BatchOutcome:
    """Apply a provider's batch at the site `site`: new → ledger + relay outbox row,
    same body → duplicate, other body or unusable → quarantined (at the site)."""
    db.conn.execute("INSERT INTO sync_sites (name) VALUES (?) ON CONFLICT(name) DO NOTHING",
                    (provider,))
    row = _one(db, "SELECT checkpoint FROM sync_sites WHERE name = ?", (provider,))
    assert row is not None
    outcome = BatchOutcome(checkpoint=int(row["checkpoint"]))
    ids = [e.event_id for e in events]
    known = dict(_in_chunks(db, "SELECT event_id, body_sha256 FROM sync_events "
                                "WHERE event_id IN ({})", ids))
    ledger_origin = dict(_in_chunks(db, "SELECT entry_id, COALESCE(origin, '') FROM ledger "
                                        "WHERE entry_id IN ({})", ids))
    accounts: dict[tuple[str, str], int] = {}
    newly_quarantined = 0
    for event in events:
        reason: str | None = None
        seen = known.get(event.event_id)
        if seen is not None:
            if seen == event.sha256:
                outcome.duplicates += 1
                continue
            reason = f"event id already received with another body (sha256 {seen})"
        elif event.invalid is not None:
            reason = event.invalid
        elif event.origin is not None:
            reason = "a provider pushes its own events; it does not relay"
        elif event.ledger is not None and event.event_id in ledger_origin \
                and ledger_origin[event.event_id] != provider:
            reason = "a ledger entry with this id exists that this provider did not make"
        if reason is not None:
            cur = db.conn.execute(
                "INSERT OR IGNORE INTO sync_quarantine (event_id, site, seq, kind, body, "
                "body_sha256, reason, batch_id, received_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (event.event_id, provider, event.seq, event.kind, event.body, event.sha256,
                 reason, batch_id, now))
            newly_quarantined += cur.rowcount
            outcome.quarantined.append({"seq": event.seq, "event_id": event.event_id,
                                        "reason": reason})
            continue
        if event.ledger is not None and event.event_id in ledger_origin:
            # The site pulled this very row from the primary, which had it from the provider
            # directly: the primary is charged already; nothing to relay.
            outcome.duplicates += 1
        else:
            # A charge also enters the site's ledger (offline balances count it); every
            # event, charge or not (a job record...), is relayed to the primary as it is.
            if event.ledger is not None:
                _apply_ledger_event(db, provider, event.event_id, event.ledger, accounts)
            relay = {"origin": provider, "event_id": event.event_id, "kind": event.kind,
                     "body": json.loads(event.body)}
            db.conn.execute(
                "INSERT INTO outbox (event_id, kind, body, created_at) VALUES (?, ?, ?, ?)",
                (relay_event_id(site, event.event_id), RELAY,
                 json.dumps(relay, sort_keys=True, separators=(",", ":")), now))
            outcome.applied += 1
        db.conn.execute(
            "INSERT INTO sync_events (event_id, site, seq, kind, body_sha256, body, batch_id, "
            "applied_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (event.event_id, provider, event.seq, event.kind, event.sha256, event.body,
             batch_id, now))
    if events:
        outcome.checkpoint = events[-1].seq
    db.conn.execute(
        "UPDATE sync_sites SET checkpoint = MAX(checkpoint, ?), "
        "events_applied = events_applied + ?, duplicates = duplicates + ?, "
        "quarantined = quarantined + ? WHERE name = ?",
        (outcome.checkpoint, outcome.applied, outcome.duplicates, newly_quarantined, provider))
    return outcome


def relayed_sync(db: sqlite_utils.Database) -> list[dict[str, Any]]:
    """Provider events this site has received (reports and tests)."""
    return [dict(r) for r in db.conn.execute(
        "SELECT event_id, site AS provider, seq, applied_at FROM sync_events "
        "ORDER BY rowid").fetchall()]

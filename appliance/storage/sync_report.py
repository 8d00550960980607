"""What `outpost sync` shows an operator, read from the database a daemon is running on
(SQLite WAL: a reader never blocks it). Plain dicts, so the command line can print them
as a table or as JSON; no query here writes.

At a site: its link mode, how much waits in its outbox and since when, the checkpoint
and pull token, its offline grants. At the primary: each site's last report, the outage
reports (what was merged, ignored as duplicate, quarantined, overspent by policy), and
the quarantine, where relay events for a provider the primary has not met yet wait
(`held`) and events that will never apply are kept for a person to look at.
"""

from __future__ import annotations

import time
from typing import Any

import sqlite_utils

from .sync_store import HELD, MODE, MODE_SINCE, NAME, PULL_TOKEN, PUSH_CHECKPOINT, ROLE


def _state(db: sqlite_utils.Database) -> dict[str, str]:
    return {r[0]: r[1] for r in db.conn.execute("SELECT key, value FROM sync_state")}


def _float(value: str | None) -> float | None:
    return float(value) if value not in (None, "") else None


def status_sync(db: sqlite_utils.Database, now: float | None = None) -> dict[str, Any]:
    """The appliance's own side of sync: role and name, and for a site (or provider) its
    mode, outbox and grants; for the primary, one line per site it has heard from."""
    now = time.time() if now is None else now
    state = _state(db)
    role = state.get(ROLE)
    status: dict[str, Any] = {"role": role, "name": state.get(NAME)}
    if role == "primary":
        status["sites"] = sites_sync(db, now)
        status["quarantined"] = db.conn.execute(
            "SELECT COUNT(*) FROM sync_quarantine WHERE reason NOT LIKE ?",
            (HELD + "%",)).fetchone()[0]
        status["held"] = db.conn.execute(
            "SELECT COUNT(*) FROM sync_quarantine WHERE reason LIKE ?",
            (HELD + "%",)).fetchone()[0]
        return status
    count, oldest = db.conn.execute("SELECT COUNT(*), MIN(created_at) FROM outbox").fetchone()
    since = _float(state.get(MODE_SINCE))
    grants, granted = db.conn.execute(
        "SELECT COUNT(*), COALESCE(SUM(amount), 0) FROM offline_grants "
        "WHERE state = 'active' AND expires_at > ?", (now,)).fetchone()
    status.update({
        "mode": state.get(MODE),
        "mode_since": since,
        "outbox": count,
        "outbox_oldest_age": None if oldest is None else round(max(0.0, now - oldest), 1),
        "push_checkpoint": int(state.get(PUSH_CHECKPOINT) or 0),
        "pull_token": state.get(PULL_TOKEN),
        "offline_grants": grants,
        "offline_granted": granted,
    })
    return status


def sites_sync(db: sqlite_utils.Database, now: float | None = None) -> list[dict[str, Any]]:
    """The primary's view of each site (and provider): what it last reported and when."""
    now = time.time() if now is None else now
    rows = db.conn.execute(
        "SELECT name, checkpoint, last_seen, mode, outbox, events_applied, duplicates, "
        "quarantined FROM sync_sites ORDER BY name").fetchall()
    sites = []
    for r in rows:
        site = dict(zip(("name", "checkpoint", "last_seen", "mode", "outbox", "events_applied",
                         "duplicates", "quarantined"), tuple(r), strict=True))
        site["last_seen_age"] = (None if site["last_seen"] is None
                                 else round(max(0.0, now - site["last_seen"]), 1))
        sites.append(site)
    return sites


def outages_sync(db: sqlite_utils.Database, site: str | None = None) -> list[dict[str, Any]]:
    """The primary's outage reports, oldest first (`merged_at` None: still merging)."""
    columns = ("site", "started_at", "ended_at", "reported_at", "merged_at", "events_merged",
               "duplicates", "quarantined", "overspend")
    sql = f"SELECT {', '.join(columns)} FROM outage_reports"
    args: tuple[Any, ...] = ()
    if site is not None:
        sql += " WHERE site = ?"
        args = (site,)
    rows = db.conn.execute(sql + " ORDER BY started_at, site", args).fetchall()
    return [dict(zip(columns, tuple(r), strict=True)) for r in rows]


def quarantine_sync(db: sqlite_utils.Database, site: str | None = None,
                    held: bool | None = None) -> list[dict[str, Any]]:
    """Events the primary did not apply, oldest first: `held` ones (a relay for a provider
    not met yet: applied by themselves when it connects) and the others (kept for a person:
    same id with another body, or a body that cannot apply). Bodies are left out: they
    may name users; the database has them."""
    sql = ("SELECT id, event_id, site, seq, kind, reason, received_at FROM sync_quarantine "
           "WHERE 1 = 1")
    args: list[Any] = []
    if site is not None:
        sql += " AND site = ?"
        args.append(site)
    if held is not None:
        sql += " AND reason LIKE ?" if held else " AND reason NOT LIKE ?"
        args.append(HELD + "%")
    rows = db.conn.execute(sql + " ORDER BY id", args).fetchall()
    entries = []
    for r in rows:
        entry = dict(zip(("id", "event_id", "site", "seq", "kind", "reason", "received_at"),
                         tuple(r), strict=True))
        entry["held"] = entry["reason"].startswith(HELD)
        entries.append(entry)
    return entries

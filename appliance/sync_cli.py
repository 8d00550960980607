"""`outpost sync`: what replication is doing, for the person looking after a site or the
primary (docs/wire/sync.md). Read-only; safe beside the running daemon.

    outpost sync status     --config FILE [--json]   # a site: mode, outbox, grants;
                                                     # the primary: every site's last report
    outpost sync outages    --config primary.toml [--site NAME] [--json]
    outpost sync quarantine --config primary.toml [--site NAME] [--held | --not-held] [--json]

Exit status: 0, 2 usage or configuration error (or no database yet: the daemon has not
started with this configuration).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from appliance.cli import config_option, subcommands


def register(commands: Any) -> None:
    sync = commands.add_parser("sync", help="replication: status, outage reports, quarantine")
    actions = subcommands(sync, "sync_command")
    status = actions.add_parser("status", help="this appliance's side of sync")
    config_option(status)
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=status_command)
    outages = actions.add_parser("outages", help="outage reports (primary)")
    config_option(outages)
    outages.add_argument("--site", help="only this site")
    outages.add_argument("--json", action="store_true", help="one JSON array")
    outages.set_defaults(func=outages_command)
    quarantine = actions.add_parser(
        "quarantine", help="events not applied: held relays and quarantined events (primary)")
    config_option(quarantine)
    quarantine.add_argument("--site", help="only events pushed by this site")
    which = quarantine.add_mutually_exclusive_group()
    which.add_argument("--held", dest="held", action="store_const", const=True,
                       help="only relays waiting for their provider to connect")
    which.add_argument("--not-held", dest="held", action="store_const", const=False,
                       help="only events that will not apply by themselves")
    quarantine.add_argument("--json", action="store_true", help="one JSON array")
    quarantine.set_defaults(func=quarantine_command, held=None)


def _read(args: argparse.Namespace, primary_only: bool,
          work: Callable[[Any], Any]) -> tuple[int, Any]:
    """Load the configuration and run `work(db)` on its database, read-only."""
    from appliance.config import ConfigError, load
    from appliance.storage.database import connect

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2, None
    if primary_only and config.role != "primary":
        print(f"{args.config}: this is role {config.role!r}; outage reports and the "
              "quarantine are kept at the primary", file=sys.stderr)
        return 2, None
    path = config.database_path
    if not path.exists():
        print(f"no database at {path}: the daemon has not started with this configuration",
              file=sys.stderr)
        return 2, None
    import sqlite_utils

    conn = connect(path)
    try:
        return 0, work(sqlite_utils.Database(conn))
    finally:
        conn.close()


def _when(value: float | None) -> str:
    if value is None:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(value))


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 120:
        return f"{seconds:.0f}s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f}m ago"
    return f"{seconds / 3600:.1f}h ago"


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[str(h) for h in headers]] + [["-" if v is None else str(v) for v in r]
                                           for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
                     for row in cells)


def status_command(args: argparse.Namespace) -> int:
    from appliance.storage.sync_report import status_sync

    code, status = _read(args, False, status_sync)
    if code:
        return code
    if args.json:
        print(json.dumps(status))
        return 0
    print(f"{status['name']} ({status['role']})")
    if status["role"] == "primary":
        print(f"quarantined: {status['quarantined']}   held relays: {status['held']}")
        if not status["sites"]:
            print("no site has synced yet")
            return 0
        print(_table(("site", "mode", "last seen", "outbox", "checkpoint", "applied",
                      "duplicates", "quarantined"),
                     [(s["name"], s["mode"], _age(s["last_seen_age"]), s["outbox"],
                       s["checkpoint"], s["events_applied"], s["duplicates"],
                       s["quarantined"]) for s in status["sites"]]))
        return 0
    oldest = status["outbox_oldest_age"]
    print(f"mode: {status['mode'] or 'not started'} since {_when(status['mode_since'])}")
    print(f"outbox: {status['outbox']} waiting"
          + (f", oldest {_age(oldest)}" if oldest is not None else ""))
    print(f"pushed up to: {status['push_checkpoint']}   pulled up to: "
          f"{status['pull_token'] or '-'}")
    print(f"offline grants: {status['offline_grants']} active, "
          f"{status['offline_granted']} in total (minor units)")
    return 0


def _listing(args: argparse.Namespace, work: Callable[[Any], list[dict[str, Any]]],
             empty: str, headers: Sequence[str],
             cells: Callable[[dict[str, Any]], Sequence[Any]]) -> int:
    """A primary's list: a JSON array, or a table (or `empty` when there is nothing)."""
    code, rows = _read(args, True, work)
    if code:
        return code
    if args.json:
        print(json.dumps(rows))
    elif not rows:
        print(empty)
    else:
        print(_table(headers, [cells(row) for row in rows]))
    return 0


def outages_command(args: argparse.Namespace) -> int:
    from appliance.storage.sync_report import outages_sync

    return _listing(
        args, lambda db: outages_sync(db, args.site), "no outage reported",
        ("site", "offline from", "to", "merged", "events", "duplicates", "quarantined",
         "overspend"),
        lambda o: (o["site"], _when(o["started_at"]), _when(o["ended_at"]),
                   _when(o["merged_at"]) if o["merged_at"] is not None else "merging",
                   o["events_merged"], o["duplicates"], o["quarantined"], o["overspend"]))


def quarantine_command(args: argparse.Namespace) -> int:
    from appliance.storage.sync_report import quarantine_sync

    return _listing(
        args, lambda db: quarantine_sync(db, args.site, args.held), "nothing quarantined or held",
        ("id", "received", "site", "event", "kind", "reason"),
        lambda e: (e["id"], _when(e["received_at"]), e["site"], e["event_id"], e["kind"],
                   e["reason"]))

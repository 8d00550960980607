"""Merge time of an offline outbox, and of replaying it (every event already applied).

Not a test: it prints figures. One process: a site database with N offline charges
(committed as the site commits them: ledger row and outbox row together), a primary
database, and the real sync code between them over the in-process loopback
transport (no sockets, no TLS: this measures storage and apply, not the WAN).

    .venv/bin/python benchmarks/sync_merge.py [--events 100000] [--batch 500] [--dir DIR]

Reports: time to drain the outbox into the primary (merge), time to push the same
events again (replay: all duplicates), and events per second for each.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--dir", type=Path, default=None,
                        help="where the databases go (default: a temporary folder)")
    args = parser.parse_args()

    from twisted.internet import asyncioreactor

    asyncioreactor.install(asyncio.new_event_loop())
    from twisted.internet import defer, reactor

    folder = args.dir or Path(tempfile.mkdtemp(prefix="outpost-sync-bench-"))
    result: dict[str, float] = {}

    async def run() -> None:
        sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
        from tests.unit.sync_helpers import close, make_primary, make_site

        primary = make_primary(folder)
        site = make_site(folder, primary, batch=args.batch)
        started = time.perf_counter()
        for start in range(0, args.events, 10_000):
            site.charge(min(10_000, args.events - start), start=start)
        result["write_s"] = time.perf_counter() - started
        outbox = site.database.run_sync(
            lambda db: db.conn.execute("SELECT seq, event_id, kind, body FROM outbox "
                                       "ORDER BY seq").fetchall())
        started = time.perf_counter()
        assert await site.sync.push_all()
        result["merge_s"] = time.perf_counter() - started
        assert primary.count("SELECT COUNT(*) FROM ledger") == args.events
        # Replay: the same events again, as a site restored from a backup would send them.
        batches = [outbox[i:i + args.batch] for i in range(0, len(outbox), args.batch)]
        started = time.perf_counter()
        duplicates = 0
        for rows in batches:
            answer = await site.sync.client.push({
                "site": site.name, "batch_id": f"replay-{rows[0][0]}",
                "events": [{"seq": r[0], "event_id": r[1], "kind": r[2],
                            "body": json.loads(r[3])} for r in rows]})
            duplicates += answer["duplicates"]
        result["replay_s"] = time.perf_counter() - started
        assert duplicates == args.events
        assert primary.count("SELECT COUNT(*) FROM ledger") == args.events
        close(site, primary)

    def done(_: object) -> None:
        reactor.stop()

    def failed(failure: object) -> None:
        print(failure, file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()).addCallbacks(done, failed))
    reactor.run()
    if args.dir is None:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
    if "replay_s" not in result:
        return 1
    n = args.events
    print(json.dumps({
        "events": n, "batch": args.batch, "folder": str(folder),
        "site_write_s": round(result["write_s"], 2),
        "merge_s": round(result["merge_s"], 2),
        "merge_events_per_s": round(n / result["merge_s"]),
        "replay_s": round(result["replay_s"], 2),
        "replay_events_per_s": round(n / result["replay_s"]),
    }))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

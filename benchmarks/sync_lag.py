"""Online sync lag: from a copy committed at the site to its row applied at the primary.

Not a test: it prints figures. Real processes (`outpost serve` for a primary and a
site, mutual TLS on loopback, the site's [primary] settings as given), copies
reported over the device API at a steady rate; the lag of each is the primary's
`sync_events.applied_at` minus the site's ledger `created_at` (one machine, one
clock).

    .venv/bin/python benchmarks/sync_lag.py [--copies 300] [--rate 20]
        [--heartbeat 5] [--push-interval 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=300)
    parser.add_argument("--rate", type=float, default=20.0, help="copies per second")
    parser.add_argument("--heartbeat", type=float, default=5.0)
    parser.add_argument("--push-interval", type=float, default=1.0)
    args = parser.parse_args()

    from tests.integration.test_sync_processes import (
        api,
        copy,
        deployment,
        query,
        serve,
        stop,
        wait_for,
    )

    folder = Path(tempfile.mkdtemp(prefix="outpost-sync-lag-"))
    d = deployment(folder, link=f"heartbeat_interval = {args.heartbeat}\n"
                                f"push_interval = {args.push_interval}\n")
    primary = serve(d["primary_toml"], folder / "hq.log")
    site = serve(d["site_toml"], folder / "branch.log")
    try:
        wait_for(lambda: query(d["site_db"], "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site", timeout=60)
        status, session = api(d["api_port"], "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, session
        started = time.monotonic()
        for i in range(args.copies):
            delay = started + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            assert copy(d["api_port"], session["session"], f"lag{i}")[0] == 200
        wait_for(lambda: query(d["hq_db"], "SELECT COUNT(*) FROM sync_events")
                 == [(args.copies,)], "every copy at the primary", timeout=120)
        lags = sorted(r[0] for r in query(
            d["hq_db"], "SELECT applied_at - json_extract(body, '$.created_at') "
                        "FROM sync_events"))
    finally:
        stop(site)
        stop(primary)

    def pct(p: float) -> float:
        return lags[min(len(lags) - 1, int(p * len(lags)))]

    print(json.dumps({
        "copies": args.copies, "rate_per_s": args.rate, "heartbeat_interval": args.heartbeat,
        "push_interval": args.push_interval,
        "lag_p50_s": round(pct(0.50), 3), "lag_p99_s": round(pct(0.99), 3),
        "lag_max_s": round(lags[-1], 3), "lag_mean_s": round(statistics.mean(lags), 3),
        "folder": str(folder)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

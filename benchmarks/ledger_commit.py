"""Durable charges per second: one at a time vs concurrent (group commit), against raw fdatasync.

Every charge is a usage row plus a ledger row committed with WAL and
synchronous=FULL before its Deferred fires. Prints figures; decides nothing.

    .venv/bin/python benchmarks/ledger_commit.py [--charges 2000]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from twisted.internet import asyncioreactor

asyncioreactor.install()

from twisted.internet import defer, reactor, task  # noqa: E402

from appliance.storage.database import Database  # noqa: E402
from appliance.storage.store import SiteStore, add_user_sync  # noqa: E402


def raw_fdatasync_rate(folder: Path, n: int = 500) -> float:
    path = folder / "raw"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    started = time.perf_counter()
    for _ in range(n):
        os.write(fd, b"x" * 200)
        os.fdatasync(fd)
    os.close(fd)
    return n / (time.perf_counter() - started)


async def main(charges: int) -> None:
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as folder:
        database = Database(Path(folder) / "bench.db", reactor)
        database.open()
        store = SiteStore(database)
        user = database.run_sync(lambda db: add_user_sync(db, "u", "U", "", [], 10**9))

        def charge(i: int, tag: str) -> defer.Deferred:
            return defer.ensureDeferred(store.post_usage(
                usage_id=f"{tag}:{i}", device="mfd-1", user_id=user.id,
                account_id=user.account_id, kind="copy", pages=1, colour=False,
                sides="one-sided", cost=10, body={"i": i}))

        started = time.perf_counter()
        for i in range(charges):
            await charge(i, "seq")
        sequential = charges / (time.perf_counter() - started)

        before = list(database.stats)
        started = time.perf_counter()
        await defer.gatherResults([charge(i, "par") for i in range(charges)])
        concurrent = charges / (time.perf_counter() - started)
        transactions = database.stats[0] - before[0]
        raw = raw_fdatasync_rate(Path(folder))
        database.close()
    print(f"raw fdatasync on this disk:            {raw:8.0f} /s")
    print(f"durable charges, one at a time:        {sequential:8.0f} /s "
          f"({sequential / raw:.2f}x raw fdatasync)")
    print(f"durable charges, {charges} concurrent:     {concurrent:8.0f} /s "
          f"({concurrent / sequential:.1f}x one at a time; {charges} charges in "
          f"{transactions} commits)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--charges", type=int, default=2000)
    args = parser.parse_args()
    task.react(lambda _r: defer.ensureDeferred(main(args.charges)))

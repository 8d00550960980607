"""The SQLite database: opening, migrating, and running work off the reactor thread.

Every connection is WAL with `synchronous=FULL`, because a charge or a job is
acknowledged to a device only after its commit, and that promise must survive
a power cut, not only a process crash. (`synchronous` is per connection, so it
is set on each one we open.)

All writes go through one thread: SQLite allows one writer at a time anyway,
and a single writer makes the order of commits the order of acknowledgements.
"""

from __future__ import annotations

import logging
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils
from twisted.internet import defer
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from appliance import failpoints
from appliance.storage.disk import as_disk_full

log = logging.getLogger(__name__)

T = TypeVar("T")

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")


def connect(path: Path) -> sqlite3.Connection:
    """A connection with the durability settings every Outpost connection needs."""
    conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=30)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    return conn


def migrations() -> list[tuple[int, str, str]]:
    """(version, file name, SQL) for every shipped migration, in order."""
    found = []
    folder = resources.files("appliance.storage") / "migrations"
    for entry in folder.iterdir():
        match = _MIGRATION_NAME.match(entry.name)
        if match:
            found.append((int(match.group(1)), entry.name, entry.read_text(encoding="utf-8")))
    found.sort()
    versions = [v for v, _, _ in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration files are not numbered 1..n: {versions}")
    return found


def schema_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def migrate(path: Path) -> int:
    """Bring the database at `path` to the newest schema; return the version.

    An existing database is copied (with SQLite's online backup, so the copy is
    consistent) to `<name>.v<N>.bak` before the first migration that changes it,
    so that a failed upgrade can be undone by hand.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    existed = path.exists() and path.stat().st_size > 0
    conn = connect(path)
    try:
        current = schema_version(conn)
        pending = [m for m in migrations() if m[0] > current]
        if pending and existed:
            backup = path.with_name(f"{path.name}.v{current}.bak")
            target = sqlite3.connect(str(backup))
            try:
                conn.backup(target)
            finally:
                target.close()
            _fsync_path(backup)
            log.info("backed up schema v%d to %s before migrating", current, backup)
        for version, name, sql in pending:
            log.info("migrating %s to schema v%d (%s)", path, version, name)
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _statements(sql):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version={version:d}")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            current = version
        return current
    finally:
        conn.close()


def _statements(sql: str) -> list[str]:
    """Split a migration into statements (executescript would commit on its own)."""
    statements, buffer = [], ""
    for line in sql.splitlines(keepends=True):
        buffer += line
        if sqlite3.complete_statement(buffer):
            if buffer.strip():
                statements.append(buffer)
            buffer = ""
    if buffer.strip() and not buffer.strip().startswith("--"):
        raise RuntimeError("migration ends with an incomplete statement")
    return statements


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Database:
    """A migrated SQLite file and the one thread that touches it.

    `run(work)` calls `work(db)` in the database thread and fires its Deferred
    only after the transaction that holds it has committed, i.e. after SQLite's
    fsync: callers acknowledge on that callback.

    Group commit: requests that arrive while a commit is under way are run
    together in the next transaction, each inside its own SAVEPOINT (so one
    that fails is rolled back alone and gets its own error), and share one
    COMMIT and one fsync. Under load this turns N fsyncs into one without
    weakening any acknowledgement.
    """

    #: At most this many requests share one transaction (bounds its latency).
    MAX_GROUP = 256

    def __init__(self, path: Path, reactor: Any) -> None:
        self.path = path
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=1, maxthreads=1, name="outpost-db")
        self._conn: sqlite3.Connection | None = None
        self.db: sqlite_utils.Database | None = None
        self._queue: list[tuple[Callable[[sqlite_utils.Database], Any], defer.Deferred[Any]]] = []
        self._lock = threading.Lock()
        #: Held by whichever thread has a transaction open on the one connection: the
        #: database thread, or a `run_sync` caller (start-up, CLI tools, tests reading
        #: state while the daemon runs). Without it the two could interleave BEGINs.
        self._connection_lock = threading.Lock()
        self._draining = False
        #: (transactions, requests) committed so far: what group commit saved.
        self.stats = [0, 0]

    def open(self) -> None:
        migrate(self.path)
        self._conn = connect(self.path)
        self.db = sqlite_utils.Database(self._conn)
        self._pool.start()
        self._reactor.addSystemEventTrigger("during", "shutdown", self.close)

    def close(self) -> None:
        if self._pool.started:
            self._pool.stop()
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _transact(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        assert self._conn is not None and self.db is not None, "database not open"
        conn = self._conn
        with self._connection_lock:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(self.db)
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
            return result

    def run(self, work: Callable[[sqlite_utils.Database], T]) -> defer.Deferred[T]:
        """Run `work` in a committed transaction in the database thread (see group commit)."""
        d: defer.Deferred[T] = defer.Deferred()
        with self._lock:
            self._queue.append((work, d))
            start = not self._draining
            self._draining = True
        if start:
            self._pool.callInThread(self._drain)
        return d

    def _drain(self) -> None:
        """Database thread: commit queued requests in groups until the queue is empty."""
        while True:
            with self._lock:
                group = self._queue[: self.MAX_GROUP]
                del self._queue[: self.MAX_GROUP]
                if not group:
                    self._draining = False
                    return
            with self._connection_lock:
                outcomes = self._commit_group(group)
            for (_, d), outcome in zip(group, outcomes, strict=True):
                if isinstance(outcome, Failure):
                    self._reactor.callFromThread(d.errback, outcome)
                else:
                    self._reactor.callFromThread(d.callback, outcome)

    def _commit_group(
        self, group: list[tuple[Callable[[sqlite_utils.Database], Any], defer.Deferred[Any]]]
    ) -> list[Any]:
        assert self._conn is not None and self.db is not None, "database not open"
        conn = self._conn
        started = time.monotonic()
        outcomes: list[Any] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            for work, _ in group:
                conn.execute("SAVEPOINT request")
                try:
                    outcomes.append(work(self.db))
                except Exception as exc:
                    outcomes.append(Failure(as_disk_full(exc)))
                    conn.execute("ROLLBACK TO request")
                conn.execute("RELEASE request")
            conn.execute("COMMIT")
            failpoints.hit("db.after_commit")
        except Exception as exc:
            # The transaction itself failed (disk full, I/O error): nothing in it is
            # durable, so nothing may be acknowledged. A full disk is told as DiskFull.
            failure = Failure(as_disk_full(exc))
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            return [failure] * len(group)
        self.stats[0] += 1
        self.stats[1] += len(group)
        elapsed = time.monotonic() - started
        if elapsed > 1.0:
            log.warning("slow transaction: %.2fs for %d requests", elapsed, len(group))
        return outcomes

    def run_sync(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        """The same, on the calling thread: for start-up and CLI tools, never the reactor.

        Safe while the database thread is busy (it waits for the connection), but it
        blocks its caller for that long, which is why the reactor must not use it."""
        return self._transact(work)

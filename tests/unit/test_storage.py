"""The database: durability settings, migrations with a backup, append-only idempotent ledger."""

import sqlite3

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.core.model import JobOptions, JobState
from appliance.storage import database as dbmod
from appliance.storage.database import Database, connect, migrate
from appliance.storage.store import NewIdentity, SiteStore, add_user_sync


@pytest.fixture
def store(tmp_path):
    database = Database(tmp_path / "site.sqlite3", reactor)
    database.open()
    yield SiteStore(database)
    database.close()


def test_every_connection_is_wal_with_synchronous_full(tmp_path):
    migrate(tmp_path / "a.db")
    conn = connect(tmp_path / "a.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_migrate_is_versioned_and_backs_up_an_existing_database(tmp_path, monkeypatch):
    path = tmp_path / "site.db"
    assert migrate(path) == len(dbmod.migrations())
    assert not list(tmp_path.glob("*.bak")), "a new database needs no backup"
    conn = connect(path)
    conn.execute("INSERT INTO accounts (name, kind, created_at) VALUES ('x', 'shared', 0)")
    conn.close()
    shipped = dbmod.migrations()
    extra = (len(shipped) + 1, f"{len(shipped) + 1:04d}_test.sql",
             "CREATE TABLE extra (id INTEGER PRIMARY KEY);")
    monkeypatch.setattr(dbmod, "migrations", lambda: [*shipped, extra])
    assert migrate(path) == len(shipped) + 1
    backups = list(tmp_path.glob("site.db.v*.bak"))
    assert len(backups) == 1
    old = sqlite3.connect(backups[0])
    assert old.execute("SELECT name FROM accounts").fetchall() == [("x",)]
    assert old.execute("PRAGMA user_version").fetchone()[0] == len(shipped)
    assert migrate(path) == len(shipped) + 1, "migrating twice changes nothing"


def test_a_failing_migration_leaves_the_old_schema(tmp_path, monkeypatch):
    path = tmp_path / "site.db"
    migrate(path)
    shipped = dbmod.migrations()
    bad = (len(shipped) + 1, "bad.sql", "CREATE TABLE t1 (id INTEGER);\nNOT SQL;")
    monkeypatch.setattr(dbmod, "migrations", lambda: [*shipped, bad])
    with pytest.raises(sqlite3.OperationalError):
        migrate(path)
    conn = connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == len(shipped)
    assert conn.execute("SELECT name FROM sqlite_master WHERE name = 't1'").fetchone() is None


def test_the_ledger_is_append_only(tmp_path):
    path = tmp_path / "site.db"
    migrate(path)
    conn = connect(path)
    conn.execute("INSERT INTO accounts (id, name, kind, created_at) VALUES (1, 'a', 'shared', 0)")
    conn.execute("INSERT INTO ledger (entry_id, account_id, amount, kind, source, created_at) "
                 "VALUES ('e1', 1, 5, 'credit', 'admin', 0)")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("UPDATE ledger SET amount = 500")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("DELETE FROM ledger")
    with pytest.raises(sqlite3.IntegrityError):
        conn.execute("INSERT INTO ledger (entry_id, account_id, amount, kind, source, "
                     "created_at) VALUES ('e1', 1, 5, 'credit', 'admin', 0)")


@pytest_twisted.ensureDeferred
async def test_usage_is_charged_once_per_device_id_and_conflicts_are_refused(store):
    user = store.database.run_sync(lambda db: add_user_sync(db, "alice", "Alice", "", [], 1000))
    kwargs = dict(usage_id="mfd-1:copy:1", device="mfd-1", user_id=user.id,
                  account_id=user.account_id, kind="copy", pages=3, colour=False,
                  sides="one-sided", cost=30, body={"pages": 3})
    first = await store.post_usage(**kwargs)
    again = await store.post_usage(**kwargs)
    assert (first.inserted, first.balance) == (True, 970)
    assert (again.inserted, again.balance, again.body_matches) == (False, 970, True)
    other = await store.post_usage(**{**kwargs, "body": {"pages": 4}})
    assert not other.body_matches and other.balance == 970
    assert len(await store.ledger_entries(user.account_id)) == 2  # seed credit + one charge


@pytest_twisted.ensureDeferred
async def test_finish_print_charges_once_per_attempt_entry_id(store):
    user = store.database.run_sync(lambda db: add_user_sync(db, "bob", "Bob", "", [], 500))
    job = await store.insert_job(
        uuid="u1", queue="findme", owner="bob", user_id=user.id, name="x", document_format="a",
        spool_name="s", size=1, pages=3, colour=False, analysed=True, options=JobOptions(),
        state=JobState.PROCESSING, state_reasons=(), expires_at=None)
    args = dict(entry_id="print:u1:1", account_id=user.account_id, amount=30, impressions=3,
                colour=False, device="mfd-1", completed=True, state_message="", body={})
    done, ledger = await store.finish_print(job.id, **args)
    assert (done.state, done.charged, ledger.inserted, ledger.balance) == (
        JobState.COMPLETED, 30, True, 470)
    _, replay = await store.finish_print(job.id, **args)
    assert (replay.inserted, replay.balance) == (False, 470)


@pytest_twisted.ensureDeferred
async def test_card_lookup_uses_the_index(store):
    store.database.run_sync(lambda db: add_user_sync(
        db, "carol", "Carol", "", [NewIdentity("card", "ab" * 32, None),
                                   NewIdentity("pin", None, "$argon2id$x")], 0))
    found = await store.user_by_card("ab" * 32)
    assert found is not None and found[0].username == "carol" and found[1] == "$argon2id$x"
    plan = store.database.run_sync(lambda db: db.conn.execute(
        "EXPLAIN QUERY PLAN SELECT u.* FROM identities i JOIN users u ON u.id = i.user_id "
        "WHERE i.kind = 'card' AND i.lookup = ?", ("x",)).fetchall())
    text = " ".join(str(tuple(r)) for r in plan)
    assert "identities_card_lookup" in text and "SCAN" not in text


@pytest_twisted.ensureDeferred
async def test_group_commit_shares_transactions_and_isolates_a_failing_request(tmp_path):
    from twisted.internet import defer

    database = Database(tmp_path / "group.db", reactor)
    database.open()
    try:
        def insert(i):
            def work(db):
                if i == 7:
                    db.conn.execute("INSERT INTO accounts (name, kind, created_at) "
                                    "VALUES ('a7', 'shared', 0)")
                    raise ValueError("request 7 fails after writing")
                db.conn.execute("INSERT INTO accounts (name, kind, created_at) VALUES (?, ?, 0)",
                                (f"a{i}", "shared"))
                return i
            return work

        results = await defer.DeferredList([database.run(insert(i)) for i in range(200)],
                                           consumeErrors=True)
        ok = [value for success, value in results if success]
        failed = [value for success, value in results if not success]
        assert ok == [i for i in range(200) if i != 7]
        assert len(failed) == 1 and failed[0].check(ValueError)
        names = database.run_sync(lambda db: {r[0] for r in db.conn.execute(
            "SELECT name FROM accounts")})
        assert names == {f"a{i}" for i in range(200) if i != 7}, "7 rolled back alone"
        transactions, requests = database.stats
        assert requests == 200 and transactions < 200, "concurrent requests shared commits"
    finally:
        database.close()


@pytest_twisted.ensureDeferred
async def test_run_sync_waits_for_a_transaction_open_in_the_database_thread(tmp_path):
    """A reader on another thread (start-up code, a CLI tool, a test checking state while
    the daemon runs) must wait for the database thread's open transaction, not try to
    BEGIN inside it (once: "cannot start a transaction within a transaction")."""
    import threading

    database = Database(tmp_path / "shared.db", reactor)
    database.open()
    try:
        inside, release = threading.Event(), threading.Event()

        def slow_write(db):
            db.conn.execute("INSERT INTO accounts (name, kind, created_at) "
                            "VALUES ('slow', 'shared', 0)")
            inside.set()
            release.wait(10)
            return "written"

        pending = database.run(slow_write)
        assert inside.wait(10), "the database thread took the write"
        timer = threading.Timer(0.3, release.set)
        timer.start()
        try:
            names = database.run_sync(lambda db: [r[0] for r in db.conn.execute(
                "SELECT name FROM accounts WHERE name = 'slow'")])
        finally:
            timer.cancel()
            release.set()
        assert names == ["slow"], "it ran after the write committed, and saw it"
        assert await pending == "written"
    finally:
        database.close()

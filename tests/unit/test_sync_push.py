"""Pushing the outbox: idempotent apply, quarantine, refusal of bad batches, and a flapping
link, with the real storage and sync code in one process (simulated time, no sockets)."""

from __future__ import annotations

import copy
import json
import random
import sqlite3

import pytest
import pytest_twisted

from appliance.core.mode import Mode
from appliance.pki import Identity
from appliance.storage.store import NewIdentity, _insert_ledger, add_user_sync
from appliance.storage.sync_store import outbox_batch_sync
from tests.unit.sync_helpers import close, make_site, push_raw


def batch_of(site, limit=10_000, first=0):
    events = site.database.run_sync(lambda db: outbox_batch_sync(db, limit))[first:]
    return {"site": site.name, "batch_id": f"test-{events[0].seq}",
            "events": [{"seq": e.seq, "event_id": e.event_id, "kind": e.kind,
                        "body": json.loads(e.body)} for e in events]}


# ---------------------------------------------------------------- the outbox


@pytest_twisted.ensureDeferred
async def test_a_charge_and_its_outbox_event_commit_together(site):
    user = site.database.run_sync(lambda db: add_user_sync(
        db, "alice", "Alice", "", [NewIdentity("pin", None, "v")], 500))
    result = await site.store.post_usage(
        usage_id="u-1", device="mfd1", user_id=user.id, account_id=user.account_id,
        kind="copy", pages=2, colour=False, sides="one-sided", cost=20, body={"pages": 2})
    assert result.inserted
    events = [e for e in site.database.run_sync(lambda db: outbox_batch_sync(db, 10))
              if e.kind == "ledger"]     # the user made here is an event too (0007)
    assert [e.event_id.split(":")[0] for e in events] == ["site-a/seed", "site-a/usage"]
    usage = json.loads(events[1].body)
    assert events[1].event_id == "site-a/usage:u-1" and events[1].kind == "ledger"
    assert usage["entry_id"] == "usage:u-1" and usage["amount"] == -20
    assert usage["account"] == "user:alice" and usage["account_kind"] == "personal"
    assert usage["body"] == {"pages": 2} and usage["impressions"] == 2

    def fails(db):
        _insert_ledger(db, "usage:rolled-back", user.account_id, -5, "charge", "copy", {})
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        site.database.run_sync(fails)
    assert site.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ledger'") == 2
    assert site.count("SELECT COUNT(*) FROM ledger") == 2

    def foreign(db):
        db.conn.execute("INSERT INTO ledger (entry_id, account_id, amount, kind, source, "
                        "created_at, origin) VALUES ('x/1', ?, 5, 'credit', 'admin', 0, 'x')",
                        (user.account_id,))

    site.database.run_sync(foreign)
    assert site.count("SELECT COUNT(*) FROM outbox WHERE kind = 'ledger'") == 2, \
        "rows from elsewhere are not pushed"


def test_a_database_without_a_role_writes_no_outbox(tmp_path):
    from twisted.internet import reactor

    from appliance.storage.database import Database

    database = Database(tmp_path / "bare.sqlite3", reactor)
    database.open()
    try:
        database.run_sync(lambda db: add_user_sync(db, "bob", "", "", [], 100))
        assert database.run_sync(
            lambda db: db.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]) == 0
        assert database.run_sync(
            lambda db: db.conn.execute("SELECT COUNT(*) FROM changes").fetchone()[0]) == 0
    finally:
        database.close()


# ---------------------------------------------------------------- idempotent apply


@pytest_twisted.ensureDeferred
async def test_the_same_batch_twice_is_applied_once(primary, site):
    site.charge(50)
    batch = batch_of(site)
    status, first = await push_raw(primary, "site-a", batch)
    assert status == 200
    assert (first["applied"], first["duplicates"], first["quarantined"]) == (50, 0, [])
    assert first["checkpoint"] == batch["events"][-1]["seq"]
    status, second = await push_raw(primary, "site-a", batch)
    assert status == 200
    assert (second["applied"], second["duplicates"], second["quarantined"]) == (0, 50, [])
    assert second["checkpoint"] == first["checkpoint"]
    assert primary.count("SELECT COUNT(*) FROM ledger") == 50
    assert primary.count("SELECT COUNT(*) FROM sync_events") == 50
    assert primary.count("SELECT SUM(amount) FROM ledger") == -500
    assert set(primary.ledger_ids()) == {f"site-a/usage:site-a-{i}" for i in range(50)}
    assert primary.count("SELECT COUNT(*) FROM ledger WHERE origin = 'site-a'") == 50


@pytest_twisted.ensureDeferred
async def test_same_id_with_another_body_is_quarantined_never_applied(primary, site):
    site.charge(5)
    batch = batch_of(site)
    assert (await push_raw(primary, "site-a", batch))[0] == 200
    forged = copy.deepcopy(batch)
    forged["events"][2]["body"]["amount"] = -1
    for _ in range(2):
        status, answer = await push_raw(primary, "site-a", forged)
        assert status == 200
        assert answer["applied"] == 0 and answer["duplicates"] == 4
        assert [q["event_id"] for q in answer["quarantined"]] == ["site-a/usage:site-a-2"]
        assert "another body" in answer["quarantined"][0]["reason"]
    assert primary.count("SELECT COUNT(*) FROM sync_quarantine") == 1, "reported, stored once"
    assert primary.count("SELECT amount FROM ledger WHERE entry_id = 'site-a/usage:site-a-2'") \
        == -10
    assert primary.count("SELECT quarantined FROM sync_sites WHERE name = 'site-a'") == 1


@pytest_twisted.ensureDeferred
async def test_a_first_seen_event_that_cannot_apply_is_quarantined_and_the_rest_applies(
        primary, site):
    site.charge(4)
    batch = batch_of(site)
    batch["events"][1]["kind"] = "teleport"
    batch["events"][2]["body"]["amount"] = "ten"
    status, answer = await push_raw(primary, "site-a", batch)
    assert status == 200
    assert answer["applied"] == 2
    reasons = {q["event_id"]: q["reason"] for q in answer["quarantined"]}
    assert "unknown event kind" in reasons["site-a/usage:site-a-1"]
    assert "amount" in reasons["site-a/usage:site-a-2"]
    assert answer["checkpoint"] == batch["events"][-1]["seq"], "the outbox is not blocked"
    assert primary.count("SELECT COUNT(*) FROM ledger") == 2


# ---------------------------------------------------------------- refused as a whole


@pytest_twisted.ensureDeferred
async def test_a_batch_cut_anywhere_applies_nothing(primary, site):
    site.charge(20)
    raw = json.dumps(batch_of(site)).encode()
    rng = random.Random(5)
    for cut in sorted(rng.sample(range(1, len(raw)), 40)):
        status, answer = await push_raw(primary, "site-a", raw[:cut])
        assert status == 400, cut
        assert answer["error"]["code"] == "malformed"
    assert primary.count("SELECT COUNT(*) FROM ledger") == 0
    assert primary.count("SELECT COUNT(*) FROM sync_events") == 0
    assert (await push_raw(primary, "site-a", raw))[1]["applied"] == 20


def _malformed(batch):
    def events(change):
        b = copy.deepcopy(batch)
        change(b["events"])
        return b

    yield "not an object", [batch]
    yield "no events", {k: v for k, v in batch.items() if k != "events"}
    yield "no batch id", {k: v for k, v in batch.items() if k != "batch_id"}
    yield "seq going back", events(lambda e: e.__setitem__(3, {**e[3], "seq": e[1]["seq"]}))
    yield "seq not an int", events(lambda e: e[4].__setitem__("seq", "5"))
    yield "another site's event", events(
        lambda e: e[5].__setitem__("event_id", "site-b/usage:x"))
    yield "an event twice", events(lambda e: e.__setitem__(6, {**e[6],
                                                              "event_id": e[0]["event_id"]}))
    yield "an extra field", events(lambda e: e[7].__setitem__("extra", 1))
    yield "a body that is not an object", events(lambda e: e[8].__setitem__("body", [1]))
    yield "bad last event", events(lambda e: e[-1].pop("kind"))


@pytest_twisted.ensureDeferred
async def test_malformed_batches_apply_nothing(primary, site):
    site.charge(10)
    batch = batch_of(site)
    for what, bad in _malformed(batch):
        status, answer = await push_raw(primary, "site-a", bad)
        assert status == 400, what
        assert answer["error"]["code"] == "malformed", what
    assert primary.count("SELECT COUNT(*) FROM ledger") == 0
    assert primary.count("SELECT COUNT(*) FROM sync_events") == 0


@pytest_twisted.ensureDeferred
async def test_a_site_pushing_in_another_sites_name_is_refused(primary, site):
    site.charge(3)
    status, answer = await push_raw(primary, "site-a", batch_of(site),
                                    identity=Identity("site", "site-b"))
    assert status == 403 and answer["error"]["code"] == "wrong_site"
    status, answer = await push_raw(primary, "site-a", batch_of(site),
                                    identity=Identity("primary", "site-a"))
    assert status == 403
    status, _ = await push_raw(primary, "site-a", batch_of(site), identity=None)
    assert status == 401
    hb = json.dumps({"site": "site-a", "mode": "online", "outbox": 0}).encode()
    status, _ = await primary.api.handle("POST", "/sync/v1/heartbeat", "", hb,
                                         Identity("site", "site-b"))
    assert status == 403
    assert primary.count("SELECT COUNT(*) FROM ledger") == 0
    assert primary.count("SELECT COUNT(*) FROM sync_sites") == 0


# ---------------------------------------------------------------- replays, reordering, loss


@pytest_twisted.ensureDeferred
async def test_reordered_and_duplicated_batches_apply_every_event_once(primary, site):
    rng = random.Random(11)
    site.charge(300)
    events = batch_of(site)["events"]
    batches = [{"site": "site-a", "batch_id": f"b{i}", "events": events[i:i + 20]}
               for i in range(0, 300, 20)]
    sends = [b for b in batches for _ in range(rng.randint(1, 3))]
    rng.shuffle(sends)
    applied = duplicates = 0
    for batch in sends:
        status, answer = await push_raw(primary, "site-a", batch)
        assert status == 200 and answer["quarantined"] == []
        assert answer["checkpoint"] == batch["events"][-1]["seq"]
        applied += answer["applied"]
        duplicates += answer["duplicates"]
    assert applied == 300
    assert duplicates == 20 * (len(sends) - len(batches))
    assert primary.count("SELECT COUNT(*) FROM ledger") == 300
    assert primary.count("SELECT checkpoint FROM sync_sites") == events[-1]["seq"]


@pytest_twisted.ensureDeferred
async def test_the_site_forgets_only_what_was_acknowledged(primary, site):
    site.charge(30)
    site.transport.after = 1.0          # the primary applies, the answer is lost
    assert await site.sync.push_all() is False
    assert site.count("SELECT COUNT(*) FROM outbox") == 30
    assert primary.count("SELECT COUNT(*) FROM ledger") == 30
    site.transport.after = 0.0
    assert await site.sync.push_all() is True
    assert site.count("SELECT COUNT(*) FROM outbox") == 0
    assert site.sync.stats.duplicates == 30
    assert primary.count("SELECT COUNT(*) FROM ledger") == 30
    assert await site.sync_store.state("push_checkpoint") == "30"


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_a_flapping_link_loses_and_doubles_nothing(tmp_path, primary, seed):
    """2,000 events pushed while the link drops at seeded points (before delivery, after the
    primary applied, mid-body) and goes down for seeded spells; new charges keep coming."""
    rng = random.Random(seed)
    site = make_site(tmp_path, primary, rng=random.Random(seed * 1000), batch=64, misses=2,
                     successes=2, before=0.2, after=0.2, truncate=0.1)
    try:
        added, steps = 0, 0
        while added < 2000 or site.count("SELECT COUNT(*) FROM outbox"):
            steps += 1
            assert steps < 2000, "the outbox never drained"
            if added < 2000 and rng.random() < 0.5:
                n = min(2000 - added, rng.randint(1, 150))
                site.charge(n, start=added)
                added += n
            if rng.random() < 0.08:
                site.transport.down = not site.transport.down
            if added == 2000 and steps % 50 == 0:
                site.transport.down = False
            site.clock.advance(5)
            await site.sync.tick()
        log = site.transport.log
        assert {"drop-before", "drop-after", "truncate", "down"} <= set(log)
        assert Mode.OFFLINE in [t.after for t in site.mode.history]
        ids = primary.ledger_ids()
        assert len(ids) == 2000 == len(set(ids))
        assert set(ids) == {f"site-a/usage:site-a-{i}" for i in range(2000)}
        assert primary.count("SELECT COUNT(*) FROM sync_events") == 2000
        assert primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0
        assert primary.count("SELECT SUM(amount) FROM ledger") == -20_000
        # the site's own rows came back through the pull stream and were not doubled
        site.transport.down = False
        site.transport.before = site.transport.after = site.transport.truncate = 0.0
        site.clock.advance(5)
        await site.sync.tick()
        assert site.count("SELECT COUNT(*) FROM ledger") == 2000
        assert site.count("SELECT SUM(amount) FROM ledger") == -20_000
    finally:
        close(site)


def test_the_primary_ledger_refuses_a_second_row_for_one_event(primary):
    """The last line of defence under the idempotency table: entry ids are unique."""

    def twice(db):
        from appliance.storage.store import ensure_account_sync

        account = ensure_account_sync(db, "user:x", "personal", 0)
        for _ in range(2):
            _insert_ledger(db, "site-a/usage:1", account, -1, "charge", "copy", {})

    with pytest.raises(sqlite3.IntegrityError):
        primary.database.run_sync(twice)

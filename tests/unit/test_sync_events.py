"""Event kinds beyond ledger rows (migration 0007, docs/wire/sync.md "Event kinds"): a
site's job log, page-counter checks, cards linked at its panels and users it creates
enter the outbox in the transaction of the change, and the primary applies each kind
idempotently into its own tables; a card linked at site A then works at site B.

Real storage and sync code, two sites and a primary in one process (sync_helpers)."""

from __future__ import annotations

import copy
import hashlib
import json
import uuid as uuidlib
from types import SimpleNamespace

import pytest
import pytest_twisted

from appliance.core.model import JobOptions, JobState
from appliance.storage.credential_store import CredentialStore
from appliance.storage.database import Database
from appliance.storage.store import (
    SYSTEM_ACCOUNT,
    NewIdentity,
    SiteStore,
    add_user_sync,
    unattributed_account_name,
)
from appliance.storage.sync_store import outbox_batch_sync, snapshot_sync
from tests.unit.sync_helpers import close, make_site, push_raw


def hmac_of(card: str) -> str:
    """A stand-in for the deployment's card HMAC: 64 hex digits, as CardKey.lookup makes."""
    return hashlib.sha256(card.encode()).hexdigest()


def outbox(node, kind=None):
    events = node.database.run_sync(lambda db: outbox_batch_sync(db, 100_000))
    return [(e.event_id, json.loads(e.body)) for e in events if kind in (None, e.kind)]


def batch_of(node, kinds=None):
    events = node.database.run_sync(lambda db: outbox_batch_sync(db, 100_000))
    return {"site": node.name, "batch_id": f"test-{node.name}",
            "events": [{"seq": e.seq, "event_id": e.event_id, "kind": e.kind,
                        "body": json.loads(e.body)}
                       for e in events if kinds is None or e.kind in kinds]}


def rows(node, sql, params=()):
    return node.database.run_sync(
        lambda db: [dict(r) for r in db.conn.execute(sql, params).fetchall()])


async def new_job(store: SiteStore, owner="alice", *, spool: str | None = "doc-1",
                  state=JobState.HELD, queue="findme"):
    return await store.insert_job(
        uuid=uuidlib.uuid4().hex, queue=queue, owner=owner, user_id=None, name="report.pdf",
        document_format="application/pdf", spool_name=spool, size=1000,
        pages=3 if spool else None, colour=False, analysed=True, options=JobOptions(copies=2),
        state=state, state_reasons=("job-hold-until-specified",), expires_at=None)


# ---------------------------------------------------------------- job log


@pytest_twisted.ensureDeferred
async def test_a_jobs_life_enters_the_outbox_and_lands_in_the_primarys_job_log(primary, site):
    """Created, released, held again after a jam (device remembered), released, completed
    with what was charged: each event commits with the job row that made it."""
    store = site.store
    job = await new_job(store)
    await store.update_job(job.id, expect_states=(JobState.HELD,), state=JobState.PROCESSING,
                           device="mfd1", attempts=1)
    await store.finish_print(job.id, entry_id=f"print:{job.uuid}:1", account_id=None, amount=0,
                             impressions=1, colour=False, device="mfd1", completed=False,
                             state_message="jam", body={})
    await store.update_job(job.id, expect_states=(JobState.HELD,), state=JobState.PROCESSING,
                           device="mfd2", attempts=2)
    user = site.database.run_sync(lambda db: add_user_sync(db, "alice", "", "", [], 100))
    await store.finish_print(job.id, entry_id=f"print:{job.uuid}:2", account_id=user.account_id,
                             amount=60, impressions=6, colour=False, device="mfd2",
                             completed=True, state_message="done", body={})
    events = outbox(site, "job")
    assert [b["event"] for _, b in events] == ["created", "released", "held", "released",
                                               "completed"]
    assert events[0][0] == f"site-a/job:{job.uuid}:created"
    assert all(i.startswith(f"site-a/job:{job.uuid}:{b['event']}") for i, b in events)
    assert len({i for i, _ in events}) == 5
    created, _, held, _, completed = (b for _, b in events)
    assert (created["owner"], created["pages"], created["copies"], created["queue"]) == \
        ("alice", 3, 2, "findme")
    assert held["device"] == "mfd1" and held["state"] == "held" and held["attempt"] == 1
    assert (completed["device"], completed["charged"], completed["impressions"]) == \
        ("mfd2", 60, 6)
    assert "name" not in created, "document names stay at the site"

    status, answer = await push_raw(primary, "site-a", batch_of(site))
    assert status == 200 and answer["quarantined"] == []
    log = rows(primary, "SELECT * FROM site_job_log ORDER BY id")
    assert [(r["site"], r["job_uuid"], r["event"]) for r in log] == \
        [("site-a", job.uuid, e) for e in ("created", "released", "held", "released",
                                           "completed")]
    assert log[-1]["charged"] == 60 and log[-1]["owner"] == "alice"
    status, again = await push_raw(primary, "site-a", batch_of(site))
    assert again["applied"] == 0 and again["duplicates"] == answer["applied"]
    assert len(rows(primary, "SELECT id FROM site_job_log")) == 5


@pytest_twisted.ensureDeferred
async def test_create_job_is_created_when_its_document_arrives_and_cancel_expire_are_logged(
        site):
    store = site.store
    waiting = await new_job(store, spool=None)
    assert outbox(site, "job") == [], "no document yet: nothing acknowledged"
    await store.update_job(waiting.id, expect_states=(JobState.HELD,), require_no_document=True,
                           spool_name="doc-2", pages=5, state=JobState.PENDING)
    other = await new_job(store)
    await store.update_job(other.id, expect_states=(JobState.HELD,), state=JobState.CANCELED)
    third = await new_job(store)
    await store.update_job(third.id, expect_states=(JobState.HELD,), state=JobState.EXPIRED)
    events = [(b["job_uuid"], b["event"], b["state"], b["pages"]) for _, b in outbox(site, "job")]
    assert events == [(waiting.uuid, "created", "pending", 5),
                      (other.uuid, "created", "held", 3), (other.uuid, "cancelled", "canceled", 3),
                      (third.uuid, "created", "held", 3), (third.uuid, "expired", "expired", 3)]
    await store.update_job(third.id, spool_name=None)
    assert len(outbox(site, "job")) == 5, "deleting the document is not a job event"


def test_a_rolled_back_job_change_leaves_no_event(site):
    """Same transaction: the outbox row goes with the job row it describes."""

    def fails(db):
        db.conn.execute("INSERT INTO jobs (uuid, queue, owner, spool_name, state, created_at) "
                        "VALUES ('u1', 'findme', 'alice', 'doc', 'held', 0)")
        raise RuntimeError("crash before commit")

    with pytest.raises(RuntimeError):
        site.database.run_sync(fails)
    assert outbox(site) == []


@pytest_twisted.ensureDeferred
async def test_job_events_with_another_body_or_bad_fields_are_quarantined(primary, site):
    job = await new_job(site.store)
    batch = batch_of(site)
    assert (await push_raw(primary, "site-a", batch))[1]["applied"] == 1
    forged = copy.deepcopy(batch)
    forged["events"][0]["body"]["owner"] = "mallory"
    status, answer = await push_raw(primary, "site-a", forged)
    assert status == 200 and "another body" in answer["quarantined"][0]["reason"]
    assert rows(primary, "SELECT owner FROM site_job_log") == [{"owner": "alice"}]

    bad = copy.deepcopy(batch)
    bad["events"][0]["event_id"] = f"site-a/job:{job.uuid}:completed:x"   # id says completed
    bad["events"][0]["seq"] += 1
    status, answer = await push_raw(primary, "site-a", bad)
    assert status == 200 and "event id" in answer["quarantined"][0]["reason"]
    bad["events"][0].update(event_id=f"site-a/job:{job.uuid}:created:y",
                            body={**batch["events"][0]["body"], "pages": "three"})
    status, answer = await push_raw(primary, "site-a", bad)
    assert "pages" in answer["quarantined"][0]["reason"]
    assert len(rows(primary, "SELECT id FROM site_job_log")) == 1


# ---------------------------------------------------------------- page-counter checks


def counter_check(job_id, attempt=1, **overrides):
    fields = dict(job_id=job_id, attempt=attempt, device="mfd1", counter_before=1000,
                  counter_after=1007, counter_delta=7, impressions=6, difference=1,
                  status="discrepancy", detail="", started_at=100.0, finished_at=130.5)
    fields.update(overrides)
    return SimpleNamespace(**fields)


@pytest_twisted.ensureDeferred
async def test_counter_checks_are_pushed_once_and_kept_per_site_at_the_primary(
        primary, site, site_b):
    for node in (site, site_b):
        job = await new_job(node.store)
        await node.store.add_counter_check(counter_check(job.id))
        await node.store.add_counter_check(counter_check(job.id))     # a repeat: ignored
        await node.store.add_counter_check(counter_check(job.id, 2, status="ok", difference=0,
                                                         counter_before=None))
        events = outbox(node, "counter_check")
        assert [i for i, _ in events] == [f"{node.name}/counter:{job.uuid}:1",
                                          f"{node.name}/counter:{job.uuid}:2"]
        assert events[0][1]["counter_delta"] == 7 and events[1][1]["counter_before"] is None
        for _ in range(2):
            status, answer = await push_raw(primary, node.name, batch_of(node))
            assert status == 200 and answer["quarantined"] == []
    checks = rows(primary, "SELECT site, attempt, status, difference FROM site_counter_checks "
                           "ORDER BY id")
    assert checks == [{"site": s, "attempt": a, "status": st, "difference": d}
                      for s in ("site-a", "site-b")
                      for a, st, d in ((1, "discrepancy", 1), (2, "ok", 0))]


# ---------------------------------------------------------------- cards


async def pull(node):
    assert await node.sync.pull_all()


@pytest_twisted.ensureDeferred
async def test_a_card_linked_at_site_a_works_at_site_b(primary, site, site_b):
    primary.database.run_sync(lambda db: add_user_sync(
        db, "alice", "Alice", "", [NewIdentity("pin", None, "$argon2id$fake")], 500))
    await pull(site)
    await pull(site_b)
    assert outbox(site) == [] and outbox(site_b) == [], "replicated rows are not pushed back"
    alice = await site.store.user_by_name("alice")
    lookup = hmac_of("04:A2:19:7F")
    assert await CredentialStore(site.database).link_card(alice.id, lookup) == "linked"
    [(event_id, body)] = outbox(site, "card")
    assert event_id.startswith(f"site-a/card:{lookup}:")
    assert body == {"username": "alice", "lookup": lookup, "linked_at": body["linked_at"]}
    assert await site_b.store.user_by_card(lookup) is None

    assert await site.sync.push_all()
    assert site.count("SELECT COUNT(*) FROM outbox") == 0
    await pull(site_b)
    found = await site_b.store.user_by_card(lookup)
    assert found is not None and found[0].username == "alice"
    assert found[1] == "$argon2id$fake", "card + PIN works at site B"

    await pull(site)    # her card comes back to site A: not doubled, not pushed again
    assert site.count("SELECT COUNT(*) FROM identities WHERE kind = 'card'") == 1
    assert site.count("SELECT COUNT(*) FROM outbox") == 0
    assert (await site.store.user_by_card(lookup))[0].username == "alice"


@pytest_twisted.ensureDeferred
async def test_card_conflicts_and_plaintext_cards_are_quarantined_not_applied(primary, site):
    taken = hmac_of("taken")
    primary.database.run_sync(lambda db: (
        add_user_sync(db, "alice", "", "", [], 0),
        add_user_sync(db, "bob", "", "", [NewIdentity("card", taken, None)], 0)))
    await pull(site)
    alice = await site.store.user_by_name("alice")
    site.database.run_sync(lambda db: db.conn.execute(
        "DELETE FROM identities WHERE lookup = ?", (taken,)))   # the site lost bob's card
    credentials = CredentialStore(site.database)
    assert await credentials.link_card(alice.id, taken) == "linked"
    mine = hmac_of("mine")
    assert await credentials.link_card(alice.id, mine) == "linked"
    batch = batch_of(site)
    ghost = copy.deepcopy(batch["events"][1])
    ghost.update(seq=ghost["seq"] + 1, event_id=ghost["event_id"] + "0")
    ghost["body"]["username"] = "ghost"
    plain = copy.deepcopy(ghost)
    plain.update(seq=plain["seq"] + 1, event_id="site-a/card:4111111111111111:1",
                 body={"username": "alice", "lookup": "4111111111111111", "linked_at": 1.0})
    extra = copy.deepcopy(batch["events"][1])
    extra.update(seq=plain["seq"] + 1, event_id=extra["event_id"] + "1")
    extra["body"]["card_number"] = "4111111111111111"
    batch["events"] += [ghost, plain, extra]
    status, answer = await push_raw(primary, "site-a", batch)
    assert status == 200 and answer["applied"] == 1
    reasons = [q["reason"] for q in answer["quarantined"]]
    assert "belongs to the primary's user 'bob'" in reasons[0]
    assert "unknown user 'ghost'" in reasons[1]
    assert "card HMAC" in reasons[2]
    assert "unexpected fields ['card_number']" in reasons[3]
    owners = rows(primary, "SELECT u.username, i.lookup FROM identities i JOIN users u "
                           "ON u.id = i.user_id WHERE i.kind = 'card' ORDER BY i.id")
    assert owners == [{"username": "bob", "lookup": taken}, {"username": "alice", "lookup": mine}]
    stored = json.dumps(rows(primary, "SELECT body FROM sync_quarantine"))
    assert "4111111111111111" in stored and "card_number" in stored  # kept for the operator
    assert "4111111111111111" not in json.dumps(rows(primary, "SELECT * FROM identities"))


# ---------------------------------------------------------------- users made at a site


@pytest_twisted.ensureDeferred
async def test_a_user_imported_at_a_site_reaches_the_primary_and_the_other_sites(
        primary, site, site_b):
    card = hmac_of("carol-card")
    site.database.run_sync(lambda db: add_user_sync(
        db, "carol", "Carol", "carol@example.org",
        [NewIdentity("card", card, None), NewIdentity("pin", None, "$argon2id$carol")], 250))
    kinds = [(i.split(":")[0], b.get("username") or b.get("account")) for i, b in outbox(site)]
    assert kinds == [("site-a/user", "carol"), ("site-a/card", "carol"),
                     ("site-a/seed", "user:carol")]
    assert "$argon2id$carol" not in json.dumps(outbox(site)), "no verifier is pushed"
    assert await site.sync.push_all()
    assert rows(primary, "SELECT username, full_name, email, disabled, directory_id "
                         "FROM users") == [{"username": "carol", "full_name": "Carol",
                                            "email": "carol@example.org", "disabled": 0,
                                            "directory_id": None}]
    assert primary.count("SELECT SUM(amount) FROM ledger l JOIN accounts a ON a.id = "
                         "l.account_id WHERE a.name = 'user:carol'") == 250
    await pull(site_b)
    found = await site_b.store.user_by_card(card)
    assert found is not None and found[0].username == "carol" and found[1] is None
    await pull(site)
    assert site.count("SELECT COUNT(*) FROM users") == 1
    assert site.count("SELECT COUNT(*) FROM outbox") == 0


@pytest_twisted.ensureDeferred
async def test_a_site_user_the_primary_already_knows_changes_nothing_there(primary, site):
    primary.database.run_sync(lambda db: add_user_sync(db, "dave", "Dave (HQ)", "", [], 0))
    site.database.run_sync(lambda db: add_user_sync(db, "dave", "Dave at A", "", [], 0))
    status, answer = await push_raw(primary, "site-a", batch_of(site))
    assert status == 200 and answer["applied"] == 1 and answer["quarantined"] == []
    assert rows(primary, "SELECT full_name FROM users") == [{"full_name": "Dave (HQ)"}]


# ---------------------------------------------------------------- per-site unattributed


@pytest_twisted.ensureDeferred
async def test_each_site_charges_unknown_users_to_its_own_system_account(
        tmp_path, primary, site, site_b):
    from twisted.internet import reactor

    for node, amount in ((site, 30), (site_b, 45)):
        account_id = await node.store.unattributed_account()
        job = await new_job(node.store, owner="stranger", queue="mfd1")
        await node.store.finish_print(job.id, entry_id=f"print:{job.uuid}:1",
                                      account_id=account_id, amount=amount, impressions=3,
                                      colour=False, device="mfd1", completed=True,
                                      state_message="", body={})
        assert await node.sync.push_all()
    accounts = rows(primary, "SELECT a.name, a.kind, a.overdraft_limit, SUM(l.amount) AS total "
                             "FROM accounts a JOIN ledger l ON l.account_id = a.id "
                             "GROUP BY a.id ORDER BY a.name")
    assert accounts == [
        {"name": "site:site-a:unattributed", "kind": "system", "overdraft_limit": None,
         "total": -30},
        {"name": "site:site-b:unattributed", "kind": "system", "overdraft_limit": None,
         "total": -45}]
    bare = Database(tmp_path / "bare.sqlite3", reactor)
    bare.open()
    try:
        assert bare.run_sync(unattributed_account_name) == SYSTEM_ACCOUNT
    finally:
        bare.close()


# ---------------------------------------------------------------- directory id


def test_the_users_directory_id_travels_in_the_change_stream_and_the_snapshot(primary):
    def work(db):
        add_user_sync(db, "erin", "", "", [], 0)
        db.conn.execute("UPDATE users SET directory_id = 'uuid-erin' WHERE username = 'erin'")

    primary.database.run_sync(work)
    bodies = [json.loads(r["body"]) for r in rows(
        primary, "SELECT body FROM changes WHERE kind = 'user' ORDER BY seq")]
    assert [b["directory_id"] for b in bodies] == [None, "uuid-erin"]
    snapshot, _ = primary.database.run_sync(snapshot_sync)
    [user] = [c.body for c in snapshot if c.kind == "user"]
    assert user == bodies[-1]


# ---------------------------------------------------------------- paged snapshot


def _state(node):
    """What a site must hold after bootstrapping: users, identities, ledger ids."""
    return node.database.run_sync(lambda db: (
        sorted(tuple(r) for r in db.conn.execute(
            "SELECT username, full_name, disabled FROM users")),
        sorted(tuple(r) for r in db.conn.execute(
            "SELECT u.username, i.kind, i.lookup, i.verifier FROM identities i "
            "JOIN users u ON u.id = i.user_id")),
        sorted(r[0] for r in db.conn.execute("SELECT amount FROM ledger"))))


@pytest_twisted.ensureDeferred
async def test_the_snapshot_in_pages_is_the_snapshot(primary):
    from tests.unit.sync_helpers import seed_users

    seed_users(primary, 12, balance=100)
    full = await primary.sync.snapshot()
    pages, after = [], None
    while True:
        page = await primary.sync.snapshot(after, "7")
        assert len(page["changes"]) <= 7 and page["token"] == full["token"]
        pages.append(page)
        after = page["next"]
        if after is None:
            break
    assert len(pages) > 1 and all(len(p["changes"]) == 7 for p in pages[:-1])
    paged = [c for p in pages for c in p["changes"]]
    key = lambda c: (c["kind"], c["key"], json.dumps(c["body"], sort_keys=True))  # noqa: E731
    assert sorted(map(key, paged)) == sorted(map(key, full["changes"]))
    for bad in ("x", "1.2", "1.99.0", "-1.0.0"):
        status, answer = await primary.api.handle("GET", "/sync/v1/snapshot", f"after={bad}",
                                                  b"", site_identity())
        assert status == 400 and answer and json.loads(answer)["error"]["code"] == "bad_token"
    status, _ = await primary.api.handle("GET", "/sync/v1/snapshot", "limit=0", b"",
                                         site_identity())
    assert status == 400


def site_identity():
    from appliance.pki import Identity

    return Identity("site", "site-a")


@pytest_twisted.ensureDeferred
async def test_a_site_bootstraps_in_pages_and_resumes_a_cut_bootstrap(tmp_path, primary):
    """A new site reads the snapshot `pull_limit` rows at a time; cut after two pages, it
    resumes where it stopped, and what changed at the primary meanwhile (in a section it
    had already read) comes from the stream: it ends equal to the primary."""
    from appliance.core.sync import SyncUnavailable
    from tests.unit.sync_helpers import seed_users

    seed_users(primary, 10, balance=100)
    site = make_site(tmp_path, primary, pull_limit=6)
    try:
        client = site.sync.client
        real = client.snapshot
        calls: list[tuple[str | None, int]] = []

        async def cut_after_two(after=None, limit=None):
            calls.append((after, limit))
            if len(calls) == 3:
                raise SyncUnavailable("link cut mid-bootstrap")
            answer = await real(after, limit)
            assert len(answer["changes"]) <= 6
            return answer

        client.snapshot = cut_after_two
        assert await site.sync.pull_all() is False
        assert await site.sync_store.state("pull_token") is None
        saved = await site.sync_store.state("snapshot_next")
        assert saved is not None and calls[0] == (None, 6)

        def change(db):   # in sections the site has already read
            db.conn.execute("UPDATE users SET full_name = 'Renamed' WHERE username = 'user0'")
            db.conn.execute("DELETE FROM identities WHERE kind = 'pin' AND user_id = "
                            "(SELECT id FROM users WHERE username = 'user1')")
            add_user_sync(db, "late", "", "", [NewIdentity("card", hmac_of("late"), None)], 5)

        primary.database.run_sync(change)
        assert await site.sync.pull_all() is True
        assert calls[3][0] == saved, "the bootstrap resumed after its last applied page"
        assert len(calls) > 5, "more than one page"
        assert await site.sync_store.state("snapshot_next") is None
        assert _state(site) == _state(primary)
        assert outbox(site) == [], "nothing the site received is pushed back"
    finally:
        close(site)


# ---------------------------------------------------------------- end to end, over the panel API


def _site_config(folder, name):
    """Two sites of one deployment: their own state, the deployment's card HMAC key."""
    path = folder / f"{name}.toml"
    path.write_text(
        f'name = "{name}"\nstate_dir = "{folder / name}"\nsecrets_dir = "{folder / "keys"}"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 8192\n"
        '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n')
    return path


async def _panel(site, method, path, body=None, token=None):
    import io

    from twisted.web.test.requesthelper import DummyRequest

    request = DummyRequest([path.encode()])
    request.method = method
    request.content = io.BytesIO(json.dumps(body).encode() if body is not None else b"")
    request.requestHeaders.addRawHeader(b"x-outpost-device", b"mfd-1")
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    finished = request.notifyFinish()
    site.device_api.render(request)
    if not request.finished:
        await finished
    return request.responseCode or 200, json.loads(b"".join(request.written))


def _uplink(site, primary):
    """The site's real SiteSync, its wire looped back to the in-process primary."""
    from twisted.internet import task

    from appliance.core.mode import LinkMode
    from appliance.core.sync import SiteSync
    from appliance.pki import Identity
    from appliance.protocols.http.sync_client import HttpSyncClient, LoopbackTransport
    from appliance.storage.sync_store import SyncStore

    clock = task.Clock()
    return SiteSync(name=site.config.name, store=SyncStore(site.database),
                    client=HttpSyncClient(LoopbackTransport(
                        primary.api, Identity("site", site.config.name))),
                    mode=LinkMode(offline_after_misses=3, online_after_successes=1,
                                  clock=clock.seconds),
                    clock=clock, heartbeat_interval=5.0)


@pytest_twisted.ensureDeferred
async def test_a_card_linked_on_a_panel_at_site_a_opens_a_session_at_site_b(tmp_path, primary):
    """POST /api/v1/cards in a password session at site A; the card reaches the primary in
    A's outbox and site B through the change stream: B's panel logs her in by card."""
    from twisted.internet import reactor

    from appliance.app import build_site
    from appliance.config import load
    from appliance.serve_cli import import_users

    config_a, config_b = _site_config(tmp_path, "site-a"), _site_config(tmp_path, "site-b")
    import_users(config_a, [{"username": "alice", "password": "pw-alice", "balance": 500}])
    site_a, site_b = build_site(load(config_a), reactor), build_site(load(config_b), reactor)
    try:
        sync_a, sync_b = _uplink(site_a, primary), _uplink(site_b, primary)
        assert await sync_a.push_all() and await sync_b.pull_all()
        code, session = await _panel(site_a, b"POST", "sessions",
                                     {"username": "alice", "password": "pw-alice"})
        assert code == 201, session
        code, linked = await _panel(site_a, b"POST", "cards", {"card": "777888999"},
                                    session["session"])
        assert code == 201 and linked["linked"], linked
        code, refused = await _panel(site_b, b"POST", "sessions", {"card": "777888999"})
        assert code == 401, f"site B does not know the card yet: {refused}"

        assert await sync_a.push_all() and await sync_b.pull_all()
        code, opened = await _panel(site_b, b"POST", "sessions", {"card": "777888999"})
        assert code == 201 and opened["user"]["username"] == "alice"
        assert opened["balance"] == 500, "her balance came with her (the ledger, replicated)"
        sent = json.dumps(rows(primary, "SELECT body FROM sync_events"))
        assert "777888999" not in sent, "the card number never left site A"
    finally:
        site_a.database.close()
        site_b.database.close()

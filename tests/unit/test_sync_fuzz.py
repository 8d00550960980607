"""Replay / duplicate / reorder fuzz of pushed batches against the real primary
(`SyncApi` → `PrimarySync` → `SyncStore` on a temp SQLite file).

The events are real: a site database's triggers wrote them (ledger charges, a job log,
page-counter checks, a user and cards made at the site). Hypothesis (derandomized, a
bounded number of examples) draws sequences of requests: slices of the outbox sent in any
order, replays of earlier requests, forged bodies under an applied id, the primary failing in
the middle of a batch or after its commit (the answer lost), and requests the
primary must refuse whole (an event twice in one batch, seqs out of order, a body cut
anywhere, a batch in another site's name). A model of what the primary has applied
predicts every answer; after each refused request the primary's database dump is
byte-for-byte what it was; at the end every event id was applied exactly once, the
ledger holds exactly the distinct ledger events, and every forgery is in quarantine.
"""

from __future__ import annotations

import copy
import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import event as note
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.python.failure import Failure

from appliance import failpoints
from appliance.core.sync import PrimarySync, canonical, digest
from appliance.pki import Identity
from appliance.protocols.http.sync_api import SyncApi
from appliance.storage.database import Database
from appliance.storage.store import NewIdentity, _insert_ledger, add_user_sync, ensure_account_sync
from appliance.storage.sync_store import SyncStore, declare_role_sync, outbox_batch_sync
from tests.unit.sync_helpers import PrimaryNode, close, open_db

SITE = "site-a"


def _lookup(card: str) -> str:
    return hashlib.sha256(card.encode()).hexdigest()


def _make_pool() -> list[dict[str, Any]]:
    """Every outbox event of a site that charged, printed, checked counters, created a
    user and linked cards: what its triggers wrote, in seq order."""
    with tempfile.TemporaryDirectory() as tmp:
        database = open_db(Path(tmp) / "site.sqlite3", "site", SITE)

        def work(db: Any) -> None:
            add_user_sync(db, "alice", "Alice", "", [NewIdentity("card", _lookup("a1"), None)])
            add_user_sync(db, "newbie", "New", "", [NewIdentity("card", _lookup("n1"), None)],
                          300)
            account = ensure_account_sync(db, "user:alice", "personal", 0)
            for i in range(30):
                _insert_ledger(db, f"usage:u{i}", account, -(i + 1), "charge", "copy",
                               {"pages": i + 1}, device="mfd1", impressions=i + 1, colour=False)
            for j in range(3):
                db.conn.execute(
                    "INSERT INTO jobs (uuid, queue, owner, spool_name, pages, state, created_at) "
                    "VALUES (?, 'findme', 'alice', 'doc', 2, 'held', ?)", (f"job{j}", 10.0 + j))
                db.conn.execute("UPDATE jobs SET state = 'processing', device = 'mfd1', "
                                "attempts = 1 WHERE uuid = ?", (f"job{j}",))
                db.conn.execute("UPDATE jobs SET state = 'completed', charged = 20, "
                                "impressions_completed = 2 WHERE uuid = ?", (f"job{j}",))
                db.conn.execute(
                    "INSERT INTO device_counter_checks (job_id, attempt, device, counter_before, "
                    "counter_after, counter_delta, impressions, difference, status, started_at, "
                    "finished_at) SELECT id, 1, 'mfd1', 100, 102, 2, 2, 0, 'ok', 1.0, 2.0 "
                    "FROM jobs WHERE uuid = ?", (f"job{j}",))
            user = db.conn.execute("SELECT id FROM users WHERE username = 'alice'").fetchone()[0]
            db.conn.execute("INSERT INTO identities (user_id, kind, lookup, created_at) "
                            "VALUES (?, 'card', ?, 5.0)", (user, _lookup("a2")))

        database.run_sync(work)
        events = database.run_sync(lambda db: outbox_batch_sync(db, 10_000))
        database.close()
    return [{"seq": e.seq, "event_id": e.event_id, "kind": e.kind, "body": json.loads(e.body)}
            for e in events]


POOL = _make_pool()
N = len(POOL)
FORGEABLE = {"ledger": "amount", "job": "pages", "counter_check": "difference"}


def sha(body: dict[str, Any]) -> str:
    return digest(canonical(body))


@dataclass
class Model:
    """What the primary must have applied: event id → the body applied first."""

    applied: dict[str, dict[str, Any]] = field(default_factory=dict)
    quarantined: set[tuple[str, str]] = field(default_factory=set)
    checkpoint: int = 0
    sent: list[list[dict[str, Any]]] = field(default_factory=list)

    def expect(self, events: list[dict[str, Any]]) -> tuple[int, int, list[str]]:
        applied = duplicates = 0
        quarantined = []
        for event in events:
            first = self.applied.get(event["event_id"])
            if first is None:
                self.applied[event["event_id"]] = event["body"]
                applied += 1
            elif sha(first) == sha(event["body"]):
                duplicates += 1
            else:
                self.quarantined.add((event["event_id"], sha(event["body"])))
                quarantined.append(event["event_id"])
        self.checkpoint = max(self.checkpoint, events[-1]["seq"])
        return applied, duplicates, quarantined


def _slice(start: int, size: int) -> list[dict[str, Any]]:
    return copy.deepcopy(POOL[start:start + size])


starts = st.integers(0, N - 1)
sizes = st.integers(1, 25)
OPS = st.one_of(
    st.tuples(st.just("send"), starts, sizes),
    st.tuples(st.just("replay"), st.integers(0, 10_000)),
    st.tuples(st.just("forge"), starts, sizes, st.integers(0, 10_000)),
    st.tuples(st.just("twice"), starts, st.integers(2, 25), st.integers(0, 10_000)),
    st.tuples(st.just("reorder"), starts, st.integers(2, 25), st.integers(0, 10_000)),
    st.tuples(st.just("truncate"), starts, sizes, st.floats(0.0, 0.999)),
    st.tuples(st.just("crash"), starts, sizes,
              st.sampled_from(["primary.batch.mid_apply", "primary.batch.applied"])),
    st.tuples(st.just("other_site"), starts, sizes,
              st.sampled_from(["claims-b", "cert-b", "ids-of-a", "not-a-site", "no-cert"])),
)


class InlineDatabase(Database):
    """The real database, each `run` committed on the calling thread (`run_sync`: the same
    BEGIN IMMEDIATE ... COMMIT) and answered by a fired Deferred, so that a Hypothesis
    example — a plain function — can drive the async API to completion without the reactor."""

    def run(self, work: Any) -> defer.Deferred[Any]:
        return defer.execute(self.run_sync, work)


def _make_template(path: Path) -> None:
    """A migrated primary that knows the users the pool's cards name, so a card's outcome
    does not depend on whether its user's event came first (test_sync_events covers that
    order). Copied for each example: migrating afresh would dominate the run time."""
    database = Database(path, reactor)
    database.open()
    database.run_sync(lambda db: declare_role_sync(db, "primary", "primary"))
    database.run_sync(lambda db: (add_user_sync(db, "alice", "A", "", []),
                                  add_user_sync(db, "newbie", "N", "", [])))
    database.close()


TEMPLATE_DIR = tempfile.TemporaryDirectory(prefix="outpost-fuzz-")
TEMPLATE = Path(TEMPLATE_DIR.name) / "primary.sqlite3"
_make_template(TEMPLATE)


def _primary(tmp: Path) -> Any:
    shutil.copyfile(TEMPLATE, tmp / "primary.sqlite3")
    database = InlineDatabase(tmp / "primary.sqlite3", reactor)
    database.open()
    # Durability is test_durability's subject; here fsyncs would only slow the search.
    assert database._conn is not None
    database._conn.execute("PRAGMA synchronous=OFF")
    store = SyncStore(database)
    sync = PrimarySync(store=store, clock=task.Clock().seconds)
    return PrimaryNode(database, store, sync, SyncApi(sync))


def _call(primary: Any, payload: Any, peer: Identity | None) -> tuple[int, dict[str, Any]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    done: list[Any] = []
    defer.ensureDeferred(primary.api.handle("POST", "/sync/v1/events", "", body, peer)
                         ).addBoth(done.append)
    assert len(done) == 1, "the inline database answers at once"
    if isinstance(done[0], Failure):
        done[0].raiseException()
    status, answer = done[0]
    return status, json.loads(answer)


def _dump(primary: Any) -> str:
    return "\n".join(primary.database.run_sync(lambda db: list(db.conn.iterdump())))


def _refused(primary: Any, payload: Any, peer: Identity | None, status: int) -> None:
    before = _dump(primary)
    got, answer = _call(primary, payload, peer)
    assert got == status, answer
    assert "error" in answer
    assert _dump(primary) == before, "a refused request changed the primary"


def _accepted(primary: Any, model: Model, events: list[dict[str, Any]]) -> None:
    payload = {"site": SITE, "batch_id": f"fuzz-{len(model.sent)}", "events": events}
    status, answer = _call(primary, payload, Identity("site", SITE))
    assert status == 200, answer
    applied, duplicates, quarantined = model.expect(events)
    assert (answer["applied"], answer["duplicates"]) == (applied, duplicates)
    assert [q["event_id"] for q in answer["quarantined"]] == quarantined
    assert answer["checkpoint"] == events[-1]["seq"]
    model.sent.append(events)


def _run(primary: Any, model: Model, op: tuple[Any, ...]) -> None:
    kind = op[0]
    note(kind)      # --hypothesis-show-statistics: how often each fault was drawn
    site_a = Identity("site", SITE)
    if kind == "send":
        _accepted(primary, model, _slice(op[1], op[2]))
    elif kind == "replay":
        if model.sent:
            _accepted(primary, model, copy.deepcopy(model.sent[op[1] % len(model.sent)]))
    elif kind == "forge":
        events = _slice(op[1], op[2])
        target = events[op[3] % len(events)]
        name = FORGEABLE.get(target["kind"])
        if name is not None:
            target["body"][name] = (target["body"][name] or 0) + 1 + op[3] % 7
        _accepted(primary, model, events)
    elif kind == "twice":
        events = _slice(op[1], op[2])
        copy_of = copy.deepcopy(events[op[3] % len(events)])
        copy_of["seq"] = events[-1]["seq"] + 1          # seqs still increase: only the id repeats
        _refused(primary, {"site": SITE, "batch_id": "b", "events": [*events, copy_of]},
                 site_a, 400)
    elif kind == "reorder":
        events = _slice(op[1], op[2])
        if len(events) < 2:
            return
        i = op[3] % (len(events) - 1)
        events[i], events[i + 1] = events[i + 1], events[i]
        _refused(primary, {"site": SITE, "batch_id": "b", "events": events}, site_a, 400)
    elif kind == "truncate":
        raw = json.dumps({"site": SITE, "batch_id": "b", "events": _slice(op[1], op[2])}).encode()
        _refused(primary, raw[:int(len(raw) * op[3])], site_a, 400)
    elif kind == "crash":
        # The primary fails in the middle of the batch's transaction (rolled back: nothing
        # changed), or after its commit and before the answer (applied, the answer lost).
        events = _slice(op[1], op[2])
        payload = {"site": SITE, "batch_id": f"crash-{len(model.sent)}", "events": events}
        before = _dump(primary)
        failpoints.arm(f"{op[3]}=raise")
        try:
            status, answer = _call(primary, payload, site_a)
        finally:
            failpoints.arm("")
        assert status == 500 and answer["error"]["code"] == "internal_error"
        if op[3] == "primary.batch.mid_apply":
            assert _dump(primary) == before, "a batch that failed midway changed the primary"
        else:
            model.expect(events)
            model.sent.append(events)
    elif kind == "other_site":
        events = _slice(op[1], op[2])
        how = op[3]
        if how == "claims-b":      # site-a's certificate, a batch in site-b's name
            _refused(primary, {"site": "site-b", "batch_id": "b", "events": events}, site_a, 403)
        elif how == "cert-b":      # site-b's certificate, a batch in site-a's name
            _refused(primary, {"site": SITE, "batch_id": "b", "events": events},
                     Identity("site", "site-b"), 403)
        elif how == "ids-of-a":    # site-b pushing site-a's event ids as its own batch
            _refused(primary, {"site": "site-b", "batch_id": "b", "events": events},
                     Identity("site", "site-b"), 400)
        elif how == "not-a-site":
            _refused(primary, {"site": SITE, "batch_id": "b", "events": events},
                     Identity("primary", SITE), 403)
        else:
            _refused(primary, {"site": SITE, "batch_id": "b", "events": events}, None, 401)


def _check_final(primary: Any, model: Model) -> None:
    def q(sql: str) -> list[tuple[Any, ...]]:
        return primary.database.run_sync(lambda db: [tuple(r) for r in db.conn.execute(sql)])

    pool_ids = {e["event_id"] for e in POOL}
    assert {r[0] for r in q("SELECT event_id FROM sync_events")} == pool_ids
    assert q("SELECT COUNT(*) FROM sync_events")[0][0] == N, "each event id applied once"
    for event_id, sha_applied in q("SELECT event_id, body_sha256 FROM sync_events"):
        assert sha_applied == sha(model.applied[event_id])
    ledger = dict(q("SELECT entry_id, amount FROM ledger WHERE origin = 'site-a'"))
    expected = {i: b["amount"] for i, b in model.applied.items()
                if any(e["event_id"] == i and e["kind"] == "ledger" for e in POOL)}
    assert ledger == expected, "ledger rows are exactly the distinct ledger events"
    jobs = {r[0] for r in q("SELECT event_id FROM site_job_log")}
    assert jobs == {e["event_id"] for e in POOL if e["kind"] == "job"}
    checks = {r[0] for r in q("SELECT event_id FROM site_counter_checks")}
    assert checks == {e["event_id"] for e in POOL if e["kind"] == "counter_check"}
    assert set(q("SELECT event_id, body_sha256 FROM sync_quarantine")) == model.quarantined
    cards = q("SELECT u.username, i.lookup FROM identities i JOIN users u ON u.id = i.user_id "
              "WHERE i.kind = 'card' ORDER BY i.lookup")
    assert cards == sorted([("alice", _lookup("a1")), ("alice", _lookup("a2")),
                            ("newbie", _lookup("n1"))], key=lambda r: r[1])
    assert q("SELECT checkpoint FROM sync_sites WHERE name = 'site-a'") == [(model.checkpoint,)]


@settings(derandomize=True, max_examples=100, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(OPS, min_size=1, max_size=10))
def test_replays_duplicates_reorders_and_forgeries_apply_each_event_once(ops):
    with tempfile.TemporaryDirectory() as tmp:
        primary = _primary(Path(tmp))
        try:
            model = Model()
            for op in ops:
                _run(primary, model, op)
            # then the site's honest drain: whatever was not applied yet goes now
            for start in range(0, N, 16):
                _accepted(primary, model, _slice(start, 16))
            _check_final(primary, model)
        finally:
            close(primary)


def test_the_pool_covers_every_event_kind():
    """The fuzz is only as good as its events: every pushed kind is in the pool."""
    assert {e["kind"] for e in POOL} == {"ledger", "job", "counter_check", "card", "user"}
    assert N == 48   # 2 users, 3 cards, 1 opening credit, 30 charges, 9 job events, 3 checks

"""The provider role in one process (docs/providers.md): a primary, a site serving its
providers, and a provider with the upstreams [primary, site], each on its own temp SQLite
file with the real storage and sync code; the links are loopback transports that drop
requests or answers (tests/unit/sync_helpers.py), time is a task.Clock.

What must hold: every charge the provider made is in the primary's ledger exactly once,
whichever path it took (directly, through the site, or both), after failovers and
fail-backs; and a provider's database serves as a site's after promotion.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import task

from appliance.config import ConfigError, parse
from appliance.core.sync import SiteSync
from appliance.pki import Identity
from appliance.protocols.http.sync_api import SyncApi
from appliance.protocols.http.sync_client import HttpSyncClient, LoopbackTransport
from appliance.roles.provider import ProviderRelay, ProviderSync
from appliance.storage.database import Database
from appliance.storage.store import _insert_ledger, ensure_account_sync
from appliance.storage.sync_store import SyncStore
from tests.unit.sync_helpers import (
    FlakyTransport,
    PrimaryNode,
    SiteNode,
    close,
    make_primary,
    make_site,
    open_db,
)

PRIMARY_URL, SITE_URL = "https://hq:8633", "https://branch:8634"


@dataclass
class ProviderNode:
    name: str
    database: Database
    sync: ProviderSync
    to_primary: FlakyTransport
    to_site: FlakyTransport
    clock: task.Clock

    def charge(self, n: int, start: int = 0, amount: int = 10) -> list[str]:
        """`n` print charges made at the provider; returns their event ids."""

        def work(db: Any) -> None:
            account = ensure_account_sync(db, "user:alice", "personal", 0)
            for i in range(start, start + n):
                _insert_ledger(db, f"print:job-{i}:1", account, -amount, "charge", "print",
                               {"pages": 1, "i": i}, device="lobby", impressions=1,
                               colour=False)

        self.database.run_sync(work)
        return [f"{self.name}/print:job-{i}:1" for i in range(start, start + n)]

    def outbox(self) -> int:
        return int(self.database.run_sync(
            lambda db: db.conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]))


@dataclass
class World:
    primary: PrimaryNode
    site: SiteNode
    relay: SyncApi
    provider: ProviderNode
    clock: task.Clock

    async def step(self, ticks: int = 1) -> None:
        """`ticks` heartbeat intervals: the provider's tick, then the site's."""
        for _ in range(ticks):
            self.clock.advance(5.0)
            await self.provider.sync.tick()
            await self.site.sync.tick()

    def primary_charges(self, name: str = "p1") -> dict[str, int]:
        rows = self.primary.database.run_sync(lambda db: db.conn.execute(
            "SELECT entry_id, COUNT(*), MAX(origin) FROM ledger WHERE entry_id LIKE ? "
            "GROUP BY entry_id", (f"{name}/%",)).fetchall())
        assert all(r[2] == name for r in rows), rows
        return {r[0]: r[1] for r in rows}


def build(tmp: Path, rng: random.Random | None = None, *, misses: int = 2,
          successes: int = 2, **flaky: float) -> World:
    rng = rng or random.Random(0)
    clock = task.Clock()
    primary = make_primary(tmp, clock)
    site = make_site(tmp, primary, "branch", rng=rng, clock=clock, misses=misses,
                     successes=successes)
    relay = SyncApi(ProviderRelay(store=site.sync_store, site="branch", clock=clock.seconds),
                    pushers=frozenset({"provider"}))
    database = open_db(tmp / "p1.sqlite3", "site", "p1")
    me = Identity("provider", "p1")
    to_primary = FlakyTransport(LoopbackTransport(primary.api, me), rng, **flaky)
    to_site = FlakyTransport(LoopbackTransport(relay, me), rng, **flaky)
    sync = ProviderSync(name="p1", store=SyncStore(database),
                        upstreams=[(PRIMARY_URL, HttpSyncClient(to_primary)),
                                   (SITE_URL, HttpSyncClient(to_site))],
                        clock=clock, heartbeat_interval=5.0, offline_after_misses=misses,
                        online_after_successes=successes, push_batch_size=7)
    return World(primary, site, relay,
                 ProviderNode("p1", database, sync, to_primary, to_site, clock), clock)


@pytest.fixture
def world(tmp_path):
    w = build(tmp_path)
    yield w
    close(w.primary, w.site, w.provider)


# ---------------------------------------------------------------- configuration


def _provider_root(tmp_path: Path, **provider: Any) -> dict[str, Any]:
    return {"role": "provider", "name": "p1", "state_dir": str(tmp_path / "state"),
            "secrets_dir": str(tmp_path / "secrets"),
            "provider": {"upstreams": [PRIMARY_URL, SITE_URL], "ca_file": "pki/ca.crt",
                         "cert_file": "pki/p1.crt", "key_file": "pki/p1.key", **provider}}


def test_a_provider_configuration(tmp_path):
    config = parse(_provider_root(tmp_path, heartbeat_interval=0.5), base_dir=tmp_path)
    link = config.provider
    assert config.role == "provider" and link is not None and config.primary is None
    assert link.upstreams == (PRIMARY_URL, SITE_URL)
    assert link.cert_file == tmp_path / "pki/p1.crt"
    assert (link.heartbeat_interval, link.offline_after_misses,
            link.online_after_successes) == (0.5, 3, 3)


def test_every_provider_mistake_is_reported_at_once_with_its_path(tmp_path):
    root = _provider_root(tmp_path, upstreams=["http://hq", PRIMARY_URL, PRIMARY_URL + "/"],
                          push_batch_size=9000, offline_after_misses=0, colour=True)
    del root["provider"]["key_file"]
    root["primary"] = {"url": PRIMARY_URL, "ca_file": "a", "cert_file": "b", "key_file": "c"}
    root["sync"] = {"ca_file": "a", "cert_file": "b", "key_file": "c"}
    with pytest.raises(ConfigError) as caught:
        parse(root)
    errors = caught.value.errors
    for expected in ("provider.upstreams[0]: expected https://host:port",
                     "provider.upstreams[2]: 'https://hq:8633/' is listed twice",
                     "provider.key_file: required", "provider.push_batch_size: at most 5000",
                     "provider.offline_after_misses: must be positive",
                     "provider.colour: unknown setting",
                     "primary: only a site has a primary",
                     "sync: only the primary and a site serve sync"):
        assert any(e.startswith(expected) for e in errors), (expected, errors)
    with pytest.raises(ConfigError) as caught:
        parse({k: v for k, v in _provider_root(tmp_path).items() if k != "provider"})
    assert caught.value.errors == ["provider: required for role 'provider' (upstreams, "
                                   "ca_file, cert_file, key_file)"]


def test_a_site_serving_providers_needs_a_primary(tmp_path):
    root = {"role": "site", "name": "branch", "state_dir": str(tmp_path / "state"),
            "secrets_dir": str(tmp_path / "secrets"),
            "sync": {"port": 8634, "ca_file": "a", "cert_file": "b", "key_file": "c"}}
    with pytest.raises(ConfigError) as caught:
        parse(root)
    assert caught.value.errors == ["sync: a site serves providers only with a [primary] to "
                                   "forward their events to"]
    root["primary"] = {"url": PRIMARY_URL, "ca_file": "a", "cert_file": "b", "key_file": "c"}
    config = parse(root)
    assert config.sync is not None and config.sync.port == 8634


def test_a_promoted_provider_reports_to_its_first_upstream(tmp_path):
    """Promotion is the change of role: a site with [provider] and no [primary] takes
    the first upstream as its primary, with the same certificate and timings."""
    config = parse({**_provider_root(tmp_path, heartbeat_interval=0.5), "role": "site"},
                   base_dir=tmp_path)
    link = config.primary
    assert config.role == "site" and link is not None
    assert (link.url, link.cert_file, link.heartbeat_interval) == (
        PRIMARY_URL, tmp_path / "pki/p1.crt", 0.5)
    with pytest.raises(ConfigError) as caught:
        parse({**_provider_root(tmp_path), "role": "site",
               "primary": {"url": PRIMARY_URL, "ca_file": "a", "cert_file": "b",
                           "key_file": "c"}})
    assert caught.value.errors[0].startswith("provider: a promoted provider (role 'site')")
    with pytest.raises(ConfigError) as caught:
        parse({**_provider_root(tmp_path), "role": "primary",
               "sync": {"ca_file": "a", "cert_file": "b", "key_file": "c"}})
    assert caught.value.errors == ["provider: only a provider has upstreams "
                                   "(this is role 'primary')"]


# ---------------------------------------------------------------- reporting and failover


@pytest_twisted.ensureDeferred
async def test_charges_go_straight_to_the_primary_while_it_answers(world):
    ids = world.provider.charge(10)
    await world.step()
    assert world.provider.sync.active == 0
    assert world.primary_charges() == {i: 1 for i in ids}
    assert world.provider.outbox() == 0
    assert world.site.count("SELECT COUNT(*) FROM outbox") == 0
    await world.step()   # the first heartbeat said "starting"
    sites = world.primary.database.run_sync(lambda db: db.conn.execute(
        "SELECT name, mode FROM sync_sites WHERE name = 'p1'").fetchall())
    assert [tuple(r) for r in sites] == [("p1", "online")]


@pytest_twisted.ensureDeferred
async def test_failover_to_the_site_and_back_charges_each_job_once(world):
    """The primary applies a batch and its answer is lost; then the primary is cut. The
    provider fails over to its site, which relays the same events: the primary finds
    them applied (duplicates). New charges go through the site; when the primary is back
    the provider fails back after K answers."""
    await world.step()                       # both upstreams answer: the primary is active
    first = world.provider.charge(5)
    world.provider.to_primary.after = 1.0    # the primary applies, the answers are lost
    world.site.transport.down = True         # (and the site does not pull them meanwhile)
    await world.step()
    world.provider.to_primary.after = 0.0
    world.site.transport.down = False
    assert world.primary_charges() == {i: 1 for i in first}
    assert world.provider.outbox() == 5      # not acknowledged: still owed

    world.provider.to_primary.down = True
    more = world.provider.charge(6, start=5)
    await world.step(3)
    assert world.provider.sync.active == 1, "failed over to the site"
    assert world.provider.outbox() == 0
    assert world.primary_charges() == {i: 1 for i in first + more}
    relayed = world.site.count("SELECT COUNT(*) FROM ledger WHERE origin = 'p1'")
    assert relayed == 11, "the site's ledger has the provider's charges (offline balances)"
    duplicates = world.primary.count("SELECT duplicates FROM sync_sites WHERE name = 'branch'")
    assert duplicates == 5

    world.provider.to_primary.down = False
    await world.step()
    assert world.provider.sync.active == 1, "one answer is not enough (hysteresis)"
    await world.step()
    assert world.provider.sync.active == 0, "failed back to the primary"
    last = world.provider.charge(3, start=11)
    await world.step()
    assert world.primary_charges() == {i: 1 for i in first + more + last}
    assert world.site.count("SELECT COUNT(*) FROM ledger WHERE origin = 'p1'") == 14, \
        "the site pulled the rest from the primary, none doubled"
    assert world.primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0
    assert [url for _, url in world.provider.sync.switches] == [PRIMARY_URL, SITE_URL,
                                                                 PRIMARY_URL]


@pytest_twisted.ensureDeferred
async def test_a_charge_the_site_already_pulled_is_not_relayed_again(world):
    """The primary had the provider's events (answer lost) and the site pulled them from
    the stream before the provider failed over: the site answers duplicates."""
    await world.step()
    ids = world.provider.charge(4)
    world.provider.to_primary.after = 1.0
    await world.step()
    assert world.site.count("SELECT COUNT(*) FROM ledger WHERE origin = 'p1'") == 4
    world.provider.to_primary.down = True
    await world.step(3)
    assert world.provider.outbox() == 0
    assert world.site.count("SELECT COUNT(*) FROM outbox") == 0, "nothing to relay"
    assert world.site.count("SELECT COUNT(*) FROM sync_quarantine") == 0
    assert world.primary_charges() == {i: 1 for i in ids}


@pytest_twisted.ensureDeferred
async def test_with_no_upstream_the_charges_wait_in_the_outbox(world):
    world.provider.to_primary.down = world.provider.to_site.down = True
    ids = world.provider.charge(3)
    await world.step(4)
    assert world.provider.sync.active is None and world.provider.outbox() == 3
    world.provider.to_site.down = False
    await world.step(2)
    assert world.provider.sync.active == 1 and world.provider.outbox() == 0
    # The primary has never seen p1's certificate: the relayed charges are held, not
    # applied, until p1 connects with a provider certificate (docs/providers.md).
    assert world.primary_charges() == {}
    assert world.primary.count("SELECT COUNT(*) FROM sync_quarantine "
                               "WHERE reason LIKE 'held: %'") == 3
    world.provider.to_primary.down = False
    await world.step()
    assert world.primary_charges() == {i: 1 for i in ids}
    assert world.primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
@pytest_twisted.ensureDeferred
async def test_a_seeded_storm_of_cuts_and_lost_answers_loses_and_doubles_nothing(
        tmp_path, seed):
    rng = random.Random(seed)
    w = build(tmp_path, rng, before=0.15, after=0.15)
    w.site.transport.before, w.site.transport.after = 0.15, 0.15
    try:
        made: list[str] = []
        for _ in range(60):
            if rng.random() < 0.1:
                w.provider.to_primary.down = not w.provider.to_primary.down
            if rng.random() < 0.05:
                w.provider.to_site.down = not w.provider.to_site.down
            if rng.random() < 0.05:
                w.site.transport.down = not w.site.transport.down
            made += w.provider.charge(rng.randrange(0, 6), start=len(made))
            await w.step()
        switches = len(w.provider.sync.switches)
        for link in (w.provider.to_primary, w.provider.to_site, w.site.transport):
            link.down, link.before, link.after = False, 0.0, 0.0
        await w.step(6)
        assert w.provider.outbox() == 0 and w.site.count("SELECT COUNT(*) FROM outbox") == 0
        assert w.primary_charges() == {i: 1 for i in made}
        assert len(made) > 50 and switches >= 3, (len(made), switches)
        assert w.primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0
        assert w.site.count("SELECT COUNT(*) FROM sync_quarantine") == 0
    finally:
        close(w.primary, w.site, w.provider)


# ---------------------------------------------------------------- the relay's wire


async def _push(api: SyncApi, peer: Identity | None, payload: Any) -> tuple[int, dict]:
    import json

    status, body = await api.handle("POST", "/sync/v1/events", "",
                                    json.dumps(payload).encode(), peer)
    return status, json.loads(body)


def _event(seq: int, event_id: str, body: dict[str, Any], kind: str = "ledger") -> dict:
    return {"seq": seq, "event_id": event_id, "kind": kind, "body": body}


LEDGER_BODY = {"entry_id": "print:x:1", "account": "user:alice", "account_kind": "personal",
               "amount": -10, "kind": "charge", "source": "print", "job_uuid": "x",
               "device": "lobby", "impressions": 1, "colour": 0, "body": {"pages": 1},
               "created_at": 1764150000.5}


@pytest_twisted.ensureDeferred
async def test_the_sites_sync_port_takes_providers_only_and_serves_no_stream(world):
    batch = {"site": "p1", "batch_id": "t", "events": [_event(1, "p1/print:x:1", LEDGER_BODY)]}
    status, answer = await _push(world.relay, Identity("site", "p1"), batch)
    assert (status, answer["error"]["code"]) == (403, "not_a_site")
    status, answer = await _push(world.relay, Identity("provider", "p2"), batch)
    assert (status, answer["error"]["code"]) == (403, "wrong_site")
    status, answer = await _push(world.relay, Identity("provider", "p1"), batch)
    assert status == 200 and answer["applied"] == 1
    status, answer = await _push(world.relay, Identity("provider", "p1"), batch)
    assert status == 200 and (answer["applied"], answer["duplicates"]) == (0, 1)
    other = {**batch, "events": [_event(2, "p1/print:x:1", {**LEDGER_BODY, "amount": -99})]}
    status, answer = await _push(world.relay, Identity("provider", "p1"), other)
    assert status == 200 and answer["quarantined"][0]["reason"].startswith(
        "event id already received with another body")
    status, _ = await world.relay.handle("GET", "/sync/v1/changes", "since=0", b"",
                                         Identity("provider", "p1"))
    assert status == 404
    assert world.site.count("SELECT COUNT(*) FROM outbox WHERE kind = 'relay'") == 1


@pytest_twisted.ensureDeferred
async def test_the_primary_quarantines_relay_events_it_cannot_read(world):
    bad = [
        {"origin": "branch", "event_id": "branch/print:x:1", "kind": "ledger",
         "body": LEDGER_BODY},                                    # the site's own name
        {"origin": "p1", "event_id": "p2/print:x:1", "kind": "ledger", "body": LEDGER_BODY},
        {"origin": "p1", "event_id": "p1/print:x:1", "kind": "relay", "body": LEDGER_BODY},
        {"origin": "p1", "event_id": "p1/print:y:1", "kind": "ledger",
         "body": LEDGER_BODY},                                    # entry id mismatch
        {"origin": "p1", "event_id": "p1/x", "kind": "gizmo", "body": {}},
    ]
    batch = {"site": "branch", "batch_id": "t",
             "events": [_event(i + 1, f"branch/relay:{i}", b, "relay")
                        for i, b in enumerate(bad)]}
    status, answer = await _push(world.primary.api, Identity("site", "branch"), batch)
    assert status == 200 and answer["applied"] == 0
    reasons = [q["reason"] for q in answer["quarantined"]]
    assert [r.split(":")[0] for r in reasons] == ["invalid relay event"] * 3 + [
        "invalid ledger event", "unknown event kind 'gizmo'"], reasons
    assert world.primary.count("SELECT COUNT(*) FROM ledger") == 0


# ---------------------------------------------------------------- promotion


@pytest_twisted.ensureDeferred
async def test_promotion_keeps_held_jobs_history_and_the_outbox(tmp_path):
    """A provider holds jobs and has charged others; its configuration becomes a site's
    and it is rebuilt over the same state folder: the held jobs are still held and are
    released and charged there, the ledger and the unpushed outbox are still there, and
    new charges keep the same event-id namespace."""
    from twisted.internet import reactor

    from appliance.app import build_site
    from appliance.core.model import JobOptions
    from appliance.pki import issue, make_ca
    from appliance.storage.store import add_user_sync
    from tests.unit.test_release import PDF, ScriptedDevice

    ca = make_ca()
    (tmp_path / "pki").mkdir()
    (tmp_path / "pki" / "ca.crt").write_bytes(ca.cert_pem)
    issue(ca, kind="provider", name="p1").write(tmp_path / "pki", "p1")
    root = {**_provider_root(tmp_path), "ipp": {"port": 0}, "device_api": {"port": 0},
            "lpd": {"port": 0}, "jobs": {"use_ghostscript": False},
            "devices": [{"name": "lobby", "uri": "ipp://127.0.0.1:9/ipp/print"}]}
    provider = build_site(parse(root, base_dir=tmp_path), reactor)
    assert provider.config.role == "provider"
    assert isinstance(provider.sync, ProviderSync)
    provider.database.run_sync(lambda db: add_user_sync(db, "alice", "A", "", [], 1000))
    held = []
    for _ in range(3):
        document = await provider.jobs.begin_document("alice")
        document.write(PDF)
        job = await provider.jobs.submit("findme", "alice", "report",
                                         JobOptions(colour_mode="monochrome"), document,
                                         "application/pdf")
        held.append(job.uuid)
    provider.database.run_sync(lambda db: _insert_ledger(
        db, "print:earlier:1", ensure_account_sync(db, "user:alice", "personal", 0), -20,
        "charge", "print", {"pages": 2}, device="lobby", impressions=2, colour=False))
    await provider.stop()

    site = build_site(parse({**root, "role": "site"}, base_dir=tmp_path), reactor)
    try:
        assert site.config.role == "site" and isinstance(site.sync, SiteSync)
        assert site.sync.client.transport.base_url == PRIMARY_URL
        jobs = await site.jobs.held_for("alice")
        assert sorted(j.uuid for j in jobs) == sorted(held)
        site.release.drivers["ipp"] = ScriptedDevice()
        site.release.poll_interval = 0.01
        user = site.database.run_sync(lambda db: db.conn.execute(
            "SELECT account_id FROM users WHERE username = 'alice'").fetchone()[0])
        report = await site.release.release(owner="alice", account_id=user,
                                            device_name="lobby", job_ids=[jobs[0].id])
        assert report.released == [jobs[0].id] and report.charged > 0
        assert len(await site.jobs.held_for("alice")) == 2
        outbox = site.database.run_sync(lambda db: [r[0] for r in db.conn.execute(
            "SELECT event_id FROM outbox WHERE event_id LIKE 'p1/print:%' ORDER BY seq").fetchall()])
        assert outbox == ["p1/print:earlier:1", f"p1/print:{jobs[0].uuid}:1"], \
            "the history is still owed to the primary, and new charges follow it"
    finally:
        await site.stop()

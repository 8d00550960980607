"""Who may be a relayed event's origin (docs/providers.md, "Identities"): the primary
records the certificate kind each name connected with (`peer_kinds`, migration 0008) and
applies a `relay` event only when its origin is a known provider. An origin that is a
site is refused for good; one never seen is held and applied when it first connects with
a provider certificate; a provider certificate may not relay at all.

The world is test_provider.py's: a primary, a site "branch" serving providers, and a
provider "p1", in one process over loopback transports on a task.Clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from appliance.pki import Identity
from appliance.protocols.http.sync_api import SyncApi
from tests.unit.sync_helpers import close
from tests.unit.test_provider import LEDGER_BODY, World, build

HELD = "SELECT COUNT(*) FROM sync_quarantine WHERE reason LIKE 'held: %'"


@pytest.fixture
def w(tmp_path: Path) -> Iterator[World]:
    world = build(tmp_path)
    yield world
    close(world.primary, world.site, world.provider)


async def _post(api: SyncApi, what: str, peer: Identity, payload: Any) -> dict[str, Any]:
    status, body = await api.handle("POST", f"/sync/v1/{what}", "",
                                    json.dumps(payload).encode(), peer)
    assert status == 200, body
    return dict(json.loads(body))


def _relay(seq: int, site: str, origin: str, entry: str = "print:x:1",
           amount: int = -10) -> dict[str, Any]:
    inner = f"{origin}/{entry}"
    return {"seq": seq, "event_id": f"{site}/relay:{inner}", "kind": "relay",
            "body": {"origin": origin, "event_id": inner, "kind": "ledger",
                     "body": {**LEDGER_BODY, "entry_id": entry, "amount": amount}}}


def _batch(site: str, *events: dict[str, Any]) -> dict[str, Any]:
    return {"site": site, "batch_id": f"{site}:t", "events": list(events)}


async def _heartbeat(world: World, peer: Identity) -> None:
    await _post(world.primary.api, "heartbeat", peer,
                {"site": peer.name, "mode": "online", "outbox": 0})


def _kinds(world: World) -> set[tuple[str, str]]:
    rows = world.primary.database.run_sync(lambda db: db.conn.execute(
        "SELECT name, kind FROM peer_kinds").fetchall())
    return {(r[0], r[1]) for r in rows}


@pytest_twisted.ensureDeferred
async def test_the_primary_records_each_peers_certificate_kind(w: World):
    await w.step()
    await _heartbeat(w, Identity("provider", "p9"))
    assert _kinds(w) == {("branch", "site"), ("p1", "provider"), ("p9", "provider")}
    # A provider promoted to a site keeps its provider row and gains a site row.
    await _heartbeat(w, Identity("site", "p9"))
    assert ("p9", "provider") in _kinds(w) and ("p9", "site") in _kinds(w)


@pytest_twisted.ensureDeferred
async def test_a_relay_for_another_site_is_refused(w: World):
    """A dishonest site relays events under another site's name: refused with the reason,
    nothing applied, and that site's own event with the same id still applies."""
    await _heartbeat(w, Identity("site", "branch"))
    await _heartbeat(w, Identity("site", "victim"))
    answer = await _post(w.primary.api, "events", Identity("site", "branch"),
                         _batch("branch", _relay(1, "branch", "victim", amount=-999)))
    assert answer["applied"] == 0
    (q,) = answer["quarantined"]
    assert q["reason"] == ("invalid relay event: origin 'victim' is a site, not a "
                           "provider (only a provider's events are relayed)")
    assert w.primary.count("SELECT COUNT(*) FROM ledger") == 0
    # The victim's own event under that id is not pre-empted.
    own = {"seq": 1, "event_id": "victim/print:x:1", "kind": "ledger",
           "body": LEDGER_BODY}
    answer = await _post(w.primary.api, "events", Identity("site", "victim"),
                         _batch("victim", own))
    assert (answer["applied"], answer["quarantined"]) == (1, [])
    assert w.primary.count("SELECT amount FROM ledger WHERE entry_id = "
                           "'victim/print:x:1'") == -10
    assert w.primary.count(HELD) == 0


@pytest_twisted.ensureDeferred
async def test_a_relay_for_an_unknown_origin_is_held_until_it_connects_as_a_provider(w: World):
    await _heartbeat(w, Identity("site", "branch"))
    answer = await _post(w.primary.api, "events", Identity("site", "branch"),
                         _batch("branch", _relay(1, "branch", "p7"),
                                _relay(2, "branch", "p7", "print:y:1", -20)))
    assert answer["applied"] == 0 and answer["checkpoint"] == 2
    assert [q["reason"] for q in answer["quarantined"]] == [
        "held: relay origin 'p7' is not a known provider (never seen with a provider "
        "certificate); applied when it connects with one"] * 2
    assert w.primary.count(HELD) == 2 and w.primary.count("SELECT COUNT(*) FROM ledger") == 0
    # The same relay again (its answer was lost): still held, not doubled.
    answer = await _post(w.primary.api, "events", Identity("site", "branch"),
                         _batch("branch", _relay(1, "branch", "p7")))
    assert w.primary.count(HELD) == 2

    # p7 connects with a provider certificate: its held events are applied, once, with
    # p7 as their origin, and p7's own push of the same events finds duplicates.
    await _heartbeat(w, Identity("provider", "p7"))
    assert w.primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0
    rows = w.primary.database.run_sync(lambda db: db.conn.execute(
        "SELECT entry_id, amount, origin FROM ledger ORDER BY entry_id").fetchall())
    assert [tuple(r) for r in rows] == [("p7/print:x:1", -10, "p7"),
                                        ("p7/print:y:1", -20, "p7")]
    assert w.primary.count("SELECT quarantined FROM sync_sites WHERE name = 'branch'") == 0
    direct = {"seq": 1, "event_id": "p7/print:x:1", "kind": "ledger",
              "body": {**LEDGER_BODY, "entry_id": "print:x:1"}}
    answer = await _post(w.primary.api, "events", Identity("provider", "p7"),
                         _batch("p7", direct))
    assert (answer["applied"], answer["duplicates"]) == (0, 1)


@pytest_twisted.ensureDeferred
async def test_a_held_relay_that_conflicts_with_the_providers_push_is_not_applied(w: World):
    """A site relays a body for an unknown name; the name turns out to be a provider that
    pushes another body under the same id: the provider's first contact applies the held
    one (the documented limit: any site may relay for any provider), and the primary never
    applies two bodies for one id."""
    await _post(w.primary.api, "events", Identity("site", "branch"),
                _batch("branch", _relay(1, "branch", "p7", amount=-10),
                       _relay(2, "branch", "p7", "print:z:1", -30)))
    await _post(w.primary.api, "events", Identity("site", "branch"),
                _batch("branch", _relay(3, "branch", "p7", amount=-99)))
    assert w.primary.count(HELD) == 3
    await _heartbeat(w, Identity("provider", "p7"))
    assert w.primary.count("SELECT COUNT(*) FROM ledger WHERE entry_id = "
                           "'p7/print:x:1'") == 1
    assert w.primary.count("SELECT SUM(amount) FROM ledger") == -40
    (reason,) = w.primary.database.run_sync(lambda db: [r[0] for r in db.conn.execute(
        "SELECT reason FROM sync_quarantine").fetchall()])
    assert reason.startswith("event id already applied with another body")


@pytest_twisted.ensureDeferred
async def test_a_provider_certificate_may_not_relay(w: World):
    await _heartbeat(w, Identity("provider", "p7"))
    answer = await _post(w.primary.api, "events", Identity("provider", "p1"),
                         _batch("p1", _relay(1, "p1", "p7")))
    assert answer["applied"] == 0
    assert answer["quarantined"][0]["reason"] == (
        "invalid relay event: a provider certificate may not relay")
    assert w.primary.count("SELECT COUNT(*) FROM ledger") == 0


@pytest_twisted.ensureDeferred
async def test_a_site_relays_for_a_known_provider_and_its_own_name_is_refused(w: World):
    await _heartbeat(w, Identity("provider", "p7"))
    answer = await _post(w.primary.api, "events", Identity("site", "branch"),
                         _batch("branch", _relay(1, "branch", "p7"),
                                _relay(2, "branch", "branch", "print:b:1")))
    assert answer["applied"] == 1
    (q,) = answer["quarantined"]
    assert q["reason"] == "invalid relay event: origin: the name of another appliance"
    assert w.primary.count("SELECT origin = 'p7' FROM ledger") == 1


@pytest_twisted.ensureDeferred
async def test_a_name_enrolled_as_a_site_is_refused_as_an_origin_before_it_connects(w: World):
    from appliance.storage.enroll_store import create_token_sync, ensure_schema_sync, redeem_sync

    def enroll(db: Any) -> tuple[str, ...]:
        ensure_schema_sync(db)
        create_token_sync(db, "t1", "digest", "branch-9", 100.0, 200.0)
        return redeem_sync(db, "t1", "digest", "spki", 150.0, False,
                           lambda now: ("0a", "PEM", now + 3600))

    assert w.primary.database.run_sync(enroll) == ("issued", "PEM")
    assert _kinds(w) == {("branch-9", "site")}
    answer = await _post(w.primary.api, "events", Identity("site", "branch"),
                         _batch("branch", _relay(1, "branch", "branch-9")))
    assert answer["quarantined"][0]["reason"].startswith(
        "invalid relay event: origin 'branch-9' is a site, not a provider")
    assert w.primary.count(HELD) == 0 and w.primary.count("SELECT COUNT(*) FROM ledger") == 0

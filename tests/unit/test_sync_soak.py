"""Acceptance-sized runs on simulated time (task.Clock, real storage and sync code, no
sockets): 200 flaps over 10,000 charges, and a 7-day outage with 50,000 charges then
the merge. Every charge ends in the primary's ledger exactly once."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import task

from appliance.core.mode import Mode
from tests.unit.sync_helpers import close, make_primary, make_site

DAY = 86_400.0


def assert_exactly_once(primary, site, n):
    ids = primary.ledger_ids()
    expected = {f"{site.name}/usage:{site.name}-{i}" for i in range(n)}
    lost = expected - set(ids)
    doubled = len(ids) - len(set(ids))
    assert (len(lost), doubled) == (0, 0)
    assert set(ids) == expected
    assert primary.count("SELECT COUNT(*) FROM sync_quarantine") == 0


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_200_flaps_over_10000_charges(tmp_path):
    rng = random.Random(200)
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock, rng=random.Random(201), batch=250,
                     misses=3, successes=3, after=0.05, before=0.05)
    try:
        flaps, added, steps = 0, 0, 0
        while added < 10_000 or flaps < 200 or site.count("SELECT COUNT(*) FROM outbox"):
            steps += 1
            assert steps < 20_000
            if added < 10_000:
                n = min(10_000 - added, rng.randint(1, 15))
                site.charge(n, start=added)
                added += n
            if flaps < 200 and rng.random() < 0.3:
                site.transport.down = not site.transport.down
                flaps += not site.transport.down      # a flap: down, then up again
            elif flaps >= 200:
                site.transport.down = False
            clock.advance(5)
            await site.sync.tick()
        assert flaps == 200
        assert sum(t.after is Mode.OFFLINE for t in site.mode.history) >= 20
        assert_exactly_once(primary, site, 10_000)
    finally:
        close(site, primary)


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_a_seven_day_outage_with_50000_charges_then_the_merge(tmp_path):
    rng = random.Random(7)
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock, batch=1000, misses=3, successes=3)
    site.sync.heartbeat_interval = 300.0
    try:
        await site.sync.tick()
        assert site.mode.online
        site.transport.down = True
        added = 0
        started = clock.seconds()
        while clock.seconds() - started < 7 * DAY:
            clock.advance(300)
            await site.sync.tick()
            if rng.random() < 0.2 and added < 50_000:
                n = min(50_000 - added, rng.randint(1, 100))
                site.charge(n, start=added)
                added += n
        if added < 50_000:
            site.charge(50_000 - added, start=added)
        assert site.mode.state is Mode.OFFLINE
        assert primary.count("SELECT COUNT(*) FROM ledger") == 0
        assert site.count("SELECT COUNT(*) FROM outbox") == 50_000
        site.transport.down = False
        for _ in range(4):
            clock.advance(300)
            await site.sync.tick()
        assert site.mode.online
        assert site.count("SELECT COUNT(*) FROM outbox") == 0
        assert_exactly_once(primary, site, 50_000)
        report = (await primary.store.rows("outage_reports"))[0]
        assert report["ended_at"] - report["started_at"] >= 7 * DAY
        assert report["events_merged"] == 50_000 and report["merged_at"] is not None
        assert site.count("SELECT COUNT(*) FROM ledger") == 50_000, "not doubled by the pull"
    finally:
        close(site, primary)

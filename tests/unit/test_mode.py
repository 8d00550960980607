"""Online/offline with hysteresis: the pure state machine, then the site's sync service
driving it on a task.Clock against an in-process primary."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import task

from appliance.core.mode import LinkMode, Mode
from tests.unit.sync_helpers import close, make_primary, make_site


def machine(misses=3, successes=3):
    clock = task.Clock()
    return LinkMode(offline_after_misses=misses, online_after_successes=successes,
                    clock=clock.seconds), clock


def feed(mode, clock, outcomes):
    for ok in outcomes:
        clock.advance(5)
        mode.record(ok)


def test_a_site_starts_unknown_and_the_first_answer_makes_it_online():
    mode, clock = machine()
    assert mode.state is Mode.STARTING and not mode.online
    clock.advance(1)
    transition = mode.record(True)
    assert transition is not None and transition.after is Mode.ONLINE
    assert transition.outage_started is None, "starting is not an outage"


def test_offline_after_a_window_of_consecutive_misses_only():
    mode, clock = machine(misses=3)
    mode.record(True)
    feed(mode, clock, [False, False, True, False, False, True])
    assert mode.state is Mode.ONLINE, "misses that do not follow each other are not a window"
    feed(mode, clock, [False, False])
    assert mode.state is Mode.ONLINE
    feed(mode, clock, [False])
    assert mode.state is Mode.OFFLINE
    assert mode.history[-1].at == clock.seconds()


def test_one_answer_after_going_offline_does_not_bring_the_site_back():
    mode, clock = machine(misses=2, successes=3)
    mode.record(True)
    feed(mode, clock, [False, False])
    offline_at = clock.seconds()
    assert mode.state is Mode.OFFLINE
    feed(mode, clock, [True, False, True, True, False, True])
    assert mode.state is Mode.OFFLINE, "a flapping link keeps the site offline"
    feed(mode, clock, [True, True])
    assert mode.state is Mode.ONLINE
    back = mode.history[-1]
    assert back.outage_started == offline_at and back.at == clock.seconds()


def test_starting_sites_go_offline_on_misses_too():
    mode, clock = machine(misses=2, successes=2)
    feed(mode, clock, [False, False])
    assert mode.state is Mode.OFFLINE
    feed(mode, clock, [True])
    assert mode.state is Mode.OFFLINE


@pytest.mark.parametrize("seed", range(5))
def test_every_transition_is_earned_on_a_random_link(seed):
    """Replay 5,000 seeded outcomes: each OFFLINE follows W misses, each ONLINE (after an
    outage) follows K successes, and there are no transitions to the same mode."""
    rng = random.Random(seed)
    w, k = rng.randint(1, 4), rng.randint(2, 5)
    mode, clock = machine(misses=w, successes=k)
    outcomes = [rng.random() < 0.6 for _ in range(5000)]
    seen: list[tuple[int, Mode]] = []
    for i, ok in enumerate(outcomes):
        clock.advance(1)
        transition = mode.record(ok)
        if transition is not None:
            assert transition.before is not transition.after
            seen.append((i, transition.after))
    assert seen, "a random link moves the mode"
    for i, after in seen:
        if after is Mode.OFFLINE:
            assert outcomes[i - w + 1:i + 1] == [False] * w
        elif i > 0 and any(m is Mode.OFFLINE for _, m in seen if _ < i):
            assert outcomes[i - k + 1:i + 1] == [True] * k


def test_thresholds_must_be_positive():
    with pytest.raises(ValueError):
        LinkMode(offline_after_misses=0, online_after_successes=1, clock=lambda: 0.0)


@pytest_twisted.ensureDeferred
async def test_the_site_syncs_only_online_and_reports_its_outage(tmp_path):
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock, misses=2, successes=3)
    try:
        site.sync.start()                      # ticks at once: STARTING → ONLINE
        await _settle(site)
        assert site.mode.online
        site.transport.down = True
        for _ in range(2):
            clock.advance(5)
            await _settle(site)
        assert site.mode.state is Mode.OFFLINE
        went_offline = clock.seconds()
        site.charge(40)                        # offline charges: the site serves as before
        site.transport.down = False
        clock.advance(5)
        await _settle(site)
        site.transport.down = True             # one answer, then the link drops again
        clock.advance(5)
        await _settle(site)
        assert site.mode.state is Mode.OFFLINE
        assert primary.count("SELECT COUNT(*) FROM ledger") == 0, "offline: nothing pushed"
        site.transport.down = False
        for _ in range(3):
            clock.advance(5)
            await _settle(site)
        assert site.mode.online
        assert primary.count("SELECT COUNT(*) FROM ledger") == 40
        assert site.count("SELECT COUNT(*) FROM outbox") == 0
        clock.advance(5)
        await _settle(site)                    # the next heartbeat says the outbox is empty
        reports = await primary.store.rows("outage_reports")
        assert len(reports) == 1
        report = reports[0]
        assert report["site"] == "site-a" and report["started_at"] == went_offline
        assert report["ended_at"] == site.mode.history[-1].at
        assert report["events_merged"] == 40 and report["merged_at"] is not None
        sites = await primary.store.rows("sync_sites")
        assert sites[0]["mode"] == "online" and sites[0]["outbox"] == 0
        await site.sync.stop()
    finally:
        close(site, primary)


async def _settle(site):
    while site.sync._ticking is not None:
        await site.sync._ticking


@pytest_twisted.ensureDeferred
async def test_an_outage_outlives_a_restart_of_the_site(tmp_path):
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock, misses=2, successes=2)
    try:
        await site.sync.tick()
        site.transport.down = True
        for _ in range(2):
            clock.advance(5)
            await site.sync.tick()
        went_offline = clock.seconds()
        assert site.mode.state is Mode.OFFLINE
        site.charge(7)
    finally:
        close(site)
    clock.advance(60)                              # restarted a minute later, link still down
    site = make_site(tmp_path, primary, clock=clock, misses=2, successes=2)
    try:
        site.transport.down = True
        await site.sync.tick()
        assert site.mode.state is Mode.OFFLINE, "not STARTING: the outage goes on"
        site.transport.down = False
        clock.advance(5)
        await site.sync.tick()
        assert site.mode.state is Mode.OFFLINE, "and it still needs K answers"
        clock.advance(5)
        await site.sync.tick()
        assert site.mode.online
        assert site.mode.history[-1].outage_started == went_offline
        report = (await primary.store.rows("outage_reports"))[0]
        assert report["started_at"] == went_offline and report["events_merged"] == 7
    finally:
        close(site, primary)


@pytest_twisted.ensureDeferred
async def test_online_the_outbox_drains_between_heartbeats(tmp_path):
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    site = make_site(tmp_path, primary, clock=clock)
    site.sync.push_interval = 1.0                  # heartbeats stay every 5 s
    try:
        site.sync.start()
        await _settle(site)
        assert site.mode.online
        site.charge(3)
        clock.advance(1)
        await _settle(site)
        assert primary.count("SELECT COUNT(*) FROM ledger") == 3, "pushed within 1 s, not 5"
        site.transport.down = True
        for _ in range(3):
            clock.advance(5)
            await _settle(site)
        assert site.mode.state is Mode.OFFLINE
        site.charge(2, start=3)
        site.transport.down = False
        clock.advance(1)
        await _settle(site)
        assert primary.count("SELECT COUNT(*) FROM ledger") == 3, "offline: not pushed"
        await site.sync.stop()
    finally:
        close(site, primary)

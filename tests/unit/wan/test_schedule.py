"""Schedules under simulated time: a week passes in one clock.advance()."""

from __future__ import annotations

import io
import itertools
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from simulators.wan import (
    Cut,
    Degrade,
    Flap,
    Schedule,
    ScheduleError,
    WanSimulator,
    load_schedule,
    parse_schedule,
)
from simulators.wan.schedule import parse_duration

FLAP_YAML = """
name: flaky
seed: 11
duration: 10m
actions:
  - flap: {proxy: uplink, every: [2s, 20s]}
  - degrade: {proxy: uplink, latency: 300ms, jitter: 100ms, loss: 0.01}
"""

FLAP_TOML = """
name = "flaky"
seed = 11
duration = "10m"

[[actions]]
flap = { proxy = "uplink", every = ["2s", "20s"] }

[[actions]]
degrade = { proxy = "uplink", latency = "300ms", jitter = "100ms", loss = 0.01 }
"""


def simulator() -> tuple[WanSimulator, MemoryReactorClock]:
    reactor = MemoryReactorClock()
    sim = WanSimulator(reactor, seed=3)
    sim.add_proxy("uplink", "127.0.0.1:0", "127.0.0.1:5432")
    return sim, reactor


def api(sim: WanSimulator, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    request = DummyRequest([p.encode() for p in path.strip("/").split("/")])
    request.method = method.encode()
    request.content = io.BytesIO(b"" if body is None else json.dumps(body).encode())
    raw = sim.resource().render(request)
    code = request.responseCode or 200
    return code, (json.loads(raw) if raw else None)


@pytest.mark.parametrize(("text", "seconds"), [
    (5, 5.0), (0.25, 0.25), ("300ms", 0.3), ("2s", 2.0), ("2", 2.0), ("10m", 600.0),
    ("1.5h", 5400.0), ("7d", 604800.0),
])
def test_durations(text: Any, seconds: float) -> None:
    assert parse_duration(text, "x") == pytest.approx(seconds)


@pytest.mark.parametrize("bad", ["soon", "-1s", True, None, "5 weeks"])
def test_bad_durations(bad: Any) -> None:
    with pytest.raises(ScheduleError):
        parse_duration(bad, "x")


@pytest.mark.parametrize(("doc", "message"), [
    ({"actions": []}, "actions"),
    ({"actions": [{"wobble": {"proxy": "a"}}]}, "unknown action"),
    ({"actions": [{"flap": {"every": [2, 20]}}]}, "proxy"),
    ({"actions": [{"flap": {"proxy": "a", "every": [20, 2]}}]}, "low is above high"),
    ({"actions": [{"cut": {"proxy": "a", "mode": "explode"}}]}, "mode"),
    ({"actions": [{"toxic": {"proxy": "a", "type": "gremlins"}}]}, "type"),
    ({"actions": [{"toxic": {"proxy": "a", "type": "latency",
                             "attributes": {"latency": "x"}}}]}, "attributes"),
    ({"actions": [{"degrade": {"proxy": "a", "loss": 2}}]}, "loss"),
    ({"actions": [{"cut": {"proxy": "a"}}], "time_scale": 0}, "time_scale"),
])
def test_schedule_errors_name_the_field(doc: Any, message: str) -> None:
    with pytest.raises(ScheduleError, match=message):
        parse_schedule(doc)


def test_yaml_and_toml_give_the_same_plan(tmp_path: Path) -> None:
    (tmp_path / "s.yaml").write_text(FLAP_YAML)
    (tmp_path / "s.toml").write_text(FLAP_TOML)
    from_yaml = load_schedule(tmp_path / "s.yaml")
    from_toml = load_schedule(tmp_path / "s.toml")
    assert from_yaml.plan() == from_toml.plan()
    assert len(from_yaml.plan()) > 20


def test_plan_is_deterministic_per_seed() -> None:
    schedule = parse_schedule(yaml.safe_load(FLAP_YAML))
    assert schedule.plan() == schedule.plan()
    assert schedule.with_seed(11).plan() == schedule.plan()
    assert schedule.with_seed(12).plan() != schedule.plan()


def test_adding_an_action_keeps_the_others_timing() -> None:
    flap = Flap("uplink", every=(2, 20))
    alone = Schedule([flap], seed=5, duration=600).plan()
    with_more = Schedule([flap, Cut("other", at=30, length=60)], seed=5, duration=600).plan()
    def timing(plan: list[Any]) -> list[tuple[float, str]]:
        return [(e.t, e.action) for e in plan if e.proxy == "uplink"]

    assert timing(with_more) == timing(alone)


def test_ten_minute_flap_under_clock_without_sleeping() -> None:
    sim, reactor = simulator()
    schedule = Schedule([Flap("uplink", every=(2, 20))], seed=1, duration=600)
    started = time.monotonic()
    run = sim.run_schedule(schedule)
    plan = run.plan
    down_intervals = []
    for event in plan:
        reactor.advance(event.t - reactor.seconds())
        partitioned = sim.is_partitioned("uplink")
        assert partitioned == (event.action == "partition")
        down_intervals.append(event.t)
    reactor.advance(600 - reactor.seconds())
    assert run.status == "finished"
    assert not sim.is_partitioned("uplink")
    assert [e["t"] for e in run.log] == [e.t for e in plan]
    gaps = [b - a for a, b in itertools.pairwise(down_intervals)]
    assert all(2 <= gap <= 20 for gap in gaps[:-1])
    assert time.monotonic() - started < 5  # simulated, not slept
    # The global log holds each toxic change, stamped with the clock, from the run.
    changes = [e for e in sim.events if e["source"] == "schedule:1"
               and e["action"] in ("toxic_added", "toxic_removed")]
    assert len(changes) == 2 * len(plan)
    assert changes[0]["time"] == plan[0].t


def test_cut_for_seven_days_of_simulated_time() -> None:
    sim, reactor = simulator()
    run = sim.run_schedule(Schedule([Cut("uplink", at=30, length=7 * 86400)]))
    reactor.advance(29.9)
    assert not sim.is_partitioned("uplink")
    reactor.advance(0.1)
    assert sim.is_partitioned("uplink")
    reactor.advance(7 * 86400 - 1)
    assert sim.is_partitioned("uplink") and run.status == "running"
    reactor.advance(1)
    assert not sim.is_partitioned("uplink") and run.status == "finished"
    assert [(e["t"], e["action"]) for e in run.log] == [(30.0, "partition"),
                                                        (604830.0, "heal")]


def test_time_scale_runs_faster() -> None:
    sim, reactor = simulator()
    run = sim.run_schedule(Schedule([Cut("uplink", at=60, length=60, mode="down")]),
                           time_scale=60)
    reactor.advance(1)
    assert not sim.proxies["uplink"].enabled
    reactor.advance(1)
    assert sim.proxies["uplink"].enabled and run.status == "finished"


def test_degrade_adds_latency_and_loss_both_ways() -> None:
    sim, reactor = simulator()
    sim.run_schedule(Schedule([Degrade("uplink", latency_ms=300, jitter_ms=100, loss=0.01)]))
    reactor.advance(0)
    toxics = {t.name: t for t in sim.proxies["uplink"].toxics.values()}
    assert set(toxics) == {"degrade0_latency_upstream", "degrade0_latency_downstream",
                           "degrade0_loss_upstream", "degrade0_loss_downstream"}
    assert toxics["degrade0_latency_downstream"].attributes == {"latency": 300, "jitter": 100}
    assert toxics["degrade0_loss_upstream"]["probability"] == 0.01


def test_stop_undoes_what_the_run_applied() -> None:
    sim, reactor = simulator()
    run = sim.run_schedule(Schedule([Cut("uplink", at=1), Degrade("uplink", latency_ms=50)]))
    reactor.advance(2)
    assert sim.is_partitioned("uplink") and sim.proxies["uplink"].toxics
    run.stop()
    assert run.status == "stopped" and not sim.proxies["uplink"].toxics


def test_schedule_errors_are_logged_not_fatal() -> None:
    sim, reactor = simulator()
    sim.add_toxic("uplink", "latency", "upstream", "cut0_partition_upstream")
    run = sim.run_schedule(Schedule([Cut("uplink", at=1, length=1)]))
    reactor.advance(3)
    assert run.status == "finished"
    assert run.log[0]["error"] == "toxic already exists"


def test_event_log_read_back_through_the_api() -> None:
    sim, reactor = simulator()
    code, run = api(sim, "POST", "/schedules", {
        "schedule": {"duration": "10m", "actions": [{"flap": {"proxy": "uplink"}}]},
        "seed": 9, "time_scale": 10})
    assert code == 201 and run["status"] == "running" and run["seed"] == 9
    reactor.advance(30)
    code, partway = api(sim, "GET", f"/schedules/{run['id']}")
    assert partway["status"] == "running"
    reactor.advance(30)
    code, done = api(sim, "GET", f"/schedules/{run['id']}")
    assert code == 200 and done["status"] == "finished"
    assert done["events"][: len(partway["events"])] == partway["events"]
    expected = Schedule([Flap("uplink")], seed=9, duration=600).plan()
    assert [(e["t"], e["action"]) for e in done["events"]] == [(e.t, e.action) for e in expected]
    code, listing = api(sim, "GET", "/schedules")
    assert [r["id"] for r in listing] == [run["id"]]
    code, events = api(sim, "GET", "/events")
    assert any(e["source"] == f"schedule:{run['id']}" for e in events["events"])


def test_schedule_api_errors() -> None:
    sim, _ = simulator()
    assert api(sim, "POST", "/schedules", {"actions": [{"cut": {"proxy": "nope"}}]}) == (
        404, {"error": "proxy not found", "status": 404})
    code, body = api(sim, "POST", "/schedules", {"actions": [{"cut": {}}]})
    assert code == 400 and body["error"].startswith("bad request body")
    assert api(sim, "GET", "/schedules/42")[0] == 404
    assert api(sim, "DELETE", "/proxies")[0] == 405
    assert api(sim, "GET", "/nothing")[0] == 404


def test_schedule_end_heals_what_outlasts_it() -> None:
    schedule = Schedule([Cut("uplink", at=300, length=3600), Cut("uplink", at=700, length=5)],
                        duration=600)
    assert [(e.t, e.action, e.details["by"]) for e in schedule.plan()] == [
        (300.0, "partition", "cut0"), (600.0, "heal", "cut0")]

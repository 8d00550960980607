"""DeviceMonitor (merging views, refusals), the page-counter audit, and the SNMP settings."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from appliance.config import ConfigError, parse
from appliance.core.devices import DeviceMonitor, DeviceView, PageCounterAudit, merge


def snmp(state: str, *reasons: str, reachable: bool = True, at: float = 100.0) -> DeviceView:
    return DeviceView("snmp", state, reasons, reachable, 10, "", at)


def ipp(state: str, *reasons: str, reachable: bool = True, at: float = 100.0) -> DeviceView:
    return DeviceView("ipp", state, reasons, reachable, None, "", at)


@pytest.mark.parametrize(("views", "state", "refusal"), [
    ([snmp("idle")], "idle", None),
    ([snmp("printing")], "printing", None),
    ([snmp("toner_low", "low_toner")], "toner_low", None),
    ([snmp("toner_low", "low_toner", "no_toner")], "toner_low", "mfd-1 is out of toner"),
    ([snmp("jammed", "jammed")], "jammed", "mfd-1 is jammed"),
    ([snmp("door_open", "door_open")], "door_open", "mfd-1 has a door open"),
    ([snmp("offline", "offline")], "offline", "mfd-1 is offline"),
    ([snmp("offline", "no_response", reachable=False)], "offline",
     "mfd-1 is offline (it does not answer)"),
    ([snmp("unknown", "snmp_auth_failed")], "unknown", None),
    ([snmp("idle", "input_tray_empty")], "idle", None),
    # SNMP silent, IPP fine: the device is not offline
    ([snmp("offline", "no_response", reachable=False), ipp("idle")], "idle", None),
    # either source seeing a jam is enough
    ([snmp("idle"), ipp("jammed", "jammed")], "jammed", "mfd-1 is jammed"),
    ([snmp("unknown", "snmp_malformed"), ipp("printing")], "printing", None),
    ([], "unknown", None),
])
def test_merge(views: list[DeviceView], state: str, refusal: str | None) -> None:
    status = merge("mfd-1", views)
    assert status.state == state
    assert status.refusal() == refusal
    assert status.in_error == (refusal is not None)


def test_monitor_refuses_only_what_it_knows_to_be_in_error() -> None:
    now = [100.0]
    monitor = DeviceMonitor(stale_after=30.0, clock=lambda: now[0])
    changes: list[tuple[str, str | None]] = []
    monitor.listeners.append(lambda new, old: changes.append(
        (new.state, old.state if old else None)))
    assert monitor.refusal("mfd-9") is None, "a device nobody watches is not refused"
    monitor.update("mfd-1", snmp("idle", at=100.0))
    assert monitor.refusal("mfd-1") is None
    monitor.update("mfd-1", snmp("jammed", "jammed", at=101.0))
    assert monitor.refusal("mfd-1") == "mfd-1 is jammed"
    monitor.update("mfd-1", snmp("jammed", "jammed", at=102.0))  # no change, no event
    assert changes == [("idle", None), ("jammed", "idle")]
    assert monitor.status("mfd-1").to_json()["in_error"] is True
    assert monitor.panel_json("mfd-1") == {"state": "jammed", "reasons": ["jammed"],
                                           "ready": False, "reason": "mfd-1 is jammed"}
    assert monitor.panel_json("mfd-9") is None, "not watched: nothing to show"
    now[0] = 200.0  # nothing heard for long: the old view no longer counts
    assert monitor.status("mfd-1").state == "unknown"
    assert monitor.refusal("mfd-1") is None


# ---------------------------------------------------------------- page-counter audit


@dataclass
class FakeJob:
    id: int
    attempts: int = 1


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[Any] = []

    async def add_counter_check(self, check: Any) -> None:
        self.rows.append(check)


def audit_with(counters: dict[str, int | None]) -> tuple[PageCounterAudit, FakeStore]:
    store = FakeStore()

    async def read(device: str) -> int | None:
        return counters[device]

    return PageCounterAudit(read_counter=read, store=store, clock=lambda: 1.0), store


@pytest_twisted.ensureDeferred
async def test_a_matching_delta_is_ok_and_a_different_one_is_flagged() -> None:
    counters: dict[str, int | None] = {"mfd-1": 100}
    audit, store = audit_with(counters)
    await audit.started("mfd-1", FakeJob(1))
    counters["mfd-1"] = 103
    await audit.finished("mfd-1", FakeJob(1), impressions=3, printed=True)
    await audit.started("mfd-1", FakeJob(2))
    counters["mfd-1"] = 108
    await audit.finished("mfd-1", FakeJob(2), impressions=4, printed=True)
    ok, off = store.rows
    assert (ok.status, ok.counter_delta, ok.difference) == ("ok", 3, 0)
    assert (off.status, off.counter_delta, off.difference) == ("discrepancy", 5, 1)
    assert off.detail == "device counted 5 impressions, the site charged 4"


@pytest_twisted.ensureDeferred
async def test_overlapping_jobs_are_not_flagged_and_unreadable_counters_are_unmeasured() -> None:
    counters: dict[str, int | None] = {"mfd-1": 0, "mfd-2": None}
    audit, store = audit_with(counters)
    await audit.started("mfd-1", FakeJob(1))
    await audit.started("mfd-1", FakeJob(2))
    counters["mfd-1"] = 10
    await audit.finished("mfd-1", FakeJob(1), impressions=3, printed=True)
    await audit.finished("mfd-1", FakeJob(2), impressions=4, printed=True)
    await audit.started("mfd-2", FakeJob(3))
    await audit.finished("mfd-2", FakeJob(3), impressions=1, printed=True)
    await audit.started("mfd-1", FakeJob(4))
    await audit.finished("mfd-1", FakeJob(4), impressions=0, printed=False)  # never reached it
    assert [(r.job_id, r.status) for r in store.rows] == [
        (1, "overlapped"), (2, "overlapped"), (3, "unmeasured")]


@pytest_twisted.ensureDeferred
async def test_the_counter_may_wrap() -> None:
    counters: dict[str, int | None] = {"mfd-1": 2**32 - 2}
    audit, store = audit_with(counters)
    await audit.started("mfd-1", FakeJob(1))
    counters["mfd-1"] = 3
    await audit.finished("mfd-1", FakeJob(1), impressions=5, printed=True)
    assert store.rows[0].status == "ok"


# ---------------------------------------------------------------- configuration


def base(tmp_path: Path, **extra: Any) -> dict[str, Any]:
    return {"name": "s", "state_dir": str(tmp_path / "state"),
            "secrets_dir": str(tmp_path / "secrets"), **extra}


def test_snmp_settings(tmp_path: Path) -> None:
    config = parse(base(tmp_path, snmp={"interval": 1, "timeout": 0.5, "retries": 0}, devices=[
        {"name": "a", "uri": "ipp://10.0.0.5:631/ipp/print", "snmp": {"port": 1161}},
        {"name": "b", "uri": "ipp://b.example/ipp", "snmp": {
            "host": "10.0.0.6", "v3": {"user": "u", "auth_key": "authkey1", "priv_key": "privkey1",
                                       "priv_protocol": "aes"}}},
        {"name": "c", "uri": "ipp://c.example/ipp"},
    ]))
    assert (config.snmp.interval, config.snmp.timeout, config.snmp.retries) == (1.0, 0.5, 0)
    a, b, c = config.devices
    assert a.snmp is not None and (a.snmp.host, a.snmp.port, a.snmp.community) == (
        "10.0.0.5", 1161, "public")
    assert b.snmp is not None and b.snmp.v3 is not None and b.snmp.community is None
    assert (b.snmp.host, b.snmp.v3.auth_protocol, b.snmp.v3.priv_protocol) == (
        "10.0.0.6", "SHA", "AES")
    assert c.snmp is None
    assert parse(base(tmp_path)).snmp.interval == 10.0


def test_snmp_mistakes_are_all_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        parse(base(tmp_path, snmp={"interval": 0, "retries": -1, "every": 3}, devices=[
            {"name": "a", "uri": "ipp://h/x", "snmp": {"port": 0, "community": "c",
                                                       "v3": {"user": "u", "auth_key": "short",
                                                              "auth_protocol": "SHA-1"}}},
        ]))
    errors = "\n".join(caught.value.errors)
    for expected in ("snmp.interval: must be positive", "snmp.retries: must be 0..10",
                     "snmp.every: unknown setting", "devices[0].snmp.port: must be 1..65535",
                     "devices[0].snmp.v3.auth_key: must be at least 8 characters",
                     "devices[0].snmp.v3.priv_key: required",
                     "devices[0].snmp.v3.auth_protocol: one of",
                     "devices[0].snmp: give either community (v2c) or v3, not both"):
        assert expected in errors


@pytest_twisted.ensureDeferred
async def test_a_device_still_counting_is_waited_for_while_its_counter_moves() -> None:
    now = [0.0]
    counters: dict[str, int | None] = {"lpd-1": 50}
    store = FakeStore()
    script = iter([51, 52, 52, 53, 54])  # what the counter reads after each pause

    async def read(device: str) -> int | None:
        return counters[device]

    async def sleep(seconds: float) -> None:
        now[0] += seconds
        counters["lpd-1"] = next(script, counters["lpd-1"])

    audit = PageCounterAudit(read_counter=read, store=store, clock=lambda: now[0], sleep=sleep,
                             settle=1.0, settle_step=0.5)
    await audit.started("lpd-1", FakeJob(1))
    await audit.finished("lpd-1", FakeJob(1), impressions=4, printed=True)  # reads 50 at first
    (check,) = store.rows
    assert (check.status, check.counter_delta, check.counter_after) == ("ok", 4, 54)
    # A shortfall that stays: flagged once the counter has stood still for `settle` seconds.
    counters["lpd-1"] = 60
    await audit.started("lpd-1", FakeJob(2))
    began = now[0]
    await audit.finished("lpd-1", FakeJob(2), impressions=3, printed=True)
    assert store.rows[-1].status == "discrepancy" and store.rows[-1].counter_delta == 0
    assert now[0] - began == pytest.approx(1.0)

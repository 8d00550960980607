"""The SNMP poller's logic without a network: reading values, states, scheduling on task.Clock."""

from __future__ import annotations

from typing import Any

import pytest
from pysnmp.proto import rfc1902
from twisted.internet import defer, task

from appliance.protocols.snmp import poller as p
from appliance.protocols.snmp.poller import (
    MalformedResponse,
    PollFailed,
    SnmpPoller,
    SnmpTarget,
    derive_state,
    interpret,
    select,
)


def values(*, device: int | None = 2, printer: int | None = 3, errors: bytes | None = b"\0\0",
           count: int | None = 42, **extra: Any) -> dict[tuple[int, ...], Any]:
    out: dict[tuple[int, ...], Any] = {
        p.SYS_DESCR: rfc1902.OctetString("printer"),
        p.SYS_UPTIME: rfc1902.TimeTicks(1234),
    }
    if device is not None:
        out[p.HR_DEVICE_STATUS] = rfc1902.Integer32(device)
    if printer is not None:
        out[p.HR_PRINTER_STATUS] = rfc1902.Integer32(printer)
    if errors is not None:
        out[p.HR_PRINTER_ERROR_STATE] = rfc1902.OctetString(errors)
    if count is not None:
        out[(*p.PRT_MARKER_LIFE_COUNT, 1, 1)] = rfc1902.Counter32(count)
    out.update(extra)
    return out


# ---------------------------------------------------------------- interpretation


@pytest.mark.parametrize(("device", "printer", "errors", "state", "reasons"), [
    (2, 3, b"\0\0", "idle", ()),
    (2, 4, b"\0\0", "printing", ()),
    (2, 5, b"\0", "idle", ()),                            # warming up; one octet is fine
    (5, 1, b"\x04\0", "jammed", ("jammed",)),
    (5, 1, b"\x08\0", "door_open", ("door_open",)),
    (5, 1, b"\x02\0", "offline", ("offline",)),
    (5, 1, b"\0\0", "offline", ("offline",)),              # down, no reason given
    (3, 3, b"\x20\0", "toner_low", ("low_toner",)),
    (5, 1, b"\x30\0", "toner_low", ("low_toner", "no_toner")),
    (5, 1, b"\x0c\0", "door_open", ("door_open", "jammed")),  # both: see below
    (2, 3, b"\0\x04", "idle", ("input_tray_empty",)),
    (None, None, None, "unknown", ()),
])
def test_states_from_host_resources(device: int | None, printer: int | None, errors: bytes | None,
                                    state: str, reasons: tuple[str, ...]) -> None:
    reading = interpret(values(device=device, printer=printer, errors=errors))
    assert set(reading.reasons) == set(reasons)
    if state == "door_open" and "jammed" in reasons:
        assert reading.state == "jammed"  # a jam is the more urgent of the two
    else:
        assert reading.state == state
    assert reading.page_count == 42
    assert reading.sys_descr == "printer" and reading.sys_uptime == 1234


def test_derive_state_prefers_jam_then_door_then_offline() -> None:
    assert derive_state(5, 1, ["offline", "door_open", "jammed"]) == "jammed"
    assert derive_state(5, 1, ["offline", "door_open"]) == "door_open"
    assert derive_state(None, 4, []) == "printing"
    assert derive_state(2, None, []) == "idle"
    assert derive_state(2, 2, []) == "unknown"


def test_markers_supplies_and_alerts_are_read() -> None:
    extra = {
        (*p.PRT_MARKER_LIFE_COUNT, 1, 2): rfc1902.Counter32(7),
        (*p.PRT_SUPPLIES_DESCRIPTION, 1, 1): rfc1902.OctetString("black toner"),
        (*p.PRT_SUPPLIES_MAX, 1, 1): rfc1902.Integer32(100),
        (*p.PRT_SUPPLIES_LEVEL, 1, 1): rfc1902.Integer32(4),
        (*p.PRT_ALERT_SEVERITY, 1, 3): rfc1902.Integer32(3),
        (*p.PRT_ALERT_CODE, 1, 3): rfc1902.Integer32(8),
        (*p.PRT_ALERT_DESCRIPTION, 1, 3): rfc1902.OctetString("Paper jam"),
    }
    reading = interpret(values() | extra)
    assert reading.markers == (42, 7)
    assert reading.supplies == (("black toner", 4, 100),)
    assert reading.alerts == ((3, 8, "Paper jam"),)


@pytest.mark.parametrize("bad", [
    {p.HR_PRINTER_STATUS: rfc1902.OctetString("idle")},
    {p.HR_PRINTER_ERROR_STATE: rfc1902.Integer32(4)},
    {(*p.PRT_MARKER_LIFE_COUNT, 1, 1): rfc1902.OctetString("many")},
    {p.SYS_DESCR: rfc1902.Integer32(1)},
    {p.SYS_UPTIME: rfc1902.ObjectName((1, 3, 6))},
])
def test_wrong_types_are_malformed(bad: dict[tuple[int, ...], Any]) -> None:
    with pytest.raises(MalformedResponse):
        interpret(values() | bad)


def test_select_keeps_only_what_was_asked_for() -> None:
    answer = [
        (p.SYS_DESCR, rfc1902.OctetString("x")),
        ((1, 3, 6, 1, 2, 1, 1, 4, 0), rfc1902.OctetString("not asked")),  # GETNEXT overshoot
        ((*p.PRT_MARKER_LIFE_COUNT, 1, 1), rfc1902.Counter32(5)),
        ((*p.PRT_ALERT_DESCRIPTION, 1, 2), rfc1902.OctetString("alert")),
        ((*p.PRT_ALERT_DESCRIPTION, 1, 2, 9), rfc1902.OctetString("too deep")),
    ]
    assert set(select(answer)) == {p.SYS_DESCR, (*p.PRT_MARKER_LIFE_COUNT, 1, 1),
                                   (*p.PRT_ALERT_DESCRIPTION, 1, 2)}


# ---------------------------------------------------------------- scheduling on task.Clock


class FakeDevices:
    """fetch() for the poller: per device a behaviour ('ok', 'jam', 'silent', 'auth', 'bad')."""

    def __init__(self, clock: task.Clock) -> None:
        self.clock = clock
        self.mode: dict[str, str] = {}
        self.asked: dict[str, list[float]] = {}
        self.counter = 100

    def fetch(self, target: SnmpTarget,
              supplies: bool = True) -> defer.Deferred[dict[tuple[int, ...], Any]]:
        self.asked.setdefault(target.name, []).append(self.clock.seconds())
        mode = self.mode.get(target.name, "ok")
        if mode == "silent":
            return defer.Deferred()  # never answers: the poller's guard must time it out
        if mode == "boom":
            return defer.fail(RuntimeError("cannot resolve printer.invalid"))
        if mode == "auth":
            return defer.fail(PollFailed("snmp_auth_failed", "Wrong SNMP PDU digest"))
        if mode == "bad":
            return defer.succeed(values(printer=None) | {
                p.HR_PRINTER_STATUS: rfc1902.OctetString("garbage")})
        if mode == "jam":
            return defer.succeed(values(device=5, printer=1, errors=b"\x04\0", count=self.counter))
        return defer.succeed(values(count=self.counter))


def make_poller(names: list[str], clock: task.Clock, devices: FakeDevices,
                **options: Any) -> tuple[SnmpPoller, list[tuple[str, Any]]]:
    seen: list[tuple[str, Any]] = []
    poller = SnmpPoller([SnmpTarget(n, "192.0.2.1") for n in names], reactor=clock,
                        fetch=devices.fetch, on_reading=lambda n, r, at: seen.append((n, r)),
                        clock=clock.seconds, **options)
    return poller, seen


def test_polls_are_spread_over_the_interval_and_repeat() -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    poller, _ = make_poller(["a", "b", "c", "d"], clock, devices, interval=10.0)
    poller.start()
    clock.pump([0.0] + [2.5] * 8)
    assert devices.asked == {"a": [0.0, 10.0, 20.0], "b": [2.5, 12.5], "c": [5.0, 15.0],
                             "d": [7.5, 17.5]}


def test_a_jam_is_seen_within_two_polls() -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    poller, seen = make_poller(["mfd-1"], clock, devices, interval=1.0)
    poller.start()
    clock.advance(0)
    clock.advance(0.5)
    devices.mode["mfd-1"] = "jam"  # between two polls
    polls_then = poller.tracks["mfd-1"].polls
    while poller.tracks["mfd-1"].reading.state != "jammed":
        clock.advance(0.1)
    assert poller.tracks["mfd-1"].polls - polls_then <= 2
    assert seen[-1][1].reasons == ("jammed",)


def test_a_silent_device_backs_off_and_does_not_hold_up_the_others() -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    devices.mode["quiet"] = "silent"
    poller, _ = make_poller(["quiet", "loud"], clock, devices, interval=1.0, timeout=0.5,
                            retries=1, max_backoff=8.0)
    poller.start()
    for _ in range(400):
        clock.advance(0.1)
    quiet, loud = poller.tracks["quiet"], poller.tracks["loud"]
    assert loud.answered >= 38, "the healthy device kept its pace"
    assert quiet.reading is not None and quiet.reading.state == "offline"
    assert quiet.reading.reasons == ("no_response",) and not quiet.reading.reachable
    gaps = [b - a for a, b in zip(devices.asked["quiet"], devices.asked["quiet"][1:],
                                  strict=False)]
    guard = poller.guard  # each try waits this long before the back-off starts
    backoffs = [g - guard for g in gaps]
    # (the clock moves in steps of 0.1 s, so each gap may run up to a step or two over)
    assert backoffs[:5] == pytest.approx([1.0, 2.0, 4.0, 8.0, 8.0], abs=0.25)
    # It answers again: back to the normal interval.
    devices.mode["quiet"] = "ok"
    for _ in range(200):
        clock.advance(0.1)
    assert quiet.reading.state == "idle" and quiet.failures == 0
    assert devices.asked["quiet"][-1] - devices.asked["quiet"][-2] == pytest.approx(1.0)


def test_wrong_credentials_and_malformed_answers_mark_only_that_device() -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    devices.mode.update({"locked": "auth", "broken": "bad"})
    poller, _ = make_poller(["locked", "broken", "fine"], clock, devices, interval=1.0)
    poller.start()
    for _ in range(50):
        clock.advance(0.1)
    tracks = poller.tracks
    assert tracks["locked"].reading.state == "unknown"
    assert tracks["locked"].reading.reasons == ("snmp_auth_failed",)
    assert tracks["broken"].reading.reasons == ("snmp_malformed",)
    assert "hrPrinterStatus" in tracks["broken"].last_error
    assert tracks["fine"].reading.state == "idle"
    # None of them backs off: they answer, just not usably.
    assert {len(devices.asked[n]) for n in ("locked", "broken", "fine")} == {5}


def test_stop_cancels_what_is_out_and_schedules_nothing() -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    devices.mode["quiet"] = "silent"
    poller, seen = make_poller(["quiet"], clock, devices, interval=1.0)
    poller.start()
    clock.advance(0)
    defer.ensureDeferred(poller.stop())
    clock.advance(100)
    assert devices.asked["quiet"] == [0.0]
    assert seen == []
    assert not clock.getDelayedCalls()


def test_an_unexpected_error_is_logged_once_and_polling_goes_on(
        caplog: pytest.LogCaptureFixture) -> None:
    clock = task.Clock()
    devices = FakeDevices(clock)
    devices.mode["odd"] = "boom"
    poller, _ = make_poller(["odd"], clock, devices, interval=1.0)
    poller.start()
    for _ in range(55):
        clock.advance(0.1)
    track = poller.tracks["odd"]
    assert track.polls == 6 and track.reading.reasons == ("snmp_error",)
    assert track.last_error == "RuntimeError: cannot resolve printer.invalid"
    assert sum("Traceback" in r.getMessage() for r in caplog.records) == 1

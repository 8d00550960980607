"""The simulated MFD's SNMP agent read by the site's poller, over loopback UDP, on the asyncio reactor."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from pysnmp.proto import rfc1902
from twisted.internet import defer, protocol, reactor, task

from appliance.protocols.snmp.poller import SnmpPoller, SnmpTarget, V3Credentials
from simulators.mfd.printer import SimulatedMfd
from simulators.mfd.snmp import HR_PRINTER_STATUS, LAB_V3, error_state_octets
from tests.unit.mfd.helpers import job_done, job_id_of, pdf_bytes, print_job, until

ensure = pytest_twisted.ensureDeferred
GOOD_V3 = V3Credentials(LAB_V3["user"], LAB_V3["auth_key"], LAB_V3["priv_key"])


@pytest.fixture
def make_mfd(tmp_path: Path) -> Iterator[Callable[..., SimulatedMfd]]:
    started: list[SimulatedMfd] = []

    def make(name: str = "mfd-1", **options: Any) -> SimulatedMfd:
        mfd = SimulatedMfd(name, tmp_path / name / "out", tmp_path / name / "state", **options)
        mfd.listen("127.0.0.1", snmp_port=0)
        started.append(mfd)
        return mfd

    yield make
    for mfd in started:
        pytest_twisted.blockon(mfd.stop())


@pytest.fixture
def pollers() -> Iterator[Callable[..., SnmpPoller]]:
    made: list[SnmpPoller] = []

    def make(targets: list[SnmpTarget], **options: Any) -> SnmpPoller:
        options.setdefault("timeout", 0.3)
        options.setdefault("retries", 0)
        poller = SnmpPoller(targets, reactor=reactor, **options)
        made.append(poller)
        return poller

    yield make
    for poller in made:
        pytest_twisted.blockon(defer.ensureDeferred(poller.stop()))


def v2(mfd: SimulatedMfd, name: str = "v2", community: str = "public") -> SnmpTarget:
    assert mfd.snmp_port is not None
    return SnmpTarget(name, "127.0.0.1", mfd.snmp_port, community)


def v3(mfd: SimulatedMfd, name: str = "v3", creds: V3Credentials = GOOD_V3) -> SnmpTarget:
    assert mfd.snmp_port is not None
    return SnmpTarget(name, "127.0.0.1", mfd.snmp_port, None, creds)


@ensure
async def test_the_poller_reads_the_simulator_and_counters_follow_printing(
        make_mfd: Callable[..., SimulatedMfd], pollers: Callable[..., SnmpPoller]) -> None:
    mfd = make_mfd()
    poller = pollers([v2(mfd), v3(mfd)])
    for name in ("v2", "v3"):
        reading = await poller.poll_once(name)
        assert reading is not None
        assert reading.sys_descr == "Outpost simulated MFD mfd-1 (colour)"
        assert reading.sys_uptime is not None and reading.sys_uptime >= 0
        assert (reading.state, reading.reasons, reading.page_count) == ("idle", (), 0)
        assert [s[0] for s in reading.supplies] == ["black toner", "cyan toner",
                                                    "magenta toner", "yellow toner"]
    job_id = job_id_of(await print_job(mfd, pdf_bytes(3)))
    await job_done(mfd, job_id)
    reading = await poller.poll_once("v3")
    assert reading is not None
    assert reading.page_count == 3 and reading.markers == (3, 0)
    assert await poller.page_count("v2") == 3


@ensure
async def test_a_jam_is_seen_within_two_polls_and_raises_an_alert(
        make_mfd: Callable[..., SimulatedMfd], pollers: Callable[..., SnmpPoller]) -> None:
    mfd = make_mfd()
    poller = pollers([v3(mfd, "mfd-1")], interval=0.2)
    poller.start()
    track = poller.tracks["mfd-1"]
    await until(lambda: track.reading is not None and track.reading.state == "idle")
    await mfd.set_fault("jam", after_pages=1, once=False)
    job_id = job_id_of(await print_job(mfd, pdf_bytes(3)))
    await job_done(mfd, job_id)
    polls_at_jam = track.polls
    await until(lambda: track.reading is not None and track.reading.state == "jammed")
    assert track.polls - polls_at_jam <= 2, "seen within two poll intervals"
    reading = track.reading
    assert reading.reasons == ("jammed",) and reading.page_count == 1
    assert reading.alerts == ((3, 8, "Paper jam"),)  # critical, jam(8)
    values = mfd.snmp_agent.snapshot()
    assert int(values[HR_PRINTER_STATUS]) == 1                            # other
    assert int(values[(1, 3, 6, 1, 2, 1, 25, 3, 2, 1, 5, 1)]) == 5        # down
    await mfd.set_fault("none")
    await until(lambda: track.reading.state == "idle")
    assert track.reading.alerts == ()


@ensure
async def test_door_toner_and_offline_show(make_mfd: Callable[..., SimulatedMfd],
                                           pollers: Callable[..., SnmpPoller]) -> None:
    mfd = make_mfd()
    poller = pollers([v2(mfd)])
    agent = mfd.snmp_agent
    agent.set_supply("magenta", 8)
    reading = await poller.poll_once("v2")
    assert (reading.state, reading.reasons) == ("toner_low", ("low_toner",))
    assert ("magenta toner", 8, 100) in reading.supplies
    assert reading.alerts == ((4, 1104, "Toner low"),)
    agent.set_door_open(True)
    reading = await poller.poll_once("v2")
    assert reading.state == "door_open" and set(reading.reasons) == {"low_toner", "door_open"}
    agent.set_door_open(False)
    agent.set_supply("magenta", 100)
    await mfd.set_fault("offline")
    reading = await poller.poll_once("v2")
    assert (reading.state, reading.reasons) == ("offline", ("offline",))
    await mfd.set_fault("none")
    reading = await poller.poll_once("v2")
    assert reading.state == "idle"
    assert error_state_octets({"jammed", "offline", "input_tray_empty"}) == b"\x06\x04"


@ensure
async def test_toner_levels_fall_as_pages_print(make_mfd: Callable[..., SimulatedMfd],
                                                pollers: Callable[..., SnmpPoller]) -> None:
    mfd = make_mfd(colour=False)
    mfd.snmp_agent.sensors.supplies[0].life = 20  # 5 % a page
    poller = pollers([v2(mfd)])
    job_id = job_id_of(await print_job(mfd, pdf_bytes(4)))
    await job_done(mfd, job_id)
    reading = await poller.poll_once("v2")
    assert reading.supplies == (("black toner", 80, 100),)
    assert reading.markers == (4,), "a mono device has one marker"
    assert reading.sys_descr == "Outpost simulated MFD mfd-1 (mono)"


@ensure
async def test_wrong_credentials_get_nothing_and_hold_up_nobody(
        make_mfd: Callable[..., SimulatedMfd], pollers: Callable[..., SnmpPoller]) -> None:
    mfd = make_mfd()
    targets = [
        v2(mfd, "bad-community", "private"),
        v3(mfd, "bad-auth", V3Credentials(GOOD_V3.user, "wrong-auth-key", GOOD_V3.priv_key)),
        v3(mfd, "bad-priv", V3Credentials(GOOD_V3.user, GOOD_V3.auth_key, "wrong-priv-key")),
        v3(mfd, "bad-user", V3Credentials("mallory", GOOD_V3.auth_key, GOOD_V3.priv_key)),
        v3(mfd, "good"),
    ]
    poller = pollers(targets, timeout=1.0)
    finished: list[str] = []
    waits = []
    for target in targets:
        d = poller.poll_once(target.name)
        d.addCallback(lambda r, n=target.name: finished.append(n) or r)
        waits.append(d)
    readings = dict(zip([t.name for t in targets], await defer.gatherResults(waits),
                        strict=True))
    assert finished[-1] == "bad-community", "the silent one finished last; the others did not wait"
    assert readings["good"].state == "idle" and readings["good"].page_count == 0
    assert (readings["bad-community"].state, readings["bad-community"].reasons) == (
        "offline", ("no_response",))
    for name in ("bad-auth", "bad-priv", "bad-user"):
        assert readings[name].reasons == ("snmp_auth_failed",), readings[name]
        assert readings[name].page_count is None and readings[name].sys_descr is None


class Garbage(protocol.DatagramProtocol):
    """A 'device' that answers every datagram with bytes that are not SNMP (or mangled SNMP)."""

    def __init__(self) -> None:
        import random

        self.rng = random.Random(7)

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        assert self.transport is not None
        self.transport.write(b"\x30\x03\x02\x01" + data[:5], addr)
        self.transport.write(self.rng.randbytes(self.rng.randrange(1, 64)), addr)
        mangled = bytearray(data)
        for _ in range(3):
            mangled[self.rng.randrange(len(mangled))] = self.rng.randrange(256)
        self.transport.write(bytes(mangled), addr)


@ensure
async def test_malformed_answers_do_not_stall_the_poller(
        make_mfd: Callable[..., SimulatedMfd], pollers: Callable[..., SnmpPoller],
        caplog: pytest.LogCaptureFixture) -> None:
    mfd = make_mfd()
    garbage = reactor.listenUDP(0, Garbage(), interface="127.0.0.1")
    try:
        wrong_types = make_mfd("mfd-2")
        real = wrong_types.snmp_agent.snapshot

        def lying() -> dict[tuple[int, ...], Any]:
            values = real()
            values[HR_PRINTER_STATUS] = rfc1902.OctetString("idle")
            return values

        wrong_types.snmp_agent.mib.snapshot = lying
        port = garbage.getHost().port
        poller = pollers([SnmpTarget("garbage", "127.0.0.1", port), v2(wrong_types, "lying"),
                          v2(mfd, "good")], interval=0.2, timeout=0.2)
        poller.start()
        tracks = poller.tracks
        await until(lambda: all(t.polls >= 3 for t in tracks.values()))
        assert tracks["garbage"].reading.reasons == ("no_response",)
        assert tracks["lying"].reading.reasons == ("snmp_malformed",)
        assert "hrPrinterStatus" in tracks["lying"].last_error
        assert tracks["good"].reading.state == "idle"
        assert tracks["good"].answered >= tracks["garbage"].polls
        assert not [r for r in caplog.records if "Exception in callback" in r.getMessage()]
    finally:
        await garbage.stopListening()


def test_the_agent_port_is_bound_at_listen(make_mfd: Callable[..., SimulatedMfd]) -> None:
    mfd = make_mfd()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        s.bind(("127.0.0.1", mfd.snmp_port))
    plain = SimulatedMfd("plain", mfd.output_dir.parent / "p", mfd.state_dir.parent / "p",
                         reactor=reactor)
    assert plain.snmp_port is None and plain.snmp_agent is None


@ensure
async def test_the_control_api_sets_the_sensors(make_mfd: Callable[..., SimulatedMfd],
                                                pollers: Callable[..., SnmpPoller]) -> None:
    import json

    import treq

    mfd = make_mfd()
    url = f"{mfd.control_uri}/sensors"
    answer = await treq.post(url, json={"door_open": True, "supplies": {"yellow": 3}},
                             persistent=False)
    body = json.loads(await answer.content())
    assert answer.code == 200, body
    assert body["door_open"] and body["supplies"]["yellow toner"] == 3
    assert body["conditions"] == ["door_open", "low_toner"]
    reading = await pollers([v2(mfd)]).poll_once("v2")
    assert reading.state == "door_open" and "low_toner" in reading.reasons
    for bad in ({"door_open": "yes"}, {"supplies": {"purple": 5}}, {"supplies": {"cyan": 101}},
                {"lid": True}, [1]):
        answer = await treq.post(url, json=bad, persistent=False)
        assert answer.code == 400, bad
        await answer.content()
    answer = await treq.get(url, persistent=False)
    assert json.loads(await answer.content())["door_open"] is True


@ensure
async def test_the_agent_shrugs_off_garbage(make_mfd: Callable[..., SimulatedMfd],
                                            pollers: Callable[..., SnmpPoller]) -> None:
    import random

    mfd = make_mfd()
    rng = random.Random(6)
    valid = bytes.fromhex("302602010104067075626c6963a0190204")  # a v2c GET, cut short
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        for i in range(300):
            if i % 3 == 0:
                data = rng.randbytes(rng.randrange(1, 200))
            elif i % 3 == 1:
                data = valid[: rng.randrange(1, len(valid))]
            else:
                data = bytearray(valid + bytes(8))
                data[rng.randrange(len(data))] = rng.randrange(256)
                data = bytes(data)
            s.sendto(data, ("127.0.0.1", mfd.snmp_port))
            if i % 20 == 19:  # let the agent read: a full receive buffer would drop our poll
                await task.deferLater(reactor, 0.01, lambda: None)
    reading = await pollers([v2(mfd)]).poll_once("v2")
    assert reading is not None and reading.state == "idle" and reading.page_count == 0
    assert mfd.snmp_agent.dropped > 0, "some garbage trips pysnmp: dropped, not raised"

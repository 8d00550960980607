"""The LPD client and `LpdDriver` against the site's LPD server and the MFD simulator's
LPD endpoint, over loopback (the client is a real Twisted TCP client)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, protocol, reactor, task

from appliance.core.model import Device, Job, JobOptions, JobState
from appliance.core.release import DeviceUnavailable
from appliance.protocols.ipp.constants import JobState as IppJobState
from appliance.protocols.lpd.client import LpdClient, LpdError, LpdRefused
from appliance.protocols.lpd.driver import LpdDriver
from simulators.mfd.printer import SimulatedMfd
from tests.unit.test_lpd_server import PDF, LpdSite, make_site

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def site(tmp_path: Path) -> Iterator[tuple[LpdSite, int]]:
    s = make_site(tmp_path / "site")
    port = reactor.listenTCP(0, s.factory, interface="127.0.0.1")  # type: ignore[attr-defined]
    yield s, port.getHost().port
    pytest_twisted.blockon(defer.maybeDeferred(port.stopListening))
    pytest_twisted.blockon(defer.ensureDeferred(s.close()))


@pytest.fixture
def mfd(tmp_path: Path) -> Iterator[SimulatedMfd]:
    printer = SimulatedMfd("mfd-lpd", tmp_path / "out", tmp_path / "state", reactor=reactor)
    printer.listen("127.0.0.1", lpd_port=0)
    yield printer
    pytest_twisted.blockon(printer.stop())


@pytest.fixture
def pdf(tmp_path: Path) -> Path:
    path = tmp_path / "report.pdf"
    path.write_bytes(PDF)
    return path


def client(**options: Any) -> LpdClient:
    return LpdClient(reactor, timeout=options.pop("timeout", 5.0), hostname="ws-1", **options)


def a_job(owner: str = "alice", copies: int = 1, name: str = "report.pdf") -> Job:
    return Job(id=7, uuid="u", queue="findme", owner=owner, user_id=None, name=name,
               document_format="application/pdf", spool_name="x", size=len(PDF), pages=3,
               colour=False, analysed=True, options=JobOptions(copies=copies),
               state=JobState.PROCESSING, state_reasons=(), state_message="", device="mfd",
               remote_job_uri=None, attempts=1, impressions_completed=0, charged=0,
               created_at=0.0, processing_at=None, completed_at=None, expires_at=None)


async def wait(predicate: Any, timeout: float = 5.0) -> Any:
    for _ in range(int(timeout / 0.01)):
        value = predicate()
        if value:
            return value
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("condition not met")


# ---------------------------------------------------------------- client → site server


@pytest.mark.parametrize("data_first", [False, True])
@pytest_twisted.ensureDeferred
async def test_print_file_makes_a_held_job(site: tuple[LpdSite, int], pdf: Path,
                                           data_first: bool) -> None:
    s, port = site
    number = await client(data_first=data_first).print_file(
        "127.0.0.1", port, "findme", pdf, user="carol", job_name="quarterly.pdf", copies=2)
    assert 0 <= number < 1000
    (job,) = await s.jobs()            # acknowledged means committed
    assert (job.owner, job.name, job.pages, job.options.copies, job.state) == (
        "carol", "quarterly.pdf", 3, 2, JobState.HELD)


@pytest_twisted.ensureDeferred
async def test_queue_state_and_remove_over_the_wire(site: tuple[LpdSite, int], pdf: Path) -> None:
    s, port = site
    c = client()
    await c.print_file("127.0.0.1", port, "findme", pdf, user="dave", job_name="d.pdf")
    short = await c.queue_state("127.0.0.1", port, "findme")
    assert "dave" in short and "d.pdf" in short
    long = await c.queue_state("127.0.0.1", port, "findme", long=True, items=("dave",))
    assert "3 pages" in long
    answer = await c.remove_jobs("127.0.0.1", port, "findme", "dave", ("dave",))
    assert "dequeued" in answer
    assert [j.state for j in await s.jobs()] == [JobState.CANCELED]


@pytest_twisted.ensureDeferred
async def test_refusals_and_failures(site: tuple[LpdSite, int], pdf: Path, tmp_path: Path) -> None:
    s, port = site
    with pytest.raises(LpdRefused) as refused:
        await client().print_file("127.0.0.1", port, "nosuch", pdf, user="a", job_name="x")
    assert refused.value.code == 1
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(LpdError, match="empty"):
        await client().print_file("127.0.0.1", port, "findme", empty, user="a", job_name="x")
    closed = reactor.listenTCP(0, protocol.Factory.forProtocol(protocol.Protocol),  # type: ignore[attr-defined]
                               interface="127.0.0.1")
    free = closed.getHost().port
    await closed.stopListening()
    with pytest.raises(LpdError, match="cannot connect"):
        await client().print_file("127.0.0.1", free, "findme", pdf, user="a", job_name="x")
    assert await s.jobs() == []


class _Silent(protocol.Protocol):
    pass


class _Hangup(protocol.Protocol):
    def dataReceived(self, data: bytes) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]


@pytest.mark.parametrize(("peer", "match"), [(_Silent, "no answer"), (_Hangup, "closed")])
@pytest_twisted.ensureDeferred
async def test_silent_or_hanging_up_servers(pdf: Path, peer: type, match: str) -> None:
    port = reactor.listenTCP(0, protocol.Factory.forProtocol(peer),  # type: ignore[attr-defined]
                             interface="127.0.0.1")
    try:
        with pytest.raises(LpdError, match=match):
            await client(timeout=0.5).print_file("127.0.0.1", port.getHost().port, "q", pdf,
                                                 user="a", job_name="x")
    finally:
        await port.stopListening()


# ---------------------------------------------------------------- driver → MFD simulator


@pytest_twisted.ensureDeferred
async def test_driver_prints_byte_identical_on_the_simulator(mfd: SimulatedMfd, pdf: Path) -> None:
    assert mfd.lpd_uri == f"lpd://127.0.0.1:{mfd.lpd_port}/mfd-lpd"
    device = Device("mfd-lpd", "lpd", mfd.lpd_uri, True, True, "default", True)
    driver = LpdDriver(client())
    before = mfd.counters["total"]
    handle = await driver.submit(device, a_job(copies=2), pdf)
    assert handle.startswith(mfd.lpd_uri + "#")
    status = await driver.status(device, handle)
    assert (status.state, status.impressions, status.terminal) == ("completed", None, True)
    (job,) = await wait(lambda: [j for j in mfd.jobs() if j.state == IppJobState.COMPLETED] or None)
    assert (job.user, job.name, job.copies, job.impressions) == ("alice", "report.pdf", 2, 6)
    assert job.file is not None and job.file.read_bytes() == PDF
    assert mfd.counters["total"] == before + 6
    assert list((mfd.state_dir / "lpd").iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_driver_reports_an_unavailable_device(mfd: SimulatedMfd, pdf: Path) -> None:
    assert mfd.lpd_uri is not None
    device = Device("mfd-lpd", "lpd", mfd.lpd_uri, True, True, "default", True)
    driver = LpdDriver(client())
    await mfd.set_fault("reject")
    with pytest.raises(DeviceUnavailable, match="refused"):
        await driver.submit(device, a_job(), pdf)
    await mfd.set_fault("offline")
    with pytest.raises(DeviceUnavailable):
        await driver.submit(device, a_job(), pdf)
    await mfd.set_fault("none")
    with pytest.raises(DeviceUnavailable, match="lpd://"):
        await driver.submit(Device("x", "lpd", "ipp://h/q", True, True, "default", True),
                            a_job(), pdf)
    assert mfd.jobs() == []


@pytest_twisted.ensureDeferred
async def test_simulator_refuses_malformed_and_truncated_input(mfd: SimulatedMfd) -> None:
    """Raw conversations: NACK and close, and no job, no leftover part file."""
    assert mfd.lpd_port is not None
    for conversation, expected in [
        (b"\x09x\n", b"\x01"),                                      # unknown command
        (b"\x02q\n\x0210 cfA\nPa\n", b"\x00\x00"),                  # truncated control file
        (b"\x02q\n\x03100 dfA\nabc", b"\x00\x00"),                   # truncated data file
        (b"\x02q\n\x024 cfA\nJx\n\x00\x033 dfA\nabc\x00", b"\x00\x00\x01"),  # no P line
    ]:
        assert await raw(mfd.lpd_port, conversation) == expected
    assert mfd.jobs() == []
    await wait(lambda: list((mfd.state_dir / "lpd").iterdir()) == [])


async def raw(port: int, data: bytes) -> bytes:
    """Send `data`, half-wait 0.3 s, close; what came back."""
    got = bytearray()

    class Peer(protocol.Protocol):
        def dataReceived(self, chunk: bytes) -> None:
            got.extend(chunk)

    from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol

    peer = await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", port), Peer())
    assert peer.transport is not None
    peer.transport.write(data)
    await task.deferLater(reactor, 0.3, lambda: None)
    peer.transport.loseConnection()
    await task.deferLater(reactor, 0.05, lambda: None)
    return bytes(got)

"""The site's LPD server (`appliance.protocols.lpd.server`) against a real PrintService.

A real store (SQLite, WAL+FULL) and spool; the protocol is driven through a
`StringTransport` (no sockets), as rlpr and CUPS's lpd backend talk.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task
from twisted.internet.testing import StringTransport

from appliance.core.charging import LAB_POLICY
from appliance.core.jobs import PrintService
from appliance.core.model import Job, JobState, Queue
from appliance.protocols.lpd.parser import build_control_file
from appliance.protocols.lpd.server import LpdServerFactory, LpdServerProtocol, format_queue_state
from appliance.storage.database import Database
from appliance.storage.spool import Spool
from appliance.storage.store import SiteStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
PDF = (FIXTURES / "documents" / "mono3.pdf").read_bytes()      # three pages
PS = (FIXTURES / "documents" / "mono3.ps").read_bytes()        # three pages
KB = 1024
MB = 1024 * KB


@dataclass
class LpdSite:
    service: PrintService
    database: Database
    spool: Spool
    factory: LpdServerFactory
    completed: list[int] = field(default_factory=list)

    def spool_files(self) -> list[str]:
        files = [p.name for p in self.spool.root.iterdir() if p.is_file()]
        files += [f"incoming/{p.name}" for p in self.spool.incoming.iterdir()]
        return sorted(files)

    def connect(self) -> tuple[LpdServerProtocol, StringTransport]:
        proto = self.factory.buildProtocol(None)
        assert isinstance(proto, LpdServerProtocol)
        transport = StringTransport()
        proto.makeConnection(transport)
        return proto, transport

    async def jobs(self) -> list[Job]:
        return await self.service.list_jobs(None, "all")

    async def close(self) -> None:
        for _ in range(500):
            if not self.service._analysis:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        await task.deferLater(reactor, 0.02, lambda: None)
        self.database.close()


def make_site(tmp_path: Path, *, max_document: int = 8 * MB, max_per_user: int = 16 * MB) -> LpdSite:
    database = Database(tmp_path / "site.db", reactor)
    database.open()
    spool = Spool(tmp_path / "spool", max_document=max_document, max_per_user=max_per_user,
                  max_total=64 * MB)
    service = PrintService(
        store=SiteStore(database), spool=spool,
        queues=[Queue("findme", "findme"), Queue("mfd-1", "direct", "mfd-1")],
        policies=lambda device: LAB_POLICY, reactor=reactor, use_ghostscript=False,
    )
    site = LpdSite(service, database, spool, LpdServerFactory(service, reactor=reactor))

    async def complete(job: Job) -> None:
        await service.store.update_job(job.id, state=JobState.COMPLETED, spool_name=None)
        if job.spool_name:
            service.spool.delete(job.spool_name)
        site.completed.append(job.id)

    service.on_ready = complete
    return site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[LpdSite]:
    s = make_site(tmp_path)
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.close()))


async def settle(proto: LpdServerProtocol) -> None:
    """Wait until the protocol handled everything it was given."""
    for _ in range(1000):
        if not proto._busy and not proto._events:
            return
        await task.deferLater(reactor, 0.005, lambda: None)
    raise AssertionError("the protocol did not settle")


async def say(proto: LpdServerProtocol, transport: StringTransport, data: bytes) -> bytes:
    """Send `data`, wait, return what the server answered to it."""
    before = len(transport.value())
    proto.dataReceived(data)
    await settle(proto)
    return transport.value()[before:]


def control(user: str = "alice", name: str = "report.pdf", data_file: str = "dfA001ws",
            copies: int = 1, fmt: str = "l") -> bytes:
    return build_control_file(host="ws", user=user, job_name=name, data_file=data_file,
                              copies=copies, format=fmt)


def control_part(cf: bytes, name: str = "cfA001ws") -> tuple[bytes, bytes]:
    return b"\x02%d %s\n" % (len(cf), name.encode()), cf + b"\x00"


def data_part(data: bytes, name: str = "dfA001ws") -> tuple[bytes, bytes]:
    return b"\x03%d %s\n" % (len(data), name.encode()), data + b"\x00"


async def print_job(site: LpdSite, *, queue: str = "findme", data: bytes = PDF,
                    cf: bytes | None = None, data_first: bool = False
                    ) -> tuple[LpdServerProtocol, StringTransport, list[bytes]]:
    proto, transport = site.connect()
    answers = [await say(proto, transport, b"\x02" + queue.encode() + b"\n")]
    steps = [*control_part(cf or control()), *data_part(data)]
    if data_first:
        steps = steps[2:] + steps[:2]
    for step in steps:
        answers.append(await say(proto, transport, step))
    return proto, transport, answers


# ---------------------------------------------------------------- receiving jobs


@pytest.mark.parametrize("data_first", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_job_is_held_for_the_control_files_owner(site: LpdSite, data_first: bool) -> None:
    proto, transport, answers = await print_job(site, data_first=data_first)
    assert answers == [b"\x00"] * 5
    (job,) = await site.jobs()
    assert (job.queue, job.owner, job.name, job.pages, job.state) == (
        "findme", "alice", "report.pdf", 3, JobState.HELD)
    assert job.document_format == "application/pdf"
    assert site.spool.path(job.spool_name).read_bytes() == PDF
    assert not transport.disconnecting           # the client closes
    proto.connectionLost(None)
    await settle(proto)
    assert len(await site.jobs()) == 1


@pytest.mark.parametrize("data_first", [False, True])
@pytest_twisted.ensureDeferred
async def test_the_last_acknowledgement_waits_for_the_durable_job(site: LpdSite,
                                                                  data_first: bool) -> None:
    """Control first: the data file's ack is written after submit returned; data first:
    the control file's."""
    proto, transport = site.connect()
    seen: list[tuple[bytes, int]] = []
    real_submit = site.service.submit

    async def submit(*args: Any, **kwargs: Any) -> Job:
        seen.append((transport.value(), len(await site.jobs())))
        job = await real_submit(*args, **kwargs)
        seen.append((transport.value(), len(await site.jobs())))
        return job

    site.service.submit = submit  # type: ignore[method-assign]
    steps = [b"\x02findme\n", *control_part(control()), *data_part(PDF)]
    if data_first:
        steps = steps[:1] + steps[3:] + steps[1:3]
    for step in steps:
        await say(proto, transport, step)
    before, after = seen
    assert before == (b"\x00" * 4, 0) and after == (b"\x00" * 4, 1)
    assert transport.value() == b"\x00" * 5


@pytest_twisted.ensureDeferred
async def test_postscript_format_and_copies_from_repeated_print_lines(site: LpdSite) -> None:
    await print_job(site, data=PS, cf=control(copies=3, fmt="o", name="slides.ps"))
    (job,) = await site.jobs()
    assert (job.document_format, job.pages, job.options.copies, job.name) == (
        "application/postscript", 3, 3, "slides.ps")


@pytest_twisted.ensureDeferred
async def test_several_data_files_make_one_job_each(site: LpdSite) -> None:
    cf = (b"Hws\nPbob\nJboth\nldfA002ws\nNfirst.pdf\nldfB002ws\nldfB002ws\nNsecond.pdf\n"
          b"UdfA002ws\nUdfB002ws\n")
    proto, transport = site.connect()
    answers = b""
    for step in [b"\x02findme\n", *data_part(PDF, "dfA002ws"), *control_part(cf, "cfA002ws"),
                 *data_part(PS, "dfB002ws"), *data_part(b"never printed", "dfC002ws")]:
        answers += await say(proto, transport, step)
    assert answers == b"\x00" * 9
    jobs = sorted(await site.jobs(), key=lambda j: j.id)
    assert [(j.owner, j.name, j.pages, j.options.copies) for j in jobs] == [
        ("bob", "first.pdf", 3, 1), ("bob", "second.pdf", 3, 2)]
    proto.connectionLost(None)
    await settle(proto)
    assert len(site.spool_files()) == 2    # the unprinted file left nothing behind


@pytest_twisted.ensureDeferred
async def test_direct_queue_prints_at_once(site: LpdSite) -> None:
    await print_job(site, queue="mfd-1")
    (job,) = await site.jobs()
    for _ in range(100):
        if site.completed:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert site.completed == [job.id]


@pytest_twisted.ensureDeferred
async def test_unknown_length_data_file_until_half_close(site: LpdSite) -> None:
    proto, transport = site.connect()
    for step in [b"\x02findme\n", *control_part(control()), b"\x030 dfA001ws\n"]:
        assert await say(proto, transport, step) == b"\x00"
    proto.dataReceived(PDF[:1000])
    proto.dataReceived(PDF[1000:])
    proto.readConnectionLost()
    await settle(proto)
    assert transport.value() == b"\x00" * 4 + b"\x00"
    assert transport.disconnecting
    (job,) = await site.jobs()
    assert (job.pages, job.size) == (3, len(PDF))


@pytest_twisted.ensureDeferred
async def test_a_job_can_follow_another_on_one_connection_and_abort_discards(
        site: LpdSite) -> None:
    proto, transport, _ = await print_job(site)
    for step in [*control_part(control(user="bob"), "cfA002ws"), b"\x03100 dfA001ws\n",
                 b"x" * 50]:
        await say(proto, transport, step)
    assert await say(proto, transport, b"\x01\n") == b""  # still inside the data file
    await say(proto, transport, b"y" * 48 + b"\x00")
    # 100 octets arrived: the job (bob's) completes
    assert len(await site.jobs()) == 2
    assert await say(proto, transport, b"\x02" + control_part(control(user="carol"))[0][1:]) \
        == b"\x00"
    assert await say(proto, transport, control_part(control(user="carol"))[1]) == b"\x00"
    assert await say(proto, transport, b"\x01\n") == b"\x00"          # abort
    assert await say(proto, transport, data_part(PDF)[0]) == b"\x00"
    assert await say(proto, transport, data_part(PDF)[1]) == b"\x00"  # no control: no job
    proto.connectionLost(None)
    await settle(proto)
    assert sorted(j.owner for j in await site.jobs()) == ["alice", "bob"]
    assert len(site.spool_files()) == 2


# ---------------------------------------------------------------- refusals


async def refused(site: LpdSite, steps: list[bytes], *, lose: bool = False) -> bytes:
    proto, transport = site.connect()
    for step in steps:
        proto.dataReceived(step)
        await settle(proto)
    if lose:
        proto.connectionLost(None)
        await settle(proto)
    assert await site.jobs() == []
    assert site.spool_files() == [], "no partial job"
    return transport.value() if lose else (transport.value() if transport.disconnecting
                                          else b"still open")


@pytest.mark.parametrize(("steps", "answer"), [
    ([b"\x02nosuch\n"], b"\x01"),
    ([b"\x01nosuch\n"], b"\x01"),
    ([b"\x09findme\n"], b"\x01"),
    ([b"\x02findme\n\x07\n"], b"\x00\x01"),
    ([b"\x02findme\n", b"\x0399999999999 dfA1\n"], b"\x00\x01"),           # > max_document
    ([b"\x02findme\n", *data_part(PDF), b"\x02100000000 cfA1\n"], b"\x00\x00\x00\x01"),
    ([b"\x02findme\n", *control_part(b"Hws\nJnobody\nldfA001ws\n")], b"\x00\x00\x01"),
    ([b"\x02findme\n", *data_part(PDF), *control_part(b"Hws\nldfA001ws\n")],
     b"\x00\x00\x00\x00\x01"),
    ([b"\x02findme\n", *control_part(control()), b"\x03%d dfA001ws\n" % len(PDF),
      PDF + b"!"], b"\x00\x00\x00\x00\x01"),                                # no zero octet
    ([b"\x02findme\n", *control_part(control(copies=1000))], b"\x00\x00\x01"),
    ([b"\x02findme\n", *control_part(control()), *control_part(control())],
     b"\x00\x00\x00\x00\x01"),
])
@pytest_twisted.ensureDeferred
async def test_refusals_nack_close_and_leave_nothing(site: LpdSite, steps: list[bytes],
                                                     answer: bytes) -> None:
    assert await refused(site, steps) == answer


@pytest.mark.parametrize("cut", [5, 60, 200, 2000])
@pytest_twisted.ensureDeferred
async def test_truncated_transfers_leave_nothing(site: LpdSite, cut: int) -> None:
    conversation = b"\x02findme\n" + b"".join(control_part(control())) + b"".join(data_part(PDF))
    await refused(site, [conversation[:cut]], lose=True)
    await refused(site, [b"\x02findme\n" + b"".join(data_part(PDF))[:cut]], lose=True)


@pytest_twisted.ensureDeferred
async def test_data_first_counts_against_the_owners_own_cap(tmp_path: Path) -> None:
    site = make_site(tmp_path, max_document=8 * MB, max_per_user=len(PDF) + 10)
    try:
        await print_job(site)                             # alice now holds len(PDF)
        answer = await refused_keep(site, [b"\x02findme\n", *data_part(PDF),
                                           *control_part(control())])
        assert answer == b"\x00\x00\x00\x00\x01"
        assert len(await site.jobs()) == 1
    finally:
        await site.close()


async def refused_keep(site: LpdSite, steps: list[bytes]) -> bytes:
    proto, transport = site.connect()
    for step in steps:
        await say(proto, transport, step)
    assert transport.disconnecting
    return transport.value()


@pytest_twisted.ensureDeferred
async def test_a_failing_second_document_withdraws_the_first(site: LpdSite) -> None:
    cf = b"Hws\nPbob\nldfA002ws\nldfB002ws\n"
    real_submit = site.service.submit
    calls = []

    async def submit(*args: Any, **kwargs: Any) -> Job:
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk on fire")
        return await real_submit(*args, **kwargs)

    site.service.submit = submit  # type: ignore[method-assign]
    proto, transport = site.connect()
    for step in [b"\x02findme\n", *control_part(cf), *data_part(PDF, "dfA002ws"),
                 *data_part(PDF, "dfB002ws")]:
        await say(proto, transport, step)
    assert transport.value().endswith(b"\x01") and transport.disconnecting
    (job,) = await site.jobs()
    assert job.state is JobState.CANCELED
    assert site.spool_files() == []


# ---------------------------------------------------------------- queue state, remove


@pytest_twisted.ensureDeferred
async def test_queue_state_and_remove_jobs(site: LpdSite) -> None:
    await print_job(site)
    await print_job(site, cf=control(user="bob", name="bobs.pdf"))
    proto, transport = site.connect()
    await say(proto, transport, b"\x03findme\n")
    short = transport.value().decode()
    assert transport.disconnecting
    assert "alice" in short and "bobs.pdf" in short and "1st" in short and "2nd" in short
    proto, transport = site.connect()
    await say(proto, transport, b"\x04findme bob\n")
    assert "bobs.pdf" in transport.value().decode() and "report.pdf" not in \
        transport.value().decode()
    alice_job = next(j for j in await site.jobs() if j.owner == "alice")
    # bob cannot remove alice's job; alice can
    proto, transport = site.connect()
    await say(proto, transport, b"\x05findme bob %d\n" % alice_job.id)
    assert "no job of bob" in transport.value().decode()
    proto, transport = site.connect()
    await say(proto, transport, b"\x05findme alice %d\n" % alice_job.id)
    assert "dequeued" in transport.value().decode()
    states = {j.owner: j.state for j in await site.jobs()}
    assert states == {"alice": JobState.CANCELED, "bob": JobState.HELD}
    proto, transport = site.connect()
    await say(proto, transport, b"\x05findme bob\n")                 # bob's active job
    assert {j.state for j in await site.jobs()} == {JobState.CANCELED}
    proto, transport = site.connect()
    await say(proto, transport, b"\x03nosuch\n")
    assert transport.value() == b"nosuch: unknown queue\n"


def test_format_queue_state_empty() -> None:
    assert format_queue_state(Queue("findme", "findme"), [], long=True) == \
        "findme: findme\nno entries\n"


# ---------------------------------------------------------------- fuzzing the adapter


@pytest_twisted.ensureDeferred
async def test_random_garbage_never_leaves_a_partial_job(site: LpdSite) -> None:
    """Random and mutated conversations (seeded): the spool holds exactly the jobs' files."""
    rng = random.Random(1179)
    good = b"\x02findme\n" + b"".join(control_part(control())) + b"".join(data_part(PDF[:3000]))
    for case in range(300):
        if case % 2:
            data = bytes(rng.randrange(256) for _ in range(rng.randrange(200)))
            data = rng.choice([b"", b"\x02findme\n"]) + data
        else:
            at = rng.randrange(len(good))
            data = good[:at] + bytes([rng.randrange(256)]) + good[at + 1:]
            data = data[: rng.randrange(len(data) + 1)]
        proto, _ = site.connect()
        proto.dataReceived(data)
        await settle(proto)
        if rng.random() < 0.5:
            proto.readConnectionLost()
            await settle(proto)
        proto.connectionLost(None)
        await settle(proto)
        jobs = await site.jobs()
        assert list(site.spool.incoming.iterdir()) == []
        assert len(site.spool_files()) == len([j for j in jobs if j.spool_name])

"""The site's IPP server (`appliance.protocols.ipp.server`) against a real PrintService.

A real store (SQLite, WAL+FULL), a real spool and the real twisted.web
resource on a loopback port; requests are built with our codec and sent with
treq. The direct queue's release engine is stood in for by an `on_ready` that
marks the job completed at once.

The Hypothesis test at the end drives the resource in-process (no sockets,
for speed) with random and mutated bodies.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
import treq
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task
from twisted.internet.error import ConnectionLost
from twisted.logger import formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web import server
from twisted.web.client import HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.test.requesthelper import DummyRequest

from appliance.core import jobs as jobs_module
from appliance.core.charging import LAB_POLICY
from appliance.core.jobs import JobError, PrintService
from appliance.core.model import Job, JobState, Queue
from appliance.protocols.ipp import codec
from appliance.protocols.ipp.codec import Attribute, AttributeGroup, Message, attr
from appliance.protocols.ipp.constants import GroupTag, Operation, Status, ValueTag
from appliance.protocols.ipp.server import CHUNK_SIZE, IppPrinterResource, build_ipp_root
from appliance.storage.database import Database
from appliance.storage.spool import Spool
from appliance.storage.store import SiteStore

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DOCS = FIXTURES / "ipp-docs"
PDF = (DOCS / "document-a4.pdf").read_bytes()   # two pages
KB = 1024
MB = 1024 * KB

_ids = itertools.count(1)


# ---------------------------------------------------------------- the site under test


@dataclass
class IppSite:
    """A PrintService on a temp folder, served by build_ipp_root on a loopback port."""

    service: PrintService
    database: Database
    spool: Spool
    root: Resource
    port: Any
    completed: list[int] = field(default_factory=list)

    @property
    def port_number(self) -> int:
        return int(self.port.getHost().port)

    def uri(self, queue: str) -> str:
        return f"ipp://127.0.0.1:{self.port_number}/printers/{queue}"

    def url(self, queue: str) -> str:
        """The HTTP URL to POST to; queue "" is the root (routing by printer-uri)."""
        if not queue:
            return f"http://127.0.0.1:{self.port_number}/"
        return f"http://127.0.0.1:{self.port_number}/printers/{queue}"

    def spool_files(self) -> list[str]:
        """Everything in the spool, committed or incoming."""
        files = [p.name for p in self.spool.root.iterdir() if p.is_file()]
        files += [f"incoming/{p.name}" for p in self.spool.incoming.iterdir()]
        return sorted(files)

    async def close(self) -> None:
        await self.port.stopListening()
        # Let colour analyses and on_ready calls started by the last requests finish
        # before the database goes away.
        for _ in range(500):
            if not self.service._analysis:
                break
            await task.deferLater(reactor, 0.01, lambda: None)
        await task.deferLater(reactor, 0.02, lambda: None)
        self.database.close()


class _InlineDatabase:
    """`Database.run` on the calling thread, so that the resource answers synchronously
    (the in-process property test cannot wait for the reactor: pytest-twisted runs
    test bodies inside it)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def run(self, work: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self.database.run_sync, work)


def make_site(
    tmp_path: Path, *, max_document: int = 8 * MB, max_per_user: int = 16 * MB,
    max_total: int = 32 * MB, complete_direct_jobs: bool = True, inline: bool = False,
) -> IppSite:
    """`inline`: the store runs its transactions on the calling thread (see _InlineDatabase);
    the caller also makes `appliance.core.jobs.threads` inline (`inline_threads`)."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    database = Database(tmp_path / "site.db", reactor)
    database.open()
    spool = Spool(tmp_path / "spool", max_document=max_document, max_per_user=max_per_user,
                  max_total=max_total)
    store = SiteStore(_InlineDatabase(database) if inline else database)  # type: ignore[arg-type]
    service = PrintService(
        store=store, spool=spool,
        queues=[Queue("findme", "findme"), Queue("mfd-1", "direct", "mfd-1")],
        policies=lambda device: LAB_POLICY, reactor=reactor, use_ghostscript=False,
    )
    root = build_ipp_root(service)
    port = reactor.listenTCP(0, server.Site(root), interface="127.0.0.1")  # type: ignore[arg-type]
    site = IppSite(service, database, spool, root, port)

    async def complete(job: Job) -> None:
        """Stand-in for the release engine: the device printed the job at once."""
        now = service.clock()
        impressions = service.quote(job).impressions
        await service.store.update_job(
            job.id, state=JobState.COMPLETED, state_reasons=("job-completed-successfully",),
            processing_at=now, completed_at=now, impressions_completed=impressions,
            spool_name=None,
        )
        if job.spool_name:
            service.spool.delete(job.spool_name)
        site.completed.append(job.id)

    if complete_direct_jobs:
        service.on_ready = complete
    return site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[IppSite]:
    s = make_site(tmp_path)
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.close()))


@pytest.fixture
def inline_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[IppSite]:
    """A site whose every step completes without the reactor (for in-process tests)."""
    monkeypatch.setattr(jobs_module, "threads", SimpleNamespace(
        deferToThread=lambda f, *a, **kw: defer.maybeDeferred(f, *a, **kw)))
    s = make_site(tmp_path, inline=True)
    yield s
    pytest_twisted.blockon(defer.ensureDeferred(s.close()))


# ---------------------------------------------------------------- talking IPP


def request(op: int, site: IppSite | None, queue: str = "mfd-1", user: str | None = "alice", *,
            op_attrs: list[Attribute] | None = None, job_attrs: list[Attribute] | None = None,
            version: tuple[int, int] = (2, 0), printer_uri: str | None = None) -> Message:
    uri = printer_uri if printer_uri is not None else (
        site.uri(queue) if site is not None else f"ipp://localhost/printers/{queue}")
    message = codec.request(op, next(_ids), uri, version=version, user=user,
                            extra=list(op_attrs or []))
    if job_attrs:
        message.groups.append(AttributeGroup(GroupTag.JOB, {a.name: a for a in job_attrs}))
    return message


async def post(site: IppSite, queue: str, body: bytes) -> tuple[int, list[bytes], bytes]:
    pool = HTTPConnectionPool(reactor, persistent=False)
    response = await treq.post(site.url(queue), data=body, pool=pool,
                               headers=Headers({b"Content-Type": [b"application/ipp"]}))
    payload = await treq.content(response)
    return response.code, response.headers.getRawHeaders(b"content-type") or [], payload


async def send(site: IppSite, message: Message, data: bytes = b"", queue: str | None = None,
               ) -> Message:
    """Send a request; the answer must be HTTP 200 application/ipp echoing version and id."""
    if queue is None:
        uri = message.get(GroupTag.OPERATION, "printer-uri") or ""
        queue = uri.rsplit("/", 1)[-1] if uri else "mfd-1"
        assert queue, "send(..., queue='') to post to the root"
    code, types, payload = await post(site, queue, codec.encode(message) + data)
    assert code == 200
    assert types == [b"application/ipp"]
    reply = codec.decode(payload)
    assert reply.version == message.version
    assert reply.request_id == message.request_id
    return reply


def status(reply: Message) -> Status:
    return Status(reply.code)


def job_value(reply: Message, name: str, index: int = 0) -> Any:
    groups = list(reply.groups_of(GroupTag.JOB))
    attribute = groups[index].get(name)
    return attribute.value if attribute is not None else None


def status_message(reply: Message) -> str:
    return str(reply.get(GroupTag.OPERATION, "status-message") or "")


def unsupported_names(reply: Message) -> set[str]:
    group = reply.group(GroupTag.UNSUPPORTED)
    return set(group.attributes) if group is not None else set()


async def print_job(site: IppSite, queue: str = "mfd-1", user: str | None = "alice",
                    data: bytes = PDF, fmt: str = "application/pdf",
                    job_attrs: list[Attribute] | None = None, name: str = "report.pdf",
                    ) -> Message:
    ops = [attr("job-name", ValueTag.NAME, name),
           attr("document-format", ValueTag.MIME_MEDIA_TYPE, fmt)]
    return await send(site, request(Operation.PRINT_JOB, site, queue, user, op_attrs=ops,
                                    job_attrs=job_attrs), data)


async def wait_for(site: IppSite, job_id: int, state: JobState, timeout: float = 5.0) -> Job:
    for _ in range(int(timeout / 0.01)):
        job = await site.service.job(job_id)
        if job is not None and job.state is state:
            return job
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError(f"job {job_id} never reached {state}")


def op_job_id(job_id: int) -> list[Attribute]:
    return [attr("job-id", ValueTag.INTEGER, job_id)]


# ---------------------------------------------------------------- Get-Printer-Attributes


@pytest_twisted.ensureDeferred
async def test_get_printer_attributes_describes_the_queue(site: IppSite) -> None:
    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "mfd-1"))
    assert status(reply) is Status.SUCCESSFUL_OK
    printer = reply.group(GroupTag.PRINTER)
    assert printer is not None
    values = {name: a.values for name, a in printer.attributes.items()}
    assert values["printer-uri-supported"] == [site.uri("mfd-1")]
    assert values["printer-name"] == ["mfd-1"]
    assert values["ipp-versions-supported"] == ["1.0", "1.1", "2.0"]
    assert values["multiple-document-jobs-supported"] == [False]
    assert values["printer-is-accepting-jobs"] == [True]
    assert values["queued-job-count"] == [0]
    assert values["printer-up-time"][0] >= 1
    assert "application/pdf" in values["document-format-supported"]
    assert set(values["operations-supported"]) == {
        Operation.PRINT_JOB, Operation.VALIDATE_JOB, Operation.CREATE_JOB,
        Operation.SEND_DOCUMENT, Operation.CANCEL_JOB, Operation.GET_JOB_ATTRIBUTES,
        Operation.GET_JOBS, Operation.GET_PRINTER_ATTRIBUTES, Operation.HOLD_JOB,
        Operation.RELEASE_JOB,
    }
    assert values["job-hold-until-default"] == ["no-hold"]
    assert printer.attributes["media-col-default"].tag == ValueTag.BEG_COLLECTION
    # media-col-database is long: only when asked for by name
    assert "media-col-database" not in values
    assert values["printer-uuid"][0].startswith("urn:uuid:")


@pytest_twisted.ensureDeferred
async def test_get_printer_attributes_requested_attributes_and_groups(site: IppSite) -> None:
    async def names(*requested: str) -> set[str]:
        reply = await send(site, request(
            Operation.GET_PRINTER_ATTRIBUTES, site, "findme",
            op_attrs=[attr("requested-attributes", ValueTag.KEYWORD, *requested)]))
        assert status(reply) is Status.SUCCESSFUL_OK
        group = reply.group(GroupTag.PRINTER)
        return set(group.attributes) if group is not None else set()

    assert await names("printer-uri-supported") == {"printer-uri-supported"}
    template = await names("job-template")
    assert {"copies-supported", "media-col-default", "sides-default"} <= template
    assert "printer-name" not in template
    description = await names("printer-description")
    assert {"printer-name", "printer-state", "operations-supported"} <= description
    assert "copies-default" not in description
    everything = await names("all")
    assert template | description == everything
    assert await names("media-col-database", "no-such-attribute") == {"media-col-database"}
    # the Find-Me queue says it holds every job
    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "findme"))
    assert reply.get(GroupTag.PRINTER, "job-hold-until-default") == "indefinite"


# ---------------------------------------------------------------- Print-Job


@pytest_twisted.ensureDeferred
async def test_print_job_on_a_direct_queue_is_durable_then_completes(site: IppSite) -> None:
    reply = await print_job(site, "mfd-1",
                            job_attrs=[attr("copies", ValueTag.INTEGER, 2),
                                       attr("sides", ValueTag.KEYWORD, "two-sided-long-edge"),
                                       attr("media", ValueTag.KEYWORD, "iso_a4_210x297mm")])
    assert status(reply) is Status.SUCCESSFUL_OK
    job_id = job_value(reply, "job-id")
    assert job_value(reply, "job-uri") == f"{site.uri('mfd-1')}/jobs/{job_id}"
    assert job_value(reply, "job-state") in (3, 5, 9)
    # acknowledged means durable: the row is committed and the document is in the spool
    job = await site.service.job(job_id)
    assert job is not None and job.owner == "alice" and job.name == "report.pdf"
    assert job.options.copies == 2 and job.options.sides == "two-sided-long-edge"
    assert job.options.media == "iso_a4_210x297mm"
    assert job.size == len(PDF) and job.pages == 2

    await wait_for(site, job_id, JobState.COMPLETED)
    reply = await send(site, request(Operation.GET_JOB_ATTRIBUTES, site, "mfd-1",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "job-state") == 9
    assert job_value(reply, "job-state-reasons") == "job-completed-successfully"
    assert job_value(reply, "job-originating-user-name") == "alice"
    assert job_value(reply, "job-printer-uri") == site.uri("mfd-1")
    assert job_value(reply, "job-k-octets") == (len(PDF) + 1023) // 1024
    assert job_value(reply, "job-impressions") == 4          # 2 pages x 2 copies
    assert job_value(reply, "job-media-sheets") == 2         # duplex
    assert job_value(reply, "job-impressions-completed") == 4
    assert job_value(reply, "copies") == 2
    assert job_value(reply, "number-up") == 1
    assert job_value(reply, "document-format") == "application/pdf"
    up_time = job_value(reply, "job-printer-up-time")
    for name in ("time-at-creation", "time-at-processing", "time-at-completed"):
        assert 0 <= job_value(reply, name) <= up_time
    for name in ("date-time-at-creation", "date-time-at-completed"):
        assert isinstance(job_value(reply, name), codec.DateTime)


@pytest_twisted.ensureDeferred
async def test_findme_job_is_held_for_its_owner(site: IppSite) -> None:
    reply = await print_job(site, "findme", user="bob")
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "job-state") == 4          # pending-held
    assert job_value(reply, "job-state-reasons") == "job-hold-until-specified"
    job_id = job_value(reply, "job-id")
    held = await site.service.held_for("bob")
    assert [j.id for j in held] == [job_id]
    reply = await send(site, request(Operation.GET_JOB_ATTRIBUTES, site, "findme", "bob",
                                     op_attrs=op_job_id(job_id)))
    assert job_value(reply, "job-originating-user-name") == "bob"
    assert job_value(reply, "job-state") == 4
    assert job_value(reply, "time-at-completed") is None       # no-value
    job_group = reply.group(GroupTag.JOB)
    assert job_group is not None
    assert job_group.attributes["time-at-completed"].tag == ValueTag.NO_VALUE
    assert site.completed == []
    # a job of the Find-Me queue is not found through another queue
    reply = await send(site, request(Operation.GET_JOB_ATTRIBUTES, site, "mfd-1", "bob",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.CLIENT_ERROR_NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_owner_without_requesting_user_name(site: IppSite) -> None:
    reply = await print_job(site, "findme", user=None)
    assert status(reply) is Status.CLIENT_ERROR_NOT_AUTHORIZED
    assert "requesting-user-name" in status_message(reply)
    reply = await print_job(site, "mfd-1", user=None)
    assert status(reply) is Status.SUCCESSFUL_OK
    job = await site.service.job(job_value(reply, "job-id"))
    assert job is not None and job.owner == "anonymous"
    assert site.spool_files() == [job.spool_name] or job.spool_name is None


@pytest_twisted.ensureDeferred
async def test_print_job_hold_until_and_release_on_a_direct_queue(site: IppSite) -> None:
    reply = await print_job(site, "mfd-1",
                            job_attrs=[attr("job-hold-until", ValueTag.KEYWORD, "indefinite")])
    job_id = job_value(reply, "job-id")
    assert job_value(reply, "job-state") == 4
    await task.deferLater(reactor, 0.05, lambda: None)
    assert site.completed == []
    # someone else may not release it
    reply = await send(site, request(Operation.RELEASE_JOB, site, "mfd-1", "mallory",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.CLIENT_ERROR_NOT_AUTHORIZED
    reply = await send(site, request(Operation.RELEASE_JOB, site, "mfd-1",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.SUCCESSFUL_OK
    await wait_for(site, job_id, JobState.COMPLETED)
    assert site.completed == [job_id]
    # a completed job cannot be held any more
    reply = await send(site, request(Operation.HOLD_JOB, site, "mfd-1",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.CLIENT_ERROR_NOT_POSSIBLE


@pytest_twisted.ensureDeferred
async def test_job_template_attributes_in_the_operation_group(site: IppSite) -> None:
    """As CUPS sends job-hold-until (and its print-job-hold.test does)."""
    reply = await send(site, request(Operation.PRINT_JOB, site, "mfd-1", op_attrs=[
        attr("job-hold-until", ValueTag.KEYWORD, "indefinite")]), PDF)
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "job-state") == 4
    # the job group wins over the operation group
    reply = await send(site, request(Operation.VALIDATE_JOB, site, "mfd-1",
                                     op_attrs=[attr("copies", ValueTag.INTEGER, 0)],
                                     job_attrs=[attr("copies", ValueTag.INTEGER, 2)]))
    assert status(reply) is Status.SUCCESSFUL_OK


@pytest_twisted.ensureDeferred
async def test_hold_job_and_release_job(tmp_path: Path) -> None:
    site = make_site(tmp_path, complete_direct_jobs=False)
    try:
        reply = await print_job(site, "mfd-1")       # pending: nobody sends it
        job_id = job_value(reply, "job-id")
        assert job_value(reply, "job-state") == 3
        reply = await send(site, request(Operation.HOLD_JOB, site, "mfd-1",
                                         op_attrs=op_job_id(job_id)))
        assert status(reply) is Status.SUCCESSFUL_OK
        job = await site.service.job(job_id)
        assert job is not None and job.state is JobState.HELD
        assert job.options.hold_until == "indefinite"
        reply = await send(site, request(Operation.HOLD_JOB, site, "mfd-1", op_attrs=[
            *op_job_id(job_id), attr("job-hold-until", ValueTag.KEYWORD, "evening")]))
        assert status(reply) is Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED
        assert unsupported_names(reply) == {"job-hold-until"}
        reply = await send(site, request(Operation.RELEASE_JOB, site, "mfd-1",
                                         op_attrs=op_job_id(job_id)))
        assert status(reply) is Status.SUCCESSFUL_OK
        job = await site.service.job(job_id)
        assert job is not None and job.state is JobState.PENDING
        # Find-Me jobs are released at a printer, not with Release-Job
        reply = await print_job(site, "findme")
        reply = await send(site, request(Operation.RELEASE_JOB, site, "findme",
                                         op_attrs=op_job_id(job_value(reply, "job-id"))))
        assert status(reply) is Status.CLIENT_ERROR_NOT_POSSIBLE
    finally:
        await site.close()


# ---------------------------------------------------------------- Validate-Job


@pytest_twisted.ensureDeferred
async def test_validate_job(site: IppSite) -> None:
    ok = request(Operation.VALIDATE_JOB, site, "findme", op_attrs=[
        attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf")],
        job_attrs=[attr("copies", ValueTag.INTEGER, 3)])
    assert status(await send(site, ok)) is Status.SUCCESSFUL_OK

    bad_copies = [attr("copies", ValueTag.INTEGER, 5000),
                  attr("print-quality", ValueTag.ENUM, 4)]
    strict = request(Operation.VALIDATE_JOB, site, "findme", op_attrs=[
        attr("ipp-attribute-fidelity", ValueTag.BOOLEAN, True)], job_attrs=bad_copies)
    reply = await send(site, strict)
    assert status(reply) is Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED
    assert unsupported_names(reply) == {"copies"}
    assert reply.get(GroupTag.UNSUPPORTED, "copies") == 5000

    lenient = request(Operation.VALIDATE_JOB, site, "findme",
                      job_attrs=[*bad_copies, attr("job-sheets", ValueTag.KEYWORD, "standard")])
    reply = await send(site, lenient)
    assert status(reply) is Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES
    assert unsupported_names(reply) == {"copies", "job-sheets"}

    jpeg = request(Operation.VALIDATE_JOB, site, "findme", op_attrs=[
        attr("document-format", ValueTag.MIME_MEDIA_TYPE, "image/jpeg")])
    reply = await send(site, jpeg)
    assert status(reply) is Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED
    assert unsupported_names(reply) == {"document-format"}

    gzip = request(Operation.VALIDATE_JOB, site, "findme", op_attrs=[
        attr("compression", ValueTag.KEYWORD, "gzip")])
    assert status(await send(site, gzip)) is Status.CLIENT_ERROR_COMPRESSION_NOT_SUPPORTED
    assert await site.service.list_jobs(None, "all") == []
    assert site.spool_files() == []


@pytest_twisted.ensureDeferred
async def test_media_col_selects_a_supported_size(site: IppSite) -> None:
    size = {"x-dimension": attr("x-dimension", ValueTag.INTEGER, 21590),
            "y-dimension": attr("y-dimension", ValueTag.INTEGER, 27940)}
    media_col = attr("media-col", ValueTag.BEG_COLLECTION,
                     {"media-size": attr("media-size", ValueTag.BEG_COLLECTION, size)})
    reply = await print_job(site, "findme", job_attrs=[media_col])
    assert status(reply) is Status.SUCCESSFUL_OK
    job = await site.service.job(job_value(reply, "job-id"))
    assert job is not None and job.options.media == "na_letter_8.5x11in"


# ---------------------------------------------------------------- Create-Job + Send-Document


@pytest_twisted.ensureDeferred
async def test_create_job_then_send_document(site: IppSite) -> None:
    reply = await send(site, request(Operation.CREATE_JOB, site, "findme", op_attrs=[
        attr("job-name", ValueTag.NAME, "two-step")],
        job_attrs=[attr("number-up", ValueTag.INTEGER, 2)]))
    assert status(reply) is Status.SUCCESSFUL_OK
    job_id = job_value(reply, "job-id")
    assert job_value(reply, "job-state") == 4
    assert job_value(reply, "job-state-reasons") == "job-incoming"
    assert site.spool_files() == []

    def send_document(user: str, last: Attribute | None = None) -> Message:
        ops = [*op_job_id(job_id),
               attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf")]
        if last is not None:
            ops.append(last)
        return request(Operation.SEND_DOCUMENT, site, "findme", user, op_attrs=ops)

    last_true = attr("last-document", ValueTag.BOOLEAN, True)
    reply = await send(site, send_document("alice"), PDF)
    assert status(reply) is Status.CLIENT_ERROR_BAD_REQUEST            # no last-document
    reply = await send(site, send_document("alice", attr("last-document", ValueTag.BOOLEAN,
                                                         False)), PDF)
    assert status(reply) is Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED
    assert unsupported_names(reply) == {"last-document"}
    reply = await send(site, send_document("mallory", last_true), PDF)
    assert status(reply) is Status.CLIENT_ERROR_NOT_AUTHORIZED
    assert site.spool_files() == []

    reply = await send(site, send_document("alice", last_true), PDF)
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "job-id") == job_id
    assert job_value(reply, "job-state") == 4
    assert job_value(reply, "job-state-reasons") == "job-hold-until-specified"
    job = await site.service.job(job_id)
    assert job is not None and job.name == "two-step" and job.options.number_up == 2
    assert job.pages == 2 and job.spool_name is not None
    assert site.spool_files() == [job.spool_name]
    assert (site.spool.root / job.spool_name).read_bytes() == PDF

    # one document per job
    reply = await send(site, send_document("alice", last_true), PDF)
    assert status(reply) is Status.CLIENT_ERROR_NOT_POSSIBLE
    assert site.spool_files() == [job.spool_name]


@pytest_twisted.ensureDeferred
async def test_two_send_documents_at_once_get_one_document(
    site: IppSite, monkeypatch: pytest.MonkeyPatch,
) -> None:
    reply = await send(site, request(Operation.CREATE_JOB, site, "findme"))
    job_id = job_value(reply, "job-id")
    gate: defer.Deferred[None] = defer.Deferred()
    real_submit = site.service.submit

    async def slow_submit(*args: Any, **kwargs: Any) -> Job:
        await gate
        return await real_submit(*args, **kwargs)

    monkeypatch.setattr(site.service, "submit", slow_submit)
    message = request(Operation.SEND_DOCUMENT, site, "findme", op_attrs=[
        *op_job_id(job_id), attr("last-document", ValueTag.BOOLEAN, True)])
    first = defer.ensureDeferred(send(site, message, PDF))
    for _ in range(200):                    # until the first one waits in submit
        if len(site.spool_files()) == 1:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    second = await send(site, message, PDF)
    assert status(second) is Status.CLIENT_ERROR_NOT_POSSIBLE
    gate.callback(None)
    assert status(await first) is Status.SUCCESSFUL_OK
    job = await site.service.job(job_id)
    assert job is not None and site.spool_files() == [job.spool_name]


@pytest_twisted.ensureDeferred
async def test_create_job_on_a_direct_queue_prints_after_send_document(site: IppSite) -> None:
    reply = await send(site, request(Operation.CREATE_JOB, site, "mfd-1"))
    job_id = job_value(reply, "job-id")
    reply = await send(site, request(Operation.SEND_DOCUMENT, site, "mfd-1", op_attrs=[
        *op_job_id(job_id), attr("last-document", ValueTag.BOOLEAN, True)]), PDF)
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "document-format") is None  # not in the creation answer
    job = await wait_for(site, job_id, JobState.COMPLETED)
    assert job.document_format == "application/pdf"     # detected


# ---------------------------------------------------------------- Cancel-Job


@pytest_twisted.ensureDeferred
async def test_cancel_job_deletes_the_spooled_document(site: IppSite) -> None:
    reply = await print_job(site, "findme")
    job_id = job_value(reply, "job-id")
    job_uri = job_value(reply, "job-uri")
    job = await site.service.job(job_id)
    assert job is not None and site.spool_files() == [job.spool_name]

    reply = await send(site, request(Operation.CANCEL_JOB, site, "findme", "mallory",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.CLIENT_ERROR_NOT_AUTHORIZED
    assert site.spool_files() == [job.spool_name]

    # job-uri instead of printer-uri + job-id
    cancel = codec.request(Operation.CANCEL_JOB, next(_ids), None, user="alice",
                           extra=[attr("job-uri", ValueTag.URI, job_uri)])
    reply = await send(site, cancel, queue="findme")
    assert status(reply) is Status.SUCCESSFUL_OK
    assert site.spool_files() == []
    reply = await send(site, request(Operation.GET_JOB_ATTRIBUTES, site, "findme",
                                     op_attrs=op_job_id(job_id)))
    assert job_value(reply, "job-state") == 7
    assert job_value(reply, "job-state-reasons") == "job-canceled-by-user"

    reply = await send(site, request(Operation.CANCEL_JOB, site, "findme",
                                     op_attrs=op_job_id(job_id)))
    assert status(reply) is Status.CLIENT_ERROR_NOT_POSSIBLE
    for missing in (op_job_id(987654), [attr("job-uri", ValueTag.URI, "ipp://x/nonsense")]):
        reply = await send(site, request(Operation.CANCEL_JOB, site, "findme",
                                         op_attrs=missing))
        assert status(reply) is Status.CLIENT_ERROR_NOT_FOUND
    reply = await send(site, request(Operation.CANCEL_JOB, site, "findme"))
    assert status(reply) is Status.CLIENT_ERROR_BAD_REQUEST             # no job named


# ---------------------------------------------------------------- Get-Jobs


@pytest_twisted.ensureDeferred
async def test_get_jobs_filters(site: IppSite) -> None:
    held = [job_value(await print_job(site, "findme", user), "job-id")
            for user in ("alice", "alice", "bob")]
    canceled = job_value(await print_job(site, "findme", "bob"), "job-id")
    await send(site, request(Operation.CANCEL_JOB, site, "findme", "bob",
                             op_attrs=op_job_id(canceled)))
    direct = job_value(await print_job(site, "mfd-1"), "job-id")
    await wait_for(site, direct, JobState.COMPLETED)

    async def get_jobs(queue: str = "findme", user: str = "alice",
                       *ops: Attribute) -> tuple[Message, list[int]]:
        reply = await send(site, request(Operation.GET_JOBS, site, queue, user,
                                         op_attrs=list(ops)))
        ids = [g.attributes["job-id"].value for g in reply.groups_of(GroupTag.JOB)
               if "job-id" in g.attributes]
        return reply, ids

    reply, ids = await get_jobs()
    assert status(reply) is Status.SUCCESSFUL_OK
    assert ids == held                                        # default: not-completed
    assert all(set(g.attributes) == {"job-id", "job-uri"} for g in reply.groups_of(GroupTag.JOB))
    which = lambda value: attr("which-jobs", ValueTag.KEYWORD, value)  # noqa: E731
    assert (await get_jobs("findme", "alice", which("completed")))[1] == [canceled]
    assert sorted((await get_jobs("findme", "alice", which("all")))[1]) == [*held, canceled]
    assert (await get_jobs("mfd-1", "alice", which("completed")))[1] == [direct]
    my_jobs = attr("my-jobs", ValueTag.BOOLEAN, True)
    assert (await get_jobs("findme", "alice", my_jobs))[1] == held[:2]
    assert (await get_jobs("findme", "bob", my_jobs, which("all")))[1] == [held[2], canceled]
    assert (await get_jobs("findme", "nobody", my_jobs))[1] == []
    assert (await get_jobs("findme", "alice", attr("limit", ValueTag.INTEGER, 2)))[1] == held[:2]
    ids_attr = attr("job-ids", ValueTag.INTEGER, held[1], canceled, direct)
    assert sorted((await get_jobs("findme", "alice", ids_attr))[1]) == [held[1], canceled]

    reply, _ = await get_jobs("findme", "alice", attr(
        "requested-attributes", ValueTag.KEYWORD, "job-name", "job-state",
        "job-originating-user-name"))
    rows = [{n: a.value for n, a in g.attributes.items()} for g in reply.groups_of(GroupTag.JOB)]
    assert rows == [{"job-name": "report.pdf", "job-state": 4, "job-originating-user-name": u}
                    for u in ("alice", "alice", "bob")]
    reply, _ = await get_jobs("findme", "alice", attr("requested-attributes", ValueTag.KEYWORD,
                                                      "job-template"))
    assert set(next(reply.groups_of(GroupTag.JOB)).attributes) >= {"copies", "sides"}

    reply, _ = await get_jobs("findme", "alice", which("pending"))
    assert status(reply) is Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED
    assert unsupported_names(reply) == {"which-jobs"}
    reply, _ = await get_jobs("findme", "alice", attr("limit", ValueTag.INTEGER, 0))
    assert status(reply) is Status.CLIENT_ERROR_BAD_REQUEST

    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "findme"))
    assert reply.get(GroupTag.PRINTER, "queued-job-count") == 3


@pytest_twisted.ensureDeferred
async def test_requests_posted_to_the_root_go_to_their_printer_uri(site: IppSite) -> None:
    """What CUPS clients pointed at a server (`lp -h site`) do."""
    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "findme"),
                       queue="")
    assert status(reply) is Status.SUCCESSFUL_OK
    assert reply.get(GroupTag.PRINTER, "printer-name") == "findme"
    reply = await send(site, request(Operation.PRINT_JOB, site, "findme"), PDF, queue="")
    job_id = job_value(reply, "job-id")
    assert job_value(reply, "job-state") == 4
    # CUPS's own job-uri form, ipp://host/jobs/<id>
    reply = await send(site, codec.request(Operation.GET_JOB_ATTRIBUTES, 3, None, user="alice",
                                           extra=[attr("job-uri", ValueTag.URI,
                                                       f"ipp://localhost/jobs/{job_id}")]),
                       queue="")
    assert status(reply) is Status.SUCCESSFUL_OK
    assert job_value(reply, "job-printer-uri") == site.uri("findme")
    for uri in ("ipp://localhost/printers/nowhere", "ipp://localhost/", "ipp://localhost/jobs/99"):
        reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site,
                                         printer_uri=uri), queue="")
        assert status(reply) is Status.CLIENT_ERROR_NOT_FOUND, uri
    reply = await send(site, codec.request(Operation.GET_PRINTER_ATTRIBUTES, 4, None),
                       queue="")
    assert status(reply) is Status.CLIENT_ERROR_BAD_REQUEST


# ---------------------------------------------------------------- bad input


async def post_raw(site: IppSite, body: bytes, queue: str = "mfd-1") -> Message:
    code, types, payload = await post(site, queue, body)
    assert code == 200 and types == [b"application/ipp"]
    return codec.decode(payload)


@pytest_twisted.ensureDeferred
async def test_malformed_and_truncated_heads_are_bad_requests(site: IppSite) -> None:
    good = codec.encode(request(Operation.PRINT_JOB, site, version=(1, 1))) + PDF
    head_length = len(codec.encode_attributes(request(Operation.PRINT_JOB, site)))
    cases = {
        "empty": b"",
        "header only": good[:8],
        "truncated head": good[: head_length - 5],
        "garbage": b"\x01\x01\x00\x02\x00\x00\x00\x09\x00garbage",
        "attribute before group": b"\x01\x01\x00\x0b\x00\x00\x00\x09\x47\x00\x01a\x00\x01b\x03",
    }
    for name, body in cases.items():
        reply = await post_raw(site, body)
        assert status(reply) is Status.CLIENT_ERROR_BAD_REQUEST, name
        if len(body) >= 8:      # what arrived of the header is echoed
            assert reply.version == (body[0], body[1]), name
            assert reply.request_id == int.from_bytes(body[4:8], "big"), name
    # request-id 0, missing or misordered charset/language, no printer-uri
    zero = request(Operation.GET_PRINTER_ATTRIBUTES, site)
    zero.request_id = 0
    assert status(await post_raw(site, codec.encode(zero))) is Status.CLIENT_ERROR_BAD_REQUEST
    swapped = request(Operation.GET_PRINTER_ATTRIBUTES, site)
    op = swapped.operation.attributes
    swapped.groups[0].attributes = {k: op[k] for k in ["attributes-natural-language",
                                                       "attributes-charset", "printer-uri"]}
    assert status(await send(site, swapped)) is Status.CLIENT_ERROR_BAD_REQUEST
    no_uri = codec.request(Operation.GET_PRINTER_ATTRIBUTES, 5, None)
    assert status(await send(site, no_uri, queue="mfd-1")) is Status.CLIENT_ERROR_BAD_REQUEST
    latin1 = request(Operation.GET_PRINTER_ATTRIBUTES, site)
    latin1.operation.attributes["attributes-charset"].values = ["iso-8859-1"]
    assert status(await send(site, latin1)) is Status.CLIENT_ERROR_CHARSET_NOT_SUPPORTED
    assert site.spool_files() == []
    assert await site.service.list_jobs(None, "all") == []
    # and the server still works
    assert status(await print_job(site)) is Status.SUCCESSFUL_OK


@pytest_twisted.ensureDeferred
async def test_versions_operations_and_queues(site: IppSite) -> None:
    for version in ((0, 0), (3, 0), (1, 7)):
        message = request(Operation.GET_PRINTER_ATTRIBUTES, site, version=version)
        reply = await post_raw(site, codec.encode(message))
        assert status(reply) is Status.SERVER_ERROR_VERSION_NOT_SUPPORTED, version
        assert reply.request_id == message.request_id
        assert reply.group(GroupTag.PRINTER) is None
    for version in ((1, 0), (1, 1), (2, 0)):
        reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site,
                                         version=version))
        assert status(reply) is Status.SUCCESSFUL_OK

    for code in (Operation.PRINT_URI, Operation.PAUSE_PRINTER, 0x4001):
        reply = await send(site, request(code, site))
        assert status(reply) is Status.SERVER_ERROR_OPERATION_NOT_SUPPORTED
    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "no-such-queue"))
    assert status(reply) is Status.CLIENT_ERROR_NOT_FOUND
    reply = await send(site, request(Operation.GET_PRINTER_ATTRIBUTES, site, "mfd-1"),
                       queue="mfd-1/jobs")
    assert status(reply) is Status.CLIENT_ERROR_NOT_FOUND


@pytest_twisted.ensureDeferred
async def test_document_over_the_cap_is_refused_and_leaves_nothing(tmp_path: Path) -> None:
    site = make_site(tmp_path, max_document=64 * KB, max_per_user=100 * KB, max_total=150 * KB)
    try:
        reply = await print_job(site, "findme", data=os.urandom(64 * KB + 1),
                                fmt="application/octet-stream")
        assert status(reply) is Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE
        assert "larger" in status_message(reply)
        assert site.spool_files() == []
        assert await site.service.list_jobs(None, "all") == []

        # per user: 60 KB + 40 KB fill alice's 100 KB ...
        for size in (60 * KB, 40 * KB):
            reply = await print_job(site, "findme", data=os.urandom(size),
                                    fmt="application/octet-stream")
            assert status(reply) is Status.SUCCESSFUL_OK
        reply = await print_job(site, "findme", data=b"x", fmt="application/octet-stream")
        assert status(reply) is Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE
        assert "alice" in status_message(reply)
        # ... and in total: bob's 50 KB fill the site's 150 KB
        reply = await print_job(site, "findme", "bob", data=os.urandom(50 * KB),
                                fmt="application/octet-stream")
        assert status(reply) is Status.SUCCESSFUL_OK
        reply = await print_job(site, "findme", "carol", data=b"x",
                                fmt="application/octet-stream")
        assert status(reply) is Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE
        assert "full" in status_message(reply)
        assert len(site.spool_files()) == 3
        # the server keeps serving
        reply = await send(site, request(Operation.GET_JOBS, site, "findme"))
        assert status(reply) is Status.SUCCESSFUL_OK
        assert len(list(reply.groups_of(GroupTag.JOB))) == 3
    finally:
        await site.close()


@pytest_twisted.ensureDeferred
async def test_unexpected_exception_is_an_internal_error_and_leaves_nothing(
    site: IppSite, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken_submit(queue_name: str, owner: str, name: str, options: Any,
                            document: Any, document_format: Any, existing_job: Any = None,
                            ) -> Job:
        document.commit()               # the document was durable ...
        raise RuntimeError("database on fire")   # ... but the job row failed

    monkeypatch.setattr(site.service, "submit", broken_submit)
    caplog.set_level(logging.ERROR, logger="appliance.protocols.ipp.server")
    reply = await print_job(site, "findme")
    assert status(reply) is Status.SERVER_ERROR_INTERNAL_ERROR
    assert "database on fire" not in status_message(reply)
    errors = [r for r in caplog.records if r.name == "appliance.protocols.ipp.server"]
    assert len(errors) == 1 and "database on fire" in (errors[0].exc_text or "")
    assert site.spool_files() == []
    monkeypatch.undo()
    assert status(await print_job(site, "findme")) is Status.SUCCESSFUL_OK


JOB_ERRORS = {
    "not-found": Status.CLIENT_ERROR_NOT_FOUND,
    "not-authorized": Status.CLIENT_ERROR_NOT_AUTHORIZED,
    "not-possible": Status.CLIENT_ERROR_NOT_POSSIBLE,
    "bad-value": Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
    "quota": Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE,
    "too-large": Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE,
    "bad-format": Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED,
    "not-accepting": Status.SERVER_ERROR_NOT_ACCEPTING_JOBS,
}


@pytest.mark.parametrize("code", sorted(JOB_ERRORS))
@pytest_twisted.ensureDeferred
async def test_job_errors_map_to_ipp_statuses(
    code: str, site: IppSite, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def refuse(*args: Any, **kwargs: Any) -> Job:
        raise JobError(code, "copies must be 1..999" if code == "bad-value" else "refused")

    monkeypatch.setattr(site.service, "submit", refuse)
    reply = await print_job(site, "mfd-1", job_attrs=[attr("copies", ValueTag.INTEGER, 3)])
    assert status(reply) is JOB_ERRORS[code]
    if code == "bad-value":
        assert unsupported_names(reply) == {"copies"}
    assert site.spool_files() == []


# ---------------------------------------------------------------- streaming


@pytest_twisted.ensureDeferred
async def test_large_document_streams_through_to_the_spool(site: IppSite) -> None:
    document = b"%!PS-Adobe-3.0\n" + os.urandom(6 * MB)
    reply = await print_job(site, "findme", data=document, fmt="application/postscript")
    assert status(reply) is Status.SUCCESSFUL_OK
    job = await site.service.job(job_value(reply, "job-id"))
    assert job is not None and job.size == len(document)
    assert job.spool_name is not None
    assert (site.spool.root / job.spool_name).read_bytes() == document


class _ChunkOnlyContent(io.BytesIO):
    """request.content that fails a test if the server reads it whole."""

    largest = 0

    def read(self, size: int | None = -1) -> bytes:
        assert size is not None and size > 0, "the server read the whole body at once"
        _ChunkOnlyContent.largest = max(_ChunkOnlyContent.largest, size)
        return super().read(size)


def in_process(resource: Resource, body: bytes | io.BytesIO,
               queue: bytes = b"mfd-1") -> DummyRequest:
    """POST `body` to an inline site's resource without a socket; it answers at once."""
    req = DummyRequest([queue])
    req.method = b"POST"
    req.isSecure = lambda: False  # type: ignore[attr-defined]
    req.content = (  # type: ignore[attr-defined]
        body if isinstance(body, io.BytesIO) else io.BytesIO(body))
    req.requestHeaders.addRawHeader(b"host", b"127.0.0.1:631")
    assert resource.render(req) is server.NOT_DONE_YET
    assert req.finished, "an inline site answers synchronously"
    return req


def printers_resource(site: IppSite) -> IppPrinterResource:
    child = site.root.children[b"printers"]
    assert isinstance(child, IppPrinterResource)
    return child


def test_body_is_read_in_chunks(inline_site: IppSite) -> None:
    site = inline_site
    document = b"%PDF-1.4\n" + os.urandom(1 * MB)
    message = request(Operation.PRINT_JOB, None, "findme")
    req = in_process(printers_resource(site),
                     _ChunkOnlyContent(codec.encode(message) + document), b"findme")
    reply = codec.decode(b"".join(req.written))
    assert status(reply) is Status.SUCCESSFUL_OK
    assert 0 < _ChunkOnlyContent.largest <= CHUNK_SIZE
    assert req.responseHeaders.getRawHeaders(b"content-type") == [b"application/ipp"]
    # the URIs handed out follow the Host header
    assert job_value(reply, "job-uri").startswith("ipp://127.0.0.1:631/printers/findme/jobs/")
    job = site.database.run_sync(lambda db: db.conn.execute(
        "SELECT size FROM jobs WHERE id = ?", (job_value(reply, "job-id"),)).fetchone())
    assert job["size"] == len(document)


@pytest.mark.parametrize("while_reading", [False, True])
@pytest_twisted.ensureDeferred
async def test_a_client_that_goes_away_gets_no_answer_and_breaks_nothing(
    while_reading: bool, site: IppSite, caplog: pytest.LogCaptureFixture,
) -> None:
    """Gone after sending the whole body: the job is still made durable (we cannot
    un-receive it, and neither does cupsd); only the answer is dropped. Gone while we
    still read the body (twisted.web closes request.content then): no job, no file.
    Neither is an error."""
    req = DummyRequest([b"findme"])
    req.method = b"POST"
    req.isSecure = lambda: False  # type: ignore[attr-defined]
    content = io.BytesIO(codec.encode(request(Operation.PRINT_JOB, site, "findme")) + PDF)
    req.content = content  # type: ignore[attr-defined]
    assert printers_resource(site).render(req) is server.NOT_DONE_YET
    if while_reading:
        content.close()
    req.processingFailed(Failure(ConnectionLost("client went away")))
    for _ in range(100):
        if await site.service.held_for("alice"):
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    await task.deferLater(reactor, 0.05, lambda: None)
    held = await site.service.held_for("alice")
    assert len(held) == (0 if while_reading else 1)
    assert site.spool_files() == [j.spool_name for j in held]
    assert req.written == [] and req.finished == 0
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


# ---------------------------------------------------------------- property test


def _seeds() -> list[bytes]:
    seeds = [p.read_bytes() for p in sorted((FIXTURES / "ipp").glob("*.bin"))]
    uri = "ipp://127.0.0.1:631/printers/mfd-1"
    small = b"%PDF-1.4\n%%EOF\n"
    for op in (Operation.GET_PRINTER_ATTRIBUTES, Operation.GET_JOBS, Operation.VALIDATE_JOB,
               Operation.CREATE_JOB):
        seeds.append(codec.encode(codec.request(op, 7, uri, user="alice")))
    seeds.append(codec.encode(codec.request(Operation.PRINT_JOB, 7, uri, user="alice")) + small)
    for op in (Operation.CANCEL_JOB, Operation.GET_JOB_ATTRIBUTES, Operation.HOLD_JOB,
               Operation.RELEASE_JOB, Operation.SEND_DOCUMENT):
        message = codec.request(op, 7, uri, user="alice", extra=[
            attr("job-id", ValueTag.INTEGER, 1), attr("last-document", ValueTag.BOOLEAN, True)])
        seeds.append(codec.encode(message) + small)
    return seeds


SEEDS = _seeds()


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["flip", "set", "delete", "insert", "truncate", "length"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del data[at: at + draw(st.integers(1, 16))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "truncate":
            del data[at:]
        elif kind == "length" and len(data) >= at + 2:
            data[at: at + 2] = draw(st.integers(0, 0xFFFF)).to_bytes(2, "big")
    return bytes(data)


VALUE_TAGS = [t for t in ValueTag if t not in (ValueTag.EXTENSION, ValueTag.END_COLLECTION,
                                               ValueTag.MEMBER_ATTR_NAME,
                                               ValueTag.BEG_COLLECTION)]
ATTRIBUTE_NAMES = [
    "printer-uri", "job-id", "job-uri", "requesting-user-name", "job-name", "document-format",
    "ipp-attribute-fidelity", "last-document", "which-jobs", "my-jobs", "limit", "job-ids",
    "requested-attributes", "compression", "job-hold-until", "copies", "sides", "number-up",
    "media", "media-col", "print-color-mode", "finishings", "print-quality", "x-unknown",
]
STRINGS = [b"", b"utf-8", b"en", b"ipp://127.0.0.1:631/printers/mfd-1", b"all", b"completed",
           b"not-completed", b"application/pdf", b"image/jpeg", b"indefinite", b"no-hold",
           b"iso_a4_210x297mm", b"alice", b"none", b"two-sided-long-edge", b"color",
           b"ipp://127.0.0.1:631/printers/mfd-1/jobs/1", b"job-template", b"\xc3\xa9t\xc3\xa9"]
INTEGERS = [0, 1, 2, 3, 4, 5, 9, 16, 999, 1000, -1, 2**31 - 1]


@st.composite
def raw_value(draw: st.DrawFn, tag: int) -> bytes:
    """Mostly a well-formed value for `tag`, sometimes arbitrary octets."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=12))
    if tag in codec.OUT_OF_BAND_TAGS:
        return b""
    if tag in (ValueTag.INTEGER, ValueTag.ENUM):
        return draw(st.sampled_from(INTEGERS)).to_bytes(4, "big", signed=True)
    if tag == ValueTag.BOOLEAN:
        return draw(st.sampled_from([b"\x00", b"\x01"]))
    if tag == ValueTag.DATE_TIME:
        return b"\x07\xea\x0b\x1a\x0a\x00\x00\x00+\x00\x00"
    if tag == ValueTag.RESOLUTION:
        return draw(st.sampled_from([b"\x00\x00\x02\x58\x00\x00\x02\x58\x03",
                                     b"\x00\x00\x01\x2c\x00\x00\x01\x2c\x03"]))
    if tag == ValueTag.RANGE_OF_INTEGER:
        return b"\x00\x00\x00\x01\x00\x00\x00\x09"
    if tag in (ValueTag.TEXT_WITH_LANGUAGE, ValueTag.NAME_WITH_LANGUAGE):
        text = draw(st.sampled_from(STRINGS))
        return b"\x00\x02en" + len(text).to_bytes(2, "big") + text
    return draw(st.sampled_from(STRINGS))


def _raw_attribute(tag: int, name: str, value: bytes) -> bytes:
    raw_name = name.encode()
    return (bytes([tag]) + len(raw_name).to_bytes(2, "big") + raw_name
            + len(value).to_bytes(2, "big") + value)


@st.composite
def structured(draw: st.DrawFn) -> bytes:
    """Well-framed requests with arbitrary attributes: most get past the decoder and the
    common checks, into the operations."""
    version = draw(st.sampled_from([(2, 0)] * 8 + [(1, 0), (1, 1), (2, 1), (0, 0), (9, 9)]))
    op = draw(st.sampled_from([*list(Operation) * 3, 0, 0x1234]))
    request_id = draw(st.sampled_from([7] * 8 + [0, -5, 2**31 - 1]))
    out = bytearray(bytes(version) + int(op).to_bytes(2, "big") +
                    request_id.to_bytes(4, "big", signed=True))
    out += b"\x01"
    if draw(st.integers(0, 9)):
        out += _raw_attribute(ValueTag.CHARSET, "attributes-charset", b"utf-8")
        out += _raw_attribute(ValueTag.NATURAL_LANGUAGE, "attributes-natural-language", b"en")
    queue = draw(st.sampled_from([b"mfd-1", b"findme"]))
    if draw(st.integers(0, 4)):
        out += _raw_attribute(ValueTag.URI, "printer-uri",
                              b"ipp://127.0.0.1:631/printers/" + queue)
    if draw(st.integers(0, 3)):
        out += _raw_attribute(ValueTag.NAME, "requesting-user-name",
                              draw(st.sampled_from([b"alice", b"bob", b""])))
    if draw(st.booleans()):
        out += _raw_attribute(ValueTag.INTEGER, "job-id",
                              draw(st.integers(-1, 30)).to_bytes(4, "big", signed=True))
    for _ in range(draw(st.integers(0, 8))):
        if draw(st.integers(0, 5)) == 0:
            out.append(draw(st.sampled_from([0x01, 0x02, 0x02, 0x04, 0x05])))
        tag = draw(st.sampled_from(VALUE_TAGS))
        name = draw(st.sampled_from(ATTRIBUTE_NAMES))
        out += _raw_attribute(tag, name, draw(raw_value(tag)))
    out += b"\x03"
    out += draw(st.binary(max_size=64))
    return bytes(out)


ALLOWED = {s for s in Status if s != Status.SERVER_ERROR_INTERNAL_ERROR}


@settings(max_examples=2000, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                 HealthCheck.data_too_large])
@given(body=st.one_of(structured(), structured(), structured(), mutated(),
                     st.binary(max_size=64)),
       target=st.sampled_from([b"mfd-1", b"findme", b"nowhere", b"/"]))
def test_random_bodies_get_ipp_answers(inline_site: IppSite, body: bytes, target: bytes,
                                       caplog: pytest.LogCaptureFixture) -> None:
    """`target` b"/" posts to the root, which routes by printer-uri."""
    site = inline_site
    events: list[dict[str, Any]] = []
    observer: Any = events.append
    globalLogPublisher.addObserver(observer)
    try:
        if target == b"/":
            req = in_process(site.root, body, b"")
        else:
            req = in_process(printers_resource(site), body, target)
    finally:
        globalLogPublisher.removeObserver(observer)
    assert req.responseCode in (None, 200)
    assert req.responseHeaders.getRawHeaders(b"content-type") == [b"application/ipp"]
    reply = codec.decode(b"".join(req.written))
    assert reply.code in ALLOWED or reply.code < 0x0100, hex(reply.code)
    event(f"status 0x{reply.code:04x} {status_message(reply)[:40]}")
    if len(body) >= 8:
        assert reply.request_id == int.from_bytes(body[4:8], "big", signed=True)
        if (body[0], body[1]) in codec.SUPPORTED_VERSIONS:
            assert reply.version == (body[0], body[1])
    text = [formatEvent(e) for e in events]
    assert not any("Unhandled error" in t for t in text), text
    assert not any(e.get("log_failure") for e in events)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


def test_truncated_bodies_leave_no_partial_documents(inline_site: IppSite) -> None:
    """After a burst of cut-off requests, every spool file belongs to a job."""
    site = inline_site
    resource = printers_resource(site)
    for body in SEEDS:
        for cut in range(0, len(body), 37):
            in_process(resource, body[:cut])
    rows = site.database.run_sync(
        lambda db: db.conn.execute("SELECT spool_name FROM jobs").fetchall())
    referenced = {r["spool_name"] for r in rows if r["spool_name"]}
    assert set(site.spool_files()) <= referenced

"""The software MFD: an IPP printer that "prints" into a folder and counts pages.

It stands in for a real multifunction device in tests and in the lab, so it
speaks only public wires: IPP (through our sans-io codec, served by
twisted.web) for printing, and a small HTTP JSON control API (`control.py`)
for the test harness to read its state and inject faults (`faults.py`).

Printing a job means: the document bytes are written, byte-identical, to the
output folder as ``{job_id:06d}-{safe job-name}``; its pages are counted with
the shared documents library; impressions = ceil(pages / number-up) * copies
are "printed" one by one (each taking the page delay), advancing the life
counters that a site would read from a real device. Jobs print one at a time
in arrival order: pending -> processing -> completed (or aborted, canceled).
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server
from twisted.web.server import Request

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.codec import (
    Attribute,
    DateTime,
    IntRange,
    Message,
    ParseError,
    Resolution,
    attr,
)
from appliance.protocols.ipp.constants import (
    IPP_MIME_TYPE,
    TERMINAL_JOB_STATES,
    GroupTag,
    JobState,
    Operation,
    PrinterState,
    Status,
    ValueTag,
)

from .faults import Fault, FaultError, make_fault
from .state import CounterStore, fsync_dir

log = Logger()

DOCUMENT_FORMATS = (
    "application/octet-stream",
    "application/pdf",
    "application/postscript",
    "application/vnd.hp-pclxl",
    "image/pwg-raster",
)
SIDES = ("one-sided", "two-sided-long-edge", "two-sided-short-edge")
NUMBER_UP = (1, 2, 4, 6, 9, 16)
MAX_COPIES = 999
MONO_MODES = frozenset({"monochrome", "bi-level", "process-monochrome"})
OPERATIONS = (
    Operation.PRINT_JOB,
    Operation.VALIDATE_JOB,
    Operation.CREATE_JOB,
    Operation.SEND_DOCUMENT,
    Operation.CANCEL_JOB,
    Operation.GET_JOB_ATTRIBUTES,
    Operation.GET_JOBS,
    Operation.GET_PRINTER_ATTRIBUTES,
)
#: Finished jobs kept for Get-Jobs and the control API; older ones are forgotten.
KEEP_FINISHED_JOBS = 1000
READ_CHUNK = 64 * 1024

#: Attributes of the printer that are job-template defaults/supported values
#: (requested-attributes group "job-template"); the rest are "printer-description".
_PRINTER_TEMPLATE = frozenset(
    f"{name}-{suffix}"
    for name in (
        "copies",
        "finishings",
        "media",
        "media-col",
        "number-up",
        "orientation-requested",
        "output-bin",
        "print-color-mode",
        "print-quality",
        "printer-resolution",
        "sides",
    )
    for suffix in ("default", "supported")
) | {"media-ready"}
#: Job attributes that are job-template ones (the rest are "job-description").
_JOB_TEMPLATE = frozenset({"copies", "number-up", "sides", "print-color-mode", "media"})

_STATE_NAMES = {
    JobState.PENDING: "pending",
    JobState.PENDING_HELD: "pending-held",
    JobState.PROCESSING: "processing",
    JobState.PROCESSING_STOPPED: "processing-stopped",
    JobState.CANCELED: "canceled",
    JobState.ABORTED: "aborted",
    JobState.COMPLETED: "completed",
}
_PRINTER_STATE_NAMES = {
    PrinterState.IDLE: "idle",
    PrinterState.PROCESSING: "processing",
    PrinterState.STOPPED: "stopped",
}


class _IppError(Exception):
    """An IPP request refused with `status` (and maybe unsupported attributes)."""

    def __init__(
        self, status: Status, text: str, unsupported: Iterable[Attribute] = ()
    ) -> None:
        super().__init__(text)
        self.status = status
        self.unsupported = list(unsupported)


def safe_name(name: str) -> str:
    """A job name fit for a file name: its last path part, in a small alphabet."""
    base = name.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._-")
    return cleaned[:80] or "untitled"


def count_document(path: Path, document_format: str | None) -> tuple[int | None, bool | None]:
    """(pages, colour) of a document, from the shared documents library.

    Imported here, not at module level: the simulator must run (counting one
    page per document) even where that library is missing.
    """
    try:
        from appliance.core.documents import count_pages
    except ImportError:
        return 1, None
    try:
        info = count_pages(path, document_format)
    except Exception:
        log.failure("cannot count the pages of {path}", path=path)
        return None, None
    return info.pages, info.colour


@dataclass
class Job:
    id: int
    name: str
    user: str
    printer_uri: str
    document_format: str = "application/octet-stream"
    copies: int = 1
    number_up: int = 1
    sides: str = "one-sided"
    color_mode: str | None = None
    state: JobState = JobState.PENDING
    reasons: list[str] = field(default_factory=lambda: ["none"])
    message: str = ""
    created: int = 0  # printer up-time, seconds
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    processing: int | None = None
    processing_at: datetime | None = None
    completed: int | None = None
    completed_at: datetime | None = None
    spool: Path | None = None
    closed: bool = False  # every document has arrived
    size: int = 0
    pages: int | None = None
    impressions: int | None = None
    impressions_completed: int = 0
    colour: bool | None = None
    file: Path | None = None

    @property
    def uri(self) -> str:
        return f"{self.printer_uri}/{self.id}"

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_JOB_STATES

    def sheets(self, impressions: int | None) -> int | None:
        """Sheets for `impressions`: two impressions share a sheet when duplex."""
        if impressions is None:
            return None
        return math.ceil(impressions / 2) if self.sides != "one-sided" else impressions

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "name": self.name,
            "user": self.user,
            "pages": self.pages,
            "copies": self.copies,
            "number_up": self.number_up,
            "sides": self.sides,
            "impressions": self.impressions,
            "impressions_completed": self.impressions_completed,
            "colour": self.colour,
            "state": _STATE_NAMES[self.state],
            "state_reasons": list(self.reasons),
            "message": self.message,
            "size": self.size,
            "file": str(self.file) if self.file is not None else None,
        }


class SimulatedMfd:
    """One simulated MFD: an IPP printer plus a control API, on two ports.

    `listen()` opens both ports; `stop()` closes them. All state changes
    happen in the reactor thread.
    """

    def __init__(
        self,
        name: str,
        output_dir: Path,
        state_dir: Path,
        *,
        colour: bool = True,
        page_delay: float = 0.0,
        reactor: Any = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self._reactor = reactor
        self.name = name
        self.output_dir = Path(output_dir)
        self.state_dir = Path(state_dir)
        self.colour = colour
        self.page_delay = page_delay
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._spool_dir = self.state_dir / "spool"
        self._spool_dir.mkdir(parents=True, exist_ok=True)
        for stale in self._spool_dir.iterdir():
            stale.unlink()
        self._store = CounterStore(self.state_dir)
        self._jobs: dict[int, Job] = {}
        self._fault = Fault()
        #: A jam shows as printer-state stopped + media-jam-error until cleared:
        #: by set_fault, or (fault option `once`) when the next job starts.
        self._jammed = False
        self._started = time.monotonic()
        self._uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"outpost-mfd:{name}")
        self._working = False
        self._worker: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None
        self._stopping = False
        self._host: str | None = None
        self._uri_host = "127.0.0.1"
        self._port_lock = DeferredLock()
        self._ipp_listener: Any = None
        self._control_listener: Any = None
        self._ipp_factory = WrappingFactory(self._site(_IppResource(self)))
        from .control import ControlResource

        self._control_factory = WrappingFactory(self._site(ControlResource(self)))
        self.ipp_port: int | None = None
        self.control_port: int | None = None

    @staticmethod
    def _site(root: resource.Resource) -> server.Site:
        site = server.Site(root)
        site.noisy = False
        site.displayTracebacks = False
        return site

    # ------------------------------------------------------------ lifecycle

    def listen(self, host: str = "127.0.0.1", ipp_port: int = 0, control_port: int = 0) -> None:
        """Open the IPP and control ports (0: any free port), synchronously."""
        self._host = host
        self._uri_host = "127.0.0.1" if host in ("", "0.0.0.0") else host
        if ":" in self._uri_host:
            self._uri_host = f"[{self._uri_host}]"
        self._control_listener = self._reactor.listenTCP(
            control_port, self._control_factory, interface=host
        )
        self.control_port = self._control_listener.getHost().port
        self.ipp_port = ipp_port
        if self._fault.mode != "offline":
            self._ipp_listener = self._reactor.listenTCP(
                ipp_port, self._ipp_factory, interface=host
            )
            self.ipp_port = self._ipp_listener.getHost().port

    @property
    def ipp_uri(self) -> str:
        return f"ipp://{self._uri_host}:{self.ipp_port}/ipp/print"

    @property
    def control_uri(self) -> str:
        return f"http://{self._uri_host}:{self.control_port}/control"

    def stop(self) -> Deferred[None]:
        """Close both ports, stop printing, save the counters."""
        self._stopping = True
        if self._sleep is not None:
            self._sleep.cancel()
        waits: list[Deferred[Any]] = []
        for listener, factory in (
            (self._ipp_listener, self._ipp_factory),
            (self._control_listener, self._control_factory),
        ):
            if listener is not None:
                waits.append(defer.maybeDeferred(listener.stopListening))
            _drop_connections(factory)
        self._ipp_listener = self._control_listener = None
        if self._worker is not None and not self._worker.called:
            waits.append(self._worker)
        self._store.save()
        done: Deferred[Any] = defer.gatherResults(waits, consumeErrors=True)
        return done.addCallback(lambda _: None)

    # ------------------------------------------------------------ faults

    @property
    def fault(self) -> Fault:
        return self._fault

    def set_fault(self, mode: str, **params: Any) -> Deferred[dict[str, Any]]:
        """Switch to fault `mode` (see `faults.py`); raise `FaultError` on bad input.

        The change of state is immediate; the Deferred fires with `status()`
        once the IPP port has been closed or reopened accordingly.
        """
        unknown = sorted(set(params) - {"after_pages", "page_delay", "once"})
        if unknown:
            raise FaultError(f"unknown parameter(s): {', '.join(unknown)}")
        return self.apply_fault(make_fault(mode, **params))

    def apply_fault(self, fault: Fault) -> Deferred[dict[str, Any]]:
        self._fault = fault
        self._jammed = False
        self._kick()
        done = self._port_lock.run(self._sync_ipp_port)
        return done.addCallback(lambda _: self.status())

    def _sync_ipp_port(self) -> Deferred[Any] | None:
        want = self._host is not None and not self._stopping and self._fault.mode != "offline"
        if want and self._ipp_listener is None:
            self._ipp_listener = self._reactor.listenTCP(
                self.ipp_port or 0, self._ipp_factory, interface=self._host
            )
            self.ipp_port = self._ipp_listener.getHost().port
        elif not want and self._ipp_listener is not None:
            listener, self._ipp_listener = self._ipp_listener, None
            _drop_connections(self._ipp_factory)
            return defer.maybeDeferred(listener.stopListening)
        return None

    # ------------------------------------------------------------ state

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._store.counters)

    @property
    def accepting(self) -> bool:
        return self._fault.mode != "reject"

    @property
    def printer_state(self) -> PrinterState:
        if self._jammed:
            return PrinterState.STOPPED
        if any(job.state == JobState.PROCESSING for job in self._jobs.values()):
            return PrinterState.PROCESSING
        return PrinterState.IDLE

    @property
    def printer_state_reasons(self) -> list[str]:
        return ["media-jam-error"] if self._jammed else ["none"]

    def jobs(self) -> list[Job]:
        return sorted(self._jobs.values(), key=lambda job: job.id)

    def job(self, job_id: int) -> Job | None:
        return self._jobs.get(job_id)

    def status(self) -> dict[str, Any]:
        """What `GET /control` answers."""
        return {
            "name": self.name,
            "ipp": self.ipp_uri,
            "control": self.control_uri,
            "fault": self._fault.to_json(),
            "counters": self.counters,
            "printer_state": _PRINTER_STATE_NAMES[self.printer_state],
            "printer_state_reasons": self.printer_state_reasons,
            "accepting_jobs": self.accepting,
            "listening": self._ipp_listener is not None,
            "colour_capable": self.colour,
            "jobs": [job.to_json() for job in self.jobs()],
        }

    def up_time(self) -> int:
        return int(time.monotonic() - self._started) + 1

    # ------------------------------------------------------------ jobs

    def create_job(self, printer_uri: str, name: str, user: str, **template: Any) -> Job:
        job = Job(
            self._store.next_job_id(),
            name,
            user,
            printer_uri,
            created=self.up_time(),
            **template,
        )
        self._jobs[job.id] = job
        self._forget_old_jobs()
        return job

    def add_document(self, job: Job, document_format: str, chunks: Iterable[bytes]) -> None:
        """Spool one document (durably) for `job`."""
        path = self._spool_dir / f"{job.id:06d}.doc"
        size = 0
        with open(path, "wb") as out:
            for chunk in chunks:
                out.write(chunk)
                size += len(chunk)
            out.flush()
            os.fsync(out.fileno())
        job.spool = path
        job.size = size
        job.document_format = document_format

    def close_job(self, job: Job) -> None:
        """Every document of `job` has arrived: it may print."""
        job.closed = True
        self._reactor.callLater(0, self._kick)

    def cancel_job(self, job: Job) -> None:
        job.state = JobState.CANCELED
        job.reasons = ["job-canceled-by-user"]
        job.message = "canceled"
        self._finish_times(job)
        if job.processing is None:
            self._discard_spool(job)
        elif self._sleep is not None:
            self._sleep.cancel()

    def _forget_old_jobs(self) -> None:
        finished = [job.id for job in self.jobs() if job.terminal]
        for job_id in finished[:-KEEP_FINISHED_JOBS]:
            del self._jobs[job_id]

    def _discard_spool(self, job: Job) -> None:
        if job.spool is not None:
            job.spool.unlink(missing_ok=True)
            job.spool = None

    def _finish_times(self, job: Job) -> None:
        job.completed = self.up_time()
        job.completed_at = datetime.now(UTC)

    def _next_job(self) -> Job | None:
        if self._jammed and self._fault.mode == "jam":
            return None  # a standing jam: the printer is stopped, jobs wait
        for job in self.jobs():
            if job.state == JobState.PENDING and job.closed:
                self._jammed = False  # a one-time jam is cleared when the next job starts
                return job
        return None

    def _kick(self) -> None:
        if self._working or self._stopping:
            return
        self._working = True
        self._worker = defer.ensureDeferred(self._work())
        self._worker.addErrback(lambda failure: log.failure("printing failed", failure))

    async def _work(self) -> None:
        try:
            while not self._stopping:
                job = self._next_job()
                if job is None:
                    return
                await self._print(job)
        finally:
            self._working = False

    async def _print(self, job: Job) -> None:
        job.state = JobState.PROCESSING
        job.reasons = ["job-printing"]
        job.processing = self.up_time()
        job.processing_at = datetime.now(UTC)
        doc_format = None if job.document_format == "application/octet-stream" else (
            job.document_format
        )
        # count_pages is pure Python and streams from disk (no subprocess), so it
        # runs here: a job without page delay then completes in this very turn
        # of the reactor, before its submitter can ask how it went.
        if job.spool is not None:
            pages, doc_colour = count_document(job.spool, doc_format)
        else:
            pages, doc_colour = 0, False
        job.pages = pages
        counted = 1 if pages is None else pages
        job.impressions = math.ceil(counted / job.number_up) * job.copies
        job.colour = self._prints_colour(job, doc_colour)
        self._publish(job)
        jam_after = self._fault.after_pages if self._fault.mode == "jam" else None
        while job.impressions_completed < job.impressions:
            if jam_after is not None and self._fault.mode == "jam" and (
                job.impressions_completed >= jam_after
            ):
                self._jam(job)
                return
            delay = self._fault.page_delay if self._fault.mode == "slow" else self.page_delay
            if delay > 0:
                self._sleep = _sleep(self._reactor, delay)
                try:
                    await self._sleep
                except defer.CancelledError:
                    pass
                finally:
                    self._sleep = None
                if job.state != JobState.PROCESSING or self._stopping:
                    self._store.save()
                    return
            job.impressions_completed += 1
            self._store.add(1, job.colour)
            if delay > 0:
                self._store.save()
        self._store.save()
        job.state = JobState.COMPLETED
        job.reasons = ["job-completed-successfully"]
        job.message = f"printed {job.impressions} impressions"
        self._finish_times(job)

    def _jam(self, job: Job) -> None:
        self._store.save()
        job.state = JobState.ABORTED
        job.reasons = ["media-jam"]
        job.message = f"media jam after {job.impressions_completed} of {job.impressions} pages"
        self._finish_times(job)
        self._jammed = True
        if self._fault.once:
            self._fault = Fault()

    def _prints_colour(self, job: Job, doc_colour: bool | None) -> bool:
        if not self.colour or job.color_mode in MONO_MODES:
            return False
        if job.color_mode == "color":
            return True
        return bool(doc_colour)

    def _publish(self, job: Job) -> None:
        """Move the spooled document to the output folder under its final name."""
        target = self.output_dir / f"{job.id:06d}-{safe_name(job.name)}"
        if job.spool is None:
            _write_file(target, b"")
        else:
            try:
                os.replace(job.spool, target)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                tmp = target.with_name(f".{target.name}.tmp")
                with open(job.spool, "rb") as src, open(tmp, "wb") as out:
                    shutil.copyfileobj(src, out)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, target)
                job.spool.unlink()
            job.spool = None
        fsync_dir(self.output_dir)
        job.file = target

    # ------------------------------------------------------------ IPP

    def handle_ipp(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        """Answer one decoded IPP request; `document` yields the data after it."""
        try:
            codec.check_version(request)
            _check_operation_attributes(request)
            handler = self._OPERATIONS.get(request.code)
            if handler is None:
                raise _IppError(
                    Status.SERVER_ERROR_OPERATION_NOT_SUPPORTED,
                    f"operation 0x{request.code:04x} is not supported",
                )
            return handler(self, request, document, base_uri)
        except ParseError as exc:
            return codec.response(request, exc.status, str(exc))
        except _IppError as exc:
            reply = codec.response(request, exc.status, str(exc))
            if exc.unsupported:
                group = reply.ensure_group(GroupTag.UNSUPPORTED)
                for attribute in exc.unsupported:
                    group.add(attribute)
            return reply

    def _op_get_printer_attributes(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        group = reply.ensure_group(GroupTag.PRINTER)
        wanted = _requested(request)
        for attribute in self._printer_attributes(base_uri):
            if _selected(attribute.name, wanted, _PRINTER_TEMPLATE, "printer-description"):
                group.add(attribute)
        return reply

    def _op_validate_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        _document_format(request)
        _template, ignored = _job_template(request)
        return _ok(request, ignored)

    def _op_print_job(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        doc_format = _document_format(request)
        template, ignored = _job_template(request)
        job = self.create_job(base_uri, _job_name(request), _user(request), **template)
        self.add_document(job, doc_format, document)
        self.close_job(job)
        return self._job_created(request, job, ignored)

    def _op_create_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        template, ignored = _job_template(request)
        job = self.create_job(base_uri, _job_name(request), _user(request), **template)
        return self._job_created(request, job, ignored)

    def _op_send_document(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        last = request.get(GroupTag.OPERATION, "last-document")
        if not isinstance(last, bool):
            raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "last-document is required")
        if job.terminal or job.closed:
            raise _IppError(Status.CLIENT_ERROR_NOT_POSSIBLE, "the job takes no more documents")
        doc_format = _document_format(request)
        first = next(document, b"")
        if first or not last:
            if job.spool is not None:
                raise _IppError(
                    Status.SERVER_ERROR_MULTIPLE_DOCUMENT_JOBS_NOT_SUPPORTED,
                    "one document per job",
                )
            self.add_document(job, doc_format, _chain(first, document))
        if last:
            self.close_job(job)
        return self._job_created(request, job, [])

    def _op_cancel_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        if job.terminal:
            raise _IppError(
                Status.CLIENT_ERROR_NOT_POSSIBLE,
                f"job {job.id} is already {_STATE_NAMES[job.state]}",
            )
        self.cancel_job(job)
        return codec.response(request, Status.SUCCESSFUL_OK)

    def _op_get_job_attributes(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        self._add_job_group(reply, job, _requested(request))
        return reply

    def _op_get_jobs(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        _require(request, "printer-uri")
        which = request.get(GroupTag.OPERATION, "which-jobs") or "not-completed"
        if which == "completed":
            jobs = [job for job in reversed(self.jobs()) if job.terminal]
        elif which == "not-completed":
            jobs = [job for job in self.jobs() if not job.terminal]
        elif which == "all":
            jobs = self.jobs()
        else:
            raise _IppError(
                Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                f"which-jobs {which} is not supported",
                [attr("which-jobs", ValueTag.KEYWORD, which)],
            )
        if request.get(GroupTag.OPERATION, "my-jobs") is True:
            user = _user(request)
            jobs = [job for job in jobs if job.user == user]
        limit = request.get(GroupTag.OPERATION, "limit")
        if isinstance(limit, int) and limit > 0:
            jobs = jobs[:limit]
        wanted = _requested(request) or {"job-id", "job-uri"}
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        for job in jobs:
            self._add_job_group(reply, job, wanted, new_group=True)
        return reply

    _OPERATIONS: dict[int, Callable[[SimulatedMfd, Message, Iterator[bytes], str], Message]] = {
        Operation.GET_PRINTER_ATTRIBUTES: _op_get_printer_attributes,
        Operation.VALIDATE_JOB: _op_validate_job,
        Operation.PRINT_JOB: _op_print_job,
        Operation.CREATE_JOB: _op_create_job,
        Operation.SEND_DOCUMENT: _op_send_document,
        Operation.CANCEL_JOB: _op_cancel_job,
        Operation.GET_JOB_ATTRIBUTES: _op_get_job_attributes,
        Operation.GET_JOBS: _op_get_jobs,
    }

    def _check_accepting(self) -> None:
        if not self.accepting:
            raise _IppError(
                Status.SERVER_ERROR_NOT_ACCEPTING_JOBS, "the printer is not accepting jobs"
            )

    def _target_job(self, request: Message) -> Job:
        job_uri = request.get(GroupTag.OPERATION, "job-uri")
        job_id = request.get(GroupTag.OPERATION, "job-id")
        if isinstance(job_uri, str):
            tail = job_uri.rstrip("/").rsplit("/", 1)[-1]
            job_id = int(tail) if tail.isdigit() else None
            if job_id is None:
                raise _IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job at {job_uri}")
        elif request.get(GroupTag.OPERATION, "printer-uri") is None or not isinstance(
            job_id, int
        ):
            raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "job-uri or printer-uri and job-id")
        job = self._jobs.get(job_id)
        if job is None:
            raise _IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job {job_id}")
        return job

    def _job_created(self, request: Message, job: Job, ignored: list[Attribute]) -> Message:
        reply = _ok(request, ignored)
        self._add_job_group(
            reply,
            job,
            {"job-id", "job-uri", "job-state", "job-state-reasons", "job-state-message"},
        )
        return reply

    def _add_job_group(
        self, reply: Message, job: Job, wanted: set[str] | None, *, new_group: bool = False
    ) -> None:
        group = codec.AttributeGroup(GroupTag.JOB)
        if new_group or reply.group(GroupTag.JOB) is None:
            reply.groups.append(group)
        else:
            group = reply.ensure_group(GroupTag.JOB)
        for attribute in self._job_attributes(job):
            if _selected(attribute.name, wanted, _JOB_TEMPLATE, "job-description"):
                group.add(attribute)

    def _job_attributes(self, job: Job) -> list[Attribute]:
        def integer(name: str, value: int | None) -> Attribute:
            if value is None:
                return attr(name, ValueTag.NO_VALUE, None)
            return attr(name, ValueTag.INTEGER, value)

        def date(name: str, value: datetime | None) -> Attribute:
            if value is None:
                return attr(name, ValueTag.NO_VALUE, None)
            return attr(name, ValueTag.DATE_TIME, DateTime.from_datetime(value))

        intervening = sum(
            1
            for other in self._jobs.values()
            if other.id < job.id and not other.terminal
        )
        attributes = [
            attr("job-id", ValueTag.INTEGER, job.id),
            attr("job-uri", ValueTag.URI, job.uri),
            attr("job-printer-uri", ValueTag.URI, job.printer_uri),
            attr("job-name", ValueTag.NAME, job.name),
            attr("job-originating-user-name", ValueTag.NAME, job.user),
            attr("job-state", ValueTag.ENUM, int(job.state)),
            attr("job-state-reasons", ValueTag.KEYWORD, *job.reasons),
            attr("job-printer-up-time", ValueTag.INTEGER, self.up_time()),
            attr("time-at-creation", ValueTag.INTEGER, job.created),
            integer("time-at-processing", job.processing),
            integer("time-at-completed", job.completed),
            date("date-time-at-creation", job.created_at),
            date("date-time-at-processing", job.processing_at),
            date("date-time-at-completed", job.completed_at),
            attr("number-of-documents", ValueTag.INTEGER, 1 if job.spool or job.file else 0),
            attr("number-of-intervening-jobs", ValueTag.INTEGER, intervening),
            attr("document-format", ValueTag.MIME_MEDIA_TYPE, job.document_format),
            integer("job-k-octets", math.ceil(job.size / 1024)),
            integer("job-impressions", job.impressions),
            attr("job-impressions-completed", ValueTag.INTEGER, job.impressions_completed),
            integer("job-media-sheets", job.sheets(job.impressions)),
            attr(
                "job-media-sheets-completed",
                ValueTag.INTEGER,
                job.sheets(job.impressions_completed) or 0,
            ),
            attr("copies", ValueTag.INTEGER, job.copies),
            attr("number-up", ValueTag.INTEGER, job.number_up),
            attr("sides", ValueTag.KEYWORD, job.sides),
        ]
        if job.message:
            attributes.append(attr("job-state-message", ValueTag.TEXT, job.message))
        if job.color_mode is not None:
            attributes.append(attr("print-color-mode", ValueTag.KEYWORD, job.color_mode))
        return attributes

    def _printer_attributes(self, base_uri: str) -> list[Attribute]:
        colour_modes = ["auto", "monochrome", "color"] if self.colour else ["monochrome"]
        more_info = "http://" + base_uri.split("://", 1)[-1].split("/", 1)[0] + "/"
        a4 = {
            "media-size": attr(
                "media-size",
                ValueTag.BEG_COLLECTION,
                {
                    "x-dimension": attr("x-dimension", ValueTag.INTEGER, 21000),
                    "y-dimension": attr("y-dimension", ValueTag.INTEGER, 29700),
                },
            ),
        }
        if self.colour:
            markers = ["black", "cyan", "magenta", "yellow"]
            marker_colours = ["#000000", "#00FFFF", "#FF00FF", "#FFFF00"]
        else:
            markers, marker_colours = ["black"], ["#000000"]
        return [
            attr("printer-uri-supported", ValueTag.URI, base_uri),
            attr("uri-security-supported", ValueTag.KEYWORD, "none"),
            attr("uri-authentication-supported", ValueTag.KEYWORD, "requesting-user-name"),
            attr("printer-name", ValueTag.NAME, self.name[:127]),
            attr("printer-info", ValueTag.TEXT, f"Outpost simulated MFD {self.name}"[:127]),
            attr("printer-location", ValueTag.TEXT, "Outpost lab"),
            attr("printer-make-and-model", ValueTag.TEXT, "Outpost Simulated MFD"),
            attr("printer-more-info", ValueTag.URI, more_info),
            attr(
                "printer-device-id",
                ValueTag.TEXT,
                "MFG:Outpost;MDL:Simulated MFD;CMD:PDF,PS,PCLXL,PWGRaster;",
            ),
            attr("printer-uuid", ValueTag.URI, self._uuid.urn),
            attr("printer-state", ValueTag.ENUM, int(self.printer_state)),
            attr("printer-state-reasons", ValueTag.KEYWORD, *self.printer_state_reasons),
            attr("printer-state-message", ValueTag.TEXT, _PRINTER_STATE_NAMES[self.printer_state]),
            attr("printer-is-accepting-jobs", ValueTag.BOOLEAN, self.accepting),
            attr(
                "queued-job-count",
                ValueTag.INTEGER,
                sum(1 for job in self._jobs.values() if not job.terminal),
            ),
            attr("printer-up-time", ValueTag.INTEGER, self.up_time()),
            attr("printer-current-time", ValueTag.DATE_TIME, DateTime.from_datetime(
                datetime.now(UTC))),
            attr("ipp-versions-supported", ValueTag.KEYWORD, "1.0", "1.1", "2.0"),
            attr("operations-supported", ValueTag.ENUM, *(int(op) for op in OPERATIONS)),
            attr("charset-configured", ValueTag.CHARSET, "utf-8"),
            attr("charset-supported", ValueTag.CHARSET, "utf-8", "us-ascii"),
            attr("natural-language-configured", ValueTag.NATURAL_LANGUAGE, "en"),
            attr("generated-natural-language-supported", ValueTag.NATURAL_LANGUAGE, "en"),
            attr("document-format-default", ValueTag.MIME_MEDIA_TYPE, "application/octet-stream"),
            attr("document-format-supported", ValueTag.MIME_MEDIA_TYPE, *DOCUMENT_FORMATS),
            attr("pdl-override-supported", ValueTag.KEYWORD, "attempted"),
            attr("compression-supported", ValueTag.KEYWORD, "none"),
            attr("multiple-document-jobs-supported", ValueTag.BOOLEAN, False),
            attr("multiple-operation-time-out", ValueTag.INTEGER, 60),
            attr("color-supported", ValueTag.BOOLEAN, self.colour),
            attr("pages-per-minute", ValueTag.INTEGER, 30),
            *([attr("pages-per-minute-color", ValueTag.INTEGER, 30)] if self.colour else []),
            attr("printer-impressions-completed", ValueTag.INTEGER, self._store.counters["total"]),
            attr("copies-default", ValueTag.INTEGER, 1),
            attr("copies-supported", ValueTag.RANGE_OF_INTEGER, IntRange(1, MAX_COPIES)),
            attr("sides-default", ValueTag.KEYWORD, "one-sided"),
            attr("sides-supported", ValueTag.KEYWORD, *SIDES),
            attr("number-up-default", ValueTag.INTEGER, 1),
            attr("number-up-supported", ValueTag.INTEGER, *NUMBER_UP),
            attr("print-color-mode-default", ValueTag.KEYWORD, colour_modes[0]),
            attr("print-color-mode-supported", ValueTag.KEYWORD, *colour_modes),
            attr("finishings-default", ValueTag.ENUM, 3),
            attr("finishings-supported", ValueTag.ENUM, 3),
            attr("orientation-requested-default", ValueTag.ENUM, 3),
            attr("orientation-requested-supported", ValueTag.ENUM, 3, 4, 5, 6),
            attr("output-bin-default", ValueTag.KEYWORD, "face-down"),
            attr("output-bin-supported", ValueTag.KEYWORD, "face-down"),
            attr("print-quality-default", ValueTag.ENUM, 4),
            attr("print-quality-supported", ValueTag.ENUM, 3, 4, 5),
            attr("printer-resolution-default", ValueTag.RESOLUTION, Resolution(600, 600, 3)),
            attr("printer-resolution-supported", ValueTag.RESOLUTION, Resolution(600, 600, 3)),
            attr("media-default", ValueTag.KEYWORD, "iso_a4_210x297mm"),
            attr("media-supported", ValueTag.KEYWORD, "iso_a4_210x297mm", "na_letter_8.5x11in"),
            attr("media-ready", ValueTag.KEYWORD, "iso_a4_210x297mm"),
            attr("media-col-default", ValueTag.BEG_COLLECTION, a4),
            attr("marker-names", ValueTag.NAME, *markers),
            attr("marker-colors", ValueTag.NAME, *marker_colours),
            attr("marker-types", ValueTag.KEYWORD, *(["toner"] * len(markers))),
            attr("marker-levels", ValueTag.INTEGER, *([80] * len(markers))),
            attr("marker-low-levels", ValueTag.INTEGER, *([10] * len(markers))),
            attr("marker-high-levels", ValueTag.INTEGER, *([100] * len(markers))),
        ]


# ---------------------------------------------------------------- helpers


def _sleep(reactor: Any, seconds: float) -> Deferred[None]:
    """A cancellable pause (deferLater's Deferred cancels its timer)."""
    from twisted.internet.task import deferLater

    return deferLater(reactor, seconds, lambda: None)


def _drop_connections(factory: WrappingFactory) -> None:
    for protocol in list(factory.protocols):
        transport = protocol.transport
        if transport is not None:
            transport.abortConnection()


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)


def _check_operation_attributes(request: Message) -> None:
    """RFC 8011 4.1: a sane request-id, and charset then language, first."""
    if request.request_id <= 0:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "request-id must be 1 or more")
    if not request.groups or request.groups[0].tag != GroupTag.OPERATION:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "no operation attributes")
    names = list(request.groups[0].attributes)
    if names[:2] != ["attributes-charset", "attributes-natural-language"]:
        raise _IppError(
            Status.CLIENT_ERROR_BAD_REQUEST,
            "attributes-charset and attributes-natural-language must come first",
        )
    charset = request.get(GroupTag.OPERATION, "attributes-charset")
    if not isinstance(charset, str) or charset.lower() not in ("utf-8", "us-ascii"):
        raise _IppError(
            Status.CLIENT_ERROR_CHARSET_NOT_SUPPORTED,
            f"charset {charset!r} is not supported",
            [attr("attributes-charset", ValueTag.CHARSET, str(charset))],
        )


def _require(request: Message, name: str) -> None:
    if request.get(GroupTag.OPERATION, name) is None:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, f"{name} is required")


def _requested(request: Message) -> set[str] | None:
    group = request.group(GroupTag.OPERATION)
    found = group.get("requested-attributes") if group is not None else None
    if found is None:
        return None
    return {value for value in found.values if isinstance(value, str)}


def _selected(name: str, wanted: set[str] | None, template: frozenset[str], rest: str) -> bool:
    if wanted is None or "all" in wanted or name in wanted:
        return True
    if name in template:
        return "job-template" in wanted
    return rest in wanted


def _ok(request: Message, ignored: list[Attribute]) -> Message:
    if not ignored:
        return codec.response(request, Status.SUCCESSFUL_OK)
    reply = codec.response(
        request,
        Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES,
        "some attributes were ignored",
    )
    group = reply.ensure_group(GroupTag.UNSUPPORTED)
    for attribute in ignored:
        group.add(attribute)
    return reply


def _user(request: Message) -> str:
    user = request.get(GroupTag.OPERATION, "requesting-user-name")
    return user if isinstance(user, str) and user else "anonymous"


def _job_name(request: Message) -> str:
    for name in ("job-name", "document-name"):
        value = request.get(GroupTag.OPERATION, name)
        if isinstance(value, str) and value:
            return value
    return "untitled"


def _document_format(request: Message) -> str:
    compression = request.get(GroupTag.OPERATION, "compression")
    if compression is not None and compression != "none":
        raise _IppError(
            Status.CLIENT_ERROR_COMPRESSION_NOT_SUPPORTED,
            f"compression {compression} is not supported",
            [attr("compression", ValueTag.KEYWORD, str(compression))],
        )
    doc_format = request.get(GroupTag.OPERATION, "document-format") or "application/octet-stream"
    if doc_format not in DOCUMENT_FORMATS:
        raise _IppError(
            Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED,
            f"document-format {doc_format} is not supported",
            [attr("document-format", ValueTag.MIME_MEDIA_TYPE, str(doc_format))],
        )
    return str(doc_format)


def _job_template(request: Message) -> tuple[dict[str, Any], list[Attribute]]:
    """The job-template values we act on, and the attributes we had to ignore.

    With ipp-attribute-fidelity true an unsupported value refuses the job,
    as RFC 8011 says; otherwise it is ignored and the default used.
    """
    group = request.group(GroupTag.JOB)
    values: dict[str, Any] = {}
    ignored: list[Attribute] = []

    def take(name: str, key: str, ok: Any) -> None:
        found = group.get(name) if group is not None else None
        if found is None:
            return
        if len(found.values) == 1 and ok(found.value):
            values[key] = found.value
        else:
            ignored.append(found)

    take("copies", "copies", lambda v: isinstance(v, int) and 1 <= v <= MAX_COPIES)
    take("number-up", "number_up", lambda v: v in NUMBER_UP)
    take("sides", "sides", lambda v: v in SIDES)
    take(
        "print-color-mode",
        "color_mode",
        lambda v: isinstance(v, str) and v in {"auto", "auto-monochrome", "color"} | MONO_MODES,
    )
    if ignored and request.get(GroupTag.OPERATION, "ipp-attribute-fidelity") is True:
        raise _IppError(
            Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
            "unsupported job attributes",
            ignored,
        )
    return values, ignored


# ---------------------------------------------------------------- twisted.web


class _IppResource(resource.Resource):
    """POST application/ipp at any path: the thin adapter around `handle_ipp`."""

    isLeaf = True

    def __init__(self, mfd: SimulatedMfd) -> None:
        super().__init__()
        self._mfd = mfd

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"Outpost simulated MFD {self._mfd.name}: IPP at {self._mfd.ipp_uri}\n".encode()

    def render_POST(self, request: Request) -> bytes:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != IPP_MIME_TYPE.encode():
            request.setResponseCode(415)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"POST application/ipp here\n"
        body = request.content
        assert body is not None
        body.seek(0)
        prefix = b""
        decoder = codec.Decoder()
        head: Message | None = None
        leftover: list[bytes] = []
        try:
            while head is None:
                chunk = body.read(READ_CHUNK)
                if len(prefix) < 8:
                    prefix += chunk[:8]
                if not chunk:
                    decoder.end()
                for event in decoder.feed(chunk):
                    if isinstance(event, codec.MessageHead):
                        head = event.message
                    else:
                        leftover.append(event.data)
        except ParseError as exc:
            reply = _reply_to_garbage(prefix, exc)
        else:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if not host:
                host = f"{self._mfd._uri_host}:{self._mfd.ipp_port}"
            path = request.path.decode("latin-1") or "/ipp/print"
            base_uri = f"ipp://{host}{path.rstrip('/')}"
            reply = self._mfd.handle_ipp(head, _chain(b"".join(leftover), _read(body)), base_uri)
        request.setHeader(b"content-type", IPP_MIME_TYPE.encode())
        return codec.encode(reply)


def _read(body: Any) -> Iterator[bytes]:
    while True:
        chunk = body.read(READ_CHUNK)
        if not chunk:
            return
        yield chunk


def _reply_to_garbage(prefix: bytes, exc: ParseError) -> Message:
    """Answer a request we could not decode, echoing what we could read of it."""
    version = (prefix[0], prefix[1]) if len(prefix) >= 2 else (1, 1)
    request_id = int.from_bytes(prefix[4:8], "big", signed=True) if len(prefix) >= 8 else 0
    return codec.response(Message(version, 0, request_id), exc.status, str(exc))

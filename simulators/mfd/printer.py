"""The software MFD: an IPP printer that "prints" into a folder and counts pages.

It stands in for a real multifunction device in tests and in the lab, so it
speaks only public wires: IPP (`ipp.py`, on our sans-io codec, served by
twisted.web) for printing, and a small HTTP JSON control API (`control.py`)
for the test harness to read its state and inject faults (`faults.py`).
This module is the device itself: its jobs, its counters (`state.py`), its
ports and its faults.

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
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.defer import Deferred, DeferredLock
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server

from appliance.protocols.ipp.constants import (
    TERMINAL_JOB_STATES,
    JobState,
    PrinterState,
)

from .faults import Fault, FaultError, make_fault
from .ipp import MONO_MODES, PRINTER_STATE_NAMES, STATE_NAMES, IppResource
from .state import CounterStore, fsync_dir

log = Logger()

#: Finished jobs kept for Get-Jobs and the control API; older ones are forgotten.
KEEP_FINISHED_JOBS = 1000
#: A job made by Create-Job whose last document has not come after this many
#: seconds is aborted (what multiple-operation-time-out promises).
MULTIPLE_OPERATION_TIME_OUT = 60


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
            "state": STATE_NAMES[self.state],
            "state_reasons": list(self.reasons),
            "message": self.message,
            "size": self.size,
            "file": str(self.file) if self.file is not None else None,
            # When the printer began receiving the job: release-latency benchmarks use it.
            "received_at": self.created_at.isoformat(),
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
        snmp_community: str | None = None,
        snmp_v3: dict[str, str] | None = None,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        if not 0 <= page_delay < float("inf"):
            raise ValueError(f"page_delay must be 0 or more seconds, not {page_delay!r}")
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
        self.uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"outpost-mfd:{name}")
        self._working = False
        self._worker: Deferred[None] | None = None
        self._sleep: Deferred[None] | None = None
        self._incoming: dict[int, Any] = {}  # job id -> time-out of a Create-Job job
        self._stopping = False
        self._host: str | None = None
        self._uri_host = "127.0.0.1"
        self._port_lock = DeferredLock()
        self._ipp_listener: Any = None
        self._control_listener: Any = None
        self._ipp_factory = WrappingFactory(self._site(IppResource(self)))
        from .control import ControlResource

        self._control_factory = WrappingFactory(self._site(ControlResource(self)))
        self.ipp_port: int | None = None
        self.control_port: int | None = None
        #: SNMP agent (`snmp.py`), made by listen(snmp_port=...); None: no SNMP.
        self.snmp_community = snmp_community
        self.snmp_v3 = snmp_v3
        self.snmp_agent: Any = None
        self.snmp_port: int | None = None
        #: LPD endpoint (`lpd.py`), opened by listen(lpd_port=...); None: no LPD.
        self._lpd_listener: Any = None
        self._lpd_factory: WrappingFactory | None = None
        self.lpd_port: int | None = None

    @staticmethod
    def _site(root: resource.Resource) -> server.Site:
        site = server.Site(root)
        site.noisy = False
        site.displayTracebacks = False
        return site

    # ------------------------------------------------------------ lifecycle

    def listen(self, host: str = "127.0.0.1", ipp_port: int = 0, control_port: int = 0,
               snmp_port: int | None = None, lpd_port: int | None = None) -> None:
        """Open the IPP and control ports (0: any free port), synchronously.

        With `snmp_port` (0: any free UDP port) the SNMP agent answers there too;
        with `lpd_port` (0: any free port) the LPD endpoint (`lpd.py`) listens.
        """
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
        if snmp_port is not None:
            from .snmp import LAB_COMMUNITY, MfdSnmpAgent

            self.snmp_agent = MfdSnmpAgent(self, community=self.snmp_community or LAB_COMMUNITY,
                                           v3=self.snmp_v3)
            self.snmp_port = self.snmp_agent.listen(host or "0.0.0.0", snmp_port)
        if lpd_port is not None:
            from .lpd import MfdLpdFactory, clean_spool

            clean_spool(self.state_dir)
            self._lpd_factory = WrappingFactory(MfdLpdFactory(self))
            self._lpd_listener = self._reactor.listenTCP(lpd_port, self._lpd_factory,
                                                         interface=host)
            self.lpd_port = self._lpd_listener.getHost().port

    @property
    def ipp_uri(self) -> str:
        return f"ipp://{self._uri_host}:{self.ipp_port}/ipp/print"

    @property
    def ipp_authority(self) -> str:
        """host:port of the IPP port, as URIs name it."""
        return f"{self._uri_host}:{self.ipp_port}"

    @property
    def lpd_uri(self) -> str | None:
        """`lpd://host:port/<name>` when the LPD endpoint listens (it takes any queue name)."""
        if self.lpd_port is None:
            return None
        return f"lpd://{self._uri_host}:{self.lpd_port}/{self.name}"

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
        if self._lpd_listener is not None:
            waits.append(defer.maybeDeferred(self._lpd_listener.stopListening))
            self._lpd_listener = None
        if self._lpd_factory is not None:
            _drop_connections(self._lpd_factory)
        if self.snmp_agent is not None:
            self.snmp_agent.close()
        for timeout in self._incoming.values():
            if timeout.active():
                timeout.cancel()
        self._incoming.clear()
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

    def queued_jobs(self) -> list[Job]:
        """Jobs not yet finished (pending or processing), oldest first."""
        return sorted((job for job in self._jobs.values() if not job.terminal),
                      key=lambda job: job.id)

    def status(self) -> dict[str, Any]:
        """What `GET /control` answers."""
        return {
            "name": self.name,
            "ipp": self.ipp_uri,
            "control": self.control_uri,
            "fault": self._fault.to_json(),
            "counters": self.counters,
            "printer_state": PRINTER_STATE_NAMES[self.printer_state],
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

    def expect_documents(self, job: Job) -> None:
        """`job` came from Create-Job: abort it if its documents do not come in time."""
        job.reasons = ["job-incoming"]
        self._incoming[job.id] = self._reactor.callLater(
            MULTIPLE_OPERATION_TIME_OUT, self._documents_timed_out, job
        )

    def _documents_timed_out(self, job: Job) -> None:
        self._incoming.pop(job.id, None)
        if job.closed or job.terminal:
            return
        job.state = JobState.ABORTED
        job.reasons = ["aborted-by-system"]
        job.message = "no last document within multiple-operation-time-out"
        self._finish_times(job)
        self._discard_spool(job)

    def close_job(self, job: Job) -> None:
        """Every document of `job` has arrived: it may print."""
        job.closed = True
        job.reasons = ["none"]
        timeout = self._incoming.pop(job.id, None)
        if timeout is not None and timeout.active():
            timeout.cancel()
        self._reactor.callLater(0, self._kick)

    def cancel_job(self, job: Job) -> None:
        timeout = self._incoming.pop(job.id, None)
        if timeout is not None and timeout.active():
            timeout.cancel()
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
                try:
                    await self._print(job)
                except Exception:
                    # a full disk, say: the job fails, the printer goes on
                    log.failure("printing job {job_id} failed", job_id=job.id)
                    self._store.save()
                    job.state = JobState.ABORTED
                    job.reasons = ["aborted-by-system"]
                    job.message = "the printer failed"
                    self._finish_times(job)
                    self._discard_spool(job)
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


def _write_file(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(tmp, path)



"""The site's LPD server (RFC 1179): a thin Twisted adapter over `PrintService`.

Workstations print to `lpd://site:8515/findme` (Find-Me: held for the owner)
or `lpd://site:8515/<device>` (a device's direct queue), exactly like the IPP
queues of the same names. This module only translates: bytes become events
in the sans-io `parser`, events become `PrintService` calls, refusals become
the negative acknowledgement. It knows no SQL and counts no pages.

* **Owner and name.** A job belongs to the control file's P line (a control
  file without one is refused); its name is J (for one of several data files,
  that file's N), as RFC 1179 has no other place for them. LPD carries no
  authentication: like IPP's requesting-user-name, P is what the workstation
  says.
* **One job per data file.** A control file may print several data files;
  each becomes a job of its own (a file named by k print lines is printed
  with k copies). Nothing is concatenated: two documents of one format are
  not one document of that format (two PDFs are not a PDF).
* **Only durable jobs are acknowledged.** Control and data files may come in
  either order. Data files are streamed into the spool's `IncomingDocument`s
  as they arrive; when the last file the job needs has arrived (the control
  file and every data file it prints), each document is submitted
  (`PrintService.submit`: fsync'd, page-counted, its row committed) and only
  then is the acknowledgement of that last file sent.
* **No partial job.** A refused command, a malformed or oversized file, an
  unknown queue, a connection that ends before the job is whole: the
  negative acknowledgement (octet 1, when the connection is still open), the
  connection is closed, and every document of the unfinished job is
  discarded; jobs already submitted for it are cancelled.

Queue state (03, 04) answers in text, one line per job not yet finished, like
BSD lpq; remove jobs (05) cancels the agent's jobs through
`PrintService.cancel` (the agent is as unauthenticated as P). The port is
`[lpd] port` (default 8515: 515 needs CAP_NET_BIND_SERVICE).
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Any

from twisted.internet import defer, interfaces, protocol
from twisted.protocols.policies import TimeoutMixin
from zope.interface import implementer

from appliance.core.jobs import JobError, PrintService
from appliance.core.model import Job, JobOptions, Queue
from appliance.storage.disk import DiskFull
from appliance.storage.spool import IncomingDocument, SpoolFull

from . import parser as wire
from .parser import ACK, NACK, ControlFile, DataChunk, DataFileHeader, Event, QueueState, RemoveJobs
from .receipt import Receipt

log = logging.getLogger(__name__)

#: Whose a data file is while it arrives before its control file (only the
#: spool's caps see this name; the job gets the control file's P).
PROVISIONAL_OWNER = "(lpd)"
#: Stop reading from a client while this much received data waits to be written.
HIGH_WATER = 4 * 1024 * 1024
LOW_WATER = 1024 * 1024
#: Names (J, N) are cut to this many octets, as IPP's job-name.
MAX_NAME_OCTETS = 255


class Refused(Exception):
    """A request answered with the negative acknowledgement and a closed connection."""


class _Receipt(Receipt[IncomingDocument]):
    """The job a receive-job command is building, for one of the site's queues."""

    def __init__(self, queue: Queue) -> None:
        super().__init__()
        self.queue = queue

    @property
    def received(self) -> int:
        return sum(d.size for d in self.files.values())


@implementer(interfaces.IHalfCloseableProtocol)
class LpdServerProtocol(protocol.Protocol, TimeoutMixin):
    """One LPD connection. Events are handled one at a time, in order, in `_drain`."""

    factory: LpdServerFactory

    def __init__(self) -> None:
        self.parser = wire.Parser()
        self._events: deque[Event] = deque()
        self._pending = 0            # octets of DataChunks waiting in _events
        self._paused = False
        self._busy = False
        self._open = True
        self._closing = False
        self._receipt: _Receipt | None = None
        self.submitted: list[Job] = []
        self.peer = "?"

    @property
    def _transport(self) -> Any:
        return self.transport

    @property
    def service(self) -> PrintService:
        return self.factory.service

    # ------------------------------------------------------------ Twisted

    def connectionMade(self) -> None:
        if self.factory.reactor is not None:
            self.callLater = self.factory.reactor.callLater  # type: ignore[method-assign]
        self.parser = wire.Parser(max_control=self.factory.max_control)
        peer = self._transport.getPeer()
        self.peer = f"{getattr(peer, 'host', '?')}:{getattr(peer, 'port', '?')}"
        self.setTimeout(self.factory.idle_timeout)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        if not self._closing:
            self._enqueue(self.parser.feed(data))

    def readConnectionLost(self) -> None:
        """The client half-closed: what it sent is complete; we may still answer."""
        self._enqueue(self.parser.end())

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Any = None) -> None:
        self.setTimeout(None)
        self._open = False
        self._enqueue(self.parser.end())
        if not self._busy and self._receipt is not None:
            self._discard()

    def timeoutConnection(self) -> None:
        log.info("lpd %s: idle for %ss; closing", self.peer, self.factory.idle_timeout)
        self._closing = True
        self._discard()
        self._transport.abortConnection()

    # ------------------------------------------------------------ the event loop

    def _enqueue(self, events: list[Event]) -> None:
        if not events:
            return
        self._events.extend(events)
        self._pending += sum(len(e.data) for e in events if isinstance(e, DataChunk))
        if self._pending > HIGH_WATER and not self._paused and self._open:
            self._paused = True
            self._transport.pauseProducing()
        if not self._busy:
            self._busy = True
            d = defer.ensureDeferred(self._drain())
            d.addErrback(self._crashed)

    async def _drain(self) -> None:
        try:
            while self._events:
                event = self._events.popleft()
                if isinstance(event, DataChunk):
                    self._pending -= len(event.data)
                    if self._paused and self._pending < LOW_WATER and self._open:
                        self._paused = False
                        self._transport.resumeProducing()
                if self._closing:
                    continue
                try:
                    await self._handle(event)
                except Refused as exc:
                    self._refuse(str(exc))
                except JobError as exc:
                    self._refuse(f"{exc.code}: {exc}")
                except SpoolFull as exc:
                    self._refuse(f"spool full ({exc.scope}): {exc}")
                except DiskFull as exc:   # nothing of the job is kept; a client retries
                    self._refuse(f"disk full: {exc}")
        finally:
            self._busy = False
            if not self._open and self._receipt is not None:
                self._discard()

    def _crashed(self, failure: Any) -> None:
        log.error("lpd %s: internal error: %s", self.peer, failure.getTraceback())
        self._refuse("internal error")

    def _write(self, data: bytes) -> None:
        if self._open:
            self._transport.write(data)

    def _ack(self) -> None:
        self._write(ACK)

    def _finish(self, text: bytes = b"") -> None:
        """Answer and close (commands other than receive-job end the connection)."""
        if text:
            self._write(text)
        self._closing = True
        if self._open:
            self._transport.loseConnection()

    def _refuse(self, reason: str) -> None:
        log.info("lpd %s: refused: %s", self.peer, reason)
        self._discard()
        if not self._closing:
            self._write(NACK)
        self._finish()

    def _discard(self) -> None:
        if self._receipt is not None:
            self._receipt.discard()
            self._receipt = None

    # ------------------------------------------------------------ events

    async def _handle(self, event: Event) -> None:
        if isinstance(event, DataChunk):
            assert self._receipt is not None
            self._receipt.write(event.data)   # SpoolFull past the document's cap
        elif isinstance(event, wire.ReceiveJob):
            self._receipt = _Receipt(self._queue(event.queue))
            self._ack()
        elif isinstance(event, wire.ControlFileHeader):
            self._ack()
        elif isinstance(event, wire.ControlFileReceived):
            await self._control_file(event.control)
            self._ack()
        elif isinstance(event, DataFileHeader):
            await self._data_file_header(event)
            self._ack()
        elif isinstance(event, wire.DataFileReceived):
            assert self._receipt is not None
            self._receipt.end_file()
            await self._complete_if_whole()
            self._ack()
        elif isinstance(event, wire.AbortJob):
            log.info("lpd %s: client aborted the job", self.peer)
            if self._receipt is not None:
                queue = self._receipt.queue
                self._discard()
                self._receipt = _Receipt(queue)
            self._ack()
        elif isinstance(event, wire.ConnectionEnded):
            if self._receipt is not None and self._receipt.started:
                log.info("lpd %s: connection ended before the job was whole; discarded",
                         self.peer)
            self._discard()
            self._finish()
        elif isinstance(event, wire.Malformed):
            raise Refused(f"malformed: {event.reason}")
        elif isinstance(event, wire.PrintWaiting):
            self._queue(event.queue)
            self._ack()
            self._finish()
        elif isinstance(event, QueueState):
            self._finish(await self._queue_state(event))
        elif isinstance(event, RemoveJobs):
            self._finish(await self._remove_jobs(event))

    def _queue(self, name: str) -> Queue:
        queue = self.service.queue(name)
        if queue is None:
            raise Refused(f"no queue named {name!r}")
        return queue

    async def _control_file(self, control: ControlFile) -> None:
        receipt = self._receipt
        assert receipt is not None
        if receipt.control is not None:
            raise Refused("a second control file for one job")
        owner = control.user or ""
        for document in control.documents():
            self.service.validate(receipt.queue.name, owner, JobOptions(copies=document.copies))
        if not control.documents():
            self.service.validate(receipt.queue.name, owner, JobOptions())
        if receipt.files or receipt.current is not None:
            # Data came first, under the provisional owner: the owner's own cap applies.
            probe = await self.service.begin_document(owner)
            limit = probe.limit
            probe.discard()
            if receipt.received > limit:
                raise JobError("quota", f"{owner} has no room for {receipt.received} octets")
        receipt.take_control(control)
        await self._complete_if_whole()

    async def _data_file_header(self, event: DataFileHeader) -> None:
        receipt = self._receipt
        assert receipt is not None
        control = receipt.control
        owner = control.user if control is not None and control.user else PROVISIONAL_OWNER
        document = await self.service.begin_document(owner)
        if event.size is not None and event.size > document.limit:
            document.discard()
            raise JobError("too-large", f"data file {event.name} of {event.size} octets "
                                        f"(room for {document.limit})")
        receipt.begin_file(event.name, document)

    async def _complete_if_whole(self) -> None:
        """Submit the job once its control file and every data file it prints are here."""
        receipt = self._receipt
        assert receipt is not None
        whole = receipt.whole()
        if whole is None:
            return
        control, documents = whole
        owner = control.user or ""
        done: list[Job] = []
        try:
            for spec in documents:
                document = receipt.files.pop(spec.filename)
                name = _truncate(control.name_for(spec))
                options = JobOptions(copies=spec.copies)
                try:
                    job = await self.service.submit(receipt.queue.name, owner, name, options,
                                                    document, spec.mime)
                except BaseException:
                    document.discard()
                    # `submit` may have committed the file before failing: no job has it.
                    self.service.spool.delete(document.name)
                    raise
                done.append(job)
        except BaseException:
            for job in done:
                try:
                    await self.service.cancel(job.id, None)
                except Exception as exc:
                    log.warning("lpd %s: could not withdraw job %d: %s", self.peer, job.id, exc)
            raise
        receipt.drop_leftovers()   # sent but not printed by the control file
        self.submitted.extend(done)
        for job in done:
            log.info("lpd %s: job %d for %s on %s (%s, %s pages)", self.peer, job.id, job.owner,
                     job.queue, job.document_format, job.pages)
        self._receipt = _Receipt(receipt.queue)   # the connection may send another job

    async def _queue_state(self, event: QueueState) -> bytes:
        queue = self.service.queue(event.queue)
        if queue is None:
            return f"{event.queue}: unknown queue\n".encode()
        jobs = await self.service.list_jobs(queue.name, "not-completed")
        jobs = [j for j in jobs if _selected(j, event.items)]
        return format_queue_state(queue, jobs, long=event.long).encode("utf-8")

    async def _remove_jobs(self, event: RemoveJobs) -> bytes:
        queue = self.service.queue(event.queue)
        if queue is None:
            return f"{event.queue}: unknown queue\n".encode()
        agent = event.agent
        jobs = await self.service.list_jobs(queue.name, "not-completed", owner=agent)
        # No list: the agent's active job, i.e. the oldest not yet finished.
        jobs = [j for j in jobs if _selected(j, event.items, all_of=agent)] if event.items \
            else jobs[:1]
        lines = []
        for job in jobs:
            try:
                await self.service.cancel(job.id, agent)
            except JobError as exc:
                lines.append(f"job {job.id}: {exc}")
            else:
                lines.append(f"job {job.id} ({job.name}) dequeued")
        if not lines:
            lines.append(f"{queue.name}: no job of {agent} to remove")
        return ("\n".join(lines) + "\n").encode("utf-8")


def _truncate(text: str, octets: int = MAX_NAME_OCTETS) -> str:
    return text.encode("utf-8")[:octets].decode("utf-8", "ignore")


def _selected(job: Job, items: tuple[str, ...], all_of: str | None = None) -> bool:
    """Whether `job` is named by an lpq/lprm list: job numbers or user names ('-': all
    of `all_of`'s)."""
    if not items:
        return True
    for item in items:
        if item.isdigit() and int(item) == job.id:
            return True
        if item == job.owner or (item == "-" and all_of is not None and job.owner == all_of):
            return True
    return False


def _rank(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def format_queue_state(queue: Queue, jobs: list[Job], *, long: bool) -> str:
    """What 03/04 answer: BSD lpq's layout, one entry per job not yet finished."""
    lines = [f"{queue.name}: {queue.info or queue.kind}"]
    if not jobs:
        lines.append("no entries")
        return "\n".join(lines) + "\n"
    if not long:
        lines.append(f"{'Rank':<7}{'Owner':<11}{'Job':<6}{'File(s)':<38}Total Size")
        for rank, job in enumerate(jobs, 1):
            lines.append(f"{_rank(rank):<7}{job.owner[:10]:<11}{job.id:<6}"
                         f"{job.name[:37]:<38}{job.size} bytes")
    else:
        for rank, job in enumerate(jobs, 1):
            pages = "?" if job.pages is None else job.pages
            lines.append("")
            lines.append(f"{job.owner}: {_rank(rank):<28}[job {job.id}]")
            lines.append(f"        {job.name[:40]:<40}{job.size} bytes, {pages} pages, "
                         f"{job.state.value}")
    return "\n".join(lines) + "\n"


class LpdServerFactory(protocol.Factory):
    """Serves `service`'s queues over LPD; listen it with `reactor.listenTCP`."""

    noisy = False

    def __init__(self, service: PrintService, *, idle_timeout: float = 300.0,
                 max_control: int = wire.MAX_CONTROL, reactor: Any = None) -> None:
        self.service = service
        self.reactor = reactor
        self.idle_timeout = idle_timeout
        self.max_control = max_control

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        built = LpdServerProtocol()
        built.factory = self
        return built

"""Print jobs at the site: accept, hold, list, cancel, expire.

The IPP (and later LPD) servers call this; it knows no wire format. A job is
acknowledged (its coroutine returns) only after its document is fsync'd in the
spool and its row committed.

Two kinds of queue:
- `findme`: every job is held for its owner until she releases it at an MFD
  (see `release.py`).
- a device's direct queue: the job is tracked, charged and sent to that device
  at once (sites use it for printers without secure release).
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from appliance.core import documents
from appliance.core.charging import CostPolicy, Quote, quote_print
from appliance.core.deferreds import observe
from appliance.core.model import TERMINAL_STATES, Job, JobOptions, JobState, Queue
from appliance.storage.spool import IncomingDocument, Spool, SpoolFull

log = logging.getLogger(__name__)

FINDME = "findme"

#: IPP job-state-reasons for a job held for its owner (RFC 8011 keyword).
HELD_REASON = "job-hold-until-specified"


class JobError(Exception):
    """A request the logic refuses; `code` is mapped to a protocol status by each server.

    Codes: not-found, not-authorized, not-possible, too-large, quota, bad-format,
    not-accepting, bad-value.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class PrintService:
    """Jobs and their documents. One per site process (built in `app.py`)."""

    def __init__(
        self,
        *,
        store: Any,
        spool: Spool,
        queues: Iterable[Queue],
        policies: Callable[[str | None], CostPolicy],
        reactor: Any,
        hold_ttl: float = 24 * 3600.0,
        use_ghostscript: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.spool = spool
        self._queues = {q.name: q for q in queues}
        self._policies = policies
        self._reactor = reactor
        self.hold_ttl = hold_ttl
        self.use_ghostscript = use_ghostscript
        self.clock = clock
        #: Called with a job that a direct queue (or Release-Job) made ready to print.
        self.on_ready: Callable[[Job], Awaitable[None]] | None = None
        self._analysis: dict[int, defer.Deferred[None]] = {}

    # ------------------------------------------------------------ queues

    def queue(self, name: str) -> Queue | None:
        return self._queues.get(name)

    def queues(self) -> list[Queue]:
        return list(self._queues.values())

    def quote(self, job: Job, device: str | None = None) -> Quote:
        queue = self._queues.get(job.queue)
        policy = self._policies(device or (queue.device if queue else None))
        return quote_print(
            policy, pages=job.pages, colour=job.colour, copies=job.options.copies,
            sides=job.options.sides, number_up=job.options.number_up, media=job.options.media,
        )

    # ------------------------------------------------------------ submitting

    def validate(self, queue_name: str, owner: str, options: JobOptions) -> Queue:
        queue = self._queues.get(queue_name)
        if queue is None:
            raise JobError("not-found", f"no queue named {queue_name!r}")
        if not owner:
            raise JobError("not-authorized", "the job has no owner (requesting-user-name)")
        if not 1 <= options.copies <= 999:
            raise JobError("bad-value", "copies must be 1..999")
        if options.number_up not in (1, 2, 4, 6, 9, 16):
            raise JobError("bad-value", "number-up must be one of 1, 2, 4, 6, 9, 16")
        if options.sides not in ("one-sided", "two-sided-long-edge", "two-sided-short-edge"):
            raise JobError("bad-value", f"unsupported sides {options.sides!r}")
        return queue

    async def begin_document(self, owner: str) -> IncomingDocument:
        """Start receiving a document for `owner`; raises JobError past a spool cap and
        DiskFull (storage.disk) when the disk is full or below its free-space floor."""
        mine, total = await self.store.spool_usage(owner)
        try:
            return self.spool.begin(owner, mine, total)
        except SpoolFull as exc:
            raise JobError("quota", str(exc)) from exc

    async def create_job(
        self, queue_name: str, owner: str, name: str, options: JobOptions,
        document_format: str = "application/octet-stream",
    ) -> Job:
        """Create-Job: a job that waits for its document (Send-Document). Below the
        spool's free-space floor no job is created (storage.disk.DiskFull)."""
        queue = self.validate(queue_name, owner, options)
        self.spool.check_free()
        user = await self.store.user_by_name(owner)
        return await self.store.insert_job(
            uuid=uuidlib.uuid4().hex, queue=queue.name, owner=owner,
            user_id=user.id if user else None, name=name, document_format=document_format,
            spool_name=None, size=0, pages=None, colour=False, analysed=False, options=options,
            state=JobState.HELD, state_reasons=("job-incoming",),
            expires_at=self.clock() + self.hold_ttl,
        )

    async def submit(
        self, queue_name: str, owner: str, name: str, options: JobOptions,
        document: IncomingDocument, document_format: str | None,
        existing_job: Job | None = None,
    ) -> Job:
        """Make a received document durable and its job real; return the acknowledged job.

        Order matters and is tested under strace: the spool file and its
        folder are fsync'd, then the job row is committed, then we return.
        """
        queue = self.validate(queue_name, owner, options)
        try:
            path: Path = await threads.deferToThread(document.commit)
        except BaseException:
            document.discard()
            raise
        try:
            job = await self._record(queue, owner, name, options, document, path,
                                     document_format, existing_job)
        except BaseException:
            # Nothing was acknowledged: the document must not linger in the spool.
            self.spool.delete(document.name)
            raise
        if not job.analysed:
            self._start_analysis(job)
        if job.state is JobState.PENDING and self.on_ready is not None:
            self._reactor.callLater(0, self._ready, job)
        return job

    async def _record(
        self, queue: Queue, owner: str, name: str, options: JobOptions,
        document: IncomingDocument, path: Path, document_format: str | None,
        existing_job: Job | None,
    ) -> Job:
        """Count the document and commit its job row (new, or the Create-Job's)."""
        info = await threads.deferToThread(documents.count_pages, path, document_format)
        colour = self._colour_hint(options, info.colour, info.format)
        analysed = colour is not None or not _needs_ink_coverage(info.format)
        hold = queue.kind == FINDME or options.hold_until not in (None, "", "no-hold")
        state = JobState.HELD if hold else JobState.PENDING
        reasons = (HELD_REASON,) if hold else ("job-queued",)
        if existing_job is not None:
            if existing_job.owner != owner:
                raise JobError("not-authorized", f"job {existing_job.id} belongs to another user")
            job = await self.store.update_job(
                existing_job.id, expect_states=(JobState.HELD,), require_no_document=True,
                spool_name=document.name, size=document.size, pages=info.pages,
                colour=int(bool(colour)), analysed=int(analysed), document_format=info.format,
                state=state, state_reasons=reasons,
            )
            if job is None:
                raise JobError("not-possible", "the job is no longer waiting for a document")
            return job
        user = await self.store.user_by_name(owner)
        new_job: Job = await self.store.insert_job(
            uuid=uuidlib.uuid4().hex, queue=queue.name, owner=owner,
            user_id=user.id if user else None, name=name, document_format=info.format,
            spool_name=document.name, size=document.size, pages=info.pages,
            colour=bool(colour), analysed=analysed, options=options, state=state,
            state_reasons=reasons, expires_at=self.clock() + self.hold_ttl,
        )
        return new_job

    def _ready(self, job: Job) -> None:
        assert self.on_ready is not None

        async def send() -> None:
            assert self.on_ready is not None
            await self.on_ready(job)

        d = defer.ensureDeferred(send())
        d.addErrback(lambda f: log.error("sending job %d failed: %s", job.id, f.getTraceback()))

    @staticmethod
    def _colour_hint(
        options: JobOptions, content_colour: bool | None, document_format: str
    ) -> bool | None:
        """Colour as far as it is known before ink coverage runs; None: run it.

        print-color-mode=monochrome makes any job mono. Otherwise the content
        decides where the format says it cheaply (PWG raster, PCL XL); PDF and
        PostScript wait for ghostscript's ink coverage; anything else follows
        print-color-mode.
        """
        mode = (options.colour_mode or "").lower()
        if mode in ("monochrome", "bi-level", "process-monochrome", "auto-monochrome"):
            return False
        if content_colour is not None:
            return content_colour
        if _needs_ink_coverage(document_format):
            return None
        return mode in ("color", "process-color")

    # ------------------------------------------------------------ colour analysis

    def _start_analysis(self, job: Job) -> None:
        """Ink coverage runs after the acknowledgement: ghostscript takes a while,
        and a client must not wait for it. Release waits for it (`analysed`)."""
        if job.id in self._analysis:
            return
        d: defer.Deferred[None] = defer.ensureDeferred(self._analyse(job))
        self._analysis[job.id] = d

        def done(result: Any) -> None:
            self._analysis.pop(job.id, None)
            if isinstance(result, Failure):
                log.error("analysing job %d failed: %s", job.id, result.getTraceback())

        d.addBoth(done)

    async def _analyse(self, job: Job) -> None:
        colour: bool | None = None
        if job.spool_name and self.use_ghostscript:
            colour = await threads.deferToThread(
                documents.detect_colour, self.spool.path(job.spool_name), job.document_format
            )
        if colour is None:
            mode = (job.options.colour_mode or "").lower()
            colour = mode in ("color", "process-color")
        await self.store.update_job(job.id, colour=int(colour), analysed=1)

    async def analysed(self, job: Job) -> Job:
        """The job once its colour is known (waits for a running analysis)."""
        if job.analysed:
            return job
        if job.id not in self._analysis:
            self._start_analysis(job)
        pending = self._analysis.get(job.id)
        if pending is not None:
            await observe(pending)
        fresh = await self.store.job(job.id)
        assert fresh is not None
        return fresh

    # ------------------------------------------------------------ queries & changes

    async def job(self, job_id: int) -> Job | None:
        job: Job | None = await self.store.job(job_id)
        return job

    async def list_jobs(
        self, queue_name: str | None, which: str = "not-completed", owner: str | None = None,
        limit: int | None = None,
    ) -> list[Job]:
        if which == "completed":
            states: Iterable[JobState] | None = TERMINAL_STATES
        elif which == "not-completed":
            states = set(JobState) - TERMINAL_STATES
        else:
            states = None
        jobs: list[Job] = await self.store.jobs(
            queue=queue_name, owner=owner, states=states, limit=limit,
            newest_first=which == "completed",
        )
        return jobs

    async def held_for(self, owner: str) -> list[Job]:
        jobs: list[Job] = await self.store.jobs(queue=FINDME, owner=owner, states=(JobState.HELD,))
        return [j for j in jobs if j.spool_name is not None]

    async def cancel(self, job_id: int, requester: str | None) -> Job:
        """Cancel a job not yet printing; its document leaves the spool."""
        job = await self._owned(job_id, requester)
        if job.terminal:
            raise JobError("not-possible", f"job {job_id} is already {job.state.value}")
        updated = await self.store.update_job(
            job_id, expect_states=(JobState.HELD, JobState.PENDING), state=JobState.CANCELED,
            state_reasons=("job-canceled-by-user",), completed_at=self.clock(), spool_name=None,
        )
        if updated is None:
            raise JobError("not-possible", f"job {job_id} is printing and cannot be cancelled")
        if job.spool_name:
            self.spool.delete(job.spool_name)
        return updated

    async def hold(self, job_id: int, requester: str | None, until: str = "indefinite") -> Job:
        job = await self._owned(job_id, requester)
        updated = await self.store.update_job(
            job_id, expect_states=(JobState.HELD, JobState.PENDING), state=JobState.HELD,
            state_reasons=(HELD_REASON,), hold_until=until,
        )
        if updated is None:
            raise JobError("not-possible", f"job {job.id} is {job.state.value}; it cannot be held")
        return updated

    async def release_hold(self, job_id: int, requester: str | None) -> Job:
        """IPP Release-Job: on a direct queue, print now; Find-Me jobs need an MFD."""
        job = await self._owned(job_id, requester)
        queue = self._queues.get(job.queue)
        if queue is None or queue.kind == FINDME:
            raise JobError("not-possible",
                           "Find-Me jobs are released by their owner at a printer")
        if job.spool_name is None:
            raise JobError("not-possible", "the job has no document yet")
        updated = await self.store.update_job(
            job_id, expect_states=(JobState.HELD,), state=JobState.PENDING,
            state_reasons=("job-queued",), hold_until="no-hold",
        )
        if updated is None:
            raise JobError("not-possible", f"job {job.id} is not held")
        if self.on_ready is not None:
            self._reactor.callLater(0, self._ready, updated)
        return updated

    async def _owned(self, job_id: int, requester: str | None) -> Job:
        job = await self.store.job(job_id)
        if job is None:
            raise JobError("not-found", f"no job {job_id}")
        if requester is not None and job.owner != requester:
            raise JobError("not-authorized", f"job {job_id} belongs to another user")
        assert isinstance(job, Job)
        return job

    async def expire_held(self) -> int:
        """Expire held jobs past their time and free their documents."""
        now = self.clock()
        expired = 0
        for job in await self.store.jobs(states=(JobState.HELD,)):
            if job.expires_at is not None and job.expires_at <= now:
                updated = await self.store.update_job(
                    job.id, expect_states=(JobState.HELD,), state=JobState.EXPIRED,
                    state_reasons=("job-canceled-at-device",), completed_at=now,
                    spool_name=None, state_message="held job expired",
                )
                if updated is not None:
                    expired += 1
                    if job.spool_name:
                        self.spool.delete(job.spool_name)
        return expired

    async def recover(self) -> None:
        """After a restart: delete orphaned spool files, re-run unfinished analyses,
        re-queue direct jobs that were waiting."""
        jobs = await self.store.jobs()
        referenced = {j.spool_name for j in jobs if j.spool_name}
        for name in self.spool.names() - referenced:
            log.warning("removing spool file %s that no job references", name)
            self.spool.delete(name)
        for job in jobs:
            if not job.terminal and job.spool_name and not job.analysed:
                self._start_analysis(job)
            if job.state is JobState.PENDING and self.on_ready is not None:
                self._reactor.callLater(0, self._ready, job)


def _needs_ink_coverage(document_format: str) -> bool:
    return document_format in ("application/pdf", "application/postscript")


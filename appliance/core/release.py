"""Secure print release: send a held job to the MFD its owner stands at, follow it, charge it.

Exactly-once charging rests on three things:
- a job moves HELD → PROCESSING with a conditional update, so two MFDs
  cannot both take it;
- the charge and the job's next state are one transaction (`finish_print`);
- the ledger entry id is `print:<job uuid>:<attempt>`, so replaying the same
  attempt after a crash cannot add a second row.

A print that fails before any page charges nothing and the job is held again,
releasable at another MFD. A jam after k pages charges the k impressions the
MFD reports and the job is held again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.python.failure import Failure

from appliance.core.charging import CostPolicy, affordable, price_impressions
from appliance.core.deferreds import observe
from appliance.core.jobs import FINDME, JobError, PrintService
from appliance.core.model import Device, Job, JobState
from appliance.storage.disk import DiskFull

log = logging.getLogger(__name__)


class DeviceUnavailable(Exception):
    """Nothing was printed: the device could not be reached or refused the job."""


@dataclass(frozen=True)
class DeviceJobStatus:
    state: str                  # 'pending', 'processing', 'completed', 'aborted', 'canceled'
    impressions: int | None     # impressions the device reports completed
    message: str = ""

    @property
    def terminal(self) -> bool:
        return self.state in ("completed", "aborted", "canceled")


class DeviceDriver(Protocol):
    """How the site prints on one kind of device (IPP now; LPD with its issue)."""

    async def submit(self, device: Device, job: Job, document: Path) -> str:
        """Send the job; return the device's handle for it. Raises DeviceUnavailable."""

    async def status(self, device: Device, handle: str) -> DeviceJobStatus:
        """Where the device is with the job. Raises DeviceUnavailable."""

    async def find(self, device: Device, job: Job, within: float,
                   claimed: set[str]) -> str | None:
        """After a crash between sending `job` and recording the device's handle: the
        handle of the device's job that is this one (same name and owner, created in the
        last `within` seconds by the device's own clock, not in `claimed`), or None when
        the device has no such job or cannot say. Raises DeviceUnavailable."""


class PrintWatch(Protocol):
    """Told when a job goes to a device and when the device is done with it (page-counter audit)."""

    async def started(self, device: str, job: Job) -> None:
        """Just before the job is sent."""

    async def finished(self, device: str, job: Job, impressions: int, printed: bool) -> Any:
        """The device is done; `impressions` is what the site recorded (and charged) for it.

        May return a check with `status`, `difference` (device count minus
        `impressions`) and `counter_delta`: a 'discrepancy' is charged (see
        `ReleaseService._charge_counter_difference`)."""


@dataclass
class JobResult:
    job_id: int
    ok: bool
    code: str = ""
    message: str = ""
    charged: int = 0
    processing: bool = False


@dataclass
class ReleaseReport:
    results: list[JobResult] = field(default_factory=list)
    balance: int = 0

    @property
    def released(self) -> list[int]:
        return [r.job_id for r in self.results if r.ok and not r.processing]

    @property
    def processing(self) -> list[int]:
        return [r.job_id for r in self.results if r.processing]

    @property
    def failed(self) -> list[JobResult]:
        return [r for r in self.results if not r.ok]

    @property
    def charged(self) -> int:
        return sum(r.charged for r in self.results)


class ReleaseService:
    #: Seconds added to the time since an attempt began when asking a device which jobs it
    #: created since (its clock counts whole seconds).
    FIND_SLACK = 5.0

    def __init__(
        self,
        *,
        jobs: PrintService,
        store: Any,
        drivers: dict[str, DeviceDriver],
        devices: Callable[[], dict[str, Device]],
        policies: Callable[[str | None], CostPolicy],
        reactor: Any,
        poll_interval: float = 0.25,
        follow_timeout: float = 120.0,
        clock: Callable[[], float] = time.time,
        device_ready: Callable[[str], str | None] | None = None,
        print_watch: PrintWatch | None = None,
        offline_gate: Any = None,
        retry_interval: float = 30.0,
    ) -> None:
        self.jobs = jobs
        #: How often a PROCESSING job is tried again without a restart: one that printed
        #: but whose charge the full disk refused (followed again until the charge
        #: commits, under the same entry id: charged once), and one whose device could
        #: not say after a restart whether it received it (asked again).
        self.retry_interval = retry_interval
        #: core.allowance.OfflineGate: offline, releases are authorised against the
        #: allowance instead of the balance (docs/offline-allowance.md).
        self.offline_gate = offline_gate
        #: Why a device must not take a job now (jammed, offline...), or None: see core/devices.py.
        self.device_ready = device_ready
        self.print_watch = print_watch
        self.store = store
        self.drivers = drivers
        self.devices = devices
        self.policies = policies
        self.reactor = reactor
        self.poll_interval = poll_interval
        self.follow_timeout = follow_timeout
        self.clock = clock
        self._following: dict[int, defer.Deferred[JobResult]] = {}
        #: Held while a device is asked for a job and the answer recorded (see
        #: `_find_then_follow`).
        self._finding = defer.DeferredLock()

    # ------------------------------------------------------------ Find-Me release

    async def release(
        self, *, owner: str, account_id: int, device_name: str, job_ids: Sequence[int] | None
    ) -> ReleaseReport:
        """Release `job_ids` (None: all held) of `owner` at `device_name`, one after another."""
        held = await self.jobs.held_for(owner)
        by_id = {j.id: j for j in held}
        report = ReleaseReport()
        wanted = [j.id for j in held] if job_ids is None else list(job_ids)
        for job_id in wanted:
            job = by_id.get(job_id)
            if job is None:
                report.results.append(JobResult(job_id, False, "not_found",
                                                f"job {job_id} is not held for {owner}"))
                continue
            report.results.append(await self._release_one(job, device_name, account_id))
        report.balance, _ = await self.store.balance(account_id)
        return report

    async def _release_one(self, job: Job, device_name: str, account_id: int | None,
                           check_balance: bool = True) -> JobResult:
        device = self.devices().get(device_name)
        if device is None or not device.enabled:
            return JobResult(job.id, False, "device_unavailable", f"no device {device_name}")
        refusal = self.device_ready(device.name) if self.device_ready is not None else None
        if refusal:
            if job.state == JobState.PENDING:
                # A direct queue's job: held, as after a failed send, releasable elsewhere.
                await self.store.update_job(
                    job.id, expect_states=(JobState.PENDING,), state=JobState.HELD,
                    state_reasons=("job-hold-until-specified",), state_message=refusal)
                log.warning("direct job %d held: %s", job.id, refusal)
            return JobResult(job.id, False, "device_unavailable", refusal)
        job = await self.jobs.analysed(job)
        policy = self.policies(device.name)
        quote = self.jobs.quote(job, device.name)
        offline = None
        if self.offline_gate is not None and account_id is not None and quote.cost > 0:
            offline = await self.offline_gate.check(account_id, quote.cost, hold=True)
            if offline is not None and not offline.allowed:
                await self._hold_refused(job, offline.message)
                return JobResult(job.id, False, offline.code, offline.message)
        # An allowed offline release holds its cost in the gate until its outcome is known,
        # so that a second release of the same user meanwhile sees it (concurrent MFDs).
        held = quote.cost if offline is not None else 0

        def settle(result: Any = None) -> Any:
            if held and account_id is not None:
                self.offline_gate.release_hold(account_id, held)
            return result

        if offline is None and check_balance and account_id is not None and quote.cost > 0:
            balance, overdraft = await self.store.balance(account_id)
            if self.offline_gate is not None:   # money other sites hold in reserve
                balance -= await self.offline_gate.reserved_elsewhere(account_id)
            if affordable(balance, overdraft, quote.cost, 1) < 1:
                return JobResult(job.id, False, "insufficient_balance",
                                 f"job costs {quote.cost}, balance is {balance}")
        taken = await self.store.update_job(
            job.id, expect_states=(JobState.HELD, JobState.PENDING), state=JobState.PROCESSING,
            state_reasons=("job-printing",), device=device.name, attempts=job.attempts + 1,
            processing_at=self.clock(), state_message=f"sending to {device.name}",
        )
        if taken is None:
            settle()
            return JobResult(job.id, False, "not_found", f"job {job.id} is no longer held")
        job = taken
        assert job.spool_name is not None
        driver = self.drivers[device.protocol]
        if self.print_watch is not None:
            await self._watch_start(device, job)
        try:
            handle = await driver.submit(device, job, self.jobs.spool.path(job.spool_name))
        except DeviceUnavailable as exc:
            settle()
            self._watch_end(device, job, None)
            await self._back_to_queue(job, f"{device.name}: {exc}")
            return JobResult(job.id, False, "device_unavailable", str(exc))
        await self.store.update_job(job.id, remote_job_uri=handle)
        following = defer.ensureDeferred(self._follow(job, device, handle, account_id, policy))
        following.addBoth(settle)   # charged (or not) by now: the ledger counts it
        self._following[job.id] = following

        def forget(result: Any) -> Any:
            self._following.pop(job.id, None)
            return result

        def broken(failure: Failure) -> JobResult:
            # Keep the job as it is (PROCESSING), charge nothing here. A full disk: follow
            # it again until the charge commits; a bug: the restart recovery follows it.
            if failure.check(DiskFull):
                self._retry_when_space_returns(job.id)
                return JobResult(job.id, True, processing=True,
                                 message="printed; it is charged once the site's disk has "
                                 "space again")
            log.error("following job %d failed: %s", job.id, failure.getTraceback())
            return JobResult(job.id, False, "internal_error", "could not follow the job")

        following.addErrback(broken)
        following.addBoth(forget)
        if self.print_watch is not None:
            following.addCallback(self._watched, device, job)
        return await self._wait(job, following)

    # ------------------------------------------------------------ print watch (page counters)

    async def _watch_start(self, device: Device, job: Job) -> None:
        assert self.print_watch is not None
        try:
            await self.print_watch.started(device.name, job)
        except Exception:
            log.exception("print watch failed before job %d", job.id)

    def _watched(self, result: JobResult, device: Device, job: Job) -> JobResult:
        self._watch_end(device, job, result)
        return result

    def _watch_end(self, device: Device, job: Job, result: JobResult | None) -> None:
        """Tell the watch, in the background: the answer to the panel does not wait for it."""
        watch = self.print_watch
        if watch is None:
            return
        printed = result is not None and (result.ok or result.code == "device_error")

        async def tell() -> None:
            row = await self.store.job(job.id) if printed else None
            impressions = row.impressions_completed if row is not None else 0
            check = await watch.finished(device.name, job, impressions, printed)
            if row is not None and getattr(check, "status", None) == "discrepancy":
                await self._charge_counter_difference(row, device, check)

        told = defer.ensureDeferred(tell())
        told.addErrback(lambda f: log.error("print watch failed after job %d: %s", job.id,
                                            f.getTraceback()))

    async def _wait(self, job: Job, following: defer.Deferred[JobResult]) -> JobResult:
        """Wait for the device to finish, but answer the panel by `follow_timeout`."""
        try:
            return await observe(following).addTimeout(self.follow_timeout, self.reactor)
        except defer.TimeoutError:
            return JobResult(job.id, True, processing=True,
                             message="still printing; it is charged when it completes")

    async def _follow(self, job: Job, device: Device, handle: str, account_id: int | None,
                      policy: CostPolicy) -> JobResult:
        driver = self.drivers[device.protocol]
        misses = 0
        while True:
            try:
                status = await driver.status(device, handle)
                misses = 0
            except DeviceUnavailable as exc:
                misses += 1
                if misses > 40:
                    # We cannot tell whether it printed: keep the job, charge nothing.
                    await self._back_to_queue(job, f"lost contact with {device.name}: {exc}")
                    return JobResult(job.id, False, "device_unavailable", str(exc))
                status = None
            if status is not None and status.terminal:
                return await self._finish(job, device, status, account_id, policy)
            await task.deferLater(self.reactor, self.poll_interval, lambda: None)

    async def _finish(self, job: Job, device: Device, status: DeviceJobStatus,
                      account_id: int | None, policy: CostPolicy) -> JobResult:
        quote = self.jobs.quote(job, device.name)
        entry_id = f"print:{job.uuid}:{job.attempts}"
        if status.state == "completed":
            if job.pages is not None:
                impressions, amount = quote.impressions, quote.cost
            else:
                impressions = status.impressions or 0
                amount = price_impressions(policy, impressions, colour=job.colour,
                                           sides=job.options.sides, media=job.options.media)
            finished, ledger = await self.store.finish_print(
                job.id, entry_id=entry_id, account_id=account_id, amount=amount,
                impressions=impressions, colour=job.colour, device=device.name, completed=True,
                state_message=f"printed on {device.name}", body=self._body(job, device, impressions),
            )
            if finished.spool_name:
                await self.store.update_job(job.id, spool_name=None)
                self.jobs.spool.delete(finished.spool_name)
            log.info("job %d printed on %s: %d impressions, charged %d", job.id, device.name,
                     impressions, ledger.amount)
            return JobResult(job.id, True, charged=ledger.amount)
        printed = max(0, status.impressions or 0)
        amount = price_impressions(policy, printed, colour=job.colour, sides=job.options.sides,
                                   media=job.options.media)
        expected = quote.impressions if job.pages is not None else "?"
        message = (f"{device.name}: {status.message or status.state} "
                   f"({printed} of {expected} impressions printed)")
        _, ledger = await self.store.finish_print(
            job.id, entry_id=entry_id, account_id=account_id, amount=amount, impressions=printed,
            colour=job.colour, device=device.name, completed=False, state_message=message,
            body=self._body(job, device, printed),
        )
        log.warning("job %d failed on %s: %s (charged %d)", job.id, device.name, message,
                    ledger.amount)
        return JobResult(job.id, False, "device_error", message, charged=ledger.amount)

    @staticmethod
    def _body(job: Job, device: Device, impressions: int) -> dict[str, Any]:
        return {"job": job.uuid, "attempt": job.attempts, "device": device.name,
                "impressions": impressions, "colour": job.colour}

    async def _charge_counter_difference(self, job: Job, device: Device, check: Any) -> None:
        """When no other job ran on the device meanwhile, its page counter is what is
        charged: the difference from what the site charged is posted as an adjustment
        (a charge, or a refund when the device printed fewer), once per attempt."""
        difference = int(check.difference or 0)
        if difference == 0:
            return
        user = await self.store.user_by_name(job.owner)
        account_id = user.account_id if user else await self.store.unattributed_account()
        per_impression = price_impressions(self.policies(device.name), 1, colour=job.colour,
                                           sides=job.options.sides, media=job.options.media)
        amount = difference * per_impression
        if amount == 0:
            return
        await self.store.post_adjustment(
            entry_id=f"print:{job.uuid}:{job.attempts}:counter", account_id=account_id,
            amount=-amount, job_id=job.id, device=device.name, impressions=difference,
            colour=job.colour,
            body={"job": job.uuid, "attempt": job.attempts, "device": device.name,
                  "counter_delta": check.counter_delta, "site_impressions":
                  job.impressions_completed, "difference": difference})
        log.warning("job %d on %s: page counter says %+d impressions; adjusted by %d",
                    job.id, device.name, difference, -amount)

    async def _hold_refused(self, job: Job, message: str) -> None:
        """A direct queue's job refused offline: held, releasable later (as after a
        device refusal); a Find-Me job is still held."""
        if job.state == JobState.PENDING:
            await self.store.update_job(
                job.id, expect_states=(JobState.PENDING,), state=JobState.HELD,
                state_reasons=("job-hold-until-specified",), state_message=message)
            log.warning("direct job %d held: %s", job.id, message)

    async def _back_to_queue(self, job: Job, message: str) -> None:
        queue = self.jobs.queue(job.queue)
        state = JobState.HELD
        await self.store.update_job(
            job.id, expect_states=(JobState.PROCESSING,), state=state,
            state_reasons=("job-hold-until-specified",), device=None, remote_job_uri=None,
            state_message=message,
        )
        if queue is not None and queue.kind != FINDME:
            log.warning("direct job %d held after a device failure: %s", job.id, message)

    # ------------------------------------------------------------ direct queues

    async def print_direct(self, job: Job) -> None:
        """A direct queue's job: print at once on its device, charge its owner."""
        queue = self.jobs.queue(job.queue)
        if queue is None or queue.device is None:
            raise JobError("not-found", f"queue {job.queue} has no device")
        account_id: int | None
        user = await self.store.user_by_name(job.owner)
        account_id = user.account_id if user else await self.store.unattributed_account()
        if user is None and self.offline_gate is not None:
            offline, account = await self.offline_gate.unknown_user_account()
            if offline and account is None:   # `unknown_users = "deny"`
                from appliance.core.allowance import OFFLINE_USER_UNKNOWN

                await self._hold_refused(job, OFFLINE_USER_UNKNOWN)
                log.info("offline: refused %s: direct job %d of %s", OFFLINE_USER_UNKNOWN,
                         job.id, job.owner)
                return
            if offline:
                account_id = account
        result = await self._release_one(job, queue.device, account_id, check_balance=False)
        if not result.ok:
            log.warning("direct job %d on %s: %s", job.id, queue.device, result.message)

    # ------------------------------------------------------------ restart

    async def recover(self) -> None:
        """Jobs that were printing when the site stopped: follow those we can, hold the rest."""
        for job in await self.store.jobs(states=(JobState.PROCESSING,)):
            await self._follow_again(job)

    async def _follow_again(self, job: Job) -> None:
        """Follow a PROCESSING job from its stored handle (after a restart, or after its
        charge failed on a full disk). Without a handle the site stopped between sending
        it and recording the device's answer: the device is asked, in the background (a
        device that does not answer must not hold up the site's start), whether it has
        the job (else a release would print it twice). No device: hold it again."""
        device = self.devices().get(job.device or "")
        if device is None:
            await self._back_to_queue(job, "interrupted by a restart before printing")
            return
        if not job.remote_job_uri:
            asking = defer.ensureDeferred(self._find_then_follow(device, job))
            asking.addErrback(self._refollow_failed, job.id)
            return
        handle = job.remote_job_uri
        user = await self.store.user_by_name(job.owner)
        account_id = user.account_id if user else await self.store.unattributed_account()
        # Its cost is on its way to the ledger: offline, other releases and copies of the
        # account must see it held, as they would had this process authorised it.
        held = self.jobs.quote(job, device.name).cost if self.offline_gate is not None else 0
        if held > 0:
            self.offline_gate.add_hold(account_id, held)
        following = defer.ensureDeferred(
            self._follow(job, device, handle, account_id, self.policies(device.name)))
        self._following[job.id] = following
        following.addErrback(self._refollow_failed, job.id)

        def forget(_: Any) -> None:
            self._following.pop(job.id, None)
            if held > 0:
                self.offline_gate.release_hold(account_id, held)

        following.addBoth(forget)

    async def _find_then_follow(self, device: Device, job: Job, finds_left: int = 20) -> None:
        """Ask the device for the job (asked again every `retry_interval` seconds while it
        cannot answer, `finds_left` times); found: record its handle and follow it; not
        there: hold it again. One job at a time (`_finding`): two jobs of one owner with
        one name must not both take the device's one job for theirs."""
        found = await self._finding.run(
            lambda: defer.ensureDeferred(self._find_and_record(device, job, finds_left)))
        if found is not None:
            await self._follow_again(found)

    async def _find_and_record(self, device: Device, job: Job, finds_left: int) -> Job | None:
        try:
            handle = await self._find_on_device(device, job)
        except DeviceUnavailable as exc:
            if finds_left <= 1:
                await self._back_to_queue(job, f"{device.name} could not say whether it "
                                          f"received the job: {exc}")
                return None
            log.warning("job %d: asking %s whether it received the job: %s; trying again "
                        "in %.0f s", job.id, device.name, exc, self.retry_interval)
            self.reactor.callLater(self.retry_interval, lambda: defer.ensureDeferred(
                self._find_then_follow(device, job, finds_left - 1)).addErrback(
                    self._refollow_failed, job.id))
            return None
        if handle is None:
            await self._back_to_queue(job, "interrupted by a restart before printing")
            return None
        log.warning("job %d: found on %s after a restart (%s); following it", job.id,
                    device.name, handle)
        found: Job | None = await self.store.update_job(
            job.id, expect_states=(JobState.PROCESSING,), remote_job_uri=handle)
        return found

    async def _find_on_device(self, device: Device, job: Job) -> str | None:
        """The device's handle for `job` if it received it (see DeviceDriver.find): jobs
        it created since this attempt began, by name and owner, not already another job's
        of this owner (their handles are `claimed`)."""
        since = max(0.0, self.clock() - (job.processing_at or 0.0)) + self.FIND_SLACK
        owner_jobs = await self.store.jobs(owner=job.owner, newest_first=True, limit=500)
        claimed = {j.remote_job_uri for j in owner_jobs if j.remote_job_uri}
        handle: str | None = await self.drivers[device.protocol].find(device, job, since,
                                                                      claimed)
        return handle

    def _refollow_failed(self, failure: Failure, job_id: int) -> None:
        if failure.check(DiskFull):
            self._retry_when_space_returns(job_id)
        else:
            log.error("following job %d again: %s", job_id, failure.getTraceback())

    def _retry_when_space_returns(self, job_id: int) -> None:
        """Follow the job again after `retry_interval` seconds, while it is still
        PROCESSING and nobody else follows it; a full disk again schedules the next try."""
        log.warning("job %d printed but its charge could not be written (disk full); "
                    "trying again in %.0f s", job_id, self.retry_interval)

        async def again() -> None:
            job = await self.store.job(job_id)
            if job is not None and job.state == JobState.PROCESSING \
                    and job_id not in self._following:
                await self._follow_again(job)

        def attempt() -> None:
            defer.ensureDeferred(again()).addErrback(self._refollow_failed, job_id)

        self.reactor.callLater(self.retry_interval, attempt)

"""What the site knows about its devices' health, and the page-counter audit around releases.

`DeviceMonitor` keeps one merged state per device out of several *views*: what
the SNMP poller saw (`protocols/snmp/poller.py`) and, where something feeds
it, what IPP Get-Printer-Attributes said (printer-state, printer-state-reasons).
A view is a `DeviceView`; the protocol code that produces it knows the wire,
this module knows only states and reasons.

Merging: a specific fault seen by any fresh view wins (jammed, door open, out of
toner or paper); a device is offline only when no fresh view saw it reachable;
otherwise printing / toner_low / idle from the views that answered.
`refusal(name)` is what `ReleaseService` asks before sending a job: None, or
the reason to tell the user ("mfd-1 is jammed").

`PageCounterAudit` reads a device's life page counter just before a job is sent
and again when the device says the job is over, and stores the delta beside the
impressions the site charged; when no other release ran on that device in
between, a difference is flagged as a discrepancy.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

log = logging.getLogger(__name__)

#: The states a device can be in, as the site shows them.
STATES = ("idle", "printing", "offline", "jammed", "toner_low", "door_open", "unknown")
#: Reasons that make a device unfit for a release, most severe first, with how to say it.
ERROR_REASONS: dict[str, str] = {
    "jammed": "is jammed",
    "door_open": "has a door open",
    "offline": "is offline",
    "no_toner": "is out of toner",
    "no_paper": "is out of paper",
    "no_response": "is offline (it does not answer)",
}
ERROR_STATES = frozenset({"offline", "jammed", "door_open"})


@dataclass(frozen=True)
class DeviceView:
    """One source's view of a device at one moment."""

    source: str                       # 'snmp', 'ipp'
    state: str                        # one of STATES
    reasons: tuple[str, ...] = ()     # e.g. ('jammed', 'low_toner')
    reachable: bool = True            # False: the source got no (usable) answer
    page_count: int | None = None     # life impressions (prtMarkerLifeCount marker 1)
    detail: str = ""                  # e.g. sysDescr, or why the source failed
    at: float = 0.0                   # when it was observed (clock seconds)


@dataclass(frozen=True)
class DeviceStatus:
    """The merged state of one device."""

    name: str
    state: str
    reasons: tuple[str, ...]
    page_count: int | None
    views: dict[str, DeviceView] = field(default_factory=dict)

    @property
    def in_error(self) -> bool:
        return self.state in ERROR_STATES or any(r in ERROR_REASONS for r in self.reasons)

    def refusal(self) -> str | None:
        """Why a job must not go to this device now, or None."""
        if not self.in_error:
            return None
        for reason, text in ERROR_REASONS.items():
            if reason in self.reasons:
                return f"{self.name} {text}"
        return f"{self.name} is {self.state.replace('_', ' ')}"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "reasons": list(self.reasons),
                "page_count": self.page_count, "in_error": self.in_error,
                "sources": {k: {"state": v.state, "reasons": list(v.reasons),
                                "reachable": v.reachable, "at": v.at}
                            for k, v in self.views.items()}}


def merge(name: str, views: list[DeviceView]) -> DeviceStatus:
    """One state out of the fresh views of a device (see the module's docstring)."""
    if not views:
        return DeviceStatus(name, "unknown", (), None)
    by_source = {v.source: v for v in views}
    reasons: list[str] = []
    for view in views:
        reasons += [r for r in view.reasons if r not in reasons]
    answering = [v for v in views if v.reachable]
    page_count = next((v.page_count for v in views if v.page_count is not None), None)
    states = {v.state for v in answering}
    for state in ("jammed", "door_open"):
        if state in states or state in reasons:
            return DeviceStatus(name, state, tuple(reasons), page_count, by_source)
    if not answering:
        if "no_response" not in reasons:
            reasons.append("no_response")
        return DeviceStatus(name, "offline", tuple(reasons), page_count, by_source)
    # Another source reached it: one source's silence does not make it offline.
    reasons = [r for r in reasons if r != "no_response"]
    if "offline" in states or "offline" in reasons:
        return DeviceStatus(name, "offline", tuple(reasons), page_count, by_source)
    for state in ("toner_low", "printing", "idle"):
        if state in states:
            return DeviceStatus(name, state, tuple(reasons), page_count, by_source)
    return DeviceStatus(name, "unknown", tuple(reasons), page_count, by_source)


class DeviceMonitor:
    """The merged state of every device, fed by the SNMP poller and (optionally) an IPP watcher."""

    def __init__(self, *, stale_after: float = 60.0, clock: Callable[[], float] = time.time) -> None:
        self.stale_after = stale_after
        self.clock = clock
        self._views: dict[str, dict[str, DeviceView]] = {}
        self._status: dict[str, DeviceStatus] = {}
        self.listeners: list[Callable[[DeviceStatus, DeviceStatus | None], None]] = []

    def update(self, name: str, view: DeviceView) -> DeviceStatus:
        """Record a source's new view of `name`; returns the merged status."""
        if not view.at:
            view = replace(view, at=self.clock())
        self._views.setdefault(name, {})[view.source] = view
        before = self._status.get(name)
        status = self.status(name)
        if before is None or (before.state, before.reasons) != (status.state, status.reasons):
            log.info("device %s: %s%s", name, status.state,
                     f" ({', '.join(status.reasons)})" if status.reasons else "")
            for listener in list(self.listeners):
                try:
                    listener(status, before)
                except Exception:
                    log.exception("device listener failed")
        return status

    def status(self, name: str) -> DeviceStatus:
        now = self.clock()
        fresh = [v for v in self._views.get(name, {}).values()
                 if now - v.at <= self.stale_after]
        status = merge(name, fresh)
        self._status[name] = status
        return status

    def statuses(self) -> dict[str, DeviceStatus]:
        return {name: self.status(name) for name in self._views}

    def panel_json(self, name: str) -> dict[str, Any] | None:
        """What the device API shows a panel about its own device (None: not watched)."""
        if name not in self._views:
            return None
        status = self.status(name)
        reason = self.refusal(name)
        return {"state": status.state, "reasons": list(status.reasons), "ready": reason is None,
                "reason": reason}

    def refusal(self, name: str) -> str | None:
        """For `ReleaseService(device_ready=...)`: why `name` cannot print now, or None."""
        if name not in self._views:
            return None  # not watched: nothing to say against it
        return self.status(name).refusal()


# ---------------------------------------------------------------- page-counter audit


@dataclass
class _Window:
    device: str
    job_id: int
    attempt: int
    before: int | None
    started_at: float
    overlapped: bool = False


@dataclass(frozen=True)
class CounterCheck:
    job_id: int
    attempt: int
    device: str
    counter_before: int | None
    counter_after: int | None
    counter_delta: int | None
    impressions: int
    difference: int | None
    status: str          # 'ok', 'discrepancy', 'overlapped', 'unmeasured'
    detail: str
    started_at: float
    finished_at: float


COUNTER_MODULUS = 2**32  # prtMarkerLifeCount is a Counter32


class PageCounterAudit:
    """Counter deltas around each release (`ReleaseService(print_watch=...)`).

    `read_counter(device)` returns the device's life page counter now, or None
    when it cannot be read (no SNMP for it, no answer). Checks go to
    `store.add_counter_check` (a row per attempt), discrepancies to the log too.

    A device may still be counting when the site hears that a job is done (LPD
    reports no job state: done means transferred). So while the delta is short of
    the impressions, the counter is read again every `settle_step` seconds (`sleep`
    waits on the reactor) until it has not moved for `settle` seconds (at most
    `settle_max` in all), before a shortfall is flagged.
    """

    def __init__(self, *, read_counter: Callable[[str], Awaitable[int | None]], store: Any,
                 clock: Callable[[], float] = time.time,
                 sleep: Callable[[float], Awaitable[Any]] | None = None,
                 settle: float = 0.0, settle_step: float = 0.5,
                 settle_max: float = 600.0) -> None:
        self.read_counter = read_counter
        self.store = store
        self.clock = clock
        self.sleep = sleep
        self.settle = settle if sleep is not None else 0.0
        self.settle_step = settle_step
        self.settle_max = settle_max
        self._open: dict[str, list[_Window]] = {}
        self.checks: list[CounterCheck] = []  # the latest ones, for tests and the log

    def _find(self, device: str, job_id: int) -> _Window | None:
        return next((w for w in self._open.get(device, []) if w.job_id == job_id), None)

    def _close(self, window: _Window) -> None:
        windows = self._open.get(window.device, [])
        if window in windows:
            windows.remove(window)

    async def _read(self, device: str) -> int | None:
        try:
            return await self.read_counter(device)
        except Exception:
            log.exception("reading the page counter of %s failed", device)
            return None

    async def started(self, device: str, job: Any) -> None:
        """Just before `job` is sent to `device`."""
        before = await self._read(device)
        window = _Window(device, job.id, job.attempts, before, self.clock())
        others = self._open.setdefault(device, [])
        if others:
            window.overlapped = True
            for other in others:
                other.overlapped = True
        others.append(window)

    async def finished(self, device: str, job: Any, impressions: int,
                       printed: bool) -> CounterCheck | None:
        """The device is done with `job` (printed: it reached the device, whatever came out).

        Returns the check (None when there was nothing to measure).
        """
        window = self._find(device, job.id)
        if window is None:
            return None
        try:
            if not printed:
                return None  # nothing reached the device: no check (others' windows stay spoilt)
            check = await self._measure(window, impressions)
        finally:
            self._close(window)  # open until measured: a job starting meanwhile spoils it
        if check.status == "discrepancy":
            log.warning("page counter discrepancy on %s for job %d: %s", device, job.id,
                        check.detail)
        self.checks = [*self.checks[-999:], check]
        try:
            await self.store.add_counter_check(check)
        except Exception:
            log.exception("storing the page-counter check of job %d failed", job.id)
        return check

    async def _measure(self, window: _Window, impressions: int) -> CounterCheck:
        def delta_of(after: int | None) -> int | None:
            if window.before is None or after is None:
                return None
            return (after - window.before) % COUNTER_MODULUS

        after = await self._read(window.device)
        delta = delta_of(after)
        first = moved = self.clock()
        while (self.sleep is not None and delta is not None and delta < impressions
               and not window.overlapped and self.clock() - moved < self.settle
               and self.clock() - first < self.settle_max):
            await self.sleep(self.settle_step)
            later = await self._read(window.device)
            if later is not None and later != after:
                after, delta, moved = later, delta_of(later), self.clock()
        # A job still open on the device while this one printed also spoils its window.
        others = [w for w in self._open.get(window.device, []) if w is not window]
        if others:
            window.overlapped = True
            for other in others:
                other.overlapped = True
        difference: int | None = None
        if delta is None:
            status, detail = "unmeasured", "page counter not readable"
        elif window.overlapped:
            status, detail = "overlapped", "another job printed on the device meanwhile"
        else:
            difference = delta - impressions
            status = "ok" if difference == 0 else "discrepancy"
            detail = "" if difference == 0 else (
                f"device counted {delta} impressions, the site charged {impressions}")
        return CounterCheck(window.job_id, window.attempt, window.device, window.before, after,
                            delta, impressions, difference, status, detail, window.started_at,
                            self.clock())

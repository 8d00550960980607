"""Online or offline: a pure state machine over heartbeat outcomes, with hysteresis.

No I/O and no timers: the sync service reports each heartbeat's outcome and the
clock is injected, so that tests drive it with plain calls. A site goes OFFLINE
after `offline_after_misses` consecutive missed heartbeats and comes back ONLINE
only after `online_after_successes` consecutive successes, so that a link that
flaps (one answer among many losses) does not flip the site back and forth.

A site starts in STARTING: it has not yet heard from the primary. The first
success makes it ONLINE (there was no outage to recover from); misses make it
OFFLINE as they would online. Offline, the site serves exactly as online (it never
depends on the primary); the mode decides whether it syncs, and later which
authorisation rules apply (offline allowances).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

log = logging.getLogger(__name__)


class Mode(StrEnum):
    STARTING = "starting"
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(frozen=True)
class Transition:
    before: Mode
    after: Mode
    at: float
    #: For OFFLINE → ONLINE, when the outage began (the time the site went offline).
    outage_started: float | None = None


class LinkMode:
    def __init__(self, *, offline_after_misses: int, online_after_successes: int,
                 clock: Callable[[], float]) -> None:
        if offline_after_misses < 1 or online_after_successes < 1:
            raise ValueError("both thresholds must be at least 1")
        self.offline_after_misses = offline_after_misses
        self.online_after_successes = online_after_successes
        self._clock = clock
        self.state = Mode.STARTING
        self.misses = 0          # consecutive
        self.successes = 0       # consecutive
        self.since = clock()
        self.history: list[Transition] = []
        self._listeners: list[Callable[[Transition], None]] = []

    @property
    def online(self) -> bool:
        return self.state is Mode.ONLINE

    def subscribe(self, listener: Callable[[Transition], None]) -> None:
        self._listeners.append(listener)

    def restore(self, state: Mode, since: float) -> None:
        """Continue an outage persisted before a restart: the site comes back OFFLINE
        (and needs its K answers) instead of STARTING, and the outage keeps its start."""
        if state is Mode.OFFLINE and self.state is Mode.STARTING:
            log.warning("sync: resuming the outage that began at %.1f: site OFFLINE", since)
            self.state = Mode.OFFLINE
            self.since = since

    def record(self, ok: bool) -> Transition | None:
        """One heartbeat outcome; returns the transition it caused, if any."""
        if ok:
            self.successes += 1
            self.misses = 0
            if self.state is Mode.STARTING:
                return self._move(Mode.ONLINE)
            if self.state is Mode.OFFLINE and self.successes >= self.online_after_successes:
                return self._move(Mode.ONLINE)
            return None
        self.misses += 1
        self.successes = 0
        if self.state is not Mode.OFFLINE and self.misses >= self.offline_after_misses:
            return self._move(Mode.OFFLINE)
        return None

    def _move(self, after: Mode) -> Transition:
        now = self._clock()
        outage = self.since if self.state is Mode.OFFLINE and after is Mode.ONLINE else None
        transition = Transition(self.state, after, now, outage)
        if after is Mode.OFFLINE:
            log.warning("sync: the primary missed %d heartbeats: site OFFLINE (was %s)",
                        self.misses, self.state.value)
        elif outage is not None:
            log.warning("sync: %d heartbeats answered: site ONLINE after %.1fs offline",
                        self.successes, now - outage)
        else:
            log.info("sync: the primary answered: site ONLINE")
        self.state = after
        self.since = now
        self.history.append(transition)
        for listener in self._listeners:
            listener(transition)
        return transition

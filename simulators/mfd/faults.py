"""Fault modes of the simulated MFD: one small value, checked in one place.

The idea is ipp-server's swappable "behaviours": the printer stays one
object, and a fault only bends what it answers or how it prints. The same
checks serve the Python API (`SimulatedMfd.set_fault`), the control API
(`POST /control/fault`) and the CLI, so that a bad request reads the same
everywhere.

- ``none``: a healthy printer.
- ``offline``: the IPP port stops listening (connection refused) until cleared.
- ``jam``: the next job to start prints ``after_pages`` impressions, then
  aborts with ``media-jam`` (a job of ``after_pages`` impressions or fewer
  prints whole, and the jam stays armed). The printer then shows ``stopped``
  with ``media-jam-error``. With ``once`` (the default) the fault returns to
  ``none`` as that job aborts and the printer resumes with the next job;
  otherwise the printer stays stopped, queued jobs wait, and they print once
  the fault is cleared.
- ``slow``: every impression takes ``page_delay`` seconds.
- ``reject``: Print-Job, Create-Job and Validate-Job are answered
  ``server-error-not-accepting-jobs``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

MODES = ("none", "offline", "jam", "slow", "reject")

#: A slow page that takes longer than this is a typo, not a test.
MAX_PAGE_DELAY = 3600.0


class FaultError(ValueError):
    """A fault request that does not make sense; the message says why."""


@dataclass(frozen=True)
class Fault:
    mode: str = "none"
    after_pages: int = 0
    page_delay: float = 0.0
    once: bool = True

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def make_fault(
    mode: Any,
    after_pages: Any = None,
    page_delay: Any = None,
    once: Any = None,
) -> Fault:
    """Check a fault request and return it; raise `FaultError` when it is wrong.

    Every parameter given is checked, even one that `mode` does not use (it is
    then ignored), so that a typo is reported rather than silently dropped.
    Defaults: ``after_pages`` 0, ``page_delay`` 1 second, ``once`` true.
    """
    if not isinstance(mode, str) or mode not in MODES:
        raise FaultError(f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    pages = 0 if after_pages is None else after_pages
    if isinstance(pages, bool) or not isinstance(pages, int) or pages < 0:
        raise FaultError(f"after_pages must be an integer >= 0, not {after_pages!r}")
    delay = 1.0 if page_delay is None else page_delay
    if isinstance(delay, bool) or not isinstance(delay, int | float):
        raise FaultError(f"page_delay must be a number of seconds, not {page_delay!r}")
    if not math.isfinite(delay) or not 0 <= delay <= MAX_PAGE_DELAY:
        raise FaultError(f"page_delay must be between 0 and {MAX_PAGE_DELAY:g} seconds")
    keep = True if once is None else once
    if not isinstance(keep, bool):
        raise FaultError(f"once must be true or false, not {once!r}")
    if mode == "jam":
        return Fault("jam", after_pages=pages, once=keep)
    if mode == "slow":
        return Fault("slow", page_delay=float(delay))
    return Fault(mode)


def fault_from_json(body: Any) -> Fault:
    """The body of `POST /control/fault`: {"mode": ..., "after_pages": ..., ...}."""
    if not isinstance(body, dict):
        raise FaultError("the body must be a JSON object")
    unknown = sorted(set(body) - {"mode", "after_pages", "page_delay", "once"})
    if unknown:
        raise FaultError(f"unknown field(s): {', '.join(unknown)}")
    if "mode" not in body:
        raise FaultError("mode is required")
    return make_fault(
        body["mode"], body.get("after_pages"), body.get("page_delay"), body.get("once")
    )

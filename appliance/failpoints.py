"""Named failpoints: places where crash tests make the daemon die (or fail) on purpose.

Armed only by the environment, read once at import:

    OUTPOST_FAILPOINTS="primary.batch.applied=kill@3,site.push.acked=raise"
    OUTPOST_FAILPOINTS_LOG=/path/hits.log      # optional: one line per hit

`kill` sends SIGKILL to this process at that instant (what kill -9 or a power cut
does to the process; SQLite's WAL with synchronous=FULL keeps what was committed);
`raise` raises `FailpointHit` (in-process tests); `@N` acts on the N-th hit only
(hits before it only count). Unarmed, `hit` is one dict lookup.

Every name is declared in `NAMES`, so that a scenario can check that each was hit
at least once (the oracle's `failpoints_hit`).
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass

NAMES = {
    "db.after_commit": "a transaction committed, before its caller acknowledged anything",
    "primary.batch.mid_apply": "in the middle of applying a pushed batch (inside its "
                               "transaction)",
    "primary.batch.applied": "the primary committed a batch, before its answer was sent",
    "site.push.acked": "the site got the primary's checkpoint, before saving it (deleting "
                       "the acknowledged outbox rows)",
}


class FailpointHit(Exception):
    pass


@dataclass
class _Armed:
    action: str
    on_hit: int | None
    hits: int = 0


def _parse(spec: str) -> dict[str, _Armed]:
    armed: dict[str, _Armed] = {}
    for item in filter(None, (part.strip() for part in spec.split(","))):
        name, _, action = item.partition("=")
        action, _, nth = action.partition("@")
        if name not in NAMES:
            raise ValueError(f"unknown failpoint {name!r} (known: {', '.join(sorted(NAMES))})")
        if action not in ("kill", "raise"):
            raise ValueError(f"failpoint {name}: action must be kill or raise, not {action!r}")
        armed[name] = _Armed(action, int(nth) if nth else None)
    return armed


_armed: dict[str, _Armed] = _parse(os.environ.get("OUTPOST_FAILPOINTS", ""))
_log_path = os.environ.get("OUTPOST_FAILPOINTS_LOG")


def arm(spec: str) -> None:
    """Replace the armed failpoints (tests in one process)."""
    global _armed
    _armed = _parse(spec)


def hit(name: str) -> None:
    point = _armed.get(name)
    if point is None:
        return
    point.hits += 1
    if point.on_hit is not None and point.hits != point.on_hit:
        return
    if _log_path:
        with open(_log_path, "a") as log:
            log.write(f"{name} {os.getpid()} {point.action}\n")
            log.flush()
            os.fsync(log.fileno())
    if point.action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    raise FailpointHit(name)

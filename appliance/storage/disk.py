"""A full disk, as the storage layer reports it to the protocols.

Two ways a site learns that its disk is full:

- a write fails: `ENOSPC` (or `EDQUOT`) from the spool's files, `SQLITE_FULL` ("database
  or disk is full") or an I/O error caused by `ENOSPC` from SQLite;
- the free-space floor (`[jobs] min_free_mb`): a new document is refused while the spool's
  filesystem has less than that free, and a document may not eat into it, so that the
  database keeps room to record the charges of what is already held.

Either way the request is refused as a whole with `DiskFull` and nothing of it stays
(no document, no job row, no ledger row); what was acknowledged before is untouched, and
new requests are accepted again as soon as space returns (nothing is latched).
"""

from __future__ import annotations

import errno
import os
import sqlite3
from pathlib import Path

#: SQLite's primary result code for "database or disk is full".
SQLITE_FULL = 13
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFull(Exception):
    """The site cannot store this request: its disk is full (or below the floor)."""


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on `path`'s filesystem."""
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def is_disk_full(exc: BaseException | None) -> bool:
    """Whether `exc` (or an exception it was raised from or during) is a full disk."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, DiskFull):
            return True
        if isinstance(exc, OSError) and exc.errno in _NO_SPACE:
            return True
        if isinstance(exc, sqlite3.Error):
            code = getattr(exc, "sqlite_errorcode", None)
            if (code is not None and code & 0xFF == SQLITE_FULL) or \
                    "database or disk is full" in str(exc):
                return True
        # `raise ... from None` hides the context, as in a traceback.
        explicit = exc.__cause__ is not None or exc.__suppress_context__
        exc = exc.__cause__ if explicit else exc.__context__
        seen += 1
    return False


def as_disk_full(exc: BaseException) -> BaseException:
    """`exc` as a `DiskFull` (chained to it) if it is a full disk; otherwise `exc`."""
    if isinstance(exc, DiskFull) or not is_disk_full(exc):
        return exc
    full = DiskFull(f"the site's disk is full ({exc})")
    full.__cause__ = exc
    return full

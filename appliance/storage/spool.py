"""The spool: where held documents live until they are printed, cancelled or expire.

A document is written to `incoming/`, then, in `commit()`, fsync'd, renamed
into the spool and the spool folder fsync'd, so that after a power cut either
the whole document is there under its final name or nothing is. Only after
that (and the job row's commit) does the IPP server answer. cupsd answers
about 30 s before its files reach the disk; we do not.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from pathlib import Path
from typing import BinaryIO

from appliance.storage.disk import DiskFull, free_bytes, is_disk_full


class SpoolFull(Exception):
    """A write would pass the per-user or total cap."""

    def __init__(self, message: str, scope: str) -> None:
        super().__init__(message)
        self.scope = scope  # 'document', 'user' or 'total'


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class IncomingDocument:
    """A document being received. Written from the reactor thread in chunks;
    `commit` (blocking: fsyncs) runs in a worker thread."""

    def __init__(self, spool: Spool, owner: str, limit: int, scope: str = "document",
                 headroom: int | None = None) -> None:
        self.spool = spool
        self.owner = owner
        self.limit = limit
        self.scope = scope  # which cap `limit` comes from
        #: Bytes this document may take before it would eat into the free-space floor.
        self.headroom = headroom
        self.name = f"{uuid.uuid4().hex}.doc"
        self.temp_path = spool.incoming / f"{self.name}.part"
        self.size = 0
        self.head = b""
        try:
            self._file: BinaryIO | None = open(self.temp_path, "wb")
        except OSError as exc:
            if is_disk_full(exc):
                raise DiskFull(f"the site's disk is full: {exc.strerror}") from exc
            raise

    def _disk_full(self, exc: OSError) -> DiskFull:
        self.discard()
        return DiskFull(f"the site's disk is full: {exc.strerror}")

    def write(self, data: bytes) -> None:
        """Append a chunk; raises SpoolFull (and discards) past a cap."""
        if self._file is None:
            raise ValueError("document already closed")
        if self.size + len(data) > self.limit:
            self.discard()
            reason = {"document": f"document larger than {self.limit} bytes",
                      "user": f"{self.owner} would hold more than the per-user spool allows",
                      "total": "the site's spool is full"}[self.scope]
            raise SpoolFull(reason, self.scope)
        if self.headroom is not None and self.size + len(data) > self.headroom:
            self.discard()
            raise DiskFull("the site's disk is nearly full: the document would go below "
                           "its free-space floor")
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]
        self.size += len(data)
        try:
            self._file.write(data)
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full(exc) from exc
            raise

    def commit(self) -> Path:
        """Make the document durable under its final name; return that path."""
        if self._file is None:
            raise ValueError("document already closed")
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
        except OSError as exc:
            if is_disk_full(exc):
                raise self._disk_full(exc) from exc
            raise
        self._file.close()
        self._file = None
        final = self.spool.root / self.name
        os.replace(self.temp_path, final)
        fsync_dir(self.spool.root)
        return final

    def discard(self) -> None:
        if self._file is not None:
            # A buffered write that cannot land (disk full) is dropped with the file.
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)


class Spool:
    """A folder of held documents with caps per user and in total."""

    def __init__(self, root: Path, *, max_document: int, max_per_user: int, max_total: int,
                 min_free: int = 0) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.max_document = max_document
        self.max_per_user = max_per_user
        self.max_total = max_total
        #: The free-space floor (bytes): no new document below it, none may eat into it.
        self.min_free = min_free
        #: How free space is measured (a test may replace it).
        self.free_bytes = free_bytes
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        for stale in self.incoming.iterdir():
            # Parts of documents whose request never completed: nothing acknowledged them.
            stale.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad spool name {name!r}")
        return self.root / name

    def check_free(self) -> int:
        """Bytes a new document may take before the floor; raises DiskFull at the floor."""
        headroom = self.free_bytes(self.root) - self.min_free
        if headroom <= 0:
            raise DiskFull("the site's disk is full: no new jobs until space is freed")
        return headroom

    def begin(self, owner: str, used_by_owner: int, used_total: int) -> IncomingDocument:
        """Start a document; caps leave room for what is already held; raises DiskFull
        when the disk is below its free-space floor."""
        headroom = self.check_free()
        if used_total >= self.max_total:
            raise SpoolFull("the site's spool is full", "total")
        if used_by_owner >= self.max_per_user:
            raise SpoolFull(f"{owner} has too many held documents", "user")
        limits = {"document": self.max_document, "user": self.max_per_user - used_by_owner,
                  "total": self.max_total - used_total}
        scope = min(limits, key=lambda k: limits[k])
        return IncomingDocument(self, owner, limits[scope], scope, headroom)

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_file()}

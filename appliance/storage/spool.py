"""The spool: where held documents live until they are printed, cancelled or expire.

A document is written to `incoming/`, then, in `commit()`, fsync'd, renamed
into the spool and the spool folder fsync'd, so that after a power cut either
the whole document is there under its final name or nothing is. Only after
that (and the job row's commit) does the IPP server answer. cupsd answers
about 30 s before its files reach the disk; we do not.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import BinaryIO


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

    def __init__(self, spool: Spool, owner: str, limit: int, scope: str = "document") -> None:
        self.spool = spool
        self.owner = owner
        self.limit = limit
        self.scope = scope  # which cap `limit` comes from
        self.name = f"{uuid.uuid4().hex}.doc"
        self.temp_path = spool.incoming / f"{self.name}.part"
        self.size = 0
        self.head = b""
        self._file: BinaryIO | None = open(self.temp_path, "wb")

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
        if len(self.head) < 4096:
            self.head += data[: 4096 - len(self.head)]
        self.size += len(data)
        self._file.write(data)

    def commit(self) -> Path:
        """Make the document durable under its final name; return that path."""
        if self._file is None:
            raise ValueError("document already closed")
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._file = None
        final = self.spool.root / self.name
        os.replace(self.temp_path, final)
        fsync_dir(self.spool.root)
        return final

    def discard(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)


class Spool:
    """A folder of held documents with caps per user and in total."""

    def __init__(self, root: Path, *, max_document: int, max_per_user: int, max_total: int) -> None:
        self.root = root
        self.incoming = root / "incoming"
        self.max_document = max_document
        self.max_per_user = max_per_user
        self.max_total = max_total
        self.root.mkdir(parents=True, exist_ok=True)
        self.incoming.mkdir(exist_ok=True)
        for stale in self.incoming.iterdir():
            # Parts of documents whose request never completed: nothing acknowledged them.
            stale.unlink(missing_ok=True)

    def path(self, name: str) -> Path:
        if "/" in name or name.startswith("."):
            raise ValueError(f"bad spool name {name!r}")
        return self.root / name

    def begin(self, owner: str, used_by_owner: int, used_total: int) -> IncomingDocument:
        """Start a document; caps leave room for what is already held."""
        if used_total >= self.max_total:
            raise SpoolFull("the site's spool is full", "total")
        if used_by_owner >= self.max_per_user:
            raise SpoolFull(f"{owner} has too many held documents", "user")
        limits = {"document": self.max_document, "user": self.max_per_user - used_by_owner,
                  "total": self.max_total - used_total}
        scope = min(limits, key=lambda k: limits[k])
        return IncomingDocument(self, owner, limits[scope], scope)

    def delete(self, name: str) -> None:
        self.path(name).unlink(missing_ok=True)

    def names(self) -> set[str]:
        return {p.name for p in self.root.iterdir() if p.is_file()}

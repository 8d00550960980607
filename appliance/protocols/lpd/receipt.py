"""The job a receive-job command is building (RFC 1179), sans-io: its control file and
the data files received so far, in either order, and when it is whole.

The site's server (`server.py`, documents are the spool's `IncomingDocument`s) and the
simulated MFD (`simulators/mfd/lpd.py`, plain files) keep the same bookkeeping here;
what a document is, and what is done with a whole job, is theirs.
"""

from __future__ import annotations

from typing import Generic, Protocol, TypeVar

from .parser import ControlFile, Document


class Spooled(Protocol):
    """A data file being received or received: written in chunks, dropped on failure."""

    def write(self, data: bytes) -> object: ...
    def discard(self) -> None: ...


D = TypeVar("D", bound=Spooled)


class SecondControlFile(ValueError):
    """A receive-job command sent two control files for one job."""


class Receipt(Generic[D]):
    """One job being received: `control` (or None yet), the data files received by
    name (a file sent again replaces the first), and the one arriving (`current`)."""

    def __init__(self) -> None:
        self.control: ControlFile | None = None
        self.files: dict[str, D] = {}
        self.current: tuple[str, D] | None = None

    def take_control(self, control: ControlFile) -> None:
        if self.control is not None:
            raise SecondControlFile("a second control file for one job")
        self.control = control

    def begin_file(self, name: str, document: D) -> None:
        self.current = (name, document)

    def write(self, data: bytes) -> None:
        assert self.current is not None, "the parser sends chunks only inside a data file"
        self.current[1].write(data)

    def end_file(self) -> D:
        """The arriving data file is complete: keep it under its name; returns it."""
        assert self.current is not None, "the parser ends only a data file it began"
        name, document = self.current
        self.current = None
        previous = self.files.pop(name, None)
        if previous is not None:
            previous.discard()
        self.files[name] = document
        return document

    def whole(self) -> tuple[ControlFile, list[Document]] | None:
        """The control file and the documents it prints, once every data file it prints
        is here (take each with `files.pop(spec.filename)`); None until then."""
        if self.control is None:
            return None
        documents = self.control.documents()
        if any(d.filename not in self.files for d in documents):
            return None
        return self.control, documents

    @property
    def started(self) -> bool:
        """Whether anything of the job has arrived."""
        return bool(self.files or self.control or self.current)

    def drop_leftovers(self) -> None:
        """Discard data files the control file does not print."""
        for document in self.files.values():
            document.discard()
        self.files.clear()

    def discard(self) -> None:
        """Discard every document of the unfinished job."""
        if self.current is not None:
            self.current[1].discard()
            self.current = None
        self.drop_leftovers()
        self.control = None

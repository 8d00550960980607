"""The simulated MFD's LPD endpoint (RFC 1179), on the shared sans-io parser.

A job received here enters the same print pipeline as an IPP Print-Job:
`create_job` → `add_document` (spooled, fsync'd) → `close_job`, so its
document is written byte-identical to the output folder and its impressions
advance the life counters. Each data file its control file prints becomes a
job (owner: P, name: J or N, copies: how many print lines name the file);
the acknowledgement of the file that completes the job is sent after its
documents are spooled. Like many real devices it takes any queue name.

Faults: `offline` drops LPD connections at once (nothing listens, as far as
a client can tell), `reject` answers receive-job with the negative
acknowledgement; the other faults act on printing, as for IPP.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from twisted.internet import protocol
from twisted.logger import Logger

from appliance.protocols.lpd import parser as wire
from appliance.protocols.lpd.parser import ACK, NACK, Event, QueueState, RemoveJobs
from appliance.protocols.lpd.receipt import Receipt, SecondControlFile

log = Logger()

#: The simulator takes documents up to this size over LPD.
MAX_DOCUMENT = 512 * 1024 * 1024


class _Refused(Exception):
    pass


class _SpoolFile:
    """A data file of an LPD job, written to the MFD's state folder as it arrives."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "wb")

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def close(self) -> None:
        self.handle.close()

    def discard(self) -> None:
        self.handle.close()
        self.path.unlink(missing_ok=True)

    def chunks(self, size: int = 64 * 1024) -> Iterator[bytes]:
        with open(self.path, "rb") as source:
            while chunk := source.read(size):
                yield chunk


class MfdLpdProtocol(protocol.Protocol):
    """One LPD connection to the simulated MFD; events are handled as they come."""

    def __init__(self, mfd: Any) -> None:
        self.mfd = mfd
        self.parser = wire.Parser(max_data=MAX_DOCUMENT)
        self.receipt: Receipt[_SpoolFile] | None = None
        self.closing = False

    @property
    def _transport(self) -> Any:
        return self.transport

    def connectionMade(self) -> None:
        if self.mfd.fault.mode == "offline":
            self.closing = True
            self._transport.abortConnection()

    def dataReceived(self, data: bytes) -> None:
        self._run(self.parser.feed(data))

    def connectionLost(self, reason: Any = None) -> None:
        self._run(self.parser.end())
        self.closing = True
        if self.receipt is not None:
            self.receipt.discard()
            self.receipt = None

    def _run(self, events: list[Event]) -> None:
        for event in events:
            if self.closing:
                return
            try:
                self._handle(event)
            except (_Refused, SecondControlFile) as exc:
                self._refuse(str(exc))
            except Exception:
                log.failure("LPD job failed")
                self._refuse("internal error")

    def _refuse(self, reason: str) -> None:
        log.info("LPD: refused: {reason}", reason=reason)
        if self.receipt is not None:
            self.receipt.discard()
            self.receipt = None
        self._transport.write(NACK)
        self._close()

    def _close(self, text: bytes = b"") -> None:
        if text:
            self._transport.write(text)
        self.closing = True
        self._transport.loseConnection()

    def _ack(self) -> None:
        self._transport.write(ACK)

    def _handle(self, event: Event) -> None:
        receipt = self.receipt
        if isinstance(event, wire.DataChunk):
            assert receipt is not None
            receipt.write(event.data)
        elif isinstance(event, wire.ReceiveJob):
            if not self.mfd.accepting:
                raise _Refused("the printer is not accepting jobs")
            self.receipt = Receipt()
            self._ack()
        elif isinstance(event, wire.ControlFileHeader):
            self._ack()
        elif isinstance(event, wire.ControlFileReceived):
            assert receipt is not None
            if not event.control.user:
                raise _Refused("a control file without P (user)")
            receipt.take_control(event.control)
            self._complete_if_whole()
            self._ack()
        elif isinstance(event, wire.DataFileHeader):
            assert receipt is not None
            folder = self.mfd.state_dir / "lpd"
            folder.mkdir(parents=True, exist_ok=True)
            receipt.begin_file(event.name, _SpoolFile(folder / f"{uuid.uuid4().hex}.part"))
            self._ack()
        elif isinstance(event, wire.DataFileReceived):
            assert receipt is not None
            receipt.end_file().close()
            self._complete_if_whole()
            self._ack()
        elif isinstance(event, wire.AbortJob):
            if receipt is not None:
                receipt.discard()
            self._ack()
        elif isinstance(event, wire.ConnectionEnded):
            if receipt is not None:
                receipt.discard()
                self.receipt = None
            self._close()
        elif isinstance(event, wire.Malformed):
            raise _Refused(event.reason)
        elif isinstance(event, wire.PrintWaiting):
            self._ack()
            self._close()
        elif isinstance(event, QueueState):
            self._close(self._queue_state(event).encode("utf-8"))
        elif isinstance(event, RemoveJobs):
            self._close(self._remove(event).encode("utf-8"))

    def _complete_if_whole(self) -> None:
        receipt = self.receipt
        assert receipt is not None
        whole = receipt.whole()
        if whole is None:
            return
        control, documents = whole
        for spec in documents:
            file = receipt.files.pop(spec.filename)
            try:
                job = self.mfd.create_job(self.mfd.lpd_uri or "lpd://", control.name_for(spec),
                                          control.user or "anonymous", copies=spec.copies)
                self.mfd.add_document(job, spec.mime or "application/octet-stream",
                                      file.chunks())
            finally:
                file.discard()
            self.mfd.close_job(job)
        receipt.drop_leftovers()
        self.receipt = Receipt()

    def _queue_state(self, event: QueueState) -> str:
        jobs = [j for j in self.mfd.queued_jobs()
                if not event.items or str(j.id) in event.items or j.user in event.items]
        lines = [f"{self.mfd.name} is {'ready' if self.mfd.accepting else 'not accepting jobs'}"]
        lines += [f"{rank:<5} {j.user[:10]:<11} {j.id:<6} {j.name[:37]:<38} {j.size} bytes"
                  for rank, j in enumerate(jobs, 1)] or ["no entries"]
        return "\n".join(lines) + "\n"

    def _remove(self, event: RemoveJobs) -> str:
        mine = [j for j in self.mfd.queued_jobs() if j.user == event.agent]
        chosen = [j for j in mine if not event.items or str(j.id) in event.items
                  or event.agent in event.items or "-" in event.items]
        for job in chosen if event.items else mine[:1]:
            self.mfd.cancel_job(job)
        return "".join(f"job {j.id} dequeued\n" for j in (chosen if event.items else mine[:1]))


class MfdLpdFactory(protocol.Factory):
    noisy = False

    def __init__(self, mfd: Any) -> None:
        self.mfd = mfd

    def buildProtocol(self, addr: Any) -> protocol.Protocol:
        return MfdLpdProtocol(self.mfd)


def clean_spool(state_dir: Path) -> None:
    """Remove parts of LPD transfers that never completed (at start-up)."""
    folder = state_dir / "lpd"
    if folder.is_dir():
        for stale in folder.iterdir():
            os.unlink(stale)

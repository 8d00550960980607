"""An LPD client (RFC 1179) on Twisted: print a file, read queue state, remove jobs.

`LpdClient.print_file` is one receive-job conversation: `02 queue`, the
control file (`02 count cfA<nnn><host>`), the data file (`03 count
dfA<nnn><host>`, streamed from disk with a `FileSender`), each answered by
the server's acknowledgement octet (0: yes). Any other octet is a refusal
(`LpdRefused`); a connection that fails, closes or stays silent past the
timeout is an `LpdError`. The job is the server's once the data file's
acknowledgement arrived, and only then does `print_file` return.
"""

from __future__ import annotations

import itertools
import random
import re
import socket
from pathlib import Path
from typing import Any

from twisted.internet import defer, protocol
from twisted.internet.endpoints import HostnameEndpoint, connectProtocol
from twisted.protocols.basic import FileSender

from .parser import build_control_file


class LpdError(Exception):
    """The conversation failed: no connection, a closed connection or a time-out."""


class LpdRefused(LpdError):
    """The server answered a step with a negative acknowledgement."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class _Conversation(protocol.Protocol):
    """Reads one acknowledgement octet at a time, or everything until the server closes."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._waiting: defer.Deferred[int] | None = None
        self.closed: defer.Deferred[bytes] = defer.Deferred()
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self._buffer += data
        self._deliver()

    def connectionLost(self, reason: Any = None) -> None:
        self.lost = True
        waiting, self._waiting = self._waiting, None
        if waiting is not None:
            waiting.errback(LpdError("the server closed the connection"))
        self.closed.callback(bytes(self._buffer))

    def _deliver(self) -> None:
        if self._waiting is not None and self._buffer:
            code = self._buffer[0]
            del self._buffer[:1]
            waiting, self._waiting = self._waiting, None
            waiting.callback(code)

    def ack(self) -> defer.Deferred[int]:
        if self.lost:
            return defer.fail(LpdError("the server closed the connection"))
        self._waiting = defer.Deferred()
        waiting = self._waiting
        self._deliver()
        return waiting

    def write(self, data: bytes) -> None:
        if self.lost:
            raise LpdError("the server closed the connection")
        assert self.transport is not None
        self.transport.write(data)

    def close(self) -> None:
        transport: Any = self.transport
        if transport is not None and not self.lost:
            transport.loseConnection()

    def abort(self) -> None:
        transport: Any = self.transport
        if transport is not None and not self.lost:
            transport.abortConnection()


def _host_label(name: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9.-]", "", name.split(".")[0])
    return cleaned[:15] or "outpost"


class LpdClient:
    """Talks RFC 1179 to `host:port`. One connection per call."""

    def __init__(self, reactor: Any, *, timeout: float = 30.0, hostname: str | None = None,
                 data_first: bool = False) -> None:
        self.reactor = reactor
        self.timeout = timeout
        self.hostname = _host_label(hostname or socket.gethostname())
        self.data_first = data_first
        self._numbers = itertools.count(random.randrange(1000))

    def next_job_number(self) -> int:
        return next(self._numbers) % 1000

    async def _connect(self, host: str, port: int) -> _Conversation:
        endpoint = HostnameEndpoint(self.reactor, host, port, timeout=max(1, int(self.timeout)))
        try:
            conversation: _Conversation = await connectProtocol(endpoint, _Conversation())
        except Exception as exc:
            raise LpdError(f"cannot connect to {host}:{port}: {exc}") from exc
        return conversation

    async def _acknowledged(self, conversation: _Conversation, what: str) -> None:
        waiting = conversation.ack()
        waiting.addTimeout(self.timeout, self.reactor)
        try:
            code = await waiting
        except defer.TimeoutError as exc:
            raise LpdError(f"no answer to {what} within {self.timeout:g}s") from exc
        if code != 0:
            raise LpdRefused(f"the server refused {what} (answer {code})", code)

    async def print_file(self, host: str, port: int, queue: str, document: Path, *, user: str,
                         job_name: str, copies: int = 1, format: str = "l") -> int:
        """Send `document` as one job; return its job number once the server acknowledged it."""
        size = document.stat().st_size
        if size == 0:
            raise LpdError("an empty document cannot be sent over LPD (count 0 means "
                           "'unknown length')")
        number = self.next_job_number()
        data_name = f"dfA{number:03d}{self.hostname}"
        control_name = f"cfA{number:03d}{self.hostname}"
        control = build_control_file(host=self.hostname, user=user, job_name=job_name,
                                     data_file=data_name, copies=copies, format=format)
        conversation = await self._connect(host, port)
        try:
            conversation.write(b"\x02" + queue.encode("utf-8") + b"\n")
            await self._acknowledged(conversation, f"queue {queue!r}")
            if self.data_first:
                await self._send_data(conversation, data_name, document, size)
                await self._send_control(conversation, control_name, control)
            else:
                await self._send_control(conversation, control_name, control)
                await self._send_data(conversation, data_name, document, size)
        except BaseException:
            conversation.abort()
            raise
        conversation.close()
        return number

    async def _send_control(self, conversation: _Conversation, name: str,
                            control: bytes) -> None:
        conversation.write(b"\x02%d %s\n" % (len(control), name.encode()))
        await self._acknowledged(conversation, "the control file's subcommand")
        conversation.write(control + b"\x00")
        await self._acknowledged(conversation, "the control file")

    async def _send_data(self, conversation: _Conversation, name: str, document: Path,
                         size: int) -> None:
        conversation.write(b"\x03%d %s\n" % (size, name.encode()))
        await self._acknowledged(conversation, "the data file's subcommand")
        with open(document, "rb") as source:
            sending = FileSender().beginFileTransfer(source, conversation.transport)
            closed = conversation.closed
            done = defer.DeferredList([sending, closed], fireOnOneCallback=True,
                                      fireOnOneErrback=True, consumeErrors=True)
            await done
        if conversation.lost:
            raise LpdError("the server closed the connection during the data file")
        conversation.write(b"\x00")
        await self._acknowledged(conversation, "the data file")

    async def _text(self, host: str, port: int, line: bytes) -> str:
        conversation = await self._connect(host, port)
        closed = conversation.closed
        closed.addTimeout(self.timeout, self.reactor)
        try:
            conversation.write(line)
            raw = await closed
        except defer.TimeoutError as exc:
            conversation.abort()
            raise LpdError(f"no end of answer within {self.timeout:g}s") from exc
        return raw.decode("utf-8", "replace")

    async def queue_state(self, host: str, port: int, queue: str, *, long: bool = False,
                          items: tuple[str, ...] = ()) -> str:
        """Commands 03/04: the queue's state as the server words it."""
        code = b"\x04" if long else b"\x03"
        return await self._text(host, port, code + " ".join((queue, *items)).encode() + b"\n")

    async def remove_jobs(self, host: str, port: int, queue: str, agent: str,
                          items: tuple[str, ...] = ()) -> str:
        """Command 05: remove `agent`'s jobs (job numbers or user names in `items`)."""
        return await self._text(host, port,
                                b"\x05" + " ".join((queue, agent, *items)).encode() + b"\n")

"""RFC 1179 (LPD), sans-io: bytes in, typed events out; control files both ways.

`Parser` is one connection's inbound half. Feed it what the socket gave
(`feed`), tell it when the peer stopped sending (`end`), and act on the
events it returns, in order. It never raises on input: anything that is not
RFC 1179 becomes one `Malformed` event, after which the parser is dead and
the caller answers with the negative acknowledgement (`NACK`) and closes.
It sends nothing itself: acknowledging is the caller's job, because only the
caller knows whether a queue exists or a file was stored.

Daemon commands (first octet of the connection):

| octet | command | event |
|---|---|---|
| 01 | print any waiting jobs | `PrintWaiting` |
| 02 | receive a printer job | `ReceiveJob`, then subcommands |
| 03 | send queue state (short) | `QueueState(long=False)` |
| 04 | send queue state (long) | `QueueState(long=True)` |
| 05 | remove jobs | `RemoveJobs` |

Receive-job subcommands: 01 abort (`AbortJob`), 02 control file
(`ControlFileHeader`, then `ControlFileReceived` with the parsed
`ControlFile`), 03 data file (`DataFileHeader`, `DataChunk`s,
`DataFileReceived`). Control and data files may come in either order and a
job may have several data files. After 01, 03, 04 and 05 the connection
carries nothing more; later octets are ignored.

Two things beyond the letter of the RFC, both seen in the wild:
- a data file announced with count 0 is "of unknown length" (LPRng's
  extension): every octet until the peer stops sending is its content;
- a file whose every counted octet arrived is complete even if the peer
  closes before the terminating zero octet (CUPS's lpd backend in
  `mode=stream` sends no zero octet).

Limits: a command line of at most `max_line` octets, a control file of at
most `max_control` octets, a data file of at most `max_data` octets (None:
no limit here; the spool has its own). Past a limit: `Malformed`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

ACK = b"\x00"
NACK = b"\x01"

DEFAULT_PORT = 515
MAX_LINE = 1024
MAX_CONTROL = 64 * 1024
#: More print lines than this in one control file is not a job but an attack.
MAX_PRINT_LINES = 1000

#: RFC 1179 7.2-7.4: the print-format letters. LPRng takes any lower-case letter
#: as a format; so do we.
RFC_FORMATS = "cdfgklnoprtvz"
#: What a print-format letter says about the document (None: look at the content).
FORMAT_MIME = {"o": "application/postscript"}

_COUNT = re.compile(rb"^([0-9]{1,18})[ \t]+([\x21-\x7e]{1,255})$")
_NAME = re.compile(r"^[\x21-\x7e]{1,255}$")


# ---------------------------------------------------------------- events


@dataclass(frozen=True)
class PrintWaiting:
    queue: str


@dataclass(frozen=True)
class ReceiveJob:
    queue: str


@dataclass(frozen=True)
class QueueState:
    queue: str
    long: bool
    items: tuple[str, ...]      # user names or job numbers; empty: all


@dataclass(frozen=True)
class RemoveJobs:
    queue: str
    agent: str                  # who asks (the RFC's "agent"; not authenticated)
    items: tuple[str, ...]      # user names or job numbers; empty: the agent's active job


@dataclass(frozen=True)
class AbortJob:
    pass


@dataclass(frozen=True)
class ControlFileHeader:
    size: int
    name: str


@dataclass(frozen=True)
class ControlFileReceived:
    name: str
    raw: bytes
    control: ControlFile


@dataclass(frozen=True)
class DataFileHeader:
    size: int | None            # None: unknown length (count 0), until the peer stops
    name: str


@dataclass(frozen=True)
class DataChunk:
    data: bytes


@dataclass(frozen=True)
class DataFileReceived:
    name: str
    size: int


@dataclass(frozen=True)
class ConnectionEnded:
    """The peer stopped sending between commands: nothing was cut short."""


@dataclass(frozen=True)
class Malformed:
    """Not RFC 1179 (or past a limit). The parser is dead: NACK and close."""

    reason: str


Event = (PrintWaiting | ReceiveJob | QueueState | RemoveJobs | AbortJob | ControlFileHeader
         | ControlFileReceived | DataFileHeader | DataChunk | DataFileReceived
         | ConnectionEnded | Malformed)


# ---------------------------------------------------------------- control files


class ControlFileError(ValueError):
    pass


@dataclass(frozen=True)
class PrintLine:
    format: str                 # the print-format letter ('l', 'f', 'o', ...)
    filename: str               # the data file it prints
    source: str | None = None   # its N line (the file it was made from), if any


@dataclass(frozen=True)
class Document:
    """One data file a control file prints, with how many times (copies)."""

    filename: str
    format: str
    copies: int
    source: str | None

    @property
    def mime(self) -> str | None:
        return FORMAT_MIME.get(self.format)


@dataclass(frozen=True)
class ControlFile:
    host: str | None = None
    user: str | None = None             # P: the owner
    job_name: str | None = None         # J
    job_class: str | None = None        # C
    banner: str | None = None           # L
    title: str | None = None            # T
    mail: str | None = None             # M
    prints: tuple[PrintLine, ...] = ()
    unlink: tuple[str, ...] = ()        # U
    sources: tuple[str, ...] = ()       # N, in order
    other: tuple[tuple[str, str], ...] = field(default=())

    def documents(self) -> list[Document]:
        """The distinct data files printed, in order; a file named by k print lines
        is printed k times (that is how RFC 1179 says copies)."""
        found: dict[str, Document] = {}
        for line in self.prints:
            seen = found.get(line.filename)
            if seen is None:
                found[line.filename] = Document(line.filename, line.format, 1, line.source)
            else:
                found[line.filename] = Document(seen.filename, seen.format, seen.copies + 1,
                                                seen.source or line.source)
        return list(found.values())

    def name_for(self, document: Document) -> str:
        """A job name: J, or for one of several files its N, else N, else the file name."""
        several = len({p.filename for p in self.prints}) > 1
        if several and document.source:
            return document.source
        return self.job_name or document.source or document.filename


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def parse_control_file(raw: bytes) -> ControlFile:
    """RFC 1179 section 7. Raises ControlFileError (only) on what no job can be made of."""
    if b"\x00" in raw:
        raise ControlFileError("a control file holds text, not zero octets")
    values: dict[str, str] = {}
    prints: list[PrintLine] = []
    unlink: list[str] = []
    sources: list[str] = []
    other: list[tuple[str, str]] = []
    #: N names the file of the print lines before it (BSD lpr, CUPS, rlpr put it after
    #: them); an N before any print line names the next one.
    pending_source: str | None = None
    sourced = 0  # print lines before this index already have their N
    for number, line_bytes in enumerate(raw.split(b"\n"), 1):
        line_bytes = line_bytes.removesuffix(b"\r")
        if not line_bytes:
            continue
        line = _text(line_bytes)
        letter, operand = line[0], line[1:]
        if ord(letter) < 0x20 or letter == "\x7f":
            raise ControlFileError(f"line {number} begins with a control character")
        if "a" <= letter <= "z":
            if not _NAME.match(operand) or "/" in operand:
                raise ControlFileError(f"line {number}: bad data file name {operand!r}")
            if len(prints) >= MAX_PRINT_LINES:
                raise ControlFileError(f"more than {MAX_PRINT_LINES} print lines")
            prints.append(PrintLine(letter, operand, pending_source))
            pending_source = None
        elif letter == "N":
            sources.append(operand)
            if len(prints) > sourced:
                for i in range(sourced, len(prints)):
                    prints[i] = PrintLine(prints[i].format, prints[i].filename, operand)
                sourced = len(prints)
            else:
                pending_source = operand
        elif letter == "U":
            unlink.append(operand)
        elif letter in "HPJCLTM":
            values.setdefault(letter, operand)   # the first one counts
        else:
            other.append((letter, operand))
    return ControlFile(
        host=values.get("H"), user=values.get("P"), job_name=values.get("J"),
        job_class=values.get("C"), banner=values.get("L"), title=values.get("T"),
        mail=values.get("M"), prints=tuple(prints), unlink=tuple(unlink),
        sources=tuple(sources), other=tuple(other),
    )


def _clean(value: str, limit: int) -> str:
    """An operand fit for a control-file line: no line breaks, at most `limit` octets."""
    value = value.replace("\n", " ").replace("\r", " ").replace("\x00", "")
    return value.encode("utf-8")[:limit].decode("utf-8", "ignore")


def build_control_file(*, host: str, user: str, job_name: str, data_file: str,
                       copies: int = 1, format: str = "l", source: str | None = None,
                       banner: bool = False) -> bytes:
    """A control file printing `data_file` `copies` times (RFC 1179 field limits)."""
    host = _clean(host, 31)
    lines = [f"H{host}", f"P{_clean(user, 31)}", f"J{_clean(job_name, 99)}"]
    if banner:
        lines += [f"C{host}", f"L{_clean(user, 31)}"]
    lines += [f"{format}{data_file}"] * max(1, copies)
    lines += [f"U{data_file}", f"N{_clean(source if source is not None else job_name, 131)}"]
    return ("\n".join(lines) + "\n").encode("utf-8")


# ---------------------------------------------------------------- URIs


def parse_lpd_uri(uri: str) -> tuple[str, int, str]:
    """`lpd://host[:port]/queue` → (host, port, queue); raises ValueError."""
    parts = urlsplit(uri)
    if parts.scheme != "lpd":
        raise ValueError(f"not an lpd:// URI: {uri!r}")
    if not parts.hostname:
        raise ValueError(f"no host in {uri!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"bad port in {uri!r}") from exc
    queue = unquote(parts.path.lstrip("/"))
    if not queue or "/" in queue or not _NAME.match(queue):
        raise ValueError(f"expected lpd://host[:port]/queue, got {uri!r}")
    return parts.hostname, port, queue


# ---------------------------------------------------------------- the parser

_COMMAND, _SUBCOMMAND, _CONTROL, _CONTROL_END, _DATA, _DATA_END, _DONE, _DEAD = range(8)


class Parser:
    """One LPD connection, server side. See the module docstring."""

    def __init__(self, *, max_line: int = MAX_LINE, max_control: int = MAX_CONTROL,
                 max_data: int | None = None) -> None:
        self.max_line = max_line
        self.max_control = max_control
        self.max_data = max_data
        self._buf = bytearray()
        self._state = _COMMAND
        self._name = ""
        self._size: int | None = 0
        self._got = 0
        self._control = bytearray()

    @property
    def finished(self) -> bool:
        """No more events will come (after `Malformed` or `end`)."""
        return self._state == _DEAD

    @property
    def receiving(self) -> bool:
        """Inside a receive-job command (subcommands are what may come next)."""
        return self._state in (_SUBCOMMAND, _CONTROL, _CONTROL_END, _DATA, _DATA_END)

    def feed(self, data: bytes) -> list[Event]:
        if self._state in (_DONE, _DEAD) or not data:
            return []
        self._buf += data
        events: list[Event] = []
        while self._buf and self._state not in (_DONE, _DEAD):
            if not self._step(events):
                break
        return events

    def end(self) -> list[Event]:
        """The peer stopped sending (EOF or connection lost)."""
        state, self._state = self._state, _DEAD
        if state == _DEAD:
            return []
        if state == _DONE:
            return [ConnectionEnded()]
        if state in (_COMMAND, _SUBCOMMAND):
            if self._buf:
                return [Malformed("the connection ended inside a command line")]
            return [ConnectionEnded()]
        if state in (_CONTROL, _CONTROL_END):
            if len(self._control) + len(self._buf) >= (self._size or 0):
                raw = (bytes(self._control) + bytes(self._buf))[: self._size]
                done = self._control_done(raw)
                self._state = _DEAD
                return done if isinstance(done[-1], Malformed) else [*done, ConnectionEnded()]
            return [Malformed(f"truncated control file {self._name}: "
                              f"{len(self._control)} of {self._size} octets")]
        # _DATA, _DATA_END
        events: list[Event] = []
        if self._size is None or state == _DATA_END:
            events.append(DataFileReceived(self._name, self._got))
            events.append(ConnectionEnded())
            return events
        return [Malformed(f"truncated data file {self._name}: {self._got} of {self._size} octets")]

    # ------------------------------------------------------------ states

    def _fail(self, events: list[Event], reason: str) -> bool:
        events.append(Malformed(reason))
        self._state = _DEAD
        self._buf.clear()
        return False

    def _line(self, events: list[Event]) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) >= self.max_line:
                self._fail(events, f"a command line longer than {self.max_line} octets")
            return None
        if end + 1 > self.max_line:
            self._fail(events, f"a command line longer than {self.max_line} octets")
            return None
        line = bytes(self._buf[:end])
        del self._buf[: end + 1]
        return line.removesuffix(b"\r")

    def _step(self, events: list[Event]) -> bool:
        state = self._state
        if state == _COMMAND:
            line = self._line(events)
            return line is not None and self._command(line, events)
        if state == _SUBCOMMAND:
            line = self._line(events)
            return line is not None and self._subcommand(line, events)
        if state == _CONTROL:
            assert self._size is not None
            take = min(self._size - len(self._control), len(self._buf))
            self._control += self._buf[:take]
            del self._buf[:take]
            if len(self._control) == self._size:
                self._state = _CONTROL_END
            return True
        if state == _CONTROL_END:
            if self._buf[0] != 0:
                return self._fail(events, f"control file {self._name} is longer than "
                                          f"announced (no zero octet after {self._size})")
            del self._buf[:1]
            raw = bytes(self._control)
            events.extend(self._control_done(raw))
            return self._state != _DEAD
        if state == _DATA:
            room = len(self._buf) if self._size is None else self._size - self._got
            take = min(room, len(self._buf))
            if self.max_data is not None and self._got + take > self.max_data:
                return self._fail(events, f"data file {self._name} is larger than "
                                          f"{self.max_data} octets")
            if take:
                events.append(DataChunk(bytes(self._buf[:take])))
                del self._buf[:take]
                self._got += take
            if self._size is not None and self._got == self._size:
                self._state = _DATA_END
            return True
        if state == _DATA_END:
            if self._buf[0] != 0:
                return self._fail(events, f"data file {self._name} is longer than "
                                          f"announced (no zero octet after {self._size})")
            del self._buf[:1]
            events.append(DataFileReceived(self._name, self._got))
            self._state = _SUBCOMMAND
            return True
        return False

    def _command(self, line: bytes, events: list[Event]) -> bool:
        if not line:
            return self._fail(events, "an empty command line")
        code, rest = line[0], line[1:]
        if code not in (1, 2, 3, 4, 5):
            return self._fail(events, f"unknown daemon command 0x{code:02x}")
        try:
            words = rest.decode("utf-8").replace("\t", " ").split(" ")
        except UnicodeDecodeError:
            return self._fail(events, "a command line that is not UTF-8")
        words = [w for w in words if w]
        if not words or not _queue_ok(words[0]):
            return self._fail(events, f"daemon command 0x{code:02x} without a valid queue name")
        queue, operands = words[0], tuple(words[1:])
        if any(not _NAME.match(w) for w in operands):
            return self._fail(events, "an operand with control characters")
        if code == 1:
            events.append(PrintWaiting(queue))
        elif code == 2:
            events.append(ReceiveJob(queue))
            self._state = _SUBCOMMAND
            return True
        elif code in (3, 4):
            events.append(QueueState(queue, code == 4, operands))
        else:
            if not operands:
                return self._fail(events, "remove jobs (0x05) without an agent")
            events.append(RemoveJobs(queue, operands[0], operands[1:]))
        self._state = _DONE
        self._buf.clear()
        return False

    def _subcommand(self, line: bytes, events: list[Event]) -> bool:
        if not line:
            return self._fail(events, "an empty subcommand line")
        code, rest = line[0], line[1:]
        if code == 1:
            events.append(AbortJob())
            return True
        if code not in (2, 3):
            return self._fail(events, f"unknown receive-job subcommand 0x{code:02x}")
        what = "control" if code == 2 else "data"
        match = _COUNT.match(rest)
        if match is None:
            return self._fail(events, f"a {what}-file subcommand without 'count SP name'")
        size, name = int(match.group(1)), match.group(2).decode("ascii")
        if "/" in name:
            return self._fail(events, f"a {what}-file name with '/': {name!r}")
        self._name = name
        if code == 2:
            if size == 0:
                return self._fail(events, "an empty control file")
            if size > self.max_control:
                return self._fail(events, f"control file of {size} octets (limit "
                                          f"{self.max_control})")
            self._size = size
            self._control = bytearray()
            self._state = _CONTROL
            events.append(ControlFileHeader(size, name))
            return True
        if self.max_data is not None and size > self.max_data:
            return self._fail(events, f"data file of {size} octets (limit {self.max_data})")
        self._size = size or None
        self._got = 0
        self._state = _DATA
        events.append(DataFileHeader(self._size, name))
        return True

    def _control_done(self, raw: bytes) -> list[Event]:
        try:
            control = parse_control_file(raw)
        except ControlFileError as exc:
            self._state = _DEAD
            self._buf.clear()
            return [Malformed(f"control file {self._name}: {exc}")]
        self._state = _SUBCOMMAND if self._state != _DEAD else _DEAD
        self._control = bytearray()
        return [ControlFileReceived(self._name, raw, control)]


def _queue_ok(name: str) -> bool:
    return bool(_NAME.match(name)) and "/" not in name

"""Sans-io codec for IPP/1.x messages (RFC 8010).

Bytes in, typed values out, and back; no sockets, no Twisted, no SQL. The
server adapter (`server.py`), the client (`client.py`) and the MFD simulator
all speak IPP through this module, so a fix here fixes every side.

Why our own: pyipp drops value tags, cannot encode collections and fails on
values over 32767 octets, so it cannot serve as a server codec.

Lengths on the wire are signed 16-bit. We never *encode* a value longer than
32767 octets (`EncodeError`), but we *read* lengths up to 65535 leniently,
because some clients send them.
"""

from __future__ import annotations

import reprlib
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, NamedTuple

from .constants import OUT_OF_BAND_TAGS, GroupTag, Status, ValueTag

MAX_VALUE_LENGTH = 32767
#: An attribute section larger than this is refused: no real request needs it,
#: and it bounds what a hostile client can make us buffer before the document.
MAX_ATTRIBUTES_SIZE = 1 << 20
#: Collections nest (media-col → media-size); deeper than this is an attack.
MAX_COLLECTION_DEPTH = 16

SUPPORTED_VERSIONS = frozenset({(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)})


class ParseError(Exception):
    """A message that cannot be decoded; `status` is what a server answers."""

    def __init__(self, message: str, status: Status = Status.CLIENT_ERROR_BAD_REQUEST) -> None:
        super().__init__(message)
        self.status = status


class EncodeError(ValueError):
    """A value that IPP cannot carry (too long, wrong type for its tag)."""


class Resolution(NamedTuple):
    cross_feed: int
    feed: int
    units: int  # 3 = dots per inch, 4 = dots per centimetre


class IntRange(NamedTuple):
    lower: int
    upper: int


class StringWithLanguage(NamedTuple):
    language: str
    text: str


@dataclass(frozen=True)
class DateTime:
    """RFC 2579 DateAndTime, kept as its 11 octets so that decode/encode round-trips."""

    raw: bytes

    @classmethod
    def from_datetime(cls, when: datetime) -> DateTime:
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        offset = when.utcoffset() or timedelta(0)
        seconds = int(offset.total_seconds())
        sign = b"+" if seconds >= 0 else b"-"
        minutes = abs(seconds) // 60  # DateAndTime has no seconds in its UTC offset
        raw = (
            struct.pack(
                ">HBBBBBB",
                when.year,
                when.month,
                when.day,
                when.hour,
                when.minute,
                when.second,
                when.microsecond // 100000,
            )
            + sign
            + bytes([minutes // 60, minutes % 60])
        )
        return cls(raw)

    def to_datetime(self) -> datetime:
        year, month, day, hour, minute, second, deci = struct.unpack(">HBBBBBB", self.raw[:8])
        sign = -1 if self.raw[8:9] == b"-" else 1
        offset = timedelta(hours=self.raw[9], minutes=self.raw[10]) * sign
        return datetime(year, month, day, hour, minute, second, deci * 100000, tzinfo=timezone(offset))


@dataclass
class Attribute:
    """One attribute: a name, a value tag and one or more values (1setOf).

    `tags` is only set when a 1setOf mixes syntaxes (e.g. keyword and name);
    otherwise every value has `tag`. Out-of-band values are `None`.
    Collection values are `dict[str, Attribute]`.
    """

    name: str
    tag: int
    values: list[Any]
    tags: list[int] | None = None

    @property
    def value(self) -> Any:
        return self.values[0] if self.values else None

    def value_tags(self) -> list[int]:
        return list(self.tags) if self.tags is not None else [self.tag] * len(self.values)


@dataclass
class AttributeGroup:
    tag: int
    attributes: dict[str, Attribute] = field(default_factory=dict)

    def add(self, attribute: Attribute) -> None:
        self.attributes[attribute.name] = attribute

    def get(self, name: str) -> Attribute | None:
        return self.attributes.get(name)


@dataclass
class Message:
    """A request (`code` is an operation-id) or a response (`code` is a status-code)."""

    version: tuple[int, int]
    code: int
    request_id: int
    groups: list[AttributeGroup] = field(default_factory=list)
    data: bytes = b""

    def group(self, tag: int) -> AttributeGroup | None:
        for group in self.groups:
            if group.tag == tag:
                return group
        return None

    def groups_of(self, tag: int) -> Iterator[AttributeGroup]:
        return (g for g in self.groups if g.tag == tag)

    def ensure_group(self, tag: int) -> AttributeGroup:
        found = self.group(tag)
        if found is None:
            found = AttributeGroup(tag)
            self.groups.append(found)
        return found

    @property
    def operation(self) -> AttributeGroup:
        return self.ensure_group(GroupTag.OPERATION)

    def get(self, group_tag: int, name: str) -> Any:
        """First value of `name` in the first group with `group_tag`, or None."""
        group = self.group(group_tag)
        if group is None:
            return None
        attribute = group.get(name)
        return attribute.value if attribute is not None else None


# ---------------------------------------------------------------- decoding

_STRING_TAGS = frozenset(
    {
        ValueTag.TEXT,
        ValueTag.NAME,
        ValueTag.KEYWORD,
        ValueTag.URI,
        ValueTag.URI_SCHEME,
        ValueTag.CHARSET,
        ValueTag.NATURAL_LANGUAGE,
        ValueTag.MIME_MEDIA_TYPE,
    }
)


class _Reader:
    """Cursor over a buffer; raises `_Incomplete` when the bytes run out."""

    def __init__(self, buf: bytes, pos: int = 0, strict: bool = False) -> None:
        self.buf = buf
        self.pos = pos
        #: Refuse an attribute (or member) name repeated within one group (or collection).
        self.strict = strict

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.buf):
            raise _Incomplete
        chunk = self.buf[self.pos : end]
        self.pos = end
        return chunk

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        value: int = struct.unpack(">H", self.take(2))[0]
        return value

    def peek(self) -> int:
        if self.pos >= len(self.buf):
            raise _Incomplete
        return self.buf[self.pos]


class _Incomplete(Exception):
    """More bytes are needed before the attribute section can be decoded."""


def _decode_value(tag: int, raw: bytes, reader: _Reader, depth: int) -> Any:
    if tag in OUT_OF_BAND_TAGS:
        return None
    if tag in (ValueTag.INTEGER, ValueTag.ENUM):
        if len(raw) != 4:
            raise ParseError(f"integer value of {len(raw)} octets")
        return struct.unpack(">i", raw)[0]
    if tag == ValueTag.BOOLEAN:
        if len(raw) != 1 or raw[0] > 1:
            raise ParseError("boolean value is not one octet of 0 or 1")
        return raw[0] == 1
    if tag == ValueTag.DATE_TIME:
        if len(raw) != 11:
            raise ParseError("dateTime value is not 11 octets")
        return DateTime(raw)
    if tag == ValueTag.RESOLUTION:
        if len(raw) != 9:
            raise ParseError("resolution value is not 9 octets")
        return Resolution(*struct.unpack(">iib", raw))
    if tag == ValueTag.RANGE_OF_INTEGER:
        if len(raw) != 8:
            raise ParseError("rangeOfInteger value is not 8 octets")
        return IntRange(*struct.unpack(">ii", raw))
    if tag in (ValueTag.TEXT_WITH_LANGUAGE, ValueTag.NAME_WITH_LANGUAGE):
        inner = _Reader(raw)
        try:
            language = inner.take(inner.u16())
            text = inner.take(inner.u16())
        except _Incomplete:
            raise ParseError("truncated textWithLanguage/nameWithLanguage value") from None
        if inner.pos != len(raw):
            raise ParseError("trailing octets in textWithLanguage/nameWithLanguage value")
        return StringWithLanguage(_text(language), _text(text))
    if tag == ValueTag.BEG_COLLECTION:
        return _decode_collection(reader, depth + 1)
    if tag in _STRING_TAGS:
        return _text(raw)
    # octetString, memberAttrName outside a collection, reserved and extension tags
    return bytes(raw)


def _text(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ParseError("string value is not UTF-8") from None


def _read_tag(reader: _Reader) -> int:
    tag = reader.u8()
    if tag == ValueTag.EXTENSION:
        extended = struct.unpack(">I", reader.take(4))[0]
        if extended & 0x80000000:
            raise ParseError("extension tag with the high bit set")
        # The value of an extended tag is opaque to us; keep the 0x7F marker.
    return tag


def _decode_collection(reader: _Reader, depth: int) -> dict[str, Attribute]:
    if depth > MAX_COLLECTION_DEPTH:
        raise ParseError("collections nested too deeply")
    members: dict[str, Attribute] = {}
    current: Attribute | None = None
    while True:
        tag = _read_tag(reader)
        if tag < 0x10:
            raise ParseError("delimiter tag inside a collection")
        name = reader.take(reader.u16())
        raw = reader.take(reader.u16())
        if tag == ValueTag.END_COLLECTION:
            if name or raw:
                raise ParseError("endCollection with a name or a value")
            return members
        if tag == ValueTag.MEMBER_ATTR_NAME:
            if name:
                raise ParseError("memberAttrName with a name")
            if not raw:
                raise ParseError("empty member name in a collection")
            member_name = _text(raw)
            # The member's value follows as an attribute with an empty name.
            vtag = _read_tag(reader)
            if vtag < 0x10 or vtag in (ValueTag.END_COLLECTION, ValueTag.MEMBER_ATTR_NAME):
                raise ParseError("member name without a value in a collection")
            if reader.take(reader.u16()):
                raise ParseError("member value with a name in a collection")
            vraw = reader.take(reader.u16())
            if reader.strict and member_name in members:
                raise ParseError(f"member {member_name!r} appears twice in a collection")
            current = Attribute(member_name, vtag, [_decode_value(vtag, vraw, reader, depth)])
            members[member_name] = current
            continue
        if name:
            raise ParseError("named attribute inside a collection")
        if current is None:
            raise ParseError("value before any member name in a collection")
        _append_value(current, tag, _decode_value(tag, raw, reader, depth))


def _append_value(attribute: Attribute, tag: int, value: Any) -> None:
    if attribute.tags is None and tag != attribute.tag:
        attribute.tags = [attribute.tag] * len(attribute.values)
    attribute.values.append(value)
    if attribute.tags is not None:
        attribute.tags.append(tag)


def _decode_attributes(buf: bytes, strict: bool = False) -> tuple[Message, int]:
    """Decode header and attribute groups; return the message and where data starts."""
    reader = _Reader(buf, strict=strict)
    major, minor = reader.u8(), reader.u8()
    code = reader.u16()
    request_id: int = struct.unpack(">i", reader.take(4))[0]
    message = Message((major, minor), code, request_id)
    group: AttributeGroup | None = None
    current: Attribute | None = None
    while True:
        tag = _read_tag(reader)
        if tag == GroupTag.END:
            return message, reader.pos
        if tag < 0x10:
            if tag == 0x00:
                raise ParseError("reserved delimiter tag 0x00")
            group = AttributeGroup(tag)
            message.groups.append(group)
            current = None
            continue
        if group is None:
            raise ParseError("attribute before any group tag")
        name = reader.take(reader.u16())
        raw = reader.take(reader.u16())
        if tag in (ValueTag.END_COLLECTION, ValueTag.MEMBER_ATTR_NAME):
            raise ParseError("collection tag outside a collection")
        value = _decode_value(tag, raw, reader, 0)
        if name:
            current = Attribute(_text(name), tag, [value])
            if strict and current.name in group.attributes:
                raise ParseError(f"attribute {current.name!r} appears twice in a group")
            group.attributes[current.name] = current
        else:
            if current is None:
                raise ParseError("additional value without an attribute")
            _append_value(current, tag, value)


def check_version(message: Message) -> None:
    """Raise the status RFC 8011 asks for when we do not speak the version."""
    if message.version not in SUPPORTED_VERSIONS:
        raise ParseError(
            f"IPP version {message.version[0]}.{message.version[1]} is not supported",
            Status.SERVER_ERROR_VERSION_NOT_SUPPORTED,
        )


def _parse_head(buf: bytes, strict: bool) -> tuple[Message, int]:
    """`_decode_attributes` with every failure turned into `ParseError` (or `_Incomplete`)."""
    try:
        return _decode_attributes(buf, strict)
    except (struct.error, IndexError, ValueError, RecursionError) as exc:  # pragma: no cover
        # Defensive: the reader checks every length, so none of these is expected.
        raise ParseError(f"malformed IPP message: {exc}") from None


def decode(buf: bytes, *, strict: bool = False) -> Message:
    """Decode a whole message (attributes and document data).

    An attribute repeated in one group (or a member repeated in one collection)
    is kept once, with the *last* occurrence's values at the *first* one's
    place, whereas CUPS (`ippFindAttribute`) uses the first occurrence. A
    server that forwards jobs or charges for them must not disagree with the
    device about which `copies` counts, so it should pass `strict=True`, which
    refuses such a message with client-error-bad-request. Clients reading
    responses keep the lenient default (CUPS itself repeats attributes in
    some responses).
    """
    buf = bytes(buf)
    try:
        message, offset = _parse_head(buf, strict)
    except _Incomplete:
        raise ParseError("truncated IPP message") from None
    message.data = buf[offset:]
    return message


class MessageHead(NamedTuple):
    message: Message


class DocumentData(NamedTuple):
    data: bytes


class Decoder:
    """Incremental decoder: feed bytes, get the message head once, then data chunks.

    The document after the attributes may be hundreds of megabytes, so the
    server must stream it to the spool rather than hold it; this is the
    h11-style core that makes that possible without any socket code.

    While the head is incomplete, each `feed` only frames the new bytes
    (tag, name length, value length: a resumable scan), so a head trickled in
    one octet at a time costs linear, not quadratic, time; the attributes are
    decoded once, when the end-of-attributes tag has arrived. Framing errors
    that need no decoding (tag 0x00, an attribute before any group) are raised
    as soon as they arrive. The result is the same as `decode` on the whole
    body, however the body is split.

    An attribute section (header through end-of-attributes-tag) longer than
    `max_attributes_size` is refused with client-error-request-value-too-long,
    whether it arrives in one piece or many.
    """

    def __init__(self, max_attributes_size: int = MAX_ATTRIBUTES_SIZE, *, strict: bool = False) -> None:
        self._buf = bytearray()
        self._head_done = False
        self._max = max_attributes_size
        self._strict = strict  # as for `decode`
        self._scan = 8  # offset of the next unframed tag (after the 8-octet header)
        self._in_group = False

    @property
    def head_done(self) -> bool:
        return self._head_done

    def feed(self, data: bytes) -> list[MessageHead | DocumentData]:
        if self._head_done:
            return [DocumentData(bytes(data))] if data else []
        self._buf += data
        end = self._frame()
        if end is None:
            if len(self._buf) > self._max:
                raise self._too_large()
            return []
        if end > self._max:
            raise self._too_large()
        head = bytes(self._buf[:end])
        try:
            message, offset = _parse_head(head, self._strict)
        except _Incomplete:  # pragma: no cover - the framing scan found the end
            raise ParseError("truncated IPP message") from None
        self._head_done = True
        events: list[MessageHead | DocumentData] = [MessageHead(message)]
        rest = bytes(self._buf[offset:])
        self._buf = bytearray()
        if rest:
            events.append(DocumentData(rest))
        return events

    def end(self) -> None:
        """The body has ended: a head not yet complete is a truncated message."""
        if not self._head_done:
            raise ParseError("truncated IPP message")

    def _too_large(self) -> ParseError:
        return ParseError(
            f"attribute section too large (over {self._max} octets)",
            Status.CLIENT_ERROR_REQUEST_VALUE_TOO_LONG,
        )

    def _frame(self) -> int | None:
        """Advance the framing scan; the offset after end-of-attributes-tag, or None."""
        buf = self._buf
        size = len(buf)
        pos = self._scan
        while pos < size:
            tag = buf[pos]
            if tag == GroupTag.END:
                return pos + 1
            if tag < 0x10:
                if tag == 0x00:
                    raise ParseError("reserved delimiter tag 0x00")
                self._in_group = True
                pos += 1
                continue
            if not self._in_group:
                raise ParseError("attribute before any group tag")
            at = pos + (5 if tag == ValueTag.EXTENSION else 1)
            if at + 2 > size:
                break
            at += 2 + ((buf[at] << 8) | buf[at + 1])  # name
            if at + 2 > size:
                break
            at += 2 + ((buf[at] << 8) | buf[at + 1])  # value
            if at > size:
                break
            pos = at
        self._scan = pos
        return None


# ---------------------------------------------------------------- encoding


def _length(data: bytes, what: str) -> bytes:
    if len(data) > MAX_VALUE_LENGTH:
        raise EncodeError(f"{what} is {len(data)} octets; IPP carries at most {MAX_VALUE_LENGTH}")
    return struct.pack(">H", len(data))


def _utf8(text: str, what: str) -> bytes:
    if not isinstance(text, str):
        raise EncodeError(f"{what} must be a str, not {reprlib.repr(text)}")
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:
        raise EncodeError(f"{what} {reprlib.repr(text)} cannot be encoded as UTF-8") from None


def _pack(fmt: str, value: Any, what: str) -> bytes:
    try:
        return struct.pack(fmt, *value)
    except (struct.error, TypeError) as exc:
        raise EncodeError(f"cannot encode {reprlib.repr(value)} as {what}: {exc}") from None


def _encode_value(tag: int, value: Any) -> bytes:
    if tag in OUT_OF_BAND_TAGS:
        return b""
    if tag in (ValueTag.INTEGER, ValueTag.ENUM):
        if isinstance(value, bool) or not isinstance(value, int):
            raise EncodeError(f"integer tag needs an int, not {reprlib.repr(value)}")
        if not -(2**31) <= value < 2**31:
            raise EncodeError(f"integer {value} does not fit in 32 bits")
        return struct.pack(">i", value)
    if tag == ValueTag.BOOLEAN:
        if not isinstance(value, int) or value not in (0, 1):
            raise EncodeError(f"boolean tag needs a bool, not {reprlib.repr(value)}")
        return b"\x01" if value else b"\x00"
    if tag == ValueTag.DATE_TIME:
        if isinstance(value, datetime):
            value = DateTime.from_datetime(value)
        if (
            not isinstance(value, DateTime)
            or not isinstance(value.raw, bytes | bytearray)
            or len(value.raw) != 11
        ):
            raise EncodeError("dateTime needs a DateTime of 11 octets")
        return bytes(value.raw)
    if tag == ValueTag.RESOLUTION:
        return _pack(">iib", value, "resolution")
    if tag == ValueTag.RANGE_OF_INTEGER:
        return _pack(">ii", value, "rangeOfInteger")
    if tag in (ValueTag.TEXT_WITH_LANGUAGE, ValueTag.NAME_WITH_LANGUAGE):
        if not isinstance(value, tuple) or len(value) != 2:
            raise EncodeError(
                f"textWithLanguage/nameWithLanguage needs a StringWithLanguage, not {reprlib.repr(value)}"
            )
        language = _utf8(value[0], "language")
        text = _utf8(value[1], "text")
        return _length(language, "language") + language + _length(text, "text") + text
    if isinstance(value, str):
        return _utf8(value, "value")
    if isinstance(value, bytes | bytearray):
        return bytes(value)
    raise EncodeError(f"cannot encode {reprlib.repr(value)} with tag 0x{tag:02x}")


def _check_value_tag(tag: Any) -> None:
    if isinstance(tag, bool) or not isinstance(tag, int) or not 0x10 <= tag <= 0xFF:
        raise EncodeError(f"{tag!r} is not a value tag")
    if tag == ValueTag.EXTENSION:
        raise EncodeError("extension tags are not encoded")
    if tag in (ValueTag.END_COLLECTION, ValueTag.MEMBER_ATTR_NAME):
        raise EncodeError("endCollection and memberAttrName are written by the encoder itself")


def _encode_one(out: bytearray, tag: int, name: str, value: Any, depth: int) -> None:
    _check_value_tag(tag)
    name_bytes = _utf8(name, "attribute name")
    if tag == ValueTag.BEG_COLLECTION:
        out += bytes([tag]) + _length(name_bytes, "name") + name_bytes + b"\x00\x00"
        _encode_collection(out, value, depth + 1)
        return
    raw = _encode_value(tag, value)
    out += bytes([tag]) + _length(name_bytes, "name") + name_bytes + _length(raw, "value") + raw


def _value_pairs(attribute: Any) -> list[tuple[int, Any]]:
    """(tag, value) for each value of an attribute, checked for shape."""
    if not isinstance(attribute, Attribute):
        raise EncodeError(f"{reprlib.repr(attribute)} is not an Attribute")
    if not attribute.values:
        raise EncodeError(f"attribute {reprlib.repr(attribute.name)} has no value")
    tags = attribute.value_tags()
    if len(tags) != len(attribute.values):
        name = reprlib.repr(attribute.name)
        raise EncodeError(f"attribute {name} has {len(attribute.values)} values but {len(tags)} tags")
    return list(zip(tags, attribute.values, strict=True))


def _encode_collection(out: bytearray, members: Any, depth: int) -> None:
    if not isinstance(members, dict):
        raise EncodeError(f"begCollection needs a dict of member attributes, not {reprlib.repr(members)}")
    if depth > MAX_COLLECTION_DEPTH:
        # We would refuse to decode it ourselves (and a cycle would never end).
        raise EncodeError(f"collections nested deeper than {MAX_COLLECTION_DEPTH}")
    for member in members.values():
        pairs = _value_pairs(member)
        member_name = _utf8(member.name, "member name")
        if not member_name:
            raise EncodeError("collection member with an empty name")
        for i, (tag, value) in enumerate(pairs):
            if i == 0:
                out += bytes([ValueTag.MEMBER_ATTR_NAME]) + b"\x00\x00"
                out += _length(member_name, "member name") + member_name
            _encode_one(out, tag, "", value, depth)
    out += bytes([ValueTag.END_COLLECTION]) + b"\x00\x00\x00\x00"


def encode_attributes(message: Message) -> bytes:
    """Header and attribute groups, up to and including end-of-attributes."""
    out = bytearray()
    out += _pack(">BBHi", (*message.version, message.code, message.request_id), "header")
    for group in message.groups:
        if (
            isinstance(group.tag, bool)
            or not isinstance(group.tag, int)
            or not 0x01 <= group.tag <= 0x0F
            or group.tag == GroupTag.END
        ):
            raise EncodeError(f"{group.tag!r} is not a group tag")
        out.append(group.tag)
        for attribute in group.attributes.values():
            pairs = _value_pairs(attribute)
            if not attribute.name:
                # An empty name would make the first value an extra value of the previous one.
                raise EncodeError("attribute with an empty name")
            for i, (tag, value) in enumerate(pairs):
                _encode_one(out, tag, attribute.name if i == 0 else "", value, 0)
    out.append(GroupTag.END)
    return bytes(out)


def encode(message: Message) -> bytes:
    if not isinstance(message.data, bytes | bytearray | memoryview):
        raise EncodeError(f"document data must be bytes, not {type(message.data).__name__}")
    return encode_attributes(message) + bytes(message.data)


# ---------------------------------------------------------------- building


def attr(name: str, tag: int, *values: Any) -> Attribute:
    return Attribute(name, tag, list(values))


def request(
    operation: int,
    request_id: int,
    printer_uri: str | None = None,
    *,
    version: tuple[int, int] = (2, 0),
    user: str | None = None,
    extra: list[Attribute] | None = None,
) -> Message:
    """A request with the operation attributes every request starts with, in order."""
    message = Message(version, operation, request_id)
    group = message.operation
    group.add(attr("attributes-charset", ValueTag.CHARSET, "utf-8"))
    group.add(attr("attributes-natural-language", ValueTag.NATURAL_LANGUAGE, "en"))
    if printer_uri is not None:
        group.add(attr("printer-uri", ValueTag.URI, printer_uri))
    if user is not None:
        group.add(attr("requesting-user-name", ValueTag.NAME, user))
    for extra_attribute in extra or []:
        group.add(extra_attribute)
    return message


def response(request_message: Message, status: int, message_text: str | None = None) -> Message:
    """A response echoing the request's version and id, as RFC 8011 asks."""
    reply = Message(request_message.version, status, request_message.request_id)
    group = reply.operation
    group.add(attr("attributes-charset", ValueTag.CHARSET, "utf-8"))
    group.add(attr("attributes-natural-language", ValueTag.NATURAL_LANGUAGE, "en"))
    if message_text:
        group.add(attr("status-message", ValueTag.TEXT, message_text[:255]))
    return reply

"""Property tests for the IPP codec (Hypothesis).

* Valid messages built from every value tag (nested collections, 1setOf,
  mixed-syntax 1setOf, out-of-band values, reserved tags) round-trip through
  encode/decode, and through a Decoder fed in arbitrary chunk splits.
* Arbitrary, token-soup, mutated and truncated bytes never make decode() or
  Decoder raise anything but ParseError, and the two always agree.
* Whatever decode() accepts re-encodes (or refuses with EncodeError) to bytes
  that decode to the same message.
"""

from __future__ import annotations

import dataclasses
import itertools
import struct
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from appliance.protocols.ipp.codec import (
    MAX_VALUE_LENGTH,
    Attribute,
    AttributeGroup,
    DateTime,
    Decoder,
    DocumentData,
    EncodeError,
    IntRange,
    Message,
    MessageHead,
    ParseError,
    Resolution,
    StringWithLanguage,
    decode,
    encode,
)
from appliance.protocols.ipp.constants import GroupTag, ValueTag

EXAMPLES = settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# ---------------------------------------------------------------- strategies

INT32 = st.integers(-(2**31), 2**31 - 1)
SHORT_TEXT = st.text(max_size=12)
KEYWORDISH = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=12)

OUT_OF_BAND = [
    ValueTag.UNSUPPORTED,
    ValueTag.DEFAULT,
    ValueTag.UNKNOWN,
    ValueTag.NO_VALUE,
    ValueTag.NOT_SETTABLE,
    ValueTag.DELETE_ATTRIBUTE,
    ValueTag.ADMIN_DEFINE,
    0x14,  # reserved out-of-band tags: no value either
    0x18,
    0x1F,
]
STRING_TAGS = [
    ValueTag.TEXT,
    ValueTag.NAME,
    ValueTag.KEYWORD,
    ValueTag.URI,
    ValueTag.URI_SCHEME,
    ValueTag.CHARSET,
    ValueTag.NATURAL_LANGUAGE,
    ValueTag.MIME_MEDIA_TYPE,
]
#: Tags RFC 8010 reserves (or leaves to extensions) that carry opaque octets.
RESERVED_TAGS = [0x20, 0x24, 0x2F, 0x38, 0x3F, 0x40, 0x43, 0x4B, 0x5F, 0x60, 0x7E, 0x80, 0xFF]  # fmt: skip

DATE_TIMES = st.one_of(
    st.binary(min_size=11, max_size=11).map(DateTime),
    st.builds(
        DateTime.from_datetime,
        st.datetimes(
            min_value=datetime(1970, 1, 1),
            max_value=datetime(2100, 1, 1),
            timezones=st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-720, 840))
            | st.just(UTC),
        ),
    ),
)

SCALARS: dict[int, st.SearchStrategy[Any]] = {
    ValueTag.INTEGER: INT32,
    ValueTag.ENUM: INT32,
    ValueTag.BOOLEAN: st.booleans(),
    ValueTag.OCTET_STRING: st.binary(max_size=24),
    ValueTag.DATE_TIME: DATE_TIMES,
    ValueTag.RESOLUTION: st.builds(Resolution, INT32, INT32, st.integers(-128, 127)),
    ValueTag.RANGE_OF_INTEGER: st.builds(IntRange, INT32, INT32),
    ValueTag.TEXT_WITH_LANGUAGE: st.builds(StringWithLanguage, KEYWORDISH, SHORT_TEXT),
    ValueTag.NAME_WITH_LANGUAGE: st.builds(StringWithLanguage, KEYWORDISH, SHORT_TEXT),
    **{tag: SHORT_TEXT for tag in STRING_TAGS},
    **{tag: st.none() for tag in OUT_OF_BAND},
    **{tag: st.binary(max_size=16) for tag in RESERVED_TAGS},
}
VALUE_TAGS = [*sorted(SCALARS), ValueTag.BEG_COLLECTION]
MAX_GENERATED_DEPTH = 3
GROUP_TAGS = [t for t in range(0x01, 0x10) if t != GroupTag.END]


@st.composite
def attributes(draw: st.DrawFn, depth: int = 0, name: str | None = None) -> Attribute:
    """One attribute (or collection member): 1..3 values, sometimes of mixed syntax."""
    tags = [t for t in VALUE_TAGS if depth < MAX_GENERATED_DEPTH or t != ValueTag.BEG_COLLECTION]
    count = draw(st.integers(1, 3))
    if draw(st.booleans()):
        value_tags = [draw(st.sampled_from(tags))] * count
    else:
        value_tags = [draw(st.sampled_from(tags)) for _ in range(count)]
    values = [
        draw(collections(depth + 1)) if tag == ValueTag.BEG_COLLECTION else draw(SCALARS[tag])
        for tag in value_tags
    ]
    mixed = any(tag != value_tags[0] for tag in value_tags)
    return Attribute(
        name if name is not None else draw(st.text(min_size=1, max_size=16)),
        value_tags[0],
        values,
        list(value_tags) if mixed else None,
    )


@st.composite
def collections(draw: st.DrawFn, depth: int) -> dict[str, Attribute]:
    names = draw(st.lists(st.text(min_size=1, max_size=10), max_size=3, unique=True))
    return {n: draw(attributes(depth, n)) for n in names}


@st.composite
def groups(draw: st.DrawFn) -> AttributeGroup:
    names = draw(st.lists(st.text(min_size=1, max_size=16), max_size=4, unique=True))
    return AttributeGroup(draw(st.sampled_from(GROUP_TAGS)), {n: draw(attributes(0, n)) for n in names})


MESSAGES = st.builds(
    Message,
    st.tuples(st.integers(0, 255), st.integers(0, 255)),
    st.integers(0, 0xFFFF),
    INT32,
    st.lists(groups(), max_size=3),
    st.binary(max_size=64),
)


def splits(data: st.DataObject, buf: bytes) -> list[bytes]:
    """`buf` cut at arbitrary points (empty chunks included)."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(buf)), max_size=12), label="cuts"))
    edges = [0, *cuts, len(buf)]
    return [buf[a:b] for a, b in itertools.pairwise(edges)]


def run_decoder(chunks: list[bytes]) -> Message:
    """Feed the chunks and end; the head message with its data filled in."""
    decoder = Decoder()
    events: list[MessageHead | DocumentData] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
    decoder.end()
    heads = [e for e in events if isinstance(e, MessageHead)]
    assert len(heads) == 1 and events[0] is heads[0]
    assert heads[0].message.data == b""
    documents = [e for e in events[1:] if isinstance(e, DocumentData)]
    assert len(documents) == len(events) - 1 and all(d.data for d in documents)
    return dataclasses.replace(heads[0].message, data=b"".join(d.data for d in documents))


# ---------------------------------------------------------------- round trips


@EXAMPLES
@given(MESSAGES)
def test_round_trip(message: Message) -> None:
    wire = encode(message)
    assert decode(wire) == message
    assert decode(wire, strict=True) == message  # names are unique by construction
    assert encode(decode(wire)) == wire


@EXAMPLES
@given(MESSAGES, st.data())
def test_decoder_in_random_chunks(message: Message, data: st.DataObject) -> None:
    wire = encode(message)
    assert run_decoder(splits(data, wire)) == message


@EXAMPLES
@given(st.lists(attributes(), min_size=1, max_size=3))
def test_every_value_round_trips_in_any_group(attrs: list[Attribute]) -> None:
    """Single-group messages, so that many more attributes per example get exercised."""
    message = Message((2, 0), 0x0002, 1, [AttributeGroup(GroupTag.JOB)])
    for attribute in attrs:
        message.groups[0].add(attribute)
    assert decode(encode(message)) == message


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from([ValueTag.OCTET_STRING, ValueTag.TEXT, ValueTag.KEYWORD]),
    st.integers(MAX_VALUE_LENGTH + 1, 65535),
)
def test_lenient_long_lengths_read_but_never_written(tag: int, length: int) -> None:
    raw = (
        b"\x02\x00\x00\x0b\x00\x00\x00\x01\x01"
        + bytes([tag])
        + b"\x00\x01x"
        + struct.pack(">H", length)
        + b"a" * length
        + b"\x03"
    )
    message = decode(raw)
    value = message.operation.attributes["x"].value
    assert len(value) == length
    try:
        encode(message)
    except EncodeError:
        pass
    else:
        raise AssertionError("encoded a value longer than 32767 octets")


@settings(max_examples=500, deadline=None)
@given(
    st.datetimes(
        min_value=datetime(1, 1, 1),
        max_value=datetime(9999, 12, 31),
        timezones=st.builds(lambda minutes: timezone(timedelta(minutes=minutes)), st.integers(-1439, 1439)),
    )
)
def test_datetime_conversion(when: datetime) -> None:
    converted = DateTime.from_datetime(when)
    assert len(converted.raw) == 11
    assert converted.to_datetime() == when.replace(microsecond=when.microsecond // 100000 * 100000)


# ---------------------------------------------------------------- robustness

HEADER = b"\x02\x00\x00\x0b\x00\x00\x00\x01"
TAG_BYTES = st.one_of(
    st.sampled_from([0x00, 0x01, 0x02, 0x03, 0x04, 0x0F, 0x7F]),
    st.sampled_from([ValueTag.BEG_COLLECTION, ValueTag.MEMBER_ATTR_NAME, ValueTag.END_COLLECTION]),
    st.sampled_from([*VALUE_TAGS, ValueTag.END_COLLECTION, ValueTag.MEMBER_ATTR_NAME]),
    st.integers(0, 255),
)


@st.composite
def token_soup(draw: st.DrawFn) -> bytes:
    """Header, then plausible-looking tag/name/value triples and delimiters in any order."""
    out = bytearray(draw(st.sampled_from([HEADER, b"\x01\x01\x00\x02\x00\x00\x00\x07"])))
    out.append(draw(st.sampled_from([0x01, 0x01, 0x01, 0x02, 0x04, ValueTag.KEYWORD])))
    for _ in range(draw(st.integers(0, 24))):
        tag = draw(TAG_BYTES)
        out.append(tag)
        if tag < 0x10 and draw(st.integers(0, 4)):
            continue
        if tag == 0x7F:
            out += draw(st.binary(min_size=4, max_size=4))
        name = draw(st.sampled_from([b"", b"", b"a", b"job-name", b"\xff"]))
        value = draw(
            st.one_of(
                st.binary(max_size=12),
                st.sampled_from([b"\x00\x00\x00\x01", b"\x01", b"\x02", b"m", b"\x00\x02en\x00\x01x"]),
            )
        )
        name_length = draw(st.sampled_from([len(name), len(name), len(name) + 1, 0xFFFF]))
        value_length = draw(st.sampled_from([len(value), len(value), len(value) - 1, 0x8000]))
        out += struct.pack(">H", name_length) + name
        out += struct.pack(">H", max(value_length, 0)) + value
    if draw(st.booleans()):
        out.append(GroupTag.END)
    out += draw(st.binary(max_size=8))
    return bytes(out)


@st.composite
def mutated_messages(draw: st.DrawFn) -> bytes:
    """A valid encoding with bytes flipped, dropped, inserted, duplicated or cut off."""
    buf = bytearray(encode(draw(MESSAGES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["set", "delete", "insert", "duplicate", "truncate"]))
        at = draw(st.integers(0, len(buf)))
        if kind == "set" and at < len(buf):
            buf[at] = draw(st.integers(0, 255))
        elif kind == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        elif kind == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif kind == "duplicate":
            buf[at:at] = buf[at : at + draw(st.integers(1, 16))]
        else:
            del buf[at:]
    return bytes(buf)


HOSTILE = st.one_of(
    st.binary(max_size=256),
    st.binary(max_size=64).map(lambda tail: HEADER + tail),
    token_soup(),
    mutated_messages(),
)


def check_robust(buf: bytes, data: st.DataObject) -> None:
    """decode and Decoder either both succeed with the same message or both raise ParseError."""
    try:
        expected: Message | None = decode(buf)
    except ParseError as exc:
        assert isinstance(exc.status, int)
        event(f"ParseError: {str(exc).split(':')[0][:40]}")
        expected = None
    try:
        got: Message | None = run_decoder(splits(data, buf))
    except ParseError:
        got = None
    assert got == expected
    try:
        strict: Message | None = decode(buf, strict=True)
    except ParseError as exc:
        assert expected is None or "twice" in str(exc)
    else:
        assert strict == expected
    if expected is None:
        return
    event("decoded")
    # what we accept we can write back (or refuse cleanly), and it means the same
    try:
        again = encode(expected)
    except EncodeError:
        return
    assert decode(again) == expected


@EXAMPLES
@given(HOSTILE, st.data())
def test_hostile_input_only_raises_parse_error(buf: bytes, data: st.DataObject) -> None:
    check_robust(buf, data)


@EXAMPLES
@given(MESSAGES, st.data())
def test_every_truncation_is_a_parse_error_or_a_shorter_document(
    message: Message, data: st.DataObject
) -> None:
    wire = encode(message)
    cut = data.draw(st.integers(0, len(wire) - 1), label="cut")
    head_length = len(wire) - len(message.data)
    if cut >= head_length:
        shorter = decode(wire[:cut])
        assert shorter.data == message.data[: cut - head_length]
        assert dataclasses.replace(shorter, data=message.data) == message
    else:
        try:
            decode(wire[:cut])
        except ParseError:
            pass
        else:
            raise AssertionError(f"decoded a message cut at {cut} of {head_length} octets")
    check_robust(wire[:cut], data)


@EXAMPLES
@given(mutated_messages(), st.data())
def test_mutated_messages_only_raise_parse_error(buf: bytes, data: st.DataObject) -> None:
    check_robust(buf, data)

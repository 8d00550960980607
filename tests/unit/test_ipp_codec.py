"""Unit tests for the sans-io IPP codec: known answers from real clients, edge cases, limits.

The known-answer fixtures in tests/fixtures/ipp were captured from CUPS 2.4
ipptool and lp by scripts/capture_ipp.py (see the README there).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import struct
import sys
import threading
import time
import urllib.request
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import ModuleType

import pytest

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.codec import (
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
    attr,
    check_version,
    decode,
    encode,
)
from appliance.protocols.ipp.constants import GroupTag, Operation, Status, ValueTag

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "ipp"
OP, JOB, PRINTER = GroupTag.OPERATION, GroupTag.JOB, GroupTag.PRINTER


# ---------------------------------------------------------------- raw wire helpers


def header(version: bytes = b"\x02\x00", code: int = 0x000B, request_id: int = 1) -> bytes:
    return version + struct.pack(">Hi", code, request_id)


def field(tag: int, name: bytes | str, value: bytes | str = b"") -> bytes:
    """One tag/name/value triple, exactly as on the wire."""
    name_b = name.encode() if isinstance(name, str) else name
    value_b = value.encode() if isinstance(value, str) else value
    return bytes([tag]) + struct.pack(">H", len(name_b)) + name_b + struct.pack(">H", len(value_b)) + value_b


def op_prefix() -> bytes:
    """Header, operation group and the two attributes every request starts with."""
    return (
        header()
        + bytes([OP])
        + field(ValueTag.CHARSET, "attributes-charset", "utf-8")
        + field(ValueTag.NATURAL_LANGUAGE, "attributes-natural-language", "en")
    )


def one(tag: int, value: bytes | str, name: str = "x") -> bytes:
    """A whole message carrying a single attribute after the standard two."""
    return op_prefix() + field(tag, name, value) + bytes([GroupTag.END])


def nested_collection(depth: int) -> bytes:
    """`depth` collections nested in one another, on the wire."""
    out = field(ValueTag.BEG_COLLECTION, "c")
    for _ in range(depth - 1):
        out += field(ValueTag.MEMBER_ATTR_NAME, "", "m") + field(ValueTag.BEG_COLLECTION, "")
    out += field(ValueTag.MEMBER_ATTR_NAME, "", "leaf") + field(ValueTag.INTEGER, "", b"\0\0\0\1")
    out += field(ValueTag.END_COLLECTION, "") * depth
    return out


def decoder_result(buf: bytes, chunk: int = 1) -> Message:
    """Feed `buf` to a Decoder in `chunk`-sized pieces; the message with its data."""
    decoder = Decoder()
    events: list[MessageHead | DocumentData] = []
    for i in range(0, len(buf), chunk):
        events += decoder.feed(buf[i : i + chunk])
    decoder.end()
    assert isinstance(events[0], MessageHead)
    assert all(isinstance(e, DocumentData) and e.data for e in events[1:])
    head = events[0].message
    assert head.data == b""
    data = b"".join(e.data for e in events[1:] if isinstance(e, DocumentData))
    return dataclasses.replace(head, data=data)


def values(message: Message, group: int, name: str) -> list[object]:
    found = message.group(group)
    assert found is not None, f"no group {group}"
    attribute = found.get(name)
    assert attribute is not None, f"no attribute {name}"
    return attribute.values


# ---------------------------------------------------------------- captured fixtures

FIXTURE_FILES = sorted(FIXTURES.glob("*.bin"))


def load(name: str) -> tuple[bytes, Message]:
    raw = (FIXTURES / name).read_bytes()
    return raw, decode(raw)


def test_fixtures_exist_and_are_small() -> None:
    names = {p.name for p in FIXTURE_FILES}
    assert {
        "ipptool-gpa-01-get-printer-attributes.bin",
        "ipptool-print-01-print-job.bin",
        "ipptool-media-col-01-print-job.bin",
        "lp-04-create-job.bin",
        "lp-05-send-document.bin",
    } <= names
    assert (FIXTURES / "README.md").is_file()
    for path in FIXTURE_FILES:
        assert path.stat().st_size < 64 * 1024, path.name


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
def test_fixture_reencodes_byte_for_byte(path: Path) -> None:
    raw = path.read_bytes()
    message = decode(raw)
    assert encode(message) == raw
    assert codec.encode_attributes(message) + message.data == raw
    check_version(message)
    # every request starts with charset then natural language (RFC 8011 4.1.4)
    operation = message.group(OP)
    assert operation is not None
    assert list(operation.attributes)[:2] == ["attributes-charset", "attributes-natural-language"]
    assert operation.attributes["attributes-charset"].values == ["utf-8"]
    assert operation.attributes["attributes-charset"].tag == ValueTag.CHARSET


@pytest.mark.parametrize("path", FIXTURE_FILES, ids=lambda p: p.name)
@pytest.mark.parametrize("chunk", [1, 7, 100, 1 << 20])
def test_fixture_through_decoder_in_chunks(path: Path, chunk: int) -> None:
    raw = path.read_bytes()
    assert decoder_result(raw, chunk) == decode(raw)


def test_ipptool_get_printer_attributes() -> None:
    raw, m = load("ipptool-gpa-01-get-printer-attributes.bin")
    assert m.version == (2, 0)  # VERSION 2.0 in get-printer-attributes.test
    assert m.code == Operation.GET_PRINTER_ATTRIBUTES
    assert m.request_id > 0
    assert [g.tag for g in m.groups] == [OP]
    assert list(m.operation.attributes) == [
        "attributes-charset",
        "attributes-natural-language",
        "printer-uri",
        "requested-attributes",
    ]
    uri = m.operation.attributes["printer-uri"]
    assert uri.tag == ValueTag.URI
    assert uri.value.startswith("ipp://127.0.0.1:") and uri.value.endswith("/printers/test")
    requested = m.operation.attributes["requested-attributes"]
    assert requested.tag == ValueTag.KEYWORD and requested.tags is None
    assert requested.values == ["all", "media-col-database"]
    assert m.get(OP, "attributes-natural-language") == "en"
    assert m.data == b""
    # the second value of a 1setOf goes out with an empty name
    assert field(ValueTag.KEYWORD, "", "media-col-database") + b"\x03" == raw[-24:]


def test_ipptool_print_job() -> None:
    _, m = load("ipptool-print-01-print-job.bin")
    assert m.version == (1, 1)  # print-job.test has no VERSION line: ipptool's default
    assert m.code == Operation.PRINT_JOB
    assert [g.tag for g in m.groups] == [OP, JOB]
    assert m.get(OP, "requesting-user-name") == "alice"
    assert m.operation.attributes["requesting-user-name"].tag == ValueTag.NAME
    assert m.get(OP, "document-format") == "application/pdf"
    assert m.operation.attributes["document-format"].tag == ValueTag.MIME_MEDIA_TYPE
    assert values(m, JOB, "copies") == [1]
    assert m.data.startswith(b"%PDF-1.")
    assert m.data.rstrip().endswith(b"%%EOF")


def test_ipptool_print_job_media_col() -> None:
    _, m = load("ipptool-media-col-01-print-job.bin")
    assert m.code == Operation.PRINT_JOB
    assert m.get(OP, "document-format") == "application/octet-stream"
    media_col = m.group(JOB).get("media-col")  # type: ignore[union-attr]
    assert media_col is not None and media_col.tag == ValueTag.BEG_COLLECTION
    col = media_col.value
    assert list(col) == [
        "media-size",
        "media-left-margin",
        "media-right-margin",
        "media-top-margin",
        "media-bottom-margin",
    ]
    size = col["media-size"]
    assert size.tag == ValueTag.BEG_COLLECTION
    assert size.value["x-dimension"] == Attribute("x-dimension", ValueTag.INTEGER, [10160])
    assert size.value["y-dimension"] == Attribute("y-dimension", ValueTag.INTEGER, [15240])
    assert all(col[f"media-{side}-margin"].values == [0] for side in ["left", "right", "top", "bottom"])
    quality = m.group(JOB).get("print-quality")  # type: ignore[union-attr]
    assert quality == Attribute("print-quality", ValueTag.ENUM, [5])  # high
    assert m.data.startswith(b"%PDF-")


@pytest.mark.parametrize("name", ["lp-01-get-printer-attributes.bin", "lp-02-get-printer-attributes.bin"])
def test_lp_get_printer_attributes_for_destination(name: str) -> None:
    _, m = load(name)
    assert m.version == (2, 0)
    assert m.code == Operation.GET_PRINTER_ATTRIBUTES
    assert m.request_id in (1, 2)  # libcups numbers its requests from 1
    assert m.get(OP, "requesting-user-name") == "alice"
    assert m.get(OP, "printer-uri").endswith("/printers/test")
    requested = values(m, OP, "requested-attributes")
    assert len(requested) == 26
    assert requested[:3] == ["auth-info-required", "device-uri", "job-sheets-default"]
    assert "printer-uri-supported" in requested and "printer-type" in requested
    assert m.data == b""


def test_lp_get_printer_attributes_for_options() -> None:
    _, m = load("lp-03-get-printer-attributes.bin")
    assert m.code == Operation.GET_PRINTER_ATTRIBUTES and m.request_id == 3
    assert values(m, OP, "requested-attributes") == [
        "job-template",
        "media-col-database",
        "printer-description",
    ]


def test_lp_create_job() -> None:
    _, m = load("lp-04-create-job.bin")
    assert m.version == (2, 0)
    assert m.code == Operation.CREATE_JOB
    assert m.request_id == 4
    assert m.get(OP, "requesting-user-name") == "alice"  # lp -U alice
    assert m.get(OP, "job-name") == "hello.pdf"
    job = m.group(JOB)
    assert job is not None
    assert job.get("copies") == Attribute("copies", ValueTag.INTEGER, [2])  # lp -n 2
    assert job.get("sides") == Attribute("sides", ValueTag.KEYWORD, ["two-sided-long-edge"])
    assert job.get("media") == Attribute("media", ValueTag.KEYWORD, ["iso_a4_210x297mm"])
    assert m.data == b""


def test_lp_send_document() -> None:
    _, m = load("lp-05-send-document.bin")
    assert m.code == Operation.SEND_DOCUMENT and m.request_id == 5
    assert m.get(OP, "job-id") == 1  # the job-id our Create-Job response gave
    assert m.operation.attributes["job-id"].tag == ValueTag.INTEGER
    assert m.get(OP, "last-document") is True
    assert m.operation.attributes["last-document"].tag == ValueTag.BOOLEAN
    assert m.get(OP, "document-name") == "hello.pdf"
    assert m.get(OP, "document-format") == "application/octet-stream"  # lp does not type it
    # the same PDF went out through ipptool and lp in one capture run
    _, printed = load("ipptool-print-01-print-job.bin")
    assert m.data == printed.data and m.data.startswith(b"%PDF-")


# ---------------------------------------------------------------- versions


@pytest.mark.parametrize("version", [(1, 0), (1, 1), (2, 0), (2, 1), (2, 2)])
def test_check_version_accepts_known_versions(version: tuple[int, int]) -> None:
    check_version(Message(version, Operation.GET_PRINTER_ATTRIBUTES, 1))


@pytest.mark.parametrize("version", [(0, 0), (0, 9), (1, 2), (2, 3), (3, 0), (9, 9), (255, 255)])
def test_check_version_refuses_unknown_versions(version: tuple[int, int]) -> None:
    # decode itself accepts any version so that the server can answer in kind
    message = decode(bytes(version) + op_prefix()[2:] + b"\x03")
    assert message.version == version
    with pytest.raises(ParseError) as caught:
        check_version(message)
    assert caught.value.status == Status.SERVER_ERROR_VERSION_NOT_SUPPORTED
    assert f"{version[0]}.{version[1]}" in str(caught.value)


# ---------------------------------------------------------------- malformed input


def assert_bad(buf: bytes, fragment: str, status: int = Status.CLIENT_ERROR_BAD_REQUEST) -> None:
    """Both decode() and a byte-at-a-time Decoder refuse `buf` with ParseError."""
    with pytest.raises(ParseError, match=fragment) as caught:
        decode(buf)
    assert caught.value.status == status
    decoder = Decoder()
    with pytest.raises(ParseError):
        for i in range(len(buf)):
            decoder.feed(buf[i : i + 1])
        decoder.end()


def test_parse_error_default_status() -> None:
    assert ParseError("x").status == Status.CLIENT_ERROR_BAD_REQUEST


def test_attribute_before_group_tag() -> None:
    buf = header() + field(ValueTag.CHARSET, "attributes-charset", "utf-8") + b"\x03"
    assert_bad(buf, "before any group")
    # the Decoder says so as soon as the tag arrives, without waiting for the rest
    decoder = Decoder()
    assert decoder.feed(header()) == []
    with pytest.raises(ParseError, match="before any group"):
        decoder.feed(bytes([ValueTag.CHARSET]))


def test_reserved_delimiter_tag() -> None:
    assert_bad(header() + b"\x00\x03", "0x00")


def test_additional_value_without_attribute() -> None:
    assert_bad(header() + b"\x01" + field(ValueTag.KEYWORD, "", "a") + b"\x03", "additional")


@pytest.mark.parametrize("tag", [ValueTag.END_COLLECTION, ValueTag.MEMBER_ATTR_NAME])
def test_collection_tags_outside_collection(tag: int) -> None:
    assert_bad(one(tag, "m"), "outside a collection")


def test_collection_depth_limit() -> None:
    limit = codec.MAX_COLLECTION_DEPTH
    ok = decode(op_prefix() + nested_collection(limit) + b"\x03")
    inner = ok.operation.attributes["c"].value
    for _ in range(limit - 1):
        inner = inner["m"].value
    assert inner == {"leaf": Attribute("leaf", ValueTag.INTEGER, [1])}
    assert decode(encode(ok)) == ok
    assert_bad(op_prefix() + nested_collection(limit + 1) + b"\x03", "nested too deeply")
    # ...and a hostile depth does not blow the Python stack
    assert_bad(op_prefix() + nested_collection(5000) + b"\x03", "nested too deeply")


def test_encoder_refuses_what_the_decoder_would() -> None:
    col: dict[str, Attribute] = {}
    top = col
    for _ in range(codec.MAX_COLLECTION_DEPTH):
        inner: dict[str, Attribute] = {}
        col["m"] = Attribute("m", ValueTag.BEG_COLLECTION, [inner])
        col = inner
    col["leaf"] = attr("leaf", ValueTag.INTEGER, 1)
    message = codec.request(Operation.PRINT_JOB, 1, extra=[attr("c", ValueTag.BEG_COLLECTION, top)])
    with pytest.raises(EncodeError, match="nested deeper"):
        encode(message)
    # a collection that contains itself is refused rather than recursing forever
    cyclic: dict[str, Attribute] = {}
    cyclic["self"] = Attribute("self", ValueTag.BEG_COLLECTION, [cyclic])
    looped = codec.request(Operation.PRINT_JOB, 1, extra=[attr("c", ValueTag.BEG_COLLECTION, cyclic)])
    with pytest.raises(EncodeError):
        encode(looped)


def test_collection_framing_errors() -> None:
    beg = field(ValueTag.BEG_COLLECTION, "c")
    member = field(ValueTag.MEMBER_ATTR_NAME, "", "m")
    value = field(ValueTag.INTEGER, "", b"\0\0\0\1")
    end = field(ValueTag.END_COLLECTION, "")
    cases = [
        (beg + value + end, "before any member name"),
        (beg + member + end, "without a value"),
        (beg + member + member, "without a value"),
        (beg + field(ValueTag.MEMBER_ATTR_NAME, "", "") + value + end, "empty member name"),
        (beg + field(ValueTag.MEMBER_ATTR_NAME, "n", "m") + value + end, "with a name"),
        (beg + member + field(ValueTag.INTEGER, "v", b"\0\0\0\1") + end, "value with a name"),
        (beg + member + value + field(ValueTag.INTEGER, "n", b"\0\0\0\1") + end, "named"),
        (beg + member + value + field(ValueTag.END_COLLECTION, "", "x"), "endCollection with"),
        (beg + member + value + b"\x02" + end, "delimiter tag inside"),
    ]
    for body, fragment in cases:
        assert_bad(op_prefix() + body + b"\x03", fragment)
    # a collection that never ends is a truncated message
    assert_bad(op_prefix() + beg + member + value, "truncated")


def test_collection_decodes_1setof_members_and_mixed_tags() -> None:
    body = (
        field(ValueTag.BEG_COLLECTION, "c")
        + field(ValueTag.MEMBER_ATTR_NAME, "", "k")
        + field(ValueTag.KEYWORD, "", "a")
        + field(ValueTag.NAME, "", "b")
        + field(ValueTag.END_COLLECTION, "")
        + field(ValueTag.BEG_COLLECTION, "")  # a second collection value of "c"
        + field(ValueTag.END_COLLECTION, "")
    )
    m = decode(op_prefix() + body + b"\x03")
    c = m.operation.attributes["c"]
    assert c.values[1] == {}
    k = c.values[0]["k"]
    assert k.tag == ValueTag.KEYWORD and k.values == ["a", "b"]
    assert k.tags == [ValueTag.KEYWORD, ValueTag.NAME]
    assert encode(m) == op_prefix() + body + b"\x03"


@pytest.mark.parametrize(
    "tag",
    [
        ValueTag.TEXT,
        ValueTag.NAME,
        ValueTag.KEYWORD,
        ValueTag.URI,
        ValueTag.URI_SCHEME,
        ValueTag.CHARSET,
        ValueTag.NATURAL_LANGUAGE,
        ValueTag.MIME_MEDIA_TYPE,
    ],
)
def test_non_utf8_string_value(tag: int) -> None:
    assert_bad(one(tag, b"caf\xe9"), "UTF-8")
    assert decode(one(tag, "café")).get(OP, "x") == "café"


def test_non_utf8_names_and_language_strings() -> None:
    assert list(decode(one(ValueTag.KEYWORD, "a", name="ÿ")).operation.attributes)[-1] == "ÿ"
    raw_name = op_prefix() + field(ValueTag.KEYWORD, b"bad\xff", "a") + b"\x03"
    assert_bad(raw_name, "UTF-8")
    member = (
        field(ValueTag.BEG_COLLECTION, "c")
        + field(ValueTag.MEMBER_ATTR_NAME, "", b"\xc3")
        + field(ValueTag.INTEGER, "", b"\0\0\0\1")
        + field(ValueTag.END_COLLECTION, "")
    )
    assert_bad(op_prefix() + member + b"\x03", "UTF-8")
    for language, text in [(b"\xff", b"ok"), (b"en", b"\xfe\xff")]:
        raw = struct.pack(">H", len(language)) + language + struct.pack(">H", len(text)) + text
        assert_bad(one(ValueTag.TEXT_WITH_LANGUAGE, raw), "UTF-8")


def test_octet_string_is_not_text() -> None:
    assert decode(one(ValueTag.OCTET_STRING, b"\xff\x00\xfe")).get(OP, "x") == b"\xff\x00\xfe"


@pytest.mark.parametrize("tag", [ValueTag.INTEGER, ValueTag.ENUM])
@pytest.mark.parametrize("length", [0, 1, 2, 3, 5, 8])
def test_integer_of_wrong_length(tag: int, length: int) -> None:
    assert_bad(one(tag, b"\x00" * length), f"integer value of {length} octets")


def test_integer_values() -> None:
    assert decode(one(ValueTag.INTEGER, b"\xff\xff\xff\xff")).get(OP, "x") == -1
    assert decode(one(ValueTag.ENUM, b"\x7f\xff\xff\xff")).get(OP, "x") == 2**31 - 1
    assert decode(one(ValueTag.INTEGER, b"\x80\x00\x00\x00")).get(OP, "x") == -(2**31)


@pytest.mark.parametrize("value", [b"\x02", b"\xff", b"", b"\x00\x01"])
def test_bad_boolean(value: bytes) -> None:
    assert_bad(one(ValueTag.BOOLEAN, value), "boolean")


def test_boolean_values() -> None:
    assert decode(one(ValueTag.BOOLEAN, b"\x01")).get(OP, "x") is True
    assert decode(one(ValueTag.BOOLEAN, b"\x00")).get(OP, "x") is False


@pytest.mark.parametrize(
    ("tag", "good", "fragment"),
    [
        (ValueTag.DATE_TIME, 11, "dateTime"),
        (ValueTag.RESOLUTION, 9, "resolution"),
        (ValueTag.RANGE_OF_INTEGER, 8, "rangeOfInteger"),
    ],
)
def test_fixed_length_values(tag: int, good: int, fragment: str) -> None:
    decode(one(tag, b"\x00" * good))
    for length in (0, good - 1, good + 1):
        assert_bad(one(tag, b"\x00" * length), fragment)


def test_fixed_length_value_types() -> None:
    resolution = struct.pack(">iib", 600, 1200, 3)
    assert decode(one(ValueTag.RESOLUTION, resolution)).get(OP, "x") == Resolution(600, 1200, 3)
    assert decode(one(ValueTag.RANGE_OF_INTEGER, struct.pack(">ii", -5, 99))).get(OP, "x") == IntRange(-5, 99)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\x00", b"\x00\x05en", b"\x00\x02en\x00\x05ab", b"\x00\x02en\x00\x01ab"],
    ids=["empty", "short-length", "short-language", "short-text", "trailing"],
)
def test_bad_string_with_language(raw: bytes) -> None:
    assert_bad(one(ValueTag.NAME_WITH_LANGUAGE, raw), "WithLanguage")


def test_string_with_language() -> None:
    raw = b"\x00\x02fr\x00\x05\xc3\xa9t\xc3\xa9"
    m = decode(one(ValueTag.TEXT_WITH_LANGUAGE, raw))
    assert m.get(OP, "x") == StringWithLanguage("fr", "été")
    assert encode(m) == one(ValueTag.TEXT_WITH_LANGUAGE, raw)


def test_out_of_band_values() -> None:
    body = b"".join(field(tag, f"a{tag:x}") for tag in (0x10, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17))
    m = decode(op_prefix() + body + b"\x03")
    for tag in (0x10, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17):
        attribute = m.operation.attributes[f"a{tag:x}"]
        assert attribute.tag == tag and attribute.values == [None]
    assert encode(m) == op_prefix() + body + b"\x03"
    # RFC 8010 says out-of-band values are empty; a stray value is ignored, not trusted
    assert decode(one(ValueTag.NO_VALUE, b"junk")).get(OP, "x") is None


def test_mixed_syntax_1setof() -> None:
    body = (
        field(ValueTag.KEYWORD, "job-sheets", "none")
        + field(ValueTag.NAME, "", "Classified")
        + field(ValueTag.KEYWORD, "", "standard")
    )
    m = decode(op_prefix() + body + b"\x03")
    sheets = m.operation.attributes["job-sheets"]
    assert sheets.tag == ValueTag.KEYWORD
    assert sheets.values == ["none", "Classified", "standard"]
    assert sheets.tags == [ValueTag.KEYWORD, ValueTag.NAME, ValueTag.KEYWORD]
    assert sheets.value_tags() == sheets.tags
    assert encode(m) == op_prefix() + body + b"\x03"
    same = decode(one(ValueTag.KEYWORD, "a"))
    assert same.operation.attributes["x"].tags is None


def test_reserved_tags_are_opaque_octets() -> None:
    for tag in (0x20, 0x38, 0x40, 0x43, 0x4B, 0x60, 0x80, 0xFF):
        m = decode(one(tag, b"\x01\x02"))
        assert m.get(OP, "x") == b"\x01\x02"
        assert encode(m) == one(tag, b"\x01\x02")


def test_extension_tag() -> None:
    # CUPS reads a 32-bit tag right after 0x7F; so do we, keeping the 0x7F marker.
    raw = op_prefix() + b"\x7f\x40\x00\x00\x01" + field(0, "x", b"v")[1:] + b"\x03"
    m = decode(raw)
    assert m.operation.attributes["x"] == Attribute("x", ValueTag.EXTENSION, [b"v"])
    assert decoder_result(raw) == m
    with pytest.raises(EncodeError, match="extension"):
        encode(m)
    high = op_prefix() + b"\x7f\x80\x00\x00\x01" + field(0, "x", b"v")[1:] + b"\x03"
    assert_bad(high, "high bit")


def test_duplicate_group_tags_are_kept_apart() -> None:
    # Get-Jobs responses repeat the job group once per job
    body = (
        b"\x02" + field(ValueTag.INTEGER, "job-id", b"\0\0\0\1")
        + b"\x02" + field(ValueTag.INTEGER, "job-id", b"\0\0\0\2")
        + b"\x04"
    )  # fmt: skip
    m = decode(op_prefix() + body + b"\x03")
    assert [g.tag for g in m.groups] == [OP, JOB, JOB, PRINTER]
    assert [g.attributes["job-id"].value for g in m.groups_of(JOB)] == [1, 2]
    assert m.groups[3].attributes == {}
    assert encode(m) == op_prefix() + body + b"\x03"


def test_repeated_attribute_lenient_and_strict() -> None:
    body = (
        field(ValueTag.INTEGER, "copies", b"\0\0\0\x64")
        + field(ValueTag.KEYWORD, "sides", "one-sided")
        + field(ValueTag.INTEGER, "copies", b"\0\0\0\1")
    )
    raw = op_prefix() + b"\x02" + body + b"\x03"
    lenient = decode(raw)
    job = lenient.group(JOB)
    assert job is not None
    # the last occurrence's value, at the first one's place
    assert list(job.attributes) == ["copies", "sides"] and job.attributes["copies"].values == [1]
    assert decoder_result(raw) == lenient
    with pytest.raises(ParseError, match="twice in a group") as caught:
        decode(raw, strict=True)
    assert caught.value.status == Status.CLIENT_ERROR_BAD_REQUEST
    with pytest.raises(ParseError, match="twice in a group"):
        Decoder(strict=True).feed(raw)
    # the same name in different groups is not a repeat
    twice = op_prefix() + b"\x02" + field(ValueTag.KEYWORD, "attributes-charset", "x") + b"\x03"
    assert decode(twice, strict=True).get(JOB, "attributes-charset") == "x"
    member = field(ValueTag.MEMBER_ATTR_NAME, "", "m") + field(ValueTag.INTEGER, "", b"\0\0\0\1")
    col = field(ValueTag.BEG_COLLECTION, "c") + member + member + field(ValueTag.END_COLLECTION, "")
    assert decode(op_prefix() + col + b"\x03").get(OP, "c")["m"].values == [1]
    with pytest.raises(ParseError, match="twice in a collection"):
        decode(op_prefix() + col + b"\x03", strict=True)
    for path in FIXTURE_FILES:  # real clients never repeat
        raw = path.read_bytes()
        assert decode(raw, strict=True) == decode(raw)
        assert decoder_result(raw, 64) == decode(raw)


@pytest.mark.parametrize("cut", [0, 1, 4, 7, 8, 9, 12, 20, -2, -1])
def test_truncated_messages(cut: int) -> None:
    full = one(ValueTag.KEYWORD, "abc")
    with pytest.raises(ParseError, match="truncated"):
        decode(full[:cut])


def test_data_after_attributes() -> None:
    m = decode(one(ValueTag.KEYWORD, "abc") + b"%PDF-1.7 data")
    assert m.data == b"%PDF-1.7 data"
    assert decode(bytearray(one(ValueTag.KEYWORD, "abc"))).data == b""  # type: ignore[arg-type]


# ---------------------------------------------------------------- Decoder


def test_decoder_end_on_truncated_head() -> None:
    full = one(ValueTag.KEYWORD, "abc")
    for cut in (0, 3, 8, 9, len(full) - 3, len(full) - 1):
        decoder = Decoder()
        assert decoder.feed(full[:cut]) == []
        assert not decoder.head_done
        with pytest.raises(ParseError, match="truncated") as caught:
            decoder.end()
        assert caught.value.status == Status.CLIENT_ERROR_BAD_REQUEST


def test_decoder_streams_document_data() -> None:
    head = one(ValueTag.KEYWORD, "abc")
    decoder = Decoder()
    events = decoder.feed(head[:5])
    assert events == []
    events = decoder.feed(head[5:] + b"AB")
    assert len(events) == 2 and isinstance(events[0], MessageHead)
    assert events[0].message == decode(head)
    assert events[1] == DocumentData(b"AB")
    assert decoder.head_done
    assert decoder.feed(b"") == []
    assert decoder.feed(b"CD") == [DocumentData(b"CD")]
    assert decoder.feed(bytearray(b"E")) == [DocumentData(b"E")]  # type: ignore[arg-type]
    decoder.end()


def test_decoder_head_without_data() -> None:
    decoder = Decoder()
    events = decoder.feed(one(ValueTag.KEYWORD, "abc"))
    assert [type(e) for e in events] == [MessageHead]
    decoder.end()


def test_decoder_attribute_section_size_limit() -> None:
    big = op_prefix() + field(ValueTag.TEXT, "x", "a" * 3000) + b"\x03"
    size = len(big)
    # exactly at the limit is fine, in one piece or byte by byte
    decoder = Decoder(max_attributes_size=size)
    assert isinstance(decoder.feed(big + b"data")[0], MessageHead)
    # one octet over is refused with request-value-too-long...
    decoder = Decoder(max_attributes_size=size - 1)
    with pytest.raises(ParseError) as caught:
        decoder.feed(big)
    assert caught.value.status == Status.CLIENT_ERROR_REQUEST_VALUE_TOO_LONG
    # ...also when it trickles in, as soon as the buffer passes the limit
    decoder = Decoder(max_attributes_size=1000)
    fed = 0
    with pytest.raises(ParseError) as caught:
        for i in range(0, size, 100):
            decoder.feed(big[i : i + 100])
            fed = i + 100
    assert caught.value.status == Status.CLIENT_ERROR_REQUEST_VALUE_TOO_LONG
    assert fed == 1000  # the feed that took the buffer to 1100 octets raised
    # a small head followed by a large document in the same chunk is not "too large"
    decoder = Decoder(max_attributes_size=200)
    events = decoder.feed(one(ValueTag.KEYWORD, "abc") + b"x" * 10_000)
    assert isinstance(events[0], MessageHead) and events[1] == DocumentData(b"x" * 10_000)


def test_decoder_default_limit() -> None:
    assert codec.MAX_ATTRIBUTES_SIZE == 1 << 20
    decoder = Decoder()
    filler = field(ValueTag.TEXT, "", "a" * 30_000)
    decoder.feed(op_prefix() + field(ValueTag.TEXT, "x", "a"))
    with pytest.raises(ParseError) as caught:
        for _ in range(40):
            decoder.feed(filler)
    assert caught.value.status == Status.CLIENT_ERROR_REQUEST_VALUE_TOO_LONG


def test_decoder_trickled_head_costs_linear_time() -> None:
    # A 500 KB head in 1-octet pieces: a decoder that re-parsed its whole buffer
    # on every feed would take hours; framing only the new octets takes moments.
    values_ = b"".join(field(ValueTag.KEYWORD, "", "v" * 200) for _ in range(2500))
    buf = op_prefix() + field(ValueTag.KEYWORD, "many", "v") + values_ + b"\x03PDF"
    assert len(buf) > 500_000
    decoder = Decoder()
    started = time.perf_counter()
    events = []
    for i in range(len(buf)):
        events += decoder.feed(buf[i : i + 1])
    elapsed = time.perf_counter() - started
    assert isinstance(events[0], MessageHead)
    assert len(events[0].message.operation.attributes["many"].values) == 2501
    assert b"".join(e.data for e in events[1:]) == b"PDF"  # type: ignore[union-attr]
    assert elapsed < 20, f"{elapsed:.1f} s"


def test_decoder_matches_decode_on_errors() -> None:
    bad = one(ValueTag.INTEGER, b"\x00\x01")
    with pytest.raises(ParseError, match="integer value of 2 octets"):
        decode(bad)
    decoder = Decoder()
    with pytest.raises(ParseError, match="integer value of 2 octets"):
        decoder.feed(bad)


# ---------------------------------------------------------------- encoding limits


def test_value_length_limit() -> None:
    limit = codec.MAX_VALUE_LENGTH
    assert limit == 32767
    ok = codec.request(Operation.PRINT_JOB, 1, extra=[attr("x", ValueTag.OCTET_STRING, b"a" * limit)])
    assert decode(encode(ok)) == ok
    for tag, value in [
        (ValueTag.OCTET_STRING, b"a" * (limit + 1)),
        (ValueTag.TEXT, "a" * (limit + 1)),
        (ValueTag.TEXT, "é" * (limit // 2 + 1)),  # the limit is in octets, not characters
        (ValueTag.NAME_WITH_LANGUAGE, StringWithLanguage("en", "a" * (limit - 4))),
        (ValueTag.TEXT_WITH_LANGUAGE, StringWithLanguage("en", "a" * (limit + 1))),
    ]:
        message = codec.request(Operation.PRINT_JOB, 1, extra=[attr("x", tag, value)])
        with pytest.raises(EncodeError, match="at most 32767"):
            encode(message)
    long_name = codec.request(Operation.PRINT_JOB, 1, extra=[attr("n" * (limit + 1), 0x44, "a")])
    with pytest.raises(EncodeError, match="at most 32767"):
        encode(long_name)
    member = Attribute("m" * (limit + 1), ValueTag.INTEGER, [1])
    long_member = codec.request(
        Operation.PRINT_JOB, 1, extra=[attr("c", ValueTag.BEG_COLLECTION, {member.name: member})]
    )
    with pytest.raises(EncodeError, match="at most 32767"):
        encode(long_member)
    # the largest textWithLanguage that fits: 2 + 2 + 2 + 32761 octets
    fits = codec.request(
        Operation.PRINT_JOB,
        1,
        extra=[attr("x", ValueTag.TEXT_WITH_LANGUAGE, StringWithLanguage("en", "a" * (limit - 6)))],
    )
    assert decode(encode(fits)) == fits


@pytest.mark.parametrize("length", [32767, 32768, 40000, 65535])
def test_lenient_read_of_long_values(length: int) -> None:
    for tag, value in [(ValueTag.OCTET_STRING, b"\xab" * length), (ValueTag.TEXT, b"t" * length)]:
        raw = (
            op_prefix()
            + bytes([tag])
            + b"\x00\x01x"
            + struct.pack(">H", length)
            + value
            + field(ValueTag.KEYWORD, "after", "ok")
            + b"\x03doc"
        )
        m = decode(raw)
        got = m.get(OP, "x")
        assert len(got) == length
        assert got == (value if tag == ValueTag.OCTET_STRING else value.decode())
        assert m.get(OP, "after") == "ok" and m.data == b"doc"
        assert decoder_result(raw, 4096) == m
        if length > 32767:
            with pytest.raises(EncodeError):
                encode(m)
        else:
            assert encode(m) == raw
    long_name = op_prefix() + bytes([ValueTag.KEYWORD]) + struct.pack(">H", length)
    long_name += b"n" * length + b"\x00\x01v\x03"
    assert list(decode(long_name).operation.attributes)[-1] == "n" * length


# ---------------------------------------------------------------- encoder hardening


def bad_message(*attributes: Attribute) -> Message:
    return codec.request(Operation.PRINT_JOB, 1, extra=list(attributes))


@pytest.mark.parametrize(
    ("attribute", "fragment"),
    [
        (Attribute("x", ValueTag.INTEGER, [2**31]), "32 bits"),
        (Attribute("x", ValueTag.INTEGER, [-(2**31) - 1]), "32 bits"),
        (Attribute("x", ValueTag.INTEGER, [True]), "needs an int"),
        (Attribute("x", ValueTag.ENUM, ["3"]), "needs an int"),
        (Attribute("x", ValueTag.BOOLEAN, [2]), "boolean"),
        (Attribute("x", ValueTag.BOOLEAN, [None]), "boolean"),
        (Attribute("x", ValueTag.RESOLUTION, [Resolution(300, 300, 300)]), "resolution"),
        (Attribute("x", ValueTag.RESOLUTION, [(300, 300)]), "resolution"),
        (Attribute("x", ValueTag.RANGE_OF_INTEGER, [IntRange(1, 2**31)]), "rangeOfInteger"),
        (Attribute("x", ValueTag.RANGE_OF_INTEGER, [5]), "rangeOfInteger"),
        (Attribute("x", ValueTag.DATE_TIME, [b"\x00" * 11]), "dateTime"),
        (Attribute("x", ValueTag.DATE_TIME, [DateTime(b"\x00" * 10)]), "dateTime"),
        (Attribute("x", ValueTag.TEXT_WITH_LANGUAGE, ["plain"]), "StringWithLanguage"),
        (Attribute("x", ValueTag.TEXT_WITH_LANGUAGE, [("en", 5)]), "text"),
        (Attribute("x", ValueTag.TEXT, ["\ud800"]), "UTF-8"),
        (Attribute("x", ValueTag.KEYWORD, [5]), "cannot encode"),
        (Attribute("x", ValueTag.BEG_COLLECTION, ["nope"]), "dict"),
        (Attribute("x", ValueTag.BEG_COLLECTION, [{"m": "nope"}]), "not an Attribute"),
        (Attribute("x", ValueTag.BEG_COLLECTION, [{"": Attribute("", 0x21, [1])}]), "empty name"),
        (Attribute("x", ValueTag.BEG_COLLECTION, [{"m": Attribute("m", 0x21, [])}]), "no value"),
        (Attribute("x", ValueTag.KEYWORD, []), "no value"),
        (Attribute("", ValueTag.KEYWORD, ["a"]), "empty name"),
        (Attribute("\udcff", ValueTag.KEYWORD, ["a"]), "UTF-8"),
        (Attribute("x", ValueTag.KEYWORD, ["a", "b"], tags=[ValueTag.KEYWORD]), "tags"),
        (Attribute("x", ValueTag.EXTENSION, [b"\0\0\0\1"]), "extension"),
        (Attribute("x", ValueTag.END_COLLECTION, [b""]), "endCollection"),
        (Attribute("x", ValueTag.MEMBER_ATTR_NAME, ["m"]), "memberAttrName"),
        (Attribute("x", 0x03, ["a"]), "not a value tag"),
        (Attribute("x", 0x100, ["a"]), "not a value tag"),
    ],
)
def test_encode_refuses_with_encode_error(attribute: Attribute, fragment: str) -> None:
    with pytest.raises(EncodeError, match=fragment):
        encode(bad_message(attribute))


@pytest.mark.parametrize("tag", [0x00, 0x03, 0x10, 0x44, -1])
def test_encode_refuses_bad_group_tags(tag: int) -> None:
    message = Message((2, 0), Operation.PRINT_JOB, 1, [AttributeGroup(tag)])
    with pytest.raises(EncodeError, match="group tag"):
        encode(message)


@pytest.mark.parametrize(
    "header_fields",
    [((256, 0), 2, 1), ((2, -1), 2, 1), ((2, 0), 0x10000, 1), ((2, 0), 2, 2**31)],
)
def test_encode_refuses_bad_header(header_fields: tuple[tuple[int, int], int, int]) -> None:
    version, code, request_id = header_fields
    with pytest.raises(EncodeError, match="header"):
        encode(Message(version, code, request_id))


def test_encode_refuses_non_bytes_data() -> None:
    message = Message((2, 0), Operation.PRINT_JOB, 1, data="text")  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="bytes"):
        encode(message)


def test_encode_accepts_convenient_python_values() -> None:
    when = datetime(2026, 11, 26, 9, 30, 15, 700000, tzinfo=timezone(timedelta(hours=-5)))
    message = bad_message(
        attr("bool-int", ValueTag.BOOLEAN, 1),
        attr("state", ValueTag.ENUM, Status.SERVER_ERROR_BUSY),
        attr("when", ValueTag.DATE_TIME, when),
        attr("octets", ValueTag.OCTET_STRING, bytearray(b"\x00\x01")),
        attr("res", ValueTag.RESOLUTION, (600, 600, 3)),
        attr("range", ValueTag.RANGE_OF_INTEGER, (1, 99)),
        attr("text", ValueTag.TEXT_WITH_LANGUAGE, ("en", "hi")),
    )
    m = decode(encode(message))
    assert m.get(OP, "bool-int") is True
    assert m.get(OP, "state") == 0x0507
    assert m.get(OP, "when") == DateTime.from_datetime(when)
    assert m.get(OP, "when").to_datetime() == when
    assert m.get(OP, "octets") == b"\x00\x01"
    assert m.get(OP, "res") == Resolution(600, 600, 3)
    assert m.get(OP, "range") == IntRange(1, 99)
    assert m.get(OP, "text") == StringWithLanguage("en", "hi")


def test_datetime_octets() -> None:
    when = datetime(2024, 2, 29, 23, 59, 58, 300000, tzinfo=timezone(timedelta(hours=5, minutes=30)))
    raw = DateTime.from_datetime(when).raw
    assert raw == bytes([0x07, 0xE8, 2, 29, 23, 59, 58, 3]) + b"+" + bytes([5, 30])
    assert DateTime(raw).to_datetime() == when
    naive = DateTime.from_datetime(datetime(2000, 1, 1))
    assert naive.raw[8:] == b"+\x00\x00"
    assert naive.to_datetime() == datetime(2000, 1, 1, tzinfo=UTC)
    west = DateTime.from_datetime(datetime(2000, 1, 1, tzinfo=timezone(timedelta(hours=-8))))
    assert west.raw[8:] == b"-\x08\x00"


# ---------------------------------------------------------------- builders


def test_request_and_response_builders() -> None:
    req = codec.request(
        Operation.PRINT_JOB,
        7,
        "ipp://h/printers/p",
        user="alice",
        extra=[attr("copies", ValueTag.INTEGER, 2)],
    )
    assert list(req.operation.attributes) == [
        "attributes-charset",
        "attributes-natural-language",
        "printer-uri",
        "requesting-user-name",
        "copies",
    ]
    assert decode(encode(req)) == req
    reply = codec.response(req, Status.CLIENT_ERROR_NOT_POSSIBLE, "x" * 300)
    assert (reply.version, reply.code, reply.request_id) == ((2, 0), 0x0404, 7)
    assert len(reply.get(OP, "status-message")) == 255
    assert decode(encode(reply)) == reply
    assert reply.get(JOB, "job-id") is None
    assert reply.get(OP, "nothing") is None


# ---------------------------------------------------------------- capture tool


def load_capture_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("capture_ipp", REPO / "scripts" / "capture_ipp.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["capture_ipp"] = module
    spec.loader.exec_module(module)
    return module


def post(url: str, body: bytes, chunked: bool) -> bytes:
    headers = {"Content-Type": "application/ipp"}
    data: object = body
    if chunked:
        data = iter([body[:10], body[10:]])  # urllib sends an iterable chunked
        headers["Transfer-Encoding"] = "chunked"
    request = urllib.request.Request(url, data=data, headers=headers, method="POST")  # type: ignore[arg-type]
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.headers["Content-Type"] == "application/ipp"
        body_out: bytes = reply.read()
        return body_out


@pytest.mark.parametrize("chunked", [False, True])
def test_capture_server_saves_and_answers(tmp_path: Path, chunked: bool) -> None:
    tool = load_capture_tool()
    server = tool.CaptureServer(0, tmp_path)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/printers/test"
        for operation, group in [(Operation.GET_PRINTER_ATTRIBUTES, PRINTER), (0x0005, JOB)]:
            req = codec.request(operation, 42, "ipp://127.0.0.1/printers/test", version=(1, 1))
            body = encode(req) + (b"DATA" if operation == 0x0005 else b"")
            reply = decode(post(url, body, chunked))
            assert (reply.version, reply.code, reply.request_id) == ((1, 1), 0, 42)
            assert reply.group(group) is not None
            if group == JOB:
                assert reply.get(JOB, "job-id") == 1 and reply.get(JOB, "job-state") == 3
                assert reply.get(JOB, "job-uri").endswith("/jobs/1")
            else:
                assert reply.get(PRINTER, "printer-name") == "test"
                assert reply.get(PRINTER, "copies-supported") == IntRange(1, 99)
                media = reply.get(PRINTER, "media-col-default")
                assert media["media-size"].value["x-dimension"].value == 21000
        saved = sorted(tmp_path.glob("*.bin"))
        assert [p.name for p in saved] == [
            "capture-01-get-printer-attributes.bin",
            "capture-02-create-job.bin",
        ]
        assert decode(saved[1].read_bytes()).data == b"DATA"
    finally:
        server.shutdown()
        server.server_close()


def test_capture_tool_truncates_document_data_only(tmp_path: Path) -> None:
    tool = load_capture_tool()
    head = one(ValueTag.KEYWORD, "abc")
    path = tmp_path / "big.bin"
    path.write_bytes(head + b"d" * 100_000)
    assert tool.attributes_end(path.read_bytes()) == len(head)
    assert tool.truncate(path, 1000) is True
    kept = decode(path.read_bytes())
    assert kept.operation == decode(head).operation and kept.data == b"d" * (1000 - len(head))
    assert tool.truncate(path, 1000) is False


@pytest.mark.integration
def test_fresh_capture_from_cups_clients(tmp_path: Path) -> None:
    """Run the capture again against today's CUPS clients and check the codec on it."""
    tool = load_capture_tool()
    saved = tool.capture(tmp_path, verbose=False)
    # (which Get-Printer-Attributes lp sends first depends on the CUPS version)
    names = {p.name for p in saved}
    for expected in (
        "ipptool-gpa-01-get-printer-attributes.bin",
        "ipptool-print-01-print-job.bin",
        "ipptool-media-col-01-print-job.bin",
    ):
        assert expected in names
    assert any(n.startswith("lp-") and n.endswith("-create-job.bin") for n in names)
    assert any(n.startswith("lp-") and n.endswith("-send-document.bin") for n in names)
    for path in saved:
        raw = path.read_bytes()
        message = decode(raw)
        assert encode(message) == raw, path.name
        assert decoder_result(raw, 13) == message
    (create_path,) = tmp_path.glob("lp-*-create-job.bin")
    create = decode(create_path.read_bytes())
    assert create.get(JOB, "copies") == 2
    assert create.get(JOB, "sides") == "two-sided-long-edge"
    assert create.get(OP, "requesting-user-name") == "alice"

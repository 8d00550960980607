"""The sans-io LPD parser and control files (`appliance.protocols.lpd.parser`).

Recorded conversations of real peers (rlpr, CUPS's lpd backend) are parsed
whole and octet by octet; bad input ends in one `Malformed` event, never an
exception; Hypothesis drives random, mutated and truncated conversations.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.protocols.lpd import parser as wire
from appliance.protocols.lpd.parser import (
    AbortJob,
    ConnectionEnded,
    ControlFileHeader,
    ControlFileReceived,
    DataChunk,
    DataFileHeader,
    DataFileReceived,
    Malformed,
    Parser,
    PrintWaiting,
    QueueState,
    ReceiveJob,
    RemoveJobs,
    build_control_file,
    parse_control_file,
    parse_lpd_uri,
)

# What rlpr 2.x and CUPS 2.4's lpd backend sent to a capturing server.
RLPR = (b"\x02findme\n\x0254 cfA314vm\nHvm\nProot\nJf.txt\nCvm\nLroot\nfdfA314vm\n"
        b"UdfA314vm\nNf.txt\n\x00\x0312 dfA314vm\nhello world\n\x00")
CUPS = (b"\x02findme\n\x0251 cfA459vm\nHvm\nPalice\nJMy Title\nldfA459vm\nUdfA459vm\n"
        b"NMy Title\n\x00\x0324 dfA459vm\nhello world\nhello world\n\x00")
CUPS_STREAM = (b"\x02findme\n\x0251 cfA511vm\nHvm\nPalice\nJMy Title\nldfA511vm\nUdfA511vm\n"
               b"NMy Title\n\x00\x0312 dfA511vm\nhello world\n")  # no zero octet, then close


def run(data: bytes, *, split: int | None = None, end: bool = True, **limits: int) -> list:
    p = Parser(**limits)
    events = []
    if split is None:
        events += p.feed(data)
    else:
        for i in range(0, len(data), split):
            events += p.feed(data[i:i + split])
    if end:
        events += p.end()
    return events


def merged(events: list) -> list:
    """Events with consecutive DataChunks joined (chunking is not part of the meaning)."""
    out: list = []
    for e in events:
        if isinstance(e, DataChunk) and out and isinstance(out[-1], DataChunk):
            out[-1] = DataChunk(out[-1].data + e.data)
        else:
            out.append(e)
    return out


@pytest.mark.parametrize("split", [None, 1, 2, 7, 64])
def test_rlpr_conversation(split: int | None) -> None:
    events = merged(run(RLPR, split=split))
    kinds = [type(e) for e in events]
    assert kinds == [ReceiveJob, ControlFileHeader, ControlFileReceived, DataFileHeader,
                     DataChunk, DataFileReceived, ConnectionEnded]
    assert events[0] == ReceiveJob("findme")
    control = events[2].control
    assert (control.user, control.job_name, control.host) == ("root", "f.txt", "vm")
    (doc,) = control.documents()
    assert (doc.filename, doc.format, doc.copies, doc.source) == ("dfA314vm", "f", 1, "f.txt")
    assert events[4].data == b"hello world\n"
    assert events[5] == DataFileReceived("dfA314vm", 12)


def test_cups_conversation_and_stream_mode_without_zero_octet() -> None:
    events = merged(run(CUPS))
    assert events[2].control.user == "alice"
    assert events[4].data == b"hello world\nhello world\n"
    stream = merged(run(CUPS_STREAM))
    assert [type(e) for e in stream][-3:] == [DataChunk, DataFileReceived, ConnectionEnded]
    assert stream[-2] == DataFileReceived("dfA511vm", 12)


def test_data_file_first_and_several_data_files() -> None:
    control = b"Hws\nPbob\nJtwo\nldfA001ws\nldfA001ws\nNone.pdf\nodfB001ws\nNtwo.ps\n"
    data = (b"\x02findme\n" + b"\x033 dfA001ws\nabc\x00" + b"\x034 dfB001ws\n%!PS\x00"
            + b"\x02%d cfA001ws\n" % len(control) + control + b"\x00")
    events = merged(run(data))
    kinds = [type(e).__name__ for e in events]
    assert kinds == ["ReceiveJob", "DataFileHeader", "DataChunk", "DataFileReceived",
                     "DataFileHeader", "DataChunk", "DataFileReceived", "ControlFileHeader",
                     "ControlFileReceived", "ConnectionEnded"]
    cf = events[8].control
    docs = cf.documents()
    assert [(d.filename, d.format, d.copies, d.source, d.mime) for d in docs] == [
        ("dfA001ws", "l", 2, "one.pdf", None), ("dfB001ws", "o", 1, "two.ps",
                                                "application/postscript")]
    assert [cf.name_for(d) for d in docs] == ["one.pdf", "two.ps"]


def test_unknown_length_data_file_runs_to_the_end() -> None:
    events = merged(run(b"\x02q\n\x030 dfA1h\n" + b"x" * 5000 + b"\x00\x01"))
    assert events[1] == DataFileHeader(None, "dfA1h")
    assert events[2].data == b"x" * 5000 + b"\x00\x01"
    assert events[3:] == [DataFileReceived("dfA1h", 5002), ConnectionEnded()]
    assert isinstance(run(b"\x02q\n\x030 dfA1h\n" + b"x" * 10, max_data=5)[-1], Malformed)


@pytest.mark.parametrize(("line", "event"), [
    (b"\x01lp\n", PrintWaiting("lp")),
    (b"\x03lp\n", QueueState("lp", False, ())),
    (b"\x04lp alice 12\n", QueueState("lp", True, ("alice", "12"))),
    (b"\x05lp alice 12 bob\n", RemoveJobs("lp", "alice", ("12", "bob"))),
    (b"\x05lp\troot\r\n", RemoveJobs("lp", "root", ())),
])
def test_daemon_commands(line: bytes, event: object) -> None:
    assert run(line + b"ignored after the command") == [event, ConnectionEnded()]


def test_abort_subcommand() -> None:
    assert run(b"\x02q\n\x01\n")[:2] == [ReceiveJob("q"), AbortJob()]


@pytest.mark.parametrize(("data", "reason"), [
    (b"\x06lp\n", "unknown daemon command"),
    (b"\x00lp\n", "unknown daemon command"),
    (b"\n", "empty command"),
    (b"\x02\n", "queue name"),
    (b"\x02a/b\n", "queue name"),
    (b"\x02\xff\xfe\n", "UTF-8"),
    (b"\x05lp\n", "without an agent"),
    (b"\x02lp\n\x04x\n", "unknown receive-job subcommand"),
    (b"\x02lp\n\x02abc cfA\n", "count SP name"),
    (b"\x02lp\n\x0212\n", "count SP name"),
    (b"\x02lp\n\x02-1 cfA\n", "count SP name"),
    (b"\x02lp\n\x020 cfA\n", "empty control file"),
    (b"\x02lp\n\x0299999999 cfA\n", "limit"),
    (b"\x02lp\n\x03999 ../etc/x\n", "'/'"),
    (b"\x02lp\n\x023 cfA\nPab!", "longer than announced"),
    (b"\x02lp\n\x033 dfA\nabcd", "longer than announced"),
    (b"\x02lp\n\x025 cfA\nP\x00ab\x00", "zero octets"),
    (b"\x02lp\n\x024 cfA\nl/x\n\x00", "bad data file name"),
    (b"\x02lp\n\x024 cfA\n\x07ab\n\x00", "control character"),
    (b"\x02lp\n\x0210 cfA\nabc", "truncated control file"),
    (b"\x02lp\n\x0310 dfA\nabc", "truncated data file"),
    (b"\x02lp\n\x0310 df", "inside a command line"),
    (b"\x02" + b"q" * 2000, "longer than"),
])
def test_malformed_input_is_one_event(data: bytes, reason: str) -> None:
    events = run(data)
    assert isinstance(events[-1], Malformed), events
    assert reason in events[-1].reason
    assert sum(isinstance(e, Malformed) for e in events) == 1


def test_limits_on_files() -> None:
    too_big = run(b"\x02lp\n\x0311 dfA\n", max_data=10)
    assert isinstance(too_big[-1], Malformed) and "limit 10" in too_big[-1].reason
    control = run(b"\x02lp\n\x02101 cfA\n", max_control=100)
    assert isinstance(control[-1], Malformed)


def test_nothing_after_malformed_or_end() -> None:
    p = Parser()
    assert isinstance(p.feed(b"\x09\n")[-1], Malformed)
    assert p.finished and p.feed(b"\x02lp\n") == [] and p.end() == []
    p = Parser()
    assert p.end() == [ConnectionEnded()] and p.feed(b"\x02lp\n") == []


def test_control_file_fields() -> None:
    cf = parse_control_file(b"Hhost\nPalice\nJjob\nCclass\nLalice\nTtitle\nMalice@x\n"
                            b"I8\nW132\n1font\nNsrc\nfdfA1\nUdfA1\n\n")
    assert (cf.host, cf.user, cf.job_name, cf.job_class, cf.banner, cf.title, cf.mail) == (
        "host", "alice", "job", "class", "alice", "title", "alice@x")
    assert cf.prints[0].source == "src"   # an N before the print line names it
    assert cf.unlink == ("dfA1",)
    assert ("I", "8") in cf.other and ("1", "font") in cf.other
    latin = parse_control_file(b"P\xe9ric\nldfA\n")
    assert latin.user == "\xe9ric"
    assert parse_control_file("Pjos\u00e9\n".encode()).user == "jos\u00e9"
    with pytest.raises(wire.ControlFileError):
        parse_control_file(b"l".ljust(2, b"x") + b"\n" * 1 + b"lx\n" * wire.MAX_PRINT_LINES)


def test_build_control_file_round_trips() -> None:
    raw = build_control_file(host="outpost", user="alice", job_name="a\nb" + "x" * 200,
                             data_file="dfA001outpost", copies=3)
    cf = parse_control_file(raw)
    assert cf.user == "alice" and cf.job_name is not None and len(cf.job_name) == 99
    (doc,) = cf.documents()
    assert (doc.copies, doc.format) == (3, "l")


@pytest.mark.parametrize(("uri", "expected"), [
    ("lpd://printer.example/raw", ("printer.example", 515, "raw")),
    ("lpd://127.0.0.1:8515/findme", ("127.0.0.1", 8515, "findme")),
    ("lpd://[::1]:1515/q%20x", None),
    ("lpd://host/", None),
    ("ipp://host/q", None),
    ("lpd:///q", None),
    ("lpd://host:99999/q", None),
])
def test_lpd_uris(uri: str, expected: tuple | None) -> None:
    if expected is None:
        with pytest.raises(ValueError):
            parse_lpd_uri(uri)
    else:
        assert parse_lpd_uri(uri) == expected


# ---------------------------------------------------------------- fuzzing


def _check(events: list) -> None:
    """Whatever came in: events are typed, at most one Malformed, and it is last."""
    malformed = [i for i, e in enumerate(events) if isinstance(e, Malformed)]
    assert len(malformed) <= 1
    if malformed:
        assert malformed[0] == len(events) - 1


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300), st.integers(1, 50))
def test_fuzz_random_bytes(data: bytes, split: int) -> None:
    _check(run(data, split=split, max_control=200, max_data=1000))


_PIECES = [b"\x01", b"\x02", b"\x03", b"\x04", b"\x05", b"\x00", b"\n", b" ", b"findme",
           b"10 ", b"0 ", b"cfA1h", b"dfA1h", b"Palice\n", b"ldfA1h\n", b"Jjob\n", b"x" * 10]


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(_PIECES), max_size=40), st.integers(1, 17))
def test_fuzz_protocol_shaped_input(pieces: list[bytes], split: int) -> None:
    _check(run(b"".join(pieces), split=split))


@settings(max_examples=2000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([RLPR, CUPS, CUPS_STREAM]), st.integers(0, 200), st.binary(max_size=3),
       st.booleans(), st.integers(1, 30))
def test_fuzz_mutated_and_truncated_real_conversations(base: bytes, at: int, patch: bytes,
                                                       cut: bool, split: int) -> None:
    at = at % (len(base) + 1)
    data = base[:at] if cut else base[:at] + patch + base[at + len(patch):]
    events = run(data, split=split)
    _check(events)
    if cut and at < len(base) and base is not CUPS_STREAM:
        assert isinstance(events[-1], (Malformed, ConnectionEnded))
        # a cut conversation never ends with a job's last file received and a clean end
        # unless the cut falls exactly after a complete subcommand

"""Whatever bytes arrive, the simulated MFD answers with a decodable IPP message.

No sockets here: the resource is driven with twisted.web's DummyRequest and
the MFD gets a MemoryReactorClock, so hypothesis can try thousands of inputs.
"""

from __future__ import annotations

import io
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import MemoryReactorClock
from twisted.web.test.requesthelper import DummyRequest

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.codec import attr
from appliance.protocols.ipp.constants import Operation, Status, ValueTag
from simulators.mfd.ipp import IppResource
from simulators.mfd.printer import SimulatedMfd

URI = "ipp://127.0.0.1:631/ipp/print"


def post(resource: IppResource, body: bytes) -> codec.Message:
    request = DummyRequest([b"ipp", b"print"])
    request.method = b"POST"
    request.path = b"/ipp/print"  # type: ignore[attr-defined]
    request.requestHeaders.setRawHeaders(b"content-type", [b"application/ipp"])
    request.requestHeaders.setRawHeaders(b"host", [b"127.0.0.1:631"])
    request.content = io.BytesIO(body)
    answer = resource.render_POST(request)  # type: ignore[arg-type]
    return codec.decode(answer)


def valid_print_job() -> bytes:
    message = codec.request(Operation.PRINT_JOB, 7, URI, user="alice", extra=[
        attr("job-name", ValueTag.NAME, "fuzz.pdf"),
        attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf"),
    ])
    message.ensure_group(0x02).add(attr("copies", ValueTag.INTEGER, 2))
    message.data = b"%PDF-1.4 fuzz"
    return codec.encode(message)


def make(tmp: Path) -> IppResource:
    mfd = SimulatedMfd("fuzz", tmp / "out", tmp / "state", reactor=MemoryReactorClock())
    return IppResource(mfd)


def test_a_valid_request_through_the_adapter(tmp_path: Path) -> None:
    reply = post(make(tmp_path), valid_print_job())
    assert reply.code == Status.SUCCESSFUL_OK and reply.request_id == 7


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=200))
def test_random_bytes_get_an_error_status(tmp_path: Path, body: bytes) -> None:
    reply = post(make(tmp_path), body)
    assert reply.code >= 0x0400


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_requests_never_break_the_printer(tmp_path: Path, data: st.DataObject) -> None:
    body = bytearray(valid_print_job())
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(0, len(body) - 1))
        body[position] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(body)))
    reply = post(make(tmp_path), bytes(body[:cut]))
    assert reply.code in {int(status) for status in Status}


def test_an_unsupported_attribute_that_cannot_be_echoed_is_left_out(tmp_path: Path) -> None:
    message = codec.request(Operation.VALIDATE_JOB, 9, URI, user="alice")
    head = codec.encode_attributes(message)[:-1]  # without end-of-attributes
    extension_sides = b"\x02\x7f\x00\x00\x01\x00\x00\x05sides\x00\x03abc"
    reply = post(make(tmp_path), head + extension_sides + b"\x03")
    assert reply.code == Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES
    assert reply.request_id == 9
    assert reply.group(0x05) is None

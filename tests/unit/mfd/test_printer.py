"""The simulated MFD's IPP side, over real loopback sockets with our codec as the client."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq

from appliance.protocols.ipp.codec import attr
from appliance.protocols.ipp.constants import (
    GroupTag,
    JobState,
    Operation,
    PrinterState,
    Status,
    ValueTag,
)
from simulators.mfd.printer import SimulatedMfd, safe_name

from .helpers import (
    call,
    job_done,
    job_id_of,
    make_request,
    output_files,
    pdf_bytes,
    print_job,
    send,
    until,
)

OP, JOB, PRINTER = GroupTag.OPERATION, GroupTag.JOB, GroupTag.PRINTER
ensure = pytest_twisted.ensureDeferred


def attributes(message: Any, tag: int) -> dict[str, Any]:
    group = message.group(tag)
    assert group is not None, f"no group 0x{tag:02x} in {message}"
    return {name: a.values if len(a.values) > 1 else a.value for name, a in
            group.attributes.items()}


# ---------------------------------------------------------------- Get-Printer-Attributes


@ensure
async def test_get_printer_attributes_describes_the_printer(mfd: SimulatedMfd) -> None:
    reply = await call(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    assert reply.code == Status.SUCCESSFUL_OK
    printer = attributes(reply, PRINTER)
    assert printer["printer-uri-supported"] == mfd.ipp_uri
    assert printer["printer-name"] == "mfd-1"
    assert printer["printer-state"] == PrinterState.IDLE
    assert printer["printer-state-reasons"] == "none"
    assert printer["printer-is-accepting-jobs"] is True
    assert printer["queued-job-count"] == 0
    assert printer["color-supported"] is True
    assert printer["printer-up-time"] >= 1
    for fmt in ("application/pdf", "application/postscript", "image/pwg-raster",
                "application/vnd.hp-pclxl", "application/octet-stream"):
        assert fmt in printer["document-format-supported"]
    assert set(printer["operations-supported"]) >= {
        Operation.PRINT_JOB, Operation.VALIDATE_JOB, Operation.CREATE_JOB,
        Operation.SEND_DOCUMENT, Operation.CANCEL_JOB, Operation.GET_JOB_ATTRIBUTES,
        Operation.GET_JOBS, Operation.GET_PRINTER_ATTRIBUTES}
    for name in ("uri-security-supported", "uri-authentication-supported",
                 "ipp-versions-supported", "charset-configured", "charset-supported",
                 "natural-language-configured", "generated-natural-language-supported",
                 "pdl-override-supported", "compression-supported", "sides-supported",
                 "copies-supported", "marker-names", "marker-levels", "media-col-default"):
        assert name in printer, name


@ensure
async def test_the_answer_echoes_version_and_request_id(mfd: SimulatedMfd) -> None:
    request = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES, version=(1, 1))
    reply = await send(mfd.ipp_uri, request)
    assert reply.version == (1, 1)
    assert reply.request_id == request.request_id
    assert reply.code == Status.SUCCESSFUL_OK


@ensure
async def test_requested_attributes_limit_the_answer(mfd: SimulatedMfd) -> None:
    extra = [attr("requested-attributes", ValueTag.KEYWORD, "printer-state", "sides-supported")]
    reply = await call(mfd, Operation.GET_PRINTER_ATTRIBUTES, extra=extra)
    assert set(attributes(reply, PRINTER)) == {"printer-state", "sides-supported"}
    extra = [attr("requested-attributes", ValueTag.KEYWORD, "job-template")]
    reply = await call(mfd, Operation.GET_PRINTER_ATTRIBUTES, extra=extra)
    names = set(attributes(reply, PRINTER))
    assert "copies-supported" in names and "printer-name" not in names


@ensure
async def test_a_mono_device_says_so(make_mfd: Any) -> None:
    mono = make_mfd("mono", colour=False)
    printer = attributes(await call(mono, Operation.GET_PRINTER_ATTRIBUTES), PRINTER)
    assert printer["color-supported"] is False
    assert printer["print-color-mode-supported"] == "monochrome"


# ---------------------------------------------------------------- bad requests


@ensure
async def test_bad_requests_get_the_right_status(mfd: SimulatedMfd) -> None:
    zero = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    zero.request_id = 0
    assert (await send(mfd.ipp_uri, zero)).code == Status.CLIENT_ERROR_BAD_REQUEST

    old = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES, version=(0, 0))
    reply = await send(mfd.ipp_uri, old)
    assert reply.code == Status.SERVER_ERROR_VERSION_NOT_SUPPORTED
    assert reply.version == (0, 0)

    no_charset = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    del no_charset.operation.attributes["attributes-charset"]
    assert (await send(mfd.ipp_uri, no_charset)).code == Status.CLIENT_ERROR_BAD_REQUEST

    no_uri = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    del no_uri.operation.attributes["printer-uri"]
    assert (await send(mfd.ipp_uri, no_uri)).code == Status.CLIENT_ERROR_BAD_REQUEST

    latin = make_request(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    latin.operation.attributes["attributes-charset"].values = ["iso-8859-1"]
    assert (await send(mfd.ipp_uri, latin)).code == Status.CLIENT_ERROR_CHARSET_NOT_SUPPORTED

    pause = make_request(mfd, Operation.PAUSE_PRINTER)
    assert (await send(mfd.ipp_uri, pause)).code == Status.SERVER_ERROR_OPERATION_NOT_SUPPORTED


@ensure
async def test_undecodable_requests_are_answered_bad_request(mfd: SimulatedMfd) -> None:
    # header, operation group, then an attribute whose value runs past the end
    truncated = b"\x02\x00\x00\x0b\x00\x00\x00\x07\x01\x47\x00\x12attributes-charset\x00\x40"
    reply = await send(mfd.ipp_uri, truncated)
    assert reply.code == Status.CLIENT_ERROR_BAD_REQUEST
    assert reply.request_id == 7
    assert reply.version == (2, 0)


@ensure
async def test_only_application_ipp_is_taken(mfd: SimulatedMfd) -> None:
    response = await treq.post(mfd.ipp_uri.replace("ipp:", "http:"), data=b"{}",
                               headers={b"Content-Type": [b"application/json"]},
                               persistent=False)
    assert response.code == 415
    await response.content()


@ensure
async def test_unsupported_document_format_is_refused(mfd: SimulatedMfd) -> None:
    reply = await print_job(mfd, b"GIF89a", document_format="image/gif")
    assert reply.code == Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED
    assert attributes(reply, GroupTag.UNSUPPORTED)["document-format"] == "image/gif"
    assert mfd.jobs() == []


# ---------------------------------------------------------------- printing


@ensure
async def test_print_job_writes_the_document_and_counts(mfd: SimulatedMfd,
                                                         pages: dict[str, Any]) -> None:
    document = pdf_bytes(3)
    reply = await print_job(mfd, document, name="Q3 report/../x.pdf")
    assert reply.code == Status.SUCCESSFUL_OK
    job = attributes(reply, JOB)
    job_id = job["job-id"]
    assert job["job-uri"] == f"{mfd.ipp_uri}/{job_id}"
    assert job["job-state"] in (JobState.PENDING, JobState.PROCESSING, JobState.COMPLETED)
    await job_done(mfd, job_id)

    [written] = output_files(mfd)
    assert written.name == f"{job_id:06d}-x.pdf"
    assert written.read_bytes() == document
    assert pages["calls"] == [(pages["calls"][0][0], "application/pdf")]
    assert mfd.counters == {"total": 3, "mono": 3, "colour": 0}
    saved = json.loads((mfd.state_dir / "counters.json").read_text())
    assert saved["counters"] == {"total": 3, "mono": 3, "colour": 0}

    reply = await call(mfd, Operation.GET_JOB_ATTRIBUTES,
                       extra=[attr("job-id", ValueTag.INTEGER, job_id)])
    assert reply.code == Status.SUCCESSFUL_OK
    done = attributes(reply, JOB)
    assert done["job-state"] == JobState.COMPLETED
    assert done["job-state-reasons"] == "job-completed-successfully"
    assert done["job-impressions-completed"] == 3
    assert done["job-media-sheets-completed"] == 3
    assert done["job-originating-user-name"] == "alice"
    assert done["job-name"] == "Q3 report/../x.pdf"
    assert done["time-at-completed"] >= done["time-at-processing"] >= done["time-at-creation"]
    assert not list(mfd.state_dir.joinpath("spool").iterdir())


@ensure
async def test_impressions_are_pages_over_number_up_times_copies(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    pages["pages"] = 5
    job = [attr("copies", ValueTag.INTEGER, 3), attr("number-up", ValueTag.INTEGER, 2),
           attr("sides", ValueTag.KEYWORD, "two-sided-long-edge")]
    reply = await print_job(mfd, pdf_bytes(5), job=job)
    job_id = job_id_of(reply)
    await job_done(mfd, job_id)
    printed = mfd.job(job_id)
    assert printed is not None
    assert printed.impressions == 9  # ceil(5 / 2) * 3
    assert printed.sheets(printed.impressions) == 5  # two-sided: sides count sheets only
    assert mfd.counters["total"] == 9


@pytest.mark.parametrize(
    ("device_colour", "mode", "document_colour", "expect_colour"),
    [
        (True, "monochrome", True, False),
        (True, "color", False, True),
        (True, None, True, True),
        (True, "auto", False, False),
        (False, "color", True, False),
    ],
)
@ensure
async def test_colour_follows_print_color_mode_then_the_document(
    make_mfd: Any, pages: dict[str, Any], device_colour: bool, mode: str | None,
    document_colour: bool, expect_colour: bool,
) -> None:
    mfd = make_mfd(colour=device_colour)
    pages["pages"], pages["colour"] = 2, document_colour
    job = [attr("print-color-mode", ValueTag.KEYWORD, mode)] if mode else None
    await job_done(mfd, job_id_of(await print_job(mfd, b"%PDF-1.4", job=job)))
    expected = {"total": 2, "mono": 0 if expect_colour else 2, "colour": 2 if expect_colour else 0}
    assert mfd.counters == expected


@ensure
async def test_unknown_page_count_prints_one_page(mfd: SimulatedMfd,
                                                  pages: dict[str, Any]) -> None:
    pages["pages"] = None
    reply = await print_job(mfd, b"\x1b%-12345X@PJL", document_format="application/octet-stream")
    await job_done(mfd, job_id_of(reply))
    assert pages["calls"][0][1] is None  # octet-stream: let the library sniff
    assert mfd.counters["total"] == 1


@ensure
async def test_printing_without_mocks_counts_at_least_a_page(mfd: SimulatedMfd) -> None:
    reply = await print_job(mfd, pdf_bytes(2))
    await job_done(mfd, job_id_of(reply))
    job = mfd.jobs()[0]
    assert job.state == JobState.COMPLETED
    assert job.pages in (1, 2)  # 1 while the documents library is missing
    assert mfd.counters["total"] == job.impressions


@ensure
async def test_unsupported_template_values_are_ignored_or_refused(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    job = [attr("sides", ValueTag.KEYWORD, "three-sided")]
    reply = await print_job(mfd, b"%PDF", job=job)
    assert reply.code == Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES
    assert attributes(reply, GroupTag.UNSUPPORTED)["sides"] == "three-sided"
    fidelity = [attr("ipp-attribute-fidelity", ValueTag.BOOLEAN, True)]
    reply = await call(mfd, Operation.PRINT_JOB, extra=fidelity, job=job, data=b"%PDF")
    assert reply.code == Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED


@ensure
async def test_validate_job(mfd: SimulatedMfd) -> None:
    extra = [attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf")]
    assert (await call(mfd, Operation.VALIDATE_JOB, extra=extra)).code == Status.SUCCESSFUL_OK
    extra = [attr("document-format", ValueTag.MIME_MEDIA_TYPE, "text/html")]
    reply = await call(mfd, Operation.VALIDATE_JOB, extra=extra)
    assert reply.code == Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED
    assert mfd.jobs() == []


@ensure
async def test_create_job_then_send_document(mfd: SimulatedMfd, pages: dict[str, Any]) -> None:
    created = await call(mfd, Operation.CREATE_JOB,
                         extra=[attr("job-name", ValueTag.NAME, "two-step")])
    assert created.code == Status.SUCCESSFUL_OK
    job_id = job_id_of(created)
    await until(lambda: True)
    job = mfd.job(job_id)
    assert job is not None and job.state == JobState.PENDING  # waits for its document

    target = [attr("job-id", ValueTag.INTEGER, job_id),
              attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf"),
              attr("last-document", ValueTag.BOOLEAN, True)]
    sent = await call(mfd, Operation.SEND_DOCUMENT, extra=target, data=b"%PDF-two-step")
    assert sent.code == Status.SUCCESSFUL_OK
    await job_done(mfd, job_id)
    assert job.state == JobState.COMPLETED
    assert output_files(mfd)[0].read_bytes() == b"%PDF-two-step"

    again = await call(mfd, Operation.SEND_DOCUMENT, extra=target, data=b"more")
    assert again.code == Status.CLIENT_ERROR_NOT_POSSIBLE
    no_last = await call(mfd, Operation.SEND_DOCUMENT, extra=target[:2], data=b"x")
    assert no_last.code == Status.CLIENT_ERROR_BAD_REQUEST


@ensure
async def test_get_jobs(mfd: SimulatedMfd, pages: dict[str, Any]) -> None:
    done_id = job_id_of(await print_job(mfd, b"%PDF", user="alice"))
    await job_done(mfd, done_id)
    waiting_id = job_id_of(await call(mfd, Operation.CREATE_JOB, user="bob"))

    default = await call(mfd, Operation.GET_JOBS)
    groups = list(default.groups_of(JOB))
    assert [attributes(default, JOB)["job-id"]] == [waiting_id]
    assert set(groups[0].attributes) == {"job-id", "job-uri"}

    which = [attr("which-jobs", ValueTag.KEYWORD, "completed"),
             attr("requested-attributes", ValueTag.KEYWORD, "all")]
    completed = await call(mfd, Operation.GET_JOBS, extra=which)
    [group] = list(completed.groups_of(JOB))
    assert group.get("job-id").value == done_id  # type: ignore[union-attr]
    assert group.get("job-state").value == JobState.COMPLETED  # type: ignore[union-attr]

    everything = [attr("which-jobs", ValueTag.KEYWORD, "all")]
    assert len(list((await call(mfd, Operation.GET_JOBS, extra=everything)).groups_of(JOB))) == 2
    mine = [attr("which-jobs", ValueTag.KEYWORD, "all"), attr("my-jobs", ValueTag.BOOLEAN, True)]
    reply = await call(mfd, Operation.GET_JOBS, extra=mine, user="bob")
    assert [g.get("job-id").value for g in reply.groups_of(JOB)] == [waiting_id]  # type: ignore[union-attr]
    bad = [attr("which-jobs", ValueTag.KEYWORD, "fetchable")]
    reply = await call(mfd, Operation.GET_JOBS, extra=bad)
    assert reply.code == Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED


@ensure
async def test_cancel_job(mfd: SimulatedMfd, pages: dict[str, Any]) -> None:
    waiting = job_id_of(await call(mfd, Operation.CREATE_JOB))
    reply = await call(mfd, Operation.CANCEL_JOB, extra=[attr("job-id", ValueTag.INTEGER, waiting)])
    assert reply.code == Status.SUCCESSFUL_OK
    job = mfd.job(waiting)
    assert job is not None and job.state == JobState.CANCELED

    again = await call(mfd, Operation.CANCEL_JOB, extra=[attr("job-id", ValueTag.INTEGER, waiting)])
    assert again.code == Status.CLIENT_ERROR_NOT_POSSIBLE
    by_uri = await call(mfd, Operation.CANCEL_JOB,
                        extra=[attr("job-uri", ValueTag.URI, f"{mfd.ipp_uri}/{waiting}")])
    assert by_uri.code == Status.CLIENT_ERROR_NOT_POSSIBLE
    missing = await call(mfd, Operation.CANCEL_JOB, extra=[attr("job-id", ValueTag.INTEGER, 999)])
    assert missing.code == Status.CLIENT_ERROR_NOT_FOUND
    no_target = await call(mfd, Operation.GET_JOB_ATTRIBUTES)
    assert no_target.code == Status.CLIENT_ERROR_BAD_REQUEST
    assert mfd.counters["total"] == 0


@ensure
async def test_cancel_while_printing_stops_the_counters(
    make_mfd: Any, pages: dict[str, Any]
) -> None:
    mfd = make_mfd(page_delay=0.1)
    pages["pages"] = 50
    job_id = job_id_of(await print_job(mfd, b"%PDF"))
    await until(lambda: mfd.counters["total"] >= 2)
    reply = await call(mfd, Operation.CANCEL_JOB, extra=[attr("job-id", ValueTag.INTEGER, job_id)])
    assert reply.code == Status.SUCCESSFUL_OK
    await until(lambda: mfd.printer_state == PrinterState.IDLE)
    job = mfd.job(job_id)
    assert job is not None and job.state == JobState.CANCELED
    assert 2 <= mfd.counters["total"] == job.impressions_completed < 50


@ensure
async def test_counters_and_job_ids_survive_a_restart(tmp_path: Path, pages: dict[str, Any]) -> None:
    state = tmp_path / "state"
    first = SimulatedMfd("mfd-1", tmp_path / "out", state)
    first.listen()
    try:
        await job_done(first, job_id_of(await print_job(first, b"%PDF", name="a")))
    finally:
        await first.stop()
    assert first.counters == {"total": 3, "mono": 3, "colour": 0}

    second = SimulatedMfd("mfd-1", tmp_path / "out", state)
    second.listen()
    try:
        assert second.counters == {"total": 3, "mono": 3, "colour": 0}
        job_id = job_id_of(await print_job(second, b"%PDF", name="b"))
        assert job_id == 2
        await job_done(second, job_id)
        assert second.counters["total"] == 6
    finally:
        await second.stop()
    assert [p.name for p in sorted((tmp_path / "out").iterdir())] == ["000001-a", "000002-b"]


def test_safe_names() -> None:
    assert safe_name("report.pdf") == "report.pdf"
    assert safe_name("/home/alice/Q3 résumé (final).pdf") == "Q3_r_sum_final_.pdf"
    assert safe_name("../..") == "untitled"
    assert safe_name("") == "untitled"
    assert len(safe_name("x" * 500)) == 80


@ensure
async def test_big_documents_are_streamed_intact(mfd: SimulatedMfd,
                                                 pages: dict[str, Any]) -> None:
    document = bytes(range(256)) * 8192  # 2 MiB
    started = time.monotonic()
    job_id = job_id_of(await print_job(mfd, document, document_format="image/pwg-raster"))
    await job_done(mfd, job_id)
    assert output_files(mfd)[0].read_bytes() == document
    assert time.monotonic() - started < 10


def test_a_create_job_without_its_document_times_out(tmp_path: Path) -> None:
    from twisted.internet.testing import MemoryReactorClock

    from appliance.protocols.ipp import codec
    from simulators.mfd.ipp import IppPrinter
    from simulators.mfd.printer import MULTIPLE_OPERATION_TIME_OUT

    clock = MemoryReactorClock()
    mfd = SimulatedMfd("m", tmp_path / "out", tmp_path / "state", reactor=clock)
    printer = IppPrinter(mfd)
    uri = "ipp://127.0.0.1:631/ipp/print"
    created = printer.handle(codec.request(Operation.CREATE_JOB, 1, uri), iter(()), uri)
    job = mfd.job(job_id_of(created))
    assert job is not None and job.reasons == ["job-incoming"]
    clock.advance(MULTIPLE_OPERATION_TIME_OUT - 1)
    assert job.state == JobState.PENDING
    clock.advance(2)
    assert job.state == JobState.ABORTED and job.reasons == ["aborted-by-system"]
    assert mfd.queued_jobs() == []


@ensure
async def test_a_job_that_cannot_be_printed_aborts_and_the_next_prints(
    mfd: SimulatedMfd, pages: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    real_publish = mfd._publish

    def disk_full(job: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mfd, "_publish", disk_full)
    first = job_id_of(await print_job(mfd, b"%PDF"))
    await job_done(mfd, first)
    assert mfd.job(first).state == JobState.ABORTED  # type: ignore[union-attr]
    monkeypatch.setattr(mfd, "_publish", real_publish)
    second = job_id_of(await print_job(mfd, b"%PDF"))
    await job_done(mfd, second)
    assert mfd.job(second).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert mfd.counters["total"] == 3

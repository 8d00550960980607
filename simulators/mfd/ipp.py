"""The simulated MFD's IPP side: RFC 8011 operations over our sans-io codec.

`IppPrinter` turns decoded requests into answers, asking the `SimulatedMfd`
for jobs and state; `IppResource` is the thin twisted.web adapter (POST
application/ipp at any path). Enough of IPP/1.1 and 2.0 for CUPS's ipptool
suites (ipp-1.1.test, ipp-2.0.test) to pass, and for the site's IPP client
to treat the simulator as a device.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger
from twisted.web import resource
from twisted.web.server import Request

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.attributes import (
    BASE_OPERATIONS,
    MAX_COPIES,
    NUMBER_UP,
    SIDES,
    common_printer_attributes,
)
from appliance.protocols.ipp.codec import (
    Attribute,
    DateTime,
    Message,
    ParseError,
    Resolution,
    attr,
)
from appliance.protocols.ipp.constants import (
    IPP_MIME_TYPE,
    GroupTag,
    JobState,
    Operation,
    PrinterState,
    Status,
    ValueTag,
)

if TYPE_CHECKING:
    from .printer import Job, SimulatedMfd

log = Logger()

DOCUMENT_FORMATS = (
    "application/octet-stream",
    "application/pdf",
    "application/postscript",
    "application/vnd.hp-pclxl",
    "image/pwg-raster",
)
MONO_MODES = frozenset({"monochrome", "bi-level", "process-monochrome"})
#: No Hold-Job / Release-Job: a device prints what it gets.
OPERATIONS = BASE_OPERATIONS
READ_CHUNK = 64 * 1024

#: Attributes of the printer that are job-template defaults/supported values
#: (requested-attributes group "job-template"); the rest are "printer-description".
_PRINTER_TEMPLATE = frozenset(
    f"{name}-{suffix}"
    for name in (
        "copies",
        "finishings",
        "media",
        "media-col",
        "number-up",
        "orientation-requested",
        "output-bin",
        "print-color-mode",
        "print-quality",
        "printer-resolution",
        "sides",
    )
    for suffix in ("default", "supported")
) | {"media-ready"}
#: Job attributes that are job-template ones (the rest are "job-description").
_JOB_TEMPLATE = frozenset({"copies", "number-up", "sides", "print-color-mode", "media"})

STATE_NAMES = {
    JobState.PENDING: "pending",
    JobState.PENDING_HELD: "pending-held",
    JobState.PROCESSING: "processing",
    JobState.PROCESSING_STOPPED: "processing-stopped",
    JobState.CANCELED: "canceled",
    JobState.ABORTED: "aborted",
    JobState.COMPLETED: "completed",
}
PRINTER_STATE_NAMES = {
    PrinterState.IDLE: "idle",
    PrinterState.PROCESSING: "processing",
    PrinterState.STOPPED: "stopped",
}


class _IppError(Exception):
    """An IPP request refused with `status` (and maybe unsupported attributes)."""

    def __init__(
        self, status: Status, text: str, unsupported: Iterable[Attribute] = ()
    ) -> None:
        super().__init__(text)
        self.status = status
        self.unsupported = list(unsupported)


class IppPrinter:
    """Answers IPP requests for one `SimulatedMfd`."""

    def __init__(self, mfd: SimulatedMfd) -> None:
        self.mfd = mfd

    def handle(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        """Answer one decoded IPP request; `document` yields the data after it."""
        try:
            codec.check_version(request)
            _check_operation_attributes(request)
            handler = self._OPERATIONS.get(request.code)
            if handler is None:
                raise _IppError(
                    Status.SERVER_ERROR_OPERATION_NOT_SUPPORTED,
                    f"operation 0x{request.code:04x} is not supported",
                )
            return handler(self, request, document, base_uri)
        except ParseError as exc:
            return codec.response(request, exc.status, str(exc))
        except _IppError as exc:
            reply = codec.response(request, exc.status, str(exc))
            if exc.unsupported:
                group = reply.ensure_group(GroupTag.UNSUPPORTED)
                for attribute in exc.unsupported:
                    group.add(attribute)
            return reply
        except Exception:  # a bug or a full disk: say so in IPP, not in an HTML 500
            log.failure("IPP operation 0x{code:04x} failed", code=request.code)
            return codec.response(request, Status.SERVER_ERROR_INTERNAL_ERROR, "internal error")

    def _op_get_printer_attributes(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        group = reply.ensure_group(GroupTag.PRINTER)
        wanted = _requested(request)
        for attribute in self._printer_attributes(base_uri):
            if _selected(attribute.name, wanted, _PRINTER_TEMPLATE, "printer-description"):
                group.add(attribute)
        return reply

    def _op_validate_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        _document_format(request)
        _template, ignored = _job_template(request)
        return _ok(request, ignored)

    def _op_print_job(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        doc_format = _document_format(request)
        template, ignored = _job_template(request)
        job = self.mfd.create_job(base_uri, _job_name(request), _user(request), **template)
        self.mfd.add_document(job, doc_format, document)
        self.mfd.close_job(job)
        return self._job_created(request, job, ignored)

    def _op_create_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        _require(request, "printer-uri")
        self._check_accepting()
        template, ignored = _job_template(request)
        job = self.mfd.create_job(base_uri, _job_name(request), _user(request), **template)
        self.mfd.expect_documents(job)
        return self._job_created(request, job, ignored)

    def _op_send_document(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        last = request.get(GroupTag.OPERATION, "last-document")
        if not isinstance(last, bool):
            raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "last-document is required")
        if job.terminal or job.closed:
            raise _IppError(Status.CLIENT_ERROR_NOT_POSSIBLE, "the job takes no more documents")
        doc_format = _document_format(request)
        first = next(document, b"")
        if first or not last:
            if job.spool is not None:
                raise _IppError(
                    Status.SERVER_ERROR_MULTIPLE_DOCUMENT_JOBS_NOT_SUPPORTED,
                    "one document per job",
                )
            self.mfd.add_document(job, doc_format, _chain(first, document))
        if last:
            self.mfd.close_job(job)
        return self._job_created(request, job, [])

    def _op_cancel_job(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        if job.terminal:
            raise _IppError(
                Status.CLIENT_ERROR_NOT_POSSIBLE,
                f"job {job.id} is already {STATE_NAMES[job.state]}",
            )
        self.mfd.cancel_job(job)
        return codec.response(request, Status.SUCCESSFUL_OK)

    def _op_get_job_attributes(
        self, request: Message, document: Iterator[bytes], base_uri: str
    ) -> Message:
        job = self._target_job(request)
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        self._add_job_group(reply, job, _requested(request))
        return reply

    def _op_get_jobs(self, request: Message, document: Iterator[bytes], base_uri: str) -> Message:
        _require(request, "printer-uri")
        which = request.get(GroupTag.OPERATION, "which-jobs") or "not-completed"
        if which == "completed":
            jobs = [job for job in reversed(self.mfd.jobs()) if job.terminal]
        elif which == "not-completed":
            jobs = self.mfd.queued_jobs()
        elif which == "all":
            jobs = self.mfd.jobs()
        else:
            raise _IppError(
                Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                f"which-jobs {which} is not supported",
                [attr("which-jobs", ValueTag.KEYWORD, which)],
            )
        if request.get(GroupTag.OPERATION, "my-jobs") is True:
            user = _user(request)
            jobs = [job for job in jobs if job.user == user]
        limit = request.get(GroupTag.OPERATION, "limit")
        if isinstance(limit, int) and limit > 0:
            jobs = jobs[:limit]
        wanted = _requested(request) or {"job-id", "job-uri"}
        reply = codec.response(request, Status.SUCCESSFUL_OK)
        for job in jobs:
            self._add_job_group(reply, job, wanted, new_group=True)
        return reply

    _OPERATIONS: dict[int, Callable[[IppPrinter, Message, Iterator[bytes], str], Message]] = {
        Operation.GET_PRINTER_ATTRIBUTES: _op_get_printer_attributes,
        Operation.VALIDATE_JOB: _op_validate_job,
        Operation.PRINT_JOB: _op_print_job,
        Operation.CREATE_JOB: _op_create_job,
        Operation.SEND_DOCUMENT: _op_send_document,
        Operation.CANCEL_JOB: _op_cancel_job,
        Operation.GET_JOB_ATTRIBUTES: _op_get_job_attributes,
        Operation.GET_JOBS: _op_get_jobs,
    }

    def _check_accepting(self) -> None:
        if not self.mfd.accepting:
            raise _IppError(
                Status.SERVER_ERROR_NOT_ACCEPTING_JOBS, "the printer is not accepting jobs"
            )

    def _target_job(self, request: Message) -> Job:
        job_uri = request.get(GroupTag.OPERATION, "job-uri")
        job_id = request.get(GroupTag.OPERATION, "job-id")
        if isinstance(job_uri, str):
            tail = job_uri.rstrip("/").rsplit("/", 1)[-1]
            job_id = int(tail) if tail.isdigit() else None
            if job_id is None:
                raise _IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job at {job_uri}")
        elif request.get(GroupTag.OPERATION, "printer-uri") is None or not isinstance(
            job_id, int
        ):
            raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "job-uri or printer-uri and job-id")
        job = self.mfd.job(job_id)
        if job is None:
            raise _IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job {job_id}")
        return job

    def _job_created(self, request: Message, job: Job, ignored: list[Attribute]) -> Message:
        reply = _ok(request, ignored)
        self._add_job_group(
            reply,
            job,
            {"job-id", "job-uri", "job-state", "job-state-reasons", "job-state-message"},
        )
        return reply

    def _add_job_group(
        self, reply: Message, job: Job, wanted: set[str] | None, *, new_group: bool = False
    ) -> None:
        group = codec.AttributeGroup(GroupTag.JOB)
        if new_group or reply.group(GroupTag.JOB) is None:
            reply.groups.append(group)
        else:
            group = reply.ensure_group(GroupTag.JOB)
        for attribute in self._job_attributes(job):
            if _selected(attribute.name, wanted, _JOB_TEMPLATE, "job-description"):
                group.add(attribute)

    def _job_attributes(self, job: Job) -> list[Attribute]:
        def integer(name: str, value: int | None) -> Attribute:
            if value is None:
                return attr(name, ValueTag.NO_VALUE, None)
            return attr(name, ValueTag.INTEGER, value)

        def date(name: str, value: datetime | None) -> Attribute:
            if value is None:
                return attr(name, ValueTag.NO_VALUE, None)
            return attr(name, ValueTag.DATE_TIME, DateTime.from_datetime(value))

        intervening = sum(1 for other in self.mfd.queued_jobs() if other.id < job.id)
        attributes = [
            attr("job-id", ValueTag.INTEGER, job.id),
            attr("job-uri", ValueTag.URI, job.uri),
            attr("job-printer-uri", ValueTag.URI, job.printer_uri),
            attr("job-name", ValueTag.NAME, job.name),
            attr("job-originating-user-name", ValueTag.NAME, job.user),
            attr("job-state", ValueTag.ENUM, int(job.state)),
            attr("job-state-reasons", ValueTag.KEYWORD, *job.reasons),
            attr("job-printer-up-time", ValueTag.INTEGER, self.mfd.up_time()),
            attr("time-at-creation", ValueTag.INTEGER, job.created),
            integer("time-at-processing", job.processing),
            integer("time-at-completed", job.completed),
            date("date-time-at-creation", job.created_at),
            date("date-time-at-processing", job.processing_at),
            date("date-time-at-completed", job.completed_at),
            attr("number-of-documents", ValueTag.INTEGER, 1 if job.spool or job.file else 0),
            attr("number-of-intervening-jobs", ValueTag.INTEGER, intervening),
            attr("document-format", ValueTag.MIME_MEDIA_TYPE, job.document_format),
            integer("job-k-octets", math.ceil(job.size / 1024)),
            integer("job-impressions", job.impressions),
            attr("job-impressions-completed", ValueTag.INTEGER, job.impressions_completed),
            integer("job-media-sheets", job.sheets(job.impressions)),
            attr(
                "job-media-sheets-completed",
                ValueTag.INTEGER,
                job.sheets(job.impressions_completed) or 0,
            ),
            attr("copies", ValueTag.INTEGER, job.copies),
            attr("number-up", ValueTag.INTEGER, job.number_up),
            attr("sides", ValueTag.KEYWORD, job.sides),
        ]
        if job.message:
            attributes.append(attr("job-state-message", ValueTag.TEXT, job.message))
        if job.color_mode is not None:
            attributes.append(attr("print-color-mode", ValueTag.KEYWORD, job.color_mode))
        return attributes

    def _printer_attributes(self, base_uri: str) -> list[Attribute]:
        colour_modes = ["auto", "monochrome", "color"] if self.mfd.colour else ["monochrome"]
        more_info = "http://" + base_uri.split("://", 1)[-1].split("/", 1)[0] + "/"
        a4 = {
            "media-size": attr(
                "media-size",
                ValueTag.BEG_COLLECTION,
                {
                    "x-dimension": attr("x-dimension", ValueTag.INTEGER, 21000),
                    "y-dimension": attr("y-dimension", ValueTag.INTEGER, 29700),
                },
            ),
        }
        if self.mfd.colour:
            markers = ["black", "cyan", "magenta", "yellow"]
            marker_colours = ["#000000", "#00FFFF", "#FF00FF", "#FFFF00"]
        else:
            markers, marker_colours = ["black"], ["#000000"]
        return [
            attr("printer-uri-supported", ValueTag.URI, base_uri),
            attr("uri-security-supported", ValueTag.KEYWORD, "none"),
            attr("uri-authentication-supported", ValueTag.KEYWORD, "requesting-user-name"),
            attr("printer-name", ValueTag.NAME, self.mfd.name[:127]),
            attr("printer-info", ValueTag.TEXT, f"Outpost simulated MFD {self.mfd.name}"[:127]),
            attr("printer-location", ValueTag.TEXT, "Outpost lab"),
            attr("printer-make-and-model", ValueTag.TEXT, "Outpost Simulated MFD"),
            attr("printer-more-info", ValueTag.URI, more_info),
            attr(
                "printer-device-id",
                ValueTag.TEXT,
                "MFG:Outpost;MDL:Simulated MFD;CMD:PDF,PS,PCLXL,PWGRaster;",
            ),
            attr("printer-uuid", ValueTag.URI, self.mfd.uuid.urn),
            attr("printer-state", ValueTag.ENUM, int(self.mfd.printer_state)),
            attr("printer-state-reasons", ValueTag.KEYWORD, *self.mfd.printer_state_reasons),
            attr("printer-state-message", ValueTag.TEXT, PRINTER_STATE_NAMES[self.mfd.printer_state]),
            attr("printer-is-accepting-jobs", ValueTag.BOOLEAN, self.mfd.accepting),
            attr(
                "queued-job-count",
                ValueTag.INTEGER,
                len(self.mfd.queued_jobs()),
            ),
            attr("printer-up-time", ValueTag.INTEGER, self.mfd.up_time()),
            attr("printer-current-time", ValueTag.DATE_TIME, DateTime.from_datetime(
                datetime.now(UTC))),
            *common_printer_attributes(OPERATIONS),
            attr("document-format-default", ValueTag.MIME_MEDIA_TYPE, "application/octet-stream"),
            attr("document-format-supported", ValueTag.MIME_MEDIA_TYPE, *DOCUMENT_FORMATS),
            attr("pdl-override-supported", ValueTag.KEYWORD, "attempted"),
            attr("multiple-operation-time-out", ValueTag.INTEGER, 60),
            attr("color-supported", ValueTag.BOOLEAN, self.mfd.colour),
            attr("pages-per-minute", ValueTag.INTEGER, 30),
            *([attr("pages-per-minute-color", ValueTag.INTEGER, 30)] if self.mfd.colour else []),
            attr("printer-impressions-completed", ValueTag.INTEGER, self.mfd.counters["total"]),
            attr("print-color-mode-default", ValueTag.KEYWORD, colour_modes[0]),
            attr("print-color-mode-supported", ValueTag.KEYWORD, *colour_modes),
            attr("finishings-default", ValueTag.ENUM, 3),
            attr("finishings-supported", ValueTag.ENUM, 3),
            attr("orientation-requested-default", ValueTag.ENUM, 3),
            attr("orientation-requested-supported", ValueTag.ENUM, 3, 4, 5, 6),
            attr("output-bin-default", ValueTag.KEYWORD, "face-down"),
            attr("output-bin-supported", ValueTag.KEYWORD, "face-down"),
            attr("print-quality-default", ValueTag.ENUM, 4),
            attr("print-quality-supported", ValueTag.ENUM, 3, 4, 5),
            attr("printer-resolution-default", ValueTag.RESOLUTION, Resolution(600, 600, 3)),
            attr("printer-resolution-supported", ValueTag.RESOLUTION, Resolution(600, 600, 3)),
            attr("media-default", ValueTag.KEYWORD, "iso_a4_210x297mm"),
            attr("media-supported", ValueTag.KEYWORD, "iso_a4_210x297mm", "na_letter_8.5x11in"),
            attr("media-ready", ValueTag.KEYWORD, "iso_a4_210x297mm"),
            attr("media-col-default", ValueTag.BEG_COLLECTION, a4),
            attr("marker-names", ValueTag.NAME, *markers),
            attr("marker-colors", ValueTag.NAME, *marker_colours),
            attr("marker-types", ValueTag.KEYWORD, *(["toner"] * len(markers))),
            attr("marker-levels", ValueTag.INTEGER, *([80] * len(markers))),
            attr("marker-low-levels", ValueTag.INTEGER, *([10] * len(markers))),
            attr("marker-high-levels", ValueTag.INTEGER, *([100] * len(markers))),
        ]


# ---------------------------------------------------------------- helpers


def _chain(first: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if first:
        yield first
    yield from rest


def _check_operation_attributes(request: Message) -> None:
    """RFC 8011 4.1: a sane request-id, and charset then language, first."""
    if request.request_id <= 0:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "request-id must be 1 or more")
    if not request.groups or request.groups[0].tag != GroupTag.OPERATION:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, "no operation attributes")
    names = list(request.groups[0].attributes)
    if names[:2] != ["attributes-charset", "attributes-natural-language"]:
        raise _IppError(
            Status.CLIENT_ERROR_BAD_REQUEST,
            "attributes-charset and attributes-natural-language must come first",
        )
    charset = request.get(GroupTag.OPERATION, "attributes-charset")
    if not isinstance(charset, str) or charset.lower() not in ("utf-8", "us-ascii"):
        raise _IppError(
            Status.CLIENT_ERROR_CHARSET_NOT_SUPPORTED,
            f"charset {charset!r} is not supported",
            [attr("attributes-charset", ValueTag.CHARSET, str(charset))],
        )


def _require(request: Message, name: str) -> None:
    if request.get(GroupTag.OPERATION, name) is None:
        raise _IppError(Status.CLIENT_ERROR_BAD_REQUEST, f"{name} is required")


def _requested(request: Message) -> set[str] | None:
    group = request.group(GroupTag.OPERATION)
    found = group.get("requested-attributes") if group is not None else None
    if found is None:
        return None
    return {value for value in found.values if isinstance(value, str)}


def _selected(name: str, wanted: set[str] | None, template: frozenset[str], rest: str) -> bool:
    if wanted is None or "all" in wanted or name in wanted:
        return True
    if name in template:
        return "job-template" in wanted
    return rest in wanted


def _ok(request: Message, ignored: list[Attribute]) -> Message:
    if not ignored:
        return codec.response(request, Status.SUCCESSFUL_OK)
    reply = codec.response(
        request,
        Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES,
        "some attributes were ignored",
    )
    group = reply.ensure_group(GroupTag.UNSUPPORTED)
    for attribute in ignored:
        group.add(attribute)
    return reply


def _user(request: Message) -> str:
    user = request.get(GroupTag.OPERATION, "requesting-user-name")
    return user if isinstance(user, str) and user else "anonymous"


def _job_name(request: Message) -> str:
    for name in ("job-name", "document-name"):
        value = request.get(GroupTag.OPERATION, name)
        if isinstance(value, str) and value:
            return value
    return "untitled"


def _document_format(request: Message) -> str:
    compression = request.get(GroupTag.OPERATION, "compression")
    if compression is not None and compression != "none":
        raise _IppError(
            Status.CLIENT_ERROR_COMPRESSION_NOT_SUPPORTED,
            f"compression {compression} is not supported",
            [attr("compression", ValueTag.KEYWORD, str(compression))],
        )
    doc_format = request.get(GroupTag.OPERATION, "document-format") or "application/octet-stream"
    if doc_format not in DOCUMENT_FORMATS:
        raise _IppError(
            Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED,
            f"document-format {doc_format} is not supported",
            [attr("document-format", ValueTag.MIME_MEDIA_TYPE, str(doc_format))],
        )
    return str(doc_format)


def _job_template(request: Message) -> tuple[dict[str, Any], list[Attribute]]:
    """The job-template values we act on, and the attributes we had to ignore.

    With ipp-attribute-fidelity true an unsupported value refuses the job,
    as RFC 8011 says; otherwise it is ignored and the default used.
    """
    group = request.group(GroupTag.JOB)
    values: dict[str, Any] = {}
    ignored: list[Attribute] = []

    def take(name: str, key: str, ok: Any) -> None:
        found = group.get(name) if group is not None else None
        if found is None:
            return
        if len(found.values) == 1 and ok(found.value):
            values[key] = found.value
        else:
            ignored.append(found)

    take("copies", "copies", lambda v: isinstance(v, int) and 1 <= v <= MAX_COPIES)
    take("number-up", "number_up", lambda v: v in NUMBER_UP)
    take("sides", "sides", lambda v: v in SIDES)
    take(
        "print-color-mode",
        "color_mode",
        lambda v: isinstance(v, str) and v in {"auto", "auto-monochrome", "color"} | MONO_MODES,
    )
    if ignored and request.get(GroupTag.OPERATION, "ipp-attribute-fidelity") is True:
        raise _IppError(
            Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
            "unsupported job attributes",
            ignored,
        )
    return values, ignored


# ---------------------------------------------------------------- twisted.web


class IppResource(resource.Resource):
    """POST application/ipp at any path: the thin adapter around `IppPrinter.handle`."""

    isLeaf = True

    def __init__(self, mfd: SimulatedMfd) -> None:
        super().__init__()
        self._mfd = mfd
        self._printer = IppPrinter(mfd)

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return f"Outpost simulated MFD {self._mfd.name}: IPP at {self._mfd.ipp_uri}\n".encode()

    def render_POST(self, request: Request) -> bytes:
        content_type = (request.getHeader(b"content-type") or b"").split(b";")[0].strip()
        if content_type.lower() != IPP_MIME_TYPE.encode():
            request.setResponseCode(415)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"POST application/ipp here\n"
        body = request.content
        assert body is not None
        body.seek(0)
        prefix = b""
        decoder = codec.Decoder()
        head: Message | None = None
        leftover: list[bytes] = []
        try:
            while head is None:
                chunk = body.read(READ_CHUNK)
                if len(prefix) < 8:
                    prefix += chunk[:8]
                if not chunk:
                    decoder.end()
                for event in decoder.feed(chunk):
                    if isinstance(event, codec.MessageHead):
                        head = event.message
                    else:
                        leftover.append(event.data)
        except ParseError as exc:
            reply = _reply_to_garbage(prefix, exc)
        else:
            host = (request.getHeader(b"host") or b"").decode("latin-1")
            if not host:
                host = f"{self._mfd.ipp_authority}"
            path = request.path.decode("latin-1") or "/ipp/print"
            base_uri = f"ipp://{host}{path.rstrip('/')}"
            reply = self._printer.handle(head, _chain(b"".join(leftover), _read(body)), base_uri)
        request.setHeader(b"content-type", IPP_MIME_TYPE.encode())
        try:
            return codec.encode(reply)
        except codec.EncodeError:
            # an unsupported attribute echoed back with a tag we cannot encode:
            # answer the same without the echo
            reply.groups = [g for g in reply.groups if g.tag != GroupTag.UNSUPPORTED]
        try:
            return codec.encode(reply)
        except codec.EncodeError as exc:  # pragma: no cover - our own attributes encode
            bare = codec.response(reply, Status.SERVER_ERROR_INTERNAL_ERROR, str(exc))
            return codec.encode(bare)


def _read(body: Any) -> Iterator[bytes]:
    while True:
        chunk = body.read(READ_CHUNK)
        if not chunk:
            return
        yield chunk


def _reply_to_garbage(prefix: bytes, exc: ParseError) -> Message:
    """Answer a request we could not decode, echoing what we could read of it."""
    version = (prefix[0], prefix[1]) if len(prefix) >= 2 else (1, 1)
    request_id = int.from_bytes(prefix[4:8], "big", signed=True) if len(prefix) >= 8 else 0
    return codec.response(Message(version, 0, request_id), exc.status, str(exc))

"""IPP attribute tables: what a queue says about itself, and what a job looks like on the wire.

Pure functions from the logic's nouns (`Queue`, `Job`) to codec `Attribute`s,
kept apart from `server.py` so that the HTTP adapter stays a dispatcher and
the tables can be read (and checked against ipptool's ipp-1.1/ipp-2.0 suites)
in one place. Nothing here does I/O: whatever needs the store (queued-job-count,
a job's quote) is computed by the server and passed in.
"""

from __future__ import annotations

import math
import uuid as uuidlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from appliance.core.model import Job, JobState, Queue

from .codec import Attribute, DateTime, IntRange, Resolution, attr
from .constants import JobState as IppJobState
from .constants import Operation, PrinterState, ValueTag

# ---------------------------------------------------------------- what we support

#: Formats a queue accepts. The site stores the document as sent and the MFD
#: renders it; `application/octet-stream` means "detect it" (the service does).
DOCUMENT_FORMATS = (
    "application/pdf",
    "application/postscript",
    "image/pwg-raster",
    "application/vnd.hp-pclxl",
    "image/urf",
    "application/octet-stream",
    "text/plain",
)
DEFAULT_DOCUMENT_FORMAT = "application/octet-stream"

#: RFC 8011's required operations: every IPP printer of the project (a queue here, the
#: simulated MFD) has them; a queue also holds and releases jobs.
BASE_OPERATIONS = (
    Operation.PRINT_JOB,
    Operation.VALIDATE_JOB,
    Operation.CREATE_JOB,
    Operation.SEND_DOCUMENT,
    Operation.CANCEL_JOB,
    Operation.GET_JOB_ATTRIBUTES,
    Operation.GET_JOBS,
    Operation.GET_PRINTER_ATTRIBUTES,
)
OPERATIONS = (*BASE_OPERATIONS, Operation.HOLD_JOB, Operation.RELEASE_JOB)

SIDES = ("one-sided", "two-sided-long-edge", "two-sided-short-edge")
NUMBER_UP = (1, 2, 4, 6, 9, 16)
COLOR_MODES = ("auto", "monochrome", "color")
#: Timed holds (evening, night, ...) are not offered: the service knows only
#: "held" and "not held", so accepting them would silently mean "indefinite".
HOLD_UNTIL = ("no-hold", "indefinite")
PRINT_QUALITIES = (3, 4, 5)
ORIENTATIONS = (3, 4, 5, 6)
OUTPUT_BINS = ("face-down",)
FINISHINGS = (3,)
RESOLUTIONS = (Resolution(600, 600, 3),)
MAX_COPIES = 999
#: The job template attributes a job may be created with (job-creation-attributes-supported).
JOB_CREATION_ATTRIBUTES = (
    "copies", "sides", "number-up", "media", "media-col", "print-color-mode", "job-hold-until",
    "print-quality", "printer-resolution", "orientation-requested", "output-bin", "finishings",
)
WHICH_JOBS = ("completed", "not-completed", "all")


@dataclass(frozen=True)
class MediaSize:
    name: str        # PWG 5101.1 self-describing name
    width: int       # hundredths of a millimetre
    length: int


MEDIA = (
    MediaSize("iso_a4_210x297mm", 21000, 29700),
    MediaSize("iso_a3_297x420mm", 29700, 42000),
    MediaSize("iso_a5_148x210mm", 14800, 21000),
    MediaSize("na_letter_8.5x11in", 21590, 27940),
    MediaSize("na_legal_8.5x14in", 21590, 35560),
)
MEDIA_BY_NAME = {m.name: m for m in MEDIA}


def media_for_size(width: int, length: int) -> MediaSize | None:
    """The supported size with these dimensions (±1 mm, either orientation)."""
    for media in MEDIA:
        for w, h in ((width, length), (length, width)):
            if abs(media.width - w) <= 100 and abs(media.length - h) <= 100:
                return media
    return None


# ---------------------------------------------------------------- printer attributes


def common_printer_attributes(operations: Iterable[Operation]) -> list[Attribute]:
    """The printer attributes every IPP printer of the project (a queue here, the
    simulated MFD) states alike: IPP versions, `operations`, charsets, languages, one
    document per job, no compression, and the copies, sides and number-up templates."""
    return [
        attr("ipp-versions-supported", ValueTag.KEYWORD, "1.0", "1.1", "2.0"),
        attr("operations-supported", ValueTag.ENUM, *(int(op) for op in operations)),
        attr("charset-configured", ValueTag.CHARSET, "utf-8"),
        attr("charset-supported", ValueTag.CHARSET, "utf-8", "us-ascii"),
        attr("natural-language-configured", ValueTag.NATURAL_LANGUAGE, "en"),
        attr("generated-natural-language-supported", ValueTag.NATURAL_LANGUAGE, "en"),
        attr("compression-supported", ValueTag.KEYWORD, "none"),
        attr("multiple-document-jobs-supported", ValueTag.BOOLEAN, False),
        attr("copies-default", ValueTag.INTEGER, 1),
        attr("copies-supported", ValueTag.RANGE_OF_INTEGER, IntRange(1, MAX_COPIES)),
        attr("sides-default", ValueTag.KEYWORD, "one-sided"),
        attr("sides-supported", ValueTag.KEYWORD, *SIDES),
        attr("number-up-default", ValueTag.INTEGER, 1),
        attr("number-up-supported", ValueTag.INTEGER, *NUMBER_UP),
    ]

#: Printer attributes that the 'job-template' group keyword selects.
JOB_TEMPLATE_PRINTER_ATTRIBUTES = frozenset(
    f"{base}-{suffix}"
    for base in ("copies", "sides", "number-up", "media", "media-col", "print-color-mode",
                 "job-hold-until", "print-quality", "printer-resolution",
                 "orientation-requested", "output-bin", "finishings")
    for suffix in ("default", "supported")
) | {"media-ready", "media-col-ready", "media-size-supported"}

#: Not part of 'all': it can be long, and PWG 5100.7 has clients ask for it by name.
EXPLICIT_ONLY_PRINTER_ATTRIBUTES = frozenset({"media-col-database"})


@dataclass(frozen=True)
class PrinterContext:
    """What the printer attributes of one queue depend on, gathered by the server."""

    queue: Queue
    printer_uri: str          # as the client reached us, e.g. ipp://host:631/printers/findme
    more_info_uri: str        # http:// form of the same
    secure: bool
    up_time: int
    now: float
    queued_job_count: int
    site_name: str = "outpost"
    location: str = ""
    default_media: str = "iso_a4_210x297mm"
    max_document: int = 256 * 1024 * 1024
    extra: dict[str, Attribute] = field(default_factory=dict)
    #: uri-authentication-supported: 'requesting-user-name' or 'basic'.
    authentication: str = "requesting-user-name"
    #: The disk is full (or below `[jobs] min_free_mb`): RFC 8011's 'spool-area-full'
    #: reason ("temporarily unable to accept more Jobs"), not accepting jobs meanwhile.
    spool_full: bool = False


def _media_col(media: MediaSize) -> dict[str, Attribute]:
    size = {
        "x-dimension": attr("x-dimension", ValueTag.INTEGER, media.width),
        "y-dimension": attr("y-dimension", ValueTag.INTEGER, media.length),
    }
    return {"media-size": attr("media-size", ValueTag.BEG_COLLECTION, size)}


def _date(when: float) -> DateTime:
    return DateTime.from_datetime(datetime.fromtimestamp(when, UTC))


def printer_uuid(site_name: str, queue_name: str) -> str:
    """Stable across restarts and host names: derived from the site and queue names."""
    return "urn:uuid:" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL,
                                           f"outpost:{site_name}:queue:{queue_name}"))


def printer_attributes(ctx: PrinterContext) -> dict[str, Attribute]:
    """Every printer attribute of a queue (including the explicit-only ones)."""
    queue = ctx.queue
    findme = queue.kind == "findme"
    if findme:
        info = queue.info or "Find-Me printing: release your job at any printer"
        model = "Outpost Find-Me queue"
    else:
        info = queue.info or f"Direct queue for {queue.device or queue.name}"
        model = "Outpost direct queue"
    default_media = MEDIA_BY_NAME.get(ctx.default_media, MEDIA[0])
    k_octets = max(1, ctx.max_document // 1024)
    attributes: list[Attribute] = [
        attr("printer-uri-supported", ValueTag.URI, ctx.printer_uri),
        attr("uri-security-supported", ValueTag.KEYWORD, "tls" if ctx.secure else "none"),
        attr("uri-authentication-supported", ValueTag.KEYWORD, ctx.authentication),
        attr("printer-name", ValueTag.NAME, queue.name[:127]),
        attr("printer-info", ValueTag.TEXT, info[:127]),
        attr("printer-location", ValueTag.TEXT, ctx.location[:127]),
        attr("printer-make-and-model", ValueTag.TEXT, model),
        attr("printer-more-info", ValueTag.URI, ctx.more_info_uri),
        attr("printer-uuid", ValueTag.URI, printer_uuid(ctx.site_name, queue.name)),
        attr("printer-device-id", ValueTag.TEXT,
             "MFG:Outpost;MDL:" + ("Find-Me" if findme else "Direct") +
             ";CMD:PDF,PS,PCLXL,PWGRaster,URF;CLS:PRINTER;"),
        attr("printer-state", ValueTag.ENUM, int(PrinterState.IDLE)),
        attr("printer-state-reasons", ValueTag.KEYWORD,
             "spool-area-full" if ctx.spool_full else "none"),
        attr("printer-state-message", ValueTag.TEXT,
             "The print server's disk is full: no new jobs for now" if ctx.spool_full
             else "Holding jobs for release" if findme else "Ready"),
        attr("printer-is-accepting-jobs", ValueTag.BOOLEAN, not ctx.spool_full),
        attr("queued-job-count", ValueTag.INTEGER, max(0, ctx.queued_job_count)),
        attr("printer-up-time", ValueTag.INTEGER, max(1, ctx.up_time)),
        attr("printer-current-time", ValueTag.DATE_TIME, _date(ctx.now)),
        attr("printer-kind", ValueTag.KEYWORD, "document"),
        *common_printer_attributes(OPERATIONS),
        attr("ipp-features-supported", ValueTag.KEYWORD, "none"),
        attr("multiple-operation-time-out", ValueTag.INTEGER, 120),
        attr("document-format-default", ValueTag.MIME_MEDIA_TYPE, DEFAULT_DOCUMENT_FORMAT),
        attr("document-format-supported", ValueTag.MIME_MEDIA_TYPE, *DOCUMENT_FORMATS),
        attr("pdl-override-supported", ValueTag.KEYWORD, "not-attempted"),
        attr("color-supported", ValueTag.BOOLEAN, True),
        attr("pages-per-minute", ValueTag.INTEGER, 30),
        attr("pages-per-minute-color", ValueTag.INTEGER, 30),
        attr("which-jobs-supported", ValueTag.KEYWORD, *WHICH_JOBS),
        attr("job-ids-supported", ValueTag.BOOLEAN, True),
        attr("job-k-octets-supported", ValueTag.RANGE_OF_INTEGER, IntRange(0, k_octets)),
        attr("job-creation-attributes-supported", ValueTag.KEYWORD, *JOB_CREATION_ATTRIBUTES),
        # job template: defaults and what is supported (copies, sides, number-up above)
        attr("print-color-mode-default", ValueTag.KEYWORD, "auto"),
        attr("print-color-mode-supported", ValueTag.KEYWORD, *COLOR_MODES),
        attr("job-hold-until-default", ValueTag.KEYWORD, "indefinite" if findme else "no-hold"),
        attr("job-hold-until-supported", ValueTag.KEYWORD, *HOLD_UNTIL),
        attr("media-default", ValueTag.KEYWORD, default_media.name),
        attr("media-supported", ValueTag.KEYWORD, *(m.name for m in MEDIA)),
        attr("media-ready", ValueTag.KEYWORD, *(m.name for m in MEDIA)),
        attr("media-col-default", ValueTag.BEG_COLLECTION, _media_col(default_media)),
        attr("media-col-ready", ValueTag.BEG_COLLECTION, *(_media_col(m) for m in MEDIA)),
        attr("media-col-database", ValueTag.BEG_COLLECTION, *(_media_col(m) for m in MEDIA)),
        attr("media-col-supported", ValueTag.KEYWORD, "media-size"),
        attr("media-size-supported", ValueTag.BEG_COLLECTION,
             *(_media_col(m)["media-size"].value for m in MEDIA)),
        attr("printer-resolution-default", ValueTag.RESOLUTION, RESOLUTIONS[0]),
        attr("printer-resolution-supported", ValueTag.RESOLUTION, *RESOLUTIONS),
        attr("print-quality-default", ValueTag.ENUM, 4),
        attr("print-quality-supported", ValueTag.ENUM, *PRINT_QUALITIES),
        attr("output-bin-default", ValueTag.KEYWORD, OUTPUT_BINS[0]),
        attr("output-bin-supported", ValueTag.KEYWORD, *OUTPUT_BINS),
        attr("orientation-requested-default", ValueTag.ENUM, 3),
        attr("orientation-requested-supported", ValueTag.ENUM, *ORIENTATIONS),
        attr("finishings-default", ValueTag.ENUM, 3),
        attr("finishings-supported", ValueTag.ENUM, *FINISHINGS),
    ]
    table = {a.name: a for a in attributes}
    table.update(ctx.extra)
    return table


def select_printer_attributes(
    table: dict[str, Attribute], requested: Iterable[str] | None
) -> dict[str, Attribute]:
    """RFC 8011 4.2.5.1: 'all' (the default), the group keywords, or names; unknown names
    are ignored."""
    wanted = set(requested) if requested is not None else {"all"}
    out: dict[str, Attribute] = {}
    for name, attribute in table.items():
        explicit = name in wanted
        if name in EXPLICIT_ONLY_PRINTER_ATTRIBUTES:
            chosen = explicit
        else:
            template = name in JOB_TEMPLATE_PRINTER_ATTRIBUTES
            chosen = (explicit or "all" in wanted
                      or ("job-template" in wanted and template)
                      or ("printer-description" in wanted and not template))
        if chosen:
            out[name] = attribute
    return out


# ---------------------------------------------------------------- job attributes

IPP_JOB_STATE = {
    JobState.HELD: IppJobState.PENDING_HELD,
    JobState.PENDING: IppJobState.PENDING,
    JobState.PROCESSING: IppJobState.PROCESSING,
    JobState.COMPLETED: IppJobState.COMPLETED,
    JobState.CANCELED: IppJobState.CANCELED,
    JobState.EXPIRED: IppJobState.CANCELED,
    JobState.ABORTED: IppJobState.ABORTED,
}

_DEFAULT_STATE_MESSAGE = {
    JobState.HELD: "Held",
    JobState.PENDING: "Waiting to be sent to the printer",
    JobState.PROCESSING: "Printing",
    JobState.COMPLETED: "Completed",
    JobState.CANCELED: "Canceled",
    JobState.EXPIRED: "Expired while held",
    JobState.ABORTED: "Aborted",
}

JOB_TEMPLATE_JOB_ATTRIBUTES = frozenset({
    "copies", "sides", "number-up", "media", "print-color-mode", "job-hold-until",
})


@dataclass(frozen=True)
class JobContext:
    """What a job's attributes depend on beyond the job itself."""

    printer_uri: str     # the job's queue, as the client reached us
    up_time: int         # printer-up-time now
    started: float       # wall-clock time at which printer-up-time was 1
    impressions: int | None = None   # from the service's quote, when pages are known
    sheets: int | None = None


def job_uri(printer_uri: str, job_id: int) -> str:
    return f"{printer_uri}/jobs/{job_id}"


def up_time_at(when: float | None, started: float) -> int | None:
    """RFC 8011 5.3.14: a time in printer-up-time units. Jobs that predate this
    process (kept across a restart) report 0 rather than a negative time."""
    if when is None:
        return None
    return max(0, int(when - started) + 1)


def _integer_or_no_value(name: str, value: int | None) -> Attribute:
    if value is None:
        return attr(name, ValueTag.NO_VALUE, None)
    return attr(name, ValueTag.INTEGER, max(0, min(value, 2**31 - 1)))


def _date_or_no_value(name: str, when: float | None) -> Attribute:
    if when is None:
        return attr(name, ValueTag.NO_VALUE, None)
    return attr(name, ValueTag.DATE_TIME, _date(when))


def job_attributes(job: Job, ctx: JobContext) -> dict[str, Attribute]:
    """Every attribute we report for a job ('all')."""
    state = IPP_JOB_STATE.get(job.state, IppJobState.PENDING)
    reasons = [r for r in job.state_reasons if r] or ["none"]
    message = job.state_message or _DEFAULT_STATE_MESSAGE.get(job.state, "")
    options = job.options
    attributes: list[Attribute] = [
        attr("job-id", ValueTag.INTEGER, job.id),
        attr("job-uri", ValueTag.URI, job_uri(ctx.printer_uri, job.id)),
        attr("job-uuid", ValueTag.URI, f"urn:uuid:{_uuid_text(job.uuid)}"),
        attr("job-printer-uri", ValueTag.URI, ctx.printer_uri),
        attr("job-name", ValueTag.NAME, job.name or "Untitled"),
        attr("job-originating-user-name", ValueTag.NAME, job.owner),
        attr("job-state", ValueTag.ENUM, int(state)),
        attr("job-state-reasons", ValueTag.KEYWORD, *reasons),
        attr("job-state-message", ValueTag.TEXT, message),
        attr("document-format", ValueTag.MIME_MEDIA_TYPE, job.document_format),
        attr("number-of-documents", ValueTag.INTEGER, 1 if job.size or job.spool_name else 0),
        attr("job-k-octets", ValueTag.INTEGER, math.ceil(job.size / 1024)),
        _integer_or_no_value("job-impressions", ctx.impressions),
        _integer_or_no_value("job-media-sheets", ctx.sheets),
        attr("job-impressions-completed", ValueTag.INTEGER, max(0, job.impressions_completed)),
        attr("job-printer-up-time", ValueTag.INTEGER, max(1, ctx.up_time)),
        attr("time-at-creation", ValueTag.INTEGER, up_time_at(job.created_at, ctx.started) or 0),
        _integer_or_no_value("time-at-processing", up_time_at(job.processing_at, ctx.started)),
        _integer_or_no_value("time-at-completed", up_time_at(job.completed_at, ctx.started)),
        _date_or_no_value("date-time-at-creation", job.created_at),
        _date_or_no_value("date-time-at-processing", job.processing_at),
        _date_or_no_value("date-time-at-completed", job.completed_at),
        # job template
        attr("copies", ValueTag.INTEGER, options.copies),
        attr("sides", ValueTag.KEYWORD, options.sides),
        attr("number-up", ValueTag.INTEGER, options.number_up),
        attr("print-color-mode", ValueTag.KEYWORD, options.colour_mode or "auto"),
        attr("job-hold-until", ValueTag.KEYWORD, _hold_until(job)),
    ]
    if options.media:
        attributes.append(attr("media", ValueTag.KEYWORD, options.media))
    if job.device:
        attributes.append(attr("output-device-assigned", ValueTag.NAME, job.device[:127]))
    return {a.name: a for a in attributes}


def _hold_until(job: Job) -> str:
    """What holds the job: its own job-hold-until, or the Find-Me queue holding every job."""
    if job.options.hold_until:
        return job.options.hold_until
    return "indefinite" if job.state is JobState.HELD else "no-hold"


def _uuid_text(raw: str) -> str:
    try:
        return str(uuidlib.UUID(raw))
    except ValueError:
        return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, raw))


def select_job_attributes(
    table: dict[str, Attribute], requested: Iterable[str] | None, default: Iterable[str]
) -> dict[str, Attribute]:
    """'all', 'job-template', 'job-description' or names; `default` when none are asked."""
    wanted = set(requested) if requested is not None else set(default)
    out: dict[str, Attribute] = {}
    for name, attribute in table.items():
        template = name in JOB_TEMPLATE_JOB_ATTRIBUTES
        if (name in wanted or "all" in wanted
                or ("job-template" in wanted and template)
                or ("job-description" in wanted and not template)):
            out[name] = attribute
    return out


def supported_value(name: str, tag: int, value: Any) -> bool:
    """Is `value` (with value tag `tag`) a supported value of job template attribute `name`?"""
    if name == "copies":
        return tag == ValueTag.INTEGER and _int(value) and 1 <= value <= MAX_COPIES
    if name == "number-up":
        return tag == ValueTag.INTEGER and _int(value) and value in NUMBER_UP
    if name == "sides":
        return tag == ValueTag.KEYWORD and value in SIDES
    if name == "print-color-mode":
        return tag == ValueTag.KEYWORD and value in COLOR_MODES
    if name == "job-hold-until":
        return tag in (ValueTag.KEYWORD, ValueTag.NAME) and value in HOLD_UNTIL
    if name == "media":
        return tag in (ValueTag.KEYWORD, ValueTag.NAME) and value in MEDIA_BY_NAME
    if name == "print-quality":
        return tag == ValueTag.ENUM and _int(value) and value in PRINT_QUALITIES
    if name == "orientation-requested":
        return tag == ValueTag.ENUM and _int(value) and value in ORIENTATIONS
    if name == "finishings":
        return tag == ValueTag.ENUM and _int(value) and value in FINISHINGS
    if name == "output-bin":
        return tag in (ValueTag.KEYWORD, ValueTag.NAME) and value in OUTPUT_BINS
    if name == "printer-resolution":
        return tag == ValueTag.RESOLUTION and value in RESOLUTIONS
    return False


def _int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)

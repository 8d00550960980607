"""The site's IPP server: a thin twisted.web adapter over `PrintService`.

Workstations print to `ipp://site:631/printers/<queue>` (HTTP POST to
`/printers/<queue>`): the Find-Me queue `findme`, or a device's direct queue.
This module only translates. Bytes become messages in the sans-io `codec`;
messages become `PrintService` calls; `JobError`s become IPP status codes.
It knows no SQL and counts no pages.

Three promises shape the code:

* **Streaming.** twisted.web has already put the body in `request.content` (a
  temporary file once it is large); we read it in chunks, decode the head
  with the incremental `codec.Decoder`, and copy the document chunk by chunk
  into the spool's `IncomingDocument`, never holding it whole in memory.
* **Only durable jobs are acknowledged.** A Print-Job or Send-Document answer
  is written after `service.submit()` returned, i.e. after the document and
  the job row are on disk.
* **Every request gets an IPP answer.** Malformed input, refused requests and
  our own bugs all end as HTTP 200 with an `application/ipp` body that echoes
  the request's version and request-id; a failure never leaves a spool file
  behind, and the next request is served as usual.

Owner: a job belongs to `requesting-user-name`. A request without one acts as
'anonymous' (it can print to a direct queue, and see or cancel only anonymous
jobs), except on the Find-Me queue, which refuses it with
client-error-not-authorized: a job held for nobody could never be released.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from twisted.internet import defer, task
from twisted.web import resource, server
from twisted.web.http import Request

from appliance.core.jobs import FINDME, JobError, PrintService
from appliance.core.model import Job, JobOptions, Queue
from appliance.storage.disk import DiskFull
from appliance.storage.spool import IncomingDocument, SpoolFull

from . import attributes as tables
from . import codec
from .codec import Attribute, AttributeGroup, Message
from .constants import IPP_MIME_TYPE, GroupTag, Operation, Status, ValueTag

log = logging.getLogger(__name__)

#: How much of `request.content` is read at a time.
CHUNK_SIZE = 64 * 1024
#: After copying this much of a document, let the reactor serve others.
YIELD_EVERY = 4 * 1024 * 1024
#: RFC 8011 5.1.3/5.1.4: names are at most 255 octets.
MAX_NAME_OCTETS = 255

ANONYMOUS = "anonymous"

#: How a refusal of the logic reads on the wire.
JOB_ERROR_STATUS = {
    "not-found": Status.CLIENT_ERROR_NOT_FOUND,
    "not-authorized": Status.CLIENT_ERROR_NOT_AUTHORIZED,
    "not-possible": Status.CLIENT_ERROR_NOT_POSSIBLE,
    "bad-value": Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
    "quota": Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE,
    "too-large": Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE,
    "bad-format": Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED,
    "not-accepting": Status.SERVER_ERROR_NOT_ACCEPTING_JOBS,
}

#: The attribute a `bad-value` JobError is about, recognised from its message,
#: so that the unsupported-attributes group can name it.
_BAD_VALUE_ATTRIBUTES = ("copies", "number-up", "sides", "media", "print-color-mode",
                         "job-hold-until")

_SPOOL_FULL_MESSAGE = {
    "document": "The document is larger than this site accepts",
    "user": "You have too many documents waiting; release or cancel some first",
    "total": "The site's spool is full; try again later",
}

#: A full disk (or one below `[jobs] min_free_mb`), as IPP says it. RFC 8011 13.1.5.6
#: server-error-temporary-error: "A temporary error such as a buffer full write error, a
#: memory overflow, or a disk full condition occurred while the IPP Printer was performing
#: the operation. The client MAY try the unmodified request again at some later point in
#: time", which is exactly the case: nothing of the request was kept, and the same request
#: succeeds once space is freed. Not client-error-request-entity-too-large (a client
#: error: it says the request itself is larger than the printer will take, which the
#: spool caps use; here any document would be refused) nor
#: server-error-not-accepting-jobs (tied to printer-is-accepting-jobs, an administrator's
#: switch, not a condition that clears by itself).
DISK_FULL_STATUS = Status.SERVER_ERROR_TEMPORARY_ERROR
DISK_FULL_MESSAGE = ("The print server's disk is full; the job was not accepted. "
                     "Try again later")

_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?$")


class IppError(Exception):
    """A request answered with an IPP error status (and optionally unsupported attributes)."""

    def __init__(self, status: Status, message: str,
                 unsupported: list[Attribute] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.unsupported = unsupported or []


class ClientGone(Exception):
    """The connection closed while we were still reading the request's document
    (twisted.web closes `request.content` then): nothing to answer, nothing to keep."""


def _bad_request(message: str) -> IppError:
    return IppError(Status.CLIENT_ERROR_BAD_REQUEST, message)


# ---------------------------------------------------------------- reading values


def _string(value: Any) -> str | None:
    """The text of a string-like value (name/text, with or without language)."""
    if isinstance(value, str):
        return value
    if isinstance(value, codec.StringWithLanguage):
        return value.text
    return None


def _truncate(text: str, octets: int = MAX_NAME_OCTETS) -> str:
    return text.encode("utf-8")[:octets].decode("utf-8", "ignore")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _encodable(attribute: Attribute) -> bool:
    try:
        codec.encode_attributes(Message((2, 0), 0, 1, [AttributeGroup(
            GroupTag.UNSUPPORTED, {attribute.name: attribute})]))
    except codec.EncodeError:
        return False
    return True


def _echo(attribute: Attribute) -> Attribute | None:
    """An attribute for the unsupported group: as received when it re-encodes, else its
    name with the out-of-band 'unsupported' value (RFC 8011 4.1.7)."""
    if not attribute.name or len(attribute.name.encode("utf-8")) > MAX_NAME_OCTETS:
        return None
    if _encodable(attribute):
        return attribute
    return Attribute(attribute.name, ValueTag.UNSUPPORTED, [None])


# ---------------------------------------------------------------- per-request state


@dataclass
class _Body:
    """The document part of a request: what the decoder already returned after the head,
    then the rest of `request.content`, read chunk by chunk."""

    pending: list[bytes]
    content: IO[bytes] | None
    reactor: Any

    async def copy_to(self, document: IncomingDocument) -> None:
        since_yield = 0
        while True:
            if self.pending:
                chunk = self.pending.pop(0)
            elif self.content is not None:
                try:
                    chunk = self.content.read(CHUNK_SIZE)
                except ValueError:  # read from a closed file
                    raise ClientGone("the client closed the connection") from None
                if not chunk:
                    return
            else:
                return
            document.write(chunk)
            since_yield += len(chunk)
            if since_yield >= YIELD_EVERY:
                since_yield = 0
                await task.deferLater(self.reactor, 0, lambda: None)


@dataclass
class _Call:
    """One decoded request on its way through an operation."""

    message: Message
    queue: Queue
    printer_uri: str
    more_info_uri: str
    secure: bool
    body: _Body
    user: str | None          # requesting-user-name as sent (None if absent)
    unsupported: list[Attribute] = field(default_factory=list)

    @property
    def operation(self) -> AttributeGroup:
        group = self.message.group(GroupTag.OPERATION)
        assert group is not None  # checked before dispatch
        return group

    @property
    def requester(self) -> str:
        return self.user or ANONYMOUS

    def op_value(self, name: str) -> Any:
        attribute = self.operation.get(name)
        return attribute.value if attribute is not None and attribute.values else None

    def op_attribute(self, name: str) -> Attribute | None:
        return self.operation.get(name)


# ---------------------------------------------------------------- the resource


class IppPrinterResource(resource.Resource):
    """`/printers/<queue>`: every queue of the service, one IPP endpoint each.

    Mounted at `printers` by `build_ipp_root`; the queue is the next path
    segment. Only POST is served (IPP over HTTP); a name that is not a queue
    gets client-error-not-found in an IPP answer.
    """

    isLeaf = True

    def __init__(
        self,
        service: PrintService,
        base_uri_for: Callable[[Request], str] | None = None,
        *,
        max_document: int | None = None,
        site_name: str = "outpost",
        location: str = "",
        default_media: str = "iso_a4_210x297mm",
        reactor: Any = None,
        clock: Callable[[], float] | None = None,
        authenticator: Any = None,
    ) -> None:
        super().__init__()
        #: `auth.QueueAuthenticator`: queues that ask for HTTP Basic (None: trust
        #: requesting-user-name everywhere).
        self.authenticator = authenticator
        if reactor is None:
            from twisted.internet import reactor as default_reactor
            reactor = default_reactor
        self.service = service
        self.base_uri_for = base_uri_for or default_base_uri
        self.max_document = max_document if max_document is not None else \
            service.spool.max_document
        self.site_name = site_name
        self.location = location
        self.default_media = default_media
        self.reactor = reactor
        self.clock = clock or service.clock
        #: printer-up-time is 1 at this moment (RFC 8011 5.4.29).
        self.started = self.clock()
        #: Jobs whose Send-Document is being received: a second one at the same time
        #: would pass the "still waiting for its document" check too.
        self._receiving: set[int] = set()
        self._operations: dict[int, Callable[[_Call], Awaitable[Message]]] = {
            Operation.PRINT_JOB: self._print_job,
            Operation.VALIDATE_JOB: self._validate_job,
            Operation.CREATE_JOB: self._create_job,
            Operation.SEND_DOCUMENT: self._send_document,
            Operation.CANCEL_JOB: self._cancel_job,
            Operation.GET_JOB_ATTRIBUTES: self._get_job_attributes,
            Operation.GET_JOBS: self._get_jobs,
            Operation.GET_PRINTER_ATTRIBUTES: self._get_printer_attributes,
            Operation.HOLD_JOB: self._hold_job,
            Operation.RELEASE_JOB: self._release_job,
        }

    # ------------------------------------------------------------ HTTP

    def render_GET(self, request: Request) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"This is an IPP printer: print to it with ipp://, not a web browser.\n"

    def render_POST(self, request: Request) -> Any:
        return self.render_ipp(request, by_uri=False)

    def render_ipp(self, request: Request, *, by_uri: bool) -> Any:
        """Answer an IPP request; `by_uri`: the queue comes from the request's printer-uri
        or job-uri rather than from the HTTP path (requests POSTed to `/`)."""
        disconnected: list[bool] = []
        request.notifyFinish().addErrback(lambda _: disconnected.append(True))
        d = defer.ensureDeferred(self._answer(request, by_uri))

        def write(payload: bytes) -> None:
            if disconnected:
                return
            challenge = getattr(request, "outpost_challenge", None)
            request.setResponseCode(401 if challenge else 200)
            if challenge:
                request.setHeader(b"www-authenticate", challenge)
            request.setHeader(b"content-type", IPP_MIME_TYPE.encode())
            request.setHeader(b"content-length", str(len(payload)).encode())
            request.write(payload)
            request.finish()

        def last_resort(failure: Any) -> None:
            # `_answer` turns every exception into an IPP answer; reaching here is a bug
            # in that net itself. Log it and close the exchange without a traceback reply.
            log.error("IPP request failed outside the error handler: %s", failure.getTraceback())
            if not disconnected:
                request.setResponseCode(500)
                request.finish()

        d.addCallback(write)
        d.addErrback(last_resort)
        return server.NOT_DONE_YET

    # ------------------------------------------------------------ decoding and errors

    async def _answer(self, request: Request, by_uri: bool = False) -> bytes:
        """The encoded IPP answer to one HTTP request; never raises for bad input."""
        content = request.content
        if content is not None:
            content.seek(0)
        header = b""
        message: Message | None = None
        try:
            decoder = codec.Decoder()
            pending: list[bytes] = []
            while message is None:
                chunk = content.read(CHUNK_SIZE) if content is not None else b""
                if len(header) < 8:
                    header += chunk[: 8 - len(header)]
                    if len(header) == 8:
                        # Before decoding anything else: a version we do not speak may
                        # not even be framed the way we expect (RFC 8011 4.1.8).
                        codec.check_version(Message((header[0], header[1]), 0, 0))
                if not chunk:
                    decoder.end()  # raises: the head is incomplete
                for event in decoder.feed(chunk):
                    if isinstance(event, codec.MessageHead):
                        message = event.message
                    elif event.data:
                        pending.append(event.data)
        except codec.ParseError as exc:
            return self._encode_error(_header_message(header), exc.status, str(exc))
        body = _Body(pending, content, self.reactor)
        try:
            reply = await self._dispatch(request, message, body, by_uri)
        except IppError as exc:
            reply = self._error(message, exc.status, str(exc), exc.unsupported)
        except JobError as exc:
            reply = self._job_error(message, exc)
        except SpoolFull as exc:
            reply = self._error(message, Status.CLIENT_ERROR_REQUEST_ENTITY_TOO_LARGE,
                                f"{_SPOOL_FULL_MESSAGE.get(exc.scope, 'Too large')} ({exc})")
        except DiskFull as exc:
            log.error("IPP operation 0x%04x refused: %s", message.code, exc)
            reply = self._error(message, DISK_FULL_STATUS, DISK_FULL_MESSAGE)
        except ClientGone as exc:
            log.info("IPP operation 0x%04x abandoned: %s", message.code, exc)
            reply = self._error(message, Status.CLIENT_ERROR_BAD_REQUEST, str(exc))
        except Exception:
            log.exception("internal error answering IPP operation 0x%04x (request-id %d)",
                          message.code, message.request_id)
            reply = self._error(message, Status.SERVER_ERROR_INTERNAL_ERROR,
                                "Internal error; the request was not carried out")
        return self._encode(reply)

    def _encode(self, reply: Message) -> bytes:
        try:
            return codec.encode(reply)
        except codec.EncodeError:
            log.exception("cannot encode an IPP answer (status 0x%04x)", reply.code)
            return self._encode_error(reply, Status.SERVER_ERROR_INTERNAL_ERROR,
                                      "Internal error: the answer could not be encoded")

    def _encode_error(self, request: Message, status: int, text: str) -> bytes:
        return codec.encode(codec.response(request, status, text))

    def _error(self, request: Message, status: int, text: str,
               unsupported: list[Attribute] | None = None) -> Message:
        reply = codec.response(request, status, text)
        self._add_unsupported(reply, unsupported or [])
        return reply

    def _job_error(self, request: Message, exc: JobError) -> Message:
        status = JOB_ERROR_STATUS.get(exc.code)
        if status is None:
            log.error("PrintService raised an unknown JobError code %r: %s", exc.code, exc)
            status = Status.SERVER_ERROR_INTERNAL_ERROR
        unsupported: list[Attribute] = []
        if exc.code == "bad-value":
            for name in _BAD_VALUE_ATTRIBUTES:
                if name in str(exc):
                    group = request.group(GroupTag.JOB)
                    sent = group.get(name) if group is not None else None
                    unsupported.append(sent or Attribute(name, ValueTag.UNSUPPORTED, [None]))
                    break
        return self._error(request, status, str(exc), unsupported)

    @staticmethod
    def _add_unsupported(reply: Message, unsupported: list[Attribute]) -> None:
        echoed = [e for e in (_echo(a) for a in unsupported) if e is not None]
        if echoed:
            group = AttributeGroup(GroupTag.UNSUPPORTED)
            for attribute in echoed:
                group.add(attribute)
            reply.groups.append(group)

    # ------------------------------------------------------------ checks common to all operations

    async def _dispatch(self, request: Request, message: Message, body: _Body,
                        by_uri: bool) -> Message:
        if message.request_id <= 0:
            raise _bad_request("request-id must be between 1 and 2147483647")
        if not message.groups or message.groups[0].tag != GroupTag.OPERATION:
            raise _bad_request("the request must start with the operation attributes")
        operation = message.groups[0]
        names = list(operation.attributes)
        if names[:2] != ["attributes-charset", "attributes-natural-language"]:
            raise _bad_request("attributes-charset and attributes-natural-language "
                               "must be the first two operation attributes")
        charset = _string(operation.attributes["attributes-charset"].value)
        if charset is None or charset.lower() not in ("utf-8", "us-ascii"):
            raise IppError(Status.CLIENT_ERROR_CHARSET_NOT_SUPPORTED,
                           "only utf-8 is supported",
                           [operation.attributes["attributes-charset"]])
        if _string(operation.attributes["attributes-natural-language"].value) is None:
            raise _bad_request("attributes-natural-language is not a language tag")
        handler = self._operations.get(message.code)
        if handler is None:
            raise IppError(Status.SERVER_ERROR_OPERATION_NOT_SUPPORTED,
                           f"operation 0x{message.code:04x} is not supported")
        if by_uri:
            queue_name = await self._queue_from_uris(operation)
            where = "that printer-uri or job-uri"
        else:
            queue_name = _queue_name(request)
            where = _path(request)
        queue = self.service.queue(queue_name) if queue_name is not None else None
        if queue is None:
            raise IppError(Status.CLIENT_ERROR_NOT_FOUND, f"there is no printer at {where}")
        user_attribute = operation.get("requesting-user-name")
        user: str | None = None
        if user_attribute is not None:
            user = _string(user_attribute.value)
            if user is None:
                raise _bad_request("requesting-user-name is not a name")
            if len(user.encode("utf-8")) > MAX_NAME_OCTETS:
                raise IppError(Status.CLIENT_ERROR_REQUEST_VALUE_TOO_LONG,
                               "requesting-user-name is longer than 255 octets",
                               [user_attribute])
            user = user.strip() or None
        if self.authenticator is not None and self.authenticator.required(queue.name,
                                                                          message.code):
            from .auth import NotAuthenticated

            try:  # the authenticated user, never the claimed requesting-user-name
                user = await self.authenticator.authenticate(request, queue.name)
            except NotAuthenticated as exc:
                raise IppError(Status(exc.status), str(exc)) from None
        base = self.base_uri_for(request).rstrip("/")
        printer_uri = f"{base}/printers/{queue.name}"
        call = _Call(
            message=message, queue=queue, printer_uri=printer_uri,
            more_info_uri=_http_form(printer_uri), secure=bool(request.isSecure()),
            body=body, user=user,
        )
        return await handler(call)

    async def _queue_from_uris(self, operation: AttributeGroup) -> str | None:
        """The queue a request POSTed to `/` is for, as CUPS clients talking to a server
        (`lp -h site`) send them: the path of printer-uri (`/printers/<queue>`), else of
        job-uri (ours, `/printers/<queue>/jobs/<id>`, or CUPS's `/jobs/<id>`)."""
        for name in ("printer-uri", "job-uri"):
            attribute = operation.get(name)
            text = _string(attribute.value) if attribute is not None else None
            if text is None:
                continue
            try:
                parts = [unquote(p) for p in urlsplit(text).path.split("/") if p]
            except ValueError:
                return None
            if len(parts) >= 2 and parts[0] == "printers":
                return parts[1]
            job_id = _job_id_from_uri(text) if name == "job-uri" else None
            if job_id is not None and len(parts) == 2 and job_id > 0:
                job = await self.service.job(job_id)
                return job.queue if job is not None else None
            return None
        if operation.get("printer-uri") is None and operation.get("job-uri") is None:
            raise _bad_request("printer-uri is missing")
        return None

    def _require_printer_uri(self, call: _Call) -> None:
        value = call.op_value("printer-uri")
        if _string(value) is None:
            raise _bad_request("printer-uri is missing")

    async def _target_job(self, call: _Call) -> Job:
        """The job an operation is about: `job-uri`, or `printer-uri` and `job-id`.

        A job of another queue is not found here: job ids are site-wide, but a
        client asking one printer sees that printer's jobs only.
        """
        job_id: int | None = None
        job_uri = call.op_attribute("job-uri")
        if job_uri is not None:
            text = _string(job_uri.value)
            job_id = _job_id_from_uri(text) if text is not None else None
            if job_id is None:
                raise IppError(Status.CLIENT_ERROR_NOT_FOUND, "job-uri does not name a job here")
        else:
            self._require_printer_uri(call)
            value = call.op_value("job-id")
            if value is None:
                raise _bad_request("job-id is missing")
            if not _is_int(value):
                raise _bad_request("job-id is not an integer")
            job_id = value
        if job_id <= 0:
            raise IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job {job_id}")
        job = await self.service.job(job_id)
        if job is None or job.queue != call.queue.name:
            raise IppError(Status.CLIENT_ERROR_NOT_FOUND, f"no job {job_id} on this printer")
        return job

    # ------------------------------------------------------------ job creation inputs

    def _owner_for_new_job(self, call: _Call) -> str:
        if call.user is None and call.queue.kind == FINDME:
            raise IppError(Status.CLIENT_ERROR_NOT_AUTHORIZED,
                           "Find-Me jobs need requesting-user-name: the owner releases them")
        return call.requester

    def _job_name(self, call: _Call) -> str:
        for name in ("job-name", "document-name"):
            text = _string(call.op_value(name))
            if text:
                return _truncate(text)
        return "Untitled"

    def _document_format(self, call: _Call) -> str | None:
        """The declared format (None: detect it); refuses formats the queue does not take."""
        attribute = call.op_attribute("document-format")
        if attribute is None:
            return None
        text = _string(attribute.value)
        declared = text.split(";", 1)[0].strip().lower() if text is not None else ""
        if declared not in tables.DOCUMENT_FORMATS:
            raise IppError(Status.CLIENT_ERROR_DOCUMENT_FORMAT_NOT_SUPPORTED,
                           f"document-format {text!r} is not supported", [attribute])
        return None if declared == tables.DEFAULT_DOCUMENT_FORMAT else declared

    def _check_compression(self, call: _Call) -> None:
        attribute = call.op_attribute("compression")
        if attribute is not None and attribute.value != "none":
            raise IppError(Status.CLIENT_ERROR_COMPRESSION_NOT_SUPPORTED,
                           "only compression 'none' is supported", [attribute])

    def _job_options(self, call: _Call) -> JobOptions:
        """Job template attributes → JobOptions.

        Unsupported attributes or values are refused with
        client-error-attributes-or-values-not-supported when the client asks
        for ipp-attribute-fidelity; otherwise they are ignored, listed in the
        unsupported group, and the answer says successful-ok-ignored-or-substituted.

        RFC 8011 puts them in the job group; CUPS (and its own print-job-hold.test)
        also sends some in the operation group, so known ones are taken from there
        when the job group does not have them.
        """
        values: dict[str, Any] = {}
        unsupported: list[Attribute] = []
        sent = {a.name: a for group in call.message.groups_of(GroupTag.JOB)
                for a in group.attributes.values()}
        for name in tables.JOB_CREATION_ATTRIBUTES:
            in_operation = call.op_attribute(name)
            if name not in sent and in_operation is not None:
                sent[name] = in_operation
        for attribute in sent.values():
            value = self._template_value(attribute)
            if value is None:
                unsupported.append(attribute)
            else:
                values[attribute.name] = value
        if unsupported:
            fidelity = call.op_value("ipp-attribute-fidelity")
            if fidelity is True:
                raise IppError(Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                               "some job attributes or values are not supported", unsupported)
            call.unsupported.extend(unsupported)
        media = values.get("media") or values.get("media-col")
        return JobOptions(
            copies=values.get("copies", 1),
            sides=values.get("sides", "one-sided"),
            number_up=values.get("number-up", 1),
            media=media,
            colour_mode=values.get("print-color-mode"),
            hold_until=values.get("job-hold-until"),
        )

    @staticmethod
    def _template_value(attribute: Attribute) -> Any:
        """The value to use for a job template attribute, or None if it is unsupported."""
        name = attribute.name
        tags = attribute.value_tags()
        if not attribute.values:
            return None
        if name == "media-col":
            if len(attribute.values) != 1 or tags[0] != ValueTag.BEG_COLLECTION:
                return None
            return _media_from_col(attribute.value)
        if name == "finishings":
            ok = all(tables.supported_value(name, t, v) for t, v in zip(tags, attribute.values,
                                                                           strict=True))
            return True if ok else None
        if len(attribute.values) != 1:
            return None
        value = attribute.value
        if not tables.supported_value(name, tags[0], value):
            return None
        return value

    # ------------------------------------------------------------ answers with job attributes

    def _up_time(self) -> int:
        return max(1, int(self.clock() - self.started) + 1)

    def _job_table(self, call: _Call, job: Job) -> dict[str, Attribute]:
        impressions = sheets = None
        if job.pages is not None:
            quote = self.service.quote(job)
            impressions, sheets = quote.impressions, quote.sheets
        ctx = tables.JobContext(printer_uri=call.printer_uri, up_time=self._up_time(),
                                started=self.started, impressions=impressions, sheets=sheets)
        return tables.job_attributes(job, ctx)

    def _reply(self, call: _Call, status: Status = Status.SUCCESSFUL_OK,
               text: str | None = None) -> Message:
        if status == Status.SUCCESSFUL_OK and call.unsupported:
            status = Status.SUCCESSFUL_OK_IGNORED_OR_SUBSTITUTED_ATTRIBUTES
        reply = codec.response(call.message, status, text)
        self._add_unsupported(reply, call.unsupported)
        return reply

    def _add_job(self, reply: Message, table: dict[str, Attribute], names: list[str]) -> None:
        group = AttributeGroup(GroupTag.JOB)
        for name in names:
            if name in table:
                group.add(table[name])
        reply.groups.append(group)

    def _job_created(self, call: _Call, job: Job) -> Message:
        reply = self._reply(call)
        self._add_job(reply, self._job_table(call, job),
                      ["job-id", "job-uri", "job-state", "job-state-reasons",
                       "job-state-message"])
        return reply

    # ------------------------------------------------------------ operations

    async def _print_job(self, call: _Call) -> Message:
        """RFC 8011 4.2.1. Answered only once `submit` made the job durable."""
        self._require_printer_uri(call)
        owner = self._owner_for_new_job(call)
        options = self._job_options(call)
        document_format = self._document_format(call)
        self._check_compression(call)
        name = self._job_name(call)
        self.service.validate(call.queue.name, owner, options)
        job = await self._receive(call, owner, name, options, document_format, None)
        return self._job_created(call, job)

    async def _receive(self, call: _Call, owner: str, name: str, options: JobOptions,
                       document_format: str | None, existing_job: Job | None) -> Job:
        """Spool the request's document and submit it; on any failure nothing stays behind."""
        document = await self.service.begin_document(owner)
        try:
            await call.body.copy_to(document)
            return await self.service.submit(
                call.queue.name, owner, name, options, document, document_format,
                existing_job=existing_job,
            )
        except BaseException:
            document.discard()
            # `submit` may have committed the file before failing (e.g. on the job row);
            # no job refers to it then, so it goes.
            self.service.spool.delete(document.name)
            raise

    async def _validate_job(self, call: _Call) -> Message:
        """RFC 8011 4.2.3: every check of Print-Job, no job."""
        self._require_printer_uri(call)
        owner = self._owner_for_new_job(call)
        options = self._job_options(call)
        self._document_format(call)
        self._check_compression(call)
        self.service.validate(call.queue.name, owner, options)
        return self._reply(call)

    async def _create_job(self, call: _Call) -> Message:
        """RFC 8011 4.2.4: a job that waits for its one document (Send-Document)."""
        self._require_printer_uri(call)
        owner = self._owner_for_new_job(call)
        options = self._job_options(call)
        document_format = self._document_format(call)
        name = self._job_name(call)
        job = await self.service.create_job(
            call.queue.name, owner, name, options,
            document_format or tables.DEFAULT_DOCUMENT_FORMAT,
        )
        return self._job_created(call, job)

    async def _send_document(self, call: _Call) -> Message:
        """RFC 8011 4.3.1. A job takes exactly one document, so last-document must be true."""
        last = call.op_attribute("last-document")
        if last is None:
            raise _bad_request("last-document is missing")
        if last.tag != ValueTag.BOOLEAN or len(last.values) != 1 or last.value is not True:
            raise IppError(Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                           "a job has exactly one document: last-document must be true", [last])
        job = await self._target_job(call)
        if job.owner != call.requester:
            raise IppError(Status.CLIENT_ERROR_NOT_AUTHORIZED,
                           f"job {job.id} belongs to another user")
        if job.terminal or job.spool_name is not None or "job-incoming" not in job.state_reasons:
            raise IppError(Status.CLIENT_ERROR_NOT_POSSIBLE,
                           f"job {job.id} is not waiting for a document")
        document_format = self._document_format(call)
        self._check_compression(call)
        if document_format is None and job.document_format != tables.DEFAULT_DOCUMENT_FORMAT:
            document_format = job.document_format
        if job.id in self._receiving:
            raise IppError(Status.CLIENT_ERROR_NOT_POSSIBLE,
                           f"job {job.id} is already receiving its document")
        self._receiving.add(job.id)
        try:
            submitted = await self._receive(call, job.owner, job.name, job.options,
                                            document_format, job)
        finally:
            self._receiving.discard(job.id)
        return self._job_created(call, submitted)

    async def _cancel_job(self, call: _Call) -> Message:
        job = await self._target_job(call)
        await self.service.cancel(job.id, call.requester)
        return self._reply(call)

    async def _hold_job(self, call: _Call) -> Message:
        job = await self._target_job(call)
        until = "indefinite"
        attribute = call.op_attribute("job-hold-until")
        if attribute is not None:
            value = attribute.value if len(attribute.values) == 1 else None
            if not isinstance(value, str) or value == "no-hold" or not tables.supported_value(
                    "job-hold-until", attribute.tag, value):
                raise IppError(Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                               "job-hold-until must be 'indefinite'", [attribute])
            until = value
        await self.service.hold(job.id, call.requester, until)
        return self._reply(call)

    async def _release_job(self, call: _Call) -> Message:
        job = await self._target_job(call)
        await self.service.release_hold(job.id, call.requester)
        return self._reply(call)

    async def _get_job_attributes(self, call: _Call) -> Message:
        job = await self._target_job(call)
        reply = self._reply(call)
        table = tables.select_job_attributes(self._job_table(call, job),
                                             _requested(call), default=["all"])
        self._add_job(reply, table, list(table))
        return reply

    async def _get_jobs(self, call: _Call) -> Message:
        """RFC 8011 4.2.6, with PWG 5100.11's job-ids."""
        self._require_printer_uri(call)
        which_attribute = call.op_attribute("which-jobs")
        which = "not-completed"
        if which_attribute is not None:
            which = which_attribute.value
            if which not in tables.WHICH_JOBS or len(which_attribute.values) != 1:
                raise IppError(Status.CLIENT_ERROR_ATTRIBUTES_OR_VALUES_NOT_SUPPORTED,
                               "which-jobs must be completed, not-completed or all",
                               [which_attribute])
        limit = call.op_value("limit")
        if limit is not None and (not _is_int(limit) or limit < 1):
            raise _bad_request("limit must be a positive integer")
        my_jobs = call.op_value("my-jobs")
        if my_jobs is not None and not isinstance(my_jobs, bool):
            raise _bad_request("my-jobs must be a boolean")
        ids_attribute = call.op_attribute("job-ids")
        ids: set[int] | None = None
        if ids_attribute is not None:
            if not all(_is_int(v) for v in ids_attribute.values):
                raise _bad_request("job-ids must be integers")
            ids = set(ids_attribute.values)
            if which_attribute is None:
                which = "all"
        owner = call.requester if my_jobs else None
        jobs = await self.service.list_jobs(call.queue.name, which, owner,
                                            None if ids is not None else limit)
        if ids is not None:
            jobs = [j for j in jobs if j.id in ids][:limit]
        reply = self._reply(call)
        requested = _requested(call)
        for job in jobs:
            table = tables.select_job_attributes(self._job_table(call, job), requested,
                                                 default=["job-uri", "job-id"])
            self._add_job(reply, table, list(table))
        return reply

    def _spool_full(self) -> bool:
        try:
            self.service.spool.check_free()
        except DiskFull:
            return True
        return False

    async def _get_printer_attributes(self, call: _Call) -> Message:
        self._require_printer_uri(call)
        requested = _requested(call)
        waiting = await self.service.list_jobs(call.queue.name, "not-completed")
        ctx = tables.PrinterContext(
            queue=call.queue, printer_uri=call.printer_uri, more_info_uri=call.more_info_uri,
            secure=call.secure, up_time=self._up_time(), now=self.clock(),
            queued_job_count=len(waiting), site_name=self.site_name, location=self.location,
            default_media=self.default_media, max_document=self.max_document,
            authentication=(self.authenticator.mode_for(call.queue.name)
                            if self.authenticator is not None else "requesting-user-name"),
            spool_full=self._spool_full(),
        )
        table = tables.select_printer_attributes(tables.printer_attributes(ctx), requested)
        reply = self._reply(call)
        group = AttributeGroup(GroupTag.PRINTER)
        for attribute in table.values():
            group.add(attribute)
        reply.groups.append(group)
        return reply


# ---------------------------------------------------------------- helpers


def _header_message(header: bytes) -> Message:
    """A stand-in request built from whatever of the 8-octet header arrived, so that an
    error answer can echo the version and request-id (RFC 8011 4.1.1, 4.1.8)."""
    if len(header) < 8:
        return Message((1, 1), 0, 0)
    version = (header[0], header[1])
    request_id = int.from_bytes(header[4:8], "big", signed=True)
    if version not in codec.SUPPORTED_VERSIONS:
        # Answer in the nearest version we speak.
        version = (1, 1) if header[0] < 2 else (2, 0)
    return Message(version, int.from_bytes(header[2:4], "big"), request_id)


def _requested(call: _Call) -> list[str] | None:
    attribute = call.op_attribute("requested-attributes")
    if attribute is None:
        return None
    return [v for v in attribute.values if isinstance(v, str)]


def _media_from_col(members: Any) -> str | None:
    """A media-col's size as one of our media names (media-size-name or dimensions)."""
    if not isinstance(members, dict):
        return None
    name_attribute = members.get("media-size-name")
    if name_attribute is not None:
        name = name_attribute.value
        return name if isinstance(name, str) and name in tables.MEDIA_BY_NAME else None
    size_attribute = members.get("media-size")
    if size_attribute is None or not isinstance(size_attribute.value, dict):
        return None
    size = size_attribute.value
    x, y = size.get("x-dimension"), size.get("y-dimension")
    if x is None or y is None or not _is_int(x.value) or not _is_int(y.value):
        return None
    media = tables.media_for_size(x.value, y.value)
    return media.name if media is not None else None


def _job_id_from_uri(uri: str) -> int | None:
    """The id in a job-uri of the form we hand out: `{printer-uri}/jobs/{id}`."""
    try:
        path = urlsplit(uri).path
    except ValueError:
        return None
    parts = path.rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "jobs" and parts[-1].isdigit() and len(parts[-1]) < 10:
        return int(parts[-1])
    return None


def _path(request: Request) -> str:
    return "/" + "/".join(s.decode("utf-8", "replace") for s in
                          [*getattr(request, "prepath", []), *getattr(request, "postpath", [])])


def _queue_name(request: Request) -> str | None:
    segments = [s for s in (getattr(request, "postpath", None) or []) if s]
    if len(segments) != 1:
        return None
    try:
        return unquote(segments[0].decode("utf-8"))
    except UnicodeDecodeError:
        return None


def _http_form(ipp_uri: str) -> str:
    if ipp_uri.startswith("ipps://"):
        return "https://" + ipp_uri[len("ipps://"):]
    if ipp_uri.startswith("ipp://"):
        return "http://" + ipp_uri[len("ipp://"):]
    return ipp_uri


def default_base_uri(request: Request) -> str:
    """`ipp://host:port` as the client reached us (its Host header), so that the URIs we
    hand out work from where the client stands; the socket's address if Host is unusable."""
    scheme = "ipps" if request.isSecure() else "ipp"
    raw: Any = request.getHeader(b"host")
    host: str | None = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if host and _HOST_RE.match(host):
        if ":" not in host.rsplit("]", 1)[-1]:
            port = _local_port(request)
            if port and port != 631:
                host = f"{host}:{port}"
        return f"{scheme}://{host}"
    address = request.getHost()
    hostname = getattr(address, "host", None) or "localhost"
    if ":" in hostname:
        hostname = f"[{hostname}]"
    port = _local_port(request) or 631
    return f"{scheme}://{hostname}:{port}"


def _local_port(request: Request) -> int | None:
    try:
        port = getattr(request.getHost(), "port", None)
    except Exception:
        return None
    return port if isinstance(port, int) else None


class IppRootResource(resource.Resource):
    """`/`: IPP requests POSTed to the root go to the queue their printer-uri names.

    CUPS clients pointed at a server rather than a printer (`lp -h site:631 -d
    findme`, or ServerName in client.conf) send every request to `/`; cupsd
    routes them by printer-uri, and so do we. Other paths are twisted.web's.
    """

    def __init__(self, printers: IppPrinterResource) -> None:
        super().__init__()
        self.printers = printers
        self.putChild(b"printers", printers)

    def getChild(self, path: bytes, request: Request) -> resource.Resource:
        if path == b"":
            return self
        return super().getChild(path, request)

    def render_POST(self, request: Request) -> Any:
        return self.printers.render_ipp(request, by_uri=True)

    def render_GET(self, request: Request) -> bytes:
        return self.printers.render_GET(request)


def build_ipp_root(
    service: PrintService,
    base_uri_for: Callable[[Request], str] | None = None,
    **options: Any,
) -> resource.Resource:
    """The IPP site's root: `/printers/<queue>` for every queue of `service`, and `/`
    routing by printer-uri.

    `options` go to `IppPrinterResource` (site_name, location, default_media,
    max_document, reactor, clock).
    """
    return IppRootResource(IppPrinterResource(service, base_uri_for, **options))

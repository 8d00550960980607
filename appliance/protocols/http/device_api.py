"""Device API v1 (docs/wire/device-api.md): the HTTP JSON face of auth, release and accounting.

Thin: parse and check the request, call the core services, shape the answer.
Every failure is a JSON body with a stable `code`; an unexpected exception is
logged once and answered `500 internal_error` without a traceback on the wire.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable, Collection
from datetime import UTC, datetime
from typing import Any

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.http import Request

from appliance.core.accounting import AccountingService, UsageError
from appliance.core.auth import AuthError, AuthService, Credentials
from appliance.core.credentials import Session
from appliance.core.jobs import JobError, PrintService
from appliance.core.model import Job
from appliance.core.release import ReleaseService
from appliance.storage.disk import DiskFull

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.extra = extra


_AUTH_STATUS = {"bad_request": 400, "invalid_credentials": 401, "account_disabled": 403,
                "throttled": 429, "directory_unavailable": 503, "unknown_user": 403,
                "password_session_required": 403, "card_in_use": 409}
_JOB_STATUS = {"not-found": (404, "not_found"), "not-authorized": (404, "not_found"),
               "not-possible": (409, "conflict")}


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class DeviceApi(resource.Resource):
    """Mounted at `/api/v1`."""

    isLeaf = True

    def __init__(
        self, *, auth: AuthService, jobs: PrintService, release: ReleaseService,
        accounting: AccountingService, devices: Callable[[], Collection[str]],
        device_status: Callable[[str], dict[str, Any] | None] | None = None,
    ) -> None:
        super().__init__()
        #: The device's merged state (core/devices.py), shown with the held jobs.
        self.device_status = device_status
        self.auth = auth
        self.jobs = jobs
        self.release = release
        self.accounting = accounting
        self.devices = devices
        self._routes: dict[tuple[bytes, str], Callable[..., Awaitable[tuple[int, dict[str, Any]]]]]
        self._routes = {
            (b"POST", "sessions"): self.open_session,
            (b"GET", "session"): self.get_session,
            (b"DELETE", "session"): self.close_session,
            (b"GET", "jobs"): self.list_jobs,
            (b"POST", "jobs/release"): self.release_jobs,
            (b"GET", "balance"): self.get_balance,
            (b"POST", "copy/authorize"): self.authorise_copy,
            (b"POST", "usage"): self.report_usage,
            (b"POST", "cards"): self.link_card,
        }

    def render(self, request: Request) -> int:  # type: ignore[override]
        d = defer.ensureDeferred(self._dispatch(request))
        d.addCallback(lambda answer: self._write(request, *answer))
        d.addErrback(self._unexpected, request)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    def _unexpected(self, failure: Any, request: Request) -> None:
        log.error("device API failure on %s %s: %s", request.method, request.path,
                  failure.getTraceback())
        self._write(request, 500, {"ok": False, "error": {
            "code": "internal_error", "message": "internal error; nothing was done"}})

    def _write(self, request: Request, status: int, body: dict[str, Any]) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        body.setdefault("error", None)
        payload = json.dumps(body).encode()
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(payload)
        request.finish()

    async def _dispatch(self, request: Request) -> tuple[int, dict[str, Any]]:
        try:
            return await self._route(request)
        except ApiError as exc:
            return exc.status, {"ok": False, "error": {"code": exc.code, "message": str(exc)},
                                **exc.extra}
        except AuthError as exc:
            extra: dict[str, Any] = {}
            if exc.code == "throttled":
                extra["retry_after"] = int(exc.retry_after) + 1
                # The lockout is visible to any HTTP client too (RFC 9110 10.2.3).
                request.setHeader(b"retry-after", str(extra["retry_after"]).encode())
            return _AUTH_STATUS.get(exc.code, 400), {
                "ok": False, "error": {"code": exc.code, "message": str(exc)}, **extra}
        except JobError as exc:
            status, code = _JOB_STATUS.get(exc.code, (409, "conflict"))
            return status, {"ok": False, "error": {"code": code, "message": str(exc)}}
        except UsageError as exc:
            return 409, {"ok": False, "error": {"code": exc.code, "message": str(exc)}}
        except DiskFull as exc:
            # 507 Insufficient Storage (RFC 4918 11.5): the server cannot store what the
            # request needs, a condition "considered to be temporary". Nothing was
            # recorded; the panel keeps its usage id and reports it again later.
            log.error("device API %s refused: %s", request.path.decode(errors="replace"), exc)
            request.setHeader(b"retry-after", b"60")
            return 507, {"ok": False, "error": {
                "code": "disk_full",
                "message": "the site's disk is full; nothing was recorded, try again later"},
                "retry_after": 60}

    async def _route(self, request: Request) -> tuple[int, dict[str, Any]]:
        postpath: list[bytes] = getattr(request, "postpath", [])
        path = "/".join(p.decode("utf-8", "replace") for p in postpath if p)
        method = request.method
        device = (request.getHeader("x-outpost-device") or "").strip()
        handler = self._routes.get((method, path))
        job_id: int | None = None
        if handler is None and path.startswith("jobs/") and path.count("/") == 1:
            if method != b"DELETE":
                raise ApiError(405, "method_not_allowed", f"{method.decode()} not allowed here")
            try:
                job_id = int(path.split("/")[1])
            except ValueError:
                raise ApiError(404, "not_found", "no such job") from None
            handler = self.cancel_job
        if handler is None:
            if any(p == path for (_, p) in self._routes):
                raise ApiError(405, "method_not_allowed", f"{method.decode()} not allowed here")
            raise ApiError(404, "not_found", f"no resource /api/v1/{path}")
        if not device or device not in self.devices():
            raise ApiError(403, "unknown_device", "X-Outpost-Device names no configured device")
        body = self._body(request) if method in (b"POST",) else {}
        if handler == self.open_session:
            return await handler(device, body)
        session = self._session(request, device)
        if job_id is not None:
            return await handler(session, job_id)
        return await handler(session, body)

    def _body(self, request: Request) -> dict[str, Any]:
        content = request.content
        assert content is not None
        content.seek(0)
        raw = content.read(MAX_BODY + 1)
        if len(raw) > MAX_BODY:
            raise ApiError(413, "too_large", f"body over {MAX_BODY} bytes")
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError):
            raise ApiError(400, "bad_request", "body is not JSON") from None
        if not isinstance(body, dict):
            raise ApiError(400, "bad_request", "body must be a JSON object")
        return body

    def _session(self, request: Request, device: str) -> Session:
        header = request.getHeader("authorization") or ""
        scheme, _, token = header.partition(" ")
        session = None
        if scheme.lower() == "bearer" and token:
            session = self.auth.sessions.get(token.strip(), device)
        if session is None:
            raise ApiError(401, "no_session", "log in first (session missing or expired)")
        return session

    # ------------------------------------------------------------ handlers

    async def open_session(self, device: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        fields = {}
        for name in ("card", "username", "pin", "password"):
            value = body.get(name)
            if value is not None and (not isinstance(value, str) or not value or
                                      len(value) > 256 or "\x00" in value):
                raise ApiError(400, "bad_request", f"{name} must be a non-empty string")
            fields[name] = value
        credentials = Credentials(**fields)
        if credentials.card and credentials.username:
            raise ApiError(400, "bad_request", "give a card or a username, not both")
        session = await self.auth.login(device, credentials)
        balance = await self.accounting.balance(session.account_id)
        return 201, {"ok": True, "session": session.token, "user": self._user(session),
                     "balance": balance, "expires_in": self.auth.sessions.expires_in(session)}

    @staticmethod
    def _user(session: Session) -> dict[str, str]:
        return {"username": session.username, "full_name": session.full_name}

    async def get_session(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        balance = await self.accounting.balance(session.account_id)
        return 200, {"ok": True, "user": self._user(session), "balance": balance,
                     "expires_in": self.auth.sessions.expires_in(session)}

    async def close_session(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        self.auth.sessions.close(session.token)
        return 200, {"ok": True}

    def _job_json(self, job: Job) -> dict[str, Any]:
        quote = self.jobs.quote(job)
        return {"id": job.id, "name": job.name, "pages": job.pages,
                "copies": job.options.copies, "colour": job.colour, "sides": job.options.sides,
                "number_up": job.options.number_up, "impressions": quote.impressions,
                "cost": quote.cost, "size": job.size, "submitted_at": _iso(job.created_at),
                "expires_at": _iso(job.expires_at), "analysed": job.analysed}

    async def list_jobs(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        held = await self.jobs.held_for(session.username)
        answer: dict[str, Any] = {"ok": True, "jobs": [self._job_json(j) for j in held]}
        status = self.device_status(session.device) if self.device_status is not None else None
        if status is not None:
            answer["device"] = status
        return 200, answer

    async def release_jobs(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        wanted = body.get("jobs")
        ids: list[int] | None
        if wanted == "all":
            ids = None
        elif isinstance(wanted, list) and wanted and all(
            isinstance(i, int) and not isinstance(i, bool) for i in wanted
        ):
            ids = list(dict.fromkeys(wanted))
        else:
            raise ApiError(400, "bad_request", 'jobs must be "all" or a list of job ids')
        report = await self.release.release(owner=session.username,
                                            account_id=session.account_id,
                                            device_name=session.device, job_ids=ids)
        answer: dict[str, Any] = {
            "released": report.released,
            "failed": [{"id": r.job_id, "error": {"code": r.code, "message": r.message}}
                       for r in report.failed],
            "processing": report.processing,
            "charged": report.charged,
            "balance": report.balance,
        }
        if report.failed:
            first = report.failed[0]
            return 409, {"ok": False, "error": {"code": first.code, "message": first.message},
                         **answer}
        return 200, {"ok": True, **answer}

    async def cancel_job(self, session: Session, job_id: int) -> tuple[int, dict[str, Any]]:
        job = await self.jobs.job(job_id)
        if job is None or job.owner != session.username:
            raise ApiError(404, "not_found", f"no job {job_id} of yours")
        await self.jobs.cancel(job_id, session.username)
        return 200, {"ok": True, "cancelled": [job_id]}

    async def link_card(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """Link the card just read to the session's user (a username + password session)."""
        card = body.get("card")
        if not isinstance(card, str) or not card.strip() or len(card) > 256 or "\x00" in card:
            raise ApiError(400, "bad_request", "card must be a non-empty string")
        result = await self.auth.link_card(session, card)
        return (201 if result == "linked" else 200), {"ok": True, "linked": result == "linked"}

    async def get_balance(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return 200, {"ok": True, "balance": await self.accounting.balance(session.account_id)}

    @staticmethod
    def _pages_colour_sides(body: dict[str, Any]) -> tuple[int, bool, str]:
        pages, colour = body.get("pages"), body.get("colour", False)
        sides = body.get("sides", "one-sided")
        if not isinstance(pages, int) or isinstance(pages, bool) or not 0 < pages <= 100000:
            raise ApiError(400, "bad_request", "pages must be an integer from 1 to 100000")
        if not isinstance(colour, bool):
            raise ApiError(400, "bad_request", "colour must be true or false")
        if sides not in ("one-sided", "two-sided-long-edge", "two-sided-short-edge"):
            raise ApiError(400, "bad_request", "sides must be an IPP sides keyword")
        return pages, colour, sides

    async def authorise_copy(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        pages, colour, sides = self._pages_colour_sides(body)
        auth = await self.accounting.authorise_copy(
            account_id=session.account_id, device=session.device, pages=pages, colour=colour,
            sides=sides)
        answer: dict[str, Any] = {
            "ok": True, "allowed": auth.allowed, "max_pages": auth.max_pages,
            "cost_per_page": auth.cost_per_page, "cost": auth.cost, "balance": auth.balance}
        if auth.reason is not None:   # docs/offline-allowance.md: why not allowed
            answer["reason"] = auth.reason
        return 200, answer

    async def report_usage(self, session: Session, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        usage_id, kind = body.get("id"), body.get("kind")
        if not isinstance(usage_id, str) or not 0 < len(usage_id) <= 200:
            raise ApiError(400, "bad_request", "id must be a string of 1 to 200 characters")
        if kind not in ("copy", "scan", "fax"):
            raise ApiError(400, "bad_request", "kind must be copy, scan or fax")
        pages, colour, sides = self._pages_colour_sides(body)
        charge = await self.accounting.report_usage(
            usage_id=usage_id, device=session.device, user_id=session.user_id,
            account_id=session.account_id, kind=kind, pages=pages, colour=colour, sides=sides)
        return 200, {"ok": True, "charged": charge.charged, "balance": charge.balance,
                     "duplicate": charge.duplicate}

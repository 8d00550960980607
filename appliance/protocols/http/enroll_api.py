"""Enrollment wire v1 (docs/wire/enroll.md), both sides.

Server: `EnrollApi.handle` is the protocol as a function (method, path, query, body,
peer identity in; status and body out), served by `SyncResource` like the sync API:

- on the **enrollment port** (TLS that authenticates the primary only; a new site
  has no certificate yet): `GET /enroll/v1/ca`, `POST /enroll/v1/enroll`;
- on the **sync port** (mutual TLS), through `SyncWithEnrollment`: `POST
  /enroll/v1/renew`, and a revocation check in front of every sync request.

Client: `fetch_ca` and `post_enroll` are blocking (standard library `ssl` and
`http.client`): `outpost enroll` runs them before any reactor exists. Renewal goes
through the site's sync transport (`HttpsTransport.call`), which presents the
current certificate.
"""

from __future__ import annotations

import http.client
import json
import logging
import ssl
from typing import Any
from urllib.parse import urlsplit

from appliance.core.enrollment import EnrollError, PrimaryEnrollment
from appliance.pki import Identity
from appliance.protocols.http.sync_api import _error, _json, _json_body

log = logging.getLogger(__name__)

PREFIX = "/enroll/v1/"
MAX_BODY = 64 * 1024


class EnrollApi:
    """`public=True`: the enrollment port (ca, enroll); False: the sync port (renew)."""

    def __init__(self, enrollment: PrimaryEnrollment, *, public: bool,
                 max_body: int = MAX_BODY) -> None:
        self.enrollment = enrollment
        self.public = public
        self.max_body = max_body

    async def handle(self, method: str, path: str, query: str, body: bytes,
                     peer: Identity | None) -> tuple[int, bytes]:
        try:
            return await self._route(method, path, body, peer)
        except EnrollError as exc:
            return _error(exc.status, exc.code, str(exc))
        except Exception:
            log.exception("enrollment API failure on %s %s", method, path)
            return _error(500, "internal_error", "internal error; retry the request")

    async def _route(self, method: str, path: str, body: bytes,
                     peer: Identity | None) -> tuple[int, bytes]:
        name = path[len(PREFIX):] if path.startswith(PREFIX) else None
        routes = ("ca", "enroll") if self.public else ("renew",)
        if name not in routes:
            return _error(404, "not_found", "no such resource")
        expected = "GET" if name == "ca" else "POST"
        if method != expected:
            return _error(405, "method_not_allowed", f"{method} is not allowed here")
        if name == "ca":
            return _json(200, self.enrollment.ca_answer())
        payload, refused = _json_body(body, self.max_body)
        if refused is not None:
            return refused
        if name == "enroll":
            status, answer = await self.enrollment.enroll(payload)
            return _json(status, answer)
        return _json(200, await self.enrollment.renew(peer, payload))


class SyncWithEnrollment:
    """The sync port's routes when the primary enrolls sites: renewal under
    /enroll/v1/, and every sync request refused (403 `revoked`) when the client
    certificate is revoked — checked per request, so a connection that was open when
    the site was revoked gets no further answer either."""

    def __init__(self, sync_api: Any, enroll_api: EnrollApi) -> None:
        self.sync_api = sync_api
        self.enroll_api = enroll_api
        self.max_body = max(sync_api.max_body, enroll_api.max_body)

    async def handle(self, method: str, path: str, query: str, body: bytes,
                     peer: Identity | None) -> tuple[int, bytes]:
        if path.startswith(PREFIX):
            return await self.enroll_api.handle(method, path, query, body, peer)
        if peer is not None:
            try:
                refused = await self.enroll_api.enrollment.refusal(peer)
            except Exception:
                log.exception("revocation check failed")
                return _error(500, "internal_error", "internal error; retry the request")
            if refused is not None:
                log.warning("sync: refused %s (serial %s): %s", peer.uri,
                            format(peer.serial or 0, "x"), refused)
                return _error(refused.status, refused.code, str(refused))
        result: tuple[int, bytes] = await self.sync_api.handle(method, path, query, body, peer)
        return result


# ---------------------------------------------------------------- client (blocking)


class EnrollUnavailable(Exception):
    """No answer from the primary's enrollment port (retry later)."""


def _connection(url: str, context: ssl.SSLContext,
                timeout: float) -> tuple[http.client.HTTPSConnection, str]:
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError(f"{url}: expected https://host:port")
    conn = http.client.HTTPSConnection(parts.hostname, parts.port or 443, context=context,
                                       timeout=timeout)
    return conn, parts.path.rstrip("/")


def _request(url: str, context: ssl.SSLContext, method: str, path: str, body: Any,
             timeout: float) -> tuple[int, dict[str, Any]]:
    conn, base = _connection(url, context, timeout)
    try:
        data = None if body is None else json.dumps(body).encode()
        headers = {"content-type": "application/json"} if data is not None else {}
        conn.request(method, base + path, body=data, headers=headers)
        response = conn.getresponse()
        payload = response.read(MAX_BODY + 1)
    except (OSError, http.client.HTTPException) as exc:
        raise EnrollUnavailable(f"{method} {url}{path}: {type(exc).__name__}: {exc}") from exc
    finally:
        conn.close()
    try:
        answer = json.loads(payload)
    except ValueError:
        answer = None
    if not isinstance(answer, dict):
        raise EnrollUnavailable(f"{method} {url}{path}: {response.status} without a JSON object")
    return response.status, answer


def fetch_ca(url: str, timeout: float = 10.0) -> bytes:
    """The CA certificate the enrollment port offers. Fetched WITHOUT checking the server:
    the caller must compare it with the pin it was given before trusting it."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    status, answer = _request(url, context, "GET", PREFIX + "ca", None, timeout)
    if status != 200 or not isinstance(answer.get("ca"), str):
        raise EnrollUnavailable(f"GET {url}{PREFIX}ca: {status} {answer!r}")
    return str(answer["ca"]).encode()


def post_enroll(url: str, ca_pem: bytes, token: str, csr_pem: bytes,
                timeout: float = 10.0) -> tuple[int, dict[str, Any]]:
    """POST the token and CSR over TLS that checks the primary against the pinned CA and
    its name against the URL's host."""
    context = ssl.create_default_context(cadata=ca_pem.decode())
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return _request(url, context, "POST", PREFIX + "enroll",
                    {"token": token, "csr": csr_pem.decode()}, timeout)

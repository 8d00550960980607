"""Sync wire v1, server side (docs/wire/sync.md): HTTP JSON over mutual TLS.

`SyncApi.handle` is the whole protocol as a function: method, path, query, body
bytes and the peer's certificate identity in, status and body bytes out. The
Twisted `SyncResource` is a thin adapter around it (it reads the body and the
peer certificate), and in-process tests and simulations call `handle` directly.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import parse_qs

from twisted.internet import defer
from twisted.web import resource, server
from twisted.web.http import Request

from appliance.core.sync import PrimarySync, SyncError
from appliance.pki import Identity, peer_identity

log = logging.getLogger(__name__)

PREFIX = "/sync/v1/"
MAX_BODY = 32 * 1024 * 1024


def _json(status: int, body: dict[str, Any]) -> tuple[int, bytes]:
    return status, json.dumps(body, separators=(",", ":")).encode()


def _error(status: int, code: str, message: str) -> tuple[int, bytes]:
    return _json(status, {"error": {"code": code, "message": message}})



def _json_body(body: bytes, max_body: int) -> tuple[Any, tuple[int, bytes] | None]:
    """A request's JSON body, or (None and) the 413 or 400 answer that refuses it."""
    if len(body) > max_body:
        return None, _error(413, "too_large", f"at most {max_body} bytes")
    try:
        return json.loads(body), None
    except (ValueError, UnicodeDecodeError) as exc:
        return None, _error(400, "malformed", f"not JSON: {exc}")


class SyncApi:
    def __init__(self, primary: PrimarySync, *, max_body: int = MAX_BODY,
                 pushers: frozenset[str] = frozenset({"site", "provider"})) -> None:
        self.primary = primary
        self.max_body = max_body
        #: Certificate kinds that may push and send heartbeats (a site serving its
        #: providers accepts only `provider`; docs/providers.md).
        self.pushers = pushers
        #: core.allowance.PrimaryAllowances: POST allowances (docs/offline-allowance.md).
        self.allowances: Any = None

    async def handle(self, method: str, path: str, query: str, body: bytes,
                     peer: Identity | None) -> tuple[int, bytes]:
        try:
            return await self._route(method, path, query, body, peer)
        except SyncError as exc:
            return _error(exc.status, exc.code, str(exc))
        except Exception:
            # A transaction that raised was rolled back; one that committed (a crash
            # between commit and answer) is found again by its event ids on the retry.
            log.exception("sync API failure on %s %s", method, path)
            return _error(500, "internal_error", "internal error; retry the request")

    async def _route(self, method: str, path: str, query: str, body: bytes,
                     peer: Identity | None) -> tuple[int, bytes]:
        if not path.startswith(PREFIX):
            return _error(404, "not_found", "no such resource")
        if peer is None:
            return _error(401, "no_identity", "a client certificate of this deployment is required")
        name = path[len(PREFIX):]
        args = {k: v[-1] for k, v in parse_qs(query, keep_blank_values=True).items()}
        site = peer.name if peer.kind in self.pushers else None
        if (method, name) == ("GET", "changes"):
            return _json(200, await self.primary.changes(args.get("since"), args.get("limit")))
        if (method, name) == ("GET", "snapshot"):
            return _json(200, await self.primary.snapshot(args.get("after"), args.get("limit")))
        if (method, name) == ("POST", "allowances") and self.allowances is not None:
            if peer.kind != "site":
                return _error(403, "not_a_site", f"{peer.uri} holds no offline allowances")
            payload, refused = _json_body(body, self.max_body)
            if refused is not None:
                return refused
            return _json(200, await self.allowances.request(payload, peer.name))
        if (method, name) in (("POST", "events"), ("POST", "heartbeat")):
            if peer.kind not in self.pushers:
                return _error(403, "not_a_site", f"{peer.uri} may not push")
            payload, refused = _json_body(body, self.max_body)
            if refused is not None:
                return refused
            if name == "events":
                return _json(200, await self.primary.receive_batch(payload, site, peer.kind))
            return _json(200, await self.primary.heartbeat(payload, site, peer.kind))
        if name in ("changes", "snapshot", "events", "heartbeat"):
            return _error(405, "method_not_allowed", f"{method} is not allowed here")
        return _error(404, "not_found", "no such resource")


class SyncResource(resource.Resource):
    """The Twisted adapter: serve `SyncApi` at the root of an HTTPS site."""

    isLeaf = True

    def __init__(self, api: SyncApi) -> None:
        super().__init__()
        self.api = api

    def render(self, request: Request) -> int:  # type: ignore[override]
        d = defer.ensureDeferred(self._answer(request))
        d.addErrback(self._unexpected, request)
        return server.NOT_DONE_YET  # type: ignore[no-any-return]

    async def _answer(self, request: Request) -> None:
        assert request.content is not None
        body = request.content.read(self.api.max_body + 1)
        uri = request.uri.decode("latin-1")
        path, _, query = uri.partition("?")
        peer = peer_identity(request.channel.transport)
        status, payload = await self.api.handle(request.method.decode("latin-1"), path, query,
                                                body, peer)
        self._write(request, status, payload)

    def _unexpected(self, failure: Any, request: Request) -> None:
        log.error("sync API failure on %s %s: %s", request.method, request.uri,
                  failure.getTraceback())
        self._write(request, 500, json.dumps({"error": {
            "code": "internal_error", "message": "internal error; nothing was applied"}}).encode())

    def _write(self, request: Request, status: int, payload: bytes) -> None:
        if request.finished or getattr(request, "_disconnected", False):
            return
        request.setResponseCode(status)
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        request.write(payload)
        request.finish()

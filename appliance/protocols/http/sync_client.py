"""Sync wire v1, client side (docs/wire/sync.md): the site's requests to the primary.

`HttpSyncClient` encodes requests and decodes answers over a `Transport`: one
call, bytes in and out. `HttpsTransport` is the real one (treq over mutual TLS);
`LoopbackTransport` hands the bytes straight to an in-process `SyncApi` with a
given certificate identity, for tests and simulations on simulated time, where a
fault wrapper can drop a request before or after the primary handled it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlencode, urlsplit

from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from appliance.core.sync import SyncRefused, SyncUnavailable
from appliance.pki import Identity, client_options


class Transport(Protocol):
    async def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        """One request; raises SyncUnavailable when no answer came back."""
        ...


class HttpSyncClient:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body, separators=(",", ":")).encode()
        status, payload = await self.transport.call(method, path, data)
        try:
            answer = json.loads(payload) if payload else {}
        except ValueError:
            answer = None
        if status >= 500 or status in (408, 429):
            raise SyncUnavailable(f"{method} {path}: {status}")
        if status != 200:
            raise SyncRefused(status, answer)
        if not isinstance(answer, dict):
            raise SyncUnavailable(f"{method} {path}: an answer that is not a JSON object")
        return answer

    async def push(self, batch: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/sync/v1/events", batch)

    async def changes(self, since: str, limit: int) -> dict[str, Any]:
        query = urlencode({"since": since, "limit": str(limit)})
        return await self._call("GET", f"/sync/v1/changes?{query}")

    async def snapshot(self, after: str | None = None,
                       limit: int | None = None) -> dict[str, Any]:
        params = {k: str(v) for k, v in (("after", after), ("limit", limit)) if v is not None}
        query = f"?{urlencode(params)}" if params else ""
        return await self._call("GET", f"/sync/v1/snapshot{query}")

    async def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]:
        return await self._call("POST", "/sync/v1/heartbeat", body)

    async def allowances(self, body: dict[str, Any]) -> dict[str, Any]:
        """Offline allowances: report usage, get fresh grants (docs/offline-allowance.md)."""
        return await self._call("POST", "/sync/v1/allowances", body)


class LoopbackTransport:
    """Calls an in-process `SyncApi` as the holder of `identity`'s certificate."""

    def __init__(self, api: Any, identity: Identity | None) -> None:
        self.api = api
        self.identity = identity

    async def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        path, _, query = path.partition("?")
        result: tuple[int, bytes] = await self.api.handle(method, path, query, body or b"",
                                                          self.identity)
        return result


class HttpsTransport:
    """Requests to `base_url` over TLS that checks the primary against the deployment
    CA and presents the site's certificate. Any failure to get an answer is a miss."""

    def __init__(self, reactor: Any, base_url: str, creator: Any, *,
                 timeout: float = 10.0) -> None:
        from treq.client import HTTPClient
        from twisted.web.client import Agent, HTTPConnectionPool

        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._reactor = reactor
        # Not persistent: after a partition, a kept-alive connection is a trap.
        pool = HTTPConnectionPool(reactor, persistent=False)
        self._policy = _FixedPolicy(creator)
        agent = Agent(reactor, contextFactory=self._policy, connectTimeout=timeout, pool=pool)
        self._http = HTTPClient(agent)

    def use(self, creator: Any) -> None:
        """New connections use `creator` (e.g. a renewed certificate); open ones finish
        with the one they started with. Nothing restarts."""
        self._policy.creator = creator

    @classmethod
    def from_files(cls, reactor: Any, base_url: str, *, ca_file: Path, cert_file: Path,
                   key_file: Path, timeout: float = 10.0) -> HttpsTransport:
        """The site's transport: the deployment CA, the site's certificate and key."""
        parts = urlsplit(base_url)
        if parts.scheme != "https" or not parts.hostname:
            raise ValueError("the primary's url must be https://host:port")
        creator = client_options(parts.hostname, ca_file, cert_file, key_file)
        return cls(reactor, base_url, creator, timeout=timeout)

    async def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        import treq

        try:
            headers: Any = {b"content-type": [b"application/json"]} if body is not None else None
            response = await self._http.request(
                method, self.base_url + path, data=body, timeout=self.timeout, headers=headers)
            payload = await treq.content(response)
        except Exception as exc:   # connection refused, reset, TLS failure, timeout
            raise SyncUnavailable(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
        return int(response.code), bytes(payload)


@implementer(IPolicyForHTTPS)
class _FixedPolicy:
    """One TLS creator for the one host the site talks to."""

    def __init__(self, creator: Any) -> None:
        self.creator = creator

    def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
        return self.creator

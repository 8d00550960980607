"""A primary and sites in one process: real storage on temp SQLite files, the real sync
logic and wire handler, sockets replaced by a loopback transport that can fail."""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from twisted.internet import reactor as real_reactor
from twisted.internet import task

from appliance.core.mode import LinkMode
from appliance.core.sync import PrimarySync, SiteSync, SyncUnavailable
from appliance.pki import Identity
from appliance.protocols.http.sync_api import SyncApi
from appliance.protocols.http.sync_client import HttpSyncClient, LoopbackTransport
from appliance.storage.database import Database
from appliance.storage.store import (
    NewIdentity,
    SiteStore,
    _insert_ledger,
    add_user_sync,
    ensure_account_sync,
)
from appliance.storage.sync_store import SyncStore, declare_role_sync


def open_db(path: Path, role: str, name: str) -> Database:
    database = Database(path, real_reactor)
    database.open()
    database.run_sync(lambda db: declare_role_sync(db, role, name))
    return database


@dataclass
class PrimaryNode:
    database: Database
    store: SyncStore
    sync: PrimarySync
    api: SyncApi

    def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self.database.run_sync(lambda db: db.conn.execute(sql, params).fetchone()[0]))

    def ledger_ids(self) -> list[str]:
        return [r[0] for r in self.database.run_sync(
            lambda db: db.conn.execute("SELECT entry_id FROM ledger ORDER BY id").fetchall())]


def make_primary(tmp: Path, clock: task.Clock | None = None, name: str = "primary") -> PrimaryNode:
    database = open_db(tmp / f"{name}.sqlite3", "primary", name)
    store = SyncStore(database)
    sync = PrimarySync(store=store, clock=(clock or task.Clock()).seconds)
    return PrimaryNode(database, store, sync, SyncApi(sync))


class FlakyTransport:
    """A link that drops requests before the primary sees them, or the answer after the
    primary handled them (the case that makes idempotency matter), or cuts the request
    body, each with a seeded probability; `down` cuts everything."""

    def __init__(self, inner: Any, rng: random.Random, *, before: float = 0.0,
                 after: float = 0.0, truncate: float = 0.0) -> None:
        self.inner = inner
        self.rng = rng
        self.before, self.after, self.truncate = before, after, truncate
        self.down = False
        self.log: list[str] = []

    async def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        if self.down:
            self.log.append("down")
            raise SyncUnavailable("link down")
        roll = self.rng.random()
        if roll < self.before:
            self.log.append("drop-before")
            raise SyncUnavailable("dropped before delivery")
        if body and roll < self.before + self.truncate:
            self.log.append("truncate")
            body = body[: self.rng.randrange(len(body))]
        answer: tuple[int, bytes] = await self.inner.call(method, path, body)
        if self.rng.random() < self.after:
            self.log.append("drop-after")
            raise SyncUnavailable("answer lost")
        self.log.append(f"ok {answer[0]}")
        return answer


@dataclass
class SiteNode:
    name: str
    database: Database
    store: SiteStore
    sync_store: SyncStore
    transport: Any
    sync: SiteSync
    mode: LinkMode
    clock: task.Clock

    def count(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        return int(self.database.run_sync(lambda db: db.conn.execute(sql, params).fetchone()[0]))

    def charge(self, n: int, start: int = 0, account: str = "user:alice", amount: int = 10) -> None:
        """`n` local charges (usage ids start..start+n-1), in one transaction."""

        def work(db: Any) -> None:
            account_id = ensure_account_sync(db, account, "personal", 0)
            for i in range(start, start + n):
                _insert_ledger(db, f"usage:{self.name}-{i}", account_id, -amount, "charge",
                               "copy", {"pages": 1, "i": i}, device="mfd1", impressions=1,
                               colour=False)

        self.database.run_sync(work)


def make_site(tmp: Path, primary: PrimaryNode, name: str = "site-a", *, rng: random.Random | None = None,
              clock: task.Clock | None = None, identity: Identity | None = None,
              batch: int = 100, pull_limit: int = 1000, misses: int = 3,
              successes: int = 3, **flaky: float) -> SiteNode:
    clock = clock or task.Clock()
    database = open_db(tmp / f"{name}.sqlite3", "site", name)
    loopback = LoopbackTransport(primary.api, identity or Identity("site", name))
    transport: Any = FlakyTransport(loopback, rng or random.Random(0), **flaky)
    mode = LinkMode(offline_after_misses=misses, online_after_successes=successes,
                    clock=clock.seconds)
    sync_store = SyncStore(database)
    sync = SiteSync(name=name, store=sync_store, client=HttpSyncClient(transport), mode=mode,
                    clock=clock, heartbeat_interval=5.0, push_batch_size=batch,
                    pull_limit=pull_limit)
    return SiteNode(name, database, SiteStore(database), sync_store, transport, sync, mode, clock)


def seed_users(primary: PrimaryNode, count: int, balance: int = 1000) -> None:
    def work(db: Any) -> None:
        for i in range(count):
            add_user_sync(db, f"user{i}", f"User {i}", f"user{i}@example.org", [
                NewIdentity("card", f"hmac-card-{i}", None),
                NewIdentity("pin", None, f"$argon2id$v=19$m=8,t=1,p=1$fake{i}"),
            ], balance)

    primary.database.run_sync(work)


_AS_SITE: Any = object()


async def push_raw(primary: PrimaryNode, site: str, payload: Any,
                   identity: Any = _AS_SITE) -> tuple[int, dict[str, Any]]:
    """POST a batch as `site`'s certificate (or as `identity`, None for no certificate)."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    peer = Identity("site", site) if identity is _AS_SITE else identity
    status, answer = await primary.api.handle("POST", "/sync/v1/events", "", body, peer)
    return status, json.loads(answer)


def close(*nodes: Any) -> None:
    for node in nodes:
        node.database.close()


# ------------------------------------------ composition roots on loopback (real reactor)


async def eventually(check: Any, timeout: float = 15.0, step: float = 0.05) -> None:
    """Wait, on the real reactor, until `await check()` is true (at most `timeout` s)."""
    waited = 0.0
    while not await check():
        assert waited < timeout, "condition not reached in time"
        await task.deferLater(real_reactor, step, lambda: None)
        waited += step


def alice_with_card(primary: Any, tmp_path: Path, site: str = "branch") -> None:
    """The deployment's card key (the primary's, under tmp_path/hq) copied to `site`, and
    alice (card 0042, PIN 1234, balance 1000) added at the primary."""
    from appliance.core.credentials import CardKey, make_verifier, password_hasher

    card_key = CardKey.load_or_create(tmp_path / "hq" / "secrets" / "card-hmac.key")
    (tmp_path / site / "secrets").mkdir(parents=True)
    (tmp_path / site / "secrets" / "card-hmac.key").write_bytes(
        (tmp_path / "hq" / "secrets" / "card-hmac.key").read_bytes())
    (tmp_path / site / "secrets" / "card-hmac.key").chmod(0o600)
    hasher = password_hasher(1, 8192)
    primary.database.run_sync(lambda db: add_user_sync(
        db, "alice", "Alice", "", [NewIdentity("card", card_key.lookup("0042"), None),
                                   NewIdentity("pin", None, make_verifier(hasher, "1234"))],
        1000))


def fast_primary_link(port: int, pki: Path, cert: Path, key: Path) -> dict[str, Any]:
    """A site's `[primary]` table for the primary's sync port on loopback, short timings."""
    return {"url": f"https://127.0.0.1:{port}", "ca_file": str(pki / "ca.crt"),
            "cert_file": str(cert), "key_file": str(key),
            "heartbeat_interval": 0.1, "offline_after_misses": 2,
            "online_after_successes": 2, "request_timeout": 1.0}


# ---------------------------------------------------------------- HTTP + TLS over iosim


class IosimTransport:
    """The real wire without sockets: twisted.web's Agent (HTTP/1.1 over TLS with the
    site's client certificate) talks to the primary's `SyncResource` (TLS requiring
    certificates of the CA) through iosim's in-memory transports. Each request opens
    a connection, as the real client does; bytes move when `call` pumps them."""

    def __init__(self, api: SyncApi, server_tls: Any, client_tls: Any) -> None:
        from twisted.internet import address
        from twisted.internet.interfaces import IStreamClientEndpoint
        from twisted.protocols.tls import TLSMemoryBIOFactory
        from twisted.web import server
        from twisted.web.client import Agent, HTTPConnectionPool
        from twisted.web.iweb import IAgentEndpointFactory
        from zope.interface import implementer

        from appliance.protocols.http.sync_api import SyncResource

        self._server = TLSMemoryBIOFactory(server_tls, False, server.Site(SyncResource(api)))
        self._client_tls = client_tls
        self._pumps: list[Any] = []
        self._address = address.IPv4Address("TCP", "127.0.0.1", 8633)
        transport = self

        @implementer(IStreamClientEndpoint)
        class Endpoint:
            def connect(self, factory: Any) -> Any:
                from twisted.internet import defer

                return defer.succeed(transport._connect(factory))

        @implementer(IAgentEndpointFactory)
        class Endpoints:
            def endpointForURI(self, uri: Any) -> Any:
                return Endpoint()

        self._tls_factory = TLSMemoryBIOFactory
        self.agent = Agent.usingEndpointFactory(
            real_reactor, Endpoints(), pool=HTTPConnectionPool(real_reactor, persistent=False))

    def _connect(self, factory: Any) -> Any:
        from twisted.test import iosim

        client = self._tls_factory(self._client_tls, True, factory).buildProtocol(self._address)
        server_side = self._server.buildProtocol(self._address)
        pump = iosim.connect(
            server_side, iosim.FakeTransport(server_side, True, self._address, self._address),
            client, iosim.FakeTransport(client, False, self._address, self._address),
            greet=False)
        self._pumps.append(pump)
        return client.wrappedProtocol

    async def call(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
        import io

        from twisted.internet import defer
        from twisted.web.client import FileBodyProducer, readBody

        producer = FileBodyProducer(io.BytesIO(body)) if body is not None else None
        d = self.agent.request(method.encode(), f"https://primary{path}".encode(), None,
                               producer)
        done: list[Any] = []

        async def read() -> tuple[int, bytes]:
            response = await d
            return int(response.code), bytes(await readBody(response))

        outcome = defer.ensureDeferred(read())
        outcome.addBoth(done.append)
        while not done:
            for pump in self._pumps:
                pump.pump()
            await task.deferLater(real_reactor, 0, lambda: None)
        self._pumps = [p for p in self._pumps if not p.clientIO.disconnected]
        result = done[0]
        if hasattr(result, "raiseException"):
            raise SyncUnavailable(f"{method} {path}: {result.getErrorMessage()}")
        return result  # type: ignore[no-any-return]

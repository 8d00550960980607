"""The provider role (docs/providers.md): a print server that reports its charges to the
primary and, while the primary is unreachable, to its site server.

A provider is built like a site (`app.build_site`: the same database, spool, queues,
release and panels), so that promoting it to a site is a change of role over the same
database. What differs is its uplink, `ProviderSync`: an ordered list of upstreams, each
followed by its own `LinkMode` (core/mode.py), the outbox drained to the first one that
is up. This module also holds the site's side: `ProviderRelay` answers providers'
pushes and heartbeats on a site's `[sync]` port and puts their events into the site's
own outbox as `relay` events, which the primary applies under the provider's ids.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer, task

from appliance.core.mode import LinkMode
from appliance.core.sync import (
    DEFAULT_PULL_LIMIT,
    PrimarySync,
    SiteSync,
    SyncClient,
    SyncError,
    TickLoop,
    parse_batch,
)
from appliance.storage.database import Database
from appliance.storage.provider_store import accept_provider_batch_sync
from appliance.storage.sync_store import NAME, SyncStore, state_sync

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- the provider's uplink


@dataclass
class Upstream:
    url: str
    sync: SiteSync      # its heartbeat, push and pull, over its own client and LinkMode

    @property
    def mode(self) -> LinkMode:
        return self.sync.mode


class ProviderSync(TickLoop):
    """Every `heartbeat_interval`: a heartbeat to each upstream (at once), then the outbox
    drained to the active upstream — the first, in the configured order, whose LinkMode
    is ONLINE — and, when that is the primary (the first upstream), its stream followed.

    W missed heartbeats in a row take an upstream down, K answers in a row bring it back,
    so the provider fails over to its site after W misses of the primary and fails back
    after K answers from it; a flapping primary keeps it on the site. Whatever the path,
    the outbox is forgotten only up to the checkpoint an upstream acknowledged.
    """

    _tick_log = log
    _tick_failed = "provider sync tick failed: %s"

    def __init__(self, *, name: str, store: SyncStore,
                 upstreams: Sequence[tuple[str, SyncClient]], clock: Any,
                 heartbeat_interval: float, offline_after_misses: int,
                 online_after_successes: int, push_batch_size: int = 500,
                 pull_limit: int = DEFAULT_PULL_LIMIT,
                 push_interval: float | None = None) -> None:
        if not upstreams:
            raise ValueError("a provider needs at least one upstream")
        self.name = name
        self.store = store
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.push_interval = push_interval
        self.upstreams = [
            Upstream(url, SiteSync(
                name=name, store=store, client=client,
                mode=LinkMode(offline_after_misses=offline_after_misses,
                              online_after_successes=online_after_successes,
                              clock=clock.seconds),
                clock=clock, heartbeat_interval=heartbeat_interval,
                push_batch_size=push_batch_size, pull_limit=pull_limit))
            for url, client in upstreams]
        self.active: int | None = None
        #: (time, url or None) each time the active upstream changed.
        self.switches: list[tuple[float, str | None]] = []
        self._loop: task.LoopingCall | None = None
        self._push_loop: task.LoopingCall | None = None
        self._ticking: defer.Deferred[None] | None = None
        self._heartbeat_owed = False

    # -- which upstream

    def choose(self) -> int | None:
        """The first upstream that is up (None: none is)."""
        for index, upstream in enumerate(self.upstreams):
            if upstream.mode.online:
                return index
        return None

    def _switch(self) -> Upstream | None:
        index = self.choose()
        if index != self.active:
            before = None if self.active is None else self.upstreams[self.active].url
            after = None if index is None else self.upstreams[index].url
            if index is None:
                log.warning("provider %s: no upstream answers (was %s); charges wait in "
                            "the outbox", self.name, before)
            elif self.active is not None and index > self.active:
                log.warning("provider %s: failing over from %s to %s", self.name, before,
                            after)
            elif self.active is not None:
                log.warning("provider %s: failing back from %s to %s", self.name, before,
                            after)
            else:
                log.info("provider %s: reporting to %s", self.name, after)
            self.active = index
            self.switches.append((self.clock.seconds(), after))
        return None if index is None else self.upstreams[index]

    # -- lifecycle (as SiteSync's)

    def start(self) -> None:
        self._start_loops(self.sync_if_up)

    # -- one tick

    async def tick(self) -> None:
        beats = [defer.ensureDeferred(u.sync.heartbeat()) for u in self.upstreams]
        await defer.gatherResults(beats, consumeErrors=True)
        upstream = self._switch()
        if upstream is None:
            return
        if upstream.sync._pending_outage is not None:
            await upstream.sync.heartbeat()   # report the outage it saw, once
        await self._drain(upstream)

    async def sync_if_up(self) -> None:
        upstream = self._switch()
        if upstream is not None and await self.store.outbox_size():
            await self._drain(upstream)

    async def _drain(self, upstream: Upstream) -> None:
        await upstream.sync.push_all()
        if upstream is self.upstreams[0]:
            await upstream.sync.pull_all()


def provider_uplink(config: Any, reactor: Any, database: Database) -> ProviderSync:
    """The provider's `ProviderSync` over mutual TLS to each of `[provider] upstreams`."""
    from appliance.protocols.http.sync_client import HttpsTransport, HttpSyncClient

    link = config.provider
    assert link is not None
    clients: list[tuple[str, SyncClient]] = []
    for url in link.upstreams:
        transport = HttpsTransport.from_files(
            reactor, url, ca_file=link.ca_file, cert_file=link.cert_file,
            key_file=link.key_file, timeout=link.request_timeout)
        clients.append((url, HttpSyncClient(transport)))
    return ProviderSync(
        name=config.name, store=SyncStore(database), upstreams=clients, clock=reactor,
        heartbeat_interval=link.heartbeat_interval,
        offline_after_misses=link.offline_after_misses,
        online_after_successes=link.online_after_successes,
        push_batch_size=link.push_batch_size, pull_limit=link.pull_batch_size,
        push_interval=link.push_interval)


# ---------------------------------------------------------------- the site's side


class ProviderRelay(PrimarySync):
    """What a site's `[sync]` port does for its providers: their batches are applied into
    the site's ledger and own outbox (`storage/provider_store.py`), their heartbeats are
    recorded as the primary records a site's. A site serves no change stream."""

    def __init__(self, *, store: SyncStore, site: str,
                 clock: Callable[[], float]) -> None:
        super().__init__(store=store, clock=clock)
        self.site = site

    async def receive_batch(self, payload: Any, peer: str | None,
                            kind: str | None = None) -> dict[str, Any]:
        batch = parse_batch(payload, peer)
        now = self.clock()
        outcome = await self.store.database.run(lambda db: accept_provider_batch_sync(
            db, self.site, batch.site, batch.batch_id, batch.events, now))
        for q in outcome.quarantined:
            log.error("relay: quarantined %s from %s: %s", q["event_id"], batch.site,
                      q["reason"])
        return {"checkpoint": outcome.checkpoint, "applied": outcome.applied,
                "duplicates": outcome.duplicates, "quarantined": outcome.quarantined}

    async def changes(self, since: str | None, limit: str | int | None) -> dict[str, Any]:
        raise SyncError(404, "not_found", "a site serves no change stream; pull from the primary")

    async def snapshot(self, after: str | None = None,
                       limit: str | int | None = None) -> dict[str, Any]:
        raise SyncError(404, "not_found", "a site serves no snapshot; pull from the primary")


def relay_api(config: Any, database: Database, reactor: Any) -> Any:
    """The SyncApi a site serves its providers on `[sync]` (provider certificates only)."""
    from appliance.protocols.http.sync_api import SyncApi

    name = database.run_sync(lambda db: state_sync(db, NAME)) or config.name
    relay = ProviderRelay(store=SyncStore(database), site=name, clock=reactor.seconds)
    return SyncApi(relay, pushers=frozenset({"provider"}))


def listen_relay(config: Any, reactor: Any, api: Any) -> Any:
    """Open a site's `[sync]` port (mutual TLS, the deployment's CA) for its providers."""
    from twisted.web import server

    from appliance.pki import server_options
    from appliance.protocols.http.sync_api import SyncResource

    listen = config.sync
    tls = server_options(listen.ca_file, listen.cert_file, listen.key_file)
    return reactor.listenSSL(listen.port, server.Site(SyncResource(api)), tls,
                             interface=listen.host)

"""The primary: master data, the authoritative ledger, and the sync API sites talk to.

Its database has the site-core tables too (one schema for every role). When its
configuration lists devices (`[[devices]]`), it also serves MFDs and queues directly, as
a site does: the same serving part (`app.build_serving`: IPP/LPD queues, device API,
release, accounting) on its own database, listening on its `[ipp]`, `[device_api]` and
`[lpd]` ports. Its charges go straight into the authoritative ledger; the ledger's
change-log trigger (migration 0003) carries them to the sites as `<primary>/<entry id>`,
and the site-side outbox triggers are guarded by role 'site', so nothing accumulates in
its outbox. Without devices it serves sync only. Master data enter
through its tables (`outpost users import` against the primary's configuration, and
the devices and cost policies of its configuration); the migration's triggers put
every change into the change log that sites pull.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from twisted.web import server

from appliance.config import SiteConfig
from appliance.core.sync import PrimarySync
from appliance.pki import server_options
from appliance.protocols.http.sync_api import SyncApi, SyncResource
from appliance.storage.database import Database
from appliance.storage.store import configure_sync
from appliance.storage.sync_store import SyncStore, declare_role_sync

log = logging.getLogger(__name__)


@dataclass
class Primary:
    config: SiteConfig
    reactor: Any
    database: Database
    sync_store: SyncStore
    sync: PrimarySync
    api: SyncApi
    ports: dict[str, Any] = field(default_factory=dict)
    enrollment: Any = None   # core.enrollment.PrimaryEnrollment, with an [enroll] section
    #: Its own queues, device API and MFDs (an app.Site without uplink), with [[devices]].
    serving: Any = None

    def listen(self) -> dict[str, int]:
        listen = self.config.sync
        assert listen is not None
        tls = server_options(listen.ca_file, listen.cert_file, listen.key_file)
        routes: Any = self.api
        if self.enrollment is not None:
            from appliance.roles.enroll_listen import enroll_routes

            routes, enroll_port = enroll_routes(self)
        port = self.reactor.listenSSL(listen.port, server.Site(SyncResource(routes)), tls,
                                      interface=listen.host)
        self.ports = {"sync": port}
        if self.enrollment is not None:
            self.ports["enroll"] = enroll_port
        return {name: p.getHost().port for name, p in self.ports.items()}

    async def start(self) -> dict[str, int]:
        served = await self.serving.start() if self.serving is not None else {}
        return {**served, **self.listen()}

    async def stop(self) -> None:
        for port in self.ports.values():
            await port.stopListening()
        if self.serving is not None:
            await self.serving.stop()   # closes the shared database too
        self.database.close()


def build_primary(config: SiteConfig, reactor: Any) -> Primary:
    """Open (migrating) the primary's database, declare its role, build the sync API."""
    from appliance.app import build_serving, devices_from, open_database

    if config.role != "primary" or config.sync is None:
        raise ValueError("build_primary needs role 'primary' with a [sync] section")
    database: Database = open_database(config, reactor)

    def prepare(db: Any) -> None:
        declare_role_sync(db, "primary", config.name)
        configure_sync(db, devices_from(config), config.cost_policies)

    database.run_sync(prepare)
    store = SyncStore(database)
    sync = PrimarySync(store=store, clock=reactor.seconds)
    primary = Primary(config=config, reactor=reactor, database=database, sync_store=store,
                      sync=sync, api=SyncApi(sync))
    # Offline allowances (docs/offline-allowance.md): answered even without [offline]
    # ({"enabled": false}), so that sites know to behave offline as online.
    from appliance.core.allowance import PrimaryAllowances
    from appliance.storage.allowance_store import AllowanceStore

    primary.api.allowances = PrimaryAllowances(store=AllowanceStore(database),
                                               config=config.offline, clock=reactor.seconds)
    if config.enroll is not None:
        from appliance.roles.enroll_listen import build_enrollment

        primary.enrollment = build_enrollment(config, database, reactor)
    if config.devices:
        # Serving MFDs and queues directly, as a site does, charging this very ledger.
        primary.serving = build_serving(config, reactor, database)
    return primary

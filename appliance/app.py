"""The composition root: builds every service of a site from its configuration.

Nothing else constructs services; everything else receives what it needs.
The reactor is injected so that tests can build a site on a fake one.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer, task
from twisted.web import resource, server

from appliance.config import SiteConfig
from appliance.core.accounting import AccountingService
from appliance.core.allowance import OfflineGate, SiteAllowances
from appliance.core.auth import AuthService
from appliance.core.charging import CostPolicy
from appliance.core.credentials import CardKey, SessionTable, Throttle, password_hasher
from appliance.core.devices import DeviceMonitor, PageCounterAudit
from appliance.core.jobs import FINDME, PrintService
from appliance.core.mode import Mode
from appliance.core.model import Device, Queue
from appliance.core.release import ReleaseService
from appliance.protocols.http.device_api import DeviceApi
from appliance.protocols.ipp.client import IppClient
from appliance.protocols.ipp.driver import IppDriver
from appliance.protocols.lpd.client import LpdClient
from appliance.protocols.lpd.driver import LpdDriver
from appliance.storage.allowance_store import AllowanceStore
from appliance.storage.database import Database
from appliance.storage.spool import Spool
from appliance.storage.store import SiteStore, configure_sync
from appliance.storage.sync_store import declare_role_sync

log = logging.getLogger(__name__)

MB = 1024 * 1024


def devices_from(config: SiteConfig) -> list[Device]:
    return [Device(d.name, d.protocol, d.uri, d.colour, d.duplex, d.cost_policy, True)
            for d in config.devices]


@dataclass
class Site:
    config: SiteConfig
    reactor: Any
    database: Database
    store: SiteStore
    spool: Spool
    jobs: PrintService
    release: ReleaseService
    auth: AuthService
    accounting: AccountingService
    ipp_client: IppClient
    ipp_root: resource.Resource
    device_api: DeviceApi
    ports: dict[str, Any] = field(default_factory=dict)
    _expiry: task.LoopingCall | None = None
    monitor: DeviceMonitor | None = None
    snmp_poller: Any = None   # protocols.snmp.poller.SnmpPoller, when a device has SNMP
    ipp_watcher: Any = None   # protocols.ipp.watcher.IppWatcher, when [monitor] ipp_interval > 0
    sync: Any = None          # core.sync.SiteSync, when a [primary] is configured
    #: A site's `[sync]` port for its providers (roles/provider.py), or None.
    relay: Any = None
    renewal: Any = None       # roles.site_renewal.RenewalLoop: renews the sync certificate

    def __post_init__(self) -> None:
        # The uplink also asks for offline allowances (docs/offline-allowance.md).
        if self.sync is not None and getattr(self.sync, "allowances", False) is None:
            self.sync.allowances = SiteAllowances(
                name=self.config.name, store=AllowanceStore(self.database),
                client=self.sync.client, clock=self.reactor)
            mode = self.sync.mode
            self.accounting.offline_gate.offline = lambda: mode.state is Mode.OFFLINE

    def listen(self) -> dict[str, int]:
        """Open the IPP, device-API and LPD ports; returns the bound port numbers."""
        from appliance.protocols.lpd.server import LpdServerFactory

        ipp = _listen_ipp(self.config, self.reactor, server.Site(self.ipp_root))
        api_root = resource.Resource()
        v1 = resource.Resource()
        api_root.putChild(b"api", v1)
        v1.putChild(b"v1", self.device_api)
        api = self.reactor.listenTCP(self.config.device_api.port, server.Site(api_root),
                                     interface=self.config.device_api.host)
        lpd = self.reactor.listenTCP(self.config.lpd.port,
                                     LpdServerFactory(self.jobs, reactor=self.reactor),
                                     interface=self.config.lpd.host)
        self.ports = {"ipp": ipp, "device_api": api, "lpd": lpd}
        if self.relay is not None:
            from appliance.roles.provider import listen_relay

            self.ports["sync"] = listen_relay(self.config, self.reactor, self.relay)
        return {name: port.getHost().port for name, port in self.ports.items()}

    async def start(self) -> dict[str, int]:
        await self.jobs.recover()
        await self.release.recover()
        self._expiry = task.LoopingCall(self._expire)
        self._expiry.clock = self.reactor
        self._expiry.start(self.config.jobs.expire_interval, now=True)
        if self.snmp_poller is not None:
            self.snmp_poller.start()
        if self.ipp_watcher is not None:
            self.ipp_watcher.start()
        if self.sync is not None:
            self.sync.start()
        if self.renewal is not None:
            self.renewal.start()
        return self.listen()

    def _expire(self) -> defer.Deferred[None]:
        d = defer.ensureDeferred(self.jobs.expire_held())
        d.addErrback(lambda f: log.error("expiring held jobs failed: %s", f.getTraceback()))
        return d.addCallback(lambda _: None)

    async def stop(self) -> None:
        if self.renewal is not None:
            self.renewal.stop()
        if self.sync is not None:
            await self.sync.stop()
        if self._expiry is not None and self._expiry.running:
            self._expiry.stop()
        if self.snmp_poller is not None:
            await self.snmp_poller.stop()
        if self.ipp_watcher is not None:
            self.ipp_watcher.stop()
        for port in self.ports.values():
            await port.stopListening()
        directory = getattr(self.auth, "directory", None)
        if directory is not None and hasattr(directory, "stop"):
            directory.stop()   # the LDAP client's own thread pool
        await self.ipp_client.close()
        self.database.close()


def open_database(config: SiteConfig, reactor: Any) -> Database:
    """The role's database, opened (and migrated) in its state directory."""
    config.state_dir.mkdir(parents=True, exist_ok=True)
    database = Database(config.database_path, reactor)
    database.open()
    return database


def build_site(config: SiteConfig, reactor: Any) -> Site:
    """Open the database (migrating it) and build every service of a site."""
    database = open_database(config, reactor)
    devices = devices_from(config)
    database.run_sync(lambda db: configure_sync(db, devices, config.cost_policies))
    # Every local ledger row now also enters the outbox (migration 0003's trigger).
    database.run_sync(lambda db: declare_role_sync(db, "site", config.name))
    uplink, renewal = _uplink(config, reactor, database)
    return build_serving(config, reactor, database, sync=uplink, renewal=renewal,
                         relay=_relay(config, reactor, database))


def build_serving(config: SiteConfig, reactor: Any, database: Database, *, sync: Any = None,
                  renewal: Any = None, relay: Any = None) -> Site:
    """The serving part of any role, on its open database: the IPP/LPD queues (findme and
    one direct queue per device), the device API, release to the configured MFDs and
    accounting into the local ledger. A site (and a provider) adds its uplink; the primary
    (roles/primary.py) has none, and its ledger is the authoritative one. What a ledger
    row triggers (outbox at a site, change log at the primary) is the role's, in the
    database (migration 0003)."""
    from appliance.protocols.ipp.server import build_ipp_root

    devices = devices_from(config)
    store = SiteStore(database)
    by_name = {d.name: d for d in devices}

    def policy_for(device: str | None) -> CostPolicy:
        name = by_name[device].cost_policy if device in by_name else "default"
        return config.cost_policies.get(name, config.cost_policies["default"])

    spool = Spool(config.spool_dir, max_document=int(config.jobs.max_document_mb * MB),
                  max_per_user=int(config.jobs.max_user_mb * MB),
                  max_total=int(config.jobs.max_total_mb * MB),
                  min_free=int(config.jobs.min_free_mb * MB))
    queues = [Queue(FINDME, "findme", None, "Find-Me: release at any printer of the site")]
    queues += [Queue(d.name, "direct", d.name, f"Direct queue of {d.name}") for d in devices]
    jobs = PrintService(store=store, spool=spool, queues=queues, policies=policy_for,
                        reactor=reactor, hold_ttl=config.jobs.hold_hours * 3600,
                        use_ghostscript=config.jobs.use_ghostscript)
    ipp_client = IppClient(reactor)
    monitor, snmp_poller, audit = _device_monitoring(config, reactor, store)
    # Offline, with a policy from the primary: releases and copies against the allowance.
    offline_gate = OfflineGate(AllowanceStore(database))
    release = ReleaseService(jobs=jobs, store=store, drivers={"ipp": IppDriver(ipp_client),
                                                                "lpd": LpdDriver(LpdClient(reactor))},
                             devices=lambda: by_name, policies=policy_for, reactor=reactor,
                             poll_interval=config.release.poll_interval,
                             follow_timeout=config.release.follow_timeout,
                             device_ready=monitor.refusal, print_watch=audit,
                             offline_gate=offline_gate)
    jobs.on_ready = release.print_direct
    hasher = password_hasher(config.auth.argon2_time_cost, config.auth.argon2_memory_kib)
    auth = AuthService(
        store=store, card_key=CardKey.load_or_create(config.card_key_path), hasher=hasher,
        sessions=SessionTable(idle_timeout=config.auth.session_idle,
                              max_age=config.auth.session_max_age),
        throttle=Throttle(max_failures=config.auth.max_failures,
                          window=config.auth.failure_window, lockout=config.auth.lockout),
        **_identity_options(config, reactor, database),
    )
    accounting = AccountingService(store=store, policies=policy_for, offline_gate=offline_gate)
    device_api = DeviceApi(auth=auth, jobs=jobs, release=release, accounting=accounting,
                           devices=lambda: by_name.keys(), device_status=monitor.panel_json)
    return Site(config=config, reactor=reactor, database=database, store=store, spool=spool,
                jobs=jobs, release=release, auth=auth, accounting=accounting,
                ipp_client=ipp_client, ipp_root=build_ipp_root(
                    jobs, authenticator=_queue_authenticator(config, auth)),
                device_api=device_api, relay=relay,
                monitor=monitor, snmp_poller=snmp_poller,
                ipp_watcher=_ipp_watcher(config, reactor, ipp_client, monitor),
                sync=sync, renewal=renewal)


def _identity_options(config: SiteConfig, reactor: Any, database: Database) -> dict[str, Any]:
    """AuthService's directory, password cache and card reader rules (docs/security.md)."""
    from appliance.storage.credential_store import CredentialStore

    options: dict[str, Any] = {
        "credential_store": CredentialStore(database),
        "card_rules": {d.name: d.card_rule for d in config.devices if d.card_rule is not None},
    }
    directory = config.directory
    if directory is not None:
        from appliance.protocols.ldap.client import LdapDirectory, LdapSettings

        settings = LdapSettings(
            url=directory.url, base_dn=directory.base_dn, user_filter=directory.user_filter,
            username_attribute=directory.username_attribute, bind_dn=directory.bind_dn,
            bind_password=directory.bind_password(),   # read once, here; never logged
            ca_file=str(directory.ca_file) if directory.ca_file else None,
            starttls=directory.starttls, timeout=directory.timeout,
            pool_size=directory.pool_size)
        options["directory"] = LdapDirectory(settings, reactor)
        options["directory_max_age"] = directory.verifier_max_age_hours * 3600
    return options


def _queue_authenticator(config: SiteConfig, auth: AuthService) -> Any:
    """Which IPP queues ask for HTTP Basic (None when every queue trusts requesting-user-name)."""
    default = config.ipp_security.auth
    modes = {d.name: d.ipp_auth or default for d in config.devices}
    if default != "basic" and "basic" not in modes.values():
        return None
    from appliance.protocols.ipp.auth import QueueAuthenticator

    return QueueAuthenticator(auth, lambda queue: modes.get(queue, default))


def _listen_ipp(config: SiteConfig, reactor: Any, factory: Any) -> Any:
    """The IPP port: plain ipp://, or ipps:// when [ipp] names a certificate and key."""
    security = config.ipp_security
    if not security.tls:
        return reactor.listenTCP(config.ipp.port, factory, interface=config.ipp.host)
    from twisted.internet import ssl

    assert security.tls_cert_file is not None and security.tls_key_file is not None
    certificate = ssl.PrivateCertificate.loadPEM(
        security.tls_cert_file.read_text() + security.tls_key_file.read_text())
    return reactor.listenSSL(config.ipp.port, factory, certificate.options(),
                             interface=config.ipp.host)


def _ipp_watcher(config: SiteConfig, reactor: Any, client: IppClient,
                 monitor: DeviceMonitor) -> Any:
    """Get-Printer-Attributes of every IPP device on an interval, into the monitor (or None)."""
    settings = config.monitor
    devices = [(d.name, d.uri) for d in config.devices if d.protocol == "ipp"]
    if settings.ipp_interval <= 0 or not devices:
        return None
    from appliance.protocols.ipp.watcher import IppWatcher

    watcher = IppWatcher(devices, client=client, reactor=reactor, on_view=monitor.update,
                         interval=settings.ipp_interval, timeout=settings.ipp_timeout)
    monitor.stale_after = max(monitor.stale_after, watcher.max_backoff + 2 * watcher.timeout)
    return watcher


def _uplink(config: SiteConfig, reactor: Any, database: Database) -> tuple[Any, Any]:
    """The site's sync service (push outbox, pull changes, heartbeats) and the renewal of
    its certificate (docs/wire/enroll.md), if it has a primary."""
    if config.role == "provider":   # its ordered upstreams instead (docs/providers.md)
        from appliance.roles.provider import provider_uplink

        return provider_uplink(config, reactor, database), None
    link = config.primary
    if link is None:
        return None, None
    from appliance.core.mode import LinkMode
    from appliance.core.sync import SiteSync
    from appliance.protocols.http.sync_client import HttpsTransport, HttpSyncClient
    from appliance.roles.site_renewal import recover_pending, renewal_loop
    from appliance.storage.sync_store import SyncStore

    recover_pending(link.cert_file, link.key_file)   # a renewal a crash interrupted
    transport = HttpsTransport.from_files(
        reactor, link.url, ca_file=link.ca_file, cert_file=link.cert_file,
        key_file=link.key_file, timeout=link.request_timeout)
    mode = LinkMode(offline_after_misses=link.offline_after_misses,
                    online_after_successes=link.online_after_successes, clock=reactor.seconds)
    return SiteSync(name=config.name, store=SyncStore(database),
                    client=HttpSyncClient(transport), mode=mode, clock=reactor,
                    heartbeat_interval=link.heartbeat_interval,
                    push_batch_size=link.push_batch_size, pull_limit=link.pull_batch_size,
                    push_interval=link.push_interval), renewal_loop(config, reactor, transport)


def _relay(config: SiteConfig, reactor: Any, database: Database) -> Any:
    """A site's sync port for the providers that fail over to it, if it has `[sync]`."""
    if config.role != "site" or config.sync is None:
        return None
    from appliance.roles.provider import relay_api

    return relay_api(config, database, reactor)


def _device_monitoring(config: SiteConfig, reactor: Any,
                       store: SiteStore) -> tuple[DeviceMonitor, Any, PageCounterAudit | None]:
    """The device monitor, and the SNMP poller and page-counter audit when a device has SNMP."""
    snmp = config.snmp
    # A view older than three polls (each with its tries) no longer counts.
    monitor = DeviceMonitor(stale_after=3 * (snmp.interval + snmp.timeout * (snmp.retries + 1)))
    watched = [d for d in config.devices if d.snmp is not None]
    if not watched:
        return monitor, None, None
    from appliance.protocols.snmp.poller import SnmpPoller, SnmpTarget, V3Credentials

    targets = []
    for device in watched:
        assert device.snmp is not None
        v3 = device.snmp.v3
        targets.append(SnmpTarget(
            device.name, device.snmp.host, device.snmp.port, device.snmp.community,
            V3Credentials(v3.user, v3.auth_key, v3.priv_key, v3.auth_protocol, v3.priv_protocol)
            if v3 is not None else None))
    def on_reading(name: str, reading: Any, at: float) -> None:
        monitor.update(name, reading.view(at))

    poller = SnmpPoller(targets, reactor=reactor, interval=snmp.interval, timeout=snmp.timeout,
                        retries=snmp.retries, on_reading=on_reading)
    # A silent device is polled less and less often: its last view must outlive the gap.
    monitor.stale_after = max(monitor.stale_after, poller.max_backoff + 2 * poller.guard)

    async def read_counter(name: str) -> int | None:
        count: int | None = await poller.page_count(name, timeout=min(snmp.timeout, 1.0))
        return count

    def sleep(seconds: float) -> defer.Deferred[None]:
        return task.deferLater(reactor, seconds, lambda: None)

    # A device may still be counting when its job is reported done (LPD): wait while its
    # counter moves, and flag a shortfall once it has stood still for 10 s.
    return monitor, poller, PageCounterAudit(read_counter=read_counter, store=store,
                                             sleep=sleep, settle=10.0, settle_step=1.0)

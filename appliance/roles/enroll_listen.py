"""The primary as the deployment's CA (docs/wire/enroll.md): its enrollment port, and the
sync port's renewal route and revocation check. Built when the primary's configuration
has an `[enroll]` section (with `ca_key_file`)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.web import server

from appliance.config import SiteConfig
from appliance.core.credentials import CardKey
from appliance.core.enrollment import PrimaryEnrollment, spki_digest
from appliance.pki import Pair
from appliance.protocols.http.enroll_api import EnrollApi, SyncWithEnrollment
from appliance.protocols.http.sync_api import SyncResource
from appliance.storage.database import Database
from appliance.storage.enroll_store import EnrollStore, ensure_schema_sync

log = logging.getLogger(__name__)


def load_ca(ca_file: Path, ca_key_file: Path) -> Pair:
    """The CA certificate and key; refuses a key others may read, or one that is not the
    certificate's."""
    mode = stat.S_IMODE(ca_key_file.stat().st_mode)
    if mode & 0o077:
        raise PermissionError(f"{ca_key_file}: the CA key must be mode 0600 (it is {mode:04o})")
    pair = Pair(ca_file.read_bytes(), ca_key_file.read_bytes())
    cert = x509.load_pem_x509_certificate(pair.cert_pem)
    key = serialization.load_pem_private_key(pair.key_pem, password=None)
    if spki_digest(cert.public_key()) != spki_digest(key.public_key()):
        raise ValueError(f"{ca_key_file} is not the key of {ca_file}")
    return pair


def card_key_hex(config: SiteConfig) -> str:
    CardKey.load_or_create(config.card_key_path)   # checks its mode; makes it on first start
    return config.card_key_path.read_text().strip()


def build_enrollment(config: SiteConfig, database: Database, reactor: Any) -> PrimaryEnrollment:
    enroll, sync = config.enroll, config.sync
    assert enroll is not None and sync is not None and enroll.ca_key_file is not None
    ca = load_ca(sync.ca_file, enroll.ca_key_file)
    database.run_sync(ensure_schema_sync)
    return PrimaryEnrollment(store=EnrollStore(database), ca=ca, sync_port=sync.port,
                             approval=enroll.approval, lifetime=enroll.cert_lifetime,
                             card_key_hex=card_key_hex(config), clock=reactor.seconds)


def server_auth_options(cert_file: Path, key_file: Path) -> Any:
    """TLS that authenticates the primary only: a new site has no certificate yet."""
    from twisted.internet import ssl

    own = ssl.PrivateCertificate.loadPEM(cert_file.read_bytes() + b"\n" + key_file.read_bytes())
    return ssl.CertificateOptions(privateKey=own.privateKey.original, certificate=own.original,
                                  raiseMinimumTo=ssl.TLSVersion.TLSv1_2)


def enroll_routes(primary: Any) -> tuple[Any, Any]:
    """(the sync port's routes, the listening enrollment port)."""
    config: SiteConfig = primary.config
    enroll, sync = config.enroll, config.sync
    assert enroll is not None and sync is not None
    public = EnrollApi(primary.enrollment, public=True)
    port = primary.reactor.listenSSL(
        enroll.port, server.Site(SyncResource(public)),  # type: ignore[arg-type]
        server_auth_options(sync.cert_file, sync.key_file),
        interface=enroll.host or sync.host)
    log.info("enrollment port %d (approval %s)", port.getHost().port,
             "required" if enroll.approval else "not required")
    routes = SyncWithEnrollment(primary.api, EnrollApi(primary.enrollment, public=False))
    return routes, port

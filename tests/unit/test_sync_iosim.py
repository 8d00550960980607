"""The sync wire end to end — HTTP/1.1, mutual TLS, the twisted.web adapter — with iosim
in place of sockets, on simulated time."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import ssl, task

from appliance.core.sync import SyncRefused, SyncUnavailable
from appliance.pki import issue, make_ca
from appliance.protocols.http.sync_client import HttpSyncClient
from tests.unit.sync_helpers import (
    FlakyTransport,
    IosimTransport,
    close,
    make_site,
)

# iosim's transports have no abortConnection, which readBody would like for cancelling.
pytestmark = pytest.mark.filterwarnings("ignore:Using readBody:DeprecationWarning")

CA = make_ca()
OTHER_CA = make_ca("another CA")


def tls_pair(ca, kind, name):
    pair = issue(ca, kind=kind, name=name, hosts=["primary"])
    return ssl.PrivateCertificate.loadPEM(pair.cert_pem + pair.key_pem)


def server_tls():
    own = tls_pair(CA, "primary", "primary")
    return ssl.CertificateOptions(privateKey=own.privateKey.original, certificate=own.original,
                                  trustRoot=ssl.trustRootFromCertificates(
                                      [ssl.Certificate.loadPEM(CA.cert_pem)]))


def client_tls(name, ca=CA):
    return ssl.optionsForClientTLS("primary", trustRoot=ssl.Certificate.loadPEM(CA.cert_pem),
                                   clientCertificate=tls_pair(ca, "site", name))


@pytest_twisted.ensureDeferred
async def test_push_pull_and_heartbeat_over_http_and_tls_in_memory(tmp_path, primary):
    site = make_site(tmp_path, primary)
    try:
        site.charge(30)
        site.sync.client = HttpSyncClient(IosimTransport(primary.api, server_tls(),
                                                         client_tls("site-a")))
        await site.sync.tick()
        assert site.mode.online
        assert primary.count("SELECT COUNT(*) FROM ledger WHERE origin = 'site-a'") == 30
        assert site.count("SELECT COUNT(*) FROM outbox") == 0
        assert site.count("SELECT COUNT(*) FROM ledger") == 30
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_identities_are_checked_over_the_in_memory_wire(tmp_path, primary):
    site = make_site(tmp_path, primary)
    try:
        site.charge(2)
        site.sync.client = HttpSyncClient(IosimTransport(primary.api, server_tls(),
                                                         client_tls("site-b")))
        with pytest.raises(SyncRefused) as refused:
            await site.sync.push_once()
        assert refused.value.status == 403
        foreign = HttpSyncClient(IosimTransport(primary.api, server_tls(),
                                                client_tls("site-a", ca=OTHER_CA)))
        with pytest.raises(SyncUnavailable):
            await foreign.heartbeat({"site": "site-a", "mode": "online", "outbox": 0})
        assert primary.count("SELECT COUNT(*) FROM ledger") == 0
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_a_flapping_in_memory_link_loses_and_doubles_nothing(tmp_path, primary):
    rng = random.Random(7)
    clock = task.Clock()
    site = make_site(tmp_path, primary, clock=clock, batch=50, misses=2, successes=2)
    try:
        wire = IosimTransport(primary.api, server_tls(), client_tls("site-a"))
        flaky = FlakyTransport(wire, random.Random(8), before=0.2, after=0.2, truncate=0.1)
        site.sync.client = HttpSyncClient(flaky)
        site.charge(500)
        steps = 0
        while site.count("SELECT COUNT(*) FROM outbox"):
            steps += 1
            assert steps < 500
            flaky.down = rng.random() < 0.2
            clock.advance(5)
            await site.sync.tick()
        assert {"drop-after", "drop-before", "truncate"} <= set(flaky.log)
        ids = primary.ledger_ids()
        assert len(ids) == len(set(ids)) == 500
    finally:
        close(site)

"""Sync over real mutual TLS on loopback: the primary requires a certificate of its CA and
takes the site's identity from it; the site checks the primary against the same CA."""

from __future__ import annotations

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor, ssl
from twisted.web import server

from appliance.config import parse
from appliance.core.sync import SyncRefused, SyncUnavailable
from appliance.pki import Identity, identity_of, issue, make_ca
from appliance.protocols.http.sync_api import SyncResource
from appliance.protocols.http.sync_client import HttpsTransport, HttpSyncClient
from appliance.roles.primary import build_primary
from tests.unit.sync_helpers import close, make_primary, make_site


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    other_ca = make_ca("Someone else's CA")
    files = {"ca": folder / "ca.crt"}
    files["ca"].write_bytes(ca.cert_pem)
    for stem, pair in {
        "primary": issue(ca, kind="primary", name="primary", hosts=["localhost", "127.0.0.1"]),
        "site-a": issue(ca, kind="site", name="site-a"),
        "site-b": issue(ca, kind="site", name="site-b"),
        "rogue-a": issue(other_ca, kind="site", name="site-a"),
        "rogue-primary": issue(other_ca, kind="primary", name="primary",
                               hosts=["127.0.0.1"]),
    }.items():
        files[stem] = pair.write(folder, stem)
    return files


@pytest.fixture
def primary(tmp_path, pki):
    node = make_primary(tmp_path)
    cert, key = pki["primary"]
    from appliance.pki import server_options

    port = reactor.listenSSL(0, server.Site(SyncResource(node.api)),
                             server_options(pki["ca"], cert, key), interface="127.0.0.1")
    node.url = f"https://127.0.0.1:{port.getHost().port}"
    yield node
    port.stopListening()
    close(node)


def client(url, pki, stem):
    cert, key = pki[stem]
    return HttpSyncClient(HttpsTransport.from_files(reactor, url, ca_file=pki["ca"],
                                                    cert_file=cert, key_file=key, timeout=5))


def heartbeat(site):
    return {"site": site, "mode": "online", "outbox": 0, "pull_token": None}


def test_certificates_carry_their_identity(pki):
    cert = x509.load_pem_x509_certificate(pki["site-a"][0].read_bytes())
    assert identity_of(cert) == Identity("site", "site-a")
    assert identity_of(cert).uri == "outpost://site/site-a"
    assert oct(pki["site-a"][1].stat().st_mode & 0o777) == "0o600"


@pytest_twisted.ensureDeferred
async def test_a_site_syncs_over_mutual_tls(tmp_path, primary, pki):
    site = make_site(tmp_path, primary)
    try:
        site.charge(25)
        site.sync.client = client(primary.url, pki, "site-a")
        await site.sync.tick()
        assert site.mode.online
        assert primary.count("SELECT COUNT(*) FROM ledger WHERE origin = 'site-a'") == 25
        assert site.count("SELECT COUNT(*) FROM outbox") == 0
        assert await site.sync_store.state("pull_token") is not None
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_a_client_without_a_certificate_is_refused(primary, pki):
    creator = ssl.optionsForClientTLS(
        "127.0.0.1", trustRoot=ssl.Certificate.loadPEM(pki["ca"].read_bytes()))
    anonymous = HttpSyncClient(HttpsTransport(reactor, primary.url, creator, timeout=5))
    with pytest.raises(SyncUnavailable):
        await anonymous.heartbeat(heartbeat("site-a"))
    assert primary.count("SELECT COUNT(*) FROM sync_sites") == 0


@pytest_twisted.ensureDeferred
async def test_a_certificate_from_another_ca_is_refused(primary, pki):
    with pytest.raises(SyncUnavailable):
        await client(primary.url, pki, "rogue-a").heartbeat(heartbeat("site-a"))
    assert primary.count("SELECT COUNT(*) FROM sync_sites") == 0


@pytest_twisted.ensureDeferred
async def test_a_site_presenting_another_sites_name_is_refused(tmp_path, primary, pki):
    site = make_site(tmp_path, primary)
    try:
        site.charge(3)
        site.sync.client = client(primary.url, pki, "site-b")   # site-b's certificate
        with pytest.raises(SyncRefused) as refused:
            await site.sync.push_once()
        assert refused.value.status == 403
        assert refused.value.body["error"]["code"] == "wrong_site"
        with pytest.raises(SyncRefused):
            await site.sync.client.heartbeat(heartbeat("site-a"))
        assert primary.count("SELECT COUNT(*) FROM ledger") == 0
        assert site.count("SELECT COUNT(*) FROM outbox") == 3
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_the_site_refuses_a_primary_its_ca_did_not_sign(tmp_path, pki):
    node = make_primary(tmp_path)
    cert, key = pki["rogue-primary"]
    from appliance.pki import server_options

    port = reactor.listenSSL(0, server.Site(SyncResource(node.api)),
                             server_options(pki["ca"], cert, key), interface="127.0.0.1")
    try:
        url = f"https://127.0.0.1:{port.getHost().port}"
        with pytest.raises(SyncUnavailable):
            await client(url, pki, "site-a").heartbeat(heartbeat("site-a"))
    finally:
        await port.stopListening()
        close(node)


@pytest_twisted.ensureDeferred
async def test_serve_builds_a_primary_from_its_configuration(tmp_path, pki):
    cert, key = pki["primary"]
    config = parse({
        "role": "primary", "name": "hq", "state_dir": str(tmp_path / "state"),
        "secrets_dir": str(tmp_path / "secrets"),
        "sync": {"host": "127.0.0.1", "port": 0, "ca_file": str(pki["ca"]),
                 "cert_file": str(cert), "key_file": str(key)},
    })
    built = build_primary(config, reactor)
    try:
        ports = await built.start()
        answer = await client(f"https://127.0.0.1:{ports['sync']}", pki, "site-a").heartbeat(
            heartbeat("site-a"))
        assert answer["ok"] is True and answer["token"] == "1"   # the default cost policy
        rows = await built.sync_store.rows("sync_sites")
        assert rows[0]["name"] == "site-a"
    finally:
        await built.stop()

"""Enrollment by join token (docs/wire/enroll.md): token lifecycle, CA pin, CSR name
binding, one-time and expiring tokens, approval, revocation and renewal; the logic on a
real database, then the whole exchange over real TLS on loopback."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import pytest_twisted
from cryptography import x509
from twisted.internet import reactor, threads

from appliance.cli import main
from appliance.config import load
from appliance.core.enrollment import (
    EnrollError,
    PrimaryEnrollment,
    Renewer,
    SiteFiles,
    ca_pin,
    check_csr,
    enroll_site,
    key_pem,
    make_csr,
    new_key,
    new_token,
    parse_duration,
    pem,
    pin_matches,
    recover_pending,
    secret_digest,
    sign,
)
from appliance.core.sync import SyncRefused, SyncUnavailable
from appliance.enroll_cli import enroll
from appliance.pki import Identity, Pair, identity_of, issue, make_ca
from appliance.protocols.http.enroll_api import EnrollApi, SyncWithEnrollment
from appliance.protocols.http.sync_client import HttpsTransport, HttpSyncClient
from appliance.roles.primary import build_primary
from appliance.storage.enroll_store import (
    EnrollStore,
    approve_site_sync,
    create_token_sync,
    ensure_schema_sync,
    revoke_site_sync,
)
from tests.unit.sync_helpers import close, make_primary


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ca():
    return make_ca()


@pytest.fixture
def node(tmp_path):
    primary = make_primary(tmp_path)
    primary.database.run_sync(ensure_schema_sync)
    yield primary
    close(primary)


def enrollment(node, ca, clock, **options) -> PrimaryEnrollment:
    return PrimaryEnrollment(store=EnrollStore(node.database), ca=ca, sync_port=8633,
                             clock=clock, card_key_hex="ab" * 32, **options)


def token_for(node, site: str, clock: Clock, ttl: float = 3600.0) -> str:
    token = new_token()
    node.database.run_sync(lambda db: create_token_sync(
        db, token.token_id, secret_digest(token.secret), site, clock(), clock() + ttl))
    return token.text


def peer_of(cert_pem: str) -> Identity:
    identity = identity_of(x509.load_pem_x509_certificate(cert_pem.encode()))
    assert identity is not None
    return identity


# ---------------------------------------------------------------- pure helpers


def test_pin_is_the_sha256_of_the_cas_public_key(ca):
    pin = ca_pin(ca.cert_pem)
    assert pin.startswith("sha256:") and len(pin) == 7 + 64
    assert pin_matches(pin.upper().replace("SHA256", "sha256"), ca.cert_pem)
    assert not pin_matches(ca_pin(make_ca().cert_pem), ca.cert_pem)


def test_durations():
    assert parse_duration("90") == 90 and parse_duration("15m") == 900
    assert parse_duration("24h") == 86400 and parse_duration("7d") == 7 * 86400
    assert parse_duration("0") == 0
    for bad in ("", "soon", "-5m"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_a_csr_must_name_the_tokens_site():
    key = new_key()
    assert check_csr(make_csr(key, "branch-1").decode(), "branch-1").name == "branch-1"
    with pytest.raises(EnrollError) as refused:
        check_csr(make_csr(key, "branch-2").decode(), "branch-1")
    assert (refused.value.status, refused.value.code) == (403, "wrong_site")
    for garbage in (None, "", "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n"):
        with pytest.raises(EnrollError) as refused:
            check_csr(garbage, "branch-1")
        assert refused.value.status == 400


# ---------------------------------------------------------------- the primary's logic


@pytest_twisted.ensureDeferred
async def test_a_token_is_one_time_and_a_retry_by_the_same_key_is_not_a_reuse(node, ca):
    clock = Clock()
    primary = enrollment(node, ca, clock)
    token = token_for(node, "branch-1", clock)
    key = new_key()
    csr = make_csr(key, "branch-1").decode()
    status, answer = await primary.enroll({"token": token, "csr": csr})
    assert status == 200 and answer["status"] == "issued"
    assert answer["card_key"] == "ab" * 32 and answer["sync_port"] == 8633
    cert = x509.load_pem_x509_certificate(answer["certificate"].encode())
    assert identity_of(cert) == Identity("site", "branch-1")
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(ca.cert_pem))
    # The answer was lost: the site asks again with the same key and gets the same one.
    status, again = await primary.enroll({"token": token, "csr": csr})
    assert (status, again["certificate"]) == (200, answer["certificate"])
    # Anyone else with the token is refused.
    with pytest.raises(EnrollError) as refused:
        await primary.enroll({"token": token, "csr": make_csr(new_key(), "branch-1").decode()})
    assert (refused.value.status, refused.value.code) == (403, "token_used")
    assert node.count("SELECT COUNT(*) FROM site_certificates") == 1


@pytest_twisted.ensureDeferred
async def test_expired_unknown_and_wrong_tokens_are_refused(node, ca):
    clock = Clock()
    primary = enrollment(node, ca, clock)
    csr = make_csr(new_key(), "branch-1").decode()
    expired = token_for(node, "branch-1", clock, ttl=0)   # expired when made
    later = token_for(node, "branch-1", clock, ttl=60)
    clock.now += 61
    for token, code in ((expired, "token_expired"), (later, "token_expired"),
                        (new_token().text, "bad_token"), ("not-a-token", "bad_token"),
                        (later.split(".")[0] + ".wrongsecret", "bad_token")):
        with pytest.raises(EnrollError) as refused:
            await primary.enroll({"token": token, "csr": csr})
        assert (refused.value.status, refused.value.code) == (403, code), token
    bound = token_for(node, "branch-1", clock)
    with pytest.raises(EnrollError) as refused:   # the token is bound to branch-1
        await primary.enroll({"token": bound, "csr": make_csr(new_key(), "branch-2").decode()})
    assert refused.value.code == "wrong_site"
    assert node.count("SELECT COUNT(*) FROM site_certificates") == 0


@pytest_twisted.ensureDeferred
async def test_the_secret_is_stored_only_as_a_hash(node, ca):
    clock = Clock()
    token = token_for(node, "branch-1", clock)
    secret = token.split(".")[1]
    rows = node.database.run_sync(
        lambda db: [dict(r) for r in db.execute("SELECT * FROM enroll_tokens").fetchall()])
    assert secret not in json.dumps(rows)
    assert rows[0]["secret_sha256"] == secret_digest(secret)


@pytest_twisted.ensureDeferred
async def test_approval(node, ca):
    clock = Clock()
    primary = enrollment(node, ca, clock, approval=True)
    token = token_for(node, "branch-1", clock)
    csr = make_csr(new_key(), "branch-1").decode()
    status, answer = await primary.enroll({"token": token, "csr": csr})
    assert (status, answer["status"]) == (202, "pending") and "certificate" not in answer
    clock.now += 7200   # past the token's expiry: it was redeemed in time, the site polls
    assert (await primary.enroll({"token": token, "csr": csr}))[0] == 202
    assert node.database.run_sync(lambda db: approve_site_sync(db, "branch-1", clock())) == 1
    status, answer = await primary.enroll({"token": token, "csr": csr})
    assert status == 200 and peer_of(answer["certificate"]).name == "branch-1"
    # A pending enrollment of a site that is then revoked never gets a certificate.
    other = token_for(node, "branch-2", clock)
    csr2 = make_csr(new_key(), "branch-2").decode()
    assert (await primary.enroll({"token": other, "csr": csr2}))[0] == 202
    node.database.run_sync(lambda db: revoke_site_sync(db, "branch-2", clock()))
    with pytest.raises(EnrollError) as refused:
        await primary.enroll({"token": other, "csr": csr2})
    assert refused.value.code == "rejected"


@pytest_twisted.ensureDeferred
async def test_revocation_renewal_and_re_enrollment(node, ca):
    clock = Clock()
    primary = enrollment(node, ca, clock)
    _, answer = await primary.enroll({"token": token_for(node, "branch-1", clock),
                                      "csr": make_csr(new_key(), "branch-1").decode()})
    first = peer_of(answer["certificate"])
    assert await primary.refusal(first) is None
    renewed = await primary.renew(first, {"csr": make_csr(new_key(), "branch-1").decode()})
    second = peer_of(renewed["certificate"])
    assert second.serial != first.serial
    with pytest.raises(EnrollError) as refused:   # a renewal names its own site only
        await primary.renew(first, {"csr": make_csr(new_key(), "branch-2").decode()})
    assert refused.value.code == "wrong_site"
    # A certificate the primary never saw (made with `outpost pki issue`) works...
    handmade = peer_of(issue(ca, kind="site", name="branch-1").cert_pem.decode())
    assert await primary.refusal(handmade) is None
    clock.now += 1
    unused = token_for(node, "branch-1", clock)
    counts = node.database.run_sync(lambda db: revoke_site_sync(db, "branch-1", clock()))
    assert counts == {"certificates": 2, "tokens": 1, "requests": 0}
    # ...until the site is revoked: then every certificate issued so far is refused,
    for peer in (first, second, handmade):
        refusal = await primary.refusal(peer)
        assert refusal is not None and (refusal.status, refusal.code) == (403, "revoked")
    with pytest.raises(EnrollError) as refused:   # renewal included,
        await primary.renew(second, {"csr": make_csr(new_key(), "branch-1").decode()})
    assert refused.value.code == "revoked"
    with pytest.raises(EnrollError) as refused:   # and the tokens it had not used yet.
        await primary.enroll({"token": unused, "csr": make_csr(new_key(), "branch-1").decode()})
    assert refused.value.code == "token_revoked"
    # A new token made after the revocation enrolls it again, with a new certificate.
    clock.now += 1
    _, again = await primary.enroll({"token": token_for(node, "branch-1", clock),
                                     "csr": make_csr(new_key(), "branch-1").decode()})
    assert await primary.refusal(peer_of(again["certificate"])) is None
    assert await primary.refusal(second) is not None


@pytest_twisted.ensureDeferred
async def test_the_sync_port_refuses_a_revoked_certificate_on_every_request(node, ca):
    clock = Clock()
    primary = enrollment(node, ca, clock)
    routes = SyncWithEnrollment(node.api, EnrollApi(primary, public=False))
    _, answer = await primary.enroll({"token": token_for(node, "branch-1", clock),
                                      "csr": make_csr(new_key(), "branch-1").decode()})
    peer = peer_of(answer["certificate"])
    beat = json.dumps({"site": "branch-1", "mode": "online", "outbox": 0,
                       "pull_token": None}).encode()
    status, _ = await routes.handle("POST", "/sync/v1/heartbeat", "", beat, peer)
    assert status == 200
    node.database.run_sync(lambda db: revoke_site_sync(db, "branch-1", clock()))
    status, body = await routes.handle("POST", "/sync/v1/heartbeat", "", beat, peer)
    assert (status, json.loads(body)["error"]["code"]) == (403, "revoked")
    status, body = await routes.handle("GET", "/sync/v1/changes", "since=0", b"", peer)
    assert status == 403
    # The public routes are not on the sync port, and renewal is not on the public one.
    assert (await routes.handle("POST", "/enroll/v1/enroll", "", b"{}", peer))[0] == 404
    public = EnrollApi(primary, public=True)
    assert (await public.handle("POST", "/enroll/v1/renew", "", b"{}", None))[0] == 404
    assert (await public.handle("GET", "/enroll/v1/ca", "", b"", None))[0] == 200


# ---------------------------------------------------------------- the site's side


def test_a_pin_mismatch_writes_nothing(tmp_path, ca):
    files = SiteFiles(tmp_path / "ca.crt", tmp_path / "b.crt", tmp_path / "b.key")

    def post(*args):
        raise AssertionError("no request may be sent to an unpinned primary")

    with pytest.raises(EnrollError) as refused:
        enroll_site("b", "https://127.0.0.1:1", "t", ca_pin(make_ca().cert_pem), files,
                    fetch_ca=lambda url: ca.cert_pem, post_enroll=post)
    assert refused.value.code == "pin_mismatch"
    assert list(tmp_path.iterdir()) == []


def test_recover_an_interrupted_renewal(tmp_path, ca):
    cert, key = tmp_path / "b.crt", tmp_path / "b.key"
    old = issue(ca, kind="site", name="b")
    new = issue(ca, kind="site", name="b")
    cert.write_bytes(old.cert_pem)
    key.write_bytes(new.key_pem)                      # the new key was written...
    (tmp_path / "b.crt.new").write_bytes(new.cert_pem)   # ...the certificate not renamed
    recover_pending(cert, key)
    assert cert.read_bytes() == new.cert_pem and not (tmp_path / "b.crt.new").exists()


# ---------------------------------------------------------------- over real TLS


def write_configs(tmp_path: Path, *, approval: bool = False, lifetime: float = 3600) -> dict:
    pki = tmp_path / "pki"
    assert main(["pki", "init", str(pki)]) == 0
    assert main(["pki", "issue", str(pki), "--kind", "primary", "--name", "hq",
                 "--host", "127.0.0.1"]) == 0
    primary = tmp_path / "hq.toml"
    primary.write_text(
        f'role = "primary"\nname = "hq"\nstate_dir = "{tmp_path}/hq"\n'
        f'secrets_dir = "{tmp_path}/hq-secrets"\n'
        f'[sync]\nport = 0\nca_file = "{pki}/ca.crt"\ncert_file = "{pki}/hq.crt"\n'
        f'key_file = "{pki}/hq.key"\n'
        f'[enroll]\nca_key_file = "{pki}/ca.key"\nport = 0\n'
        f"approval = {str(approval).lower()}\ncert_lifetime = {lifetime}\n")
    return {"pki": pki, "primary": primary}


def site_config(tmp_path: Path, sync_port: int, name: str = "branch-1") -> Path:
    secrets = tmp_path / f"{name}-secrets"
    path = tmp_path / f"{name}.toml"
    path.write_text(
        f'role = "site"\nname = "{name}"\nstate_dir = "{tmp_path}/{name}"\n'
        f'secrets_dir = "{secrets}"\n'
        f'[primary]\nurl = "https://127.0.0.1:{sync_port}"\nca_file = "{secrets}/tls/ca.crt"\n'
        f'cert_file = "{secrets}/tls/{name}.crt"\nkey_file = "{secrets}/tls/{name}.key"\n')
    return path


def test_token_commands(tmp_path, capsys):
    files = write_configs(tmp_path)
    capsys.readouterr()
    assert main(["token", "create", "--config", str(files["primary"]), "--site", "b1",
                 "--ttl", "2h"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["site"] == "b1" and made["ca_pin"] == ca_pin((files["pki"] / "ca.crt")
                                                              .read_bytes())
    assert main(["token", "list", "--config", str(files["primary"])]) == 0
    listed = capsys.readouterr().out
    assert made["token_id"] in listed and made["token"].split(".")[1] not in listed
    assert main(["token", "revoke", "--config", str(files["primary"]), made["token_id"]]) == 0
    assert json.loads(capsys.readouterr().out) == {"revoked": 1}
    assert main(["token", "create", "--config", str(files["primary"]), "--site", "b1",
                 "--ttl", "soon"]) == 2
    assert main(["token", "create", "--config", str(files["primary"]), "--site", "a/b"]) == 2
    for state in (tmp_path / "hq").iterdir():   # the secret is nowhere on disk
        assert made["token"].split(".")[1].encode() not in state.read_bytes()


@pytest_twisted.ensureDeferred
async def test_enroll_sync_renew_and_revoke_over_tls(tmp_path, capsys):
    files = write_configs(tmp_path, lifetime=3600)
    os.chmod(files["pki"] / "ca.key", 0o640)
    with pytest.raises(PermissionError):   # the CA key must be private
        build_primary(load(files["primary"]), reactor)
    os.chmod(files["pki"] / "ca.key", 0o600)
    primary = build_primary(load(files["primary"]), reactor)
    ports = await primary.start()
    try:
        enroll_url = f"https://127.0.0.1:{ports['enroll']}"
        site = site_config(tmp_path, ports["sync"])
        capsys.readouterr()
        assert main(["token", "create", "--config", str(files["primary"]), "--site",
                     "branch-1"]) == 0
        made = json.loads(capsys.readouterr().out)
        # A wrong pin: refused before anything is sent.
        status, report = await threads.deferToThread(
            enroll, site, enroll_url=enroll_url, token=made["token"],
            ca_pin=ca_pin(make_ca().cert_pem))
        assert (status, report["code"]) == (3, "pin_mismatch")
        status, report = await threads.deferToThread(
            enroll, site, enroll_url=enroll_url, token=made["token"], ca_pin=made["ca_pin"])
        assert status == 0 and report["changed"] is True, report
        config = load(site)
        link = config.primary
        assert oct(link.key_file.stat().st_mode & 0o777) == "0o600"
        assert config.card_key_path.read_text() == \
            (tmp_path / "hq-secrets" / "card-hmac.key").read_text()
        # Idempotent: a second run changes nothing and needs no token.
        status, report = await threads.deferToThread(
            enroll, site, enroll_url=enroll_url, token="x" * 20, ca_pin=made["ca_pin"])
        assert (status, report["changed"]) == (0, False)

        transport = HttpsTransport.from_files(reactor, link.url, ca_file=link.ca_file,
                                              cert_file=link.cert_file, key_file=link.key_file,
                                              timeout=5)
        client = HttpSyncClient(transport)
        beat = {"site": "branch-1", "mode": "online", "outbox": 0, "pull_token": None}
        assert (await client.heartbeat(beat))["ok"] is True

        reloads = []

        async def post(path, body):
            return await transport.call("POST", path, body)

        def reload():
            from appliance.pki import client_options
            transport.use(client_options("127.0.0.1", link.ca_file, link.cert_file,
                                         link.key_file))
            reloads.append(1)

        before = x509.load_pem_x509_certificate(link.cert_file.read_bytes()).serial_number
        renewer = Renewer("branch-1", link.ca_file, link.cert_file, link.key_file, post, reload,
                          fraction=0.5)
        assert await renewer.check() is False   # a fresh certificate is not due
        renewer.fraction = 0.9999
        assert await renewer.check() is True and reloads == [1]
        after = x509.load_pem_x509_certificate(link.cert_file.read_bytes()).serial_number
        assert after != before
        assert (await client.heartbeat(beat))["ok"] is True   # the new one syncs

        # A certificate of our CA for our name that has expired fails the handshake.
        ca = Pair((files["pki"] / "ca.crt").read_bytes(), (files["pki"] / "ca.key").read_bytes())
        old_key = new_key()
        stale = tmp_path / "stale"
        stale.mkdir()
        (stale / "b.crt").write_text(pem(sign(ca, old_key.public_key(), "branch-1", 60,
                                              time.time() - 3600)))
        (stale / "b.key").write_bytes(key_pem(old_key))
        expired = HttpSyncClient(HttpsTransport.from_files(
            reactor, link.url, ca_file=link.ca_file, cert_file=stale / "b.crt",
            key_file=stale / "b.key", timeout=5))
        with pytest.raises(SyncUnavailable):
            await expired.heartbeat(beat)

        capsys.readouterr()
        assert main(["site", "revoke", "--config", str(files["primary"]), "branch-1"]) == 0
        with pytest.raises(SyncRefused) as refused:
            await client.heartbeat(beat)
        assert (refused.value.status, refused.value.body["error"]["code"]) == (403, "revoked")
        assert await renewer.check() is False and renewer.failures == 1
    finally:
        await primary.stop()


@pytest_twisted.ensureDeferred
async def test_a_seeded_site_enrolls_at_its_first_start(tmp_path, capsys):
    """The first-boot seed (config drive: site.toml without [primary], enroll.toml) writes
    a [primary] drop-in; `outpost serve` then finds no certificate and enrolls."""
    from appliance.enroll_cli import enroll_before_serve
    from appliance.seed import install, seed_from_directory

    files = write_configs(tmp_path)
    primary = build_primary(load(files["primary"]), reactor)
    ports = await primary.start()
    try:
        capsys.readouterr()
        assert main(["token", "create", "--config", str(files["primary"]), "--site",
                     "b1"]) == 0
        made = json.loads(capsys.readouterr().out)
        drive, etc = tmp_path / "drive", tmp_path / "etc"
        drive.mkdir()
        (drive / "site.toml").write_text(
            f'role = "site"\nname = "b1"\nstate_dir = "{tmp_path}/b1"\n'
            f'secrets_dir = "{tmp_path}/b1-secrets"\n')
        (drive / "enroll.toml").write_text(
            f'primary = "https://127.0.0.1:{ports["sync"]}"\n'
            f'enroll_url = "https://127.0.0.1:{ports["enroll"]}"\n'
            f'token = "{made["token"]}"\nca_pin = "{made["ca_pin"]}"\nignored = 1\n')
        seed = seed_from_directory(drive)
        assert seed is not None
        written = install(seed, etc, group=None)
        assert [p.name for p in written] == ["enroll.toml", "50-enroll.toml", "site.toml"]
        config = load(etc / "site.toml")
        assert config.primary is not None
        assert config.primary.url == f"https://127.0.0.1:{ports['sync']}"
        assert config.primary.cert_file == tmp_path / "b1-secrets" / "tls" / "b1.crt"
        status = await threads.deferToThread(enroll_before_serve, etc / "site.toml", config)
        assert status == 0 and config.primary.cert_file.exists()
        assert '"changed": true' in capsys.readouterr().out
        # The next start finds the certificate and does nothing.
        assert await threads.deferToThread(enroll_before_serve, etc / "site.toml", config) == 0
        assert capsys.readouterr().out == ""
        # Certificate lost but key kept: the token redeems again for the same key.
        config.primary.cert_file.unlink()
        assert await threads.deferToThread(enroll_before_serve, etc / "site.toml", config) == 0
        # Key lost too: the used token is refused, and the unit must not restart (2).
        config.primary.cert_file.unlink()
        config.primary.key_file.unlink()
        assert await threads.deferToThread(enroll_before_serve, etc / "site.toml", config) == 2
        assert "token_used" in capsys.readouterr().err
        # The primary unreachable: 75 (systemd's Restart= tries again).
        text = (etc / "enroll.toml").read_text()
        (etc / "enroll.toml").write_text(text.replace(
            f'enroll_url = "https://127.0.0.1:{ports["enroll"]}"',
            'enroll_url = "https://127.0.0.1:1"'))
        assert await threads.deferToThread(
            lambda: enroll_before_serve(etc / "site.toml", config, wait=0)) == 75
    finally:
        await primary.stop()


def test_a_seeded_primary_keeps_its_ca_key_private(tmp_path):
    from appliance.roles.enroll_listen import load_ca
    from appliance.seed import install, seed_from_directory

    drive = tmp_path / "drive"
    (drive / "tls").mkdir(parents=True)
    ca = make_ca()
    (drive / "tls" / "ca.crt").write_bytes(ca.cert_pem)
    (drive / "tls" / "ca.key").write_bytes(ca.key_pem)
    (drive / "primary.toml").write_text(
        'role = "primary"\nname = "hq"\nstate_dir = "/var/lib/outpost"\n'
        'secrets_dir = "/var/lib/outpost-secrets"\n'
        '[sync]\nca_file = "/etc/outpost/tls/ca.crt"\ncert_file = "/etc/outpost/tls/hq.crt"\n'
        'key_file = "/etc/outpost/tls/hq.key"\n'
        '[enroll]\nca_key_file = "/etc/outpost/tls/ca.key"\n')
    seed = seed_from_directory(drive)
    assert seed is not None
    install(seed, tmp_path / "etc", group=None)
    tls = tmp_path / "etc" / "tls"
    assert (tls / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (tls / "ca.crt").stat().st_mode & 0o777 == 0o640
    assert load_ca(tls / "ca.crt", tls / "ca.key").key_pem == ca.key_pem

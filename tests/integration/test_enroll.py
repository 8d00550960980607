"""Enrollment with real `outpost serve` processes on loopback (docs/wire/enroll.md).

A primary that is its deployment's CA; sites that enroll with a join token and a CA pin
(the first-boot way: `outpost serve` finds enroll.toml and no certificate), then sync
over mutual TLS with the card key the primary handed them. A reused token, an expired
token, a certificate from another CA and a revoked site are refused; a site whose
certificates live seconds keeps renewing them, without restarting, and keeps syncing.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cryptography import x509

from appliance.pki import issue, make_ca
from simulators.lab.lab import free_port
from tests.integration import sync_procs
from tests.integration.sync_procs import api, query, serve, stop

pytestmark = pytest.mark.integration

FAST_LINK = ("heartbeat_interval = 0.2\noffline_after_misses = 2\n"
             "online_after_successes = 2\nrequest_timeout = 1.0\npush_interval = 0.2\n")


def outpost(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True,
                          text=True, timeout=60)


def wait_for(check, what: str, timeout: float = 60.0) -> None:
    sync_procs.wait_for(check, what, timeout)


class Deployment:
    """A primary that enrolls sites (CA key 0600), alice imported at the primary."""

    def __init__(self, tmp: Path, *, lifetime: float = 3600.0, approval: bool = False) -> None:
        self.tmp = tmp
        pki = tmp / "pki"
        assert outpost("pki", "init", str(pki)).returncode == 0
        assert outpost("pki", "issue", str(pki), "--kind", "primary", "--name", "hq",
                       "--host", "127.0.0.1").returncode == 0
        self.sync_port, self.enroll_port = free_port(), free_port()
        self.config = tmp / "hq" / "primary.toml"
        self.config.parent.mkdir()
        self.config.write_text(
            f'role = "primary"\nname = "hq"\nstate_dir = "{tmp}/hq/state"\n'
            f'secrets_dir = "{tmp}/hq/secrets"\n[auth]\nargon2_memory_kib = 8192\n'
            f'[sync]\nport = {self.sync_port}\nca_file = "{pki}/ca.crt"\n'
            f'cert_file = "{pki}/hq.crt"\nkey_file = "{pki}/hq.key"\n'
            f'[enroll]\nca_key_file = "{pki}/ca.key"\nport = {self.enroll_port}\n'
            f"cert_lifetime = {lifetime}\napproval = {str(approval).lower()}\n")
        users = tmp / "users.json"
        users.write_text(json.dumps([{"username": "alice", "card": "0042", "pin": "1234",
                                      "balance": 1000}]))
        done = outpost("users", "import", "--config", str(self.config), str(users))
        assert done.returncode == 0, done.stderr
        self.db = tmp / "hq" / "state" / "outpost.sqlite3"
        self.processes: list[subprocess.Popen[bytes]] = []

    def start(self) -> None:
        self.processes.append(serve(self.config, self.tmp / "hq.log"))
        wait_for(lambda: b'"event": "serving"' in (self.tmp / "hq.log").read_bytes(),
                 "the primary to serve")

    def token(self, site: str, ttl: str = "1h") -> dict:
        made = outpost("token", "create", "--config", str(self.config), "--site", site,
                       "--ttl", ttl)
        assert made.returncode == 0, made.stderr
        return dict(json.loads(made.stdout))

    def site(self, name: str, *, renew: str = "", folder: str | None = None) -> Site:
        return Site(self, name, renew, folder or name)

    def ledger(self, entry_id: str) -> list[tuple]:
        return query(self.db, f"SELECT COUNT(*) FROM ledger WHERE entry_id = '{entry_id}'")

    def stop(self) -> None:
        for process in reversed(self.processes):
            stop(process)


class Site:
    """A site configuration in its own folder; its certificate files in its secrets."""

    def __init__(self, deployment: Deployment, name: str, renew: str, folder: str) -> None:
        self.deployment, self.name = deployment, name
        base = deployment.tmp / folder
        base.mkdir()
        self.base = base
        self.secrets = base / "secrets"
        self.cert_file = self.secrets / "tls" / f"{name}.crt"
        self.api_port = free_port()
        self.config = base / "site.toml"
        self.config.write_text(
            f'role = "site"\nname = "{name}"\nstate_dir = "{base}/state"\n'
            f'secrets_dir = "{self.secrets}"\n'
            f"[ipp]\nport = {free_port()}\n[device_api]\nport = {self.api_port}\n"
            f"[lpd]\nport = {free_port()}\n[auth]\nargon2_memory_kib = 8192\n"
            '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n'
            f'[primary]\nurl = "https://127.0.0.1:{deployment.sync_port}"\n'
            f'ca_file = "{self.secrets}/tls/ca.crt"\ncert_file = "{self.cert_file}"\n'
            f'key_file = "{self.secrets}/tls/{name}.key"\n{FAST_LINK}{renew}')
        self.db = base / "state" / "outpost.sqlite3"
        self.process: subprocess.Popen[bytes] | None = None

    def seed(self, token: dict) -> None:
        """enroll.toml beside the configuration, as the first-boot seed writes it."""
        (self.base / "enroll.toml").write_text(
            f'primary = "https://127.0.0.1:{self.deployment.sync_port}"\n'
            f'enroll_url = "https://127.0.0.1:{self.deployment.enroll_port}"\n'
            f'token = "{token["token"]}"\nca_pin = "{token["ca_pin"]}"\n')

    def enroll(self, token: dict) -> subprocess.CompletedProcess[str]:
        return outpost("enroll", "--config", str(self.config), "--token", token["token"],
                       "--ca-pin", token["ca_pin"], "--enroll-url",
                       f"https://127.0.0.1:{self.deployment.enroll_port}")

    def start(self) -> None:
        self.process = serve(self.config, self.base / "site.log")
        self.deployment.processes.append(self.process)

    def log(self) -> str:
        return (self.base / "site.log").read_text(errors="replace")

    def mode(self) -> str | None:
        rows = query(self.db, "SELECT value FROM sync_state WHERE key = 'mode'")
        return rows[0][0] if rows else None

    def login(self) -> str:
        status, session = api(self.api_port, "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, session
        return str(session["session"])

    def copy(self, session: str, usage_id: str) -> None:
        status, used = api(self.api_port, "usage", {"id": usage_id, "kind": "copy", "pages": 1,
                                                    "colour": False, "sides": "one-sided"},
                           session)
        assert status == 200, used

    def serial(self) -> int:
        return x509.load_pem_x509_certificate(self.cert_file.read_bytes()).serial_number


def test_enroll_sync_and_every_refusal(tmp_path):
    d = Deployment(tmp_path)
    d.start()
    try:
        # Enrollment at first start: enroll.toml beside the configuration, no certificate.
        branch = d.site("branch")
        token = d.token("branch")
        branch.seed(token)
        branch.start()
        wait_for(lambda: query(branch.db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the enrolled site")
        assert '"event": "enroll"' in branch.log() and '"changed": true' in branch.log()
        key = branch.secrets / "tls" / "branch.key"
        assert oct(key.stat().st_mode & 0o777) == "0o600"
        session = branch.login()   # the card key came with the enrollment
        branch.copy(session, "c1")
        wait_for(lambda: d.ledger("branch/usage:c1") == [(1,)], "the copy to reach the primary")
        # Nothing of the token is kept at the primary or in its log in the clear.
        secret = token["token"].split(".")[1].encode()
        for path in [*(tmp_path / "hq").rglob("*"), tmp_path / "hq.log",
                     branch.base / "site.log"]:
            if path.is_file():
                assert secret not in path.read_bytes(), path

        # The same token again, from another machine (its own key): refused.
        thief = d.site("branch", folder="thief")
        reused = thief.enroll(token)
        assert reused.returncode == 3 and "token_used" in reused.stderr, reused
        assert not thief.cert_file.exists()

        # An expired token (ttl 0: expired when made): refused.
        late = d.site("late")
        expired = late.enroll(d.token("late", ttl="0"))
        assert expired.returncode == 3 and "token_expired" in expired.stderr, expired
        assert not late.cert_file.exists()

        # A wrong CA pin: the site refuses the primary and sends nothing.
        other_pin = {**d.token("late"), "ca_pin": "sha256:" + "0" * 64}
        mismatch = late.enroll(other_pin)
        assert mismatch.returncode == 3 and "pin_mismatch" in mismatch.stderr
        assert query(d.db, "SELECT used_at FROM enroll_tokens WHERE site = 'late' "
                           "ORDER BY created_at DESC LIMIT 1") == [(None,)]

        # A site with a certificate it made itself (its own CA, the right name) is refused
        # at the handshake and never counts as seen.
        rogue = d.site("rogue")
        own_ca = make_ca("rogue CA")
        tls = rogue.secrets / "tls"
        tls.mkdir(parents=True)
        (tls / "ca.crt").write_bytes((tmp_path / "pki" / "ca.crt").read_bytes())
        issue(own_ca, kind="site", name="rogue").write(tls, "rogue")
        rogue.start()
        wait_for(lambda: rogue.mode() == "offline", "the rogue site to find itself offline")
        assert query(d.db, "SELECT COUNT(*) FROM sync_sites WHERE name = 'rogue'") == [(0,)]

        # Revoked: the running site's next requests are refused; what it charges stays in
        # its outbox.
        revoked = outpost("site", "revoke", "--config", str(d.config), "branch")
        assert revoked.returncode == 0 and '"certificates": 1' in revoked.stdout
        wait_for(lambda: branch.mode() == "offline", "the revoked site to go offline")
        branch.copy(session, "after-revoke")
        time.sleep(2)   # ten heartbeats and pushes, all refused
        assert d.ledger("branch/usage:after-revoke") == [(0,)]
        assert query(branch.db, "SELECT COUNT(*) FROM outbox") == [(1,)]
    finally:
        d.stop()


def test_a_rotated_certificate_keeps_syncing(tmp_path):
    """Certificates that live 30 s, renewed once less than 90 % is left (about every 3 s,
    which leaves 27 s to renew in even on a loaded machine), at the site, without a
    restart; charges keep reaching the primary after the first certificate has expired."""
    d = Deployment(tmp_path, lifetime=30.0)
    d.start()
    try:
        site = d.site("branch", renew="[enroll]\nrenew_fraction = 0.9\n"
                                      "renew_check_interval = 0.5\n")
        done = site.enroll(d.token("branch"))
        assert done.returncode == 0, done.stderr
        first = x509.load_pem_x509_certificate(site.cert_file.read_bytes())
        site.start()
        wait_for(lambda: query(site.db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        session = site.login()
        wait_for(lambda: site.serial() != first.serial_number, "a renewed certificate")
        site.copy(session, "after-rotation")
        wait_for(lambda: d.ledger("branch/usage:after-rotation") == [(1,)],
                 "a copy charged after the rotation to reach the primary")
        # Past the first certificate's end: only a renewed one can still sync.
        wait_for(lambda: time.time() > first.not_valid_after_utc.timestamp() + 1,
                 "the first certificate to expire", timeout=45)
        site.copy(session, "after-expiry")
        wait_for(lambda: d.ledger("branch/usage:after-expiry") == [(1,)],
                 "a copy charged after the first certificate expired to reach the primary")
        assert site.process is not None and site.process.poll() is None, "never restarted"
        renewed = query(d.db, "SELECT COUNT(*) FROM site_certificates WHERE site = 'branch' "
                              "AND how = 'renew'")[0][0]
        assert renewed >= 1
        assert "renewal of" not in site.log(), "no renewal failed"
    finally:
        d.stop()


def test_approval_at_the_primary(tmp_path):
    """With `[enroll] approval = true` a site waits (exit 75, or `--wait`) until
    `outpost site approve` runs at the primary; then it gets its certificate and syncs."""
    d = Deployment(tmp_path, approval=True)
    d.start()
    try:
        site = d.site("branch")
        token = d.token("branch")
        first = site.enroll(token)
        assert first.returncode == 75 and '"pending"' in first.stderr, first
        assert not site.cert_file.exists()
        listed = outpost("site", "list", "--config", str(d.config))
        assert json.loads(listed.stdout) == [
            {"site": "branch", "certificates": [],
             "request": {"status": "pending",
                         "requested_at": json.loads(listed.stdout)[0]["request"]["requested_at"]}}]
        waiting = subprocess.Popen(
            [sys.executable, "-m", "appliance.cli", "enroll", "--config", str(site.config),
             "--token", token["token"], "--ca-pin", token["ca_pin"], "--enroll-url",
             f"https://127.0.0.1:{d.enroll_port}", "--wait", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            approved = outpost("site", "approve", "--config", str(d.config), "branch")
            assert json.loads(approved.stdout) == {"site": "branch", "approved": 1}
            out, err = waiting.communicate(timeout=60)
        finally:
            if waiting.poll() is None:
                waiting.kill()
                waiting.wait()
        assert waiting.returncode == 0, err
        assert json.loads(out)["status"] == "enrolled" and site.cert_file.exists()
        site.start()
        wait_for(lambda: query(site.db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the approved site")
    finally:
        d.stop()

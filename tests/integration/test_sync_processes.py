"""A primary and a site as real `outpost serve` processes, syncing over mutual TLS on
loopback: users imported at the primary reach the site; copies charged at the site
reach the primary; with the primary killed (-9) the site keeps logging users in and
charging them; when the primary is back, the outbox drains and the outage is reported.
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from appliance.pki import issue, make_ca
from simulators.lab.lab import free_port

pytestmark = pytest.mark.integration


def serve(config: Path, log: Path, failpoints: str = "",
          hits: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OUTPOST_FAILPOINTS=failpoints)
    if hits is not None:
        env["OUTPOST_FAILPOINTS_LOG"] = str(hits)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def query(db: Path, sql: str) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def api(port: int, path: str, body: dict, token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}", data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-outpost-device": "mfd-1",
                 **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


FAST_LINK = ("heartbeat_interval = 0.2\noffline_after_misses = 2\n"
             "online_after_successes = 2\nrequest_timeout = 1.0\n")


def deployment(tmp_path: Path, link: str = FAST_LINK) -> dict:
    """A CA, certificates, a primary and a site configuration, alice imported at the
    primary, and the deployment's card key copied to the site."""
    ca = make_ca()
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    hq_cert, hq_key = issue(ca, kind="primary", name="hq", hosts=["127.0.0.1"]).write(pki, "hq")
    site_cert, site_key = issue(ca, kind="site", name="branch").write(pki, "branch")
    sync_port, ipp_port, api_port = free_port(), free_port(), free_port()
    primary_toml = tmp_path / "hq.toml"
    primary_toml.write_text(
        f'role = "primary"\nname = "hq"\nstate_dir = "{tmp_path}/hq/state"\n'
        f'secrets_dir = "{tmp_path}/hq/secrets"\n[auth]\nargon2_memory_kib = 8192\n'
        f'[sync]\nport = {sync_port}\nca_file = "{pki}/ca.crt"\ncert_file = "{hq_cert}"\n'
        f'key_file = "{hq_key}"\n')
    site_toml = tmp_path / "branch.toml"
    site_toml.write_text(
        f'role = "site"\nname = "branch"\nstate_dir = "{tmp_path}/branch/state"\n'
        f'secrets_dir = "{tmp_path}/branch/secrets"\n'
        f"[ipp]\nport = {ipp_port}\n[device_api]\nport = {api_port}\n"
        f"[lpd]\nport = {free_port()}\n"
        "[auth]\nargon2_memory_kib = 8192\n"
        '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n'
        f'[primary]\nurl = "https://127.0.0.1:{sync_port}"\nca_file = "{pki}/ca.crt"\n'
        f'cert_file = "{site_cert}"\nkey_file = "{site_key}"\n{link}')
    users = tmp_path / "users.json"
    users.write_text(json.dumps([{"username": "alice", "card": "0042", "pin": "1234",
                                  "balance": 1000}]))
    subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                    str(primary_toml), str(users)], check=True, capture_output=True)
    # The deployment's card key: one for all appliances (enrollment will hand it out).
    (tmp_path / "branch" / "secrets").mkdir(parents=True)
    key = tmp_path / "branch" / "secrets" / "card-hmac.key"
    key.write_bytes((tmp_path / "hq" / "secrets" / "card-hmac.key").read_bytes())
    os.chmod(key, 0o600)
    return {"primary_toml": primary_toml, "site_toml": site_toml, "api_port": api_port,
            "hq_db": tmp_path / "hq" / "state" / "outpost.sqlite3",
            "site_db": tmp_path / "branch" / "state" / "outpost.sqlite3"}


def copy(api_port: int, token: str, usage_id: str) -> tuple[int, dict]:
    return api(api_port, "usage", {"id": usage_id, "kind": "copy", "pages": 1,
                                   "colour": False, "sides": "one-sided"}, token)


def test_a_site_replicates_pushes_and_outlives_its_primary(tmp_path):
    d = deployment(tmp_path)
    primary_toml, site_toml, api_port = d["primary_toml"], d["site_toml"], d["api_port"]
    hq_db, site_db = d["hq_db"], d["site_db"]

    primary = serve(primary_toml, tmp_path / "hq.log")
    site = serve(site_toml, tmp_path / "branch.log")
    try:
        wait_for(lambda: query(site_db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        status, session = api(api_port, "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, session
        assert session["balance"] == 1000
        token = session["session"]
        status, used = api(api_port, "usage", {"id": "c1", "kind": "copy", "pages": 2,
                                               "colour": False, "sides": "one-sided"}, token)
        assert status == 200 and used["charged"] > 0
        wait_for(lambda: query(hq_db, "SELECT COUNT(*) FROM ledger "
                                      "WHERE entry_id = 'branch/usage:c1'") == [(1,)],
                 "the copy to reach the primary")

        primary.send_signal(signal.SIGKILL)
        primary.wait()
        wait_for(lambda: query(site_db, "SELECT value FROM sync_state WHERE key = 'mode'")
                 == [("offline",)], "the site to go offline")
        status, session = api(api_port, "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, "offline, the site logs users in from its replica"
        for i in range(5):
            status, used = api(api_port, "usage", {"id": f"off{i}", "kind": "copy",
                                                   "pages": 1, "colour": False,
                                                   "sides": "one-sided"}, session["session"])
            assert status == 200
        assert query(site_db, "SELECT COUNT(*) FROM outbox") == [(5,)]

        primary = serve(primary_toml, tmp_path / "hq.log")
        wait_for(lambda: query(hq_db, "SELECT COUNT(*) FROM ledger "
                                      "WHERE entry_id LIKE 'branch/usage:off%'") == [(5,)],
                 "the offline copies to merge")
        wait_for(lambda: query(hq_db, "SELECT events_merged, merged_at IS NOT NULL "
                                      "FROM outage_reports WHERE site = 'branch'") == [(5, 1)],
                 "the outage report")
        hq_balance = query(hq_db, "SELECT SUM(amount) FROM ledger l JOIN accounts a "
                                  "ON a.id = l.account_id WHERE a.name = 'user:alice'")
        wait_for(lambda: query(site_db, "SELECT SUM(amount) FROM ledger l JOIN accounts a "
                                        "ON a.id = l.account_id WHERE a.name = 'user:alice'")
                 == hq_balance, "the same balance on both sides")
        assert query(hq_db, "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
    finally:
        stop(site)
        stop(primary)


def test_kill_9_at_the_sync_failpoints_loses_and_doubles_nothing(tmp_path):
    """The primary dies (SIGKILL) right after committing a batch, before answering; then
    the site dies right after receiving a checkpoint, before saving it. Restarted, they
    settle with every copy in the primary's ledger exactly once."""
    d = deployment(tmp_path)
    hits = tmp_path / "failpoints.log"
    primary = serve(d["primary_toml"], tmp_path / "hq.log", "primary.batch.applied=kill@1",
                    hits)
    site = serve(d["site_toml"], tmp_path / "branch.log", "site.push.acked=kill@1", hits)
    try:
        wait_for(lambda: query(d["site_db"], "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        status, session = api(d["api_port"], "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201
        for i in range(10):
            assert copy(d["api_port"], session["session"], f"c{i}")[0] == 200
        wait_for(lambda: primary.poll() is not None, "the primary to die at its failpoint")
        assert primary.returncode == -signal.SIGKILL
        primary = serve(d["primary_toml"], tmp_path / "hq.log")
        wait_for(lambda: site.poll() is not None, "the site to die at its failpoint")
        assert site.returncode == -signal.SIGKILL
        site = serve(d["site_toml"], tmp_path / "branch.log")
        wait_for(lambda: query(d["site_db"], "SELECT COUNT(*) FROM outbox") == [(0,)],
                 "the outbox to drain")
        ids = [r[0] for r in query(d["hq_db"], "SELECT entry_id FROM ledger "
                                               "WHERE origin = 'branch'")]
        assert sorted(ids) == sorted(f"branch/usage:c{i}" for i in range(10))
        assert query(d["hq_db"], "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
        assert query(d["hq_db"], "SELECT SUM(duplicates) FROM sync_sites")[0][0] > 0
        hit = {line.split()[0] for line in hits.read_text().splitlines()}
        assert hit == {"primary.batch.applied", "site.push.acked"}
    finally:
        stop(site)
        stop(primary)

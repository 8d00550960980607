"""A primary, a site and a provider as real `outpost serve` processes over mutual TLS on
loopback, with a simulated MFD (its own process) behind the provider's direct queue
(docs/providers.md).

The primary is killed (-9) by a failpoint right after it applied the provider's first
batch and before answering: the provider never hears back. Jobs keep coming to the
provider with `lp` while the primary is down; the provider fails over to the site,
which takes the unacknowledged batch and the new charges and keeps them for the
primary. When the primary is back, every job the provider printed is in its ledger
exactly once (the first batch arrives twice: directly, then through the site).
Then the provider is promoted to a site (`role = "site"`, restart): the jobs
it held are still held and are released at its MFD, and that charge reaches the
primary under the provider's name.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from appliance.pki import issue, make_ca
from simulators.lab.lab import free_port
from tests.integration.sync_procs import FAST_LINK, query, serve, stop, wait_for

pytestmark = pytest.mark.integration

FAST = FAST_LINK + "push_interval = 0.1\n"
PDF = Path(__file__).parent.parent / "fixtures" / "ipp-docs"


def device_api(port: int, method: str, path: str, body: dict | None = None,
               token: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}", method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "x-outpost-device": "lobby",
                 **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def answers(port: int) -> bool:
    try:
        device_api(port, "GET", "balance")
    except (urllib.error.URLError, ConnectionError):
        return False
    return True


def lp(port: int, queue: str, document: Path) -> None:
    out = subprocess.run(["lp", "-h", f"127.0.0.1:{port}", "-d", queue, "-U", "alice",
                          str(document)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr


def start_mfd(tmp: Path) -> tuple[subprocess.Popen[str], str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.mfd.cli", "mfd", "serve", "--name", "lobby",
         "--output", str(tmp / "lobby" / "out"), "--state", str(tmp / "lobby" / "state"),
         "--mono"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        start_new_session=True)
    assert process.stdout is not None
    started = json.loads(process.stdout.readline())
    return process, str(started["ipp"])


def common(tmp: Path, name: str, ipp: int, api: int, lpd: int, mfd_uri: str) -> str:
    return (f'name = "{name}"\nstate_dir = "{tmp}/{name}/state"\n'
            f'secrets_dir = "{tmp}/{name}/secrets"\n'
            f"[ipp]\nport = {ipp}\n[device_api]\nport = {api}\n[lpd]\nport = {lpd}\n"
            "[auth]\nargon2_memory_kib = 8192\n[jobs]\nuse_ghostscript = false\n"
            f'[[devices]]\nname = "lobby"\nuri = "{mfd_uri}"\n')


def tls(pki: Path, stem: str) -> str:
    return (f'ca_file = "{pki}/ca.crt"\ncert_file = "{pki}/{stem}.crt"\n'
            f'key_file = "{pki}/{stem}.key"\n')


def charges(db: Path, like: str = "p1/print:%") -> list[tuple[str, int]]:
    return query(db, "SELECT entry_id, COUNT(*) FROM ledger WHERE entry_id LIKE "
                     f"'{like}' GROUP BY entry_id ORDER BY entry_id")


def test_provider_failover_charges_once_and_promotion_keeps_its_jobs(tmp_path):
    """Run time here: about 30-40 s (2 cores)."""
    started = time.monotonic()
    ca = make_ca()
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    issue(ca, kind="primary", name="hq", hosts=["127.0.0.1"]).write(pki, "hq")
    issue(ca, kind="site", name="branch", hosts=["127.0.0.1"]).write(pki, "branch")
    issue(ca, kind="provider", name="p1").write(pki, "p1")
    hq_sync, branch_sync = free_port(), free_port()
    p1_ipp, p1_api = free_port(), free_port()
    mfd, mfd_uri = start_mfd(tmp_path)

    hq_toml = tmp_path / "hq.toml"
    hq_toml.write_text(
        f'role = "primary"\nname = "hq"\nstate_dir = "{tmp_path}/hq/state"\n'
        f'secrets_dir = "{tmp_path}/hq/secrets"\n[auth]\nargon2_memory_kib = 8192\n'
        f"[sync]\nport = {hq_sync}\n{tls(pki, 'hq')}")
    branch_toml = tmp_path / "branch.toml"
    branch_toml.write_text(
        'role = "site"\n' + common(tmp_path, "branch", free_port(), free_port(), free_port(),
                                   mfd_uri)
        + f'[primary]\nurl = "https://127.0.0.1:{hq_sync}"\n{tls(pki, "branch")}{FAST}'
        + f"[sync]\nport = {branch_sync}\n{tls(pki, 'branch')}")
    p1_lpd = free_port()
    p1_common = common(tmp_path, "p1", p1_ipp, p1_api, p1_lpd, mfd_uri)
    p1_toml = tmp_path / "p1.toml"
    p1_toml.write_text(
        'role = "provider"\n' + p1_common
        + f'[provider]\nupstreams = ["https://127.0.0.1:{hq_sync}", '
          f'"https://127.0.0.1:{branch_sync}"]\n{tls(pki, "p1")}{FAST}')
    users = tmp_path / "users.json"
    users.write_text(json.dumps([{"username": "alice", "card": "0042", "pin": "1234",
                                  "balance": 100000}]))
    subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                    str(hq_toml), str(users)], check=True, capture_output=True)
    for name in ("branch", "p1"):   # the deployment's card key
        (tmp_path / name / "secrets").mkdir(parents=True)
        key = tmp_path / name / "secrets" / "card-hmac.key"
        key.write_bytes((tmp_path / "hq" / "secrets" / "card-hmac.key").read_bytes())
        os.chmod(key, 0o600)
    hq_db = tmp_path / "hq" / "state" / "outpost.sqlite3"
    branch_db = tmp_path / "branch" / "state" / "outpost.sqlite3"
    p1_db = tmp_path / "p1" / "state" / "outpost.sqlite3"
    documents = sorted(PDF.glob("*.pdf"))
    assert documents, "tests/fixtures/ipp-docs has PDFs"

    hits = tmp_path / "failpoints.log"
    hq = serve(hq_toml, tmp_path / "hq.log", "primary.batch.applied=kill@1", hits)
    branch = serve(branch_toml, tmp_path / "branch.log")
    p1 = serve(p1_toml, tmp_path / "p1.log")
    try:
        wait_for(lambda: query(p1_db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the provider from the primary")
        wait_for(lambda: query(branch_db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")

        # 1. Three jobs printed at once on the provider's direct queue; the primary applies
        #    the provider's first batch and dies before answering (the failpoint).
        for i in range(3):
            lp(p1_ipp, "lobby", documents[i % len(documents)])
        wait_for(lambda: hq.poll() is not None, "the primary to die at its failpoint")
        assert hq.returncode == -signal.SIGKILL
        # (its events: the charges, and job records where the outbox carries them)
        applied_directly = query(hq_db, "SELECT COUNT(*) FROM sync_events WHERE site = 'p1'")
        assert applied_directly[0][0] >= 1

        # 2. With the primary down, five more jobs (one over LPD): the provider fails over
        #    to the site.
        for i in range(4):
            lp(p1_ipp, "lobby", documents[i % len(documents)])
        out = subprocess.run(["rlpr", "-N", "-H", "127.0.0.1", f"--port={p1_lpd}", "-P",
                              "lobby", "-U", "alice", str(documents[0])],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        # And two held on its Find-Me queue, for the promotion below.
        for i in range(2):
            lp(p1_ipp, "findme", documents[i % len(documents)])
        wait_for(lambda: query(p1_db, "SELECT COUNT(*) FROM ledger "
                                      "WHERE entry_id LIKE 'print:%'") == [(8,)],
                 "the provider to print and charge its eight direct jobs")
        mine = [(f"p1/{r[0]}", 1) for r in query(
            p1_db, "SELECT entry_id FROM ledger WHERE entry_id LIKE 'print:%' "
                   "ORDER BY entry_id")]
        wait_for(lambda: charges(branch_db) == mine,
                 "the site to hold every charge of the provider (failed over)")
        wait_for(lambda: query(p1_db, "SELECT COUNT(*) FROM outbox "
                                      "WHERE event_id LIKE 'p1/print:%'") == [(0,)],
                 "the provider's outbox to be acknowledged by the site")
        assert "failing over" in (tmp_path / "p1.log").read_text()

        # 3. The primary comes back: the site relays, the provider fails back.
        hq = serve(hq_toml, tmp_path / "hq.log")
        wait_for(lambda: charges(hq_db) == mine,
                 "every provider charge at the primary, exactly once", timeout=60)
        wait_for(lambda: query(branch_db, "SELECT COUNT(*) FROM outbox") == [(0,)],
                 "the site's relay outbox to drain")
        duplicates = query(hq_db, "SELECT duplicates FROM sync_sites WHERE name = 'branch'")
        assert duplicates == applied_directly, "the first batch came twice, applied once"
        assert query(hq_db, "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
        assert query(branch_db, "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
        assert query(hq_db, "SELECT DISTINCT origin FROM ledger "
                            "WHERE entry_id LIKE 'p1/%'") == [("p1",)]
        wait_for(lambda: "failing back" in (tmp_path / "p1.log").read_text(),
                 "the provider to fail back to the primary")
        assert query(p1_db, "SELECT COUNT(*) FROM jobs WHERE queue = 'lobby'") == [(8,)]
        held = query(p1_db, "SELECT uuid FROM jobs WHERE state = 'held' ORDER BY uuid")
        assert len(held) == 2

        # 4. Promotion: the role line changes, nothing else; restart.
        stop(p1)
        assert p1.returncode == 0
        text = p1_toml.read_text()
        p1_toml.write_text(text.replace('role = "provider"', 'role = "site"', 1))
        p1 = serve(p1_toml, tmp_path / "p1.log")
        wait_for(lambda: answers(p1_api), "the promoted site's device API")
        status, session = device_api(p1_api, "POST", "sessions", {"card": "0042",
                                                                  "pin": "1234"})
        assert status == 201, session
        token = session["session"]
        status, listed = device_api(p1_api, "GET", "jobs", token=token)
        assert status == 200 and len(listed["jobs"]) == 2, listed
        assert query(p1_db, "SELECT uuid FROM jobs WHERE state = 'held' ORDER BY uuid") == held
        status, released = device_api(p1_api, "POST", "jobs/release",
                                      {"jobs": [listed["jobs"][0]["id"]]}, token)
        assert status == 200 and released["charged"] > 0, released
        wait_for(lambda: len(charges(hq_db)) == 9,
                 "the promoted site's release charge at the primary")
        assert all(count == 1 for _, count in charges(hq_db))
        assert query(p1_db, "SELECT value FROM sync_state WHERE key = 'name'") == [("p1",)]
        assert query(hq_db, "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
        assert hits.read_text().split()[0] == "primary.batch.applied"
    finally:
        for process in (p1, branch, hq):
            stop(process)
        mfd.send_signal(signal.SIGTERM)
        mfd.wait(15)
    assert time.monotonic() - started < 170

"""A primary and a site as real `outpost serve` processes on loopback, syncing over mutual
TLS: the harness shared by the process tests (`test_sync_processes.py`,
`test_kill_points.py`) and the benchmarks that need a real pair (`sync_lag.py`,
`offline_release_latency.py`).

`deployment()` writes the CA, the certificates, both configurations and imports alice at
the primary; `serve()` starts one role (optionally with armed failpoints, see
`appliance/failpoints.py`); `query()` reads a database read-only, as an administrator
would; `api()` is one device-API call as the MFD `mfd-1`.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

from appliance.pki import issue, make_ca
from simulators.lab.lab import free_port


def serve(config: Path, log: Path, failpoints: str = "",
          hits: Path | None = None) -> subprocess.Popen[bytes]:
    env = dict(os.environ, OUTPOST_FAILPOINTS=failpoints)
    if hits is not None:
        env["OUTPOST_FAILPOINTS_LOG"] = str(hits)
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config",
                                 str(config)], stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True, env=env)


def query(db: Path, sql: str, params: tuple = ()) -> list[tuple]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


def one(db: Path, sql: str, *args: object) -> object:
    """The first column of the first row of `sql` (None without a row), read-only."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = conn.execute(sql, args).fetchone()
        return row[0] if row else None
    finally:
        conn.close()


def wait_for(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def api(port: int, path: str, body: dict | None, token: str | None = None,
        device: str = "mfd-1", method: str | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/v1/{path}",
        data=None if body is None else json.dumps(body).encode(), method=method,
        headers={"content-type": "application/json", "x-outpost-device": device,
                 **({"authorization": f"Bearer {token}"} if token else {})})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


#: What a dying or restarting site looks like to a panel: no answer at all.
NO_ANSWER = (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError,
             OSError)


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


def deployment(tmp_path: Path, link: str = FAST_LINK, *, balance: int = 1000,
               devices: list[tuple[str, str]] | None = None, site_sections: str = "") -> dict:
    """A CA, certificates, a primary and a site configuration, alice imported at the
    primary, and the deployment's card key copied to the site.

    `devices`: (name, IPP URI) of the site's MFDs (default: one `mfd-1` nobody listens
    at); `site_sections`: more TOML tables for the site (e.g. `[jobs]`, `[release]`).
    """
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
    device_tables = "".join(f'[[devices]]\nname = "{name}"\nuri = "{uri}"\n'
                            for name, uri in (devices or [("mfd-1", "ipp://127.0.0.1:9/ipp/print")]))
    site_toml = tmp_path / "branch.toml"
    site_toml.write_text(
        f'role = "site"\nname = "branch"\nstate_dir = "{tmp_path}/branch/state"\n'
        f'secrets_dir = "{tmp_path}/branch/secrets"\n'
        f"[ipp]\nport = {ipp_port}\n[device_api]\nport = {api_port}\n"
        f"[lpd]\nport = {free_port()}\n"
        "[auth]\nargon2_memory_kib = 8192\n"
        f"{site_sections}{device_tables}"
        f'[primary]\nurl = "https://127.0.0.1:{sync_port}"\nca_file = "{pki}/ca.crt"\n'
        f'cert_file = "{site_cert}"\nkey_file = "{site_key}"\n{link}')
    users = tmp_path / "users.json"
    users.write_text(json.dumps([{"username": "alice", "card": "0042", "pin": "1234",
                                  "balance": balance}]))
    subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                    str(primary_toml), str(users)], check=True, capture_output=True)
    # The deployment's card key: one for all appliances (enrollment will hand it out).
    (tmp_path / "branch" / "secrets").mkdir(parents=True)
    key = tmp_path / "branch" / "secrets" / "card-hmac.key"
    key.write_bytes((tmp_path / "hq" / "secrets" / "card-hmac.key").read_bytes())
    os.chmod(key, 0o600)
    return {"primary_toml": primary_toml, "site_toml": site_toml, "api_port": api_port,
            "ipp_port": ipp_port, "sync_port": sync_port,
            "hq_db": tmp_path / "hq" / "state" / "outpost.sqlite3",
            "site_db": tmp_path / "branch" / "state" / "outpost.sqlite3"}


def copy(api_port: int, token: str, usage_id: str) -> tuple[int, dict]:
    return api(api_port, "usage", {"id": usage_id, "kind": "copy", "pages": 1,
                                   "colour": False, "sides": "one-sided"}, token)

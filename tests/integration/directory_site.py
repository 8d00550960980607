"""A site built in this process with a `[directory]`, and blocking clients run off the reactor.

Shared by the directory, IPP-authentication and card tests: `start_site(...)` writes a
config, imports users, builds and starts the site on loopback ports chosen by the
kernel; `api(...)` and `ipp_print(...)` are blocking clients the tests call through
`off_reactor` (a thread), so the site keeps serving while a test waits.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import ssl
from pathlib import Path
from typing import Any

from twisted.internet import reactor, threads

from appliance.app import build_site
from appliance.config import load
from appliance.protocols.ipp import codec
from appliance.protocols.ipp.constants import GroupTag, Operation, ValueTag
from appliance.serve_cli import import_users

from .slapd import PEOPLE, READER_DN, READER_PW, Slapd

SITE_USERS = [
    {"username": "alice", "full_name": "Alice Archer", "card": "0004123456", "pin": "8642",
     "balance": 5000},
    {"username": "bob", "full_name": "Bob Baker", "card": "0007000001", "pin": "1357",
     "balance": 5000},
    {"username": "o'brien", "full_name": "Orla O'Brien", "balance": 5000},
    {"username": "smithj", "full_name": "John Smith", "balance": 5000},
    {"username": "carol", "full_name": "Carol Carter", "balance": 5000},
]

_ids = itertools.count(1)


def off_reactor(fn: Any, *args: Any, **kwargs: Any) -> Any:
    return threads.deferToThread(fn, *args, **kwargs)


def write_config(folder: Path, slapd: Slapd | None, *, url: str | None = None,
                 directory: dict[str, Any] | None = None, ipp: dict[str, Any] | None = None,
                 auth: dict[str, Any] | None = None, devices: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    secrets = folder / "secrets"
    secrets.mkdir(exist_ok=True, mode=0o700)
    lines = ['name = "site-d"', f'state_dir = "{folder / "state"}"',
             f'secrets_dir = "{secrets}"', "[device_api]", "port = 0", "[lpd]", "port = 0",
             "[ipp]", "port = 0"]
    for key, value in (ipp or {}).items():
        lines.append(f"{key} = {json.dumps(value)}")
    lines += ["[auth]", "argon2_time_cost = 1", "argon2_memory_kib = 8192"]
    for key, value in (auth or {}).items():
        lines.append(f"{key} = {json.dumps(value)}")
    if slapd is not None:
        password_file = secrets / "ldap-bind.password"
        password_file.write_text(READER_PW + "\n")
        password_file.chmod(0o600)
        settings = {"url": url or slapd.ldap_url, "base_dn": PEOPLE, "bind_dn": READER_DN,
                    "bind_password_file": str(password_file), "ca_file": str(slapd.ca.ca_file),
                    "timeout": 1.0, "verifier_max_age_hours": 24.0, **(directory or {})}
        lines.append("[directory]")
        lines += [f"{k} = {json.dumps(v)}" for k, v in settings.items()]
    lines.append(devices or '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n'
                 '[[devices]]\nname = "mfd-hex"\nuri = "ipp://127.0.0.1:9/ipp/print"\n'
                 'card_format = "hex"\n')
    path = folder / "site.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


async def start_site(config_path: Path, users: list[dict[str, Any]] = SITE_USERS) -> Any:
    import_users(config_path, users)
    site = build_site(load(config_path), reactor)
    site.ports_used = await site.start()
    return site


class Api:
    """The device API as a panel speaks it (blocking; call through off_reactor)."""

    def __init__(self, port: int, device: str = "mfd-1") -> None:
        self.port, self.device, self.token = port, device, None

    def call(self, method: str, path: str, body: dict[str, Any] | None = None,
             ) -> tuple[int, dict[str, Any], dict[str, str]]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        headers = {"X-Outpost-Device": self.device, "Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, f"/api/v1/{path}", body=json.dumps(body or {}).encode(),
                         headers=headers)
            response = conn.getresponse()
            answer = json.loads(response.read())
            return response.status, answer, {k.lower(): v for k, v in response.getheaders()}
        finally:
            conn.close()

    def login(self, **body: str) -> tuple[int, dict[str, Any]]:
        status, answer, _ = self.call("POST", "sessions", body)
        if answer.get("ok"):
            self.token = answer["session"]
        return status, answer


def ipp_print(port: int, queue: str, document: bytes, *, user: str | None = None,
              basic: tuple[str, str] | None = None, tls_ca: Path | None = None,
              host: str = "localhost") -> tuple[int, codec.Message, dict[str, str]]:
    """Print-Job with optional HTTP Basic; (HTTP status, IPP answer, headers)."""
    scheme = "ipps" if tls_ca else "ipp"
    uri = f"{scheme}://{host}:{port}/printers/{queue}"
    message = codec.request(Operation.PRINT_JOB, next(_ids), uri, user=user,
                            extra=[codec.attr("job-name", ValueTag.NAME, "auth-test")])
    message.data = document
    if tls_ca is not None:
        context = ssl.create_default_context(cafile=str(tls_ca))
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=30, context=context)
    else:
        conn = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Content-Type": "application/ipp"}
    if basic is not None:
        token = base64.b64encode(f"{basic[0]}:{basic[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    try:
        conn.request("POST", f"/printers/{queue}", body=codec.encode(message), headers=headers)
        response = conn.getresponse()
        body = response.read()
        return response.status, codec.decode(body), {k.lower(): v for k, v in
                                                    response.getheaders()}
    finally:
        conn.close()


def job_id_of(answer: codec.Message) -> int | None:
    value = answer.get(GroupTag.JOB, "job-id")
    return value if isinstance(value, int) else None

"""Starting a real lab (`outpost lab up`) from tests, benchmarks and the demo, and reading what it left."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from simulators.mfd.panel import Panel

ROOT = Path(__file__).resolve().parents[2]  # the checkout, for `python -m appliance.cli`


class RunningLab:
    def __init__(self, directory: Path, process: subprocess.Popen[bytes]) -> None:
        self.dir = directory
        self.process = process

    @property
    def endpoints(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "endpoints.json").read_text())
        return data

    @property
    def site(self) -> dict[str, Any]:
        site: dict[str, Any] = self.endpoints["sites"][0]
        return site

    def user(self, name: str) -> dict[str, Any]:
        return next(u for u in self.endpoints["users"] if u["username"] == name)

    def mfd(self, name: str) -> dict[str, Any]:
        return next(m for m in self.site["mfds"] if m["name"] == name)

    @contextmanager
    def panel(self, mfd: str, user: str, how: str = "card") -> Iterator[Panel]:
        u = self.user(user)
        panel = Panel(self.site["device_api"], mfd)
        if how == "card":
            answer = panel.login_card(u["card"])
        elif how == "card+pin":
            answer = panel.login_card(u["card"], u["pin"])
        elif how == "pin":
            answer = panel.login_pin(user, u["pin"])
        else:
            answer = panel.login_password(user, u["password"])
        assert answer["ok"], answer
        try:
            yield panel
        finally:
            panel.logout()

    def db(self) -> sqlite3.Connection:
        path = Path(self.site["state_dir"]) / "outpost.sqlite3"
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        conn.row_factory = sqlite3.Row
        return conn

    def wait_for_restart(self, old_pid: int, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                site = self.site
            except (OSError, ValueError):
                time.sleep(0.1)
                continue
            if site["pid"] != old_pid and all(
                port_open(site[k]) for k in ("ipp_port", "device_api_port")
            ):
                return
            time.sleep(0.1)
        raise TimeoutError("the lab did not restart the site")

    def set_fault(self, mfd: str, body: dict[str, Any]) -> dict[str, Any]:
        import urllib.request

        request = urllib.request.Request(
            f"{self.mfd(mfd)['control']}/fault", data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=10) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer


def port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


@contextmanager
def running_lab(directory: Path, mfds: int = 2, env: dict[str, str] | None = None,
                timeout: float = 120.0, users: int = 10, lpd_mfds: int = 0,
                sites: int | None = None, providers: int = 0, profile: str = "default",
                failpoints: dict[str, str] | None = None,
                wan_seed: int = 0, offline_share: float | None = None) -> Iterator[RunningLab]:
    """`outpost lab up` as a subprocess; with `sites`, a primary and that many sites."""
    directory.mkdir(parents=True, exist_ok=True)
    log = open(directory / "lab.log", "ab")
    command = [sys.executable, "-m", "appliance.cli", "lab", "up", "--dir", str(directory),
               "--mfds", str(mfds), "--users", str(users)]
    if sites is None:
        command += ["--lpd-mfds", str(lpd_mfds)]
    else:
        command += ["--sites", str(sites), "--providers", str(providers), "--profile", profile,
                    "--wan-seed", str(wan_seed)]
        command += [f"--failpoint={d}={spec}" for d, spec in (failpoints or {}).items()]
        if offline_share is not None:
            command += ["--offline-allowance", str(offline_share)]
    process = subprocess.Popen(
        command, stdout=log,
        stderr=subprocess.STDOUT, cwd=ROOT,
        env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        deadline = time.monotonic() + timeout
        while not (directory / "endpoints.json").exists():
            if process.poll() is not None:
                raise RuntimeError("lab exited: " + (directory / "lab.log").read_text()[-3000:])
            if time.monotonic() > deadline:
                raise TimeoutError("lab not ready: " + (directory / "lab.log").read_text()[-3000:])
            time.sleep(0.1)
        yield RunningLab(directory, process)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        log.close()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def outputs(lab: RunningLab, mfd: str) -> list[Path]:
    return sorted(p for p in Path(lab.mfd(mfd)["output"]).iterdir() if p.is_file())


def wait_until(predicate: Any, timeout: float = 30.0, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError("condition not met")

"""The lab: a whole site with simulated MFDs and seeded users on loopback.

`outpost lab up --dir DIR --mfds N` starts N simulated MFDs (in this process),
one site server (its own process, restarted if it dies, as systemd would),
seeds lab users on first start, and writes `DIR/endpoints.json` once every
listed port accepts connections. It runs until SIGINT/SIGTERM.

The lab deploys the site as an installer would (a config file and
`outpost users import`); it drives it only through its public wires.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shlex
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("outpost.lab")

USERNAMES = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
             "mallory", "niaj"]
FULL_NAMES = {"alice": "Alice Archer", "bob": "Bob Baker", "carol": "Carol Carter",
              "dave": "Dave Dyer", "erin": "Erin Evans", "frank": "Frank Fisher",
              "grace": "Grace Gray", "heidi": "Heidi Hill", "ivan": "Ivan Irwin",
              "judy": "Judy Jones", "mallory": "Mallory Moss", "niaj": "Niaj Nash"}


#: Lab ports come from below Linux's ephemeral range (32768-60999), in a block of 64 chosen
#: by this process's pid: the kernel never hands these out for bind(0) or connect(), and two
#: labs started side by side (tests run scenarios two at a time) take different blocks.
_PORT_LOW, _PORT_HIGH, _BLOCK = 10_000, 32_000, 64
_handed_out: set[int] = set()


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    """A loopback port nothing listens on, never one this process handed out before.

    Asking the kernel (bind to port 0) is not enough: it may give the same ephemeral port
    to two calls once the first socket is closed, and to another process too, and a lab asks
    for twenty ports before any daemon binds them: two daemons given one port make one of
    them fail to start for ever (seen: a site restarted 46 times, its lab timed out).
    """
    blocks = (_PORT_HIGH - _PORT_LOW) // _BLOCK
    first = _PORT_LOW + (os.getpid() % blocks) * _BLOCK
    for offset in range(_PORT_HIGH - _PORT_LOW):
        port = _PORT_LOW + (first - _PORT_LOW + offset) % (_PORT_HIGH - _PORT_LOW)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port from {_PORT_LOW} to {_PORT_HIGH}")


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def write_atomically(path: Path, text: str) -> None:
    temp = path.with_name(f".{path.name}.tmp")
    with open(temp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(temp, path)


def make_users(seed: int, count: int = 10) -> list[dict[str, Any]]:
    """Lab users with a card, a PIN, a password and a balance; the same for a given seed."""
    rng = random.Random(seed)
    users = []
    cards: set[str] = set()
    for name in USERNAMES[:count]:
        card = f"{rng.randrange(10**9, 10**10):010d}"
        while card in cards:
            card = f"{rng.randrange(10**9, 10**10):010d}"
        cards.add(card)
        users.append({
            "username": name,
            "full_name": FULL_NAMES[name],
            "email": f"{name}@lab.outpost.test",
            "card": card,
            "pin": f"{rng.randrange(10000):04d}",
            "password": "".join(rng.choice("abcdefghjkmnpqrstuvwxyz23456789") for _ in range(12)),
            "balance": 10000 + 1000 * rng.randrange(0, 11),
        })
    return users


def site_config_text(*, name: str, state_dir: Path, secrets_dir: Path, ipp_port: int,
                     api_port: int, mfds: list[dict[str, Any]], hold_hours: float,
                     argon2_memory_kib: int, lpd_port: int | None = None) -> str:
    lines = [
        "# Written by `outpost lab up`: a site on loopback with simulated MFDs.",
        'role = "site"',
        f'name = "{name}"',
        f'state_dir = "{state_dir}"',
        f'secrets_dir = "{secrets_dir}"',
        "",
        "[ipp]",
        'host = "127.0.0.1"',
        f"port = {ipp_port}",
        "",
        "[device_api]",
        'host = "127.0.0.1"',
        f"port = {api_port}",
        "",
        *(["[lpd]", 'host = "127.0.0.1"', f"port = {lpd_port}", ""] if lpd_port else []),
        "[jobs]",
        f"hold_hours = {hold_hours}",
        "",
        "[release]",
        "poll_interval = 0.1",
        "follow_timeout = 60.0",
        "",
        "[auth]",
        f"argon2_memory_kib = {argon2_memory_kib}",
        "",
        "# The lab's cost policy: 10 per mono page, 40 per colour page, duplex per side.",
        "[cost_policy.default.default]",
        "mono = 10",
        "colour = 40",
        "",
    ]
    if any("snmp" in mfd for mfd in mfds):
        lines += ["# The SNMP poller: short interval, so that a jam shows within a second or two.",
                  "[snmp]", "interval = 1.0", "timeout = 0.5", "retries = 1", "",
                  "# ...and over IPP (printer-state, printer-state-reasons), merged with SNMP.",
                  "[monitor]", "ipp_interval = 1.0", "ipp_timeout = 2.0", ""]
    for i, mfd in enumerate(mfds):
        if mfd.get("site_protocol") == "lpd":   # `--lpd-mfds`: the site prints to it over LPD
            lines += ["[[devices]]", f'name = "{mfd["name"]}"', 'protocol = "lpd"',
                      f'uri = "{mfd["lpd"]}"', ""]
        else:
            lines += ["[[devices]]", f'name = "{mfd["name"]}"', f'uri = "{mfd["ipp"]}"', ""]
        snmp = mfd.get("snmp")
        if snmp:
            # The first MFD is read over SNMPv3 (authPriv), the others over v2c: both get used.
            lines += ["[devices.snmp]", f'host = "{snmp["host"]}"', f'port = {snmp["port"]}']
            if i == 0:
                v3 = snmp["v3"]
                lines += ["[devices.snmp.v3]"] + [f'{key} = "{v3[key]}"' for key in (
                    "user", "auth_protocol", "auth_key", "priv_protocol", "priv_key")]
            else:
                lines += [f'community = "{snmp["community"]}"']
            lines += [""]
    return "\n".join(lines)


@dataclass
class SupervisedSite:
    """A site process restarted whenever it dies, with a log line each time."""

    name: str
    config_path: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    stopping: bool = False
    history: list[str] = field(default_factory=list)
    on_restart: Any = None
    #: Extra environment for every start, and for the N-th start only (N from 1:
    #: failpoints armed in one life of the process).
    env: dict[str, str] | None = None
    start_envs: dict[int, dict[str, str]] | None = None
    starts: int = 0

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        logfile = open(self.log_path, "ab")
        self.starts += 1
        once = (self.start_envs or {}).get(self.starts, {})
        environment = {**os.environ, **(self.env or {}), **once} if self.env or once else None
        # A wrapper command (e.g. `strace -f -o FILE`) may be put in front of the site, so
        # that tests can watch its system calls; the lab is otherwise unchanged by it.
        prefix = shlex.split(os.environ.get("OUTPOST_LAB_SITE_PREFIX", ""))
        self.process = subprocess.Popen(
            [*prefix, sys.executable, "-m", "appliance.cli", "serve", "--config",
             str(self.config_path)],
            stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True, env=environment,
        )
        logfile.close()
        log.info("started site %s (pid %d)", self.name, self.process.pid)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def check(self) -> None:
        """Restart the site if it died (called periodically)."""
        if self.stopping or self.process is None:
            return
        status = self.process.poll()
        if status is None:
            return
        self.restarts += 1
        line = (f"site {self.name} (pid {self.process.pid}) exited with status {status}; "
                f"restart #{self.restarts}")
        log.warning(line)
        self.history.append(line)
        self.start()
        if self.on_restart is not None:
            self.on_restart()

    def stop(self, timeout: float = 15.0) -> None:
        self.stopping = True
        if self.process is None or self.process.poll() is not None:
            return
        # The site runs in its own session (process group): signal the whole group, so
        # that a wrapper such as strace does not leave the site itself running.
        self._signal_group(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("site %s did not stop in %.0fs; killing it", self.name, timeout)
            self._signal_group(signal.SIGKILL)
            self.process.wait()
        # A wrapper may exit before what it wrapped: make sure nothing of the group stays.
        time.sleep(0.2)
        self._signal_group(signal.SIGKILL)

    def _signal_group(self, signum: int) -> None:
        assert self.process is not None
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signum)


@dataclass
class LabOptions:
    directory: Path
    mfds: int = 2
    seed: int = 1
    users: int = 10
    hold_hours: float = 24.0
    argon2_memory_kib: int = 65536
    #: The last this many MFDs are configured at the site as LPD-only devices.
    lpd_mfds: int = 0


class Lab:
    """One site and its MFDs. `start()` needs the reactor running; `stop()` tears down."""

    def __init__(self, options: LabOptions, reactor: Any) -> None:
        self.options = options
        self.reactor = reactor
        self.dir = options.directory.resolve()
        self.mfds: list[Any] = []
        self.site: SupervisedSite | None = None
        self.endpoints: dict[str, Any] = {}
        self._watch: Any = None

    @property
    def endpoints_path(self) -> Path:
        return self.dir / "endpoints.json"

    def start_mfds(self) -> list[dict[str, Any]]:
        from simulators.mfd.printer import SimulatedMfd

        entries = []
        for i in range(1, self.options.mfds + 1):
            name = f"mfd-{i}"
            base = self.dir / "mfds" / name
            output, state = base / "output", base / "state"
            output.mkdir(parents=True, exist_ok=True)
            state.mkdir(parents=True, exist_ok=True)
            mfd = SimulatedMfd(name, output, state, reactor=self.reactor)
            mfd.listen("127.0.0.1", snmp_port=0, lpd_port=0)
            self.mfds.append(mfd)
            agent = mfd.snmp_agent
            lpd_only = i > self.options.mfds - self.options.lpd_mfds
            entries.append({"name": name, "ipp": mfd.ipp_uri, "lpd": mfd.lpd_uri,
                            "site_protocol": "lpd" if lpd_only else "ipp",
                            "output": str(output), "control": mfd.control_uri,
                            "snmp": {"host": "127.0.0.1", "port": mfd.snmp_port,
                                     "community": agent.community, "v3": dict(agent.v3)}})
        return entries

    def prepare_site(self, mfds: list[dict[str, Any]]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """Write the site's config (keeping its ports across lab restarts) and seed users once."""
        name = "site-1"
        site_dir = self.dir / name
        state_dir, secrets_dir = site_dir / "state", site_dir / "secrets"
        state_dir.mkdir(parents=True, exist_ok=True)
        secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        ports_file = site_dir / "ports.json"
        if ports_file.exists():
            ports = json.loads(ports_file.read_text())
        else:
            ports = {"ipp": free_port(), "device_api": free_port()}
        if "lpd" not in ports:   # a lab folder from before LPD: keep its ports, add one
            ports["lpd"] = free_port()
        write_atomically(ports_file, json.dumps(ports))
        config_path = site_dir / "site.toml"
        write_atomically(config_path, site_config_text(
            name=name, state_dir=state_dir, secrets_dir=secrets_dir, ipp_port=ports["ipp"],
            api_port=ports["device_api"], mfds=mfds, hold_hours=self.options.hold_hours,
            argon2_memory_kib=self.options.argon2_memory_kib, lpd_port=ports["lpd"]))
        users_file = self.dir / "lab-users.json"
        if users_file.exists():
            users = json.loads(users_file.read_text())
        else:
            users = make_users(self.options.seed, self.options.users)
            subprocess.run(
                [sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                 str(config_path), "-"],
                input=json.dumps(users).encode(), check=True, stdout=subprocess.DEVNULL,
            )
            # The lab keeps the plaintext credentials beside the site, never in its state_dir.
            write_atomically(users_file, json.dumps(users, indent=1))
            users_file.chmod(0o600)
        self.site = SupervisedSite(name, config_path, state_dir / "logs" / "site.log",
                                   on_restart=self.refresh_pid)
        site_entry = {
            "name": name,
            "state_dir": str(state_dir),
            "config": str(config_path),
            "ipp": f"ipp://127.0.0.1:{ports['ipp']}/printers/findme",
            "device_api": f"http://127.0.0.1:{ports['device_api']}/api/v1",
            "ipp_port": ports["ipp"],
            "device_api_port": ports["device_api"],
            "lpd": f"lpd://127.0.0.1:{ports['lpd']}/findme",
            "lpd_port": ports["lpd"],
            "mfds": [{**m, "queue": f"ipp://127.0.0.1:{ports['ipp']}/printers/{m['name']}"}
                     for m in mfds],
        }
        return site_entry, users

    async def wait_ready(self, ports: list[int], timeout: float = 60.0) -> None:
        """Wait (without blocking the reactor) until every port accepts connections."""
        from twisted.internet import task

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(port_open(p) for p in ports):
                return
            await task.deferLater(self.reactor, 0.1, lambda: None)
        raise TimeoutError(f"the lab's ports {ports} did not open in {timeout:.0f}s")

    async def start(self) -> dict[str, Any]:
        """Start everything; return the endpoints (also written to endpoints.json)."""
        from twisted.internet import task

        self.dir.mkdir(parents=True, exist_ok=True)
        mfds = self.start_mfds()
        site_entry, users = self.prepare_site(mfds)
        assert self.site is not None
        self.site.start()
        self._watch = task.LoopingCall(self.site.check)
        self._watch.clock = self.reactor
        self._watch.start(0.5, now=False)
        ports = [site_entry["ipp_port"], site_entry["device_api_port"], site_entry["lpd_port"]]
        ports += [mfd.ipp_port for mfd in self.mfds] + [mfd.control_port for mfd in self.mfds]
        ports += [mfd.lpd_port for mfd in self.mfds]
        await self.wait_ready(ports)
        self.endpoints = {
            "sites": [{**site_entry, "pid": self.site.pid}],
            "users": users,
            "lab": {"pid": os.getpid(), "dir": str(self.dir)},
        }
        write_atomically(self.endpoints_path, json.dumps(self.endpoints, indent=1))
        log.info("lab ready: %s", self.endpoints_path)
        return self.endpoints

    def refresh_pid(self) -> None:
        """Keep endpoints.json's pid true after a restart of the site."""
        if self.site is None or not self.endpoints:
            return
        if self.endpoints["sites"][0]["pid"] != self.site.pid:
            self.endpoints["sites"][0]["pid"] = self.site.pid
            write_atomically(self.endpoints_path, json.dumps(self.endpoints, indent=1))

    async def stop(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        if self.site is not None:
            self.site.stop()
        for mfd in self.mfds:
            await mfd.stop()
        self.endpoints_path.unlink(missing_ok=True)
        log.info("lab stopped")

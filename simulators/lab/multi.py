"""The multi-site lab: a primary, N sites with their MFDs, P providers, every uplink
through the WAN simulator.

`outpost lab up --dir DIR --sites N [--providers P]` makes the deployment's CA and
certificates (appliance.pki), imports the lab users at the primary, gives every
appliance the deployment's card key, and starts:

- the primary (its own process),
- per site its MFDs (in this process) and the site (its own process), whose
  `[primary] url` points at a WAN-simulator proxy (in this process) in front of the
  primary's sync port,
- per provider its own process, its uplink through a proxy of its own.

Every daemon is restarted when it dies (as systemd would). `endpoints.json` is
written once every port accepts connections and every site has replicated the
users from the primary. The WAN simulator's control API (toxiproxy's) is served
on a port of its own; `"wan": {"api", "links"}` names it and the proxy of each
link.

Time-based settings (heartbeat windows, job expiry) come from a `LinkProfile`:
`default` for people, `fast` for `outpost lab run`'s scenarios.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.lab.lab import (
    SupervisedSite,
    free_port,
    make_users,
    port_open,
    write_atomically,
)

log = logging.getLogger("outpost.lab")

PRIMARY_NAME = "primary"


@dataclass(frozen=True)
class LinkProfile:
    """Time-based settings of the deployment (sites' `[primary]`, `[jobs]`)."""

    heartbeat_interval: float = 1.0
    offline_after_misses: int = 3
    online_after_successes: int = 3
    request_timeout: float = 3.0
    push_interval: float = 1.0
    push_batch_size: int = 500
    hold_hours: float = 24.0
    expire_interval: float = 60.0
    use_ghostscript: bool = True


PROFILES = {
    "default": LinkProfile(),
    # `outpost lab run`: a site notices an outage within a second and comes back
    # within about one; held jobs expire after 15 minutes (longer than any scenario).
    "fast": LinkProfile(heartbeat_interval=0.25, offline_after_misses=2,
                        online_after_successes=3, request_timeout=1.0, push_interval=0.25,
                        push_batch_size=50, hold_hours=0.25, expire_interval=5.0,
                        use_ghostscript=False),
    # `make demo`: an outage noticed within a second or two, colour analysed.
    "demo": LinkProfile(heartbeat_interval=0.5, offline_after_misses=2,
                        online_after_successes=3, request_timeout=1.5, push_interval=0.5),
}


@dataclass
class MultiLabOptions:
    directory: Path
    sites: int = 2
    providers: int = 0
    mfds: int = 2                 # per site
    seed: int = 1
    users: int = 10
    argon2_memory_kib: int = 8192
    profile: str = "default"
    #: "daemon[@N]" -> OUTPOST_FAILPOINTS spec, armed in its N-th start only (default 1).
    failpoints: dict[str, str] = field(default_factory=dict)
    wan_seed: int = 0
    #: Offline allowances (docs/offline-allowance.md): the share of what an account can
    #: spend that the primary grants each site (None: no `[offline]`, no allowances).
    offline_share: float | None = None


def _toml_str(value: Any) -> str:
    return json.dumps(str(value))


def _daemon_env(lab_dir: Path) -> dict[str, str]:
    return {"OUTPOST_FAILPOINTS_LOG": str(lab_dir / "failpoints.log")}


class MultiLab:
    """The deployment. `start()` needs the reactor running; `stop()` tears down."""

    def __init__(self, options: MultiLabOptions, reactor: Any) -> None:
        if options.sites < 1:
            raise ValueError("a multi-site lab has at least one site")
        if options.providers > 0:
            self._check_providers()
        self.options = options
        self.reactor = reactor
        self.dir = options.directory.resolve()
        self.profile = PROFILES[options.profile]
        self.mfds: list[Any] = []
        self.daemons: dict[str, SupervisedSite] = {}
        self.endpoints: dict[str, Any] = {}
        self.wan: Any = None
        self._wan_port: Any = None
        self._watch: Any = None

    @staticmethod
    def _check_providers() -> None:
        try:
            import appliance.roles.provider  # noqa: F401
        except ImportError:
            raise ValueError("providers are not available in this build yet "
                             "(appliance/roles/provider.py is missing)") from None

    @property
    def endpoints_path(self) -> Path:
        return self.dir / "endpoints.json"

    # ------------------------------------------------------------------ ports, pki

    def _ports(self) -> dict[str, Any]:
        """Every port of the deployment, kept across restarts of the lab (ports.json)."""
        path = self.dir / "ports.json"
        ports: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
        ports.setdefault("wan_api", free_port())
        ports.setdefault(PRIMARY_NAME, {k: free_port() for k in ("sync", "ipp", "device_api",
                                                                   "lpd")})
        for i in range(1, self.options.sites + 1):
            ports.setdefault(f"site-{i}", {k: free_port() for k in ("ipp", "device_api", "lpd",
                                                                    "wan")})
            ports[f"site-{i}"].setdefault("relay", free_port())   # its providers' [sync]
        for i in range(1, self.options.providers + 1):
            ports.setdefault(f"provider-{i}", {k: free_port() for k in ("ipp", "device_api",
                                                                        "lpd", "wan")})
        write_atomically(path, json.dumps(ports, indent=1))
        return ports

    def _pki(self) -> Path:
        """The deployment CA (its key stays in the lab folder) and one certificate each."""
        from appliance.pki import Pair, issue, make_ca

        pki = self.dir / "pki"
        pki.mkdir(parents=True, exist_ok=True)
        if not (pki / "ca.key").exists():
            ca = make_ca("Outpost lab CA")
            ca.write(pki, "ca")
        ca = Pair((pki / "ca.crt").read_bytes(), (pki / "ca.key").read_bytes())
        wanted = [("primary", PRIMARY_NAME)]
        wanted += [("site", f"site-{i}") for i in range(1, self.options.sites + 1)]
        wanted += [("provider", f"provider-{i}") for i in range(1, self.options.providers + 1)]
        for kind, name in wanted:
            if not (pki / f"{name}.crt").exists():
                # The primary and the sites serve sync (a site to its providers): their
                # names are checked against the URL.
                hosts = ["127.0.0.1", "localhost"] if kind != "provider" else []
                issue(ca, kind=kind, name=name, hosts=hosts).write(pki, name)
        return pki

    # ------------------------------------------------------------------ configs

    def _common(self, role: str, name: str, base: Path, ports: dict[str, int]) -> list[str]:
        state, secrets = base / "state", base / "secrets"
        state.mkdir(parents=True, exist_ok=True)
        secrets.mkdir(parents=True, exist_ok=True, mode=0o700)
        p = self.profile
        return [
            f"# Written by `outpost lab up --sites`: the {role} {name} on loopback.",
            f'role = "{role}"', f"name = {_toml_str(name)}",
            f"state_dir = {_toml_str(state)}", f"secrets_dir = {_toml_str(secrets)}", "",
            "[ipp]", 'host = "127.0.0.1"', f"port = {ports['ipp']}", "",
            "[device_api]", 'host = "127.0.0.1"', f"port = {ports['device_api']}", "",
            "[lpd]", 'host = "127.0.0.1"', f"port = {ports['lpd']}", "",
            "[jobs]", f"hold_hours = {p.hold_hours}", f"expire_interval = {p.expire_interval}",
            f"use_ghostscript = {'true' if p.use_ghostscript else 'false'}", "",
            "[release]", "poll_interval = 0.1", "follow_timeout = 60.0", "",
            "[auth]", f"argon2_memory_kib = {self.options.argon2_memory_kib}", "",
            "[cost_policy.default.default]", "mono = 10", "colour = 40", "",
        ]

    def _link(self, name: str, pki: Path) -> list[str]:
        """A `[primary]` or `[provider]` table's certificates and the profile's timings."""
        p = self.profile
        return [
            f"ca_file = {_toml_str(pki / 'ca.crt')}",
            f"cert_file = {_toml_str(pki / f'{name}.crt')}",
            f"key_file = {_toml_str(pki / f'{name}.key')}",
            f"heartbeat_interval = {p.heartbeat_interval}",
            f"offline_after_misses = {p.offline_after_misses}",
            f"online_after_successes = {p.online_after_successes}",
            f"request_timeout = {p.request_timeout}",
            f"push_interval = {p.push_interval}",
            f"push_batch_size = {p.push_batch_size}", "",
        ]

    def _uplink(self, name: str, pki: Path, wan_port: int) -> list[str]:
        return [
            "# The uplink goes through the lab's WAN simulator (a proxy per link).",
            "[primary]", f'url = "https://127.0.0.1:{wan_port}"',
            *self._link(name, pki),
        ]

    def _primary_config(self, ports: dict[str, int], pki: Path,
                        mfds: list[dict[str, Any]]) -> Path:
        base = self.dir / PRIMARY_NAME
        # The primary serves its own MFD too (roles/primary.py: with [[devices]]).
        lines = self._common("primary", PRIMARY_NAME, base, ports) + _devices(mfds)
        lines += ["[sync]", 'host = "127.0.0.1"', f"port = {ports['sync']}",
                  f"ca_file = {_toml_str(pki / 'ca.crt')}",
                  f"cert_file = {_toml_str(pki / f'{PRIMARY_NAME}.crt')}",
                  f"key_file = {_toml_str(pki / f'{PRIMARY_NAME}.key')}", ""]
        if self.options.offline_share is not None:
            # Bounded offline spending: grants refreshed every 2 s, valid for 10 minutes
            # (longer than any scenario's outage), refused past the grant.
            lines += ["[offline]", f"allowance_share = {self.options.offline_share}",
                      'past_allowance = "deny"', "validity = 600.0", "refresh = 2.0", ""]
        path = base / "primary.toml"
        write_atomically(path, "\n".join(lines))
        return path

    def _site_config(self, name: str, ports: dict[str, int], pki: Path,
                     mfds: list[dict[str, Any]], relay: bool = False) -> Path:
        base = self.dir / name
        lines = self._common("site", name, base, ports) + self._uplink(name, pki, ports["wan"])
        if relay:
            lines += ["# The sync port its providers fail over to (docs/providers.md).",
                      "[sync]", 'host = "127.0.0.1"', f"port = {ports['relay']}",
                      f"ca_file = {_toml_str(pki / 'ca.crt')}",
                      f"cert_file = {_toml_str(pki / f'{name}.crt')}",
                      f"key_file = {_toml_str(pki / f'{name}.key')}", ""]
        lines += _devices(mfds)
        path = base / "site.toml"
        write_atomically(path, "\n".join(lines))
        return path

    def _provider_config(self, name: str, ports: dict[str, int], pki: Path,
                         site_ports: dict[str, int], mfds: list[dict[str, Any]]) -> Path:
        """A provider (docs/providers.md): its uplinks in order, the primary (through the
        WAN simulator) first, then its site server's `[sync]` port (on the LAN)."""
        base = self.dir / name
        lines = self._common("provider", name, base, ports) + _devices(mfds) + [
            "[provider]",
            f'upstreams = ["https://127.0.0.1:{ports["wan"]}", '
            f'"https://127.0.0.1:{site_ports["relay"]}"]',
            *self._link(name, pki),
        ]
        path = base / "provider.toml"
        write_atomically(path, "\n".join(lines))
        return path

    def promote(self, name: str) -> Path:
        """Rewrite a provider's configuration as a site's (docs/providers.md, promotion):
        role "site", `[primary]` = its first upstream with the same TLS files; the rest
        stays. The caller restarts it."""
        path = self.dir / name / "provider.toml"
        text = path.read_text()
        head = text.split("[provider]")[0].replace('role = "provider"', 'role = "site"')
        wan_port = self._ports()[name]["wan"]
        write_atomically(path, head + "\n".join(self._uplink(name, self.dir / "pki",
                                                               wan_port)))
        return path

    def _share_card_key(self, name: str) -> None:
        """Every appliance of a deployment uses the primary's card HMAC key."""
        source = self.dir / PRIMARY_NAME / "secrets" / "card-hmac.key"
        target = self.dir / name / "secrets" / "card-hmac.key"
        if not target.exists():
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            shutil.copyfile(source, target)
            target.chmod(0o600)

    # ------------------------------------------------------------------ MFDs, WAN

    def _start_mfds(self, prefix: str, count: int) -> list[dict[str, Any]]:
        from simulators.mfd.printer import SimulatedMfd

        entries = []
        for j in range(1, count + 1):
            name = f"{prefix}-mfd-{j}"
            base = self.dir / "mfds" / name
            output, state = base / "output", base / "state"
            output.mkdir(parents=True, exist_ok=True)
            state.mkdir(parents=True, exist_ok=True)
            mfd = SimulatedMfd(name, output, state, reactor=self.reactor)
            mfd.listen("127.0.0.1")
            self.mfds.append(mfd)
            entries.append({"name": name, "ipp": mfd.ipp_uri, "output": str(output),
                            "control": mfd.control_uri, "site_protocol": "ipp"})
        return entries

    def _start_wan(self, ports: dict[str, Any]) -> dict[str, str]:
        from simulators.wan import WanSimulator

        self.wan = WanSimulator(self.reactor, seed=self.options.wan_seed)
        links = {}
        sync = ports[PRIMARY_NAME]["sync"]
        names = [f"site-{i}" for i in range(1, self.options.sites + 1)]
        names += [f"provider-{i}" for i in range(1, self.options.providers + 1)]
        for name in names:
            proxy = f"wan-{name}"
            self.wan.add_proxy(proxy, f"127.0.0.1:{ports[name]['wan']}", f"127.0.0.1:{sync}")
            links[name] = proxy
        self._wan_port = self.wan.listen_api(f"127.0.0.1:{ports['wan_api']}")
        return links

    # ------------------------------------------------------------------ start, stop

    def _daemon(self, name: str, config: Path) -> SupervisedSite:
        env = _daemon_env(self.dir)
        once: dict[int, dict[str, str]] = {}
        for key, spec in self.options.failpoints.items():
            daemon_name, _, nth = key.partition("@")
            if daemon_name == name:
                once[int(nth or 1)] = {"OUTPOST_FAILPOINTS": spec}
        daemon = SupervisedSite(name, config, self.dir / name / "state" / "logs" / f"{name}.log",
                                on_restart=self.refresh_pids, env=env, start_envs=once)
        self.daemons[name] = daemon
        return daemon

    async def _wait(self, what: str, check: Any, timeout: float = 90.0) -> None:
        from twisted.internet import task

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            for daemon in self.daemons.values():
                daemon.check()
            await task.deferLater(self.reactor, 0.1, lambda: None)
        raise TimeoutError(f"lab: timed out waiting for {what}")

    def _import_users(self, primary_config: Path) -> list[dict[str, Any]]:
        users_file = self.dir / "lab-users.json"
        if users_file.exists():
            users: list[dict[str, Any]] = json.loads(users_file.read_text())
            return users
        users = make_users(self.options.seed, self.options.users)
        subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                        str(primary_config), "-"], input=json.dumps(users).encode(),
                       check=True, stdout=subprocess.DEVNULL)
        write_atomically(users_file, json.dumps(users, indent=1))
        users_file.chmod(0o600)
        return users

    async def start(self) -> dict[str, Any]:
        from twisted.internet import task

        self.dir.mkdir(parents=True, exist_ok=True)
        ports = self._ports()
        pki = self._pki()
        primary_ports = ports[PRIMARY_NAME]
        primary_mfds = self._start_mfds("pr", 1)
        primary_config = self._primary_config(primary_ports, pki, primary_mfds)
        users = self._import_users(primary_config)
        primary = self._daemon(PRIMARY_NAME, primary_config)
        primary.start()
        links = self._start_wan(ports)
        sites: list[dict[str, Any]] = []
        for i in range(1, self.options.sites + 1):
            name = f"site-{i}"
            mfds = self._start_mfds(f"s{i}", self.options.mfds)
            self._share_card_key(name)
            config = self._site_config(name, ports[name], pki, mfds,
                                       relay=self.options.providers > 0)
            self._daemon(name, config).start()
            p = ports[name]
            sites.append({
                "name": name, "state_dir": str(self.dir / name / "state"),
                "config": str(config),
                "ipp": f"ipp://127.0.0.1:{p['ipp']}/printers/findme",
                "device_api": f"http://127.0.0.1:{p['device_api']}/api/v1",
                "ipp_port": p["ipp"], "device_api_port": p["device_api"],
                "lpd": f"lpd://127.0.0.1:{p['lpd']}/findme", "lpd_port": p["lpd"],
                "wan_proxy": links[name],
                "mfds": [{**m, "queue": f"ipp://127.0.0.1:{p['ipp']}/printers/{m['name']}"}
                         for m in mfds],
            })
        providers: list[dict[str, Any]] = []
        for i in range(1, self.options.providers + 1):
            name = f"provider-{i}"
            home = f"site-{(i - 1) % self.options.sites + 1}"
            self._share_card_key(name)
            mfds = self._start_mfds(f"p{i}", 1)
            config = self._provider_config(name, ports[name], pki, ports[home], mfds)
            self._daemon(name, config).start()
            p = ports[name]
            providers.append({
                "name": name, "site": home,
                "ipp": f"ipp://127.0.0.1:{p['ipp']}/printers/findme",
                "device_api": f"http://127.0.0.1:{p['device_api']}/api/v1",
                "ipp_port": p["ipp"], "device_api_port": p["device_api"],
                "state_dir": str(self.dir / name / "state"), "config": str(config),
                "wan_proxy": links[name],
                "mfds": [{**m, "queue": f"ipp://127.0.0.1:{p['ipp']}/printers/{m['name']}"}
                         for m in mfds]})
        self._watch = task.LoopingCall(self.check)
        self._watch.clock = self.reactor
        self._watch.start(0.5, now=False)
        wanted = [primary_ports[k] for k in ("sync", "ipp", "device_api", "lpd")]
        for site in sites:
            wanted += [site["ipp_port"], site["device_api_port"], site["lpd_port"]]
            if providers:
                wanted.append(ports[site["name"]]["relay"])
        for provider in providers:
            wanted += [provider["ipp_port"], provider["device_api_port"]]
        wanted += [mfd.ipp_port for mfd in self.mfds] + [mfd.control_port for mfd in self.mfds]
        await self._wait(f"ports {wanted}", lambda: all(port_open(p) for p in wanted))
        await self._wait("every site and provider to replicate the users",
                         lambda: all(_count_users(Path(s["state_dir"])) >= len(users)
                                     for s in [*sites, *providers]))
        primary_entry = {
            "name": PRIMARY_NAME, "pid": primary.pid,
            "sync": f"https://127.0.0.1:{primary_ports['sync']}/sync/v1/",
            # The primary serves its own MFD and queues, as a site does.
            "ipp": f"ipp://127.0.0.1:{primary_ports['ipp']}/printers/findme",
            "device_api": f"http://127.0.0.1:{primary_ports['device_api']}/api/v1",
            "ipp_port": primary_ports["ipp"], "device_api_port": primary_ports["device_api"],
            "lpd": f"lpd://127.0.0.1:{primary_ports['lpd']}/findme",
            "lpd_port": primary_ports["lpd"],
            "mfds": [{**m, "queue": f"ipp://127.0.0.1:{primary_ports['ipp']}/printers/"
                                    f"{m['name']}"} for m in primary_mfds],
            "state_dir": str(self.dir / PRIMARY_NAME / "state"),
            "config": str(primary_config),
        }
        for site in sites:
            site["pid"] = self.daemons[site["name"]].pid
        for provider in providers:
            provider["pid"] = self.daemons[provider["name"]].pid
        self.endpoints = {
            "primary": primary_entry,
            "sites": sites,
            "site": sites[0],
            "providers": providers,
            "wan": {"api": f"http://127.0.0.1:{ports['wan_api']}", "links": links},
            "users": users,
            "lab": {"pid": os.getpid(), "dir": str(self.dir), "profile": self.options.profile,
                    "failpoints_log": str(self.dir / "failpoints.log")},
        }
        write_atomically(self.endpoints_path, json.dumps(self.endpoints, indent=1))
        log.info("lab ready: %s", self.endpoints_path)
        return self.endpoints

    def check(self) -> None:
        for daemon in self.daemons.values():
            daemon.check()

    def refresh_pids(self) -> None:
        """Keep endpoints.json's pids true after a restart."""
        if not self.endpoints:
            return
        changed = False
        entries = [self.endpoints["primary"], *self.endpoints["sites"],
                   *self.endpoints["providers"]]
        for entry in entries:
            daemon = self.daemons.get(entry["name"])
            if daemon is not None and daemon.process is not None and entry["pid"] != daemon.pid:
                entry["pid"] = daemon.pid
                changed = True
        if changed:
            self.endpoints["site"] = self.endpoints["sites"][0]
            write_atomically(self.endpoints_path, json.dumps(self.endpoints, indent=1))

    async def stop(self) -> None:
        if self._watch is not None and self._watch.running:
            self._watch.stop()
        for daemon in self.daemons.values():
            daemon.stopping = True
        # Sites and providers first, all at once (each waits for its own), the primary last.
        others = [d for name, d in self.daemons.items() if name != PRIMARY_NAME]
        for daemon in others:
            if daemon.process is not None and daemon.process.poll() is None:
                daemon._signal_group(signal.SIGTERM)
        for daemon in others:
            daemon.stop()
        if PRIMARY_NAME in self.daemons:
            self.daemons[PRIMARY_NAME].stop()
        if self.wan is not None:
            self.wan.shutdown()
        if self._wan_port is not None:
            await self._wan_port.stopListening()
        for mfd in self.mfds:
            await mfd.stop()
        self.endpoints_path.unlink(missing_ok=True)
        log.info("lab stopped")


def _devices(mfds: list[dict[str, Any]]) -> list[str]:
    lines = []
    for mfd in mfds:
        lines += ["[[devices]]", f"name = {_toml_str(mfd['name'])}",
                  f"uri = {_toml_str(mfd['ipp'])}", ""]
    return lines


def _count_users(state_dir: Path) -> int:
    path = state_dir / "outpost.sqlite3"
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return int(conn.execute("SELECT COUNT(*) FROM users").fetchone()[0])
        finally:
            conn.close()
    except sqlite3.Error:
        return 0

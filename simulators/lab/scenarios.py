"""`outpost lab run SCENARIO --seed N`: a lab, a seeded workload, faults, settle, oracle.

Each scenario is a script over a `Driver`: phases of workload steps (planned from the
seed by `workload.plan`), and faults placed *between steps* — the WAN simulator's
partition/heal and down/up through its control API, kill -9 of a daemon (which the
lab restarts), failpoints armed in a daemon's N-th life. Where a fault goes and how
long it lasts is drawn from the seed, so the same seed gives the same workload and the
same fault log (`Driver.faults`: step index, action, target); wall-clock time decides
only how long the driver waits for the sites to notice (their mode, read from their
databases), never what the workload does or what is judged.

Then the lab settles (every link healed, every daemon up, every site online with an
empty outbox), `collect` reads the databases (read-only) and the MFDs' output
folders, and `oracle.judge` decides.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.lab.oracle import (
    AckedCharge,
    LedgerRow,
    Observed,
    Requirements,
    SiteJob,
    SubmittedJob,
    judge,
)
from simulators.lab.runner import RunningLab, port_open, running_lab
from simulators.lab.workload import Executor, Mix, Step, plan, site_mode

log = logging.getLogger("outpost.lab.run")

SITES = ("site-1", "site-2")
BOTH = {"site-1": 1.0, "site-2": 1.0}
SETTLE_TIMEOUT = 180.0


class ScenarioFailed(Exception):
    pass


@dataclass
class Driver:
    lab: RunningLab
    executor: Executor
    seed: int
    rng: random.Random
    faults: list[dict[str, Any]] = field(default_factory=list)
    held: dict[tuple[str, str], int] = field(default_factory=dict)
    next_step: int = 0
    _hooks: dict[int, list[Callable[[], None]]] = field(default_factory=dict)
    _watchers: list[Callable[[Step], None]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.executor.before_step = self._before_step

    # ------------------------------------------------------------ workload

    @property
    def mfds(self) -> dict[str, list[str]]:
        data = self.lab.endpoints
        return {s["name"]: [m["name"] for m in s["mfds"]]
                for s in [*data["sites"], *data["providers"]]}

    def phase(self, name: str, count: int, mix: Mix) -> None:
        users = [u["username"] for u in self.lab.endpoints["users"]]
        steps = plan(self.seed, name, self.next_step, count, mix, self.mfds, users, self.held)
        self.next_step += count
        log.info("phase %s: steps %d..%d", name, steps[0].index, steps[-1].index)
        self.executor.run(steps)

    def at_step(self, index: int, action: Callable[[], None]) -> None:
        self._hooks.setdefault(index, []).append(action)

    def _before_step(self, step: Step) -> None:
        for action in self._hooks.pop(step.index, []):
            action()
        for watcher in list(self._watchers):
            watcher(step)

    # ------------------------------------------------------------ faults

    def note(self, action: str, target: str, **details: Any) -> None:
        entry = {"step": self.executor.log.steps, "action": action, "target": target,
                 **details}
        self.faults.append(entry)
        log.info("fault: %s", json.dumps(entry))

    def _wan(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        api = self.lab.endpoints["wan"]["api"]
        request = urllib.request.Request(
            api + path, method=method, headers={"Content-Type": "application/json"},
            data=json.dumps(body).encode() if body is not None else None)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code in (404, 409):   # already healed / already cut: idempotent here
                return None
            raise
        return json.loads(raw) if raw else None

    def proxy(self, name: str) -> str:
        proxy: str = self.lab.endpoints["wan"]["links"][name]
        return proxy

    def cut(self, name: str, mode: str = "partition") -> None:
        """Cut a link: `partition` (connections stall, new ones hang) or `down` (closed,
        refused)."""
        self._cut(name, mode)
        self.note("cut", name, mode=mode)

    def _cut(self, name: str, mode: str) -> None:
        proxy = self.proxy(name)
        if mode == "down":
            self._wan("POST", f"/proxies/{proxy}", {"enabled": False})
        else:
            for stream in ("upstream", "downstream"):
                self._wan("POST", f"/proxies/{proxy}/toxics",
                          {"name": f"partition_{stream}", "type": "partition",
                           "stream": stream})

    def cut_during(self, name: str, action: str, from_index: int,
                   delay: float = 0.05) -> Callable[[], bool]:
        """Cut `name`'s link `delay` s into the first `action` step at `name` whose index
        is `from_index` or later (which step: from the seed; the cut lands while the
        panel waits for its answer). Returns whether it happened."""
        done = {"cut": False}

        def watch(step: Step) -> None:
            if done["cut"] or step.index < from_index or step.action != action \
                    or step.site != name:
                return
            done["cut"] = True
            self._watchers.remove(watch)
            self.note("cut", name, mode="partition", during=f"step {step.index} {action}")
            threading.Timer(delay, self._cut, (name, "partition")).start()
            self._watchers.append(settled)

        def settled(step: Step) -> None:
            # The step after the cut starts once the site knows it is offline, so that
            # which charges are offline ones does not depend on how fast it noticed.
            self._watchers.remove(settled)
            self.wait_mode(name, "offline")

        self._watchers.append(watch)
        return lambda: done["cut"]

    def heal(self, name: str) -> None:
        proxy = self.proxy(name)
        for stream in ("upstream", "downstream"):
            self._wan("DELETE", f"/proxies/{proxy}/toxics/partition_{stream}")
        self._wan("POST", f"/proxies/{proxy}", {"enabled": True})
        self.note("heal", name)

    def kill(self, daemon: str, delay: float = 0.0) -> None:
        """kill -9 a daemon (now, or `delay` seconds into the next step: mid-request)."""
        self.note("kill-9", daemon, **({"mid_step": True} if delay else {}))

        def do() -> None:
            pid = self._pid(daemon)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if delay:
            threading.Timer(delay, do).start()
        else:
            do()

    def _pid(self, daemon: str) -> int:
        data = self.lab.endpoints
        for entry in [data["primary"], *data["sites"], *data["providers"]]:
            if entry["name"] == daemon:
                return int(entry["pid"])
        raise KeyError(daemon)

    def wait_grants(self, after: float, timeout: float = 60.0) -> None:
        """Wait until every site holds offline grants received after `after` (a build
        with allowances; without, there is nothing to wait for).

        Grants are cut from the balance at grant time; what a user spends online after
        the last refresh is not subtracted from the other sites' reservations
        (docs/offline-allowance.md, known limits): the partition comes after a refresh,
        as in the partition trials."""
        sites = self.lab.endpoints["sites"]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            fresh = 0
            for site in sites:
                db = Path(site["state_dir"]) / "outpost.sqlite3"
                try:
                    rows = _query(db, "SELECT COUNT(*) FROM offline_grants WHERE state = "
                                      "'active' AND received_at > ?", after)
                except sqlite3.OperationalError:
                    return   # no offline_grants table: this build has no allowances
                fresh += rows[0][0] > 0
            if fresh == len(sites):
                self.note("grants-refreshed", "sites")
                return
            time.sleep(0.1)
        raise ScenarioFailed(f"the sites got no fresh offline grants within {timeout:.0f}s")

    def promote(self, provider: str) -> None:
        """Promote a provider to a site server: its configuration's role becomes "site"
        (docs/providers.md), then it is restarted (SIGTERM; the lab starts it again with
        the new configuration) over the same database."""
        from simulators.lab.multi import MultiLab, MultiLabOptions

        data = self.lab.endpoints
        lab_dir = Path(data["lab"]["dir"])
        MultiLab(MultiLabOptions(lab_dir, sites=len(data["sites"]),
                                 providers=len(data["providers"]), profile="fast"),
                 reactor=None).promote(provider)
        self.note("promote", provider)
        old = self._pid(provider)
        os.killpg(old, signal.SIGTERM)
        entry = next(p for p in data["providers"] if p["name"] == provider)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if self._pid(provider) != old and port_open(entry["device_api_port"]) \
                        and port_open(entry["ipp_port"]):
                    break
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        else:
            raise ScenarioFailed(f"{provider} did not come back as a site")
        self.wait_mode(provider, "online")

    def wait_mode(self, site: str, mode: str, timeout: float = 60.0) -> None:
        data = self.lab.endpoints
        state_dir = Path(next(s for s in [*data["sites"], *data["providers"]]
                              if s["name"] == site)["state_dir"])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if site_mode(state_dir) == mode:
                if mode == "offline":
                    self.executor.log.offline_seen.add(site)
                return
            time.sleep(0.05)
        raise ScenarioFailed(f"{site} did not become {mode} within {timeout:.0f}s")


@dataclass(frozen=True)
class Scenario:
    name: str
    summary: str
    script: Callable[[Driver], None]
    requirements: Requirements
    #: From the seed: "daemon[@N]" -> failpoint spec (armed in that life of the daemon).
    failpoints: Callable[[random.Random], dict[str, str]] = lambda rng: {}
    #: Offline allowances: the share of what an account can spend granted to each site.
    offline_share: float | None = None
    providers: int = 0
    #: What this scenario must have exercised, besides the oracle (problems, or none).
    check: Callable[[Driver], list[str]] = lambda driver: []


# ---------------------------------------------------------------- the scenarios


def wan_drop(d: Driver) -> None:
    """The link drops while a user waits at a panel for a release at site-1."""
    warm = 70 + d.rng.randint(0, 20)
    dropped = d.cut_during("site-1", "release", warm - 25)
    d.phase("warm", warm, Mix(BOTH))
    if not dropped():
        d.cut("site-1")
    d.wait_mode("site-1", "offline")
    d.phase("outage", 130 + d.rng.randint(0, 20), Mix({"site-1": 0.8, "site-2": 0.2}))
    d.heal("site-1")
    d.wait_mode("site-1", "online")
    d.phase("after", 75, Mix(BOTH))


def wan_flap(d: Driver) -> None:
    d.phase("warm", 60 + d.rng.randint(0, 10), Mix(BOTH))
    d.cut("site-1")
    d.wait_mode("site-1", "offline")
    for round_ in range(10):
        mode = d.rng.choice(["partition", "down"])
        d.phase(f"flap{round_}-down", d.rng.randint(10, 16), Mix({"site-1": 0.8, "site-2": 0.2}))
        d.heal("site-1")
        if round_ % 2:
            d.cut("site-2", d.rng.choice(["partition", "down"]))
        d.phase(f"flap{round_}-up", d.rng.randint(2, 5), Mix({"site-1": 0.8, "site-2": 0.2}))
        d.cut("site-1", mode)
        if round_ % 2:
            d.heal("site-2")
    d.heal("site-1")
    d.wait_mode("site-1", "online")
    d.phase("after", 75, Mix(BOTH))


def long_outage(d: Driver) -> None:
    d.phase("warm", 40 + d.rng.randint(0, 10), Mix(BOTH))
    for site in SITES:
        d.cut(site)
    for site in SITES:
        d.wait_mode(site, "offline")
    d.phase("outage", 220 + d.rng.randint(0, 20), Mix(BOTH, print=0.3, release=0.25))
    for site in SITES:
        d.heal(site)
    for site in SITES:
        d.wait_mode(site, "online", timeout=120)
    d.phase("after", 50, Mix(BOTH))


def kill_site(d: Driver) -> None:
    d.phase("warm", 80, Mix(BOTH))
    d.at_step(d.next_step + d.rng.randint(40, 120), lambda: d.kill("site-2", delay=0.05))
    d.at_step(d.next_step + d.rng.randint(130, 190), lambda: d.kill("site-1", delay=0.02))
    d.phase("busy", 200, Mix(BOTH))
    d.phase("after", 35, Mix(BOTH))


def kill_primary(d: Driver) -> None:
    d.phase("warm", 80, Mix(BOTH))
    d.at_step(d.next_step + d.rng.randint(60, 140), lambda: d.kill("primary"))
    d.phase("busy", 200, Mix(BOTH))
    d.phase("after", 35, Mix(BOTH))


SPENDER = "judy"


def partition_double_spend(d: Driver) -> None:
    """One user spends big at two partitioned sites: each site may authorise only within
    its offline allowance, so the sum stays within balance + allowances."""
    d.phase("warm", 80, Mix(BOTH))
    d.wait_grants(time.time())
    for site in SITES:
        d.cut(site)
    for site in SITES:
        d.wait_mode(site, "offline")
    d.phase("outage", 220, Mix(BOTH, spender=(SPENDER, 0.25, 100)))
    for site in SITES:
        d.heal(site)
    for site in SITES:
        d.wait_mode(site, "online", timeout=120)
    d.phase("after", 60, Mix(BOTH))


PROVIDER = "provider-1"


def promote_provider(d: Driver) -> None:
    """A provider (its jobs and panel) whose uplink to the primary is cut fails over to
    its site server; then it is promoted to a site server by configuration and restarted:
    the jobs it held stay held and are released afterwards, each charged once."""
    everywhere = {"site-1": 1.0, "site-2": 1.0, PROVIDER: 1.5}
    d.phase("warm", 70, Mix(everywhere))
    d.cut(PROVIDER)
    d.phase("failover", 90 + d.rng.randint(0, 20),
            Mix({"site-1": 0.5, "site-2": 0.5, PROVIDER: 2.0}))
    d.heal(PROVIDER)
    d.phase("back", 40, Mix(everywhere, print=0.45, release=0.0))
    d.promote(PROVIDER)
    d.phase("promoted", 100, Mix(everywhere, print=0.15, release=0.35))


def promote_provider_check(d: Driver) -> list[str]:
    """The provider failed over (its charges reached the primary through site-1), and
    jobs it held before its promotion were released and charged after it."""
    problems = []
    promoted_at = next(f["step"] for f in d.faults if f["action"] == "promote")
    before = {s.job_id for s in d.executor.log.submitted
              if s.site == PROVIDER and s.step < promoted_at}
    kept = [a for a in d.executor.log.acked if a.site == PROVIDER and a.kind == "print"
            and a.step >= promoted_at and int(a.ref) in before]
    if not kept:
        problems.append("no job held at the provider before its promotion was released after")
    site_db = Path(d.lab.endpoints["sites"][0]["state_dir"]) / "outpost.sqlite3"
    relayed = _query(site_db, "SELECT COUNT(*) FROM ledger WHERE origin = ?", PROVIDER)[0][0]
    if not relayed:
        problems.append(f"no charge of {PROVIDER} went through site-1 (no failover)")
    log.info("promote-provider: %d jobs held across the promotion released after it, "
             "%d charges relayed by site-1", len(kept), relayed)
    return problems


def double_spend_check(d: Driver) -> list[str]:
    """Offline, the spender's charges within the allowance were accepted at both sites
    (denying everything would keep the oracle quiet and be wrong)."""
    sites = {a.site for a in d.executor.log.acked if a.user == SPENDER and a.offline}
    return [] if sites == set(SITES) else [
        f"{SPENDER}'s offline spending was accepted only at {sorted(sites)}"]


SCENARIOS: dict[str, Scenario] = {s.name: s for s in [
    Scenario("wan-drop", "site-1's WAN link is cut mid-workload, users carry on, it returns",
             wan_drop, Requirements(wan=True, zero_mfd_errors=True)),
    Scenario("wan-flap", "site-1's link flaps (partition and down) for a hundred steps; "
             "site-2's flaps too", wan_flap, Requirements(wan=True, zero_mfd_errors=True)),
    Scenario("kill-site", "kill -9 of each site: after a commit before its answer "
             "(failpoint), after a checkpoint before saving it, and mid-request",
             kill_site, Requirements(failpoints=frozenset({"db.after_commit",
                                                           "site.push.acked"})),
             failpoints=lambda rng: {
                 "site-1": f"db.after_commit=kill@{rng.randint(150, 300)}",
                 "site-2": f"site.push.acked=kill@{rng.randint(5, 15)}"}),
    Scenario("kill-primary", "kill -9 of the primary after applying a batch before its "
             "answer, in the middle of a batch (failpoints), and between requests",
             kill_primary, Requirements(zero_mfd_errors=True, failpoints=frozenset({
                 "primary.batch.applied", "primary.batch.mid_apply"})),
             failpoints=lambda rng: {
                 "primary": f"primary.batch.applied=kill@{rng.randint(5, 15)}",
                 "primary@2": f"primary.batch.mid_apply=kill@{rng.randint(3, 10)}"}),
    Scenario("partition-double-spend", f"both sites partitioned; {SPENDER} spends big at "
             "both; spending stays within balance + allowances", partition_double_spend,
             Requirements(wan=True, zero_mfd_errors=True), offline_share=0.5,
             check=double_spend_check),
    Scenario("long-outage", "both sites offline for most of the workload, then one merge",
             long_outage, Requirements(wan=True, zero_mfd_errors=True)),
    Scenario("promote-provider", f"{PROVIDER}'s uplink to the primary is cut (it fails "
             "over to site-1), then it is promoted to a site server and restarted; its "
             "held jobs are released after", promote_provider, Requirements(), providers=1,
             check=promote_provider_check),
]}


# ---------------------------------------------------------------- settle, collect


def _query(db: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def settle(driver: Driver, timeout: float = SETTLE_TIMEOUT) -> None:
    """Heal every link; wait for every daemon up and every site online with an empty
    outbox (what it charged has reached the primary)."""
    driver._wan("POST", "/reset")
    driver.note("reset", "wan")
    lab = driver.lab
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = lab.endpoints
        ready = port_open(int(data["primary"]["sync"].split(":")[2].split("/")[0]))
        for site in data["sites"]:
            db = Path(site["state_dir"]) / "outpost.sqlite3"
            try:
                ready = ready and site_mode(Path(site["state_dir"])) == "online" and \
                    _query(db, "SELECT COUNT(*) FROM outbox")[0][0] == 0 and \
                    port_open(site["device_api_port"])
            except sqlite3.Error:
                ready = False
        for provider in data["providers"]:
            db = Path(provider["state_dir"]) / "outpost.sqlite3"
            try:   # a provider reports to whichever upstream is up: its outbox empties
                ready = ready and _query(db, "SELECT COUNT(*) FROM outbox")[0][0] == 0 and \
                    port_open(provider["device_api_port"])
            except sqlite3.Error:
                ready = False
        if ready:
            return
        time.sleep(0.2)
    raise ScenarioFailed(f"the lab did not settle within {timeout:.0f}s")


def collect(driver: Driver, scenario: str) -> Observed:
    data = driver.lab.endpoints
    primary_db = Path(data["primary"]["state_dir"]) / "outpost.sqlite3"
    ledger = [LedgerRow(*row) for row in _query(
        primary_db, "SELECT l.entry_id, a.name, l.amount, l.kind, l.source FROM ledger l "
                    "JOIN accounts a ON a.id = l.account_id")]
    quarantined = _query(primary_db, "SELECT COUNT(*) FROM sync_quarantine")[0][0]
    outages = _query(primary_db, "SELECT COUNT(*) FROM outage_reports")[0][0]
    site_jobs: dict[str, dict[int, SiteJob]] = {}
    printed: list[str] = []
    for site in [*data["sites"], *data["providers"]]:
        db = Path(site["state_dir"]) / "outpost.sqlite3"
        site_jobs[site["name"]] = {
            row[0]: SiteJob(row[1], row[2], row[3], row[4])
            for row in _query(db, "SELECT id, uuid, state, spool_name, name FROM jobs")}
        for mfd in site["mfds"]:
            for path in Path(mfd["output"]).iterdir():
                if path.is_file() and "-" in path.name:
                    printed.append(path.name.split("-", 1)[1])
    hits_path = Path(data["lab"]["failpoints_log"])
    hits = [line.split()[0] for line in hits_path.read_text().splitlines()] \
        if hits_path.exists() else []
    wl = driver.executor.log
    return Observed(
        scenario=scenario, seed=driver.seed,
        acked=[AckedCharge(a.site, a.kind, a.ref, a.user, a.offline) for a in wl.acked],
        submitted=[SubmittedJob(s.site, s.job_id, s.name) for s in wl.submitted],
        site_jobs=site_jobs, primary_ledger=ledger, printed=printed,
        allowances=allowances(driver), quarantined=quarantined, denied=wl.denied,
        mfd_errors=len(wl.errors), went_offline=bool(wl.offline_seen) or outages > 0,
        failpoints_hit=hits, workload_prefix=f"w{driver.seed}-")


def offline_allowances_available() -> bool:
    """Whether this build has offline allowances (`[offline]` at the primary)."""
    import importlib.util

    return importlib.util.find_spec("appliance.config_offline") is not None


def allowances(driver: Driver) -> dict[str, int]:
    """How far below zero each user may end at the primary beyond its balance: 0.

    The lab's policy is `past_allowance = "deny"` with accounts whose overdraft limit is
    0, so every grant was carved out of the balance (docs/offline-allowance.md: "the
    account's final balance is never below -overdraft_limit"). Without allowances (a
    build without them) the same bound applies: spending stays within the balance."""
    return {}


# ---------------------------------------------------------------- the command


def _documents(folder: Path) -> dict[int, Path]:
    from simulators.lab.workstation import make_pdf

    return {pages: make_pdf(folder / f"doc{pages}.pdf", pages) for pages in (1, 2, 3)}


def run_scenario(name: str, seed: int, *, as_json: bool = False,
                 directory: Path | None = None) -> int:
    scenario = SCENARIOS[name]
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(message)s")
    temporary = directory is None
    lab_dir = Path(tempfile.mkdtemp(prefix=f"outpost-run-{name}-")) if directory is None \
        else directory
    rng = random.Random(f"outpost-lab-run:{name}:{seed}")
    failpoints = scenario.failpoints(rng)
    started = time.monotonic()
    problems: list[str] = []
    verdict: dict[str, Any] = {}
    faults: list[dict[str, Any]] = []
    try:
        documents = _documents(lab_dir / "documents")
        with running_lab(lab_dir / "lab", sites=2, mfds=2, profile="fast",
                         providers=scenario.providers,
                         failpoints=failpoints, wan_seed=seed,
                         offline_share=scenario.offline_share
                         if offline_allowances_available() else None) as lab:
            executor = Executor(lambda: lab.endpoints, documents, seed)
            driver = Driver(lab, executor, seed, rng)
            for site in SITES:
                driver.wait_mode(site, "online")
            try:
                scenario.script(driver)
                settle(driver)
                problems += scenario.check(driver)
            except ScenarioFailed as exc:
                problems.append(str(exc))
            observed = collect(driver, name)
            faults = driver.faults
            (lab_dir / "workload.json").write_text(json.dumps(executor.log.to_json(), indent=1))
        verdict, found = judge(observed, scenario.requirements)
        problems += found
        errors = executor.log.errors
    finally:
        if temporary:
            shutil.rmtree(lab_dir, ignore_errors=True)
    elapsed = time.monotonic() - started
    lines = [f"scenario {name}, seed {seed}: {executor.log.steps} steps in {elapsed:.0f} s",
             f"failpoints armed: {json.dumps(failpoints)}",
             "faults (step, action, target):"]
    lines += [f"  {json.dumps(f)}" for f in faults]
    lines += [f"{key}: {value}" for key, value in verdict.items()]
    if errors:
        lines.append(f"errors seen by panels and IPP clients ({len(errors)}):")
        lines += [f"  {e}" for e in errors[:20]]
    lines += [f"PROBLEM: {p}" for p in problems[:50]]
    lines.append("ORACLE: " + ("holds" if not problems else "FAILED"))
    print("\n".join(lines), flush=True)
    if as_json:
        print(json.dumps(verdict), flush=True)
    return 0 if not problems else 1

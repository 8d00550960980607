"""A seeded workload of users printing (IPP), releasing and copying (device API), and the
log of what the panels and IPP clients were told.

`plan(...)` turns a seed into steps, decided from the seed alone (never from timing or
from answers): who does what, at which site and MFD, how many pages. `Executor` plays
them against a lab through its public wires only (the panel client, an IPP client),
one at a time, and records every acknowledged charge, every policy refusal and every
error (5xx, timeouts, resets, refusals other than by policy). A step that hits a
broken connection is retried as a device would: a usage report with the same id (the
site answers a replay as a duplicate), a release by listing again; an IPP submission
is not retried (IPP has no idempotency key), it is counted as an error.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import random
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from simulators.lab.workstation import PrintRefused, print_file
from simulators.mfd.panel import Panel, PanelUnavailable

log = logging.getLogger("outpost.lab.workload")

#: Refusals by policy (not errors): the balance, and offline-allowance refusals
#: (docs/offline-allowance.md names its codes; any of these is a refusal by policy).
POLICY_CODES = frozenset({
    "insufficient_balance", "allowance_exceeded", "offline_allowance_exceeded",
    "offline_denied", "offline_limit", "over_allowance", "unknown_user_offline",
    "allowance_exhausted", "offline_unknown_user", "offline_allowance_exhausted",
    "offline_user_unknown",
})

#: How long a step keeps retrying while its site is unreachable (a restart).
RETRY_FOR = 90.0


@dataclass(frozen=True)
class Step:
    index: int
    phase: str
    action: str        # "print", "release", "copy"
    site: str
    user: str
    mfd: str           # where a release or a copy happens (printing goes to Find-Me)
    pages: int         # copy: pages; print: the document's pages
    colour: bool
    login: str         # "card", "card+pin", "pin"
    copies: int = 1


@dataclass(frozen=True)
class Mix:
    """What a phase's steps do: weights of actions and of sites, pages per copy."""

    sites: dict[str, float]
    copy: float = 0.55
    print: float = 0.25
    release: float = 0.20
    copy_pages: tuple[int, int] = (1, 5)
    #: Users who spend big (partition-double-spend): (username, share of steps, pages).
    spender: tuple[str, float, int] | None = None


def plan(seed: int, phase: str, start: int, count: int, mix: Mix,
         mfds: dict[str, list[str]], users: Sequence[str],
         held: dict[tuple[str, str], int]) -> list[Step]:
    """`count` steps numbered from `start`, decided by (seed, phase) alone.

    `held` (site, user) -> jobs printed and not yet released, carried from phase to
    phase, so that a release is planned only for someone with something to release.
    """
    rng = random.Random(f"outpost-lab:{seed}:{phase}")
    site_names = sorted(mix.sites)
    site_weights = [mix.sites[s] for s in site_names]
    steps = []
    for index in range(start, start + count):
        if mix.spender is not None and rng.random() < mix.spender[1]:
            user, _, pages = mix.spender
            site = site_names[index % len(site_names)]
            steps.append(Step(index, phase, "copy", site, user, rng.choice(mfds[site]),
                              pages, False, "card"))
            continue
        site = rng.choices(site_names, site_weights)[0]
        user = rng.choice(list(users))
        action = rng.choices(["copy", "print", "release"],
                             [mix.copy, mix.print, mix.release])[0]
        if action == "release" and held.get((site, user), 0) == 0:
            waiting = sorted(k for k, v in held.items() if v and k[0] == site)
            if waiting:
                user = rng.choice(waiting)[1]
            else:
                action = "print"
        login = rng.choices(["card", "card+pin", "pin"], [0.7, 0.15, 0.15])[0]
        mfd = rng.choice(mfds[site])
        if action == "copy":
            steps.append(Step(index, phase, "copy", site, user, mfd,
                              rng.randint(*mix.copy_pages), rng.random() < 0.2, login))
        elif action == "print":
            held[(site, user)] = held.get((site, user), 0) + 1
            steps.append(Step(index, phase, "print", site, user, mfd, rng.choice([1, 2, 3]),
                              False, login, copies=rng.choice([1, 1, 1, 2])))
        else:
            held[(site, user)] = 0
            steps.append(Step(index, phase, "release", site, user, mfd, 0, False, login))
    return steps


@dataclass
class Ack:
    """A charge acknowledged to a panel (copy, release) — what the oracle must find."""

    step: int
    site: str
    kind: str          # "copy" (ref: usage id) or "print" (ref: the site's job id)
    ref: str
    user: str
    amount: int
    offline: bool


@dataclass
class Submitted:
    step: int
    site: str
    job_id: int
    name: str
    user: str


@dataclass
class WorkloadLog:
    acked: list[Ack] = field(default_factory=list)
    submitted: list[Submitted] = field(default_factory=list)
    denied: int = 0
    errors: list[str] = field(default_factory=list)
    steps: int = 0
    offline_seen: set[str] = field(default_factory=set)

    def to_json(self) -> dict[str, Any]:
        return {"acked": [asdict(a) for a in self.acked],
                "submitted": [asdict(s) for s in self.submitted], "denied": self.denied,
                "errors": self.errors, "steps": self.steps,
                "offline_seen": sorted(self.offline_seen)}


def site_mode(state_dir: Path) -> str | None:
    """The site's link mode as it keeps it (read-only, as an administrator would)."""
    path = state_dir / "outpost.sqlite3"
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
        try:
            row = conn.execute("SELECT value FROM sync_state WHERE key = 'mode'").fetchone()
        finally:
            conn.close()
    except sqlite3.Error:
        return None
    return str(row[0]) if row else None


class Executor:
    """Plays steps against a lab (its endpoints.json), one at a time."""

    def __init__(self, endpoints: Callable[[], dict[str, Any]], documents: dict[int, Path],
                 seed: int) -> None:
        self._endpoints = endpoints
        self.documents = documents
        self.seed = seed
        self.log = WorkloadLog()
        data = endpoints()
        self.users = {u["username"]: u for u in data["users"]}
        #: Where users print, release and copy: the sites, and the providers' queues and
        #: panels (a provider serves them as a site does).
        self.sites = {s["name"]: s for s in [*data["sites"], *data.get("providers", [])]}
        #: Called before each step with its index (scenarios hang faults here).
        self.before_step: Callable[[Step], None] | None = None

    def run(self, steps: Sequence[Step]) -> None:
        for step in steps:
            if self.before_step is not None:
                self.before_step(step)
            self.log.steps += 1
            offline_before = self._offline(step.site)
            acks = {"copy": self._copy, "print": self._print, "release": self._release}[
                step.action](step)
            offline = offline_before and self._offline(step.site)
            for ack in acks:
                ack.offline = offline
                self.log.acked.append(ack)

    def _offline(self, site: str) -> bool:
        offline = site_mode(Path(self.sites[site]["state_dir"])) == "offline"
        if offline:
            self.log.offline_seen.add(site)
        return offline

    def _error(self, step: Step, what: str) -> None:
        self.log.errors.append(f"step {step.index} {step.action} at {step.site}/{step.mfd} "
                               f"({step.user}): {what}")

    def _refused(self, step: Step, answer: dict[str, Any], status: int | None) -> None:
        """An answer with ok false: by policy (denied) or an error."""
        code = (answer.get("error") or {}).get("code")
        if code in POLICY_CODES:
            self.log.denied += 1
        else:
            self._error(step, f"HTTP {status} {code}: {(answer.get('error') or {}).get('message')}")

    def _login(self, step: Step) -> Panel | None:
        site = self.sites[step.site]
        user = self.users[step.user]
        panel = Panel(site["device_api"], step.mfd, timeout=30)
        if step.login == "card":
            answer = panel.login_card(user["card"])
        elif step.login == "card+pin":
            answer = panel.login_card(user["card"], user["pin"])
        else:
            answer = panel.login_pin(step.user, user["pin"])
        if not answer.get("ok"):
            self._refused(step, answer, panel.last_status)
            return None
        return panel

    def _retrying(self, step: Step, attempt: Callable[[], list[Ack] | None]) -> list[Ack]:
        """Run `attempt` until it answers (None: refused), retrying broken connections."""
        deadline = time.monotonic() + RETRY_FOR
        while True:
            try:
                return attempt() or []
            except PanelUnavailable as exc:
                self._error(step, f"unreachable: {exc}")
                if time.monotonic() > deadline:
                    return []
                time.sleep(0.5)

    def _copy(self, step: Step) -> list[Ack]:
        usage_id = f"{step.mfd}:copy:{self.seed}-{step.index}"

        def attempt() -> list[Ack] | None:
            panel = self._login(step)
            if panel is None:
                return None
            try:
                job = {"pages": step.pages, "colour": step.colour, "sides": "one-sided"}
                auth = panel._call("POST", "/copy/authorize", job)
                if not auth.get("ok"):
                    self._refused(step, auth, panel.last_status)
                    return None
                pages = step.pages if auth.get("allowed") else auth.get("max_pages")
                if not isinstance(pages, int) or pages <= 0:
                    self.log.denied += 1   # the balance does not allow a single page
                    return None
                body = {"id": usage_id, "kind": "copy", "pages": pages, "colour": step.colour,
                        "sides": "one-sided"}
                answer = panel.report_usage(body)
                if not answer.get("ok"):
                    self._refused(step, answer, panel.last_status)
                    return None
                if pages < step.pages:
                    self.log.denied += 1   # partly refused by the balance
                return [Ack(step.index, step.site, "copy", usage_id, step.user,
                            int(answer.get("charged", 0)), False)]
            finally:
                _logout(panel)

        return self._retrying(step, attempt)

    def _print(self, step: Step) -> list[Ack]:
        name = f"w{self.seed}-{step.index:05d}"
        site = self.sites[step.site]
        try:
            job_id = print_file(site["ipp"], step.user, self.documents[step.pages],
                                copies=step.copies, job_name=name,
                                document_format="application/pdf", timeout=30)
        except PrintRefused as exc:
            if exc.status >= 0x0500:
                self._error(step, f"IPP {exc}")
            else:
                self._error(step, f"IPP refused: {exc}")
            return []
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self._error(step, f"IPP unreachable: {exc}")
            return []
        self.log.submitted.append(Submitted(step.index, step.site, job_id, name, step.user))
        return []

    def _release(self, step: Step) -> list[Ack]:
        def attempt() -> list[Ack] | None:
            panel = self._login(step)
            if panel is None:
                return None
            try:
                answer = panel.release("all", timeout=120)
                acks = [Ack(step.index, step.site, "print", str(job_id), step.user, 0, False)
                        for job_id in answer.get("released") or []]
                for failed in answer.get("failed") or []:
                    self._refused(step, failed, panel.last_status)
                if not answer.get("ok") and not answer.get("failed") and not acks:
                    self._refused(step, answer, panel.last_status)
                if answer.get("processing"):
                    self._error(step, f"still processing after the follow timeout: "
                                      f"{answer['processing']}")
                return acks
            finally:
                _logout(panel)

        return self._retrying(step, attempt)


def _logout(panel: Panel) -> None:
    with contextlib.suppress(PanelUnavailable):
        panel.logout()

"""`make demo`: a morning at two branches and their primary, with an outage, over a real
lab, ending with a report.

A primary and two sites (each with two simulated MFDs) run as processes; each site's
link to the primary goes through the WAN simulator. Users print with CUPS's `lp` and
over IPP, release at the MFDs by card, card + PIN, username + PIN and password, copy;
one release hits a jammed MFD and is released at the other. Mid-morning site-1's WAN
link is cut: the site goes offline and its users carry on printing, releasing and
copying. The link returns, the site merges its offline log into the primary, and the
report shows the outage, the offline events, the merge, and the cross-checks: every
acknowledged charge in the primary's ledger exactly once, documents byte-identical,
balances equal at the primary, the site and the panel.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.request
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
from simulators.lab.runner import RunningLab, running_lab
from simulators.lab.workload import site_mode
from simulators.lab.workstation import make_pdf, print_file
from simulators.mfd.panel import Panel


@dataclass
class Step:
    who: str
    what: str
    outcome: str


@dataclass
class Demo:
    lab: RunningLab
    docs: Path
    steps: list[Step] = field(default_factory=list)
    acked: list[AckedCharge] = field(default_factory=list)
    submitted: list[SubmittedJob] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    outage: dict[str, float] = field(default_factory=dict)
    copies: int = 0

    @property
    def endpoints(self) -> dict[str, Any]:
        return self.lab.endpoints

    def site(self, name: str) -> dict[str, Any]:
        site: dict[str, Any] = next(s for s in self.endpoints["sites"] if s["name"] == name)
        return site

    def user(self, name: str) -> dict[str, Any]:
        return self.lab.user(name)

    def offline(self, site: str) -> bool:
        return site_mode(Path(self.site(site)["state_dir"])) == "offline"

    def panel(self, site: str, mfd: str) -> Panel:
        return Panel(self.site(site)["device_api"], mfd)

    def log(self, who: str, what: str, outcome: str) -> None:
        self.steps.append(Step(who, what, outcome))
        print(f"  {who:<6} {what:<58} {outcome}", flush=True)

    def lp(self, site: str, user: str, path: Path, *options: str) -> None:
        port = self.site(site)["ipp_port"]
        name = f"{path.stem}-{user}-{len(self.submitted) + 1}"
        out = subprocess.run(
            ["lp", "-h", f"127.0.0.1:{port}", "-d", "findme", "-U", user, "-t", name,
             *options, str(path)],
            capture_output=True, text=True, timeout=60,
        )
        if out.returncode == 0:
            outcome = out.stdout.strip()
            job_id = int(outcome.split("findme-")[1].split()[0]) if "findme-" in outcome else 0
            self.submitted.append(SubmittedJob(site, job_id, name))
        else:
            outcome = f"FAILED: {out.stderr.strip()}"
        self.log(user, f"lp {' '.join(options)} {path.name} to {site}".replace("  ", " "),
                 outcome)

    def ipp(self, site: str, user: str, path: Path, **options: Any) -> None:
        name = f"{path.stem}-{user}-{len(self.submitted) + 1}"
        job_id = print_file(self.site(site)["ipp"], user, path, job_name=name, **options)
        self.submitted.append(SubmittedJob(site, job_id, name))
        described = ", ".join(f"{k}={v}" for k, v in options.items())
        self.log(user, f"IPP Print-Job {path.name} to {site}"
                 + (f" ({described})" if described else ""), f"held as job {job_id}")

    def release(self, site: str, mfd: str, user: str, how: str) -> dict[str, Any]:
        u = self.user(user)
        with self.panel(site, mfd) as panel:
            if how == "card":
                panel.login_card(u["card"])
            elif how == "card+pin":
                panel.login_card(u["card"], u["pin"])
            elif how == "pin":
                panel.login_pin(user, u["pin"])
            else:
                panel.login_password(user, u["password"])
            offline = self.offline(site)
            result = panel.release("all")
            for job_id in result.get("released") or []:
                self.acked.append(AckedCharge(site, "print", str(job_id), user, offline))
            panel.logout()
        error = result.get("error") or {}
        outcome = (f"released {result.get('released')}, charged {result.get('charged')}"
                   if result.get("ok") else
                   f"{error.get('code')}: {error.get('message')}; charged {result.get('charged')}")
        self.log(user, f"{how} at {mfd}: release all" + (" (site offline)" if offline else ""),
                 outcome)
        return result

    def copy(self, site: str, mfd: str, user: str, pages: int, colour: bool = False) -> None:
        u = self.user(user)
        self.copies += 1
        usage_id = f"{mfd}:copy:demo-{self.copies}"
        with self.panel(site, mfd) as panel:
            panel.login_card(u["card"])
            offline = self.offline(site)
            auth = panel._call("POST", "/copy/authorize", {"pages": pages, "colour": colour,
                                                           "sides": "one-sided"})
            usage = panel.report_usage({"id": usage_id, "kind": "copy", "pages": pages,
                                        "colour": colour, "sides": "one-sided"}) \
                if auth.get("allowed") else {"ok": False, "charged": 0}
            if usage.get("ok"):
                self.acked.append(AckedCharge(site, "copy", usage_id, user, offline))
            panel.logout()
        self.log(user, f"copy {pages} {'colour' if colour else 'mono'} pages at {mfd}"
                 + (" (site offline)" if offline else ""),
                 f"allowed {auth.get('allowed')}, charged {usage.get('charged')}")

    def fault(self, site: str, mfd: str, body: dict[str, Any]) -> None:
        control = next(m for m in self.site(site)["mfds"] if m["name"] == mfd)["control"]
        request = urllib.request.Request(f"{control}/fault", data=json.dumps(body).encode(),
                                         headers={"Content-Type": "application/json"},
                                         method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass
        self.log("admin", f"{mfd}: fault {body['mode']}", json.dumps(body))

    def wan(self, method: str, path: str, body: dict[str, Any] | None = None) -> None:
        request = urllib.request.Request(
            self.endpoints["wan"]["api"] + path, method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=10):
            pass

    def wait(self, what: str, check: Any, timeout: float = 60.0) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if check():
                return time.monotonic() - started
            time.sleep(0.05)
        raise TimeoutError(f"the demo waited {timeout:.0f} s for {what}")


def query(state_dir: str, sql: str, *args: Any) -> list[sqlite3.Row]:
    conn = sqlite3.connect(f"file:{Path(state_dir) / 'outpost.sqlite3'}?mode=ro", uri=True,
                           timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def scenario(demo: Demo) -> None:
    docs = demo.docs
    report = make_pdf(docs / "report.pdf", 3)
    slides = make_pdf(docs / "slides.pdf", 2, frozenset({1, 2}))
    handbook = make_pdf(docs / "handbook.pdf", 4)
    memo = make_pdf(docs / "memo.pdf", 1)
    minutes = make_pdf(docs / "minutes.pdf", 2)

    print("\n08:55  Both branches online. Workstations print to the Find-Me queues:")
    demo.lp("site-1", "alice", report)
    demo.ipp("site-1", "bob", slides, copies=2)
    demo.ipp("site-2", "frank", memo)
    demo.ipp("site-2", "grace", handbook, sides="two-sided-long-edge")
    time.sleep(1.0)  # let the colour analysis finish so the panel shows final costs
    demo.release("site-1", "s1-mfd-1", "alice", "card")
    demo.release("site-2", "s2-mfd-1", "frank", "pin")
    demo.copy("site-2", "s2-mfd-2", "grace", 2)

    proxy = demo.endpoints["wan"]["links"]["site-1"]
    print(f"\n09:10  site-1's WAN link is cut (WAN simulator: partition on {proxy}):")
    for stream in ("upstream", "downstream"):
        demo.wan("POST", f"/proxies/{proxy}/toxics",
                 {"name": f"partition_{stream}", "type": "partition", "stream": stream})
    cut_at = time.time()
    took = demo.wait("site-1 to go offline", lambda: demo.offline("site-1"))
    demo.outage["cut_at"] = cut_at
    demo.log("site-1", "heartbeats to the primary go unanswered",
             f"OFFLINE after {took:.1f} s; MFDs and queues carry on")

    print("\n09:11  At site-1, offline, users keep printing, releasing and copying:")
    carol, dave, erin = "carol", "dave", "erin"
    demo.lp("site-1", carol, handbook, "-o", "sides=two-sided-long-edge")
    demo.lp("site-1", dave, memo, "-n", "2")
    demo.ipp("site-1", erin, minutes)
    time.sleep(1.0)
    demo.release("site-1", "s1-mfd-2", "bob", "pin")
    demo.fault("site-1", "s1-mfd-1", {"mode": "jam", "after_pages": 1, "once": True})
    demo.release("site-1", "s1-mfd-1", carol, "card+pin")
    demo.release("site-1", "s1-mfd-2", carol, "password")
    demo.release("site-1", "s1-mfd-2", dave, "card")
    demo.copy("site-1", "s1-mfd-2", dave, 5, colour=True)
    demo.release("site-1", "s1-mfd-1", erin, "card")
    demo.copy("site-1", "s1-mfd-1", erin, 3)
    demo.copy("site-1", "s1-mfd-1", "alice", 4)
    outbox = query(demo.site("site-1")["state_dir"], "SELECT COUNT(*) FROM outbox")[0][0]
    demo.log("site-1", "events waiting in the outbox", str(outbox))
    print("\n09:20  Meanwhile site-2 is online as usual:")
    demo.ipp("site-2", "heidi", report)
    time.sleep(0.5)
    demo.release("site-2", "s2-mfd-2", "heidi", "card")
    demo.copy("site-2", "s2-mfd-1", "ivan", 6)

    print("\n09:30  site-1's link returns:")
    for stream in ("upstream", "downstream"):
        demo.wan("DELETE", f"/proxies/{proxy}/toxics/partition_{stream}")
    demo.outage["healed_at"] = time.time()
    took = demo.wait("site-1 to come back online", lambda: not demo.offline("site-1"))
    demo.log("site-1", "heartbeats answered again", f"ONLINE after {took:.1f} s")
    site1 = demo.site("site-1")["state_dir"]
    took = demo.wait("site-1's outbox to drain",
                     lambda: query(site1, "SELECT COUNT(*) FROM outbox")[0][0] == 0)
    demo.log("site-1", "outbox pushed to the primary", f"drained in {took:.1f} s")
    primary = demo.endpoints["primary"]["state_dir"]
    demo.wait("the primary to close the outage report", lambda: bool(query(
        primary, "SELECT 1 FROM outage_reports WHERE site = 'site-1' AND merged_at "
                 "IS NOT NULL")))
    for site in ("site-2",):
        state = demo.site(site)["state_dir"]
        demo.wait(f"{site}'s outbox to drain",
                  lambda s=state: query(s, "SELECT COUNT(*) FROM outbox")[0][0] == 0)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_report(demo: Demo) -> tuple[str, bool]:
    """The report, and whether every cross-check held."""
    data = demo.endpoints
    primary = data["primary"]["state_dir"]
    users = {u["username"]: u for u in data["users"]}
    lines = ["", "=" * 78, "OUTPOST DEMO REPORT — a primary, site-1 and site-2", "=" * 78]
    ok = True
    site_jobs: dict[str, dict[int, SiteJob]] = {}
    printed: list[str] = []
    outputs: list[Path] = []
    for site in data["sites"]:
        state = site["state_dir"]
        lines += ["", f"{site['name']} — jobs:",
                  f"  {'id':>3} {'owner':<6} {'name':<20} {'pages':>5} {'copies':>6} "
                  f"{'colour':<6} {'state':<10} {'device':<9} {'charged':>7}"]
        site_jobs[site["name"]] = {}
        for job in query(state, "SELECT * FROM jobs ORDER BY id"):
            site_jobs[site["name"]][job["id"]] = SiteJob(job["uuid"], job["state"],
                                                         job["spool_name"], job["name"])
            lines.append(
                f"  {job['id']:>3} {job['owner']:<6} {job['name'][:20]:<20} "
                f"{job['pages']!s:>5} {job['copies']:>6} {'yes' if job['colour'] else 'no':<6} "
                f"{job['state']:<10} {job['device'] or '-':<9} {job['charged']:>7}")
        for mfd in site["mfds"]:
            for path in sorted(Path(mfd["output"]).iterdir()):
                if path.is_file():
                    outputs.append(path)
                    printed.append(path.name.split("-", 1)[1])

    lines += ["", "The outage (as the primary recorded it):"]
    reports = query(primary, "SELECT * FROM outage_reports ORDER BY id")
    for r in reports:
        lines.append(
            f"  {r['site']}: offline {r['ended_at'] - r['started_at']:.1f} s, "
            f"events merged {r['events_merged']}, duplicates ignored {r['duplicates']}, "
            f"quarantined {r['quarantined']}, merge closed "
            f"{(r['merged_at'] or 0) - r['ended_at']:.1f} s after the link returned")
    ok &= any(r["site"] == "site-1" and r["merged_at"] for r in reports)
    offline_acked = [a for a in demo.acked if a.offline]
    lines += ["", f"Charges acknowledged to site-1's panels while it was offline: "
                  f"{len(offline_acked)}.",
              "Ledger rows site-1 wrote during the outage (a jammed job's partial print is "
              "one more), and how many times each is in the primary's ledger:"]
    site1_offline = query(
        data["sites"][0]["state_dir"],
        "SELECT entry_id, amount, source FROM ledger WHERE origin IS NULL AND kind = 'charge' "
        "AND created_at >= ? AND created_at <= ? ORDER BY id",
        demo.outage.get("cut_at", 0), demo.outage.get("healed_at", 0))
    for row in site1_offline:
        merged = query(primary, "SELECT COUNT(*) FROM ledger WHERE entry_id = ?",
                       f"site-1/{row['entry_id']}")[0][0]
        lines.append(f"  {row['source']:<5} {row['entry_id'][:52]:<52} {row['amount']:>5}  "
                     f"at the primary: {merged}")

    ledger = [LedgerRow(*r) for r in query(
        primary, "SELECT l.entry_id, a.name, l.amount, l.kind, l.source FROM ledger l "
                 "JOIN accounts a ON a.id = l.account_id")]
    verdict, problems = judge(Observed(
        scenario="demo", seed=0, acked=demo.acked, submitted=demo.submitted,
        site_jobs=site_jobs, primary_ledger=ledger, printed=printed,
        quarantined=query(primary, "SELECT COUNT(*) FROM sync_quarantine")[0][0],
        went_offline=bool(reports), workload_prefix=""), Requirements(min_acked=0))
    ok &= not problems

    lines += ["", "Balances (opening → now; the primary's ledger, the site's, the panel's):"]
    balance_ok = True
    spenders = sorted({a.user for a in demo.acked})
    for name in spenders:
        user = users[name]

        def balance(state: str, account: str = f"user:{name}") -> tuple[int, int]:
            row = query(state, "SELECT COALESCE(SUM(l.amount), 0) AS b, COALESCE(SUM("
                               "CASE WHEN l.kind = 'charge' THEN -l.amount ELSE 0 END), 0) "
                               "AS spent FROM accounts a LEFT JOIN ledger l "
                               "ON l.account_id = a.id WHERE a.name = ?", account)[0]
            return int(row["b"]), int(row["spent"])

        at_primary, spent = balance(primary)
        at_sites = [balance(s["state_dir"])[0] for s in data["sites"]]
        with Panel(data["sites"][0]["device_api"], "s1-mfd-1") as panel:
            panel.login_card(user["card"])
            panel_balance = panel.balance()["balance"]
        consistent = (panel_balance == at_primary == user["balance"] - spent
                      and all(b == at_primary for b in at_sites))
        balance_ok &= consistent
        lines.append(f"  {name:<6} {user['balance']:>6} → {at_primary:>6}  spent {spent:>4}  "
                     f"sites {at_sites} panel [{panel_balance}] "
                     f"{'ok' if consistent else 'MISMATCH'}")
    ok &= balance_ok
    sources = {_sha256(p) for p in demo.docs.glob("*.pdf")}
    identical = all(_sha256(p) in sources for p in outputs)
    ok &= identical
    completed = sum(1 for jobs in site_jobs.values() for j in jobs.values()
                    if j.state == "completed")
    held = sum(1 for jobs in site_jobs.values() for j in jobs.values() if j.state == "held")
    lines += [
        "",
        "Checks:",
        f"  charges acknowledged to panels: {verdict['acked_charges']} "
        f"({len(offline_acked)} while site-1 was offline); "
        f"charges in the primary's ledger: {verdict['primary_ledger_charges']}",
        f"  lost (acknowledged, missing at the primary): {verdict['lost']}",
        f"  doubled (an id, a job or a print more than once): {verdict['doubled']}",
        f"  quarantined at the primary: {verdict['quarantined']}",
        f"  jobs printed: {completed}, still held: {held}, acknowledged jobs lost: "
        f"{verdict['jobs_lost']}",
        f"  documents in MFD output folders: {len(outputs)}, byte-identical to what was "
        f"printed: {'yes' if identical else 'NO'}",
        f"  every balance = opening balance − charges, the same at the primary, at both "
        f"sites and on the panel: {'yes' if balance_ok else 'NO'}",
    ]
    lines += [f"  PROBLEM: {p}" for p in problems]
    lines += ["", "RESULT: " + ("OK" if ok else "FAILED")]
    return "\n".join(lines), ok


def run_demo(directory: Path | None) -> int:
    if shutil.which("lp") is None or shutil.which("gs") is None:
        print("the demo needs `lp` (cups-client) and `gs` (ghostscript): run `make setup`",
              file=sys.stderr)
        return 2
    temporary = directory is None
    lab_dir = Path(tempfile.mkdtemp(prefix="outpost-demo-")) if directory is None else directory
    print(f"Starting a lab in {lab_dir}: a primary, two sites with two simulated MFDs each, "
          "ten users, every site's uplink through the WAN simulator ...", flush=True)
    try:
        with running_lab(lab_dir, mfds=2, sites=2, profile="demo") as lab:
            demo = Demo(lab, lab_dir / "documents")
            scenario(demo)
            report, ok = build_report(demo)
        print(report, flush=True)
        return 0 if ok else 1
    finally:
        if temporary:
            shutil.rmtree(lab_dir, ignore_errors=True)

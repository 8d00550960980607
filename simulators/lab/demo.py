"""`make demo`: a scripted morning at a branch, over a real lab, ending with a report.

Users print with CUPS's `lp` and over IPP; they release at MFDs by card, card +
PIN, username + PIN and password; one release hits a jammed MFD and is
released at the other; users copy. The report is built from what the panels
and the MFDs saw, cross-checked against the site's ledger.
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulators.lab.runner import RunningLab, running_lab
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

    @property
    def endpoints(self) -> dict[str, Any]:
        return self.lab.endpoints

    @property
    def site(self) -> dict[str, Any]:
        return self.lab.site

    def user(self, name: str) -> dict[str, Any]:
        return self.lab.user(name)

    def panel(self, mfd: str) -> Panel:
        return Panel(self.site["device_api"], mfd)

    def log(self, who: str, what: str, outcome: str) -> None:
        self.steps.append(Step(who, what, outcome))
        print(f"  {who:<6} {what:<52} {outcome}", flush=True)

    def lp(self, user: str, path: Path, *options: str) -> None:
        port = self.site["ipp_port"]
        out = subprocess.run(
            ["lp", "-h", f"127.0.0.1:{port}", "-d", "findme", "-U", user, "-t", path.name,
             *options, str(path)],
            capture_output=True, text=True, timeout=60,
        )
        outcome = (out.stdout.strip() or out.stderr.strip()) if out.returncode == 0 else (
            f"FAILED: {out.stderr.strip()}")
        self.log(user, f"lp {' '.join(options)} {path.name}".replace("  ", " "), outcome)

    def ipp(self, user: str, path: Path, **options: Any) -> None:
        job_id = print_file(self.site["ipp"], user, path, **options)
        described = ", ".join(f"{k}={v}" for k, v in options.items())
        self.log(user, f"IPP Print-Job {path.name} ({described})", f"held as job {job_id}")

    def fault(self, mfd: str, body: dict[str, Any]) -> None:
        self.lab.set_fault(mfd, body)
        self.log("admin", f"{mfd}: fault {body['mode']}", json.dumps(body))


def scenario(demo: Demo) -> None:
    docs = demo.docs
    report = make_pdf(docs / "report.pdf", 3)
    slides = make_pdf(docs / "slides.pdf", 2, frozenset({1, 2}))
    handbook = make_pdf(docs / "handbook.pdf", 4)
    memo = make_pdf(docs / "memo.pdf", 1)

    print("\nWorkstations print to the Find-Me queue:")
    demo.lp("alice", report)
    demo.ipp("bob", slides, copies=2)
    demo.ipp("carol", handbook, sides="two-sided-long-edge")
    demo.lp("dave", memo, "-n", "2")
    time.sleep(1.0)  # let the colour analysis finish so the panel shows final costs

    print("\nUsers release at the MFDs:")
    alice, bob, carol, dave, erin = (demo.user(n) for n in
                                     ("alice", "bob", "carol", "dave", "erin"))
    with demo.panel("mfd-1") as panel:
        panel.login_card(alice["card"])
        jobs = panel.jobs()["jobs"]
        demo.log("alice", "card at mfd-1: list held jobs",
                 ", ".join(f"#{j['id']} {j['name']} {j['pages']}p cost {j['cost']}" for j in jobs))
        result = panel.release("all")
        demo.log("alice", "release all at mfd-1",
                 f"released {result['released']}, charged {result['charged']}")
        panel.logout()
    with demo.panel("mfd-2") as panel:
        panel.login_pin(bob["username"], bob["pin"])
        result = panel.release("all")
        demo.log("bob", "username + PIN at mfd-2: release all",
                 f"released {result['released']}, charged {result['charged']}")
        panel.logout()

    demo.fault("mfd-1", {"mode": "jam", "after_pages": 1, "once": True})
    with demo.panel("mfd-1") as panel:
        panel.login_card(carol["card"], carol["pin"])
        result = panel.release("all")
        error = result.get("error") or {}
        demo.log("carol", "card + PIN at mfd-1: release all",
                 f"{error.get('code')}: {error.get('message')}; charged {result.get('charged')}")
        panel.logout()
    with demo.panel("mfd-2") as panel:
        panel.login_password(carol["username"], carol["password"])
        jobs = panel.jobs()["jobs"]
        result = panel.release("all")
        demo.log("carol", "password at mfd-2: release the same job",
                 f"released {result['released']}, charged {result['charged']}")
        panel.logout()
    with demo.panel("mfd-2") as panel:
        panel.login_card(dave["card"])
        result = panel.release("all")
        demo.log("dave", "card at mfd-2: release all",
                 f"released {result['released']}, charged {result['charged']}")
        copy = panel.copy(5, colour=True)
        demo.log("dave", "copy 5 colour pages at mfd-2",
                 f"allowed {copy.get('allowed')}, charged {copy.get('charged')}")
        panel.logout()
    with demo.panel("mfd-1") as panel:
        panel.login_card(erin["card"])
        copy = panel.copy(3)
        demo.log("erin", "copy 3 mono pages at mfd-1",
                 f"allowed {copy.get('allowed')}, charged {copy.get('charged')}")
        panel.logout()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_report(demo: Demo) -> tuple[str, bool]:
    """The report, and whether every cross-check held."""
    db = Path(demo.site["state_dir"]) / "outpost.sqlite3"
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    users = {u["username"]: u for u in demo.endpoints["users"]}
    lines = ["", "=" * 78, "OUTPOST DEMO REPORT — site-1", "=" * 78, "", "Jobs:"]
    lines.append(f"  {'id':>3} {'owner':<6} {'name':<13} {'pages':>5} {'copies':>6} "
                 f"{'sides':<20} {'colour':<6} {'state':<10} {'device':<6} {'charged':>7}")
    ok = True
    for job in conn.execute("SELECT * FROM jobs ORDER BY id"):
        lines.append(
            f"  {job['id']:>3} {job['owner']:<6} {job['name'][:13]:<13} {job['pages']!s:>5} "
            f"{job['copies']:>6} {job['sides']:<20} {'yes' if job['colour'] else 'no':<6} "
            f"{job['state']:<10} {job['device'] or '-':<6} {job['charged']:>7}")
    lines += ["", "Ledger (charges, newest last):"]
    for row in conn.execute("SELECT l.*, a.name AS account FROM ledger l JOIN accounts a "
                            "ON a.id = l.account_id WHERE l.kind = 'charge' ORDER BY l.id"):
        lines.append(f"  {row['account']:<12} {row['source']:<6} {row['device'] or '-':<6} "
                     f"impressions {row['impressions']!s:>3}  amount {row['amount']:>5}")
    lines += ["", "Balances (opening → now, from the ledger; panel view in brackets):"]
    for name, user in users.items():
        row = conn.execute(
            "SELECT COALESCE(SUM(l.amount), 0) AS b, "
            "COALESCE(SUM(CASE WHEN l.kind = 'charge' THEN -l.amount ELSE 0 END), 0) AS spent "
            "FROM accounts a LEFT JOIN ledger l ON l.account_id = a.id WHERE a.name = ?",
            (f"user:{name}",)).fetchone()
        if row["spent"] == 0 and name not in ("alice", "bob", "carol", "dave", "erin"):
            continue
        with demo.panel("mfd-1") as panel:
            panel.login_card(user["card"])
            panel_balance = panel.balance()["balance"]
            panel.logout()
        consistent = panel_balance == row["b"] == user["balance"] - row["spent"]
        ok &= consistent
        lines.append(f"  {name:<6} {user['balance']:>6} → {row['b']:>6}  spent {row['spent']:>4}"
                     f"  [{panel_balance}] {'ok' if consistent else 'MISMATCH'}")
    charges = conn.execute("SELECT entry_id, COUNT(*) c FROM ledger GROUP BY entry_id "
                           "HAVING c > 1").fetchall()
    ok &= not charges
    outputs = []
    for mfd in demo.site["mfds"]:
        outputs += sorted(Path(mfd["output"]).iterdir())
    sources = {_sha256(p) for p in demo.docs.glob("*.pdf")}
    identical = all(_sha256(p) in sources for p in outputs if p.is_file())
    ok &= identical
    completed = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'completed'").fetchone()[0]
    held = conn.execute("SELECT COUNT(*) FROM jobs WHERE state = 'held'").fetchone()[0]
    lines += [
        "",
        "Checks:",
        f"  jobs printed: {completed}, still held: {held}",
        f"  documents in MFD output folders: {len(outputs)}, byte-identical to what was "
        f"printed: {'yes' if identical else 'NO'}",
        f"  ledger entries charged twice: {len(charges)}",
        f"  every balance = opening balance − charges, and the panel agrees: "
        f"{'yes' if ok else 'NO'}",
        "",
        "RESULT: " + ("OK" if ok else "FAILED"),
    ]
    conn.close()
    return "\n".join(lines), ok


def run_demo(directory: Path | None) -> int:
    if shutil.which("lp") is None or shutil.which("gs") is None:
        print("the demo needs `lp` (cups-client) and `gs` (ghostscript): run `make setup`",
              file=sys.stderr)
        return 2
    temporary = directory is None
    lab_dir = Path(tempfile.mkdtemp(prefix="outpost-demo-")) if directory is None else directory
    print(f"Starting a lab in {lab_dir}: one site, two simulated MFDs, ten users ...", flush=True)
    try:
        with running_lab(lab_dir, mfds=2) as lab:
            demo = Demo(lab, lab_dir / "documents")
            scenario(demo)
            report, ok = build_report(demo)
        print(report, flush=True)
        return 0 if ok else 1
    finally:
        if temporary:
            shutil.rmtree(lab_dir, ignore_errors=True)

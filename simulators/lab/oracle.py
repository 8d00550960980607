"""The oracle of `outpost lab run`: a pure function over what the workload was told and
what the databases and MFDs hold once the lab has settled.

Nothing here reads a file or a socket: `scenarios.collect` reads the primary's and the
sites' SQLite files (read-only) and the MFDs' output folders into an `Observed`, and
`judge` decides. The invariants (../shared/design/product.md):

- every charge acknowledged to a panel is in the primary's ledger exactly once
  (`lost`, `doubled`);
- a job is printed at most once per release and charged at most once (`doubled`
  counts a second ledger row for one print, and a second physical output of one job);
- an acknowledged job is never lost while held (`jobs_lost`);
- spending stays within balance + offline allowances (`overspend`);
- nothing is quarantined (the lab's sites never send one id with two bodies).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

#: Ledger entries that adjust a print's charge to the page counter (not a second charge).
COUNTER_SUFFIX = ":counter"


@dataclass(frozen=True)
class AckedCharge:
    site: str
    kind: str          # "copy": ref is the usage id; "print": ref is the site's job id
    ref: str
    user: str
    offline: bool = False


@dataclass(frozen=True)
class SubmittedJob:
    site: str
    job_id: int
    name: str


@dataclass(frozen=True)
class SiteJob:
    uuid: str
    state: str
    spool_name: str | None
    name: str


@dataclass(frozen=True)
class LedgerRow:
    entry_id: str
    account: str
    amount: int
    kind: str
    source: str


@dataclass(frozen=True)
class Requirements:
    """What a scenario must show besides the invariants."""

    min_acked: int = 200
    wan: bool = False            # a WAN scenario: went_offline, >= min_offline offline
    min_offline: int = 50
    zero_mfd_errors: bool = False
    failpoints: frozenset[str] = frozenset()


@dataclass
class Observed:
    scenario: str
    seed: int
    acked: Sequence[AckedCharge]
    submitted: Sequence[SubmittedJob]
    site_jobs: dict[str, dict[int, SiteJob]]
    primary_ledger: Sequence[LedgerRow]
    #: Job names of every document found in the MFDs' output folders (one per print).
    printed: Sequence[str]
    #: Per user account name ("user:alice"): how far below zero it may go at the primary
    #: (offline allowances granted beyond the balance; 0 without escrow).
    allowances: dict[str, int] = field(default_factory=dict)
    quarantined: int = 0
    denied: int = 0
    mfd_errors: int = 0
    went_offline: bool = False
    failpoints_hit: Sequence[str] = ()
    #: Job names the workload made (a physical print of another name is not ours).
    workload_prefix: str = "w"


def judge(observed: Observed, requirements: Requirements) -> tuple[dict[str, Any], list[str]]:
    """The JSON verdict (the fields of `lab run --json`) and the problems found (empty: the
    oracle holds)."""
    ledger_ids = Counter(row.entry_id for row in observed.primary_ledger)
    prints_by_job: Counter[str] = Counter()
    for row in observed.primary_ledger:
        if row.kind == "charge" and row.source == "print" and "/print:" in row.entry_id \
                and not row.entry_id.endswith(COUNTER_SUFFIX):
            site, _, rest = row.entry_id.partition("/print:")
            uuid = rest.rsplit(":", 1)[0]
            prints_by_job[f"{site}/{uuid}"] += 1
    problems: list[str] = []

    lost = 0
    for ack in observed.acked:
        if ack.kind == "copy":
            found = ledger_ids.get(f"{ack.site}/usage:{ack.ref}", 0) > 0
        else:
            site_job = observed.site_jobs.get(ack.site, {}).get(int(ack.ref))
            found = site_job is not None and prints_by_job.get(
                f"{ack.site}/{site_job.uuid}", 0) > 0
        if not found:
            lost += 1
            problems.append(f"lost: {ack.kind} {ack.ref} at {ack.site} ({ack.user}) was "
                            "acknowledged and is not in the primary's ledger")

    doubled = 0
    for entry_id, count in ledger_ids.items():
        if count > 1:
            doubled += count - 1
            problems.append(f"doubled: ledger id {entry_id} appears {count} times")
    # One charge per physical print: a job printed once has one print charge; a job that
    # jammed after k pages and was released again has two partial prints and two charges
    # (attempts 1 and 2). More charges than prints, or more prints than charges (beyond a
    # job's first), is a double.
    outputs = Counter(observed.printed)
    for site, jobs in sorted(observed.site_jobs.items()):
        for job_id, site_job in sorted(jobs.items()):
            if not site_job.name.startswith(observed.workload_prefix):
                continue
            charges = prints_by_job.get(f"{site}/{site_job.uuid}", 0)
            printed = outputs.get(site_job.name, 0)
            extra = max(0, charges - printed) + max(0, printed - max(charges, 1))
            if extra:
                doubled += extra
                problems.append(f"doubled: job {site_job.name} ({site} job {job_id}) was "
                                f"printed {printed} times and charged {charges} times")

    balances: Counter[str] = Counter()
    for row in observed.primary_ledger:
        balances[row.account] += row.amount
    overspend = 0
    for account, balance in sorted(balances.items()):
        if not account.startswith("user:"):
            continue
        beyond = -balance - observed.allowances.get(account, 0)
        if beyond > 0:
            overspend += beyond
            problems.append(f"overspend: {account} ends at {balance}, "
                            f"{beyond} beyond its balance and allowances")

    jobs_lost = 0
    for submitted in observed.submitted:
        held = observed.site_jobs.get(submitted.site, {}).get(submitted.job_id)
        name = submitted.name
        if held is None or held.name != name:
            jobs_lost += 1
            problems.append(f"job lost: {name} (job {submitted.job_id} at {submitted.site}) "
                            "was acknowledged and the site does not have it")
        elif held.state in ("held", "pending") and held.spool_name is None:
            jobs_lost += 1
            problems.append(f"job lost: {name} is held without its document")
        elif held.state == "aborted":
            jobs_lost += 1
            problems.append(f"job lost: {name} was aborted")

    acked = len(observed.acked)
    offline = sum(1 for a in observed.acked if a.offline)
    hit = sorted(set(observed.failpoints_hit))
    verdict: dict[str, Any] = {
        "scenario": observed.scenario,
        "seed": observed.seed,
        "acked_charges": acked,
        "offline_acked_charges": offline,
        "primary_ledger_charges": sum(1 for r in observed.primary_ledger if r.kind == "charge"),
        "lost": lost,
        "doubled": doubled,
        "overspend": overspend,
        "quarantined": observed.quarantined,
        "denied": observed.denied,
        "mfd_errors": observed.mfd_errors,
        "jobs_lost": jobs_lost,
        "went_offline": observed.went_offline,
        "failpoints_hit": hit,
    }
    if observed.quarantined:
        problems.append(f"quarantined: {observed.quarantined} events")
    if acked < requirements.min_acked:
        problems.append(f"only {acked} acknowledged charges (at least "
                        f"{requirements.min_acked} wanted)")
    if requirements.wan:
        if not observed.went_offline:
            problems.append("no site went offline")
        if offline < requirements.min_offline:
            problems.append(f"only {offline} charges acknowledged offline (at least "
                            f"{requirements.min_offline} wanted)")
    if requirements.zero_mfd_errors and observed.mfd_errors:
        problems.append(f"{observed.mfd_errors} errors seen by panels or IPP clients")
    missing = sorted(requirements.failpoints - set(hit))
    if missing:
        problems.append(f"failpoints never hit: {', '.join(missing)}")
    return verdict, problems

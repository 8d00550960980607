"""The lab oracle (simulators/lab/oracle.py): a pure function over the workload log and
what the databases and MFDs hold."""

from __future__ import annotations

from simulators.lab.oracle import (
    AckedCharge,
    LedgerRow,
    Observed,
    Requirements,
    SiteJob,
    SubmittedJob,
    judge,
)

SEED_ROWS = [LedgerRow("seed:alice:1", "user:alice", 1000, "credit", "seed"),
             LedgerRow("seed:bob:1", "user:bob", 500, "credit", "seed")]


def observed(**changes: object) -> Observed:
    base = dict(
        scenario="unit", seed=7,
        acked=[AckedCharge("site-1", "copy", "m1:copy:7-1", "alice", offline=True),
               AckedCharge("site-2", "print", "4", "bob")],
        submitted=[SubmittedJob("site-2", 4, "w7-00002")],
        site_jobs={"site-2": {4: SiteJob("u-4", "completed", None, "w7-00002")}},
        primary_ledger=[
            *SEED_ROWS,
            LedgerRow("site-1/usage:m1:copy:7-1", "user:alice", -20, "charge", "copy"),
            LedgerRow("site-2/print:u-4:1", "user:bob", -30, "charge", "print"),
            LedgerRow("site-2/print:u-4:1:counter", "user:bob", -10, "charge", "print"),
        ],
        printed=["w7-00002"],
    )
    base.update(changes)
    return Observed(**base)  # type: ignore[arg-type]


EASY = Requirements(min_acked=2, wan=True, min_offline=1)


def test_everything_in_its_place_holds():
    verdict, problems = judge(observed(went_offline=True), EASY)
    assert problems == []
    assert verdict == {
        "scenario": "unit", "seed": 7, "acked_charges": 2, "offline_acked_charges": 1,
        "primary_ledger_charges": 3, "lost": 0, "doubled": 0, "overspend": 0,
        "quarantined": 0, "denied": 0, "mfd_errors": 0, "jobs_lost": 0,
        "went_offline": True, "failpoints_hit": []}


def test_an_acknowledged_copy_or_print_missing_at_the_primary_is_lost():
    ledger = [*SEED_ROWS,
              LedgerRow("site-2/print:u-4:1:counter", "user:bob", -10, "charge", "print")]
    verdict, problems = judge(observed(primary_ledger=ledger, went_offline=True), EASY)
    assert verdict["lost"] == 2, "a counter adjustment alone is not the print's charge"
    assert any("m1:copy:7-1" in p for p in problems)
    # A print whose job row the site no longer has cannot be found either.
    verdict, _ = judge(observed(site_jobs={}, went_offline=True), EASY)
    assert verdict["lost"] == 1 and verdict["jobs_lost"] == 1


def test_a_second_row_for_one_id_one_job_or_a_second_output_is_doubled():
    extra = [LedgerRow("site-1/usage:m1:copy:7-1", "user:alice", -20, "charge", "copy")]
    verdict, _ = judge(observed(primary_ledger=observed().primary_ledger + extra), EASY)
    assert verdict["doubled"] == 1
    again = [LedgerRow("site-2/print:u-4:2", "user:bob", -30, "charge", "print")]
    verdict, _ = judge(observed(primary_ledger=observed().primary_ledger + again), EASY)
    assert verdict["doubled"] == 1
    verdict, _ = judge(observed(printed=["w7-00002", "w7-00002", "someone-else",
                                         "someone-else"]), EASY)
    assert verdict["doubled"] == 1, "only the workload's own jobs are judged"


def test_a_jammed_job_released_again_is_two_prints_and_two_charges_not_a_double():
    again = [LedgerRow("site-2/print:u-4:2", "user:bob", -30, "charge", "print")]
    verdict, problems = judge(observed(primary_ledger=observed().primary_ledger + again,
                                       printed=["w7-00002", "w7-00002"], went_offline=True),
                              EASY)
    assert verdict["doubled"] == 0 and problems == []


def test_overspend_is_what_goes_below_zero_beyond_the_allowances():
    spend = [LedgerRow("site-1/usage:x", "user:bob", -700, "charge", "copy")]
    verdict, problems = judge(observed(primary_ledger=observed().primary_ledger + spend),
                              EASY)
    assert verdict["overspend"] == 240   # 500 - 30 - 10 - 700
    assert any("user:bob" in p for p in problems)
    verdict, problems = judge(observed(primary_ledger=observed().primary_ledger + spend,
                                       allowances={"user:bob": 200}, went_offline=True), EASY)
    assert verdict["overspend"] == 40
    verdict, problems = judge(observed(primary_ledger=observed().primary_ledger + spend,
                                       allowances={"user:bob": 300}, went_offline=True), EASY)
    assert verdict["overspend"] == 0 and problems == []
    # System accounts (unlimited) are not users' money.
    sys_row = [LedgerRow("site-1/usage:y", "site:unattributed", -5000, "charge", "copy")]
    verdict, _ = judge(observed(primary_ledger=observed().primary_ledger + sys_row), EASY)
    assert verdict["overspend"] == 0


def test_jobs_held_without_their_document_or_aborted_are_lost():
    for state, spool in (("held", None), ("aborted", "x.doc")):
        jobs = {"site-2": {4: SiteJob("u-4", state, spool, "w7-00002")}}
        verdict, _ = judge(observed(site_jobs=jobs, went_offline=True), EASY)
        assert verdict["jobs_lost"] == 1
    jobs = {"site-2": {4: SiteJob("u-4", "held", "x.doc", "w7-00002")}}
    assert judge(observed(site_jobs=jobs, went_offline=True), EASY)[0]["jobs_lost"] == 0


def test_requirements_floor_wan_errors_and_failpoints():
    verdict, problems = judge(observed(), Requirements(min_acked=3, wan=True, min_offline=2,
                                                       zero_mfd_errors=True,
                                                       failpoints=frozenset({"a", "b"})))
    text = "\n".join(problems)
    assert "only 2 acknowledged" in text and "no site went offline" in text
    assert "only 1 charges acknowledged offline" in text
    assert "failpoints never hit: a, b" in text
    verdict, problems = judge(observed(mfd_errors=3, failpoints_hit=["b", "a", "a"],
                                       quarantined=1),
                              Requirements(min_acked=2, zero_mfd_errors=True,
                                           failpoints=frozenset({"a", "b"})))
    assert verdict["failpoints_hit"] == ["a", "b"]
    assert verdict["mfd_errors"] == 3 and verdict["quarantined"] == 1
    assert len(problems) == 2   # the errors and the quarantined events
    # Without zero_mfd_errors, errors are reported but do not fail the oracle.
    _, problems = judge(observed(mfd_errors=3), Requirements(min_acked=2))
    assert problems == []

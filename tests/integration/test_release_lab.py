"""Flows 1-3 end to end over a real lab: `lp` and IPP in, panel release, MFD output, ledger.

Each test uses its own lab users so that balances are independent.
"""

from __future__ import annotations

import subprocess
import time

import pytest

from simulators.lab.runner import outputs, sha256, wait_until
from simulators.lab.workstation import print_file

pytestmark = pytest.mark.integration


def held(lab, user, mfd="mfd-1"):
    with lab.panel(mfd, user) as panel:
        return panel.jobs()["jobs"]


def wait_analysed(lab, user, count):
    return wait_until(lambda: (lambda jobs: jobs if len(jobs) == count and all(
        j["analysed"] for j in jobs) else None)(held(lab, user)))


def balance(lab, user):
    with lab.panel("mfd-1", user) as panel:
        return panel.balance()["balance"]


def test_lp_makes_a_held_job_owned_by_its_user_with_the_page_count(lab, docs):
    port = lab.site["ipp_port"]
    out = subprocess.run(["lp", "-h", f"127.0.0.1:{port}", "-d", "findme", "-U", "alice",
                          str(docs["mono3"])], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (job,) = wait_analysed(lab, "alice", 1)
    assert (job["pages"], job["cost"], job["colour"]) == (3, 30, False)
    row = lab.db().execute("SELECT owner, state, pages FROM jobs WHERE id = ?",
                           (job["id"],)).fetchone()
    assert tuple(row) == ("alice", "held", 3)


def release_and_check(lab, user, mfd, source, expected_cost, how="card"):
    before = balance(lab, user)
    already = set(outputs(lab, mfd))
    with lab.panel(mfd, user, how) as panel:
        answer = panel.release("all")
    assert answer["ok"], answer
    assert answer["charged"] == expected_cost
    new = [p for p in outputs(lab, mfd) if p not in already]
    assert len(new) == 1 and sha256(new[0]) == sha256(source), "byte-identical output"
    assert balance(lab, user) == before - expected_cost
    return answer


def test_release_prints_byte_identical_and_charges_exactly_the_policy(lab, docs):
    # alice's lp job from the test above, or a fresh one when run alone
    if not held(lab, "alice"):
        print_file(lab.site["ipp"], "alice", docs["mono3"])
        wait_analysed(lab, "alice", 1)
    answer = release_and_check(lab, "alice", "mfd-1", docs["mono3"], 30)
    ledger = lab.db().execute(
        "SELECT COUNT(*) FROM ledger WHERE job_id = ? AND kind = 'charge'",
        (answer["released"][0],)).fetchone()[0]
    assert ledger == 1


@pytest.mark.parametrize(("user", "doc", "options", "cost"), [
    ("bob", "mono3", {"copies": 2}, 60),
    ("carol", "colour2", {}, 80),
    ("dave", "mixed3", {}, 120),  # any colour page makes a colour job (ink coverage)
    ("erin", "mixed3", {"colour_mode": "monochrome"}, 30),
    ("frank", "mono4", {"sides": "two-sided-long-edge"}, 40),  # per side
    ("grace", "mono4", {"number_up": 2}, 20),
])
def test_cost_cases(lab, docs, user, doc, options, cost):
    print_file(lab.site["ipp"], user, docs[doc], **options)
    (job,) = wait_analysed(lab, user, 1)
    assert job["cost"] == cost
    release_and_check(lab, user, "mfd-2", docs[doc], cost, how="pin")


def test_a_jam_charges_what_printed_and_the_job_releases_at_another_mfd(lab, docs):
    print_file(lab.site["ipp"], "heidi", docs["mono3"])
    wait_analysed(lab, "heidi", 1)
    start = balance(lab, "heidi")
    lab.set_fault("mfd-1", {"mode": "jam", "after_pages": 1, "once": True})
    with lab.panel("mfd-1", "heidi", "card+pin") as panel:
        answer = panel.release("all")
    assert not answer["ok"] and answer["error"]["code"] == "device_error"
    assert answer["charged"] == 10, "one impression printed before the jam"
    assert len(held(lab, "heidi")) == 1, "the job stays releasable"
    release_and_check(lab, "heidi", "mfd-2", docs["mono3"], 30, how="password")
    assert balance(lab, "heidi") == start - 40


def test_an_offline_mfd_charges_nothing_and_keeps_the_job(lab, docs):
    print_file(lab.site["ipp"], "ivan", docs["mono1"])
    wait_analysed(lab, "ivan", 1)
    start = balance(lab, "ivan")
    lab.set_fault("mfd-1", {"mode": "offline"})
    try:
        with lab.panel("mfd-1", "ivan") as panel:
            answer = panel.release("all")
        assert not answer["ok"] and answer["error"]["code"] == "device_unavailable"
        assert answer["charged"] == 0
    finally:
        lab.set_fault("mfd-1", {"mode": "none"})
    assert balance(lab, "ivan") == start
    release_and_check(lab, "ivan", "mfd-2", docs["mono1"], 10)


def test_direct_queue_prints_at_once_and_charges_its_owner(lab, docs):
    queue = lab.mfd("mfd-2")["queue"]
    start = balance(lab, "judy")
    already = set(outputs(lab, "mfd-2"))
    print_file(queue, "judy", docs["mono3"])
    new = wait_until(lambda: [p for p in outputs(lab, "mfd-2") if p not in already])
    assert sha256(new[0]) == sha256(docs["mono3"])
    wait_until(lambda: balance(lab, "judy") == start - 30)


def test_copy_is_authorised_then_charged_once(lab):
    with lab.panel("mfd-1", "alice") as panel:
        before = panel.balance()["balance"]
        answer = panel.copy(4, colour=True)
        assert answer["ok"] and answer["charged"] == 160
        assert panel.balance()["balance"] == before - 160


def test_wrong_credentials_are_refused_and_throttled(lab):
    from simulators.mfd.panel import Panel

    panel = Panel(lab.site["device_api"], "mfd-2")
    codes = [panel.login_pin("bob", "0000" if lab.user("bob")["pin"] != "0000" else "1111")
             ["error"]["code"] for _ in range(6)]
    assert codes[0] == "invalid_credentials"
    assert codes[-1] == "throttled"
    assert panel.login_card("not-a-card")["error"]["code"] == "invalid_credentials"
    time.sleep(0.1)

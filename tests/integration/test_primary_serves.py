"""The primary serves MFDs and queues directly, as a site does (issue 5, §2): `lp` to its
findme queue, a release at its own MFD, one charge in the authoritative ledger, no outbox
rows at the primary, and a site sees the new balance after its next pull."""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest

from simulators.lab.runner import running_lab, wait_until
from simulators.mfd.panel import Panel
from tests.integration.sync_procs import one

pytestmark = pytest.mark.integration


def test_lp_at_the_primary_releases_at_its_mfd_and_a_site_sees_the_balance(tmp_path, docs):
    with running_lab(tmp_path / "lab", sites=1, providers=0, profile="fast") as lab:
        data = lab.endpoints
        primary, site = data["primary"], data["sites"][0]
        (mfd,) = primary["mfds"]
        alice = next(u for u in data["users"] if u["username"] == "alice")
        primary_db = Path(primary["state_dir"]) / "outpost.sqlite3"
        site_db = Path(site["state_dir"]) / "outpost.sqlite3"

        out = subprocess.run(["lp", "-h", f"127.0.0.1:{primary['ipp_port']}", "-d", "findme",
                              "-U", "alice", str(docs["mono3"])],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr

        with Panel(primary["device_api"], mfd["name"]) as panel:
            assert panel.login_card(alice["card"])["ok"]
            jobs = wait_until(lambda: (lambda js: js if js and all(j["analysed"] for j in js)
                                       else None)(panel.jobs()["jobs"]), 30)
            assert [(j["pages"], j["cost"]) for j in jobs] == [(3, 30)]
            before = panel.balance()["balance"]
            answer = panel.release("all")
            assert answer["ok"] and answer["charged"] == 30, answer
            assert panel.balance()["balance"] == before - 30

        # Printed byte-identical at the primary's own MFD.
        printed = sorted(Path(mfd["output"]).iterdir())
        assert len(printed) == 1
        assert (hashlib.sha256(printed[0].read_bytes()).digest()
                == hashlib.sha256(docs["mono3"].read_bytes()).digest())

        # Charged once, in the authoritative ledger, as the primary's own row.
        (job_id,) = answer["released"]
        assert one(primary_db, "SELECT COUNT(*) FROM ledger WHERE job_id = ? AND kind = 'charge' "
                               "AND origin IS NULL", job_id) == 1
        entry = one(primary_db, "SELECT entry_id FROM ledger WHERE job_id = ? "
                                "AND kind = 'charge'", job_id)
        assert one(primary_db, "SELECT COUNT(*) FROM outbox") == 0
        assert one(primary_db, "SELECT COUNT(*) FROM changes WHERE kind = 'ledger' AND key = ?",
                   f"primary/{entry}") == 1

        # The site's next pull brings the row; its balance for alice is derived from it.
        wait_until(lambda: one(site_db, "SELECT COUNT(*) FROM ledger WHERE entry_id = ? "
                                        "AND origin = 'primary'", f"primary/{entry}") == 1, 30)
        with Panel(site["device_api"], site["mfds"][0]["name"]) as panel:
            assert panel.login_card(alice["card"])["ok"]
            assert panel.balance()["balance"] == before - 30

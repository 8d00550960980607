"""`make demo` (`outpost demo`): a primary and two sites, site-1's WAN cut mid-workload,
the merge; the report ends with RESULT: OK and shows the outage, 0 lost, 0 doubled."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from simulators.lab.runner import ROOT

pytestmark = pytest.mark.integration


def test_demo_reports_the_outage_the_merge_and_nothing_lost_or_doubled(tmp_path):
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "demo", "--dir",
                          str(tmp_path / "demo")], capture_output=True, text=True,
                         timeout=600, cwd=ROOT)
    report = out.stdout
    assert out.returncode == 0, report + out.stderr[-3000:]
    assert report.rstrip().endswith("RESULT: OK")
    assert "site-1 heartbeats to the primary go unanswered" in report
    assert "(site offline)" in report
    outage = re.search(r"site-1: offline [\d.]+ s, events merged (\d+), duplicates ignored "
                       r"\d+, quarantined 0", report)
    assert outage and int(outage.group(1)) > 0, report
    offline = re.search(r"while it was offline: (\d+)", report)
    assert offline and int(offline.group(1)) >= 5, report
    assert "lost (acknowledged, missing at the primary): 0" in report
    assert "doubled (an id, a job or a print more than once): 0" in report
    assert "byte-identical to what was printed: yes" in report
    assert "MISMATCH" not in report
    merged = re.findall(r"^  (?:print|copy) .*  at the primary: (\d+)$", report, re.M)
    assert len(merged) >= 5 and set(merged) == {"1"}, "each offline row once at the primary"

"""CUPS's ipptool conformance suites against a running lab's site (a real site process).

`ipp-1.1.test` and `ipp-2.0.test` (which includes 1.1) run separately with
`-I`, and we count `[FAIL]` lines rather than trust ipptool's exit code.

* A direct queue (`/printers/mfd-1`) prints at once on the simulated MFD and
  must pass everything.
* The Find-Me queue holds every job for its owner, so exactly the tests that
  wait for a job to complete fail, and nothing else. ipptool polls "Until Job
  Complete" for about 2.5 minutes before giving up, so the two Find-Me runs go
  at once, each against a lab of its own (a second run on the same site would
  find the first run's cancelled jobs and pass "which-jobs=completed").
"""

from __future__ import annotations

import re
import shutil
import subprocess
from contextlib import ExitStack
from pathlib import Path

import pytest

from simulators.lab.runner import running_lab

pytestmark = pytest.mark.integration

SUITES = Path("/usr/share/cups/ipptool")
DOCS = Path(__file__).resolve().parents[1] / "fixtures" / "ipp-docs"
RESULT = re.compile(r"^ {4}(?P<name>\S.*?)\s+\[(?P<result>PASS|FAIL|SKIP)\]\s*$", re.MULTILINE)

#: What a queue that never completes a job must fail (environment.md), and nothing else.
NEEDS_COMPLETED_JOB = {
    "Get-Job-Attributes Until Job Complete",
    "RFC 8011 section 4.2.6: Get-Jobs Operation (which-jobs=completed)",
    "RFC 8011 section 4.2.6: Get-Jobs Operation (which-jobs, requested-attributes)",
    "RFC 8011 section 4.3.3: Cancel-Job Operation (completed job)",
}


def workdir(tmp_path: Path) -> Path:
    """The suites and our sample documents side by side: ipptool resolves FILE names
    relative to the test file, and Debian ships no documents next to the suites."""
    folder = tmp_path / "ipptool"
    folder.mkdir()
    for suite in ("ipp-1.1.test", "ipp-2.0.test"):
        shutil.copy(SUITES / suite, folder / suite)
    for document in DOCS.iterdir():
        if document.suffix in (".pdf", ".ps", ".jpg"):
            shutil.copy(document, folder / document.name)
    return folder


def start_suite(uri: str, suite: str, cwd: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        ["ipptool", "-t", "-I", "-T", "10", "-f", "document-a4.pdf", uri, suite],
        cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def results_of(process: subprocess.Popen[str]) -> tuple[str, dict[str, list[str]]]:
    text, _ = process.communicate(timeout=400)
    results: dict[str, list[str]] = {"PASS": [], "FAIL": [], "SKIP": []}
    for match in RESULT.finditer(text):
        results[match["result"]].append(match["name"])
    assert results["PASS"], text  # ipptool ran the suite (2.0 prints no Summary)
    return text, results


def full_names(printed: list[str]) -> set[str]:
    """ipptool cuts long test names; map them back to the names we expect."""
    names = set()
    for name in printed:
        matches = [n for n in NEEDS_COMPLETED_JOB if n == name or n.startswith(name)]
        names.add(matches[0] if len(matches) == 1 else name)
    return names


def test_direct_queue_of_a_running_lab_passes_both_suites(lab, tmp_path):
    cwd = workdir(tmp_path)
    queue = lab.mfd("mfd-1")["queue"]
    for suite, minimum in (("ipp-1.1.test", 44), ("ipp-2.0.test", 45)):
        text, results = results_of(start_suite(queue, suite, cwd))
        assert results["FAIL"] == [], text
        assert text.count("[FAIL]") == 0, text
        assert len(results["PASS"]) >= minimum, text


@pytest.mark.slow
def test_findme_fails_only_the_tests_that_need_a_completed_job(tmp_path):
    cwd = workdir(tmp_path)
    with ExitStack() as stack:
        labs = {suite: stack.enter_context(running_lab(tmp_path / suite, mfds=1))
                for suite in ("ipp-1.1.test", "ipp-2.0.test")}
        runs = {suite: start_suite(lab.site["ipp"], suite, cwd) for suite, lab in labs.items()}
        for suite, process in runs.items():
            text, results = results_of(process)
            assert full_names(results["FAIL"]) == NEEDS_COMPLETED_JOB, (suite, text)
            assert text.count("[FAIL]") == len(NEEDS_COMPLETED_JOB), (suite, text)
        for lab in labs.values():
            printed = list(Path(lab.mfd("mfd-1")["output"]).iterdir())
            assert printed == [], "Find-Me never prints on its own"

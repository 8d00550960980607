"""CUPS's ipptool conformance suites against the site's IPP server.

The server runs in this process (the same site as the unit tests: real store,
spool and twisted.web resource) on a loopback port; ipptool runs as a child
process through `getProcessOutputAndValue`, so the reactor keeps serving
while it runs. `ipp-1.1.test` and `ipp-2.0.test` (which includes 1.1) run
separately with `-I`, and we count `[FAIL]` lines rather than trust the exit
code.

* A direct queue (its job completes at once through the `on_ready` stand-in)
  must pass everything.
* The Find-Me queue holds every job, so exactly the tests that wait for a job
  to complete fail. ipptool polls "Get-Job-Attributes Until Job Complete" for
  about 2.5 minutes before giving up, so both suites run at once, each on a
  site of its own (a second run on the same site would find the first run's
  cancelled jobs and pass "which-jobs=completed").
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from tests.unit.test_ipp_server import DOCS, make_site

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("ipptool") is None, reason="ipptool is not installed"),
]

SUITES = Path("/usr/share/cups/ipptool")
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


async def run_suite(uri: str, suite: str, cwd: Path) -> tuple[str, dict[str, list[str]]]:
    """Run one suite; returns ipptool's output and the test names by result."""
    out, err, _code = await getProcessOutputAndValue(
        shutil.which("ipptool") or "ipptool",
        ["-t", "-I", "-T", "10", "-f", "document-a4.pdf", uri, suite],
        env=dict(os.environ), path=str(cwd),
    )
    text = out.decode("utf-8", "replace") + err.decode("utf-8", "replace")
    results: dict[str, list[str]] = {"PASS": [], "FAIL": [], "SKIP": []}
    for match in RESULT.finditer(text):
        results[match["result"]].append(match["name"])
    assert results["PASS"], text          # ipptool ran the suite (2.0 prints no Summary)
    return text, results


def full_names(printed: list[str]) -> set[str]:
    """ipptool cuts long test names; map them back to the names we expect."""
    names = set()
    for name in printed:
        matches = [n for n in NEEDS_COMPLETED_JOB if n == name or n.startswith(name)]
        names.add(matches[0] if len(matches) == 1 else name)
    return names


@pytest.mark.parametrize("suite", ["ipp-1.1.test", "ipp-2.0.test"])
@pytest_twisted.ensureDeferred
async def test_direct_queue_passes_every_test(suite: str, tmp_path: Path) -> None:
    site = make_site(tmp_path / "site")
    try:
        text, results = await run_suite(site.uri("mfd-1"), suite, workdir(tmp_path))
    finally:
        await site.close()
    assert results["FAIL"] == [], text
    assert len(results["PASS"]) >= (44 if suite == "ipp-1.1.test" else 45), text
    if suite == "ipp-2.0.test":
        assert any(name.startswith("PWG 5100.12 section 6.2") for name in results["PASS"])
    assert [line for line in text.splitlines() if "[FAIL]" in line] == []
    assert site.completed, "the direct queue's jobs were completed by the stand-in"


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_findme_fails_only_the_tests_that_need_a_completed_job(tmp_path: Path) -> None:
    cwd = workdir(tmp_path)
    sites = {suite: make_site(tmp_path / suite) for suite in ("ipp-1.1.test", "ipp-2.0.test")}
    try:
        runs = await defer.gatherResults([
            defer.ensureDeferred(run_suite(site.uri("findme"), suite, cwd))
            for suite, site in sites.items()
        ])
    finally:
        for site in sites.values():
            await site.close()
    for (text, results), suite in zip(runs, sites, strict=True):
        assert full_names(results["FAIL"]) == NEEDS_COMPLETED_JOB, (suite, text)
        assert text.count("[FAIL]") == len(NEEDS_COMPLETED_JOB), (suite, text)
    for site in sites.values():
        assert site.completed == []          # Find-Me never prints on its own


@pytest.mark.skipif(shutil.which("lp") is None, reason="lp (cups-client) is not installed")
@pytest_twisted.ensureDeferred
async def test_lp_prints_to_the_findme_queue(tmp_path: Path) -> None:
    """CUPS's lp, pointed at the site as a server, posts to `/`; the job is held for its owner
    with the options it asked for."""
    site = make_site(tmp_path / "site")
    env = dict(os.environ, LC_ALL="C", HOME=str(tmp_path))
    try:
        out, err, code = await getProcessOutputAndValue(
            shutil.which("lp") or "lp",
            ["-h", f"127.0.0.1:{site.port_number}", "-U", "alice", "-d", "findme", "-n", "2",
             "-o", "sides=two-sided-long-edge", "-t", "quarterly report",
             str(DOCS / "document-a4.pdf")],
            env=env, path=str(tmp_path),
        )
        assert code == 0, (out, err)
        assert b"request id is findme-" in out
        held = await site.service.held_for("alice")
    finally:
        await site.close()
    assert len(held) == 1
    job = held[0]
    assert job.name == "quarterly report"
    assert job.options.copies == 2 and job.options.sides == "two-sided-long-edge"
    assert job.pages == 2 and job.document_format == "application/pdf"

"""CUPS's ipptool conformance files against the simulated MFD.

ipptool is a real IPP client written by people who are not us: if it is
happy with the simulator, the site's IPP client can trust it as a device.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import threads

from simulators.mfd.printer import SimulatedMfd

IPPTOOL_DIR = Path("/usr/share/cups/ipptool")
REPO = Path(__file__).resolve().parents[3]

# ipptool and ghostscript come from `make setup`; a missing one fails the test, never skips it.
pytestmark = [pytest.mark.integration]


@pytest.fixture(scope="module")
def pdf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A two-page PDF made by ghostscript, as a workstation would send."""
    path = tmp_path_factory.mktemp("docs") / "document.pdf"
    program = ("/Helvetica findfont 24 scalefont setfont "
               "72 700 moveto (Outpost page one) show showpage "
               "72 700 moveto (Outpost page two) show showpage")
    subprocess.run(["gs", "-q", "-dSAFER", "-dBATCH", "-dNOPAUSE", "-sDEVICE=pdfwrite",
                    f"-sOutputFile={path}", "-c", program], check=True, timeout=60)
    return path


@pytest.fixture
def mfd(tmp_path: Path) -> Iterator[SimulatedMfd]:
    printer = SimulatedMfd("mfd-ipptool", tmp_path / "output", tmp_path / "state")
    printer.listen()
    yield printer
    pytest_twisted.blockon(printer.stop())


def ipptool(uri: str, test: str, document: Path | None = None) -> subprocess.CompletedProcess[str]:
    argv = ["ipptool", "-t", "-I", "-T", "30"]
    if document is not None:
        argv += ["-f", str(document)]
    argv += [uri, str(IPPTOOL_DIR / test)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


async def run_ipptool(uri: str, test: str, document: Path | None = None) -> str:
    """Run ipptool in a thread (the reactor must keep serving) and check it passed."""
    result = await threads.deferToThread(ipptool, uri, test, document)
    output = result.stdout + result.stderr
    failures = [line for line in output.splitlines() if "[FAIL]" in line]
    assert failures == [], output
    assert "[PASS]" in output, output
    assert result.returncode == 0, output
    return output


@pytest_twisted.ensureDeferred
async def test_get_printer_attributes(mfd: SimulatedMfd) -> None:
    await run_ipptool(mfd.ipp_uri, "get-printer-attributes.test")


@pytest_twisted.ensureDeferred
async def test_print_job_writes_the_pdf(mfd: SimulatedMfd, pdf: Path) -> None:
    await run_ipptool(mfd.ipp_uri, "print-job.test", pdf)
    [job] = mfd.jobs()
    for _ in range(500):
        if job.terminal:
            break
        await threads.deferToThread(time.sleep, 0.01)
    assert job.file is not None and job.file.read_bytes() == pdf.read_bytes()
    assert mfd.counters["total"] == job.impressions >= 1


@pytest.mark.parametrize("test", ["ipp-1.1.test", "ipp-2.0.test", "create-job.test",
                                  "print-job-and-wait.test", "validate-job.test"])
@pytest_twisted.ensureDeferred
async def test_conformance_suites(mfd: SimulatedMfd, pdf: Path, test: str) -> None:
    await run_ipptool(mfd.ipp_uri, test, pdf)


def test_serve_runs_until_sigterm(tmp_path: Path) -> None:
    """`outpost sim mfd serve` as its own process: one JSON line, then serving."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.mfd.cli", "mfd", "serve", "--name", "mfd-7",
         "--output", str(tmp_path / "out"), "--state", str(tmp_path / "state"), "--mono"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=REPO,
    )
    try:
        assert process.stdout is not None
        started = json.loads(process.stdout.readline())
        assert started["event"] == "serving" and started["name"] == "mfd-7"
        assert started["ipp"] == f"ipp://127.0.0.1:{started['ipp_port']}/ipp/print"
        assert started["control"] == f"http://127.0.0.1:{started['control_port']}/control"
        result = ipptool(started["ipp"], "get-printer-attributes.test")
        assert "[PASS]" in result.stdout and result.returncode == 0, result.stdout
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert json.loads((tmp_path / "state" / "counters.json").read_text())["counters"] == {
        "total": 0, "mono": 0, "colour": 0}

"""Print-Job round trip and release latency (card swipe → the MFD starts receiving), p50/p99.

Runs a real lab (site process, simulated MFDs) on loopback and measures from
the client's side; prints figures, decides nothing. Usage:

    .venv/bin/python benchmarks/site_latency.py [--jobs 200] [--releases 50]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path

from simulators.lab.runner import running_lab, wait_until
from simulators.lab.workstation import make_pdf, print_file
from simulators.mfd.panel import Panel


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def mfd_jobs(control: str) -> list[dict]:
    with urllib.request.urlopen(control, timeout=10) as response:
        return json.loads(response.read())["jobs"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--releases", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder, running_lab(Path(folder) / "lab") as lab:
        doc = make_pdf(Path(folder) / "bench.pdf", 3)
        queue = lab.site["ipp"]
        submit = []
        for i in range(args.jobs):
            user = lab.endpoints["users"][i % 10]["username"]
            started = time.perf_counter()
            print_file(queue, user, doc)
            submit.append((time.perf_counter() - started) * 1000)

        user = lab.user("alice")
        control = lab.mfd("mfd-1")["control"]
        release = []
        for _ in range(args.releases):
            job_id = print_file(queue, "alice", doc)
            wait_until(lambda j=job_id: lab.db().execute(
                "SELECT analysed FROM jobs WHERE id = ?", (j,)).fetchone()[0])
            seen = {j["id"] for j in mfd_jobs(control)}
            panel = Panel(lab.site["device_api"], "mfd-1")
            swipe = time.time()
            panel.login_card(user["card"])
            answer = panel.release([job_id])
            panel.logout()
            assert answer["ok"], answer
            (new,) = [j for j in mfd_jobs(control) if j["id"] not in seen]
            received = datetime.fromisoformat(new["received_at"]).timestamp()
            release.append((received - swipe) * 1000)
        # Held jobs of the other users stay in the lab; it is thrown away.

    print(f"Print-Job round trip (3-page PDF, durable ack), n={len(submit)}: "
          f"p50 {statistics.median(submit):.1f} ms, p99 {percentile(submit, 99):.1f} ms")
    print(f"Release latency (card swipe → MFD starts receiving), n={len(release)}: "
          f"p50 {statistics.median(release):.1f} ms, p99 {percentile(release, 99):.1f} ms")


if __name__ == "__main__":
    main()

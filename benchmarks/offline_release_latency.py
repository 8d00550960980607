"""Release latency (card swipe → the MFD starts receiving) online and offline, in one run.

A primary and a site as real `outpost serve` processes syncing over mutual TLS, the
site's link to the primary through the WAN simulator (a toxiproxy-compatible proxy), a
simulated MFD as its own process. In each of `--rounds` rounds the same release is
measured while the site is online (its outbox merged), then the link is partitioned both
ways (`outpost sim wan partition`: connections stall, new ones hang in connect, as a cut
WAN does), the site is waited for until it reports itself offline, the release is
measured again, and the link is healed. Alternating the phases keeps a drift in the
machine's load (other work on the same cores) from falling on one phase only. Each
release: print a 3-page PDF to the Find-Me queue (untimed), then swipe the card at the
panel, release the job, log out; the latency is the MFD's `received_at` minus the swipe.
The `[primary]` link settings are the product's defaults (heartbeat 5 s, push every 1 s)
except a 2 s request timeout and 2 misses to go offline, so that a cut is noticed in
about 10 s. Prints figures, decides nothing (issue 5's target: offline p99 within 1.1x
online). Usage:

    .venv/bin/python benchmarks/offline_release_latency.py [--releases 100] [--rounds 4]
        [--samples FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from simulators.lab.lab import free_port
from simulators.lab.workstation import make_pdf, print_file
from simulators.mfd.panel import Panel
from tests.integration.sync_procs import (
    deployment,
    port_open,
    query,
    serve,
    stop,
    wait_for,
)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


def wan(api: str, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        api + path, method=method, data=None if body is None else json.dumps(body).encode(),
        headers={"content-type": "application/json", "user-agent": "outpost-benchmark"})
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def mfd_jobs(control: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(control, timeout=10) as response:
        return list(json.loads(response.read())["jobs"])


def releases(n: int, queue: str, device_api: str, control: str, doc: Path,
             site_db: Path, samples: list[dict[str, float]] | None = None) -> list[float]:
    """n releases of one freshly printed job each; ms from the swipe to the MFD's receipt.
    `samples` gets each one's wall-clock time and its login part (to line them up with
    the site's log)."""
    out = []
    for _ in range(n):
        job_id = print_file(queue, "alice", doc, document_format="application/pdf")
        wait_for(lambda j=job_id: query(site_db, "SELECT analysed FROM jobs WHERE id = ?",
                                        (j,)) == [(1,)], "the job's analysis")
        seen = {j["id"] for j in mfd_jobs(control)}
        panel = Panel(device_api, "mfd-1")
        swipe = time.time()
        panel.login_card("0042")
        logged_in = time.time()
        answer = panel.release([job_id])
        panel.logout()
        assert answer["ok"], answer
        (new,) = [j for j in mfd_jobs(control) if j["id"] not in seen]
        out.append((datetime.fromisoformat(new["received_at"]).timestamp() - swipe) * 1000)
        if samples is not None:
            samples.append({"at": round(swipe, 3), "ms": round(out[-1], 1),
                            "login_ms": round((logged_in - swipe) * 1000, 1)})
    return out


def figures(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50_ms": round(statistics.median(values), 1),
            "p99_ms": round(percentile(values, 99), 1), "max_ms": round(max(values), 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--releases", type=int, default=100, help="per phase")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternate online and offline blocks this many times")
    parser.add_argument("--heartbeat", type=float, default=5.0,
                        help="[primary] heartbeat_interval (default: the product's, 5 s)")
    parser.add_argument("--push-interval", type=float, default=1.0,
                        help="[primary] push_interval (default: the product's, 1 s)")
    parser.add_argument("--request-timeout", type=float, default=2.0,
                        help="[primary] request_timeout: how long a cut link takes to "
                             "count as a miss (the product's default is 10 s)")
    parser.add_argument("--json", action="store_true", help="one JSON object only")
    parser.add_argument("--samples", type=Path, help="write every release's figures here")
    args = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="outpost-offline-release-"))
    processes: list[subprocess.Popen[bytes]] = []
    try:
        wan_port, ipp_port, control_port, link_port = (free_port() for _ in range(4))
        wan_api = f"http://127.0.0.1:{wan_port}"
        with open(folder / "wan.log", "ab") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "simulators.wan", "serve", "--api",
                 f"127.0.0.1:{wan_port}", "--quiet"], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True))
        with open(folder / "mfd.log", "ab") as log:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "appliance.cli", "sim", "mfd", "serve", "--name", "mfd-1",
                 "--output", str(folder / "mfd" / "output"), "--state",
                 str(folder / "mfd" / "state"), "--host", "127.0.0.1",
                 "--ipp-port", str(ipp_port), "--control-port", str(control_port)],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True))
        (folder / "mfd" / "output").mkdir(parents=True, exist_ok=True)
        (folder / "mfd" / "state").mkdir(parents=True, exist_ok=True)
        link = (f"heartbeat_interval = {args.heartbeat}\npush_interval = {args.push_interval}\n"
                f"offline_after_misses = 2\nonline_after_successes = 2\n"
                f"request_timeout = {args.request_timeout}\n")
        d = deployment(folder, link, balance=10_000_000,
                       devices=[("mfd-1", f"ipp://127.0.0.1:{ipp_port}/ipp/print")],
                       site_sections="[release]\npoll_interval = 0.1\nfollow_timeout = 60.0\n")
        # The site reaches its primary only through the WAN simulator's proxy.
        site_toml = d["site_toml"]
        site_toml.write_text(site_toml.read_text().replace(
            f"https://127.0.0.1:{d['sync_port']}", f"https://127.0.0.1:{link_port}"))
        wait_for(lambda: port_open(wan_port) and port_open(ipp_port) and port_open(control_port),
                 "the WAN simulator and the MFD", timeout=60)
        wan(wan_api, "POST", "/proxies", {"name": "branch", "listen": f"127.0.0.1:{link_port}",
                                          "upstream": f"127.0.0.1:{d['sync_port']}"})
        processes.append(serve(d["primary_toml"], folder / "hq.log"))
        processes.append(serve(site_toml, folder / "branch.log"))
        site_db = d["site_db"]
        mode = "SELECT value FROM sync_state WHERE key = 'mode'"
        wait_for(lambda: query(site_db, mode) == [("online",)]
                 and port_open(d["api_port"]) and port_open(d["ipp_port"]),
                 "the site online", timeout=60)
        queue = f"ipp://127.0.0.1:{d['ipp_port']}/printers/findme"
        device_api = f"http://127.0.0.1:{d['api_port']}/api/v1"
        control = f"http://127.0.0.1:{control_port}/control"
        doc = make_pdf(folder / "bench.pdf", 3)
        releases(3, queue, device_api, control, doc, site_db)          # warm-up, not counted

        samples: dict[str, list[dict[str, float]]] = {"online": [], "offline": []}
        online: list[float] = []
        offline: list[float] = []
        went_offline_s: list[float] = []
        outbox: list[int] = []
        # Rounds of online then offline, so that a drift in the machine's load (other
        # work on the same cores) falls on both phases alike.
        block = max(1, args.releases // args.rounds)
        for _ in range(args.rounds):
            wait_for(lambda: query(site_db, mode) == [("online",)]
                     and query(site_db, "SELECT COUNT(*) FROM outbox") == [(0,)],
                     "the site online with its outbox merged", timeout=180)
            online += releases(block, queue, device_api, control, doc, site_db,
                               samples["online"])
            for stream in ("upstream", "downstream"):
                wan(wan_api, "POST", "/proxies/branch/toxics", {
                    "name": f"partition_{stream}", "type": "partition", "stream": stream})
            cut = time.monotonic()
            wait_for(lambda: query(site_db, mode) == [("offline",)], "the site offline",
                     timeout=120)
            went_offline_s.append(time.monotonic() - cut)
            offline += releases(block, queue, device_api, control, doc, site_db,
                                samples["offline"])
            assert query(site_db, mode) == [("offline",)], "the site stayed offline"
            outbox.append(query(site_db, "SELECT COUNT(*) FROM outbox")[0][0])
            for stream in ("upstream", "downstream"):
                wan(wan_api, "DELETE", f"/proxies/branch/toxics/partition_{stream}")
        wait_for(lambda: query(site_db, "SELECT COUNT(*) FROM outbox") == [(0,)],
                 "the last outage merged", timeout=180)
        merged = query(d["hq_db"], "SELECT COUNT(*) FROM ledger WHERE origin = 'branch'")[0][0]
        charged = query(site_db, "SELECT COUNT(*) FROM ledger WHERE origin IS NULL "
                                 "AND entry_id LIKE 'print:%'")[0][0]
    finally:
        for process in reversed(processes):
            stop(process)

    if args.samples is not None:
        args.samples.write_text(json.dumps(samples))
    # A loaded machine can make the primary miss heartbeats while "online": say so.
    log_text = (folder / "branch.log").read_text(errors="replace")
    mode_changes = log_text.count("site OFFLINE (was online)") - args.rounds
    on, off = figures(online), figures(offline)
    result = {
        "releases_per_phase": args.releases, "heartbeat_interval_s": args.heartbeat,
        "mode_changes_while_online": mode_changes,
        "push_interval_s": args.push_interval, "request_timeout_s": args.request_timeout,
        "online": on, "offline": off,
        "p99_offline_over_online": round(off["p99_ms"] / on["p99_ms"], 3),
        "p50_offline_over_online": round(off["p50_ms"] / on["p50_ms"], 3),
        "rounds": args.rounds, "went_offline_after_s": [round(t, 1) for t in went_offline_s],
        "outbox_after_each_outage": outbox, "site_print_charges": charged,
        "site_rows_in_primary_ledger": merged, "folder": str(folder),
    }
    if not args.json:
        print(f"Release latency (card swipe → MFD starts receiving), n={args.releases} each:")
        print(f"  online : p50 {on['p50_ms']:.1f} ms, p99 {on['p99_ms']:.1f} ms, "
              f"max {on['max_ms']:.1f} ms")
        print(f"  offline: p50 {off['p50_ms']:.1f} ms, p99 {off['p99_ms']:.1f} ms, "
              f"max {off['max_ms']:.1f} ms (link partitioned {args.rounds} times; offline "
              f"after {min(went_offline_s):.1f}-{max(went_offline_s):.1f} s)")
        print(f"  {charged} release charges at the site, {merged} of its ledger rows in the "
              "primary's ledger after the last merge")
        print(f"  p99 offline / online = {result['p99_offline_over_online']:.3f} "
              f"(p50: {result['p50_offline_over_online']:.3f}); the site flapped offline "
              f"{mode_changes} time(s) during the online phase")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

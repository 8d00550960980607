"""What the site's SNMP poller costs: CPU time and RSS of polling N simulated devices.

A child process runs N SNMP agents of the simulated MFD (`simulators/mfd/snmp.py`),
one UDP port each, whose page counters advance as if they printed. This process
runs only the poller (`appliance/protocols/snmp/poller.py`) on Twisted's asyncio
reactor, as the site does, and measures itself. Prints figures, decides nothing.

    .venv/bin/python benchmarks/snmp_poller.py [--devices 200] [--interval 10] [--duration 60] [--v3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ---------------------------------------------------------------- the agents (child process)


class FakePrinter:
    """Just what MfdSnmpAgent reads; it 'prints' a page every `every` seconds."""

    def __init__(self, name: str, every: float) -> None:
        from appliance.protocols.ipp.constants import PrinterState

        self.name = name
        self.colour = True
        self.uuid = uuid.uuid5(uuid.NAMESPACE_URL, f"bench:{name}")
        self.printer_state = PrinterState.IDLE
        self.printer_state_reasons = ["none"]
        self.fault = type("Fault", (), {"mode": "none"})()
        self.started = time.monotonic()
        self.every = every

    @property
    def counters(self) -> dict[str, int]:
        pages = int((time.monotonic() - self.started) / self.every)
        return {"total": pages, "mono": pages - pages // 4, "colour": pages // 4}


def run_agents(count: int) -> None:
    import asyncio

    from simulators.mfd.snmp import MfdSnmpAgent

    async def serve() -> None:
        agents = []
        for i in range(count):
            agent = MfdSnmpAgent(FakePrinter(f"mfd-{i + 1}", every=2.0 + (i % 7)))
            if i % 10 == 0:
                agent.set_supply("black", 5)  # one in ten has low toner: its alerts get read
            agent.listen("127.0.0.1", 0)
            # The agents need no fine timer (it drives retries, which agents do not make).
            agent._engine.transport_dispatcher.set_timer_resolution(1.0)
            agents.append(agent)
        print(json.dumps({"ports": [a.port for a in agents]}), flush=True)
        while True:
            await asyncio.sleep(3600)

    asyncio.run(serve())


# ---------------------------------------------------------------- the poller (this process)


def run_poller(ports: list[int], interval: float, duration: float, v3: bool) -> dict[str, Any]:
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer, reactor, task

    from appliance.protocols.snmp.poller import SnmpPoller, SnmpTarget, V3Credentials
    from simulators.mfd.snmp import LAB_V3

    creds = V3Credentials(LAB_V3["user"], LAB_V3["auth_key"], LAB_V3["priv_key"]) if v3 else None
    targets = [SnmpTarget(f"mfd-{i + 1}", "127.0.0.1", port, None if v3 else "public", creds)
               for i, port in enumerate(ports)]
    figures: dict[str, Any] = {"rss_before_kib": rss_kib()}
    poller = SnmpPoller(targets, reactor=reactor, interval=interval, timeout=2.0, retries=1)
    lags: list[float] = []

    def watch_lag() -> None:
        # How late the reactor runs a 0.1 s timer: does polling block it?
        expected = time.monotonic() + 0.1
        reactor.callLater(0.1, lambda: lags.append(time.monotonic() - expected))

    async def measure() -> None:
        cpu0, wall0 = cpu_seconds(), time.monotonic()
        warm: dict[str, float] = {}

        def warmed() -> None:
            # After the first interval every device has been polled once (engine set-up, target
            # configuration, imports): what follows is the steady state.
            warm.update(cpu=cpu_seconds(), wall=time.monotonic(), lags=len(lags),
                        polls=sum(t.polls for t in poller.tracks.values()))

        reactor.callLater(interval + 1.0, warmed)
        poller.start()
        lag = task.LoopingCall(watch_lag)
        lag.start(0.1)
        await task.deferLater(reactor, duration, lambda: None)
        lag.stop()
        cpu1, wall1 = cpu_seconds(), time.monotonic()
        tracks = poller.tracks.values()
        figures.update({
            "devices": len(targets),
            "interval_s": interval,
            "duration_s": round(wall1 - wall0, 1),
            "polls": sum(t.polls for t in tracks),
            "answered": sum(t.answered for t in tracks),
            "failed": sum(t.polls - t.answered for t in tracks),
            "states": sorted({t.reading.state for t in tracks if t.reading}),
            "cpu_s": round(cpu1 - cpu0, 2),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (wall1 - wall0), 2),
            "cpu_ms_per_poll": round(1000 * (cpu1 - cpu0) / max(1, sum(t.polls for t in tracks)),
                                     2),
            "cpu_s_first_interval": round(warm["cpu"] - cpu0, 2),
            "cpu_ms_per_poll_steady": round(
                1000 * (cpu1 - warm["cpu"]) / max(1, sum(t.polls for t in tracks) - warm["polls"]),
                2),
            "cpu_percent_steady": round(100 * (cpu1 - warm["cpu"]) / (wall1 - warm["wall"]), 2),
            "rss_after_kib": rss_kib(),
            "max_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "reactor_lag_ms_p50": round(1000 * sorted(lags)[len(lags) // 2], 1) if lags else None,
            "reactor_lag_ms_max": round(1000 * max(lags), 1) if lags else None,
            "reactor_lag_ms_max_steady": round(1000 * max(lags[int(warm.get("lags", 0)):]), 1)
            if lags[int(warm.get("lags", 0)):] else None,
        })
        await poller.stop()

    def done(_: Any) -> None:
        reactor.stop()

    def failed(failure: Any) -> None:
        failure.printTraceback()
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(measure()).addCallbacks(done, failed))
    reactor.run()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--devices", type=int, default=200)
    parser.add_argument("--interval", type=float, default=10.0)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--v3", action="store_true", help="SNMPv3 authPriv (SHA+AES) instead of v2c")
    parser.add_argument("--agents", type=int, help=argparse.SUPPRESS)  # the child's mode
    args = parser.parse_args()
    if args.agents:
        run_agents(args.agents)
        return
    child = subprocess.Popen([sys.executable, __file__, "--agents", str(args.devices)],
                             stdout=subprocess.PIPE, cwd=ROOT,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        assert child.stdout is not None
        ports = json.loads(child.stdout.readline())["ports"]
        agents_cpu0 = _child_cpu(child.pid)
        figures = run_poller(ports, args.interval, args.duration, args.v3)
        figures["agents_process_cpu_s"] = round(_child_cpu(child.pid) - agents_cpu0, 2)
    finally:
        child.terminate()
        child.wait(10)
    figures["snmp"] = "v3 authPriv SHA+AES128" if args.v3 else "v2c"
    width = max(len(k) for k in figures)
    print(f"SNMP poller, {figures['devices']} devices every {figures['interval_s']:g} s "
          f"for {figures['duration_s']} s ({figures['snmp']}):")
    for key, value in figures.items():
        print(f"  {key:<{width}}  {value}")


def _child_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


if __name__ == "__main__":
    main()

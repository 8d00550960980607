"""`outpost lab up` and `outpost demo`."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    lab = commands.add_parser("lab", help="run a site with simulated MFDs on loopback")
    lab_commands = lab.add_subparsers(dest="lab_command", metavar="ACTION")
    lab_commands.required = True
    up = lab_commands.add_parser("up", help="start a lab and run until SIGINT/SIGTERM")
    up.add_argument("--dir", type=Path, required=True, help="folder for the lab's state")
    up.add_argument("--mfds", type=int, default=2, help="simulated MFDs (default 2)")
    up.add_argument("--users", type=int, default=10, help="seeded users (10..12)")
    up.add_argument("--seed", type=int, default=1, help="seed for the users' credentials")
    up.add_argument("--lpd-mfds", type=int, default=0, metavar="N",
                    help="configure the last N MFDs at the site as LPD-only devices (default 0)")
    up.add_argument("--sites", type=int, default=None, metavar="N",
                    help="a primary and N sites (each with --mfds MFDs), every uplink through "
                    "the WAN simulator (default: one site, no primary)")
    up.add_argument("--providers", type=int, default=0, metavar="P",
                    help="with --sites: P providers, their uplinks through the WAN simulator")
    up.add_argument("--profile", choices=("default", "fast", "demo"), default="default",
                    help="with --sites: time-based settings (fast: scenario timings, demo: "
                    "make demo's)")
    up.add_argument("--failpoint", action="append", default=[], metavar="DAEMON=SPEC",
                    help="with --sites: arm OUTPOST_FAILPOINTS=SPEC in DAEMON's first start "
                    "(DAEMON@N: its N-th), e.g. site-1=db.after_commit=kill@40 (repeatable)")
    up.add_argument("--wan-seed", type=int, default=0, help="with --sites: the WAN simulator's seed")
    up.add_argument("--offline-allowance", type=float, default=None, metavar="SHARE",
                    help="with --sites: the primary grants each site SHARE (0..1] of what an "
                    "account can spend as its offline allowance (docs/offline-allowance.md)")
    up.set_defaults(func=lab_up_command)

    from simulators.lab.run_cli import register_run

    register_run(lab_commands)


    demo = commands.add_parser("demo", help="run the scripted demo over a lab and print a report")
    demo.add_argument("--dir", type=Path, default=None,
                      help="lab folder (default: a temporary folder, removed afterwards)")
    demo.set_defaults(func=demo_command)


def lab_up_command(args: argparse.Namespace) -> int:
    if not 1 <= args.mfds <= 50:
        print("--mfds must be 1..50", file=sys.stderr)
        return 2
    if not 0 <= args.lpd_mfds <= args.mfds:
        print("--lpd-mfds must be 0..--mfds", file=sys.stderr)
        return 2
    if not 10 <= args.users <= 12:
        print("--users must be 10..12", file=sys.stderr)
        return 2
    if args.sites is not None:
        return multi_lab_up(args)
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer
    from twisted.internet import reactor as installed

    from simulators.lab.lab import Lab, LabOptions

    reactor: Any = installed
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s lab %(levelname)s %(message)s")
    lab = Lab(LabOptions(args.dir, mfds=args.mfds, seed=args.seed, users=args.users,
                         lpd_mfds=args.lpd_mfds), reactor)
    status = {"code": 0}

    async def run() -> None:
        try:
            endpoints = await lab.start()
        except Exception as exc:
            logging.getLogger("outpost.lab").error("lab failed to start: %s", exc)
            status["code"] = 1
            await lab.stop()
            reactor.stop()
            return
        print(json.dumps({"event": "ready", "endpoints": str(lab.endpoints_path),
                          "site_pid": endpoints["sites"][0]["pid"]}), flush=True)

    stopping = {"done": False}

    def stop(signum: int, frame: Any) -> None:
        if stopping["done"]:
            return
        stopping["done"] = True

        def shutdown() -> None:
            d = defer.ensureDeferred(lab.stop())
            d.addBoth(lambda _: reactor.stop())

        reactor.callFromThread(shutdown)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run(installSignalHandlers=False)
    return status["code"]


def multi_lab_up(args: argparse.Namespace) -> int:
    """`lab up --sites N`: a primary, N sites and P providers (simulators/lab/multi.py)."""
    if not 1 <= args.sites <= 20:
        print("--sites must be 1..20", file=sys.stderr)
        return 2
    if not 0 <= args.providers <= 20:
        print("--providers must be 0..20", file=sys.stderr)
        return 2
    if args.lpd_mfds:
        print("--lpd-mfds is for the single-site lab (no --sites)", file=sys.stderr)
        return 2
    failpoints = {}
    for item in args.failpoint:
        daemon, sep, spec = item.partition("=")
        if not sep or not spec:
            print(f"--failpoint {item!r}: expected DAEMON=SPEC", file=sys.stderr)
            return 2
        name, _, nth = daemon.partition("@")
        if not name or (nth and not nth.isdigit()):
            print(f"--failpoint {item!r}: expected DAEMON[@N]=SPEC", file=sys.stderr)
            return 2
        failpoints[daemon] = spec
    from simulators.lab.multi import MultiLab, MultiLabOptions

    options = MultiLabOptions(args.dir, sites=args.sites, providers=args.providers,
                              mfds=args.mfds, seed=args.seed, users=args.users,
                              profile=args.profile, failpoints=failpoints,
                              wan_seed=args.wan_seed, offline_share=args.offline_allowance)
    try:
        if args.providers:
            MultiLab._check_providers()
    except ValueError as exc:
        print(f"--providers: {exc}", file=sys.stderr)
        return 2
    return _run_lab(lambda reactor: MultiLab(options, reactor))


def _run_lab(make: Any) -> int:
    """Run a lab until SIGINT/SIGTERM on the asyncio reactor."""
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer
    from twisted.internet import reactor as installed

    reactor: Any = installed
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s lab %(levelname)s %(message)s")
    lab = make(reactor)
    status = {"code": 0}
    stopping = {"done": False}

    def shutdown() -> None:
        d = defer.ensureDeferred(lab.stop())
        d.addBoth(lambda _: reactor.stop())

    async def run() -> None:
        try:
            endpoints = await lab.start()
        except Exception as exc:
            logging.getLogger("outpost.lab").error("lab failed to start: %s", exc)
            status["code"] = 1
            stopping["done"] = True
            shutdown()
            return
        print(json.dumps({"event": "ready", "endpoints": str(lab.endpoints_path),
                          "site_pid": endpoints["sites"][0]["pid"]}), flush=True)

    def stop(signum: int, frame: Any) -> None:
        if stopping["done"]:
            return
        stopping["done"] = True
        reactor.callFromThread(shutdown)

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run(installSignalHandlers=False)
    return status["code"]


def demo_command(args: argparse.Namespace) -> int:
    from simulators.lab.demo import run_demo

    return run_demo(args.dir)

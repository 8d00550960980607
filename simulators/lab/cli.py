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
    up.set_defaults(func=lab_up_command)

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


def demo_command(args: argparse.Namespace) -> int:
    from simulators.lab.demo import run_demo

    return run_demo(args.dir)

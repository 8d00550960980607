"""`outpost lab run SCENARIO --seed N [--json]` and `outpost lab run --list`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def register_run(lab_commands: Any) -> None:
    run = lab_commands.add_parser(
        "run", help="run a seeded fault scenario over its own lab and check the oracle",
        description="Starts a lab (a primary, two sites, their MFDs, the WAN simulator), "
        "drives a seeded workload, applies the scenario's faults, lets it settle, checks "
        "the oracle, tears the lab down; exit 0 only if the oracle holds.")
    run.add_argument("scenario", nargs="?", help="scenario name (see --list)")
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--json", action="store_true",
                     help="end with one JSON object (the oracle's fields) on the last line")
    run.add_argument("--list", action="store_true", help="list the scenarios and exit")
    run.add_argument("--dir", type=Path, default=None,
                     help="lab folder (default: a temporary folder, removed afterwards)")
    run.set_defaults(func=lab_run_command)


def lab_run_command(args: argparse.Namespace) -> int:
    from simulators.lab.scenarios import SCENARIOS, run_scenario

    if args.list:
        for name, scenario in SCENARIOS.items():
            print(f"{name:<24} {scenario.summary}")
        return 0
    if args.scenario not in SCENARIOS:
        print(f"unknown scenario {args.scenario!r}; one of: {', '.join(SCENARIOS)}",
              file=sys.stderr)
        return 2
    return run_scenario(args.scenario, args.seed, as_json=args.json, directory=args.dir)

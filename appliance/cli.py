"""The `outpost` command.

Every subcommand lives with the code it drives; this module only assembles the
parser, so that `outpost --help` lists everything in one place. A module that
adds commands exposes `register(subparsers)`; each parser sets `func`, which
returns the process exit status (0 ok, 2 usage error, 3 refused by the appliance).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def subcommands(parser: argparse.ArgumentParser, dest: str, metavar: str = "ACTION") -> Any:
    """A required group of subcommands under `parser`; their name lands in `args.<dest>`."""
    return parser.add_subparsers(dest=dest, metavar=metavar, required=True)


def config_option(parser: argparse.ArgumentParser) -> None:
    """The `--config FILE` every appliance command that reads the configuration takes."""
    parser.add_argument("--config", type=Path, required=True, help="TOML configuration file")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="outpost", description="Outpost print-management site appliance"
    )
    commands = subcommands(parser, "command", "COMMAND")

    from appliance import serve_cli

    serve_cli.register(commands)

    from appliance import directory_cli

    directory_cli.register(commands)

    from appliance import pki_cli

    pki_cli.register(commands)

    from appliance import enroll_cli

    enroll_cli.register(commands)

    from appliance import sync_cli

    sync_cli.register(commands)

    from simulators.lab import cli as lab_cli

    lab_cli.register(commands)

    sim = commands.add_parser("sim", help="software stand-ins for MFDs and WAN links")
    sim_commands = subcommands(sim, "sim_command", "SIMULATOR")
    from simulators.mfd import cli as mfd_cli

    mfd_cli.register(sim_commands)
    from simulators.wan import cli as wan_cli

    wan_cli.register(sim_commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

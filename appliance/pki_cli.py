"""`outpost pki`: the deployment CA and the certificates of its appliances (mutual TLS sync).

    outpost pki init DIR                       # DIR/ca.crt, DIR/ca.key (0600)
    outpost pki issue DIR --kind site --name branch-1
    outpost pki issue DIR --kind primary --name hq --host hq.example.org --host 10.0.0.5

An installer (or the lab) runs these on the primary and copies `ca.crt`, `<name>.crt`
and `<name>.key` to each site, or gives the primary `[enroll] ca_key_file = DIR/ca.key`
and lets sites enroll by join token (`outpost token create`, docs/wire/enroll.md).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from appliance.cli import subcommands


def register(commands: Any) -> None:
    pki = commands.add_parser("pki", help="make the deployment CA and appliance certificates")
    actions = subcommands(pki, "pki_command")
    init = actions.add_parser("init", help="make the CA (ca.crt, ca.key) in DIR")
    init.add_argument("dir", type=Path)
    init.add_argument("--name", default="Outpost deployment CA")
    init.set_defaults(func=init_command)
    issue = actions.add_parser("issue", help="issue <name>.crt/.key signed by DIR's CA")
    issue.add_argument("dir", type=Path)
    issue.add_argument("--kind", choices=("site", "primary", "provider"), required=True)
    issue.add_argument("--name", required=True)
    issue.add_argument("--host", action="append", default=[],
                       help="a DNS name or IP address the appliance serves on (repeatable)")
    issue.set_defaults(func=issue_command)


def init_command(args: argparse.Namespace) -> int:
    from appliance.pki import make_ca

    if (args.dir / "ca.key").exists():
        print(f"{args.dir / 'ca.key'} exists: refusing to replace the deployment's CA",
              file=sys.stderr)
        return 3
    cert, key = make_ca(args.name).write(args.dir, "ca")
    print(json.dumps({"ca_file": str(cert), "key_file": str(key)}))
    return 0


def issue_command(args: argparse.Namespace) -> int:
    from appliance.pki import Pair, issue

    try:
        ca = Pair((args.dir / "ca.crt").read_bytes(), (args.dir / "ca.key").read_bytes())
    except OSError as exc:
        print(f"no CA in {args.dir}: {exc.strerror} (run `outpost pki init {args.dir}`)",
              file=sys.stderr)
        return 2
    try:
        pair = issue(ca, kind=args.kind, name=args.name, hosts=args.host)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    cert, key = pair.write(args.dir, args.name)
    print(json.dumps({"cert_file": str(cert), "key_file": str(key),
                      "identity": f"outpost://{args.kind}/{args.name}"}))
    return 0

"""`outpost sim panel ...` and `outpost sim mfd serve|fault ...`.

`panel` acts as a person at an MFD of a running lab: it reads the lab's
``endpoints.json``, finds the site that serves the MFD, logs in at its device
API as that MFD, runs one command, logs out, and prints one JSON object:
``{"ok": ..., "error": {"code", "message"} | null, ...}``.

Exit status: 0 ok; 2 usage error (including an unknown MFD or a lab without
``endpoints.json``); 3 refused by the appliance, or the site unreachable
(error code ``unavailable``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from appliance.cli import subcommands

from .faults import MODES

N = TypeVar("N", int, float)

EXIT_OK = 0
EXIT_USAGE = 2
EXIT_REFUSED = 3


class _UsageError(Exception):
    pass


def register(subparsers: Any) -> None:
    _register_panel(subparsers)
    _register_mfd(subparsers)


# ---------------------------------------------------------------- panel


def _register_panel(subparsers: Any) -> None:
    panel = subparsers.add_parser(
        "panel",
        help="act at an MFD's panel: log in, list/release held jobs, copy, balance",
        description="Log in at a lab MFD's panel through the site's device API, run one "
        "command, log out, and print one JSON object.",
    )
    panel.add_argument("--lab", type=Path, required=True, help="lab folder with endpoints.json")
    panel.add_argument("--mfd", required=True, help="MFD name, as in endpoints.json")
    who = panel.add_mutually_exclusive_group(required=True)
    who.add_argument("--card", help="card number")
    who.add_argument("--user", help="username (with --pin or --password)")
    panel.add_argument("--pin")
    panel.add_argument("--password")
    panel.add_argument("--timeout", type=float, default=30.0, help="seconds per request")
    commands = subcommands(panel, "panel_command", "COMMAND")
    commands.add_parser("jobs", help="list my held jobs")
    release = commands.add_parser("release", help="release held jobs to this MFD")
    which = release.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help="every held job")
    which.add_argument("job", nargs="?", type=int, help="device API job id")
    cancel = commands.add_parser("cancel", help="cancel (delete) a held job")
    cancel.add_argument("job", type=int, help="device API job id")
    copy = commands.add_parser("copy", help="copy N pages (authorised, then reported)")
    copy.add_argument("--pages", type=_positive_int, required=True)
    copy.add_argument("--colour", "--color", action="store_true")
    copy.add_argument("--sides", default="one-sided",
                      choices=["one-sided", "two-sided-long-edge", "two-sided-short-edge"])
    commands.add_parser("balance", help="show my balance")
    panel.set_defaults(func=panel_command, _parser=panel)


def _at_least(convert: Callable[[str], N], low: int, what: str) -> Callable[[str], N]:
    """An argparse type: `convert` the text, refusing what is not `what` or is below `low`
    (or infinite, or NaN)."""
    def parse(text: str) -> N:
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value < float("inf"):
            raise argparse.ArgumentTypeError(f"must be {low} or more")
        return value

    return parse


_positive_int = _at_least(int, 1, "an integer")
_non_negative_int = _at_least(int, 0, "an integer")
_non_negative_float = _at_least(float, 0, "a number")


def _print(body: dict[str, Any]) -> None:
    print(json.dumps(body), flush=True)


def _error(code: str, message: str) -> dict[str, str]:
    return {"code": code, "message": message}


def load_endpoints(lab: Path) -> dict[str, Any]:
    path = lab / "endpoints.json"
    try:
        endpoints = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        raise _UsageError(f"{path} does not exist: is the lab up?") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _UsageError(f"cannot read {path}: {exc}") from None
    if not isinstance(endpoints, dict) or not isinstance(endpoints.get("sites"), list):
        raise _UsageError(f"{path} has no list of sites")
    return endpoints


def find_mfd(endpoints: dict[str, Any], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(site, mfd) entries of the MFD called `name`."""
    for site in endpoints["sites"]:
        for mfd in site.get("mfds", []) if isinstance(site, dict) else []:
            if isinstance(mfd, dict) and mfd.get("name") == name:
                return site, mfd
    known = [
        str(mfd.get("name"))
        for site in endpoints["sites"] if isinstance(site, dict)
        for mfd in site.get("mfds", []) if isinstance(mfd, dict)
    ]
    raise _UsageError(f"no MFD {name!r} in the lab (known: {', '.join(known) or 'none'})")


def panel_command(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args._parser
    if args.card is not None and args.password is not None:
        parser.error("--password goes with --user, not --card")
    if args.user is not None and (args.pin is None) == (args.password is None):
        parser.error("--user needs exactly one of --pin or --password")
    try:
        endpoints = load_endpoints(args.lab)
        site, _mfd = find_mfd(endpoints, args.mfd)
        device_api = site.get("device_api")
        if not isinstance(device_api, str):
            raise _UsageError(f"site {site.get('name')!r} has no device_api")
    except _UsageError as exc:
        print(f"outpost sim panel: {exc}", file=sys.stderr)
        _print({"ok": False, "error": _error("usage", str(exc))})
        return EXIT_USAGE
    from .panel import Panel, PanelUnavailable

    context = {"mfd": args.mfd, "site": site.get("name")}
    try:
        panel = Panel(device_api, args.mfd, timeout=args.timeout)
    except ValueError as exc:
        _print({"ok": False, "error": _error("usage", str(exc)), **context})
        return EXIT_USAGE
    try:
        if args.card is not None:
            login = panel.login_card(args.card, args.pin)
        elif args.pin is not None:
            login = panel.login_pin(args.user, args.pin)
        else:
            login = panel.login_password(args.user, args.password)
        if not login.get("ok"):
            _print({"ok": False, "error": login.get("error"), "stage": "login", **context})
            return EXIT_REFUSED
        context["user"] = (login.get("user") or {}).get("username")
        try:
            result = _run(panel, args)
        finally:
            with contextlib.suppress(PanelUnavailable):
                panel.logout()
    except PanelUnavailable as exc:
        _print({"ok": False, "error": _error("unavailable", str(exc)), **context})
        return EXIT_REFUSED
    ok = bool(result.get("ok"))
    _print({"ok": ok, "error": None if ok else result.get("error"), **context, **result})
    return EXIT_OK if ok else EXIT_REFUSED


def _run(panel: Any, args: argparse.Namespace) -> dict[str, Any]:
    """One panel command; the keys the CLI promises, then whatever else the site said."""
    command = args.panel_command
    if command == "jobs":
        answer = panel.jobs()
        return {"jobs": answer.get("jobs", []), **_rest(answer)}
    if command == "balance":
        answer = panel.balance()
        return {"balance": answer.get("balance"), **_rest(answer)}
    if command == "release":
        answer = panel.release("all" if args.all else [args.job])
        return {
            "released": answer.get("released", []),
            "failed": answer.get("failed", []),
            "charged": answer.get("charged", 0),
            **_rest(answer),
        }
    if command == "cancel":
        answer = panel.cancel(args.job)
        return {"cancelled": answer.get("cancelled", []), **_rest(answer)}
    if command == "copy":
        answer = panel.copy(args.pages, colour=args.colour, sides=args.sides)
        answer.pop("authorize", None)
        answer.pop("usage", None)
        return {
            "copied": answer.get("copied", 0),
            "charged": answer.get("charged", 0),
            "allowed": answer.get("allowed", False),
            **_rest(answer),
        }
    raise AssertionError(command)  # pragma: no cover - argparse limits the choices


def _rest(answer: dict[str, Any]) -> dict[str, Any]:
    return {"ok": bool(answer.get("ok")), "error": answer.get("error"), **{
        key: value for key, value in answer.items() if key not in ("ok", "error")
    }}


# ---------------------------------------------------------------- mfd


def _register_mfd(subparsers: Any) -> None:
    mfd = subparsers.add_parser("mfd", help="run a simulated MFD, or set a lab MFD's fault")
    commands = subcommands(mfd, "mfd_command")

    serve = commands.add_parser("serve", help="run one simulated MFD until SIGINT/SIGTERM")
    serve.add_argument("--name", required=True)
    serve.add_argument("--output", type=Path, required=True, help="folder for printed documents")
    serve.add_argument("--state", type=Path, required=True, help="folder for counters")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--ipp-port", type=_non_negative_int, default=0)
    serve.add_argument("--control-port", type=_non_negative_int, default=0)
    serve.add_argument("--snmp-port", type=_non_negative_int, default=None,
                       help="also serve SNMP on this UDP port (0: any free one)")
    serve.add_argument("--snmp-community", default=None, help="SNMPv2c community (public)")
    serve.add_argument("--lpd-port", type=_non_negative_int, default=None,
                       help="also serve LPD (RFC 1179) on this TCP port (0: any free one)")
    serve.add_argument("--page-delay", type=_non_negative_float, default=0.0,
                       help="seconds per impression (default 0)")
    serve.add_argument("--mono", action="store_true", help="a monochrome device")
    serve.set_defaults(func=serve_command)

    fault = commands.add_parser("fault", help="set the fault mode of a lab MFD")
    fault.add_argument("--lab", type=Path, required=True)
    fault.add_argument("--mfd", required=True)
    fault.add_argument("mode", choices=MODES)
    fault.add_argument("--after-pages", type=_non_negative_int, help="jam: pages before the jam")
    fault.add_argument("--page-delay", type=float, help="slow: seconds per page")
    fault.add_argument("--persist", action="store_true",
                       help="jam: stay jammed until cleared (default: clear after one job)")
    fault.set_defaults(func=fault_command)


def fault_command(args: argparse.Namespace) -> int:
    try:
        _site, mfd = find_mfd(load_endpoints(args.lab), args.mfd)
        control = mfd.get("control")
        if not isinstance(control, str):
            raise _UsageError(f"MFD {args.mfd!r} has no control URL in endpoints.json")
    except _UsageError as exc:
        print(f"outpost sim mfd fault: {exc}", file=sys.stderr)
        _print({"error": str(exc)})
        return EXIT_USAGE
    body: dict[str, Any] = {"mode": args.mode}
    if args.after_pages is not None:
        body["after_pages"] = args.after_pages
    if args.page_delay is not None:
        body["page_delay"] = args.page_delay
    if args.persist:
        body["once"] = False
    request = urllib.request.Request(
        control.rstrip("/") + "/fault",
        data=json.dumps(body).encode("utf-8"),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            answer = json.loads(exc.read().decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = {"error": f"HTTP {exc.code}"}
        _print(answer)
        return EXIT_USAGE if exc.code == 400 else EXIT_REFUSED
    except (OSError, ValueError) as exc:
        _print({"error": f"unavailable: {control}: {exc}"})
        return EXIT_REFUSED
    _print(answer)
    return EXIT_OK


def serve_command(args: argparse.Namespace) -> int:
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        asyncioreactor.install()
    from twisted.internet import reactor as installed

    from .printer import SimulatedMfd

    reactor: Any = installed

    mfd = SimulatedMfd(
        args.name,
        args.output,
        args.state,
        colour=not args.mono,
        page_delay=args.page_delay,
        reactor=reactor,
        snmp_community=args.snmp_community,
    )
    try:
        mfd.listen(args.host, args.ipp_port, args.control_port, snmp_port=args.snmp_port,
                   lpd_port=args.lpd_port)
    except Exception as exc:  # CannotListenError and friends
        print(f"outpost sim mfd serve: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print({
        "event": "serving",
        "name": mfd.name,
        "ipp": mfd.ipp_uri,
        "control": mfd.control_uri,
        "ipp_port": mfd.ipp_port,
        "control_port": mfd.control_port,
        **({"snmp_port": mfd.snmp_port} if mfd.snmp_port is not None else {}),
        **({"lpd": mfd.lpd_uri, "lpd_port": mfd.lpd_port} if mfd.lpd_port is not None else {}),
        "output": str(mfd.output_dir),
        "state": str(mfd.state_dir),
    })

    def stop(signum: int, frame: Any) -> None:
        reactor.callFromThread(reactor.stop)

    reactor.addSystemEventTrigger("before", "shutdown", mfd.stop)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reactor.run(installSignalHandlers=False)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    """`outpost sim` with only the MFD commands, for `python -m simulators.mfd.cli`."""
    parser = argparse.ArgumentParser(prog="python -m simulators.mfd.cli")
    commands = subcommands(parser, "sim_command", "SIMULATOR")
    register(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

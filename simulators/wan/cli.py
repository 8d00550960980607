"""`outpost sim wan ...`: serve the simulator, or drive a running one over HTTP.

    outpost sim wan serve [--api 127.0.0.1:8474] [--config F] [--seed N] [--quiet]
    outpost sim wan proxy add NAME --listen L --upstream U
    outpost sim wan proxy list|show|delete|enable|disable ...
    outpost sim wan toxic add PROXY --type latency -a latency=300 -a jitter=100
    outpost sim wan toxic update|remove|list ...
    outpost sim wan partition|heal PROXY
    outpost sim wan schedule run F [--seed N] [--time-scale X] [--wait]
    outpost sim wan schedule list|show|stop ...
    outpost sim wan events [--since N]
    outpost sim wan reset
    outpost sim wan netns up|cut|heal|down ...   (root, `ip netns`)

Client commands talk to `--server` (default $OUTPOST_WAN_API or
http://127.0.0.1:8474) with the standard library only, so they start fast.
`serve` prints its address on the first line of stdout, then each event as
one JSON object per line. Exit status: 0 ok, 1 server unreachable, 2 usage
error, 3 refused by the server (its message on stderr). `python -m simulators.wan` runs the same
commands without the rest of `outpost`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from appliance.cli import subcommands

DEFAULT_SERVER = "http://127.0.0.1:8474"


class Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Client:
    """A minimal blocking toxiproxy-API client."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.base + path, data=data, method=method)
        request.add_header("Content-Type", "application/json")
        request.add_header("User-Agent", "outpost-sim-wan")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raw = exc.read()
            try:
                message = json.loads(raw).get("error", raw.decode())
            except (ValueError, AttributeError):
                message = raw.decode("utf-8", "replace").strip()
            raise Refused(exc.code, message) from None
        return json.loads(raw) if raw.strip() else None


def _client(args: argparse.Namespace) -> Client:
    return Client(args.server)


def _print(value: Any) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _attributes(pairs: Sequence[str]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"attribute {pair!r} is not key=value")
        try:
            result[key] = json.loads(text)
        except ValueError:
            result[key] = text
    return result


# -- commands ----------------------------------------------------------------
def cmd_serve(args: argparse.Namespace) -> int:
    from twisted.internet import reactor

    from simulators.wan.server import ConfigError, load_config, serve

    try:
        config = load_config(args.config) if args.config else None
    except (ConfigError, OSError) as exc:
        print(f"outpost sim wan serve: {exc}", file=sys.stderr)
        return 2
    def print_event(event: dict[str, Any]) -> None:
        print(json.dumps(event, sort_keys=True), flush=True)

    try:
        sim, port = serve(reactor, args.api, config, seed=args.seed,
                          time_scale=args.time_scale)
    except Exception as exc:  # a bad config entry or a busy port: say which, exit
        print(f"outpost sim wan serve: {exc}", file=sys.stderr)
        return 3
    host = port.getHost()
    print(f"WAN simulator API on http://{host.host}:{host.port} "
          f"({len(sim.proxies)} proxies)", flush=True)
    if not args.quiet:  # the first line stays the address, for scripts
        for event in sim.events:
            print_event(event)
        sim.observers.append(print_event)
    reactor.run()  # type: ignore[misc]
    return 0


def cmd_proxy_add(args: argparse.Namespace) -> int:
    body = {"name": args.name, "listen": args.listen, "upstream": args.upstream,
            "enabled": not args.disabled}
    proxy = _client(args).call("POST", "/proxies", body)
    print(f"Created new proxy {proxy['name']} listening on {proxy['listen']}")
    return 0


def cmd_proxy_list(args: argparse.Namespace) -> int:
    proxies = _client(args).call("GET", "/proxies")
    if args.json:
        _print(proxies)
        return 0
    print(f"{'Name':<20} {'Listen':<22} {'Upstream':<22} {'Enabled':<8} Toxics")
    for name in sorted(proxies):
        p = proxies[name]
        toxics = ", ".join(t["name"] for t in p["toxics"]) or "None"
        print(f"{name:<20} {p['listen']:<22} {p['upstream']:<22} {p['enabled']!s:<8} {toxics}")
    return 0


def _request(method: str, path: str, said: str | None = None) -> Callable[[argparse.Namespace], int]:
    """A command that sends one body-less request to `path` and prints the answer, or
    `said` instead when given (both formatted with the command's arguments)."""
    def command(args: argparse.Namespace) -> int:
        answer = _client(args).call(method, path.format(**vars(args)))
        if said is None:
            _print(answer)
        else:
            print(said.format(**vars(args)))
        return 0

    return command


cmd_proxy_show = _request("GET", "/proxies/{name}")
cmd_proxy_delete = _request("DELETE", "/proxies/{name}", "Deleted proxy {name}")
cmd_toxic_remove = _request("DELETE", "/proxies/{proxy}/toxics/{name}",
                            "Removed toxic '{name}' on proxy '{proxy}'")
cmd_toxic_list = _request("GET", "/proxies/{proxy}/toxics")
cmd_schedule_list = _request("GET", "/schedules")
cmd_schedule_show = _request("GET", "/schedules/{id}")
cmd_schedule_stop = _request("DELETE", "/schedules/{id}", "Stopped schedule {id}")


def cmd_proxy_enable(args: argparse.Namespace) -> int:
    _client(args).call("POST", f"/proxies/{args.name}", {"enabled": args.enabled})
    print(f"{'Enabled' if args.enabled else 'Disabled'} proxy {args.name}")
    return 0


def cmd_toxic_add(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"type": args.type, "stream": args.stream,
                            "toxicity": args.toxicity, "attributes": _attributes(args.a)}
    if args.name:
        body["name"] = args.name
    toxic = _client(args).call("POST", f"/proxies/{args.proxy}/toxics", body)
    print(f"Added {toxic['stream']} {toxic['type']} toxic '{toxic['name']}' "
          f"on proxy '{args.proxy}'")
    return 0


def cmd_toxic_update(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"attributes": _attributes(args.a)}
    if args.toxicity is not None:
        body["toxicity"] = args.toxicity
    _print(_client(args).call("POST", f"/proxies/{args.proxy}/toxics/{args.name}", body))
    return 0


def cmd_partition(args: argparse.Namespace) -> int:
    client = _client(args)
    for stream in ("upstream", "downstream"):
        client.call("POST", f"/proxies/{args.proxy}/toxics", {
            "name": f"partition_{stream}", "type": "partition", "stream": stream,
            "attributes": {"user_timeout": args.user_timeout}})
    print(f"Partitioned proxy {args.proxy}")
    return 0


def cmd_heal(args: argparse.Namespace) -> int:
    client = _client(args)
    for stream in ("upstream", "downstream"):
        try:
            client.call("DELETE", f"/proxies/{args.proxy}/toxics/partition_{stream}")
        except Refused as exc:
            if exc.status != 404 or "toxic" not in str(exc):
                raise
    print(f"Healed proxy {args.proxy}")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    _client(args).call("POST", "/reset", {})
    print("Reset: all proxies enabled, all toxics removed")
    return 0


def cmd_events(args: argparse.Namespace) -> int:
    _print(_client(args).call("GET", f"/events?since={args.since}")["events"])
    return 0


def cmd_schedule_run(args: argparse.Namespace) -> int:
    from simulators.wan.schedule import ScheduleError, load_schedule

    try:
        load_schedule(args.file)  # report file errors here, with the file's name
    except (ScheduleError, OSError) as exc:
        print(f"outpost sim wan schedule run: {exc}", file=sys.stderr)
        return 2
    import yaml

    with open(args.file) as handle:
        if args.file.endswith(".toml"):
            import tomllib

            doc = tomllib.loads(handle.read())
        else:
            doc = yaml.safe_load(handle)
    if isinstance(doc, dict) and "actions" not in doc and "schedule" in doc:
        doc = doc["schedule"]
    body: dict[str, Any] = {"schedule": doc}
    if args.seed is not None:
        body["seed"] = args.seed
    if args.time_scale is not None:
        body["time_scale"] = args.time_scale
    client = _client(args)
    run = client.call("POST", "/schedules", body)
    print(f"Started schedule {run['id']} ({run['planned']} events over {run['end']} s, "
          f"time scale {run['time_scale']})", flush=True)
    if not args.wait:
        return 0
    while run["status"] == "running":
        time.sleep(0.2)
        run = client.call("GET", f"/schedules/{run['id']}")
    _print(run)
    return 0


def cmd_netns(args: argparse.Namespace) -> int:
    from simulators.wan import netns

    pair = netns.NamespacePair(args.site, args.primary, prefix=args.prefix)
    try:
        if args.netns_command == "up":
            pair.create()
            print(f"{pair.site} ({pair.site_ip}) <-> {pair.primary} ({pair.primary_ip})")
        elif args.netns_command == "cut":
            pair.cut(args.how)
        elif args.netns_command == "heal":
            pair.heal()
        else:
            pair.destroy()
    except netns.NetnsError as exc:
        print(f"outpost sim wan netns: {exc}", file=sys.stderr)
        return 3
    return 0


# -- parser ------------------------------------------------------------------
def _wrap(func: Any) -> Any:
    def run(args: argparse.Namespace) -> int:
        try:
            status: int = func(args)
            return status
        except Refused as exc:
            print(f"error: HTTP {exc.status}: {exc}", file=sys.stderr)
            return 3
        except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
            print(f"error: cannot reach {args.server}: {exc}", file=sys.stderr)
            return 1

    return run


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `wan` and its subcommands to `outpost sim`'s subparsers."""
    wan = subparsers.add_parser(
        "wan", help="WAN-fault simulator (toxiproxy-compatible proxies, partitions, schedules)",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    wan.add_argument("--server", default=os.environ.get("OUTPOST_WAN_API", DEFAULT_SERVER),
                     help="control API of a running simulator (default %(default)s)")
    commands = subcommands(wan, "wan_command", "COMMAND")

    serve = commands.add_parser("serve", help="run the simulator and its control API")
    serve.add_argument("--api", default="127.0.0.1:8474", help="API listen address")
    serve.add_argument("--config", help="proxies/toxics/schedule file (YAML, TOML, JSON)")
    serve.add_argument("--seed", type=int, default=None, help="seed for toxicity, jitter and loss")
    serve.add_argument("--time-scale", type=float, default=1.0,
                       help="run the config's schedule this many times faster")
    serve.add_argument("--quiet", "-q", action="store_true",
                       help="do not print events (one JSON object per line) to stdout")
    serve.set_defaults(func=cmd_serve)

    proxy = commands.add_parser("proxy", help="create, list, enable, disable, delete proxies")
    proxy_cmds = subcommands(proxy, "proxy_command")
    add = proxy_cmds.add_parser("add", help="create a proxy")
    add.add_argument("name")
    add.add_argument("--listen", "-l", default="127.0.0.1:0")
    add.add_argument("--upstream", "-u", required=True)
    add.add_argument("--disabled", action="store_true")
    add.set_defaults(func=_wrap(cmd_proxy_add))
    lst = proxy_cmds.add_parser("list", help="list proxies and their toxics")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=_wrap(cmd_proxy_list))
    for name, func, helptext in (("show", cmd_proxy_show, "show one proxy"),
                                 ("delete", cmd_proxy_delete, "delete a proxy")):
        sub = proxy_cmds.add_parser(name, help=helptext)
        sub.add_argument("name")
        sub.set_defaults(func=_wrap(func))
    for name, enabled in (("enable", True), ("disable", False)):
        sub = proxy_cmds.add_parser(name, help=f"{name} a proxy (disable = link down)")
        sub.add_argument("name")
        sub.set_defaults(func=_wrap(cmd_proxy_enable), enabled=enabled)

    toxic = commands.add_parser("toxic", help="add, update, remove toxics")
    toxic_cmds = subcommands(toxic, "toxic_command")
    tadd = toxic_cmds.add_parser("add", help="add a toxic to a proxy")
    tadd.add_argument("proxy")
    tadd.add_argument("--type", "-t", required=True)
    tadd.add_argument("--name", "-n")
    tadd.add_argument("--stream", "-s", default="downstream",
                      choices=("upstream", "downstream"))
    tadd.add_argument("--toxicity", type=float, default=1.0)
    tadd.add_argument("-a", action="append", default=[], metavar="KEY=VALUE",
                      help="toxic attribute, repeatable")
    tadd.set_defaults(func=_wrap(cmd_toxic_add))
    tupd = toxic_cmds.add_parser("update", help="change a toxic's attributes or toxicity")
    tupd.add_argument("proxy")
    tupd.add_argument("name")
    tupd.add_argument("--toxicity", type=float)
    tupd.add_argument("-a", action="append", default=[], metavar="KEY=VALUE")
    tupd.set_defaults(func=_wrap(cmd_toxic_update))
    trem = toxic_cmds.add_parser("remove", help="remove a toxic")
    trem.add_argument("proxy")
    trem.add_argument("name")
    trem.set_defaults(func=_wrap(cmd_toxic_remove))
    tlst = toxic_cmds.add_parser("list", help="list a proxy's toxics")
    tlst.add_argument("proxy")
    tlst.set_defaults(func=_wrap(cmd_toxic_list))

    part = commands.add_parser("partition", help="cut a link both ways (connections stall)")
    part.add_argument("proxy")
    part.add_argument("--user-timeout", type=int, default=0, metavar="MS",
                      help="reset connections with data waiting this long (0 = never)")
    part.set_defaults(func=_wrap(cmd_partition))
    heal = commands.add_parser("heal", help="undo `partition`")
    heal.add_argument("proxy")
    heal.set_defaults(func=_wrap(cmd_heal))
    reset = commands.add_parser("reset", help="enable all proxies, remove all toxics")
    reset.set_defaults(func=_wrap(cmd_reset))
    events = commands.add_parser("events", help="print the event log")
    events.add_argument("--since", type=int, default=0, metavar="SEQ")
    events.set_defaults(func=_wrap(cmd_events))

    sched = commands.add_parser("schedule", help="run seeded fault schedules on the server")
    sched_cmds = subcommands(sched, "schedule_command")
    srun = sched_cmds.add_parser("run", help="start a schedule file on the server")
    srun.add_argument("file")
    srun.add_argument("--seed", type=int)
    srun.add_argument("--time-scale", type=float)
    srun.add_argument("--wait", action="store_true", help="wait and print the event log")
    srun.set_defaults(func=_wrap(cmd_schedule_run))
    slist = sched_cmds.add_parser("list", help="list schedule runs")
    slist.set_defaults(func=_wrap(cmd_schedule_list))
    for name, func, helptext in (("show", cmd_schedule_show, "a run and its event log"),
                                 ("stop", cmd_schedule_stop, "stop a run and undo it")):
        sub = sched_cmds.add_parser(name, help=helptext)
        sub.add_argument("id")
        sub.set_defaults(func=_wrap(func))

    ns = commands.add_parser("netns", help="site and primary in network namespaces (root)")
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("--site", default="outpost-site", help="site namespace")
    names.add_argument("--primary", default="outpost-primary", help="primary namespace")
    names.add_argument("--prefix", default="10.213.0", help="first three octets of the /30")
    ns_cmds = subcommands(ns, "netns_command")
    ns_cmds.add_parser("up", parents=[names], help="create both namespaces and the veth pair")
    cut = ns_cmds.add_parser("cut", parents=[names], help="hard-cut the link")
    cut.add_argument("--how", choices=("link", "blackhole"), default="link")
    ns_cmds.add_parser("heal", parents=[names], help="undo a cut")
    ns_cmds.add_parser("down", parents=[names], help="delete both namespaces")
    ns.set_defaults(func=cmd_netns)
    return wan


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulators.wan")
    register(parser.add_subparsers(dest="sim_command", metavar="SIMULATOR", required=True))
    args = parser.parse_args(["wan", *(sys.argv[1:] if argv is None else argv)])
    status: int = args.func(args)
    return status


if __name__ == "__main__":
    sys.exit(main())

"""`outpost sim wan` argument parsing, through a harness like appliance/cli.py's."""

from __future__ import annotations

import argparse

import pytest

from simulators.wan import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="outpost sim")
    cli.register(parser.add_subparsers(dest="sim_command", required=True))
    return parser.parse_args(["wan", *argv])


def test_serve_defaults() -> None:
    args = parse("serve")
    assert args.func is cli.cmd_serve
    assert args.api == "127.0.0.1:8474" and args.config is None and not args.quiet


def test_every_client_command_has_a_func() -> None:
    for argv in (["proxy", "add", "p", "-u", "h:1"], ["proxy", "list"], ["proxy", "show", "p"],
                 ["proxy", "delete", "p"], ["proxy", "enable", "p"], ["proxy", "disable", "p"],
                 ["toxic", "add", "p", "-t", "latency"], ["toxic", "update", "p", "n"],
                 ["toxic", "remove", "p", "n"], ["toxic", "list", "p"], ["partition", "p"],
                 ["heal", "p"], ["reset"], ["events"], ["schedule", "run", "f.yaml"],
                 ["schedule", "list"], ["schedule", "show", "1"], ["schedule", "stop", "1"],
                 ["netns", "up", "--site", "a", "--primary", "b"],
                 ["netns", "cut", "--how", "blackhole"]):
        assert callable(parse(*argv).func), argv


def test_server_option_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse("--server", "http://h:1", "reset").server == "http://h:1"
    monkeypatch.setenv("OUTPOST_WAN_API", "http://env:2")
    assert parse("reset").server == "http://env:2"


def test_toxic_attributes_are_json_values() -> None:
    args = parse("toxic", "add", "p", "-t", "loss", "-a", "probability=0.01", "-a", "rto=150",
                 "-a", "label=x")
    assert cli._attributes(args.a) == {"probability": 0.01, "rto": 150, "label": "x"}
    with pytest.raises(SystemExit):
        cli._attributes(["novalue"])


def test_bad_stream_is_a_usage_error() -> None:
    with pytest.raises(SystemExit) as caught:
        parse("toxic", "add", "p", "-t", "latency", "-s", "sideways")
    assert caught.value.code == 2


def test_outpost_assembles_the_wan_commands() -> None:
    from appliance import cli as appliance_cli

    parser = appliance_cli.build_parser()
    args = parser.parse_args(["sim", "wan", "proxy", "list"])
    assert args.wan_command == "proxy"

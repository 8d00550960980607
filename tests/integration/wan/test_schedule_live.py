"""A seeded 10-minute flap schedule against a live server, driven by the CLI.

The server is `python -m simulators.wan serve` in its own process; the
schedule runs at 300x (10 minutes in 2 s) and its event log is read back
from the control API. Same seed, same log; another seed, another log.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulators.wan import cli

REPO = Path(__file__).resolve().parents[3]

SCHEDULE = """
name: flaky-uplink
duration: 10m
actions:
  - flap: {proxy: uplink, every: [2s, 20s]}
  - degrade: {proxy: uplink, latency: 300ms, jitter: 100ms, loss: 0.01}
"""


running: dict[str, subprocess.Popen[str]] = {}


@contextlib.contextmanager
def running_server(*extra: str, quiet: bool = True) -> Iterator[str]:
    process = subprocess.Popen(
        [sys.executable, "-m", "simulators.wan", "serve", *(["--quiet"] if quiet else []),
         "--api", "127.0.0.1:0", *extra],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None and process.stderr is not None
        line = process.stdout.readline()
        match = re.search(r"http://[0-9.]+:\d+", line)
        assert match, f"server did not start: {line!r} {process.stderr.read()}"
        running[match.group(0)] = process
        yield match.group(0)
    finally:
        process.terminate()
        process.wait(timeout=10)


@pytest.fixture
def server() -> Iterator[str]:
    with running_server() as url:
        yield url


def run_cli(capsys: pytest.CaptureFixture[str], server: str, *argv: str) -> tuple[int, str]:
    status = cli.main(["--server", server, *argv])
    captured = capsys.readouterr()
    return status, captured.out + captured.err


def schedule_log(capsys: pytest.CaptureFixture[str], server: str, path: Path, seed: int) -> list:
    status, out = run_cli(capsys, server, "schedule", "run", str(path), "--seed", str(seed),
                          "--time-scale", "300", "--wait")
    assert status == 0, out
    run_id = re.search(r"Started schedule (\d+)", out).group(1)  # type: ignore[union-attr]
    status, out = run_cli(capsys, server, "schedule", "show", run_id)
    assert status == 0
    run = json.loads(out)
    assert run["status"] == "finished"
    return run["events"]


@pytest.mark.integration
def test_seeded_flap_schedule_is_repeatable(
    server: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run_cli(capsys, server, "proxy", "add", "uplink",
                          "--listen", "127.0.0.1:0", "--upstream", "127.0.0.1:9")
    assert status == 0, out
    path = tmp_path / "flap.yaml"
    path.write_text(SCHEDULE)

    first = schedule_log(capsys, server, path, seed=1)
    second = schedule_log(capsys, server, path, seed=1)
    other = schedule_log(capsys, server, path, seed=2)

    assert first == second
    assert first != other
    cuts = [e for e in first if e["action"] == "partition"]
    heals = [e for e in first if e["action"] == "heal"]
    assert len(cuts) >= 10 and len(heals) == len(cuts)  # 600 s / (2..20 s) per state
    times = [e["t"] for e in first if e["action"] in ("partition", "heal")]
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(2.0 - 1e-9 <= gap <= 20.0 + 1e-9 for gap in gaps[:-1])
    assert times[-1] <= 600
    added = {e["toxic"] for e in first if e["action"] == "add_toxic"}
    assert added == {"degrade1_latency_upstream", "degrade1_latency_downstream",
                     "degrade1_loss_upstream", "degrade1_loss_downstream"}
    assert not any("error" in e for e in first)

    # Without `for`, the degrade lasted to the schedule's end; the link ends clean.
    removed = {e["toxic"] for e in first if e["action"] == "remove_toxic"}
    assert removed == added
    status, out = run_cli(capsys, server, "proxy", "list", "--json")
    assert json.loads(out)["uplink"]["toxics"] == []

    # The global event log attributes each change to its schedule run.
    status, out = run_cli(capsys, server, "events")
    sources = {e["source"] for e in json.loads(out)}
    assert {"api", "schedule:1", "schedule:2", "schedule:3"} <= sources


@pytest.mark.integration
def test_cli_errors_and_exit_status(
    server: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out = run_cli(capsys, server, "toxic", "add", "nowhere", "--type", "latency")
    assert status == 3 and "proxy not found" in out
    status, out = run_cli(capsys, server, "proxy", "add", "p", "--upstream", "127.0.0.1:9")
    assert status == 0
    status, out = run_cli(capsys, server, "toxic", "add", "p", "--type", "nonsense")
    assert status == 3 and "invalid toxic type" in out
    status, out = run_cli(capsys, server, "toxic", "add", "p", "-t", "latency",
                          "-a", "latency=250", "-a", "jitter=20")
    assert status == 0 and "latency_downstream" in out
    status, out = run_cli(capsys, server, "partition", "p")
    assert status == 0
    status, out = run_cli(capsys, server, "heal", "p")
    assert status == 0
    status, out = run_cli(capsys, server, "toxic", "list", "p")
    assert [t["name"] for t in json.loads(out)] == ["latency_downstream"]
    status, out = run_cli(capsys, server, "reset")
    assert status == 0
    status, out = run_cli(capsys, "http://127.0.0.1:9", "proxy", "list")
    assert status == 1 and "cannot reach" in out


@pytest.mark.integration
def test_serve_with_toxiproxy_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "toxiproxy.json"
    config.write_text(json.dumps([
        {"name": "web", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9", "enabled": True},
        {"name": "db", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9", "enabled": False},
    ]))
    with running_server("--config", str(config)) as url:
        _status, out = run_cli(capsys, url, "proxy", "list", "--json")
        proxies = json.loads(out)
        assert {name: p["enabled"] for name, p in proxies.items()} == {"web": True, "db": False}


@pytest.mark.integration
def test_serve_with_yaml_config_and_schedule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "wan.yaml"
    config.write_text("""
seed: 5
proxies:
  - {name: uplink, listen: 127.0.0.1:0, upstream: 127.0.0.1:9}
toxics:
  uplink:
    - {type: latency, stream: downstream, attributes: {latency: 250}}
schedule:
  seed: 3
  time_scale: 1000
  actions:
    - cut: {proxy: uplink, at: 10s, for: 1h}
""")
    with running_server("--config", str(config)) as url:
        _status, out = run_cli(capsys, url, "toxic", "list", "uplink")
        assert "latency_downstream" in [t["name"] for t in json.loads(out)]
        for _ in range(100):
            _status, out = run_cli(capsys, url, "schedule", "show", "1")
            if json.loads(out)["status"] == "finished":
                break
            time.sleep(0.1)
        events = json.loads(out)["events"]
        assert [(e["t"], e["action"]) for e in events] == [(10.0, "partition"),
                                                           (3610.0, "heal")]


@pytest.mark.integration
def test_serve_refuses_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("schedule: {actions: [{wobble: {proxy: x}}]}")
    result = subprocess.run(
        [sys.executable, "-m", "simulators.wan", "serve", "--api", "127.0.0.1:0",
         "--config", str(config)], cwd=REPO, capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "unknown action" in result.stderr


@pytest.mark.integration
def test_serve_prints_events_as_json_lines(capsys: pytest.CaptureFixture[str]) -> None:
    with running_server(quiet=False) as url:
        status, _ = run_cli(capsys, url, "proxy", "add", "p", "--upstream", "127.0.0.1:9")
        assert status == 0
        stdout = running[url].stdout
        assert stdout is not None
        event = json.loads(stdout.readline())
        assert event["action"] == "proxy_created" and event["proxy"] == "p"
        assert event["source"] == "api"

"""`outpost sim panel` and `outpost sim mfd fault`: exit codes and the one JSON object."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import threads

from simulators.mfd import cli
from simulators.mfd.printer import SimulatedMfd

from .fake_device_api import DEVICE, FakeDeviceApi


@pytest.fixture
def api() -> Iterator[FakeDeviceApi]:
    fake = FakeDeviceApi()
    yield fake
    fake.close()


def write_lab(lab: Path, device_api: str, control: str = "http://127.0.0.1:9/control") -> Path:
    lab.mkdir(parents=True, exist_ok=True)
    endpoints = {
        "sites": [{
            "name": "site-a", "pid": 1, "state_dir": str(lab / "site-a"),
            "ipp": "ipp://127.0.0.1:1/printers/findme", "device_api": device_api,
            "mfds": [{"name": DEVICE, "ipp": "ipp://127.0.0.1:2/ipp/print",
                      "queue": f"ipp://127.0.0.1:1/printers/{DEVICE}",
                      "output": str(lab / "out"), "control": control}],
        }],
        "users": [{"username": "alice", "card": "0004", "pin": "1234", "password": "secret",
                   "balance": 100}],
    }
    (lab / "endpoints.json").write_text(json.dumps(endpoints))
    return lab


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    """Run one command; (exit status, the JSON object it printed or None)."""
    try:
        status = cli.main(argv)
    except SystemExit as exc:
        status = int(exc.code or 0)
    out = capsys.readouterr().out.strip()
    return status, json.loads(out) if out else None


def panel(lab: Path, *rest: str, login: tuple[str, ...] = ("--card", "0004")) -> list[str]:
    return ["panel", "--lab", str(lab), "--mfd", DEVICE, *login, *rest]


@pytest.mark.parametrize(
    "argv",
    [
        ["panel", "--mfd", DEVICE, "--card", "1", "jobs"],  # no --lab
        ["panel", "--lab", "x", "--mfd", DEVICE, "jobs"],  # nobody
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "--user", "a", "jobs"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--user", "alice", "jobs"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--user", "a", "--pin", "1", "--password",
         "p", "jobs"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "--password", "p", "jobs"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1"],  # no command
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "release"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "release", "seventeen"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "copy", "--pages", "0"],
        ["panel", "--lab", "x", "--mfd", DEVICE, "--card", "1", "print"],
        ["mfd", "fault", "--lab", "x", "--mfd", DEVICE, "melt"],
        ["mfd", "fault", "--lab", "x", "--mfd", DEVICE, "jam", "--after-pages", "-1"],
        ["mfd", "serve", "--name", "m"],
        ["mfd", "serve", "--name", "m", "--output", "o", "--state", "s", "--page-delay", "-1"],
    ],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = run(argv, capsys)
    assert status == 2


def test_a_lab_without_endpoints_is_a_usage_error(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(panel(tmp_path / "nolab", "jobs"), capsys)
    assert status == 2
    assert out["ok"] is False and out["error"]["code"] == "usage"
    status, out = run(["mfd", "fault", "--lab", str(tmp_path), "--mfd", DEVICE, "none"], capsys)
    assert status == 2


def test_an_unknown_mfd_is_a_usage_error(tmp_path: Path, api: FakeDeviceApi,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    lab = write_lab(tmp_path, api.url)
    status, out = run(["panel", "--lab", str(lab), "--mfd", "mfd-9", "--card", "0004", "jobs"],
                      capsys)
    assert status == 2 and "mfd-9" in out["error"]["message"]
    assert api.seen == []


def test_jobs(tmp_path: Path, api: FakeDeviceApi, capsys: pytest.CaptureFixture[str]) -> None:
    status, out = run(panel(write_lab(tmp_path, api.url), "jobs"), capsys)
    assert status == 0
    assert out["ok"] is True and out["error"] is None
    assert [(j["id"], j["name"], j["pages"], j["cost"]) for j in out["jobs"]] == [
        (17, "report.pdf", 3, 30), (18, "memo.pdf", 1, 10)]
    assert (out["mfd"], out["site"], out["user"]) == (DEVICE, "site-a", "alice")
    assert [(s.method, s.path) for s in api.seen] == [
        ("POST", "/api/v1/sessions"), ("GET", "/api/v1/jobs"), ("DELETE", "/api/v1/session")]
    assert all(s.headers["X-Outpost-Device"] == DEVICE for s in api.seen)


def test_release_and_balance(tmp_path: Path, api: FakeDeviceApi,
                             capsys: pytest.CaptureFixture[str]) -> None:
    lab = write_lab(tmp_path, api.url)
    status, out = run(panel(lab, "release", "17", login=("--user", "alice", "--pin", "1234")),
                      capsys)
    assert status == 0
    assert (out["released"], out["failed"], out["charged"]) == ([17], [], 30)
    status, out = run(panel(lab, "release", "99"), capsys)
    assert status == 3
    assert out["ok"] is False and out["failed"][0]["id"] == 99 and out["error"]["code"]
    status, out = run(panel(lab, "release", "--all",
                            login=("--user", "alice", "--password", "secret")), capsys)
    assert (status, out["released"], out["charged"]) == (0, [18], 10)
    status, out = run(panel(lab, "balance"), capsys)
    assert (status, out["balance"]) == (0, 60)


def test_copy(tmp_path: Path, api: FakeDeviceApi, capsys: pytest.CaptureFixture[str]) -> None:
    lab = write_lab(tmp_path, api.url)
    status, out = run(panel(lab, "copy", "--pages", "3", "--colour"), capsys)
    assert status == 0
    assert (out["copied"], out["charged"], out["allowed"], out["balance"]) == (3, 30, True, 70)
    assert api.seen[-2].body["colour"] is True
    api.balance = 0
    status, out = run(panel(lab, "copy", "--pages", "3"), capsys)
    assert status == 3
    assert (out["ok"], out["copied"], out["allowed"]) == (False, 0, False)


def test_login_refused_exits_3(tmp_path: Path, api: FakeDeviceApi,
                               capsys: pytest.CaptureFixture[str]) -> None:
    lab = write_lab(tmp_path, api.url)
    status, out = run(panel(lab, "jobs", login=("--card", "9999")), capsys)
    assert status == 3
    assert out == {"ok": False, "error": {"code": "invalid_credentials",
                                          "message": "invalid_credentials"},
                   "stage": "login", "mfd": DEVICE, "site": "site-a"}


def test_an_unreachable_site_exits_3(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    lab = write_lab(tmp_path, f"http://127.0.0.1:{port}/api/v1")
    status, out = run(panel(lab, "balance"), capsys)
    assert status == 3
    assert out["ok"] is False and out["error"]["code"] == "unavailable"


@pytest_twisted.ensureDeferred
async def test_fault_posts_to_the_control_api(tmp_path: Path, make_mfd: Any,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    mfd: SimulatedMfd = make_mfd()
    lab = write_lab(tmp_path / "lab", "http://127.0.0.1:9/api/v1", mfd.control_uri)
    argv = ["mfd", "fault", "--lab", str(lab), "--mfd", DEVICE, "jam", "--after-pages", "2",
            "--persist"]
    status = await threads.deferToThread(cli.main, argv)
    assert status == 0
    answer = json.loads(capsys.readouterr().out)
    assert answer["fault"] == {"mode": "jam", "after_pages": 2, "page_delay": 0.0,
                               "once": False}
    assert mfd.fault.mode == "jam" and mfd.fault.once is False

    argv = ["mfd", "fault", "--lab", str(lab), "--mfd", DEVICE, "slow", "--page-delay", "-3"]
    assert await threads.deferToThread(cli.main, argv) == 2
    assert "page_delay" in json.loads(capsys.readouterr().out)["error"]
    assert mfd.fault.mode == "jam"


def test_registered_under_outpost_sim() -> None:
    from appliance.cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["sim", "panel", "--lab", "x", "--mfd", "m", "--card", "1", "jobs"])
    assert args.func is cli.panel_command
    args = parser.parse_args(["sim", "mfd", "fault", "--lab", "x", "--mfd", "m", "offline"])
    assert args.func is cli.fault_command
    args = parser.parse_args(["sim", "mfd", "serve", "--name", "m", "--output", "o",
                              "--state", "s", "--page-delay", "0.5", "--mono"])
    assert (args.func, args.page_delay, args.mono) == (cli.serve_command, 0.5, True)

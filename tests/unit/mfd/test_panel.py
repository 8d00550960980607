"""The panel client's HTTP shape, against a fake of the device API."""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator

import pytest

from simulators.mfd import panel as panel_module
from simulators.mfd.panel import Panel, PanelUnavailable

from .fake_device_api import DEVICE, FakeDeviceApi


@pytest.fixture
def api() -> Iterator[FakeDeviceApi]:
    fake = FakeDeviceApi()
    yield fake
    fake.close()


@pytest.fixture
def panel(api: FakeDeviceApi) -> Panel:
    return Panel(api.url, DEVICE, timeout=5)


def test_login_names_the_device_and_keeps_the_session(api: FakeDeviceApi, panel: Panel) -> None:
    answer = panel.login_card("0004", "1234")
    assert answer["ok"] is True and answer["session"] == "token-1"
    assert panel.session == "token-1"
    assert panel.last_status == 201
    login = api.seen[-1]
    assert (login.method, login.path) == ("POST", "/api/v1/sessions")
    assert login.headers["X-Outpost-Device"] == DEVICE
    assert login.headers["Content-Type"] == "application/json"
    assert "Authorization" not in login.headers
    assert login.body == {"card": "0004", "pin": "1234"}

    panel.jobs()
    assert api.seen[-1].headers["Authorization"] == "Bearer token-1"
    assert panel.logout()["ok"] is True
    assert (api.seen[-1].method, api.seen[-1].path) == ("DELETE", "/api/v1/session")
    assert panel.session is None


@pytest.mark.parametrize(
    ("login", "body"),
    [
        (lambda p: p.login_card("0004"), {"card": "0004"}),
        (lambda p: p.login_pin("alice", "1234"), {"username": "alice", "pin": "1234"}),
        (lambda p: p.login_password("alice", "secret"),
         {"username": "alice", "password": "secret"}),
    ],
)
def test_each_login_method(api: FakeDeviceApi, panel: Panel, login: object, body: dict) -> None:
    assert login(panel)["ok"] is True  # type: ignore[operator]
    assert api.seen[-1].body == body


def test_refusals_are_answers_not_exceptions(api: FakeDeviceApi, panel: Panel) -> None:
    refused = panel.login_password("alice", "wrong")
    assert refused == {"ok": False, "error": {"code": "invalid_credentials",
                                              "message": "invalid_credentials"}}
    assert panel.last_status == 401 and panel.session is None
    assert panel.jobs()["error"]["code"] == "no_session"
    stranger = Panel(api.url, "mfd-99")
    assert stranger.login_card("0004")["error"]["code"] == "unknown_device"


def test_jobs_release_cancel_balance(api: FakeDeviceApi, panel: Panel) -> None:
    panel.login_card("0004")
    assert [job["id"] for job in panel.jobs()["jobs"]] == [17, 18]
    assert panel.balance()["balance"] == 100

    answer = panel.release([17])
    assert api.seen[-1].body == {"jobs": [17]}
    assert (answer["ok"], answer["released"], answer["charged"]) == (True, [17], 30)

    failed = panel.release([99])
    assert failed["ok"] is False and failed["failed"][0]["id"] == 99
    assert panel.last_status == 409

    assert panel.cancel(18) == {"ok": True, "error": None, "cancelled": [18]}
    assert (api.seen[-1].method, api.seen[-1].path) == ("DELETE", "/api/v1/jobs/18")
    assert panel.cancel(18)["error"]["code"] == "not_found"

    api.jobs.append({"id": 20, "cost": 5})
    assert panel.release("all")["released"] == [20]
    assert api.seen[-1].body == {"jobs": "all"}


def test_copy_authorises_then_reports_usage(api: FakeDeviceApi, panel: Panel) -> None:
    panel.login_card("0004")
    answer = panel.copy(4, colour=True, sides="two-sided-long-edge")
    authorize, usage = api.seen[-2], api.seen[-1]
    assert (authorize.path, authorize.body) == (
        "/api/v1/copy/authorize", {"pages": 4, "colour": True, "sides": "two-sided-long-edge"})
    assert usage.path == "/api/v1/usage"
    assert re.fullmatch(rf"{DEVICE}:copy:[0-9a-f-]{{36}}", usage.body["id"])
    assert usage.body | {"id": "x"} == {"id": "x", "kind": "copy", "pages": 4, "colour": True,
                                        "sides": "two-sided-long-edge"}
    assert (answer["ok"], answer["allowed"], answer["copied"], answer["charged"],
            answer["balance"]) == (True, True, 4, 40, 60)

    second = panel.copy(1)
    assert api.seen[-1].body["id"] != usage.body["id"]  # a fresh id per copy job
    assert second["copied"] == 1


def test_copy_is_cut_to_what_the_balance_allows(api: FakeDeviceApi, panel: Panel) -> None:
    panel.login_card("0004")
    api.balance = 25
    answer = panel.copy(10)
    assert (answer["ok"], answer["allowed"], answer["max_pages"], answer["copied"],
            answer["charged"]) == (True, False, 2, 2, 20)
    assert api.seen[-1].body["pages"] == 2

    api.balance = 5
    seen = len(api.seen)
    refused = panel.copy(3)
    assert refused["ok"] is False and refused["copied"] == 0 and refused["charged"] == 0
    assert refused["error"]["code"] == "insufficient_balance"
    assert len(api.seen) == seen + 1  # asked, but reported nothing


def test_a_lost_usage_answer_is_retried_with_the_same_id(
    api: FakeDeviceApi, panel: Panel, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(panel_module, "RETRY_PAUSE", 0.01)
    panel.login_card("0004")
    api.drop_usage = 1
    answer = panel.copy(3)
    reports = [seen for seen in api.seen if seen.path == "/api/v1/usage"]
    assert len(reports) == 2 and reports[0].body == reports[1].body
    assert answer["ok"] is True and answer["duplicate"] is True
    assert api.balance == 70  # charged once


def test_an_unreachable_site_raises_panel_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    panel = Panel(f"http://127.0.0.1:{port}/api/v1", DEVICE, timeout=2)
    with pytest.raises(PanelUnavailable):
        panel.login_card("0004")


def test_a_non_json_answer_is_a_failure_not_a_crash(panel: Panel) -> None:
    answer = panel._call("GET", "/html")
    assert answer["ok"] is False and answer["error"]["code"] == "bad_response"
    assert panel.last_status == 502


def test_device_api_must_be_http() -> None:
    with pytest.raises(ValueError):
        Panel("ipp://127.0.0.1:631/api/v1", DEVICE)

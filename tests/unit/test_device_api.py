"""The device API in process: contract answers, and a hypothesis fuzz that only protocol
errors come back (never a 500, never an unhandled error in the log)."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet import defer, reactor
from twisted.logger import globalLogPublisher
from twisted.web import server
from twisted.web.test.requesthelper import DummyRequest

from appliance.app import build_site
from appliance.config import parse
from appliance.serve_cli import import_users


class InlineDatabase:
    """Transactions on the calling thread, so a request is answered before render returns."""

    def __init__(self, database: Any) -> None:
        self.database = database

    def run(self, work: Any) -> defer.Deferred[Any]:
        return defer.maybeDeferred(self.database.run_sync, work)


def inline(fn: Any, *args: Any) -> defer.Deferred[Any]:
    return defer.maybeDeferred(fn, *args)


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    folder: Path = tmp_path_factory.mktemp("api")
    raw = {
        "name": "site-t", "state_dir": str(folder / "state"), "secrets_dir": str(folder / "keys"),
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192, "max_failures": 1000},
        "devices": [{"name": "mfd-1", "uri": "ipp://127.0.0.1:9/ipp/print"}],
    }
    config_path = folder / "site.toml"
    config_path.write_text(
        f'name = "site-t"\nstate_dir = "{folder / "state"}"\nsecrets_dir = "{folder / "keys"}"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_kib = 8192\nmax_failures = 1000\n"
        '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n')
    import_users(config_path, [
        {"username": "alice", "card": "111222333", "pin": "1234", "password": "pw-alice",
         "balance": 1000},
        {"username": "bob", "card": "444555666", "pin": "9999", "password": "pw-bob",
         "balance": 15},
    ])
    built = build_site(parse(raw), reactor)
    built.store.database = InlineDatabase(built.database)  # type: ignore[assignment]
    built.auth._in_thread = inline
    yield built
    built.database.close()


def call(site: Any, method: bytes, path: str, body: bytes | None = None,
         device: str | None = "mfd-1", token: str | None = None) -> tuple[int, dict[str, Any]]:
    request = DummyRequest([p.encode() for p in path.split("/") if p])
    request.method = method
    request.content = io.BytesIO(body or b"")  # type: ignore[attr-defined]
    if device is not None:
        request.requestHeaders.addRawHeader(b"x-outpost-device", device.encode())
    if token is not None:
        request.requestHeaders.addRawHeader(b"authorization", f"Bearer {token}".encode())
    assert site.device_api.render(request) is server.NOT_DONE_YET
    assert request.finished, "inline site answers at once"
    code = request.responseCode or 200
    return code, json.loads(b"".join(request.written))


def login(site: Any, **body: str) -> tuple[int, dict[str, Any]]:
    return call(site, b"POST", "sessions", json.dumps(body).encode())


def test_login_methods_balance_and_logout(site):
    for body in ({"card": "111222333"}, {"card": "111222333", "pin": "1234"},
                 {"username": "alice", "pin": "1234"}, {"username": "alice", "password": "pw-alice"}):
        code, answer = login(site, **body)
        assert code == 201 and answer["ok"] and answer["user"]["username"] == "alice"
        assert answer["balance"] == 1000 and answer["error"] is None
        token = answer["session"]
        assert call(site, b"GET", "balance", token=token) == (
            200, {"ok": True, "balance": 1000, "error": None})
        assert call(site, b"DELETE", "session", token=token)[0] == 200
        code, answer = call(site, b"GET", "balance", token=token)
        assert code == 401 and answer["error"]["code"] == "no_session"


def test_refusals_have_stable_codes(site):
    assert login(site, card="000")[1]["error"]["code"] == "invalid_credentials"
    assert login(site, username="alice", pin="0000")[0] == 401
    assert login(site, username="alice")[1]["error"]["code"] == "bad_request"
    assert call(site, b"POST", "sessions", b"{not json")[1]["error"]["code"] == "bad_request"
    assert call(site, b"POST", "sessions", b"[]")[0] == 400
    assert call(site, b"POST", "sessions", b'{"card": "111222333"}', device="mfd-9")[0] == 403
    assert call(site, b"POST", "sessions", b'{"card": "111222333"}', device=None)[0] == 403
    assert call(site, b"GET", "nowhere")[1]["error"]["code"] == "not_found"
    assert call(site, b"PUT", "sessions")[1]["error"]["code"] == "method_not_allowed"
    assert call(site, b"POST", "sessions", b" " * 70000)[1]["error"]["code"] == "too_large"


def test_copy_authorisation_and_idempotent_usage(site):
    token = login(site, card="444555666")[1]["session"]
    code, answer = call(site, b"POST", "copy/authorize",
                        b'{"pages": 3, "colour": false}', token=token)
    assert code == 200 and (answer["allowed"], answer["max_pages"], answer["cost"]) == (
        False, 1, 30), "bob's 15 pays for one mono page"
    usage = json.dumps({"id": "mfd-1:copy:t1", "kind": "copy", "pages": 1,
                        "colour": False}).encode()
    first = call(site, b"POST", "usage", usage, token=token)
    again = call(site, b"POST", "usage", usage, token=token)
    assert first == (200, {"ok": True, "charged": 10, "balance": 5, "duplicate": False,
                           "error": None})
    assert again[1]["duplicate"] is True and again[1]["balance"] == 5
    other = json.dumps({"id": "mfd-1:copy:t1", "kind": "copy", "pages": 2,
                        "colour": False}).encode()
    assert call(site, b"POST", "usage", other, token=token)[1]["error"]["code"] == "conflict"
    assert call(site, b"GET", "balance", token=token)[1]["balance"] == 5


def test_release_of_unknown_jobs_and_cancel_of_others_jobs_are_refused(site):
    token = login(site, card="111222333")[1]["session"]
    code, answer = call(site, b"POST", "jobs/release", b'{"jobs": [4242]}', token=token)
    assert code == 409 and answer["error"]["code"] == "not_found" and answer["released"] == []
    assert call(site, b"POST", "jobs/release", b'{"jobs": "some"}', token=token)[0] == 400
    assert call(site, b"DELETE", "jobs/4242", token=token)[1]["error"]["code"] == "not_found"
    code, answer = call(site, b"GET", "jobs", token=token)
    assert (code, answer["ok"], answer["jobs"]) == (200, True, [])


# ---------------------------------------------------------------- fuzz

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
known_fields = st.fixed_dictionaries({}, optional={
    "card": json_values | st.sampled_from(["111222333", "444555666"]),
    "username": json_values | st.sampled_from(["alice", "bob", "*)(uid=*"]),
    "pin": json_values | st.sampled_from(["1234", "9999"]),
    "password": json_values, "jobs": json_values | st.just("all"),
    "pages": json_values | st.integers(-5, 200000), "colour": json_values,
    "sides": json_values | st.just("two-sided-long-edge"), "id": json_values,
    "kind": json_values | st.sampled_from(["copy", "scan", "fax"]),
})
bodies = (known_fields.map(lambda d: json.dumps(d).encode())
          | json_values.map(lambda v: json.dumps(v).encode()) | st.binary(max_size=200))
paths = st.sampled_from(["sessions", "session", "jobs", "jobs/release", "jobs/1", "jobs/x",
                         "balance", "copy/authorize", "usage", "", "jobs/1/2"]) | st.text(
    alphabet=st.characters(codec="ascii", exclude_characters="\x00"), max_size=20)
ALLOWED = {200, 201, 400, 401, 403, 404, 405, 409, 413, 429}


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record.getMessage())


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(method=st.sampled_from([b"GET", b"POST", b"DELETE", b"PUT"]), path=paths, body=bodies,
       device=st.sampled_from(["mfd-1", "mfd-1", "nope", None]),
       session=st.sampled_from(["valid", "garbage", None]))
def test_fuzz_only_protocol_errors(site, method, path, body, device, session):
    recorder = Recorder()
    logging.getLogger().addHandler(recorder)
    twisted_errors: list[Any] = []

    def observer(event: dict[str, Any]) -> None:
        if event.get("isError") or event.get("log_failure"):
            twisted_errors.append(event)

    globalLogPublisher.addObserver(observer)
    try:
        token = None
        if session == "valid":
            token = login(site, card="111222333")[1]["session"]
        elif session == "garbage":
            token = "x" * 10
        code, answer = call(site, method, path, body, device=device, token=token)
    finally:
        logging.getLogger().removeHandler(recorder)
        globalLogPublisher.removeObserver(observer)
    assert code in ALLOWED, (code, answer)
    assert isinstance(answer["ok"], bool)
    if not answer["ok"]:
        assert isinstance(answer["error"]["code"], str) and answer["error"]["message"]
    assert recorder.records == [] and twisted_errors == []

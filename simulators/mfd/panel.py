"""The MFD's embedded panel: a blocking client of the site's device API.

It speaks docs/wire/device-api.md exactly as a device would: every request
names the device (``X-Outpost-Device``), requests inside a session carry
``Authorization: Bearer <session>``, and every answer is a JSON object with
``ok``. An HTTP error status is an answer like any other (the dict is
returned); only a site that cannot be reached raises `PanelUnavailable`.

Blocking on purpose (stdlib http.client): the lab and the workload drive it
from threads or from the command line, like a person at a panel.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import time
import urllib.parse
import uuid
from collections.abc import Sequence
from typing import Any, Literal

USAGE_RETRIES = 2
RETRY_PAUSE = 0.5
#: A release answers only once the site has followed the jobs on the device,
#: for up to its `release_follow_timeout` (120 s by default): wait longer.
RELEASE_TIMEOUT = 180.0


class PanelUnavailable(ConnectionError):
    """The site's device API could not be reached (or the connection broke)."""


class Panel:
    def __init__(self, device_api: str, device: str, timeout: float = 30) -> None:
        parsed = urllib.parse.urlsplit(device_api)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ValueError(f"device_api must be an http(s) URL, not {device_api!r}")
        self.device_api = device_api.rstrip("/")
        self.device = device
        self.timeout = timeout
        self.session: str | None = None
        #: HTTP status of the last answer, for callers that want more than `ok`.
        self.last_status: int | None = None
        self._scheme = parsed.scheme
        self._host = parsed.hostname
        self._port = parsed.port
        self._base = parsed.path.rstrip("/")

    # ------------------------------------------------------------ sessions

    def login_card(self, card: str, pin: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"card": card}
        if pin is not None:
            body["pin"] = pin
        return self._login(body)

    def login_pin(self, username: str, pin: str) -> dict[str, Any]:
        return self._login({"username": username, "pin": pin})

    def login_password(self, username: str, password: str) -> dict[str, Any]:
        return self._login({"username": username, "password": password})

    def _login(self, body: dict[str, Any]) -> dict[str, Any]:
        answer = self._call("POST", "/sessions", body)
        if answer.get("ok") and isinstance(answer.get("session"), str):
            self.session = answer["session"]
        return answer

    def session_info(self) -> dict[str, Any]:
        return self._call("GET", "/session")

    def logout(self) -> dict[str, Any]:
        try:
            return self._call("DELETE", "/session")
        finally:
            self.session = None

    # ------------------------------------------------------------ held jobs

    def jobs(self) -> dict[str, Any]:
        return self._call("GET", "/jobs")

    def release(
        self, ids: Sequence[int] | Literal["all"], timeout: float | None = None
    ) -> dict[str, Any]:
        """Release held jobs here; waits up to `timeout` (default: RELEASE_TIMEOUT)."""
        jobs: Any = "all" if ids == "all" else [int(job_id) for job_id in ids]
        wait = max(self.timeout, RELEASE_TIMEOUT) if timeout is None else timeout
        return self._call("POST", "/jobs/release", {"jobs": jobs}, timeout=wait)

    def cancel(self, job_id: int) -> dict[str, Any]:
        return self._call("DELETE", f"/jobs/{int(job_id)}")

    def balance(self) -> dict[str, Any]:
        return self._call("GET", "/balance")

    # ------------------------------------------------------------ copy

    def copy(self, pages: int, colour: bool = False, sides: str = "one-sided") -> dict[str, Any]:
        """Ask whether the user may copy, copy what is allowed, report the usage.

        The answer combines both calls: ``allowed`` and ``max_pages`` from
        the authorisation, ``copied``, ``charged``, ``balance`` and
        ``duplicate`` from the usage report; the two raw answers are under
        ``authorize`` and ``usage``. The usage id is made here, once, and
        reused when the report is retried after a broken connection, so a
        retry never charges twice.
        """
        job = {"pages": pages, "colour": colour, "sides": sides}
        auth = self._call("POST", "/copy/authorize", job)
        result: dict[str, Any] = {
            "ok": auth.get("ok", False),
            "error": auth.get("error"),
            "allowed": bool(auth.get("allowed")),
            "max_pages": auth.get("max_pages"),
            "copied": 0,
            "charged": 0,
            "balance": auth.get("balance"),
            "authorize": auth,
            "usage": None,
        }
        if not auth.get("ok"):
            return result
        max_pages = auth.get("max_pages")
        count = pages if auth.get("allowed") else max_pages
        if not isinstance(count, int) or count <= 0:
            result["ok"] = False
            result["error"] = {
                "code": "insufficient_balance",
                "message": "the balance does not allow a single page",
            }
            return result
        usage_body = {
            "id": f"{self.device}:copy:{uuid.uuid4()}",
            "kind": "copy",
            "pages": count,
            "colour": colour,
            "sides": sides,
        }
        usage = self.report_usage(usage_body)
        result.update(
            ok=usage.get("ok", False),
            error=usage.get("error"),
            copied=count if usage.get("ok") else 0,
            charged=usage.get("charged", 0),
            balance=usage.get("balance", result["balance"]),
            duplicate=usage.get("duplicate"),
            usage=usage,
        )
        return result

    def report_usage(self, body: dict[str, Any]) -> dict[str, Any]:
        """POST /usage, retried with the same id while the site is unreachable."""
        for attempt in range(USAGE_RETRIES + 1):
            try:
                return self._call("POST", "/usage", body)
            except PanelUnavailable:
                if attempt == USAGE_RETRIES:
                    raise
                time.sleep(RETRY_PAUSE)
        raise AssertionError("unreachable")  # pragma: no cover

    # ------------------------------------------------------------ wire

    def __enter__(self) -> Panel:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.session is not None:
            with contextlib.suppress(PanelUnavailable):
                self.logout()

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._scheme == "https":
            return http.client.HTTPSConnection(self._host, self._port, timeout=timeout)
        return http.client.HTTPConnection(self._host, self._port, timeout=timeout)

    def _call(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any]:
        headers = {"X-Outpost-Device": self.device, "Accept": "application/json"}
        if self.session is not None:
            headers["Authorization"] = f"Bearer {self.session}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode("utf-8")
            headers["Content-Type"] = "application/json"
        connection = self._connection(self.timeout if timeout is None else timeout)
        try:
            connection.request(method, self._base + path, body=payload, headers=headers)
            response = connection.getresponse()
            raw = response.read()
        except (OSError, http.client.HTTPException) as exc:
            raise PanelUnavailable(f"{method} {self.device_api}{path}: {exc}") from exc
        finally:
            connection.close()
        self.last_status = response.status
        try:
            answer = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            answer = None
        if not isinstance(answer, dict):
            return {
                "ok": False,
                "error": {
                    "code": "bad_response",
                    "message": f"HTTP {response.status} without a JSON object",
                },
            }
        return answer

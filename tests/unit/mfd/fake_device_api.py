"""A tiny stand-in for the site's device API (docs/wire/device-api.md), in a thread.

Only for the HTTP shape of the panel client and the CLI: it checks the
device header and the bearer token, keeps balances in memory, and records
every request it saw.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DEVICE = "mfd-1"
COST_PER_PAGE = 10


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


@dataclass
class FakeDeviceApi:
    devices: set[str] = field(default_factory=lambda: {DEVICE})
    balance: int = 100
    jobs: list[dict[str, Any]] = field(default_factory=lambda: [
        {"id": 17, "name": "report.pdf", "pages": 3, "copies": 1, "colour": False,
         "sides": "one-sided", "number_up": 1, "impressions": 3, "cost": 30},
        {"id": 18, "name": "memo.pdf", "pages": 1, "copies": 1, "colour": False,
         "sides": "one-sided", "number_up": 1, "impressions": 1, "cost": 10},
    ])
    seen: list[Seen] = field(default_factory=list)
    usages: dict[str, Any] = field(default_factory=dict)
    #: Apply the next N usage reports, then drop the connection without an answer.
    drop_usage: int = 0
    sessions: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                api._handle(self, "GET")

            def do_POST(self) -> None:
                api._handle(self, "POST")

            def do_DELETE(self) -> None:
                api._handle(self, "DELETE")

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1"
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # ------------------------------------------------------------ handling

    def _handle(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        raw = handler.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        path = handler.path
        self.seen.append(Seen(method, path, dict(handler.headers.items()), body))
        if path.endswith("/html"):  # what a broken proxy in front of a site might say
            handler.send_response(502)
            handler.send_header("Content-Type", "text/html")
            handler.send_header("Content-Length", "14")
            handler.end_headers()
            handler.wfile.write(b"<h1>oops</h1>\n")
            return
        status, answer = self._answer(method, path, handler.headers, body)
        if path == "/api/v1/usage" and self.drop_usage > 0:
            # committed, but the answer is lost: the panel must retry with the same id
            self.drop_usage -= 1
            handler.close_connection = True
            handler.connection.shutdown(2)
            return
        data = json.dumps(answer).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    def _answer(self, method: str, path: str, headers: Any, body: Any) -> tuple[int, Any]:
        def fail(status: int, code: str, **extra: Any) -> tuple[int, Any]:
            return status, {"ok": False, "error": {"code": code, "message": code}, **extra}

        def ok(status: int = 200, **extra: Any) -> tuple[int, Any]:
            return status, {"ok": True, "error": None, **extra}

        if headers.get("X-Outpost-Device") not in self.devices:
            return fail(403, "unknown_device")
        if not path.startswith("/api/v1/"):
            return fail(404, "not_found")
        route = path[len("/api/v1"):]
        if (method, route) == ("POST", "/sessions"):
            if body in ({"card": "0004"}, {"card": "0004", "pin": "1234"},
                        {"username": "alice", "pin": "1234"},
                        {"username": "alice", "password": "secret"}):
                token = f"token-{len(self.sessions) + 1}"
                self.sessions.add(token)
                return ok(201, session=token, user={"username": "alice", "full_name": "A"},
                          balance=self.balance, expires_in=300)
            return fail(401, "invalid_credentials")
        token = (headers.get("Authorization") or "").removeprefix("Bearer ")
        if token not in self.sessions:
            return fail(401, "no_session")
        if (method, route) == ("DELETE", "/session"):
            self.sessions.discard(token)
            return ok()
        if (method, route) == ("GET", "/jobs"):
            return ok(jobs=self.jobs)
        if (method, route) == ("GET", "/balance"):
            return ok(balance=self.balance)
        if (method, route) == ("POST", "/jobs/release"):
            wanted = [j["id"] for j in self.jobs] if body["jobs"] == "all" else body["jobs"]
            known = {j["id"]: j for j in self.jobs}
            released = [i for i in wanted if i in known]
            failed = [{"id": i, "error": {"code": "not_found", "message": "no such job"}}
                      for i in wanted if i not in known]
            charged = sum(known[i]["cost"] for i in released)
            self.balance -= charged
            self.jobs = [j for j in self.jobs if j["id"] not in released]
            if failed:
                return fail(409, "not_found", released=released, failed=failed,
                            charged=charged, balance=self.balance)
            return ok(released=released, failed=[], charged=charged, balance=self.balance)
        if method == "DELETE" and route.startswith("/jobs/"):
            job_id = int(route.rsplit("/", 1)[1])
            if job_id not in {j["id"] for j in self.jobs}:
                return fail(404, "not_found")
            self.jobs = [j for j in self.jobs if j["id"] != job_id]
            return ok(cancelled=[job_id])
        if (method, route) == ("POST", "/copy/authorize"):
            max_pages = min(body["pages"], self.balance // COST_PER_PAGE)
            return ok(allowed=max_pages == body["pages"], max_pages=max_pages,
                      cost_per_page=COST_PER_PAGE, cost=max_pages * COST_PER_PAGE,
                      balance=self.balance)
        if (method, route) == ("POST", "/usage"):
            usage_id = body["id"]
            if usage_id in self.usages:
                if self.usages[usage_id] != body:
                    return fail(409, "conflict")
                return ok(charged=body["pages"] * COST_PER_PAGE, balance=self.balance,
                          duplicate=True)
            self.usages[usage_id] = body
            charged = body["pages"] * COST_PER_PAGE
            self.balance -= charged
            return ok(charged=charged, balance=self.balance, duplicate=False)
        return fail(404, "not_found")

"""The control API: toxiproxy's HTTP JSON API, plus documented extensions.

Paths, fields and status codes follow toxiproxy 2.x (api.go), so its clients
can drive the simulator; see docs/wire/wan-api.md for the extensions
(`/events`, `/schedules`, the `partition` and `loss` toxics) and the one
deliberate difference (409 rather than 500 for a listen port in use).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import unquote

from twisted.web import resource, server

from simulators.wan import errors
from simulators.wan.simulator import VERSION, WanSimulator


class WanApi(resource.Resource):
    isLeaf = True

    def __init__(self, simulator: WanSimulator) -> None:
        super().__init__()
        self.sim = simulator

    def render(self, request: Any) -> bytes:
        agent = (request.getHeader(b"user-agent") or b"").decode("latin-1")
        if agent.startswith("Mozilla/"):
            request.setResponseCode(403)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"User agent not allowed\n"
        method = request.method.decode("ascii", "replace")
        path = [unquote(p.decode("utf-8", "replace")) for p in request.postpath]
        while path and path[-1] == "":
            path.pop()
        try:
            with self.sim.acting_as("api"):
                status, body = self.dispatch(method, path, request)
        except errors.ApiError as exc:
            status, body = exc.status, exc.to_json()
        request.setResponseCode(status)
        if status == 204:
            return b""
        if path == ["version"] and status == 200:
            request.setHeader(b"content-type", b"application/json;charset=utf-8")
        else:
            request.setHeader(b"content-type", b"application/json")
        return json.dumps(body).encode() + b"\n"

    # -- routing ----------------------------------------------------------
    def dispatch(self, method: str, path: list[str], request: Any) -> tuple[int, Any]:
        update = method in ("POST", "PATCH")
        match path:
            case ["version"] if method == "GET":
                return 200, {"version": VERSION}
            case ["reset"] if method == "POST":
                self.sim.reset()
                return 204, None
            case ["proxies"] if method == "GET":
                return 200, {name: p.to_json() for name, p in self.sim.proxies.items()}
            case ["proxies"] if method == "POST":
                return self.proxy_create(_body(request))
            case ["populate"] if method == "POST":
                return self.populate(_body(request, allow_list=True))
            case ["proxies", name] if method == "GET":
                return 200, self.sim.get_proxy(name).to_json()
            case ["proxies", name] if update:
                return self.proxy_update(name, _body(request))
            case ["proxies", name] if method == "DELETE":
                self.sim.remove_proxy(name)
                return 204, None
            case ["proxies", name, "toxics"] if method == "GET":
                return 200, [t.to_json() for t in self.sim.get_proxy(name).ordered_toxics()]
            case ["proxies", name, "toxics"] if method == "POST":
                return self.toxic_create(name, _body(request))
            case ["proxies", name, "toxics", toxic] if method == "GET":
                found = self.sim.get_proxy(name).toxics.get(toxic)
                if found is None:
                    raise errors.TOXIC_NOT_FOUND
                return 200, found.to_json()
            case ["proxies", name, "toxics", toxic] if update:
                return self.toxic_update(name, toxic, _body(request))
            case ["proxies", name, "toxics", toxic] if method == "DELETE":
                self.sim.remove_toxic(name, toxic)
                return 204, None
            # -- extensions -------------------------------------------------
            case ["events"] if method == "GET":
                since = _int_arg(request, b"since", 0)
                return 200, {"events": self.sim.events_since(since)}
            case ["schedules"] if method == "GET":
                return 200, [run.to_json(events=False) for run in self.sim.schedules.values()]
            case ["schedules"] if method == "POST":
                return self.schedule_create(_body(request))
            case ["schedules", run_id] if method == "GET":
                return 200, self.sim.get_schedule(run_id).to_json()
            case ["schedules", run_id] if method == "DELETE":
                self.sim.get_schedule(run_id).stop()
                return 204, None
            case (
                ["version"] | ["reset"] | ["proxies"] | ["populate"] | ["proxies", _]
                | ["proxies", _, "toxics"] | ["proxies", _, "toxics", _] | ["events"]
                | ["schedules"] | ["schedules", _]
            ):
                raise errors.METHOD_NOT_ALLOWED
        raise errors.NOT_FOUND

    # -- handlers ---------------------------------------------------------
    def proxy_create(self, body: dict[str, Any]) -> tuple[int, Any]:
        name = _str_field(body, "name")
        upstream = _str_field(body, "upstream")
        listen = _str_field(body, "listen")
        enabled = _bool_field(body, "enabled", True)
        proxy = self.sim.add_proxy(name, listen, upstream, bool(enabled))
        return 201, proxy.to_json()

    def proxy_update(self, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.sim.get_proxy(name)
        proxy = self.sim.update_proxy(
            name,
            listen=_str_field(body, "listen") or None,
            upstream=_str_field(body, "upstream") or None,
            enabled=_bool_field(body, "enabled", None),
        )
        return 200, proxy.to_json()

    def populate(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, list):
            raise errors.BAD_REQUEST_BODY.joined("expected a JSON array of proxies")
        entries = []
        for entry in body:
            if not isinstance(entry, dict):
                raise errors.BAD_REQUEST_BODY.joined("expected a JSON object per proxy")
            entries.append(entry)
        proxies = self.sim.populate(entries)
        return 201, {"proxies": [p.to_json() for p in proxies]}

    def toxic_create(self, proxy: str, body: dict[str, Any]) -> tuple[int, Any]:
        self.sim.get_proxy(proxy)
        attributes = body.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            raise errors.BAD_REQUEST_BODY.joined("attributes must be a JSON object")
        stream = body.get("stream") or "downstream"
        if not isinstance(stream, str):
            raise errors.INVALID_STREAM
        toxic = self.sim.add_toxic(
            proxy,
            type=_str_field(body, "type"),
            stream=stream,
            name=_str_field(body, "name") or None,
            toxicity=body.get("toxicity", 1.0),
            attributes=attributes,
        )
        return 200, toxic.to_json()

    def toxic_update(self, proxy: str, name: str, body: dict[str, Any]) -> tuple[int, Any]:
        attributes = body.get("attributes")
        if attributes is not None and not isinstance(attributes, dict):
            raise errors.BAD_REQUEST_BODY.joined("attributes must be a JSON object")
        toxic = self.sim.update_toxic(proxy, name, attributes, body.get("toxicity"))
        return 200, toxic.to_json()

    def schedule_create(self, body: dict[str, Any]) -> tuple[int, Any]:
        from simulators.wan.schedule import ScheduleError, parse_schedule

        spec = body.get("schedule", body)
        try:
            schedule = parse_schedule(spec)
            if "seed" in body and body["seed"] is not None:
                schedule = schedule.with_seed(body["seed"])
            scale = body.get("time_scale", schedule.time_scale)
            if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
                raise ScheduleError("time_scale must be a positive number")
        except ScheduleError as exc:
            raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None
        for proxy in schedule.proxies():
            self.sim.get_proxy(proxy)
        run = self.sim.run_schedule(schedule, time_scale=float(scale))
        return 201, run.to_json()


def _body(request: Any, allow_list: bool = False) -> Any:
    raw = request.content.read() if request.content is not None else b""
    if not raw.strip():
        raise errors.BAD_REQUEST_BODY.joined("EOF")
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None
    if isinstance(body, list) and allow_list:
        return body
    if not isinstance(body, dict):
        raise errors.BAD_REQUEST_BODY.joined("expected a JSON object")
    return body


def _str_field(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise errors.BAD_REQUEST_BODY.joined(f"field {key!r} must be a string")
    return value


def _bool_field(body: dict[str, Any], key: str, default: bool | None) -> bool | None:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise errors.BAD_REQUEST_BODY.joined(f"field {key!r} must be true or false")
    return value


def _int_arg(request: Any, name: bytes, default: int) -> int:
    values = request.args.get(name)
    if not values:
        return default
    try:
        return int(values[0])
    except ValueError:
        raise errors.BAD_REQUEST_BODY.joined(f"{name.decode()} must be an integer") from None


def listen_api(simulator: WanSimulator, address: str = "127.0.0.1:8474") -> Any:
    """Serve `simulator`'s control API on `address` ("host:port", port 0 = any)."""
    from simulators.wan.proxy import split_address

    host, port = split_address(address)
    site = server.Site(WanApi(simulator))
    site.noisy = False
    site.displayTracebacks = False
    return simulator.reactor.listenTCP(port, site, interface=host or "127.0.0.1")

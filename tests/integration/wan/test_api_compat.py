"""The control API against toxiproxy's documented HTTP API (README "HTTP API",
api.go, api_test.go of Shopify/toxiproxy 2.x): paths, fields, status codes
and error messages, over real HTTP, as a toxiproxy client would see them.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import error

from simulators.wan import WanSimulator
from tests.integration.wan.helpers import Server, connect, reactor


class Api:
    def __init__(self, base: str) -> None:
        self.base = base

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None,
        agent: str = "toxiproxy-cli",
    ) -> tuple[int, Any]:
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        response = await treq.request(
            method, self.base + path, data=data,
            headers={"Content-Type": ["application/json"], "User-Agent": [agent]},
            reactor=reactor,
        )
        content = await response.content()
        if response.code == 204:
            assert content == b""
            return 204, None
        if response.code == 403:
            return 403, content
        return response.code, json.loads(content)


@pytest.fixture
def api(sim: WanSimulator) -> Any:
    port = sim.listen_api("127.0.0.1:0")
    yield Api(f"http://127.0.0.1:{port.getHost().port}")
    port.stopListening()


@pytest_twisted.ensureDeferred
async def test_toxiproxy_client_session(api: Api, sim: WanSimulator, echo: Server) -> None:
    status, body = await api.call("GET", "/version")
    assert status == 200 and isinstance(body["version"], str)

    assert await api.call("GET", "/proxies") == (200, {})

    # Create: 201 with the proxy, listen port 0 replaced by the real port.
    status, proxy = await api.call(
        "POST", "/proxies", {"name": "redis", "listen": "127.0.0.1:0", "upstream": echo.address}
    )
    assert status == 201
    assert proxy["name"] == "redis" and proxy["upstream"] == echo.address
    assert proxy["enabled"] is True and proxy["toxics"] == []
    host, port = proxy["listen"].rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    listen = proxy["listen"]

    # An established connection, which no bad request below may disturb.
    client = await connect(listen)
    client.write(b"one")
    await client.wait_for(3)

    assert await api.call("POST", "/proxies", {"name": "redis", "upstream": echo.address}) == (
        409, {"error": "proxy already exists", "status": 409})
    assert await api.call("POST", "/proxies", {"listen": "127.0.0.1:0", "upstream": "x:1"}) == (
        400, {"error": "missing required field: name", "status": 400})
    assert await api.call("POST", "/proxies", {"name": "nope", "listen": "127.0.0.1:0"}) == (
        400, {"error": "missing required field: upstream", "status": 400})
    status, body = await api.call("POST", "/proxies", raw=b"{not json")
    assert status == 400 and body["error"].startswith("bad request body")
    status, body = await api.call("POST", "/proxies",
                                  {"name": "clash", "listen": listen, "upstream": echo.address})
    assert status == 409 and "address already in use" in body["error"]  # toxiproxy: 500
    assert "clash" not in sim.proxies

    # Show.
    status, shown = await api.call("GET", "/proxies/redis")
    assert status == 200 and shown == proxy
    assert await api.call("GET", "/proxies/missing") == (
        404, {"error": "proxy not found", "status": 404})

    # Add a toxic: 200 (as toxiproxy), defaults name <type>_<stream>, downstream, toxicity 1.
    status, toxic = await api.call("POST", "/proxies/redis/toxics", {
        "type": "latency", "attributes": {"latency": 100, "jitter": 10}})
    assert status == 200
    assert toxic == {"name": "latency_downstream", "type": "latency", "stream": "downstream",
                     "toxicity": 1.0, "attributes": {"latency": 100, "jitter": 10}}
    assert await api.call("POST", "/proxies/redis/toxics", {"type": "latency"}) == (
        409, {"error": "toxic already exists", "status": 409})
    assert await api.call("POST", "/proxies/redis/toxics", {
        "type": "latency", "stream": "walrustream"}) == (
        400, {"error": "stream was invalid, can be either upstream or downstream", "status": 400})
    assert await api.call("POST", "/proxies/redis/toxics", {"type": "bogus"}) == (
        400, {"error": "invalid toxic type", "status": 400})
    status, body = await api.call("POST", "/proxies/redis/toxics", {
        "type": "bandwidth", "attributes": {"rate": "fast"}})
    assert status == 400 and body["error"].startswith("bad request body")
    assert await api.call("POST", "/proxies/missing/toxics", {"type": "latency"}) == (
        404, {"error": "proxy not found", "status": 404})
    status, named = await api.call("POST", "/proxies/redis/toxics", {
        "name": "cap", "type": "bandwidth", "stream": "upstream", "toxicity": 0.5,
        "attributes": {"rate": 1000}})
    assert status == 200 and named["name"] == "cap" and named["toxicity"] == 0.5

    # Update: attributes merge, toxicity kept when absent; POST and PATCH both work.
    status, updated = await api.call("POST", "/proxies/redis/toxics/latency_downstream", {
        "attributes": {"latency": 1000}, "toxicity": 0.5})
    assert status == 200
    assert updated["attributes"] == {"latency": 1000, "jitter": 10}
    assert updated["toxicity"] == 0.5
    status, updated = await api.call("PATCH", "/proxies/redis/toxics/latency_downstream", {
        "attributes": {"latency": 500}})
    assert status == 200
    assert updated["attributes"] == {"latency": 500, "jitter": 10} and updated["toxicity"] == 0.5
    assert await api.call("POST", "/proxies/redis/toxics/nothere", {"attributes": {}}) == (
        404, {"error": "toxic not found", "status": 404})

    # List: upstream chain first, then downstream (toxiproxy's order).
    status, toxics = await api.call("GET", "/proxies/redis/toxics")
    assert status == 200 and [t["name"] for t in toxics] == ["cap", "latency_downstream"]
    status, proxies = await api.call("GET", "/proxies")
    assert status == 200 and [t["name"] for t in proxies["redis"]["toxics"]] == [
        "cap", "latency_downstream"]
    assert (await api.call("GET", "/proxies/redis/toxics/cap"))[1] == named
    assert await api.call("GET", "/proxies/redis/toxics/none") == (
        404, {"error": "toxic not found", "status": 404})

    # Remove.
    assert await api.call("DELETE", "/proxies/redis/toxics/latency_downstream") == (204, None)
    assert await api.call("DELETE", "/proxies/redis/toxics/latency_downstream") == (
        404, {"error": "toxic not found", "status": 404})

    # The established connection survived all of the above.
    client.write(b"two")
    await client.wait_for(6)
    assert bytes(client.received) == b"onetwo"

    # Disable (toxiproxy's "down"), then /reset enables and clears toxics.
    status, body = await api.call("POST", "/proxies/redis", {"enabled": False})
    assert status == 200 and body["enabled"] is False
    await client.lost
    with pytest.raises(error.ConnectionRefusedError):
        await connect(listen, timeout=2)
    assert await api.call("POST", "/reset", {}) == (204, None)
    status, body = await api.call("GET", "/proxies/redis")
    assert body["enabled"] is True and body["toxics"] == [] and body["listen"] == listen
    again = await connect(listen)
    again.write(b"back")
    await again.wait_for(4)

    # Populate: create or keep; errors name the entry.
    status, body = await api.call("POST", "/populate", [
        {"name": "redis", "listen": listen, "upstream": echo.address},
        {"name": "pg", "listen": "127.0.0.1:0", "upstream": echo.address, "enabled": False},
    ])
    assert status == 201 and [p["name"] for p in body["proxies"]] == ["redis", "pg"]
    assert body["proxies"][1]["enabled"] is False
    assert await api.call("POST", "/populate", [
        {"name": "a", "upstream": echo.address}, {"upstream": echo.address}]) == (
        400, {"error": "missing required field: name at proxy 2", "status": 400})

    # Delete.
    assert await api.call("DELETE", "/proxies/pg") == (204, None)
    assert await api.call("DELETE", "/proxies/pg") == (
        404, {"error": "proxy not found", "status": 404})

    # Browsers are turned away, as toxiproxy does.
    status, _ = await api.call("GET", "/proxies", agent="Mozilla/5.0")
    assert status == 403

    # Extensions: the event log recorded what was done, by whom.
    status, body = await api.call("GET", "/events")
    actions = [e["action"] for e in body["events"] if e["source"] == "api"]
    assert actions[0] == "proxy_created" and "toxic_removed" in actions and "reset" in actions


@pytest_twisted.ensureDeferred
async def test_update_proxy_address_restarts_it(api: Api, echo: Server) -> None:
    status, proxy = await api.call(
        "POST", "/proxies", {"name": "p", "listen": "127.0.0.1:0", "upstream": echo.address})
    status, moved = await api.call("PATCH", "/proxies/p", {"listen": "127.0.0.1:0"})
    assert status == 200 and moved["listen"] != proxy["listen"]
    client = await connect(moved["listen"])
    client.write(b"x")
    await client.wait_for(1)
    with pytest.raises(error.ConnectionRefusedError):
        await connect(proxy["listen"], timeout=2)

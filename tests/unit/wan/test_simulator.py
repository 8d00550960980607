"""The Python API and service wrapper, on a memory reactor (no sockets)."""

from __future__ import annotations

import pytest
from twisted.internet.testing import MemoryReactorClock

from simulators.wan import ApiError, WanService, WanSimulator
from simulators.wan.server import Config


def make() -> WanSimulator:
    sim = WanSimulator(MemoryReactorClock(), seed=1)
    sim.add_proxy("a", "127.0.0.1:0", "127.0.0.1:9")
    return sim


@pytest.mark.parametrize(("call", "status", "message"), [
    (lambda s: s.add_proxy("a", "127.0.0.1:0", "127.0.0.1:9"), 409, "proxy already exists"),
    (lambda s: s.add_proxy("", "127.0.0.1:0", "h:1"), 400, "missing required field: name"),
    (lambda s: s.add_proxy("b", "127.0.0.1:0", ""), 400, "missing required field: upstream"),
    (lambda s: s.add_proxy("b", "127.0.0.1:0", "nohost"), 400, "bad request body"),
    (lambda s: s.add_proxy("b", "nowhere", "h:1"), 400, "bad request body"),
    (lambda s: s.get_proxy("zz"), 404, "proxy not found"),
    (lambda s: s.add_toxic("a", "latency", "sideways"), 400, "stream was invalid"),
    (lambda s: s.add_toxic("a", "gremlin"), 400, "invalid toxic type"),
    (lambda s: s.add_toxic("a", "latency", toxicity="x"), 400, "bad request body"),
    (lambda s: s.remove_toxic("a", "none"), 404, "toxic not found"),
    (lambda s: s.update_toxic("a", "none"), 404, "toxic not found"),
])
def test_errors_carry_toxiproxy_status_and_message(call, status, message) -> None:  # type: ignore[no-untyped-def]
    sim = make()
    with pytest.raises(ApiError) as caught:
        call(sim)
    assert caught.value.status == status and caught.value.message.startswith(message)


def test_failed_update_leaves_the_toxic_unchanged() -> None:
    sim = make()
    sim.add_toxic("a", "latency", attributes={"latency": 10, "jitter": 1})
    with pytest.raises(ApiError):
        sim.update_toxic("a", "latency_downstream", {"latency": 20, "jitter": "x"})
    assert sim.proxies["a"].toxics["latency_downstream"].attributes == {"latency": 10,
                                                                        "jitter": 1}


def test_partition_heal_and_reset() -> None:
    sim = make()
    sim.partition("a")
    sim.partition("a")  # idempotent
    assert sorted(sim.proxies["a"].toxics) == ["partition_downstream", "partition_upstream"]
    sim.heal("a")
    assert not sim.is_partitioned("a")
    sim.add_toxic("a", "bandwidth", attributes={"rate": 1})
    sim.disable("a")
    sim.reset()
    assert sim.proxies["a"].enabled and not sim.proxies["a"].toxics
    assert [e["action"] for e in sim.events][-1] == "reset"


def test_service_serves_config_and_stops() -> None:
    reactor = MemoryReactorClock()
    config = Config(proxies=[{"name": "x", "listen": "127.0.0.1:0", "upstream": "127.0.0.1:9"}],
                    toxics={"x": [{"type": "latency", "attributes": {"latency": 5}}]})
    service = WanService(reactor, "127.0.0.1:0", config)
    service.startService()
    assert service.simulator is not None
    assert list(service.simulator.proxies["x"].toxics) == ["latency_downstream"]
    assert len(reactor.tcpServers) == 2  # the proxy and the API
    service.stopService()
    assert not service.simulator.proxies["x"].enabled

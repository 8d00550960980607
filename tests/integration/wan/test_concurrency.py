"""1,000 concurrent connections through one proxy, each echoing 64 KB intact."""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import defer

from simulators.wan import WanSimulator
from tests.integration.wan.helpers import Peer, Server, connect, sleep

CONNECTIONS = 1000
SIZE = 64 * 1024


@pytest.mark.slow
@pytest_twisted.ensureDeferred
async def test_thousand_concurrent_round_trips(sim: WanSimulator, echo: Server) -> None:
    proxy = sim.add_proxy("bulk", "127.0.0.1:0", echo.address)
    rng = random.Random(1000)
    payloads = [rng.randbytes(SIZE) for _ in range(CONNECTIONS)]

    # All connections open at once before any data flows.
    clients: list[Peer] = list(
        await defer.gatherResults(
            [defer.ensureDeferred(connect(proxy.listen, timeout=30)) for _ in payloads]
        )
    )
    # The kernel completes handshakes before the proxy accepts: wait for it.
    for _ in range(600):
        if len(sim.proxies["bulk"].connections) >= CONNECTIONS:
            break
        await sleep(0.05)
    assert len(sim.proxies["bulk"].connections) == CONNECTIONS
    for client, payload in zip(clients, payloads, strict=True):
        client.write(payload)
    await defer.gatherResults([client.wait_for(SIZE, timeout=120) for client in clients])
    for client, payload in zip(clients, payloads, strict=True):
        assert bytes(client.received) == payload
    for client in clients:
        client.transport.loseConnection()

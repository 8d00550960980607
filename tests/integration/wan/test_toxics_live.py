"""Each toxic's effect on real TCP connections through the proxy, on loopback.

Lower bounds are exact (the simulator never delivers early); upper bounds
are loose so that a loaded machine does not fail a test.
"""

from __future__ import annotations

import random

import pytest
import pytest_twisted
from twisted.internet import error

from simulators.wan import WanSimulator
from simulators.wan.proxy import HIGH_WATER, SOCKET_BUFFER
from tests.integration.wan.helpers import Peer, Server, connect, reactor, sleep

MARGIN = 0.005  # timer granularity


async def _pair(
    sim: WanSimulator, server: Server, name: str = "link", half_close: bool = False
) -> tuple[Peer, Peer]:
    proxy = sim.add_proxy(name, "127.0.0.1:0", server.address)
    peer_d = server.next_peer()
    client = await connect(proxy.listen, half_close=half_close)
    upstream = await peer_d
    return client, upstream


@pytest_twisted.ensureDeferred
async def test_no_toxic_passes_bytes_and_half_close(
    sim: WanSimulator, half_sink: Server
) -> None:
    client, upstream = await _pair(sim, half_sink, half_close=True)
    client.write(b"hello")
    await upstream.wait_for(5)
    client.transport.loseWriteConnection()
    await upstream.eof  # FIN passed through
    upstream.write(b"still open")  # the other half still works
    await client.wait_for(10)
    assert bytes(client.received) == b"still open"


@pytest_twisted.ensureDeferred
async def test_latency_delays_each_direction_separately(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "latency", "downstream", attributes={"latency": 300, "jitter": 50})
    sent = client.write(b"up")
    await upstream.wait_for(2)
    assert upstream.time_of(2) - sent < 0.25  # upstream direction untouched
    for i in range(5):
        sent = upstream.write(b"%d" % i)
        await client.wait_for(i + 1)
        delay = client.time_of(i + 1) - sent
        assert 0.25 - MARGIN <= delay < 2.0
    assert bytes(client.received) == b"01234"


@pytest_twisted.ensureDeferred
async def test_bandwidth_caps_throughput(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "bandwidth", "downstream", attributes={"rate": 500})  # 500 KB/s
    payload = random.Random(1).randbytes(1_000_000)
    sent = upstream.write(payload)
    await client.wait_for(len(payload), timeout=30)
    elapsed = client.time_of(len(payload)) - sent
    assert bytes(client.received) == payload
    # 1 MB at 500 KB/s takes 2 s; the first 100 ms piece may leave at once.
    assert elapsed >= 1.9 - MARGIN
    assert len(payload) / elapsed <= 530_000


@pytest_twisted.ensureDeferred
async def test_slow_close_delays_the_fin_not_the_data(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "slow_close", "downstream", attributes={"delay": 500})
    sent = upstream.write(b"bye")
    upstream.transport.loseConnection()
    await client.wait_for(3)
    assert client.time_of(3) - sent < 0.4
    await client.eof
    assert client.eof_at is not None
    assert client.eof_at - sent >= 0.5 - MARGIN


@pytest_twisted.ensureDeferred
async def test_timeout_stops_data_then_closes(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    added = reactor.seconds()
    sim.add_toxic("link", "timeout", "upstream", attributes={"timeout": 400})
    client.write(b"dropped")
    await client.lost
    assert client.lost_at - added >= 0.4 - MARGIN
    assert bytes(upstream.received) == b""


@pytest_twisted.ensureDeferred
async def test_timeout_zero_hangs_until_removed(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "timeout", "upstream", attributes={"timeout": 0})
    client.write(b"lost")
    await sleep(0.6)
    assert client.lost_at is None and bytes(upstream.received) == b""
    sim.remove_toxic("link", "timeout_upstream")
    client.write(b"after")
    await upstream.wait_for(5)
    assert bytes(upstream.received) == b"after"  # toxiproxy drops, not delays


@pytest_twisted.ensureDeferred
async def test_reset_peer_resets_after_n_ms(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "reset_peer", "upstream", attributes={"timeout": 300})
    sent = client.write(b"trigger")
    await client.lost
    assert client.reason.check(error.ConnectionLost) is not None  # RST, not a clean FIN
    assert not client.reason.check(error.ConnectionDone)
    assert client.lost_at - sent >= 0.3 - MARGIN
    await upstream.lost
    assert upstream.reason is not None
    assert upstream.reason.check(error.ConnectionLost) is not None


@pytest_twisted.ensureDeferred
async def test_slicer_splits_into_delayed_pieces(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "slicer", "downstream",
                  attributes={"average_size": 10, "size_variation": 3, "delay": 20_000})
    payload = bytes(range(200))
    sent = upstream.write(payload)
    await client.wait_for(len(payload))
    assert bytes(client.received) == payload
    assert len(client.arrivals) >= 8  # arrived in many small reads
    # About 20 pieces, 20 ms apart.
    assert client.time_of(len(payload)) - sent >= 0.2


@pytest_twisted.ensureDeferred
async def test_limit_data_cuts_at_n_bytes(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "limit_data", "upstream", attributes={"bytes": 1000})
    payload = random.Random(2).randbytes(5000)
    client.write(payload)
    await upstream.eof
    await client.lost
    assert bytes(upstream.received) == payload[:1000]


@pytest_twisted.ensureDeferred
async def test_partition_stalls_both_ways_and_heals_in_order(
    sim: WanSimulator, sink: Server
) -> None:
    client, upstream = await _pair(sim, sink)
    client.write(b"before|")
    await upstream.wait_for(7)
    sim.partition("link")
    rng = random.Random(3)
    up_bytes = rng.randbytes(3_000_000)  # more than the proxy holds: back-pressure
    down_bytes = rng.randbytes(50_000)
    client.write(up_bytes)
    upstream.write(down_bytes)
    await sleep(0.8)
    # Nothing crossed either way, nothing was closed.
    assert bytes(upstream.received) == b"before|"
    assert bytes(client.received) == b""
    assert client.lost_at is None and upstream.lost_at is None
    # The proxy held at most a window's worth; the rest waits in the sender.
    (connection,) = sim.proxies["link"].connections
    assert 0 < connection.links["upstream"].holding <= HIGH_WATER + SOCKET_BUFFER
    assert connection.links["downstream"].holding == len(down_bytes)
    sim.heal("link")
    client.write(b"|after")
    upstream.write(b"|after")
    await upstream.wait_for(7 + len(up_bytes) + 6)
    await client.wait_for(len(down_bytes) + 6)
    assert bytes(upstream.received) == b"before|" + up_bytes + b"|after"
    assert bytes(client.received) == down_bytes + b"|after"


@pytest_twisted.ensureDeferred
async def test_partition_new_connections_hang_in_connect(sim: WanSimulator, echo: Server) -> None:
    proxy = sim.add_proxy("link", "127.0.0.1:0", echo.address)
    sim.partition("link")
    with pytest.raises(error.TimeoutError):
        await connect(proxy.listen, timeout=0.5)
    with pytest.raises(error.TimeoutError):
        await connect(proxy.listen, timeout=0.5)
    sim.heal("link")
    client = await connect(proxy.listen, timeout=5)
    client.write(b"ping")
    await client.wait_for(4)
    assert bytes(client.received) == b"ping"


@pytest_twisted.ensureDeferred
async def test_partition_user_timeout_resets_connections_with_data_waiting(
    sim: WanSimulator, sink: Server
) -> None:
    client, upstream = await _pair(sim, sink)
    sim.partition("link", user_timeout_ms=300)
    await sleep(0.5)
    assert client.lost_at is None  # idle: survives
    sent = client.write(b"unacknowledged")
    await client.lost
    assert client.reason.check(error.ConnectionLost) is not None
    assert client.lost_at - sent >= 0.3 - MARGIN
    assert bytes(upstream.received) == b""


@pytest_twisted.ensureDeferred
async def test_loss_delays_but_never_loses(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "loss", "downstream",
                  attributes={"probability": 0.5, "rto": 100, "segment": 0})
    messages = [b"message %02d;" % i for i in range(12)]
    sent_at = []
    for message in messages:
        sent_at.append(upstream.write(message))
        await sleep(0.02)
    total = sum(len(m) for m in messages)
    await client.wait_for(total, timeout=30)
    assert bytes(client.received) == b"".join(messages)
    # Each message arrived no earlier than sent; some waited for an RTO (>= 100 ms).
    ends = [sum(len(m) for m in messages[: i + 1]) for i in range(len(messages))]
    delays = [client.time_of(end) - sent for end, sent in zip(ends, sent_at, strict=True)]
    assert max(delays) >= 0.1 - MARGIN
    assert min(delays) < 0.1  # and some were not lost at all


@pytest_twisted.ensureDeferred
async def test_toxicity_zero_leaves_connections_alone(sim: WanSimulator, sink: Server) -> None:
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "timeout", "upstream", toxicity=0.0, attributes={"timeout": 0})
    client.write(b"through")
    await upstream.wait_for(7)


@pytest_twisted.ensureDeferred
async def test_disable_closes_and_refuses_enable_accepts(sim: WanSimulator, echo: Server) -> None:
    proxy = sim.add_proxy("link", "127.0.0.1:0", echo.address)
    client = await connect(proxy.listen)
    sim.disable("link")
    await client.lost
    with pytest.raises(error.ConnectionRefusedError):
        await connect(proxy.listen, timeout=2)
    sim.enable("link")
    again = await connect(proxy.listen)
    again.write(b"x")
    await again.wait_for(1)


@pytest_twisted.ensureDeferred
async def test_close_after_a_large_delayed_response_delivers_all_then_fin(
    sim: WanSimulator, sink: Server
) -> None:
    """Close-delimited bodies: the FIN must follow the last byte, even after back-pressure."""
    client, upstream = await _pair(sim, sink)
    sim.add_toxic("link", "latency", "downstream", attributes={"latency": 50})
    payload = random.Random(9).randbytes(8_000_000)
    client.transport.pauseProducing()  # a slow reader: the proxy's buffers fill
    upstream.write(payload)
    upstream.transport.loseConnection()
    await sleep(0.5)
    client.transport.resumeProducing()
    await client.wait_for(len(payload), timeout=30)
    await client.eof
    assert bytes(client.received) == payload

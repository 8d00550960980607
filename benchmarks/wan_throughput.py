"""Loopback throughput through the WAN simulator's proxy, against a direct connection.

Not a test: it prints figures. Three processes, so the proxy is measured on
its own as it runs in the lab: a sink (counts bytes, replies with the count),
the proxy (WanSimulator on Twisted's default reactor, no toxics) and this
one, which sends with blocking sockets, first straight to the sink, then
through the proxy, alternating, and reports the median and best of each.

    .venv/bin/python benchmarks/wan_throughput.py [--mb 512] [--rounds 5]
        [--toxic latency:latency=20]

Target (issue 4): through the proxy >= 50 MB/s and >= 0.3x direct.
"""

from __future__ import annotations

import argparse
import multiprocessing
import socket
import statistics
import struct
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

CHUNK = 1 << 20


def sink(ready: multiprocessing.connection.Connection) -> None:
    server = socket.create_server(("127.0.0.1", 0))
    ready.send(server.getsockname()[1])
    buffer = bytearray(CHUNK)
    while True:
        conn, _ = server.accept()
        total = 0
        with conn:
            while True:
                n = conn.recv_into(buffer)
                if not n:
                    break
                total += n
            conn.sendall(struct.pack("!Q", total))


def proxy(
    upstream_port: int, ready: multiprocessing.connection.Connection, toxics: list[str]
) -> None:
    from twisted.internet import reactor

    from simulators.wan import WanSimulator

    sim = WanSimulator(reactor)
    p = sim.add_proxy("bench", "127.0.0.1:0", f"127.0.0.1:{upstream_port}")
    for spec in toxics:  # TYPE[:key=value,...], on the upstream (sending) stream
        kind, _, attrs = spec.partition(":")
        pairs = (a.split("=") for a in attrs.split(",") if a)
        attributes = {k: float(v) if "." in v else int(v) for k, v in pairs}
        sim.add_toxic("bench", kind, "upstream", attributes=attributes)
    ready.send(int(p.listen.rsplit(":", 1)[1]))
    reactor.run()  # type: ignore[attr-defined]


def send(port: int, total: int) -> float:
    payload = bytes(range(256)) * (CHUNK // 256)
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port)) as conn:
        left = total
        while left > 0:
            piece = payload if left >= CHUNK else payload[:left]
            conn.sendall(piece)
            left -= len(piece)
        conn.shutdown(socket.SHUT_WR)
        reply = b""
        while len(reply) < 8:
            more = conn.recv(8 - len(reply))
            if not more:
                raise RuntimeError("sink closed early")
            reply += more
    elapsed = time.perf_counter() - start
    (received,) = struct.unpack("!Q", reply)
    if received != total:
        raise RuntimeError(f"sink got {received} bytes, sent {total}")
    return total / elapsed / 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=512, help="MB sent per round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--toxic", action="append", default=[], metavar="TYPE[:k=v,...]",
                        help="measure with this toxic on the proxy, e.g. latency:latency=20")
    args = parser.parse_args()
    total = args.mb * 1_000_000

    ctx = multiprocessing.get_context("spawn")
    sink_ready, sink_child = ctx.Pipe()
    sink_proc = ctx.Process(target=sink, args=(sink_child,), daemon=True)
    sink_proc.start()
    sink_port = sink_ready.recv()
    proxy_ready, proxy_child = ctx.Pipe()
    proxy_proc = ctx.Process(target=proxy, args=(sink_port, proxy_child, args.toxic),
                             daemon=True)
    proxy_proc.start()
    proxy_port = proxy_ready.recv()
    try:
        send(sink_port, 10_000_000)  # warm up both paths
        send(proxy_port, 10_000_000)
        direct, proxied = [], []
        for _ in range(args.rounds):
            direct.append(send(sink_port, total))
            proxied.append(send(proxy_port, total))
    finally:
        proxy_proc.terminate()
        sink_proc.terminate()
    d_med, p_med = statistics.median(direct), statistics.median(proxied)
    toxics = ", ".join(args.toxic) or "no toxics"
    print(f"{args.rounds} rounds of {args.mb} MB, loopback, one connection, {toxics}")
    print(f"direct       median {d_med:8.1f} MB/s   best {max(direct):8.1f} MB/s")
    print(f"via proxy    median {p_med:8.1f} MB/s   best {max(proxied):8.1f} MB/s")
    ratio = p_med / d_med
    verdict = "meets" if p_med >= 50 and ratio >= 0.3 else "misses"
    print(f"proxy/direct {ratio:.2f}x  ({verdict} the target: >= 50 MB/s and >= 0.3x direct)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

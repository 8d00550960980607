"""The optional namespace mode: a real hard cut between two network stacks.

Skipped unless root and `ip netns` work. A TCP echo server runs in the
primary namespace; a client in the site namespace reaches it over the veth
pair, fails while the link is down or blackholed, and works after the heal.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import pytest

from simulators.wan import netns

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not netns.available(), reason="needs root and `ip netns`"),
]

SERVER = """
import socket, sys
s = socket.create_server((sys.argv[1], 7007))
print("ready", flush=True)
while True:
    c, _ = s.accept()
    c.sendall(c.recv(100)); c.close()
"""

CLIENT = """
import socket, sys
c = socket.create_connection((sys.argv[1], 7007), timeout=float(sys.argv[2]))
c.sendall(b"ping"); sys.exit(0 if c.recv(100) == b"ping" else 1)
"""


@pytest.fixture
def pair() -> Iterator[netns.NamespacePair]:
    tag = os.getpid() % 100000
    ns = netns.NamespacePair(f"wan-site-{tag}", f"wan-primary-{tag}", prefix="10.213.7")
    ns.create()
    try:
        yield ns
    finally:
        ns.destroy()


def reach(pair: netns.NamespacePair, timeout: float = 1.0) -> bool:
    argv = pair.exec_argv("site", [sys.executable, "-c", CLIENT, pair.primary_ip, str(timeout)])
    return subprocess.run(argv, capture_output=True, timeout=30, check=False).returncode == 0


def test_link_cut_and_blackhole(pair: netns.NamespacePair) -> None:
    server = subprocess.Popen(
        pair.exec_argv("primary", [sys.executable, "-c", SERVER, pair.primary_ip]),
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        assert reach(pair)
        pair.cut("link")
        assert not reach(pair, timeout=0.5)
        pair.heal()
        assert reach(pair, timeout=5)
        pair.cut("blackhole")
        assert not reach(pair, timeout=0.5)
        pair.heal()
        assert reach(pair, timeout=5)
    finally:
        server.terminate()
        server.wait(timeout=10)

"""Real-socket peers for the WAN simulator tests: a recording server and client.

Everything runs on the test's reactor (asyncio reactor under pytest-twisted)
on 127.0.0.1. Times are the reactor's clock; assertions use lower bounds
that the simulator guarantees (it never delivers early) and generous upper
bounds, so a slow machine cannot fail them.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import defer, protocol, task
from twisted.internet import reactor as _reactor
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

reactor: Any = _reactor


def sleep(seconds: float) -> defer.Deferred[None]:
    return task.deferLater(reactor, seconds, lambda: None)


class Peer(protocol.Protocol):
    """Records what arrives and when; optional echo.

    Like most applications it takes a FIN as the end of the connection;
    `HalfClosePeer` keeps its sending half open after one.
    """

    def __init__(self, echo: bool = False) -> None:
        self.echo = echo
        self.received = bytearray()
        self.arrivals: list[tuple[float, int]] = []  # (time, bytes so far)
        self.made = defer.Deferred[None]()
        self.lost: defer.Deferred[None] = defer.Deferred()  # reason in .reason
        self.eof_at: float | None = None
        self.eof: defer.Deferred[None] = defer.Deferred()  # FIN or connection lost
        self.lost_at: float | None = None
        self.reason: Failure | None = None
        self._waiters: list[tuple[int, defer.Deferred[None]]] = []

    def connectionMade(self) -> None:
        self.made.callback(None)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        self.arrivals.append((reactor.seconds(), len(self.received)))
        if self.echo:
            self.transport.write(data)  # type: ignore[union-attr]
        for n, d in list(self._waiters):
            if len(self.received) >= n:
                self._waiters.remove((n, d))
                d.callback(None)

    def readConnectionLost(self) -> None:
        self.eof_at = reactor.seconds()
        self.eof.callback(None)
        if self.echo:
            self.transport.loseWriteConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        self.lost_at = reactor.seconds()
        self.reason = reason
        if self.eof_at is None:
            self.eof_at = self.lost_at
            self.eof.callback(None)
        for _, d in self._waiters:
            d.errback(reason)
        self._waiters.clear()
        self.lost.callback(None)

    def wait_for(self, n: int, timeout: float = 10.0) -> defer.Deferred[None]:
        d = defer.Deferred[None]()
        if len(self.received) >= n:
            d.callback(None)
        else:
            self._waiters.append((n, d))
        d.addTimeout(timeout, reactor)
        return d

    def time_of(self, n: int) -> float:
        """When the first `n` bytes had all arrived."""
        for when, total in self.arrivals:
            if total >= n:
                return when
        raise AssertionError(f"only {len(self.received)} of {n} bytes arrived")

    def write(self, data: bytes) -> float:
        self.transport.write(data)  # type: ignore[union-attr]
        return float(reactor.seconds())


@implementer(IHalfCloseableProtocol)
class HalfClosePeer(Peer):
    pass


class Server(protocol.Factory):
    """Upstream test server; `peers` lists its accepted connections."""

    def __init__(self, echo: bool = True, half_close: bool = False) -> None:
        self.echo = echo
        self.half_close = half_close
        self.peers: list[Peer] = []
        self._waiting: list[defer.Deferred[Peer]] = []
        self.port: Any = None

    def buildProtocol(self, addr: Any) -> Peer:
        peer = (HalfClosePeer if self.half_close else Peer)(echo=self.echo)
        self.peers.append(peer)
        waiting, self._waiting = self._waiting, []

        def made(_: None) -> None:
            for d in waiting:
                d.callback(peer)

        peer.made.addCallback(made)
        return peer

    def next_peer(self, timeout: float = 10.0) -> defer.Deferred[Peer]:
        d = defer.Deferred[Peer]()
        self._waiting.append(d)
        d.addTimeout(timeout, reactor)
        return d

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port.getHost().port}"


def listen(echo: bool = True, backlog: int = 1024, half_close: bool = False) -> Server:
    server = Server(echo, half_close)
    server.noisy = False
    server.port = reactor.listenTCP(0, server, backlog=backlog, interface="127.0.0.1")
    return server


async def connect(address: str, timeout: float = 10.0, half_close: bool = False) -> Peer:
    """Connect a recording client; raises if the connect fails or times out."""
    host, port = address.rsplit(":", 1)
    peer = HalfClosePeer() if half_close else Peer()
    result: defer.Deferred[Peer] = defer.Deferred()

    def made(_: None) -> None:
        if not result.called:
            result.callback(peer)

    peer.made.addCallback(made)

    class _Factory(protocol.ClientFactory):
        noisy = False

        def buildProtocol(self, addr: Any) -> Peer:
            return peer

        def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
            result.errback(reason)

    reactor.connectTCP(host, int(port), _Factory(), timeout=timeout)
    return await result

"""One named link: a listening port, its upstream, its toxics and connections.

Every accepted client gets a `ProxyConnection`: the accepted socket, a
socket to the upstream, and two `Link`s (upstream: client → server,
downstream: server → client), each a chain of toxic stages ending in the
other socket. With no toxics a link writes straight through, and each
socket's reading is paused while the other's write buffer is full (Twisted's
producer/consumer), so the proxy never buffers more than a socket's worth.

Half-close is kept: a FIN from one peer travels through its link's stages
(so latency delays it and slow_close holds it) and becomes a FIN to the
other peer; a socket closes once both of its halves are done.
"""

from __future__ import annotations

import contextlib
import errno
import random
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import error, protocol
from twisted.internet.interfaces import IHalfCloseableProtocol, IPushProducer
from twisted.python.failure import Failure
from zope.interface import implementer

from simulators.wan import errors
from simulators.wan.toxics import Stage, Toxic

STREAMS = ("upstream", "downstream")

#: Bytes the stages of one link may hold before the sender is paused, and the
#: level at which it is resumed. A partitioned or slowed link thus pushes back
#: on the sender as a full TCP window would, instead of buffering it all; it
#: also bounds a delayed link's throughput to about HIGH_WATER / latency, the
#: bandwidth-delay product of a 1 MiB window.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024

#: recv() size and write-buffer threshold of proxied sockets.
SOCKET_BUFFER = 64 * 1024


def split_address(address: str) -> tuple[str, int]:
    """Split Go-style "host:port", "[v6]:port" or ":port" (all interfaces)."""
    host, sep, port_text = address.rpartition(":")
    if not sep or not port_text.isdigit() or int(port_text) > 65535:
        raise ValueError(f"address {address!r} is not host:port")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port_text)


def join_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IPushProducer)
class PauseGate:
    """Reading of one socket, paused while any reason to pause holds."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.reasons: set[str] = set()

    def pause(self, reason: str) -> None:
        if not self.reasons:
            self.transport.pauseProducing()
        self.reasons.add(reason)

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            if not self.reasons:
                self.transport.resumeProducing()

    # IPushProducer, as seen by the socket we write to.
    def pauseProducing(self) -> None:
        self.pause("consumer")

    def resumeProducing(self) -> None:
        self.resume("consumer")

    def stopProducing(self) -> None:
        pass


class _StageContext:
    """A stage's view of its connection (see toxics.base.StageContext)."""

    def __init__(self, link: Link, rng: random.Random) -> None:
        self.link = link
        self.clock = link.connection.clock
        self.rng = rng

    def held(self, delta: int) -> None:
        self.link.held(delta)

    def close_connection(self, reset: bool = False) -> None:
        self.link.connection.close(reset=reset)

    def close_after_eof(self) -> None:
        self.link.close_on_eof = True

    def note(self, what: str) -> None:
        self.link.connection.proxy.note("connection", detail=what)


class _SocketSink:
    """The end of a link's chain: the other peer's socket."""

    def __init__(self, link: Link) -> None:
        self.link = link

    def on_data(self, data: bytes) -> None:
        self.link.write(data)

    def on_eof(self) -> None:
        self.link.eof_reached_socket()


class Link:
    """One direction of one connection: source socket → stages → destination."""

    def __init__(
        self, connection: ProxyConnection, stream: str, source: PauseGate, destination: Any
    ) -> None:
        self.connection = connection
        self.stream = stream
        self.source = source
        self.destination = destination
        self.sink = _SocketSink(self)
        # (toxic, stage or None when the toxicity roll said no), in toxic order.
        self.slots: list[tuple[Toxic, Stage | None]] = []
        self.first: Stage | None = None
        self.holding = 0
        self.close_on_eof = False
        self.finished = False  # EOF delivered or connection closing

    # -- input ------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        first = self.first
        if first is None:
            if not self.finished:
                self._write_through(data)
        else:
            first.on_data(data)

    def _write_through(self, data: bytes) -> None:
        # The no-toxic fast path: when nothing is queued on the destination,
        # send now rather than on the reactor's next turn. This skips a
        # writer registration per chunk and roughly doubles throughput. It
        # reads Twisted's tcp.Connection internals, so it checks for each.
        dst = self.destination
        sock = getattr(dst, "socket", None)
        if (
            sock is not None
            and not getattr(dst, "dataBuffer", True)
            and not getattr(dst, "_tempDataLen", True)
            and getattr(dst, "connected", False)
            and not getattr(dst, "disconnecting", True)
            and not getattr(dst, "_writeDisconnected", True)
        ):
            try:
                sent = sock.send(data)
            except OSError:
                sent = 0  # let the transport's own write find and report it
            if sent == len(data):
                return
            data = data[sent:]
        dst.write(data)

    def feed_eof(self) -> None:
        if self.first is None:
            self.eof_reached_socket()
        else:
            self.first.on_eof()

    # -- output -----------------------------------------------------------
    def write(self, data: bytes) -> None:
        if not self.finished:
            self.destination.write(data)

    def eof_reached_socket(self) -> None:
        if self.finished:
            return
        self.finished = True
        if self.close_on_eof:
            self.connection.close()
        else:
            self.connection.half_close(self.stream)

    def held(self, delta: int) -> None:
        self.holding += delta
        if self.holding > HIGH_WATER:
            self.source.pause("held")
        elif self.holding <= LOW_WATER:
            self.source.resume("held")

    # -- toxics -----------------------------------------------------------
    def _relink(self) -> None:
        stages = [stage for _, stage in self.slots if stage is not None]
        for index, stage in enumerate(stages):
            stage.next = stages[index + 1] if index + 1 < len(stages) else self.sink
        self.first = stages[0] if stages else None

    def _new_stage(self, toxic: Toxic) -> Stage | None:
        rng = self.connection.rng_for(self.stream, toxic)
        if rng.random() >= toxic.toxicity:
            return None
        return toxic.new_stage(_StageContext(self, rng))

    def add(self, toxic: Toxic) -> None:
        stage = self._new_stage(toxic)
        self.slots.append((toxic, stage))
        self._relink()
        if stage is not None:
            stage.start()

    def remove(self, toxic: Toxic) -> None:
        for index, (existing, stage) in enumerate(self.slots):
            if existing is toxic:
                if stage is not None:
                    stage.drain()
                del self.slots[index]
                self._relink()
                return

    def update(self, toxic: Toxic, toxicity_changed: bool) -> None:
        for index, (existing, stage) in enumerate(self.slots):
            if existing is not toxic:
                continue
            if not toxicity_changed:
                if stage is not None:
                    stage.reconfigure()
                return
            # toxiproxy re-rolls the toxicity when a toxic is updated.
            if stage is not None:
                stage.drain()
            fresh = self._new_stage(toxic)
            self.slots[index] = (toxic, fresh)
            self._relink()
            if fresh is not None:
                fresh.start()
            return

    def stop(self) -> None:
        self.finished = True
        for _, stage in self.slots:
            if stage is not None:
                stage.stop()


class _PeerProtocol(protocol.Protocol):
    connection: ProxyConnection | None = None
    side = ""

    def connectionMade(self) -> None:
        transport: Any = self.transport
        transport.bufferSize = SOCKET_BUFFER
        with contextlib.suppress(OSError):
            transport.setTcpNoDelay(True)

    def dataReceived(self, data: bytes) -> None:
        connection = self.connection
        if connection is not None:
            connection.data(self.side, data)

    def readConnectionLost(self) -> None:
        if self.connection is not None:
            self.connection.read_eof(self.side)

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure = protocol.connectionDone) -> None:
        if self.connection is not None:
            self.connection.connection_lost(self.side, reason)


@implementer(IHalfCloseableProtocol)
class ClientSide(_PeerProtocol):
    """The socket a client opened to the proxy's listening port."""

    side = "client"

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.proxy.is_plug(self.transport):
            self.transport.loseConnection()  # type: ignore[union-attr]
            return
        self.connection = ProxyConnection(self.proxy, self)


@implementer(IHalfCloseableProtocol)
class UpstreamSide(_PeerProtocol):
    side = "upstream"

    def __init__(self, connection: ProxyConnection) -> None:
        self.pending = connection

    def connectionMade(self) -> None:
        super().connectionMade()
        self.connection = self.pending
        self.pending.upstream_connected(self)


class _UpstreamFactory(protocol.ClientFactory):
    def __init__(self, connection: ProxyConnection) -> None:
        self.connection = connection

    def buildProtocol(self, addr: Any) -> UpstreamSide:
        return UpstreamSide(self.connection)

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        self.connection.upstream_failed(reason)


class ProxyConnection:
    """A client, its upstream socket and the two links between them."""

    def __init__(self, proxy: Proxy, client: ClientSide) -> None:
        self.proxy = proxy
        self.clock = proxy.clock
        self.number = proxy.next_connection_number()
        self.client = client
        self.client_transport: Any = client.transport
        self.upstream_transport: Any = None
        self.client_gate = PauseGate(self.client_transport)
        self.upstream_gate: PauseGate | None = None
        self.links: dict[str, Link] = {}
        self.read_done = {"client": False, "upstream": False}
        self.write_done = {"client": False, "upstream": False}
        self.lost = {"client": False, "upstream": False}
        self.closing = False
        self.client_gate.pause("connecting")
        proxy.connections.add(self)
        host, port = split_address(proxy.upstream)
        proxy.reactor.connectTCP(host, port, _UpstreamFactory(self), timeout=30)

    def rng_for(self, stream: str, toxic: Toxic) -> random.Random:
        return random.Random(
            f"{self.proxy.seed}/{self.proxy.name}/{self.number}/{stream}/{toxic.name}/"
            f"{self.proxy.toxic_generation.get(toxic.name, 0)}"
        )

    # -- setup ------------------------------------------------------------
    def upstream_connected(self, upstream: UpstreamSide) -> None:
        self.upstream_transport = upstream.transport
        if self.closing:
            self.upstream_transport.abortConnection()
            return
        self.upstream_gate = PauseGate(self.upstream_transport)
        up = Link(self, "upstream", self.client_gate, self.upstream_transport)
        down = Link(self, "downstream", self.upstream_gate, self.client_transport)
        self.links = {"upstream": up, "downstream": down}
        self.upstream_transport.registerProducer(self.client_gate, True)
        self.client_transport.registerProducer(self.upstream_gate, True)
        for toxic in self.proxy.ordered_toxics():
            self.links[toxic.stream].add(toxic)
        self.client_gate.resume("connecting")
        # A FIN the client sent while we were connecting.
        if self.read_done["client"]:
            up.feed_eof()

    def upstream_failed(self, reason: Failure) -> None:
        self.proxy.note("connection", detail=f"upstream {self.proxy.upstream}: {reason.value}")
        self.upstream_transport = None
        self.lost["upstream"] = True
        self.close()

    # -- events from sockets ---------------------------------------------
    def data(self, side: str, data: bytes) -> None:
        link = self.links.get("upstream" if side == "client" else "downstream")
        if link is not None:
            link.feed(data)

    def read_eof(self, side: str) -> None:
        if self.read_done[side]:
            return
        self.read_done[side] = True
        link = self.links.get("upstream" if side == "client" else "downstream")
        if link is not None:
            link.feed_eof()
        self._maybe_lose(side)

    def half_close(self, stream: str) -> None:
        # The link `stream` delivered its EOF: FIN to its destination.
        side = "upstream" if stream == "upstream" else "client"
        transport = self.upstream_transport if side == "upstream" else self.client_transport
        self.write_done[side] = True
        if transport is not None and not self.lost[side]:
            # Nothing more will be written: drop the back-pressure link first,
            # or a transport that paused its producer would resume it when its
            # buffer empties instead of sending the FIN.
            transport.unregisterProducer()
            transport.loseWriteConnection()
        self._maybe_lose(side)

    def _maybe_lose(self, side: str) -> None:
        if self.read_done[side] and self.write_done[side]:
            transport = self.upstream_transport if side == "upstream" else self.client_transport
            if transport is not None and not self.lost[side]:
                transport.loseConnection()

    def connection_lost(self, side: str, reason: Failure) -> None:
        self.lost[side] = True
        clean = reason.check(error.ConnectionDone) is not None
        if not self.closing and not (clean and self.read_done[side] and self.write_done[side]):
            # The peer reset or vanished: pass it on as a reset.
            self.close(reset=not clean)
        self._forget_if_gone()

    def _forget_if_gone(self) -> None:
        if self.lost["client"] and (self.lost["upstream"] or self.upstream_transport is None):
            for link in self.links.values():
                link.stop()
            self.proxy.connections.discard(self)

    # -- toxics -----------------------------------------------------------
    def add_toxic(self, toxic: Toxic) -> None:
        link = self.links.get(toxic.stream)
        if link is not None:
            link.add(toxic)

    def remove_toxic(self, toxic: Toxic) -> None:
        link = self.links.get(toxic.stream)
        if link is not None:
            link.remove(toxic)

    def update_toxic(self, toxic: Toxic, toxicity_changed: bool) -> None:
        link = self.links.get(toxic.stream)
        if link is not None:
            link.update(toxic, toxicity_changed)

    # -- teardown ---------------------------------------------------------
    def close(self, reset: bool = False) -> None:
        if self.closing:
            return
        self.closing = True
        for link in self.links.values():
            link.stop()
        for side, transport in (
            ("client", self.client_transport),
            ("upstream", self.upstream_transport),
        ):
            if transport is None or self.lost[side]:
                continue
            transport.unregisterProducer()
            if reset:
                transport.abortConnection()  # SO_LINGER 0: the peer sees RST
            else:
                transport.loseConnection()
        self._forget_if_gone()


class _ListenFactory(protocol.Factory):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy
        self.noisy = False

    def buildProtocol(self, addr: Any) -> ClientSide:
        return ClientSide(self.proxy)


class Proxy:
    """A named TCP proxy, toxiproxy's unit of configuration."""

    backlog = 1024

    def __init__(
        self,
        name: str,
        listen: str,
        upstream: str,
        reactor: Any,
        seed: int | str = 0,
        note: Callable[..., None] | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.upstream = upstream
        self.reactor: Any = reactor  # IReactorTCP + IReactorTime
        self.clock: Any = reactor
        self.seed = seed
        self.enabled = False
        self.toxics: dict[str, Toxic] = {}
        self.toxic_generation: dict[str, int] = {}
        self.connections: set[ProxyConnection] = set()
        self.port: Any = None  # IListeningPort
        self._connection_count = 0
        self._accept_blocked = False
        self._plugs: dict[tuple[str, int], socket.socket] = {}
        self._note = note

    def note(self, action: str, **details: Any) -> None:
        if self._note is not None:
            self._note(action, proxy=self.name, **details)

    def next_connection_number(self) -> int:
        self._connection_count += 1
        return self._connection_count

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "listen": self.listen,
            "upstream": self.upstream,
            "enabled": self.enabled,
            "toxics": [toxic.to_json() for toxic in self.ordered_toxics()],
        }

    def ordered_toxics(self) -> list[Toxic]:
        # toxiproxy lists the upstream chain, then the downstream chain.
        toxics = list(self.toxics.values())
        return [t for t in toxics if t.stream == "upstream"] + [
            t for t in toxics if t.stream == "downstream"
        ]

    # -- listening --------------------------------------------------------
    def start(self) -> None:
        if self.enabled:
            return
        try:
            host, port = split_address(self.listen)
        except ValueError as exc:
            raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None
        interface = host
        if host in ("", "localhost"):
            interface = "127.0.0.1" if host == "localhost" else ""
        try:
            self.port = self.reactor.listenTCP(
                port, _ListenFactory(self), backlog=self.backlog, interface=interface
            )
        except error.CannotListenError as exc:
            detail = exc.socketError
            text = (
                "address already in use"
                if isinstance(detail, OSError) and detail.errno == errno.EADDRINUSE
                else str(detail)
            )
            raise errors.listen_error(join_address(interface or "[::]", port), text) from None
        bound = self.port.getHost()
        self.listen = join_address(getattr(bound, "host", interface), getattr(bound, "port", port))
        self.enabled = True
        self._accept_blocked = False
        self.refresh_accepting()

    def stop(self) -> None:
        if not self.enabled:
            return
        self.enabled = False
        if self.port is not None:
            self.port.stopListening()
            self.port = None
        for plug in self._plugs.values():
            plug.close()
        self._plugs.clear()
        self._accept_blocked = False
        for connection in list(self.connections):
            connection.close()

    def refresh_accepting(self) -> None:
        """Stop accepting while a full partition is on: connects then hang.

        The kernel finishes handshakes into the accept queue by itself, so
        besides not calling accept() the backlog is shrunk to its minimum;
        once the queue is full, SYNs are dropped and clients retry them, as
        across a cut link. After the heal the queue is served and retried
        SYNs get through.
        """
        port: Any = self.port
        blocked = any(t.blocks_connect and t.toxicity >= 1 for t in self.toxics.values())
        if port is None or blocked == self._accept_blocked:
            return
        self._accept_blocked = blocked
        sock: socket.socket | None = getattr(port, "socket", None)
        if blocked:
            if hasattr(port, "stopReading"):
                port.stopReading()
            if sock is not None:
                sock.listen(0)
                self._plug_accept_queue(sock)
        else:
            if sock is not None:
                sock.listen(self.backlog)
            for plug in self._plugs.values():
                plug.close()
            if hasattr(port, "startReading"):
                port.startReading()

    def _plug_accept_queue(self, sock: socket.socket) -> None:
        # With a backlog of 0 Linux still queues one connection. Take that
        # place with a connection of our own, dropped when it is accepted.
        host, port = sock.getsockname()[:2]
        if host in ("0.0.0.0", "::"):
            host = "127.0.0.1" if host == "0.0.0.0" else "::1"
        plug = socket.socket(sock.family, socket.SOCK_STREAM)
        plug.setblocking(False)
        plug.connect_ex((host, port))
        local = plug.getsockname()
        self._plugs[(local[0], local[1])] = plug

    def is_plug(self, transport: Any) -> bool:
        peer = transport.getPeer()
        return self._plugs.pop((peer.host, peer.port), None) is not None

    # -- toxics -----------------------------------------------------------
    def add_toxic(self, toxic: Toxic) -> None:
        self.toxics[toxic.name] = toxic
        for connection in list(self.connections):
            connection.add_toxic(toxic)
        self.refresh_accepting()

    def remove_toxic(self, name: str) -> Toxic:
        toxic = self.toxics.pop(name)
        self.toxic_generation[name] = self.toxic_generation.get(name, 0) + 1
        for connection in list(self.connections):
            connection.remove_toxic(toxic)
        self.refresh_accepting()
        return toxic

    def update_toxic(self, toxic: Toxic, toxicity_changed: bool) -> None:
        if toxicity_changed:
            self.toxic_generation[toxic.name] = self.toxic_generation.get(toxic.name, 0) + 1
        for connection in list(self.connections):
            connection.update_toxic(toxic, toxicity_changed)
        self.refresh_accepting()


__all__ = ["STREAMS", "Proxy", "ProxyConnection", "join_address", "split_address"]

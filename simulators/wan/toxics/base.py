"""The one interface every toxic implements.

A *toxic* is the settings a user created through the API (type, stream,
toxicity, attributes); it is shared by every connection of a proxy. A *stage*
is what a toxic does to one direction of one connection: it receives chunks
and the end of the stream (EOF) from the stage before it and passes them on,
later, changed or not at all. Stages of one direction form a chain, in the
order their toxics were added, ending in the socket of the other peer.

Stages never touch sockets or the reactor directly: they get a
`StageContext` with a clock (`IReactorTime`, so `task.Clock` drives them in
unit tests), a seeded random generator, byte accounting for back-pressure
and a way to close or reset the connection. That keeps each toxic a small
module that can be tested without a network.

When a toxic is removed, its stage is *drained*: whatever it holds goes on
down the chain at once, in order, so that no byte is dropped (toxiproxy does
the same). Toxics that model data that never arrived (timeout, reset_peer)
drop data as they receive it instead of holding it.
"""

from __future__ import annotations

import collections
import math
import random
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, Protocol


class BadAttributes(ValueError):
    """An attribute has the wrong type or an impossible value (HTTP 400)."""


class Sink(Protocol):
    """Where a stage sends what it lets through: the next stage or the socket."""

    def on_data(self, data: bytes) -> None: ...

    def on_eof(self) -> None: ...


class StageContext(Protocol):
    """What a stage may use of the connection it works on."""

    clock: Any  # IReactorTime
    rng: random.Random

    def held(self, delta: int) -> None:
        """Count bytes a stage keeps (+) or lets go (-), for back-pressure."""

    def close_connection(self, reset: bool = False) -> None:
        """Close both sides now; `reset` sends an RST instead of a FIN."""

    def close_after_eof(self) -> None:
        """Close both sides once this direction's EOF reaches its socket."""

    def note(self, what: str) -> None:
        """Record something the stage did in the simulator's event log."""


def _number(name: str, value: Any, integer: bool) -> int | float:
    # JSON numbers only, as Go's decoder into int64/float fields accepts.
    if isinstance(value, bool) or not isinstance(value, int | float):
        kind = "string" if isinstance(value, str) else type(value).__name__
        raise BadAttributes(f"json: cannot unmarshal {kind} into attribute {name!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise BadAttributes(f"attribute {name!r} must be finite")
    if integer:
        if isinstance(value, float):
            if not value.is_integer():
                raise BadAttributes(
                    f"json: cannot unmarshal number {value} into attribute {name!r} of type int"
                )
            value = int(value)
        return value
    return float(value)


class Toxic:
    """Settings of one toxic on one proxy; subclasses add a stage class.

    `defaults` lists the attributes and their default values; an attribute
    whose default is an int only takes whole numbers. Unknown attributes are
    ignored, as toxiproxy does.
    """

    type_name: ClassVar[str] = ""
    defaults: ClassVar[Mapping[str, int | float]] = {}
    minimums: ClassVar[Mapping[str, int | float]] = {}
    maximums: ClassVar[Mapping[str, int | float]] = {}

    def __init__(
        self,
        name: str,
        stream: str,
        toxicity: float = 1.0,
        attributes: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = name
        self.stream = stream
        self.toxicity = toxicity
        self.attributes: dict[str, int | float] = dict(self.defaults)
        self.update_attributes(attributes or {})

    def update_attributes(self, changes: Mapping[str, Any]) -> None:
        """Merge `changes` into the attributes, all or nothing."""
        merged = dict(self.attributes)
        for key, value in changes.items():
            if key not in self.defaults:
                continue
            number = _number(key, value, isinstance(self.defaults[key], int))
            low = self.minimums.get(key, 0)
            if number < low:
                raise BadAttributes(f"attribute {key!r} must be at least {low}")
            high = self.maximums.get(key)
            if high is not None and number > high:
                raise BadAttributes(f"attribute {key!r} must be at most {high}")
            merged[key] = number
        self.check(merged)
        self.attributes = merged

    def check(self, attributes: Mapping[str, int | float]) -> None:
        """Cross-attribute validation; raise BadAttributes."""

    def __getitem__(self, key: str) -> int | float:
        return self.attributes[key]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "stream": self.stream,
            "toxicity": self.toxicity,
            "attributes": dict(self.attributes),
        }

    def new_stage(self, ctx: StageContext) -> Stage:
        raise NotImplementedError

    #: Partitions also act on the listening socket (new connections hang).
    blocks_connect: ClassVar[bool] = False


class Stage:
    """One toxic acting on one direction of one connection."""

    def __init__(self, toxic: Toxic, ctx: StageContext) -> None:
        self.toxic = toxic
        self.ctx = ctx
        self.next: Sink = _NullSink()
        self._calls: set[Any] = set()  # IDelayedCall

    # -- helpers for subclasses -------------------------------------------
    def call_later(self, delay: float, fn: Callable[[], None]) -> Any:
        def fire() -> None:
            self._calls.discard(call)
            fn()

        call = self.ctx.clock.callLater(max(0.0, delay), fire)
        self._calls.add(call)
        return call

    def cancel(self, call: Any) -> None:
        if call is not None and call.active():
            call.cancel()
        self._calls.discard(call)

    # -- the interface ----------------------------------------------------
    def start(self) -> None:
        """Called once the stage is linked into its chain."""

    def on_data(self, data: bytes) -> None:
        self.next.on_data(data)

    def on_eof(self) -> None:
        self.next.on_eof()

    def reconfigure(self) -> None:
        """The toxic's attributes changed; the stage reads them from `self.toxic`."""

    def drain(self) -> None:
        """Pass on everything held, now and in order; the stage is being removed."""
        self.stop()

    def stop(self) -> None:
        """Forget pending work: the connection is gone or the stage is drained."""
        for call in list(self._calls):
            if call.active():
                call.cancel()
        self._calls.clear()


class _NullSink:
    def on_data(self, data: bytes) -> None:
        pass

    def on_eof(self) -> None:
        pass


_EOF = object()


class TimedQueueStage(Stage):
    """A stage that releases chunks at computed times, never out of order.

    Subclasses implement `schedule(data, now)` returning ``[(release_time,
    piece), ...]``; release times are forced to be non-decreasing, so a late
    chunk holds back those behind it, as one TCP stream does (head-of-line
    blocking). EOF leaves after the last chunk, optionally delayed by
    `eof_delay(now)`.
    """

    def __init__(self, toxic: Toxic, ctx: StageContext) -> None:
        super().__init__(toxic, ctx)
        self.queue: collections.deque[tuple[float, object]] = collections.deque()
        self.last_release = -math.inf
        self.timer: Any = None
        self.bytes_held = 0

    def schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        raise NotImplementedError

    def eof_delay(self, now: float) -> float:
        return now

    def _push(self, when: float, item: object) -> None:
        when = max(when, self.last_release)
        self.last_release = when
        self.queue.append((when, item))

    def on_data(self, data: bytes) -> None:
        now = self.ctx.clock.seconds()
        pieces = self.schedule(data, now)
        # What is due with nothing queued before it goes straight through.
        first_late = 0
        if not self.queue:
            while first_late < len(pieces) and pieces[first_late][0] <= now:
                self.next.on_data(pieces[first_late][1])
                first_late += 1
        for when, piece in pieces[first_late:]:
            self._push(when, piece)
            self.bytes_held += len(piece)
            self.ctx.held(len(piece))
        self._arm()

    def on_eof(self) -> None:
        now = self.ctx.clock.seconds()
        self._push(self.eof_delay(now), _EOF)
        self._arm()

    def _arm(self) -> None:
        if self.timer is not None or not self.queue:
            return
        delay = self.queue[0][0] - self.ctx.clock.seconds()
        self.timer = self.call_later(delay, self._release)

    def _release(self) -> None:
        self.timer = None
        now = self.ctx.clock.seconds()
        # Deliver everything due, coalescing adjacent data pieces.
        out: list[bytes] = []
        eof = False
        while self.queue and self.queue[0][0] <= now + 1e-9:
            _, item = self.queue.popleft()
            if item is _EOF:
                eof = True
                break
            assert isinstance(item, bytes)
            out.append(item)
        if out:
            data = b"".join(out)
            self.bytes_held -= len(data)
            self.ctx.held(-len(data))
            self.next.on_data(data)
        if eof:
            self.next.on_eof()
            return
        self._arm()

    def drain(self) -> None:
        self.stop()
        self.timer = None
        out: list[bytes] = []
        eof = False
        while self.queue:
            _, item = self.queue.popleft()
            if item is _EOF:
                eof = True
                break
            assert isinstance(item, bytes)
            out.append(item)
        if out:
            data = b"".join(out)
            self.ctx.held(-self.bytes_held)
            self.bytes_held = 0
            self.next.on_data(data)
        if eof:
            self.next.on_eof()

    def stop(self) -> None:
        super().stop()
        self.timer = None

"""Toxic stages without sockets: task.Clock time, a recording sink, a fake context."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from simulators.wan.toxics import TOXIC_TYPES, BadAttributes, Stage, Toxic


class FakeContext:
    def __init__(self, clock: Clock, rng: Any = None) -> None:
        self.clock = clock
        self.rng = rng or random.Random(0)
        self.holding = 0
        self.closed: str | None = None
        self.close_after = False
        self.notes: list[str] = []

    def held(self, delta: int) -> None:
        self.holding += delta
        assert self.holding >= 0

    def close_connection(self, reset: bool = False) -> None:
        self.closed = "reset" if reset else "close"

    def close_after_eof(self) -> None:
        self.close_after = True

    def note(self, what: str) -> None:
        self.notes.append(what)


class Recorder:
    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.data = bytearray()
        self.arrivals: list[tuple[float, int]] = []
        self.eof_at: float | None = None

    def on_data(self, data: bytes) -> None:
        assert self.eof_at is None, "data after EOF"
        self.data += data
        self.arrivals.append((self.clock.seconds(), len(data)))

    def on_eof(self) -> None:
        assert self.eof_at is None, "two EOFs"
        self.eof_at = self.clock.seconds()


class ScriptedRandom(random.Random):
    def __init__(self, values: list[float]) -> None:
        super().__init__(0)
        self.values = list(values)

    def random(self) -> float:
        return self.values.pop(0) if self.values else 0.99


def make(kind: str, clock: Clock, rng: Any = None, **attributes: Any) -> tuple[Stage, Recorder,
                                                                              FakeContext]:
    toxic = TOXIC_TYPES[kind](kind, "downstream", 1.0, attributes)
    ctx = FakeContext(clock, rng)
    stage = toxic.new_stage(ctx)
    sink = Recorder(clock)
    stage.next = sink
    stage.start()
    return stage, sink, ctx


def test_latency_delays_data_and_eof() -> None:
    clock = Clock()
    stage, sink, _ = make("latency", clock, latency=100)
    stage.on_data(b"abc")
    clock.advance(0.099)
    assert sink.data == b""
    clock.advance(0.001)
    assert sink.data == b"abc"
    stage.on_eof()
    clock.advance(0.1)
    assert sink.eof_at == pytest.approx(0.2)


def test_latency_jitter_never_reorders() -> None:
    clock = Clock()
    stage, sink, _ = make("latency", clock, random.Random(5), latency=100, jitter=90)
    for i in range(50):
        stage.on_data(bytes([i]))
        clock.advance(0.003)
    clock.advance(1)
    assert bytes(sink.data) == bytes(range(50))
    assert all(when >= 0.01 for when, _ in sink.arrivals)


def test_bandwidth_releases_at_the_rate() -> None:
    clock = Clock()
    stage, sink, ctx = make("bandwidth", clock, rate=10)  # 10 KB/s
    stage.on_data(b"x" * 5000)
    assert ctx.holding == 5000
    clock.pump([0.1] * 5)
    assert [n for _, n in sink.arrivals] == [1000] * 5
    assert [round(t, 3) for t, _ in sink.arrivals] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert ctx.holding == 0


def test_slicer_cuts_into_spaced_pieces() -> None:
    clock = Clock()
    stage, sink, _ = make("slicer", clock, random.Random(1), average_size=10, size_variation=4,
                          delay=1000)
    stage.on_data(bytes(range(100)))
    clock.pump([0.001] * 30)
    assert bytes(sink.data) == bytes(range(100))
    sizes = [n for _, n in sink.arrivals]
    assert len(sizes) >= 7 and all(1 <= n <= 14 for n in sizes)
    times = [t for t, _ in sink.arrivals]
    assert all(b - a >= 0.001 - 1e-9 for a, b in itertools.pairwise(times))


def test_slicer_rejects_variation_above_average() -> None:
    with pytest.raises(BadAttributes):
        TOXIC_TYPES["slicer"]("s", "downstream", 1.0, {"average_size": 5, "size_variation": 5})


def test_loss_doubles_the_retransmission_timeout() -> None:
    clock = Clock()
    # Lost, lost again, then through: 200 + 400 ms.
    stage, sink, _ = make("loss", clock, ScriptedRandom([0.0, 0.0, 0.9]), probability=0.5,
                          rto=200, segment=0)
    stage.on_data(b"late")
    stage.on_data(b"behind")  # not lost, but waits behind the lost one
    clock.advance(0.599)
    assert sink.data == b""
    clock.advance(0.001)
    assert sink.data == b"latebehind"


def test_loss_caps_the_timeout() -> None:
    clock = Clock()
    stage, sink, _ = make("loss", clock, ScriptedRandom([0.0] * 4 + [0.9]), probability=0.9,
                          rto=100, max_rto=250, segment=0)
    stage.on_data(b"x")
    clock.advance(0.1 + 0.2 + 0.25 + 0.25 - 0.001)
    assert sink.data == b""
    clock.advance(0.001)
    assert sink.data == b"x"


def test_loss_per_segment_keeps_early_segments_early() -> None:
    clock = Clock()
    # Segments of 4 bytes: first through, second lost once.
    stage, sink, _ = make("loss", clock, ScriptedRandom([0.9, 0.0, 0.9, 0.9]), probability=0.5,
                          rto=100, segment=4)
    stage.on_data(b"aaaabbbbcccc")
    assert sink.data == b"aaaa"
    clock.advance(0.1)
    assert sink.data == b"aaaabbbbcccc"


def test_loss_rejects_certain_loss() -> None:
    with pytest.raises(BadAttributes):
        TOXIC_TYPES["loss"]("l", "downstream", 1.0, {"probability": 1.0})


def test_partition_holds_then_drains_in_order() -> None:
    clock = Clock()
    stage, sink, ctx = make("partition", clock)
    stage.on_data(b"one ")
    stage.on_data(b"two")
    stage.on_eof()
    clock.advance(3600)
    assert sink.data == b"" and sink.eof_at is None and ctx.holding == 7
    assert ctx.closed is None
    stage.drain()
    assert sink.data == b"one two" and sink.eof_at == 3600 and ctx.holding == 0


def test_partition_user_timeout_counts_from_waiting_data() -> None:
    clock = Clock()
    stage, _, ctx = make("partition", clock, user_timeout=1000)
    clock.advance(10)
    assert ctx.closed is None  # idle connections survive
    stage.on_data(b"x")
    clock.advance(0.999)
    assert ctx.closed is None
    clock.advance(0.001)
    assert ctx.closed == "reset"


def test_limit_data_cuts_exactly() -> None:
    clock = Clock()
    stage, sink, ctx = make("limit_data", clock, bytes=10)
    stage.on_data(b"12345678")
    stage.on_data(b"abcdef")
    stage.on_data(b"more")
    assert sink.data == b"12345678ab"
    assert sink.eof_at == 0 and ctx.close_after


def test_timeout_drops_and_closes() -> None:
    clock = Clock()
    stage, sink, ctx = make("timeout", clock, timeout=500)
    stage.on_data(b"gone")
    clock.advance(0.499)
    assert ctx.closed is None
    clock.advance(0.001)
    assert ctx.closed == "close" and sink.data == b""


def test_timeout_zero_never_closes() -> None:
    clock = Clock()
    stage, sink, ctx = make("timeout", clock, timeout=0)
    stage.on_data(b"gone")
    clock.advance(86400)
    assert ctx.closed is None and sink.data == b""


def test_reset_peer_counts_from_first_data() -> None:
    clock = Clock()
    stage, _, ctx = make("reset_peer", clock, timeout=200)
    clock.advance(5)
    assert ctx.closed is None
    stage.on_data(b"x")
    clock.advance(0.2)
    assert ctx.closed == "reset"


def test_slow_close_delays_only_the_eof() -> None:
    clock = Clock()
    stage, sink, _ = make("slow_close", clock, delay=300)
    stage.on_data(b"data")
    assert sink.data == b"data"
    stage.on_eof()
    clock.advance(0.299)
    assert sink.eof_at is None
    clock.advance(0.001)
    assert sink.eof_at == pytest.approx(0.3)


@pytest.mark.parametrize("bad", [{"latency": "100"}, {"latency": True}, {"latency": 1.5},
                                 {"latency": -1}, {"latency": float("nan")}])
def test_bad_attribute_values(bad: dict[str, Any]) -> None:
    with pytest.raises(BadAttributes):
        TOXIC_TYPES["latency"]("l", "downstream", 1.0, bad)


def test_unknown_attributes_are_ignored_and_updates_merge() -> None:
    toxic: Toxic = TOXIC_TYPES["latency"]("l", "downstream", 1.0, {"latency": 5, "colour": 1})
    toxic.update_attributes({"jitter": 2})
    assert toxic.attributes == {"latency": 5, "jitter": 2}


ORDER_KEEPING = st.sampled_from(["latency", "slicer", "loss", "bandwidth", "partition"])


@settings(max_examples=60, deadline=None)
@given(
    kinds=st.lists(ORDER_KEEPING, min_size=1, max_size=4),
    writes=st.lists(st.binary(min_size=1, max_size=300), min_size=1, max_size=20),
    gaps=st.lists(st.floats(min_value=0, max_value=0.05), min_size=20, max_size=20),
    seed=st.integers(0, 1000),
)
def test_any_chain_of_delaying_toxics_delivers_every_byte_in_order(
    kinds: list[str], writes: list[bytes], gaps: list[float], seed: int
) -> None:
    """Delays, slicing, loss and partitions reorder nothing and drop nothing."""
    clock = Clock()
    attributes = {
        "latency": {"latency": 30, "jitter": 25},
        "slicer": {"average_size": 7, "size_variation": 3, "delay": 500},
        "loss": {"probability": 0.3, "rto": 10, "segment": 16},
        "bandwidth": {"rate": 50},
        "partition": {},
    }
    sink = Recorder(clock)
    stages = []
    rng = random.Random(seed)
    for i, kind in enumerate(kinds):
        toxic = TOXIC_TYPES[kind](f"{kind}{i}", "downstream", 1.0, attributes[kind])
        stages.append(toxic.new_stage(FakeContext(clock, random.Random(rng.random()))))
    for stage, after in zip(stages, [*stages[1:], sink], strict=True):
        stage.next = after
    for data, gap in zip(writes, gaps, strict=False):
        stages[0].on_data(data)
        clock.advance(gap)
    stages[0].on_eof()
    # Heal partitions front to back (drain, unlink, as a removed toxic), then let time run.
    while any(stage.toxic.type_name == "partition" for stage in stages):
        index = next(i for i, st_ in enumerate(stages) if st_.toxic.type_name == "partition")
        stages[index].drain()
        if index > 0:
            stages[index - 1].next = stages[index].next
        del stages[index]
        clock.advance(0.01)
    for _ in range(200):
        clock.advance(1)
    assert bytes(sink.data) == b"".join(writes)
    assert sink.eof_at is not None

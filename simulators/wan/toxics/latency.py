"""latency: every chunk and the end of stream arrive `latency` ± `jitter` ms late.

Order is kept: with jitter a chunk never overtakes the one before it, because
one TCP stream cannot deliver out of order.
"""

from __future__ import annotations

from simulators.wan.toxics.base import Stage, StageContext, TimedQueueStage, Toxic


class LatencyToxic(Toxic):
    type_name = "latency"
    defaults = {"latency": 0, "jitter": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return LatencyStage(self, ctx)


class LatencyStage(TimedQueueStage):
    def delay(self) -> float:
        latency = self.toxic["latency"]
        jitter = self.toxic["jitter"]
        if jitter > 0:
            latency += self.ctx.rng.uniform(-jitter, jitter)
        return max(0.0, latency) / 1000.0

    def schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        return [(now + self.delay(), data)]

    def eof_delay(self, now: float) -> float:
        return now + self.delay()

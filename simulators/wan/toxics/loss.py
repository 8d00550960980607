"""loss: lost segments, as an application sees them through TCP.

TCP never shows a missing byte: a lost segment is sent again after a
retransmission timeout (RTO), which doubles each time the retransmission is
lost too, and everything behind it waits (head-of-line blocking). So each
chunk (as the proxy reads it; or each `segment` bytes, to model per-packet
loss on bulk transfers) is lost with `probability`; a loss delays it by
`rto` ms, a repeated loss by 2, 4... times that, capped at `max_rto` per
attempt. This is pessimistic next to real TCP, whose fast retransmit repairs
most single losses in about one round trip.
"""

from __future__ import annotations

from simulators.wan.toxics.base import Stage, StageContext, TimedQueueStage, Toxic


class LossToxic(Toxic):
    type_name = "loss"
    defaults = {"probability": 0.0, "rto": 200, "max_rto": 60000, "segment": 0}
    maximums = {"probability": 0.99}
    minimums = {"rto": 1, "max_rto": 1}

    def new_stage(self, ctx: StageContext) -> Stage:
        return LossStage(self, ctx)


class LossStage(TimedQueueStage):
    def retransmission_delay(self) -> float:
        probability = float(self.toxic["probability"])
        rto = float(self.toxic["rto"])
        cap = float(self.toxic["max_rto"])
        delay = 0.0
        while probability > 0 and self.ctx.rng.random() < probability:
            delay += rto
            rto = min(rto * 2, cap)
        return delay / 1000.0

    def schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        segment = int(self.toxic["segment"]) or len(data)
        pieces: list[tuple[float, bytes]] = []
        start = 0
        when = now
        for offset in range(0, len(data), segment):
            release = max(now + self.retransmission_delay(), when)
            if release != when and offset > start:
                pieces.append((when, data[start:offset]))
                start = offset
            when = release
        pieces.append((when, data[start:]))
        return pieces

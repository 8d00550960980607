"""bandwidth: cap one direction at `rate` KB/s (1 KB = 1000 bytes, as toxiproxy).

Each chunk is cut into pieces of at most 100 ms worth of data and a piece is
released when a link of that rate would have finished sending it. Held bytes
count toward back-pressure, so a fast sender is slowed down rather than
buffered without bound. A rate of 0 means no limit.
"""

from __future__ import annotations

from simulators.wan.toxics.base import Stage, StageContext, TimedQueueStage, Toxic


class BandwidthToxic(Toxic):
    type_name = "bandwidth"
    defaults = {"rate": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return BandwidthStage(self, ctx)


class BandwidthStage(TimedQueueStage):
    def schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        rate = self.toxic["rate"] * 1000.0  # bytes per second
        if rate <= 0:
            return [(now, data)]
        piece_size = max(1, int(rate / 10))
        start = max(now, self.last_release)
        pieces = []
        for offset in range(0, len(data), piece_size):
            piece = data[offset : offset + piece_size]
            start += len(piece) / rate
            pieces.append((start, piece))
        return pieces

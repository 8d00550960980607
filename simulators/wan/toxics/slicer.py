"""slicer: cut data into small pieces (`average_size` ± `size_variation` bytes)
sent `delay` µs apart, like a sender that writes in small segments.
"""

from __future__ import annotations

from collections.abc import Mapping

from simulators.wan.toxics.base import BadAttributes, Stage, StageContext, TimedQueueStage, Toxic


class SlicerToxic(Toxic):
    type_name = "slicer"
    defaults = {"average_size": 0, "size_variation": 0, "delay": 0}

    def check(self, attributes: Mapping[str, int | float]) -> None:
        if attributes["size_variation"] > 0 and (
            attributes["size_variation"] >= attributes["average_size"]
        ):
            raise BadAttributes("size_variation must be smaller than average_size")

    def new_stage(self, ctx: StageContext) -> Stage:
        return SlicerStage(self, ctx)


class SlicerStage(TimedQueueStage):
    def sizes(self, total: int) -> list[int]:
        average = int(self.toxic["average_size"])
        variation = int(self.toxic["size_variation"])
        if average <= 0:
            return [total]
        sizes = []
        left = total
        while left > 0:
            size = average
            if variation > 0:
                size += self.ctx.rng.randint(-variation, variation)
            size = max(1, min(size, left))
            sizes.append(size)
            left -= size
        return sizes

    def schedule(self, data: bytes, now: float) -> list[tuple[float, bytes]]:
        gap = self.toxic["delay"] / 1_000_000.0
        when = max(now, self.last_release + gap) if self.queue else now
        pieces = []
        offset = 0
        for size in self.sizes(len(data)):
            pieces.append((when, data[offset : offset + size]))
            offset += size
            when += gap
        return pieces

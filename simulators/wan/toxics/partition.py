"""partition: nothing flows in this direction until the toxic is removed.

What TCP shows an application across a cut link: established connections
stall rather than close; bytes written meanwhile wait (here, in the proxy,
and then in the sender's socket buffers once back-pressure pauses reading)
and arrive intact and in order after the heal, none before. New connections
hang in connect while a partition with toxicity 1 is on the proxy (the proxy
stops accepting; see `Proxy`).

`user_timeout` (ms, 0 = never) resets the connection once data has waited
that long unacknowledged, as Linux's TCP_USER_TIMEOUT would: an idle
connection survives a partition of any length, one with data in flight does
not.
"""

from __future__ import annotations

from typing import Any

from simulators.wan.toxics.base import Stage, StageContext, Toxic


class PartitionToxic(Toxic):
    type_name = "partition"
    defaults = {"user_timeout": 0}
    blocks_connect = True

    def new_stage(self, ctx: StageContext) -> Stage:
        return PartitionStage(self, ctx)


class PartitionStage(Stage):
    def __init__(self, toxic: Toxic, ctx: StageContext) -> None:
        super().__init__(toxic, ctx)
        self.held_chunks: list[bytes] = []
        self.held_bytes = 0
        self.eof = False
        self.user_timer: Any = None

    def on_data(self, data: bytes) -> None:
        self.held_chunks.append(data)
        self.held_bytes += len(data)
        self.ctx.held(len(data))
        self._arm_user_timeout()

    def on_eof(self) -> None:
        self.eof = True
        self._arm_user_timeout()

    def _arm_user_timeout(self) -> None:
        timeout = self.toxic["user_timeout"]
        if timeout > 0 and self.user_timer is None:
            self.user_timer = self.call_later(timeout / 1000.0, self._expire)

    def _expire(self) -> None:
        self.ctx.note(f"partition: user timeout after {self.toxic['user_timeout']} ms")
        self.ctx.close_connection(reset=True)

    def reconfigure(self) -> None:
        self.cancel(self.user_timer)
        self.user_timer = None
        if self.held_chunks or self.eof:
            self._arm_user_timeout()

    def drain(self) -> None:
        self.stop()
        chunks, self.held_chunks = self.held_chunks, []
        if chunks:
            self.ctx.held(-self.held_bytes)
            self.held_bytes = 0
            self.next.on_data(b"".join(chunks))
        if self.eof:
            self.next.on_eof()

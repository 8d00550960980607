"""limit_data: let `bytes` bytes through in this direction, then close.

The count lives as long as the connection, through updates of the toxic
(toxiproxy keeps it as stage state too). Data past the limit is dropped; the
bytes let through are delivered before the connection closes.
"""

from __future__ import annotations

from simulators.wan.toxics.base import Stage, StageContext, Toxic


class LimitDataToxic(Toxic):
    type_name = "limit_data"
    defaults = {"bytes": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return LimitDataStage(self, ctx)


class LimitDataStage(Stage):
    transmitted = 0
    closed = False

    def on_data(self, data: bytes) -> None:
        if self.closed:
            return
        remaining = int(self.toxic["bytes"]) - self.transmitted
        if remaining > 0:
            piece = data[:remaining]
            self.transmitted += len(piece)
            self.next.on_data(piece)
        if self.transmitted >= self.toxic["bytes"]:
            self._close()

    def reconfigure(self) -> None:
        if not self.closed and self.transmitted >= self.toxic["bytes"]:
            self._close()

    def _close(self) -> None:
        self.closed = True
        self.ctx.note(f"limit_data: closed after {self.transmitted} bytes")
        self.ctx.close_after_eof()
        self.next.on_eof()

    def on_eof(self) -> None:
        if not self.closed:
            self.closed = True
            self.next.on_eof()

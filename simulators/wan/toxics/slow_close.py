"""slow_close: the end of the stream (FIN) arrives `delay` ms after it was sent.

Data passes untouched; only the close is held back, as toxiproxy does.
"""

from __future__ import annotations

from typing import Any

from simulators.wan.toxics.base import Stage, StageContext, Toxic


class SlowCloseToxic(Toxic):
    type_name = "slow_close"
    defaults = {"delay": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return SlowCloseStage(self, ctx)


class SlowCloseStage(Stage):
    pending: Any = None

    def on_eof(self) -> None:
        self.pending = self.call_later(self.toxic["delay"] / 1000.0, self._close)

    def _close(self) -> None:
        self.pending = None
        self.next.on_eof()

    def drain(self) -> None:
        was_pending = self.pending is not None
        self.stop()
        self.pending = None
        if was_pending:
            self.next.on_eof()

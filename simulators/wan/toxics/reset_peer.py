"""reset_peer: reset both sides (TCP RST) `timeout` ms after data first flows.

As in toxiproxy the countdown starts with the first chunk in the toxic's
direction, and data is dropped meanwhile; with `timeout` 0 the first chunk
resets the connection at once. Both peers see "connection reset by peer".
"""

from __future__ import annotations

from typing import Any

from simulators.wan.toxics.base import Stage, StageContext, Toxic


class ResetPeerToxic(Toxic):
    type_name = "reset_peer"
    defaults = {"timeout": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return ResetPeerStage(self, ctx)


class ResetPeerStage(Stage):
    countdown: Any = None

    def on_data(self, data: bytes) -> None:
        if self.countdown is None:
            self.countdown = self.call_later(self.toxic["timeout"] / 1000.0, self._reset)

    def _reset(self) -> None:
        self.ctx.note(f"reset_peer: RST after {self.toxic['timeout']} ms")
        self.ctx.close_connection(reset=True)

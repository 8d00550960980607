"""timeout: nothing gets through; the connection closes after `timeout` ms.

With `timeout` 0 the connection stays open and data is dropped until the
toxic is removed (toxiproxy's behaviour: the data is gone, not delayed). The
clock starts when the toxic reaches the connection: when it is added, or
when the connection is made while the toxic exists.
"""

from __future__ import annotations

from simulators.wan.toxics.base import Stage, StageContext, Toxic


class TimeoutToxic(Toxic):
    type_name = "timeout"
    defaults = {"timeout": 0}

    def new_stage(self, ctx: StageContext) -> Stage:
        return TimeoutStage(self, ctx)


class TimeoutStage(Stage):
    def start(self) -> None:
        timeout = self.toxic["timeout"]
        if timeout > 0:
            self.call_later(timeout / 1000.0, self._expire)

    def _expire(self) -> None:
        self.ctx.note(f"timeout: closed after {self.toxic['timeout']} ms")
        self.ctx.close_connection(reset=False)

    def reconfigure(self) -> None:
        self.stop()
        self.start()

    def on_data(self, data: bytes) -> None:
        pass  # dropped

    def on_eof(self) -> None:
        self.ctx.close_connection(reset=False)

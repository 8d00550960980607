"""Toxics: one module per network fault, all behind `base.Toxic`/`base.Stage`.

`TOXIC_TYPES` maps the toxiproxy type name to its class; the API, the
schedule runner and the Python API all create toxics through it.
"""

from __future__ import annotations

from simulators.wan.toxics.bandwidth import BandwidthToxic
from simulators.wan.toxics.base import BadAttributes, Stage, StageContext, Toxic
from simulators.wan.toxics.latency import LatencyToxic
from simulators.wan.toxics.limit_data import LimitDataToxic
from simulators.wan.toxics.loss import LossToxic
from simulators.wan.toxics.partition import PartitionToxic
from simulators.wan.toxics.reset_peer import ResetPeerToxic
from simulators.wan.toxics.slicer import SlicerToxic
from simulators.wan.toxics.slow_close import SlowCloseToxic
from simulators.wan.toxics.timeout import TimeoutToxic

TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (
        LatencyToxic,
        BandwidthToxic,
        SlowCloseToxic,
        TimeoutToxic,
        ResetPeerToxic,
        SlicerToxic,
        LimitDataToxic,
        PartitionToxic,
        LossToxic,
    )
}

__all__ = ["TOXIC_TYPES", "BadAttributes", "Stage", "StageContext", "Toxic"]

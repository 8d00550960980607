"""WAN-fault simulator: toxiproxy-compatible TCP proxies on Twisted.

Named proxies (listen address → upstream) carry toxics that delay, slow,
slice, cut, lose or reset what crosses them, one direction each; the control
API speaks toxiproxy's HTTP JSON (docs/wire/wan-api.md); seeded schedules
flap and cut links on a clock.

Python API, as the lab uses it::

    from simulators.wan import WanSimulator, load_schedule

    sim = WanSimulator(reactor, seed=1)
    proxy = sim.add_proxy("site1", "127.0.0.1:0", "127.0.0.1:8443")
    proxy.listen                       # "127.0.0.1:<picked port>"
    sim.add_toxic("site1", "latency", stream="downstream",
                  attributes={"latency": 300, "jitter": 100})
    sim.partition("site1")             # both ways; connections stall
    sim.heal("site1")                  # held bytes delivered, in order
    sim.remove_toxic("site1", "latency_downstream")
    run = sim.run_schedule(load_schedule("flap.yaml"), time_scale=60)
    run.log                            # what was applied at which schedule time
    sim.events                         # everything, with reactor time and source
    api = sim.resource()               # twisted.web Resource of the control API
    port = sim.listen_api("127.0.0.1:8474")   # or serve(...) below

`serve(reactor, api_address, config)` starts it all listening, as
`outpost sim wan serve` does; `WanService` wraps it for a `MultiService`.
`simulators.wan.netns` holds the optional network-namespace helper (veth
pair, link down, blackhole routes).
"""

from __future__ import annotations

from simulators.wan.errors import ApiError
from simulators.wan.schedule import (
    Cut,
    Degrade,
    Flap,
    Schedule,
    ScheduleError,
    ScheduleRun,
    ToxicWindow,
    load_schedule,
    parse_schedule,
)
from simulators.wan.server import WanService, load_config, serve
from simulators.wan.simulator import WanSimulator

__all__ = [
    "ApiError",
    "Cut",
    "Degrade",
    "Flap",
    "Schedule",
    "ScheduleError",
    "ScheduleRun",
    "ToxicWindow",
    "WanService",
    "WanSimulator",
    "load_config",
    "load_schedule",
    "parse_schedule",
    "serve",
]

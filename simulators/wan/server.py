"""Start everything listening: the control API, proxies and schedules of a config.

The config file is either toxiproxy's own (a JSON list of proxies, as its
`-config` flag takes) or a YAML/TOML/JSON mapping::

    seed: 1                     # seeds toxicity, jitter and loss draws
    proxies:
      - {name: site1, listen: 127.0.0.1:15432, upstream: 127.0.0.1:5432}
    toxics:
      site1:
        - {type: latency, stream: downstream, attributes: {latency: 300}}
    schedule:                   # optional, started at once (see schedule.py)
      seed: 7
      actions: [{flap: {proxy: site1, every: [2s, 20s]}}]
"""

from __future__ import annotations

import json
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from twisted.application.service import Service

from simulators.wan.schedule import Schedule, ScheduleError, parse_schedule
from simulators.wan.simulator import WanSimulator


class ConfigError(ValueError):
    pass


@dataclass
class Config:
    seed: int | str = 0
    proxies: list[dict[str, Any]] = field(default_factory=list)
    toxics: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    schedule: Schedule | None = None


def load_config(path: str | Path) -> Config:
    path = Path(path)
    text = path.read_text()
    try:
        if path.suffix == ".toml":
            doc: Any = tomllib.loads(text)
        elif path.suffix == ".json":
            doc = json.loads(text)
        else:
            doc = yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    if isinstance(doc, list):
        doc = {"proxies": doc}
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a list of proxies or a mapping")
    proxies = doc.get("proxies") or []
    if not isinstance(proxies, list) or not all(isinstance(p, dict) for p in proxies):
        raise ConfigError(f"{path}: proxies: expected a list of mappings")
    toxics = doc.get("toxics") or {}
    if not isinstance(toxics, dict):
        raise ConfigError(f"{path}: toxics: expected a mapping of proxy name to list")
    schedule = None
    if doc.get("schedule") is not None:
        try:
            schedule = parse_schedule(doc["schedule"])
        except ScheduleError as exc:
            raise ConfigError(f"{path}: schedule: {exc}") from None
    seed = doc.get("seed", 0)
    return Config(seed=seed, proxies=proxies, toxics=toxics, schedule=schedule)


def serve(
    reactor: Any,
    api_address: str = "127.0.0.1:8474",
    config: Config | None = None,
    seed: int | str | None = None,
    time_scale: float = 1.0,
    observer: Callable[[dict[str, Any]], None] | None = None,
) -> tuple[WanSimulator, Any]:
    """Create the simulator, apply `config`, listen; returns (simulator, api port)."""
    config = config or Config()
    sim = WanSimulator(reactor, seed=config.seed if seed is None else seed)
    if observer is not None:
        sim.observers.append(observer)
    sim.populate(config.proxies)
    for proxy, specs in config.toxics.items():
        for spec in specs:
            sim.add_toxic(
                proxy,
                spec.get("type", ""),
                spec.get("stream", "downstream"),
                spec.get("name"),
                spec.get("toxicity", 1.0),
                spec.get("attributes"),
            )
    port = sim.listen_api(api_address)
    if config.schedule is not None:
        sim.run_schedule(config.schedule, time_scale=time_scale * config.schedule.time_scale)
    return sim, port


class WanService(Service):
    """The simulator as a Twisted service, for a lab's `MultiService`.

    `simulator` exists from construction, so proxies and toxics can be set
    up before or after the service starts; the API listens while running.
    """

    def __init__(
        self, reactor: Any, api_address: str = "127.0.0.1:8474", config: Config | None = None
    ) -> None:
        self.reactor = reactor
        self.api_address = api_address
        self.config = config
        self.simulator: WanSimulator | None = None
        self.api_port: Any = None

    def startService(self) -> None:
        super().startService()
        self.simulator, self.api_port = serve(self.reactor, self.api_address, self.config)

    def stopService(self) -> Any:
        super().stopService()
        if self.simulator is not None:
            self.simulator.shutdown()
        if self.api_port is not None:
            return self.api_port.stopListening()
        return None

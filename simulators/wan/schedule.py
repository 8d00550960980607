"""Seeded fault schedules: plan first, then apply on a clock.

A `Schedule` is a list of actions ("flap link L every 2-20 s", "cut at
t=30 s for 7 days", "latency 300 ms ± 100 ms with 1 % loss", any toxic for a
window). `Schedule.plan()` turns it into a sorted list of timed events using
only the seed, so the same schedule and seed always give the same plan, and
the event log of a run (schedule time, not wall time) is the same on every
run. Each action draws from its own generator (seed, action index), so
adding an action does not change the others' timing.

`ScheduleRun` applies the plan to a `WanSimulator` on an `IReactorTime`:
`task.Clock` in unit tests (no real sleeping: a week of schedule passes in
one `clock.advance`), the reactor for the lab, with `time_scale` > 1 to run
faster than real time.

File format (YAML, JSON or TOML; durations are seconds or "300ms", "2s",
"10m", "1h", "7d"; ranges are [low, high])::

    name: flaky-uplink
    seed: 42
    duration: 10m
    actions:
      - flap: {proxy: site1, every: [2s, 20s]}          # partition by default
      - cut: {proxy: site1, at: 30s, for: 7d, mode: down}
      - degrade: {proxy: site1, latency: 300ms, jitter: 100ms, loss: 0.01}
      - toxic: {proxy: site1, at: 1m, for: 30s, type: bandwidth,
                stream: downstream, attributes: {rate: 64}}
"""

from __future__ import annotations

import contextlib
import random
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from simulators.wan import errors
from simulators.wan.proxy import STREAMS
from simulators.wan.toxics import TOXIC_TYPES

if TYPE_CHECKING:
    from simulators.wan.simulator import WanSimulator


class ScheduleError(ValueError):
    """A schedule that cannot be run; the message names the offending field."""


_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|min|m|h|d)?\s*$")


def parse_duration(value: Any, where: str) -> float:
    """Seconds from a number (seconds) or a string such as "300ms" or "7d"."""
    if isinstance(value, bool):
        raise ScheduleError(f"{where}: expected a duration, got {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION.match(value)):
        seconds = float(match.group(1)) * _UNITS[match.group(2) or "s"]
    else:
        raise ScheduleError(f"{where}: expected a duration such as 2s or 300ms, got {value!r}")
    if seconds < 0:
        raise ScheduleError(f"{where}: must not be negative")
    return seconds


def parse_range(value: Any, where: str) -> tuple[float, float]:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ScheduleError(f"{where}: a range is [low, high]")
        low, high = (parse_duration(v, where) for v in value)
    else:
        low = high = parse_duration(value, where)
    if low > high:
        raise ScheduleError(f"{where}: low is above high")
    return low, high


@dataclass(frozen=True)
class Planned:
    """One timed event of a plan; `t` is schedule seconds, ms resolution."""

    t: float
    order: int
    action: str  # partition | heal | down | up | add_toxic | remove_toxic
    proxy: str
    details: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"t": self.t, "action": self.action, "proxy": self.proxy, **self.details}


def _t(seconds: float) -> float:
    return round(seconds, 3)


@dataclass(frozen=True)
class Flap:
    """Link goes down and up, each state lasting a random time in `every`."""

    proxy: str
    every: tuple[float, float] = (2.0, 20.0)
    down_for: tuple[float, float] | None = None  # default: same as `every`
    start: float = 0.0
    length: float | None = None  # default: the schedule's duration
    mode: str = "partition"  # partition (stall) | down (refuse, close)
    user_timeout_ms: int = 0

    def plan(self, rng: random.Random, tag: str, duration: float | None) -> list[Planned]:
        end = self.start + self.length if self.length is not None else duration
        if end is None:
            raise ScheduleError(f"{tag}: a flap needs `for` or a schedule duration")
        down_range = self.down_for or self.every
        events = []
        t = self.start
        up = True
        while True:
            low, high = self.every if up else down_range
            t = _t(t + rng.uniform(low, high))
            if t >= end:
                break
            events.append(_cut_event(t, self, tag, going_down=up))
            up = not up
        if not up:
            events.append(_cut_event(_t(end), self, tag, going_down=False))
        return events


@dataclass(frozen=True)
class Cut:
    """Link down at `at` for `length` (None: to the schedule's end, or until stopped)."""

    proxy: str
    at: float = 0.0
    length: float | None = None
    mode: str = "partition"
    user_timeout_ms: int = 0

    def plan(self, rng: random.Random, tag: str, duration: float | None) -> list[Planned]:
        events = [_cut_event(_t(self.at), self, tag, going_down=True)]
        length = _length(self.length, self.at, duration)
        if length is not None:
            events.append(_cut_event(_t(self.at + length), self, tag, going_down=False))
        return events


def _length(length: float | None, at: float, duration: float | None) -> float | None:
    """An action without `for` lasts to the end of the schedule, if it has one."""
    if length is not None:
        return length
    if duration is not None:
        return max(0.0, duration - at)
    return None


def _cut_event(t: float, action: Flap | Cut, tag: str, going_down: bool) -> Planned:
    if action.mode == "down":
        return Planned(t, 0, "down" if going_down else "up", action.proxy, {"by": tag})
    details: dict[str, Any] = {"by": tag}
    if going_down and action.user_timeout_ms:
        details["user_timeout"] = action.user_timeout_ms
    return Planned(t, 0, "partition" if going_down else "heal", action.proxy, details)


@dataclass(frozen=True)
class ToxicWindow:
    """Any toxic, added at `at` and removed after `length` (None: as for Cut)."""

    proxy: str
    type: str
    stream: str = "downstream"
    attributes: Mapping[str, Any] = field(default_factory=dict)
    toxicity: float = 1.0
    at: float = 0.0
    length: float | None = None

    def plan(self, rng: random.Random, tag: str, duration: float | None) -> list[Planned]:
        streams = STREAMS if self.stream == "both" else (self.stream,)
        events = []
        for stream in streams:
            name = f"{tag}_{self.type}_{stream}"
            spec = {
                "toxic": name,
                "type": self.type,
                "stream": stream,
                "toxicity": self.toxicity,
                "attributes": dict(self.attributes),
            }
            events.append(Planned(_t(self.at), 0, "add_toxic", self.proxy, spec))
            length = _length(self.length, self.at, duration)
            if length is not None:
                events.append(
                    Planned(_t(self.at + length), 0, "remove_toxic", self.proxy, {"toxic": name})
                )
        return events


@dataclass(frozen=True)
class Degrade:
    """Latency ± jitter with a loss rate, both ways unless `stream` says."""

    proxy: str
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    loss: float = 0.0
    stream: str = "both"
    at: float = 0.0
    length: float | None = None

    def plan(self, rng: random.Random, tag: str, duration: float | None) -> list[Planned]:
        events: list[Planned] = []
        if self.latency_ms or self.jitter_ms:
            attrs = {"latency": round(self.latency_ms), "jitter": round(self.jitter_ms)}
            events += ToxicWindow(self.proxy, "latency", self.stream, attrs,
                                  at=self.at, length=self.length).plan(rng, tag, duration)
        if self.loss:
            events += ToxicWindow(self.proxy, "loss", self.stream, {"probability": self.loss},
                                  at=self.at, length=self.length).plan(rng, tag, duration)
        return events


Action = Flap | Cut | ToxicWindow | Degrade

_UNDO = {"heal": "partition", "up": "down", "remove_toxic": "add_toxic"}


def _key(event: Planned) -> tuple[str, str]:
    if event.action in ("add_toxic", "remove_toxic"):
        return event.proxy, str(event.details["toxic"])
    return event.proxy, f"link:{event.details.get('by')}"


def _clip(ordered: list[Planned], duration: float) -> list[Planned]:
    """End the schedule at `duration`: nothing starts later, and whatever is
    still applied then is undone then (a 1 h cut at 5 min of a 10 min
    schedule heals at 10 min)."""
    kept: list[Planned] = []
    applied: set[tuple[str, str]] = set()
    for event in ordered:
        key = _key(event)
        if event.action not in _UNDO:
            if event.t <= duration:
                applied.add(key)
                kept.append(event)
        elif key in applied:
            applied.discard(key)
            kept.append(replace(event, t=min(event.t, duration)))
    return kept


@dataclass(frozen=True)
class Schedule:
    actions: Sequence[Action]
    seed: int | str = 0
    name: str = "schedule"
    duration: float | None = None
    time_scale: float = 1.0

    def with_seed(self, seed: Any) -> Schedule:
        if isinstance(seed, bool) or not isinstance(seed, int | str):
            raise ScheduleError("seed: expected an integer or a string")
        return replace(self, seed=seed)

    def proxies(self) -> list[str]:
        return sorted({action.proxy for action in self.actions})

    def plan(self) -> list[Planned]:
        events: list[Planned] = []
        for index, action in enumerate(self.actions):
            tag = f"{type(action).__name__.lower()}{index}"
            rng = random.Random(f"{self.seed}/{index}/{tag}")
            events += action.plan(rng, tag, self.duration)
        # Stable: same time keeps action order, then each action's own order.
        ordered = [e for _, e in sorted(enumerate(events), key=lambda p: (p[1].t, p[0]))]
        if self.duration is not None:
            ordered = _clip(ordered, self.duration)
        return [replace(event, order=i) for i, event in enumerate(ordered)]

    def end(self, plan: Sequence[Planned]) -> float:
        last = plan[-1].t if plan else 0.0
        return max(last, self.duration or 0.0)


# -- parsing ------------------------------------------------------------------
def load_schedule(path: str | Path) -> Schedule:
    """Read a schedule from a YAML, JSON or TOML file."""
    path = Path(path)
    text = path.read_text()
    try:
        doc = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ScheduleError(f"{path}: {exc}") from None
    if isinstance(doc, dict) and "actions" not in doc and isinstance(doc.get("schedule"), dict):
        doc = doc["schedule"]
    return parse_schedule(doc)


def parse_schedule(doc: Any) -> Schedule:
    if not isinstance(doc, dict):
        raise ScheduleError("a schedule is a mapping with `actions`")
    actions_doc = doc.get("actions")
    if not isinstance(actions_doc, list) or not actions_doc:
        raise ScheduleError("actions: expected a non-empty list")
    duration = parse_duration(doc["duration"], "duration") if "duration" in doc else None
    actions = [_parse_action(entry, f"actions[{i}]") for i, entry in enumerate(actions_doc)]
    scale = doc.get("time_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, int | float) or scale <= 0:
        raise ScheduleError("time_scale: expected a positive number")
    seed = doc.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int | str):
        raise ScheduleError("seed: expected an integer or a string")
    return Schedule(actions, seed=seed, name=str(doc.get("name", "schedule")),
                    duration=duration, time_scale=float(scale))


def _parse_action(entry: Any, where: str) -> Action:
    if not isinstance(entry, dict) or len(entry) != 1:
        raise ScheduleError(f"{where}: expected one of flap, cut, degrade, toxic")
    ((kind, spec),) = entry.items()
    where = f"{where}.{kind}"
    if not isinstance(spec, dict):
        raise ScheduleError(f"{where}: expected a mapping")
    proxy = spec.get("proxy")
    if not isinstance(proxy, str) or not proxy:
        raise ScheduleError(f"{where}.proxy: required")

    def duration(key: str, default: float | None = None) -> float | None:
        return parse_duration(spec[key], f"{where}.{key}") if key in spec else default

    def mode() -> str:
        value = spec.get("mode", "partition")
        if value not in ("partition", "down"):
            raise ScheduleError(f"{where}.mode: partition or down")
        return str(value)

    def user_timeout() -> int:
        seconds = duration("user_timeout", 0.0) or 0.0
        return round(seconds * 1000)

    def number(key: str, default: float, high: float | None = None) -> float:
        value = spec.get(key, default)
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ScheduleError(f"{where}.{key}: expected a non-negative number")
        if high is not None and value > high:
            raise ScheduleError(f"{where}.{key}: at most {high}")
        return float(value)

    def stream(default: str) -> str:
        value = spec.get("stream", default)
        if value not in (*STREAMS, "both"):
            raise ScheduleError(f"{where}.stream: upstream, downstream or both")
        return str(value)

    if kind == "flap":
        every = parse_range(spec.get("every", [2, 20]), f"{where}.every")
        if every[1] <= 0:
            raise ScheduleError(f"{where}.every: must be above zero")
        down = parse_range(spec["down"], f"{where}.down") if "down" in spec else None
        if down is not None and down[1] <= 0:
            raise ScheduleError(f"{where}.down: must be above zero")
        return Flap(proxy, every, down, duration("start", 0.0) or 0.0, duration("for"), mode(),
                    user_timeout())
    if kind == "cut":
        return Cut(proxy, duration("at", 0.0) or 0.0, duration("for"), mode(), user_timeout())
    if kind == "degrade":
        return Degrade(
            proxy,
            latency_ms=(duration("latency", 0.0) or 0.0) * 1000,
            jitter_ms=(duration("jitter", 0.0) or 0.0) * 1000,
            loss=number("loss", 0.0, 0.99),
            stream=stream("both"),
            at=duration("at", 0.0) or 0.0,
            length=duration("for"),
        )
    if kind == "toxic":
        toxic_type = spec.get("type")
        if toxic_type not in TOXIC_TYPES:
            raise ScheduleError(f"{where}.type: one of {', '.join(sorted(TOXIC_TYPES))}")
        attributes = spec.get("attributes", {})
        if not isinstance(attributes, dict):
            raise ScheduleError(f"{where}.attributes: expected a mapping")
        try:  # validate now rather than when the event fires
            TOXIC_TYPES[toxic_type]("check", "downstream", 1.0, attributes)
        except ValueError as exc:
            raise ScheduleError(f"{where}.attributes: {exc}") from None
        return ToxicWindow(proxy, str(toxic_type), stream("downstream"), attributes,
                           number("toxicity", 1.0, 1.0), duration("at", 0.0) or 0.0,
                           duration("for"))
    raise ScheduleError(f"{where}: unknown action (flap, cut, degrade, toxic)")


# -- running ------------------------------------------------------------------
class ScheduleRun:
    """A schedule being applied to a simulator, with its own event log."""

    def __init__(
        self,
        run_id: str,
        simulator: WanSimulator,
        schedule: Schedule,
        clock: Any,
        time_scale: float = 1.0,
    ) -> None:
        if time_scale <= 0:
            raise ScheduleError("time_scale must be positive")
        self.id = run_id
        self.sim = simulator
        self.schedule = schedule
        self.clock = clock
        self.time_scale = time_scale
        self.plan = schedule.plan()
        self.end = schedule.end(self.plan)
        self.log: list[dict[str, Any]] = []
        self.status = "pending"
        self._next = 0
        self._started_at = 0.0
        self._timer: Any = None  # IDelayedCall
        # What this run changed and has not undone, to undo on stop().
        self._open_toxics: dict[tuple[str, str], None] = {}
        self._downed: dict[str, None] = {}

    @property
    def source(self) -> str:
        return f"schedule:{self.id}"

    def start(self) -> None:
        self.status = "running"
        self._started_at = self.clock.seconds()
        with self.sim.acting_as(self.source):
            self.sim.note("schedule_started", name=self.schedule.name,
                          seed=self.schedule.seed, events=len(self.plan))
        self._arm()

    def elapsed(self) -> float:
        """Schedule seconds since start."""
        return (self.clock.seconds() - self._started_at) * self.time_scale

    def _arm(self) -> None:
        due = self.plan[self._next].t if self._next < len(self.plan) else self.end
        delay = self._started_at + due / self.time_scale - self.clock.seconds()
        self._timer = self.clock.callLater(max(0.0, delay), self._fire)

    def _fire(self) -> None:
        self._timer = None
        now = self.elapsed() + 1e-6
        while self._next < len(self.plan) and self.plan[self._next].t <= now:
            self._apply(self.plan[self._next])
            self._next += 1
        if self._next >= len(self.plan) and now >= self.end:
            self.status = "finished"
            with self.sim.acting_as(self.source):
                self.sim.note("schedule_finished", name=self.schedule.name)
            return
        self._arm()

    def _apply(self, event: Planned) -> None:
        entry = event.to_json()
        with self.sim.acting_as(self.source):
            try:
                self._do(event)
            except errors.ApiError as exc:
                entry["error"] = exc.message
        self.log.append(entry)

    def _do(self, event: Planned) -> None:
        sim, proxy, details = self.sim, event.proxy, event.details
        if event.action == "partition":
            for stream in STREAMS:
                name = f"{details['by']}_partition_{stream}"
                sim.add_toxic(proxy, "partition", stream, name,
                              attributes={"user_timeout": details.get("user_timeout", 0)})
                self._open_toxics[(proxy, name)] = None
        elif event.action == "heal":
            for stream in STREAMS:
                self._remove(proxy, f"{details['by']}_partition_{stream}")
        elif event.action == "down":
            sim.disable(proxy)
            self._downed[proxy] = None
        elif event.action == "up":
            self._downed.pop(proxy, None)
            sim.enable(proxy)
        elif event.action == "add_toxic":
            sim.add_toxic(proxy, details["type"], details["stream"], details["toxic"],
                          details["toxicity"], details["attributes"])
            self._open_toxics[(proxy, details["toxic"])] = None
        elif event.action == "remove_toxic":
            self._remove(proxy, details["toxic"])

    def _remove(self, proxy: str, name: str) -> None:
        self._open_toxics.pop((proxy, name), None)
        target = self.sim.proxies.get(proxy)
        if target is not None and name in target.toxics:
            self.sim.remove_toxic(proxy, name)

    def stop(self) -> None:
        """Stop (if still running) and undo what the run left applied: heal, enable,
        remove its toxics. Also for a finished run whose actions had no end."""
        if self.status in ("stopped", "pending"):
            return
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        self.status = "stopped"
        with self.sim.acting_as(self.source):
            for proxy, name in list(self._open_toxics):
                with contextlib.suppress(errors.ApiError):
                    self._remove(proxy, name)
            for proxy in list(self._downed):
                if proxy in self.sim.proxies:
                    self.sim.enable(proxy)
            self._downed.clear()
            self.sim.note("schedule_stopped", name=self.schedule.name,
                          at=round(self.elapsed(), 3))

    def to_json(self, events: bool = True) -> dict[str, Any]:
        body: dict[str, Any] = {
            "id": self.id,
            "name": self.schedule.name,
            "seed": self.schedule.seed,
            "status": self.status,
            "time_scale": self.time_scale,
            "planned": len(self.plan),
            "applied": len(self.log),
            "end": self.end,
        }
        if events:
            body["events"] = list(self.log)
        return body

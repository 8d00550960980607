"""The proxy collection and everything done to it, with an event log.

`WanSimulator` is the one object the control API, the schedule runner, the
CLI server and the lab share. Every change goes through it and is recorded
in `events` (what, to which proxy, when by the reactor's clock, and who:
"api", "python" or "schedule:<id>"), so a test can read back exactly what was
applied when.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from simulators.wan import errors
from simulators.wan.proxy import STREAMS, Proxy
from simulators.wan.toxics import TOXIC_TYPES, BadAttributes, Toxic

if TYPE_CHECKING:
    from simulators.wan.schedule import Schedule, ScheduleRun

VERSION = "2.12.0-outpost"

#: Events kept in memory; older ones are dropped (their seq numbers stay used).
EVENT_LOG_SIZE = 100_000


class WanSimulator:
    """Named TCP proxies with toxics, driven from Python, HTTP or a schedule."""

    def __init__(self, reactor: Any = None, seed: int | str = 0) -> None:
        if reactor is None:
            from twisted.internet import reactor as default_reactor

            reactor = default_reactor
        self.reactor = reactor
        self.seed = seed
        self.proxies: dict[str, Proxy] = {}
        self.events: collections.deque[dict[str, Any]] = collections.deque(
            maxlen=EVENT_LOG_SIZE
        )
        self._seq = itertools.count(1)
        self._source = "python"
        self.schedules: dict[str, ScheduleRun] = {}
        self._schedule_ids = itertools.count(1)
        #: Called with each event as it is recorded (the CLI server prints them).
        self.observers: list[Callable[[dict[str, Any]], None]] = []

    # -- event log --------------------------------------------------------
    @contextlib.contextmanager
    def acting_as(self, source: str) -> Iterator[None]:
        previous, self._source = self._source, source
        try:
            yield
        finally:
            self._source = previous

    def note(self, action: str, proxy: str | None = None, **details: Any) -> None:
        event: dict[str, Any] = {
            "seq": next(self._seq),
            "time": round(self.reactor.seconds(), 6),
            "source": self._source,
            "action": action,
        }
        if proxy is not None:
            event["proxy"] = proxy
        event.update(details)
        self.events.append(event)
        for observer in self.observers:
            observer(event)

    def events_since(self, seq: int = 0) -> list[dict[str, Any]]:
        return [event for event in self.events if event["seq"] > seq]

    # -- proxies ----------------------------------------------------------
    def get_proxy(self, name: str) -> Proxy:
        try:
            return self.proxies[name]
        except KeyError:
            raise errors.PROXY_NOT_FOUND from None

    def add_proxy(self, name: str, listen: str, upstream: str, enabled: bool = True) -> Proxy:
        """Create a proxy; `listen` port 0 picks a free port (see `.listen`)."""
        if not name:
            raise errors.MISSING_FIELD.joined("name")
        if not upstream:
            raise errors.MISSING_FIELD.joined("upstream")
        if name in self.proxies:
            raise errors.PROXY_ALREADY_EXISTS
        _check_address(upstream, "upstream")
        proxy = Proxy(name, listen or "127.0.0.1:0", upstream, self.reactor, self.seed, self.note)
        if enabled:
            proxy.start()
        self.proxies[name] = proxy
        self.note("proxy_created", proxy=name, listen=proxy.listen, upstream=upstream,
                  enabled=proxy.enabled)
        return proxy

    def update_proxy(
        self,
        name: str,
        listen: str | None = None,
        upstream: str | None = None,
        enabled: bool | None = None,
    ) -> Proxy:
        """toxiproxy's update: a new address restarts the proxy, dropping connections."""
        proxy = self.get_proxy(name)
        new_listen = proxy.listen if listen is None else listen
        new_upstream = proxy.upstream if upstream is None else upstream
        new_enabled = proxy.enabled if enabled is None else enabled
        if new_upstream != proxy.upstream:
            _check_address(new_upstream, "upstream")
        if new_listen != proxy.listen or new_upstream != proxy.upstream:
            was_enabled = proxy.enabled
            old_listen = proxy.listen
            proxy.stop()
            proxy.listen, proxy.upstream = new_listen, new_upstream
            if was_enabled and new_enabled:
                try:
                    proxy.start()
                except errors.ApiError:
                    proxy.listen = old_listen
                    raise
        if new_enabled and not proxy.enabled:
            proxy.start()
        elif not new_enabled and proxy.enabled:
            proxy.stop()
        self.note("proxy_updated", proxy=name, listen=proxy.listen, upstream=proxy.upstream,
                  enabled=proxy.enabled)
        return proxy

    def remove_proxy(self, name: str) -> None:
        proxy = self.get_proxy(name)
        proxy.stop()
        del self.proxies[name]
        self.note("proxy_deleted", proxy=name)

    def disable(self, name: str) -> None:
        """toxiproxy's "down": stop listening and close every connection."""
        self.update_proxy(name, enabled=False)

    def enable(self, name: str) -> None:
        self.update_proxy(name, enabled=True)

    def populate(self, entries: Sequence[Mapping[str, Any]]) -> list[Proxy]:
        """toxiproxy's /populate: create, or replace those whose addresses differ."""
        checked = []
        for index, entry in enumerate(entries, start=1):
            if not entry.get("name"):
                raise errors.MISSING_FIELD.joined(f"name at proxy {index}")
            if not entry.get("upstream"):
                raise errors.MISSING_FIELD.joined(f"upstream at proxy {index}")
            checked.append(entry)
        result = []
        for entry in checked:
            name = str(entry["name"])
            listen = str(entry.get("listen") or "127.0.0.1:0")
            enabled = bool(entry.get("enabled", True))
            existing = self.proxies.get(name)
            if existing is not None:
                if existing.listen == listen and existing.upstream == entry["upstream"]:
                    result.append(self.update_proxy(name, enabled=enabled))
                    continue
                self.remove_proxy(name)
            result.append(self.add_proxy(name, listen, str(entry["upstream"]), enabled))
        return result

    # -- toxics -----------------------------------------------------------
    def add_toxic(
        self,
        proxy: str,
        type: str,
        stream: str = "downstream",
        name: str | None = None,
        toxicity: float = 1.0,
        attributes: Mapping[str, Any] | None = None,
    ) -> Toxic:
        target = self.get_proxy(proxy)
        if stream not in STREAMS:
            raise errors.INVALID_STREAM
        name = name or f"{type}_{stream}"
        cls = TOXIC_TYPES.get(type)
        if cls is None:
            raise errors.INVALID_TOXIC_TYPE
        if name in target.toxics:
            raise errors.TOXIC_ALREADY_EXISTS
        try:
            toxic = cls(name, stream, _toxicity(toxicity), attributes or {})
        except BadAttributes as exc:
            raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None
        target.add_toxic(toxic)
        self.note("toxic_added", proxy=proxy, toxic=toxic.to_json())
        return toxic

    def update_toxic(
        self,
        proxy: str,
        name: str,
        attributes: Mapping[str, Any] | None = None,
        toxicity: float | None = None,
    ) -> Toxic:
        target = self.get_proxy(proxy)
        toxic = target.toxics.get(name)
        if toxic is None:
            raise errors.TOXIC_NOT_FOUND
        new_toxicity = toxic.toxicity if toxicity is None else _toxicity(toxicity)
        try:
            toxic.update_attributes(attributes or {})
        except BadAttributes as exc:
            raise errors.BAD_REQUEST_BODY.joined(str(exc)) from None
        changed = new_toxicity != toxic.toxicity
        toxic.toxicity = new_toxicity
        target.update_toxic(toxic, changed)
        self.note("toxic_updated", proxy=proxy, toxic=toxic.to_json())
        return toxic

    def remove_toxic(self, proxy: str, name: str) -> None:
        target = self.get_proxy(proxy)
        if name not in target.toxics:
            raise errors.TOXIC_NOT_FOUND
        target.remove_toxic(name)
        self.note("toxic_removed", proxy=proxy, toxic=name)

    def reset(self) -> None:
        """toxiproxy's /reset: enable every proxy, remove every toxic."""
        for proxy in self.proxies.values():
            for name in list(proxy.toxics):
                proxy.remove_toxic(name)
            proxy.start()
        self.note("reset")

    # -- conveniences for the lab ----------------------------------------
    def partition(self, proxy: str, user_timeout_ms: int = 0) -> None:
        """Cut the link both ways: connections stall, new ones hang in connect."""
        for stream in STREAMS:
            name = f"partition_{stream}"
            if name not in self.get_proxy(proxy).toxics:
                self.add_toxic(proxy, "partition", stream, name,
                               attributes={"user_timeout": user_timeout_ms})

    def heal(self, proxy: str) -> None:
        """Undo `partition`: held bytes are delivered, in order."""
        target = self.get_proxy(proxy)
        for stream in STREAMS:
            if f"partition_{stream}" in target.toxics:
                self.remove_toxic(proxy, f"partition_{stream}")

    def is_partitioned(self, proxy: str) -> bool:
        return any(t.type_name == "partition" for t in self.get_proxy(proxy).toxics.values())

    # -- schedules --------------------------------------------------------
    def run_schedule(
        self, schedule: Schedule, time_scale: float = 1.0, clock: Any = None
    ) -> ScheduleRun:
        """Start `schedule` now; `time_scale` 10 runs it ten times faster."""
        from simulators.wan.schedule import ScheduleRun

        run_id = str(next(self._schedule_ids))
        run = ScheduleRun(run_id, self, schedule, clock or self.reactor, time_scale)
        self.schedules[run_id] = run
        run.start()
        return run

    def get_schedule(self, run_id: str) -> ScheduleRun:
        try:
            return self.schedules[run_id]
        except KeyError:
            raise errors.SCHEDULE_NOT_FOUND from None

    # -- serving ----------------------------------------------------------
    def resource(self) -> Any:
        """The control API as a twisted.web Resource (mount it anywhere)."""
        from simulators.wan.api import WanApi

        return WanApi(self)

    def listen_api(self, address: str = "127.0.0.1:8474") -> Any:
        """Serve the control API on `address`; returns the listening port."""
        from simulators.wan.api import listen_api

        return listen_api(self, address)

    def shutdown(self) -> None:
        """Stop schedules and proxies (connections are closed)."""
        for run in self.schedules.values():
            run.stop()
        for proxy in self.proxies.values():
            proxy.stop()


def _toxicity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise errors.BAD_REQUEST_BODY.joined("toxicity must be a number")
    return float(value)


def _check_address(address: str, field: str) -> None:
    from simulators.wan.proxy import split_address

    try:
        split_address(address)
    except ValueError as exc:
        raise errors.BAD_REQUEST_BODY.joined(f"{field}: {exc}") from None

"""The IPP view of a device's health: Get-Printer-Attributes on an interval, fed to the DeviceMonitor.

Beside the SNMP poller, devices that speak IPP are asked for printer-state,
printer-state-reasons and marker-levels with the site's own IppClient (the
asyncio reactor's Twisted web client: no thread, no second event loop). The
answer becomes a `DeviceView("ipp", ...)`; the monitor merges it with SNMP's.
A device that does not answer backs off like the SNMP poller does.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from twisted.internet import defer

from appliance.core.devices import DeviceView

from . import codec
from .client import IppClient, IppClientError
from .constants import GroupTag, Operation, ValueTag

log = logging.getLogger(__name__)

PRINTER_IDLE, PRINTER_PROCESSING, PRINTER_STOPPED = 3, 4, 5

#: printer-state-reasons keyword (without -error/-warning/-report) -> our reason
REASONS: dict[str, str] = {
    "media-jam": "jammed",
    "door-open": "door_open",
    "cover-open": "door_open",
    "interlock-open": "door_open",
    "toner-low": "low_toner",
    "marker-supply-low": "low_toner",
    "toner-empty": "no_toner",
    "marker-supply-empty": "no_toner",
    "media-empty": "no_paper",
    "media-needed": "no_paper",
    "media-low": "low_paper",
    "offline": "offline",
    "shutdown": "offline",
    "paused": "paused",
}


def reasons_of(keywords: list[str]) -> list[str]:
    out: list[str] = []
    for keyword in keywords:
        if keyword.endswith("-report"):
            continue  # informational only (RFC 8011 5.4.12)
        base = keyword.removesuffix("-error").removesuffix("-warning")
        reason = REASONS.get(base)
        if reason is not None and reason not in out:
            out.append(reason)
    return out


def view_of(answer: codec.Message, at: float) -> DeviceView:
    """The view a Get-Printer-Attributes answer gives."""
    state = answer.get(GroupTag.PRINTER, "printer-state")
    group = answer.group(GroupTag.PRINTER)
    keywords: list[str] = []
    if group is not None and group.get("printer-state-reasons") is not None:
        keywords = [str(v) for v in group.attributes["printer-state-reasons"].values]
    reasons = reasons_of(keywords)
    if group is not None and group.get("marker-levels") is not None:
        levels = [v for v in group.attributes["marker-levels"].values if isinstance(v, int)]
        lows = group.get("marker-low-levels")
        low = [v for v in lows.values if isinstance(v, int)] if lows is not None else []
        for i, level in enumerate(levels):
            if level == 0 and "no_toner" not in reasons:
                reasons.append("no_toner")
            if 0 <= level <= (low[i] if i < len(low) else 10) and "low_toner" not in reasons:
                reasons.append("low_toner")
    for name in ("jammed", "door_open", "offline"):
        if name in reasons:
            return DeviceView("ipp", name, tuple(reasons), True, None, "", at)
    if state == PRINTER_STOPPED:
        return DeviceView("ipp", "offline", (*reasons, "stopped"), True, None, "", at)
    if "low_toner" in reasons or "no_toner" in reasons:
        return DeviceView("ipp", "toner_low", tuple(reasons), True, None, "", at)
    named = {PRINTER_IDLE: "idle", PRINTER_PROCESSING: "printing"}.get(
        state if isinstance(state, int) else 0, "unknown")
    return DeviceView("ipp", named, tuple(reasons), True, None, "", at)


@dataclass
class _Track:
    name: str
    uri: str
    polls: int = 0
    failures: int = 0
    call: Any = None
    view: DeviceView | None = None


class IppWatcher:
    """Get-Printer-Attributes of every (name, ipp uri) every `interval` seconds → `on_view`."""

    def __init__(self, devices: list[tuple[str, str]], *, client: IppClient, reactor: Any,
                 on_view: Callable[[str, DeviceView], Any], interval: float = 10.0,
                 timeout: float = 5.0, max_backoff: float | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.client = client
        self.reactor = reactor
        self.on_view = on_view
        self.interval = interval
        self.timeout = timeout
        self.max_backoff = max_backoff if max_backoff is not None else max(
            interval, min(interval * 8, 300.0))
        self.clock = clock
        self.tracks = {name: _Track(name, uri) for name, uri in devices}
        self.running = False

    def start(self) -> None:
        self.running = True
        count = max(1, len(self.tracks))
        for i, track in enumerate(self.tracks.values()):
            track.call = self.reactor.callLater(self.interval * (i + 0.5) / count, self._poll,
                                                track)

    def stop(self) -> None:
        self.running = False
        for track in self.tracks.values():
            if track.call is not None and track.call.active():
                track.call.cancel()

    def _poll(self, track: _Track) -> None:
        track.call = None
        if not self.running:
            return
        d = defer.ensureDeferred(self.poll_once(track.name))

        def again(_: Any) -> None:
            if self.running:
                delay = self.interval if not track.failures else min(
                    self.interval * 2 ** (track.failures - 1), self.max_backoff)
                track.call = self.reactor.callLater(delay, self._poll, track)

        d.addErrback(lambda f: log.error("IPP watch of %s: %s", track.name, f.getTraceback()))
        d.addBoth(again)

    async def poll_once(self, name: str) -> DeviceView:
        track = self.tracks[name]
        message = codec.request(
            Operation.GET_PRINTER_ATTRIBUTES, self.client.next_request_id(), track.uri,
            user="outpost",
            extra=[codec.attr("requested-attributes", ValueTag.KEYWORD, "printer-state",
                              "printer-state-reasons", "marker-levels", "marker-low-levels")],
        )
        sent = defer.ensureDeferred(self.client.send(track.uri, message))
        sent.addTimeout(self.timeout, self.reactor)
        try:
            answer = await sent
        except (IppClientError, defer.TimeoutError, defer.CancelledError) as exc:
            track.failures += 1
            view = DeviceView("ipp", "offline", ("no_response",), False, None,
                              str(exc) or "no answer in time", self.clock())
        else:
            track.failures = 0
            if answer.code >= 0x0400:
                view = DeviceView("ipp", "unknown", ("ipp_error",), True, None,
                                  f"Get-Printer-Attributes: 0x{answer.code:04x}", self.clock())
            else:
                view = view_of(answer, self.clock())
        track.polls += 1
        track.view = view
        self.on_view(name, view)
        return view

"""The site's SNMP poller: every device's state and page counter, on the reactor, never blocking it.

pysnmp 7 is asyncio-only; the site runs Twisted's asyncio reactor, so each
request is a coroutine wrapped with `Deferred.fromFuture(asyncio.ensure_future(...))`.
Scheduling (intervals, back-off, time-outs) is Twisted's (`reactor.callLater`),
so a test can drive it with `task.Clock` and a fake `fetch`.

One poll is one GETBULK (SNMPv2c or SNMPv3 USM): non-repeaters for sysDescr,
sysUpTime, hrDeviceStatus, hrPrinterStatus, hrPrinterDetectedErrorState and the
first prtMarkerLifeCount (GETNEXT of the column: an instance that is not there
shows up as another OID and is read as missing), then up to `MAX_ROWS` rows of
the prtMarkerLifeCount column. Only when the device reports trouble (an error
bit, hrDeviceStatus warning or down) does a second GETBULK read the prtAlert
table, and every `SUPPLIES_EVERY`th poll another reads the prtMarkerSupplies
columns (levels change slowly). Decoding is most of a poll's cost (pyasn1 is
slow), so a poll asks for little. Every device has
its own loop: a silent device backs off (interval x 2^k, capped) without
delaying the others; a malformed answer or wrong credentials mark that device
`unknown` and nothing else.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.internet import defer

from appliance.core.devices import DeviceView

log = logging.getLogger(__name__)

Oid = tuple[int, ...]

SYS_DESCR = (1, 3, 6, 1, 2, 1, 1, 1, 0)
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
HR_DEVICE_STATUS = (1, 3, 6, 1, 2, 1, 25, 3, 2, 1, 5, 1)
HR_PRINTER_STATUS = (1, 3, 6, 1, 2, 1, 25, 3, 5, 1, 1, 1)
HR_PRINTER_ERROR_STATE = (1, 3, 6, 1, 2, 1, 25, 3, 5, 1, 2, 1)
PRT_MARKER_LIFE_COUNT = (1, 3, 6, 1, 2, 1, 43, 10, 2, 1, 4)        # .hrDeviceIndex.marker
PRT_SUPPLIES_DESCRIPTION = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1, 6)
PRT_SUPPLIES_MAX = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1, 8)
PRT_SUPPLIES_LEVEL = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1, 9)
PRT_ALERT_SEVERITY = (1, 3, 6, 1, 2, 1, 43, 18, 1, 1, 2)
PRT_ALERT_CODE = (1, 3, 6, 1, 2, 1, 43, 18, 1, 1, 7)
PRT_ALERT_DESCRIPTION = (1, 3, 6, 1, 2, 1, 43, 18, 1, 1, 8)

#: The non-repeaters: (what to ask GETNEXT for, the instance expected back).
SCALARS: list[tuple[Oid, Oid]] = [
    (SYS_DESCR[:-1], SYS_DESCR),
    (SYS_UPTIME[:-1], SYS_UPTIME),
    (HR_DEVICE_STATUS[:-1], HR_DEVICE_STATUS),
    (HR_PRINTER_STATUS[:-1], HR_PRINTER_STATUS),
    (HR_PRINTER_ERROR_STATE[:-1], HR_PRINTER_ERROR_STATE),
    (PRT_MARKER_LIFE_COUNT, (*PRT_MARKER_LIFE_COUNT, 1, 1)),
]
STATE_COLUMNS: list[Oid] = [PRT_MARKER_LIFE_COUNT]
ALERT_COLUMNS: list[Oid] = [PRT_ALERT_SEVERITY, PRT_ALERT_CODE, PRT_ALERT_DESCRIPTION]
SUPPLY_COLUMNS: list[Oid] = [PRT_SUPPLIES_DESCRIPTION, PRT_SUPPLIES_MAX, PRT_SUPPLIES_LEVEL]
COLUMNS: list[Oid] = STATE_COLUMNS + ALERT_COLUMNS + SUPPLY_COLUMNS
MAX_ROWS = 4
SUPPLY_ROWS = 8
SUPPLIES_EVERY = 6

#: hrPrinterDetectedErrorState: (octet, mask) -> reason. Bit 0 is the first octet's high bit.
ERROR_BITS: list[tuple[int, int, str]] = [
    (0, 0x80, "low_paper"), (0, 0x40, "no_paper"), (0, 0x20, "low_toner"),
    (0, 0x10, "no_toner"), (0, 0x08, "door_open"), (0, 0x04, "jammed"),
    (0, 0x02, "offline"), (0, 0x01, "service_requested"),
    (1, 0x80, "input_tray_missing"), (1, 0x40, "output_tray_missing"),
    (1, 0x20, "marker_supply_missing"), (1, 0x10, "output_near_full"),
    (1, 0x08, "output_full"), (1, 0x04, "input_tray_empty"),
    (1, 0x02, "overdue_prevent_maint"),
]
HR_DEVICE_DOWN = 5
HR_PRINTER_PRINTING, HR_PRINTER_WARMUP = 4, 5


class MalformedResponse(ValueError):
    """The device answered something we cannot read as the MIB says."""


@dataclass(frozen=True)
class V3Credentials:
    user: str
    auth_key: str
    priv_key: str
    auth_protocol: str = "SHA"
    priv_protocol: str = "AES"


@dataclass(frozen=True)
class SnmpTarget:
    name: str
    host: str
    port: int = 161
    community: str | None = "public"
    v3: V3Credentials | None = None


@dataclass(frozen=True)
class SnmpReading:
    """What one poll of one device found."""

    state: str                          # idle, printing, offline, jammed, toner_low, door_open, unknown
    reasons: tuple[str, ...] = ()
    reachable: bool = True
    page_count: int | None = None       # prtMarkerLifeCount.1.1
    markers: tuple[int, ...] = ()       # prtMarkerLifeCount.1.*
    supplies: tuple[tuple[str, int, int], ...] = ()   # (description, level, max capacity)
    alerts: tuple[tuple[int, int, str], ...] = ()     # (severity, code, description)
    sys_descr: str | None = None
    sys_uptime: int | None = None       # hundredths of a second
    error: str = ""

    def view(self, at: float) -> DeviceView:
        return DeviceView("snmp", self.state, self.reasons, self.reachable, self.page_count,
                          self.error or (self.sys_descr or ""), at)


class PollFailed(Exception):
    """A poll that got no usable answer; `reason` is 'no_response', 'snmp_auth_failed', ..."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ---------------------------------------------------------------- interpretation (pure)


def _int(value: Any, what: str) -> int:
    try:
        if hasattr(value, "isValue") and not value.isValue:
            raise MalformedResponse(f"{what}: no value")
        tag = type(value).__name__
        if tag in ("OctetString", "ObjectIdentifier", "ObjectName", "IpAddress", "Opaque",
                   "DisplayString", "bytes", "str"):
            raise MalformedResponse(f"{what}: expected an integer, got {tag}")
        return int(value)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, MalformedResponse):
            raise
        raise MalformedResponse(f"{what}: expected an integer, got {value!r}") from None


def _octets(value: Any, what: str) -> bytes:
    if isinstance(value, bytes):
        return value
    as_octets = getattr(value, "asOctets", None)
    if as_octets is None or type(value).__name__ not in ("OctetString", "DisplayString",
                                                         "Opaque"):
        raise MalformedResponse(f"{what}: expected an OCTET STRING, got {type(value).__name__}")
    octets: bytes = as_octets()
    return octets


def _text(value: Any, what: str) -> str:
    return _octets(value, what).decode("utf-8", "replace")


def interpret(values: dict[Oid, Any]) -> SnmpReading:
    """A reading from the values one poll returned (missing OIDs are simply absent).

    Raises `MalformedResponse` when a value has the wrong type.
    """
    sys_descr = _text(values[SYS_DESCR], "sysDescr") if SYS_DESCR in values else None
    uptime = _int(values[SYS_UPTIME], "sysUpTime") if SYS_UPTIME in values else None
    device_status = (_int(values[HR_DEVICE_STATUS], "hrDeviceStatus")
                     if HR_DEVICE_STATUS in values else None)
    printer_status = (_int(values[HR_PRINTER_STATUS], "hrPrinterStatus")
                      if HR_PRINTER_STATUS in values else None)
    reasons: list[str] = []
    if HR_PRINTER_ERROR_STATE in values:
        octets = _octets(values[HR_PRINTER_ERROR_STATE], "hrPrinterDetectedErrorState")
        for index, mask, reason in ERROR_BITS:
            if index < len(octets) and octets[index] & mask:
                reasons.append(reason)
    markers = tuple(_int(v, "prtMarkerLifeCount") for oid, v in sorted(values.items())
                    if oid[:-2] == PRT_MARKER_LIFE_COUNT and oid[-2] == 1)
    page_count = markers[0] if markers else None
    supplies = []
    for oid, value in sorted(values.items()):
        if oid[:-2] == PRT_SUPPLIES_LEVEL:
            row = oid[-2:]
            description = values.get((*PRT_SUPPLIES_DESCRIPTION, *row))
            maximum = values.get((*PRT_SUPPLIES_MAX, *row))
            supplies.append((_text(description, "prtMarkerSuppliesDescription")
                             if description is not None else f"supply {row[-1]}",
                             _int(value, "prtMarkerSuppliesLevel"),
                             _int(maximum, "prtMarkerSuppliesMaxCapacity")
                             if maximum is not None else -1))
    alerts = []
    for oid, value in sorted(values.items()):
        if oid[:-2] == PRT_ALERT_DESCRIPTION:
            row = oid[-2:]
            severity = values.get((*PRT_ALERT_SEVERITY, *row))
            code = values.get((*PRT_ALERT_CODE, *row))
            alerts.append((_int(severity, "prtAlertSeverityLevel") if severity is not None else 1,
                           _int(code, "prtAlertCode") if code is not None else 2,
                           _text(value, "prtAlertDescription")))
    state = derive_state(device_status, printer_status, reasons)
    if state == "offline" and "offline" not in reasons:
        reasons.append("offline")
    return SnmpReading(state=state, reasons=tuple(reasons), page_count=page_count,
                       markers=markers, supplies=tuple(supplies), alerts=tuple(alerts),
                       sys_descr=sys_descr, sys_uptime=uptime)


def derive_state(device_status: int | None, printer_status: int | None,
                 reasons: list[str]) -> str:
    """The site's state from hrDeviceStatus, hrPrinterStatus and the error bits (RFC 3805 2.2.13.2)."""
    for reason in ("jammed", "door_open", "offline"):
        if reason in reasons:
            return reason
    if "no_toner" in reasons or "low_toner" in reasons:
        return "toner_low"
    if device_status == HR_DEVICE_DOWN and not reasons:
        return "offline"
    if printer_status is None and device_status is None:
        return "unknown"
    if printer_status == HR_PRINTER_PRINTING:
        return "printing"
    if printer_status in (3, HR_PRINTER_WARMUP) or (printer_status is None
                                                    and device_status in (2, 3)):
        return "idle"
    return "unknown"


# ---------------------------------------------------------------- pysnmp


def _failure_reason(indication: Any) -> str:
    from pysnmp.proto import errind

    if isinstance(indication, errind.RequestTimedOut):
        return "no_response"
    if isinstance(indication, errind.WrongDigest | errind.UnknownUserName
                  | errind.DecryptionError | errind.AuthenticationFailure
                  | errind.AuthenticationError | errind.UnknownSecurityName
                  | errind.UnsupportedSecurityLevel | errind.NotInTimeWindow
                  | errind.ReportPduReceived):
        return "snmp_auth_failed"
    return "snmp_error"


def _guarded_target_class() -> Any:
    """pysnmp's UdpTransportTarget whose transport drops (and counts) what pysnmp trips over.

    Some malformed datagrams make pyasn1 raise TypeError, which pysnmp does not
    catch: it would surface as an asyncio "Exception in callback" per datagram.
    """
    from pysnmp.carrier.asyncio.dgram import udp
    from pysnmp.hlapi.v3arch.asyncio import UdpTransportTarget

    class GuardedUdpTransport(udp.UdpAsyncioTransport):
        dropped = 0

        def datagram_received(self, datagram: bytes, transportAddress: Any) -> None:
            callback = self._callback_function
            if callback is None:
                return

            def deliver() -> None:
                try:
                    callback(self, transportAddress, datagram)
                except Exception:
                    self.dropped += 1
                    log.debug("dropped an SNMP datagram from %s that pysnmp could not handle",
                              transportAddress)

            self.loop.call_soon(deliver)

    class GuardedUdpTransportTarget(UdpTransportTarget):
        PROTO_TRANSPORT = GuardedUdpTransport

    return GuardedUdpTransportTarget


#: pysnmp's own modules an engine loads at its first request (v2c and USM).
PRELOADED_MIBS = ("PYSNMP-MIB", "PYSNMP-SOURCE-MIB", "SNMPv2-TM", "__SNMPv2-MIB",
                  "PYSNMP-USM-MIB", "__PYSNMP-USM-MIB")


class PysnmpFetcher:
    """Does the SNMP requests of a poller.

    One pysnmp engine serves every SNMPv2c device and every SNMPv3 device with the
    same credentials; pysnmp keys USM users by name, so the same user name with
    other keys gets an engine of its own.
    """

    def __init__(self, *, timeout: float = 2.0, retries: int = 1) -> None:
        self.timeout = timeout
        self.retries = retries
        self._engines: dict[V3Credentials | None, Any] = {}
        self._target_class: Any = None
        self._targets: dict[tuple[V3Credentials | None, str, int, float, int], Any] = {}

    def engine(self, target: SnmpTarget) -> Any:
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

        engine = self._engines.get(target.v3)
        if engine is None:
            engine = self._engines[target.v3] = SnmpEngine()
            # MIB modules pysnmp would otherwise load (compile) at the first request.
            try:
                engine.get_mib_builder().load_modules(*PRELOADED_MIBS)
            except Exception:
                log.debug("preloading pysnmp MIB modules failed", exc_info=True)
        return engine

    def _auth(self, target: SnmpTarget) -> Any:
        from pysnmp.hlapi.v3arch import asyncio as hl

        if target.v3 is not None:
            v3 = target.v3
            auth = {"SHA": hl.usmHMACSHAAuthProtocol, "MD5": hl.usmHMACMD5AuthProtocol,
                    "SHA-256": hl.usmHMAC192SHA256AuthProtocol,
                    "SHA-512": hl.usmHMAC384SHA512AuthProtocol}[v3.auth_protocol.upper()]
            priv = {"AES": hl.usmAesCfb128Protocol, "AES128": hl.usmAesCfb128Protocol,
                    "DES": hl.usmDESPrivProtocol}[v3.priv_protocol.upper()]
            return hl.UsmUserData(v3.user, v3.auth_key, v3.priv_key, authProtocol=auth,
                                  privProtocol=priv)
        return hl.CommunityData(target.community or "public", mpModel=1)

    async def _transport(self, target: SnmpTarget, timeout: float, retries: int) -> Any:
        if self._target_class is None:
            self._target_class = _guarded_target_class()
        key = (target.v3, target.host, target.port, timeout, retries)
        transport = self._targets.get(key)
        if transport is None:
            transport = await self._target_class.create((target.host, target.port),
                                                        timeout=timeout, retries=retries)
            self._targets[key] = transport
        return transport

    async def _bulk(self, target: SnmpTarget, non_repeaters: list[Oid], columns: list[Oid],
                    rows: int, timeout: float, retries: int) -> list[tuple[Oid, Any]]:
        """One GETBULK. What pysnmp's hlapi `bulk_cmd` does, less its MIB look-ups of every
        OID (numeric OIDs need none, and they cost more than the request itself)."""
        from pysnmp.entity.rfc3413 import cmdgen
        from pysnmp.hlapi.v3arch.asyncio.cmdgen import LCD
        from pysnmp.proto import rfc1902

        transport = await self._transport(target, timeout, retries)
        engine = self.engine(target)
        addr_name, _ = LCD.configure(engine, self._auth(target), transport, b"")
        future: asyncio.Future[tuple[Any, Any, Any, Any]] = (
            asyncio.get_running_loop().create_future())

        def done(_engine: Any, _handle: Any, indication: Any, status: Any, index: Any,
                 var_binds: Any, _ctx: Any) -> None:
            if not future.done():
                future.set_result((indication, status, index, var_binds))

        var_binds = [(rfc1902.ObjectName(oid), rfc1902.Null("")) for oid in non_repeaters + columns]
        cmdgen.BulkCommandGenerator().send_varbinds(
            engine, addr_name, None, b"", len(non_repeaters), rows, var_binds, done, None)
        indication, status, index, answer = await future
        if indication:
            raise PollFailed(_failure_reason(indication), str(indication))
        if status:
            raise PollFailed("snmp_error", f"{status.prettyPrint()} at {index}")
        return [(tuple(name), value) for name, value in answer]

    async def poll(self, target: SnmpTarget, supplies: bool = True) -> dict[Oid, Any]:
        """The values of one poll: the scalars found where expected, and the columns' rows."""
        scalars = [ask for ask, _ in SCALARS]
        answer = await self._bulk(target, scalars, STATE_COLUMNS, MAX_ROWS, self.timeout,
                                  self.retries)
        if troubled(select(answer)):
            answer += await self._bulk(target, [], ALERT_COLUMNS, MAX_ROWS, self.timeout,
                                       self.retries)
        if supplies:
            answer += await self._bulk(target, [], SUPPLY_COLUMNS, SUPPLY_ROWS, self.timeout,
                                       self.retries)
        return select(answer)

    async def page_count(self, target: SnmpTarget, timeout: float) -> int | None:
        """prtMarkerLifeCount.1.1 now (one try, short time-out)."""
        answer = await self._bulk(target, [PRT_MARKER_LIFE_COUNT], [], 0, timeout, 0)
        values = select(answer)
        key = (*PRT_MARKER_LIFE_COUNT, 1, 1)
        return _int(values[key], "prtMarkerLifeCount") if key in values else None

    def close(self) -> None:
        for engine in self._engines.values():
            engine.close_dispatcher()
        self._engines.clear()


def troubled(values: dict[Oid, Any]) -> bool:
    """Whether a device's answer says something is wrong (then its alerts are worth reading)."""
    errors = values.get(HR_PRINTER_ERROR_STATE)
    status = values.get(HR_DEVICE_STATUS)
    try:
        if errors is not None and any(_octets(errors, "hrPrinterDetectedErrorState")):
            return True
        return status is not None and _int(status, "hrDeviceStatus") in (3, 5)
    except MalformedResponse:
        return False  # interpret() will say so


def select(answer: list[tuple[Oid, Any]]) -> dict[Oid, Any]:
    """Keep the answers that are what we asked for (right OID, a real value)."""
    wanted = {expected for _, expected in SCALARS}
    values: dict[Oid, Any] = {}
    for oid, value in answer:
        if type(value).__name__ in ("NoSuchObject", "NoSuchInstance", "EndOfMibView", "Null"):
            continue
        if oid in wanted or any(oid[:len(c)] == c and len(oid) == len(c) + 2 for c in COLUMNS):
            values.setdefault(oid, value)
    return values


def run_coroutine(coro: Any) -> defer.Deferred[Any]:
    """A coroutine of an asyncio library, as a Deferred (the reactor is asyncio's)."""
    return defer.Deferred.fromFuture(asyncio.ensure_future(coro))


# ---------------------------------------------------------------- the poller


@dataclass
class DeviceTrack:
    """One device's place in the poller."""

    target: SnmpTarget
    reading: SnmpReading | None = None
    polls: int = 0              # polls finished (answered or not)
    answered: int = 0
    failures: int = 0           # consecutive failed polls
    delay: float = 0.0          # until the next poll
    last_error: str = ""
    history: list[str] = field(default_factory=list)   # recent states, newest last
    call: Any = None
    running: defer.Deferred[Any] | None = None


class SnmpPoller:
    """Polls every target at `interval` seconds; readings go to `on_reading(name, reading, at)`.

    `fetch(target, supplies)` returns a Deferred firing with the values of one
    poll, with the supplies' columns when `supplies` (default: pysnmp); the
    time-out guard, back-off and bookkeeping are here.
    """

    def __init__(self, targets: list[SnmpTarget], *, reactor: Any, interval: float = 10.0,
                 timeout: float = 2.0, retries: int = 1, max_backoff: float | None = None,
                 on_reading: Callable[[str, SnmpReading, float], None] | None = None,
                 fetch: Callable[[SnmpTarget, bool], defer.Deferred[dict[Oid, Any]]] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.reactor = reactor
        self.interval = interval
        self.timeout = timeout
        self.retries = retries
        self.max_backoff = max_backoff if max_backoff is not None else max(
            interval, min(interval * 8, 300.0))
        self.on_reading = on_reading
        self.clock = clock
        self._fetcher: PysnmpFetcher | None = None
        if fetch is None:
            self._fetcher = PysnmpFetcher(timeout=timeout, retries=retries)
            fetcher = self._fetcher
            # A pysnmp engine takes 0.1-0.2 s of CPU to build (it loads its MIB modules):
            # build them now, at start-up, not in the reactor's middle at the first poll.
            for target in targets:
                fetcher.engine(target)

            def fetch(target: SnmpTarget, supplies: bool) -> defer.Deferred[dict[Oid, Any]]:
                return run_coroutine(fetcher.poll(target, supplies))

        self._fetch = fetch
        self.tracks = {t.name: DeviceTrack(t) for t in targets}
        self.running = False

    @property
    def guard(self) -> float:
        """How long one poll may take before it counts as unanswered (a backstop: pysnmp's
        own time-out normally ends a silent poll first)."""
        return self.timeout * (self.retries + 1) + max(2.0, self.timeout)

    def start(self) -> None:
        """Start polling; first polls are spread over one interval."""
        self.running = True
        count = max(1, len(self.tracks))
        for i, track in enumerate(self.tracks.values()):
            track.call = self.reactor.callLater(self.interval * i / count, self._poll, track)

    async def stop(self) -> None:
        self.running = False
        waits = []
        for track in self.tracks.values():
            if track.call is not None and track.call.active():
                track.call.cancel()
            if track.running is not None and not track.running.called:
                waits.append(track.running)
        for wait in waits:
            wait.cancel()
        if self._fetcher is not None:
            self._fetcher.close()

    def _poll(self, track: DeviceTrack) -> None:
        track.call = None
        if not self.running:
            return
        d = self.poll_once(track.target.name)
        track.running = d

        def again(_: Any) -> None:
            track.running = None
            if self.running:
                track.call = self.reactor.callLater(track.delay, self._poll, track)

        d.addBoth(again)

    def poll_once(self, name: str) -> defer.Deferred[SnmpReading | None]:
        """Poll `name` now; fires with its reading (never fails; None once stopped)."""
        track = self.tracks[name]
        supplies = track.answered % SUPPLIES_EVERY == 0
        d: defer.Deferred[Any] = self._fetch(track.target, supplies)
        d.addTimeout(self.guard, self.reactor)
        d.addCallback(interpret)
        d.addCallbacks(lambda reading: self._answered(track, reading, supplies),
                       lambda failure: self._failed(track, failure))
        return d

    def _answered(self, track: DeviceTrack, reading: SnmpReading,
                  supplies: bool = True) -> SnmpReading:
        if not supplies and track.reading is not None:
            reading = replace(reading, supplies=track.reading.supplies)  # from an earlier poll
        track.polls += 1
        track.answered += 1
        track.failures = 0
        track.last_error = ""
        track.delay = self.interval
        return self._record(track, reading)

    def _failed(self, track: DeviceTrack, failure: Any) -> SnmpReading | None:
        error = failure.value
        cancelled = isinstance(error, defer.CancelledError | asyncio.CancelledError)
        if not self.running and cancelled:
            return None  # stopped while a poll was out
        track.polls += 1
        if isinstance(error, PollFailed):
            reason, message = error.reason, str(error)
        elif cancelled or isinstance(error, defer.TimeoutError):
            # (the guard's time-out cancels the asyncio task: its CancelledError comes back)
            reason, message = "no_response", "no answer in time"
        elif isinstance(error, MalformedResponse):
            reason, message = "snmp_malformed", str(error)
        else:
            reason, message = "snmp_error", f"{type(error).__name__}: {error}"
        changed = track.reading is None or track.reading.error != message
        if changed and reason == "snmp_error":
            log.warning("polling %s failed: %s", track.target.name, failure.getTraceback())
        track.last_error = message
        if reason == "no_response":
            # A silent device backs off; it is not waited for (each device has its own loop).
            track.failures += 1
            track.delay = min(self.interval * 2 ** (track.failures - 1), self.max_backoff)
            reading = SnmpReading("offline", ("no_response",), reachable=False, error=message)
        else:
            # It answered, but not usably (wrong credentials, malformed values): keep polling.
            track.failures = 0
            track.delay = self.interval
            reading = SnmpReading("unknown", (reason,), reachable=True, error=message)
        if changed:  # once per new kind of trouble, not every interval
            log.warning("SNMP poll of %s: %s (%s)", track.target.name, reason, message)
        return self._record(track, reading)

    def _record(self, track: DeviceTrack, reading: SnmpReading) -> SnmpReading:
        track.reading = reading
        track.history = [*track.history[-19:], reading.state]
        if self.on_reading is not None:
            try:
                self.on_reading(track.target.name, reading, self.clock())
            except Exception:
                log.exception("handling the SNMP reading of %s failed", track.target.name)
        return reading

    async def page_count(self, name: str, timeout: float = 1.0) -> int | None:
        """The device's life page counter read now, or None (unknown device, no answer)."""
        track = self.tracks.get(name)
        if track is None or self._fetcher is None:
            reading = track.reading if track is not None else None
            return reading.page_count if reading is not None else None
        try:
            d = run_coroutine(self._fetcher.page_count(track.target, timeout))
            d.addTimeout(timeout + 1.0, self.reactor)
            count: int | None = await d
            return count
        except (PollFailed, MalformedResponse, defer.TimeoutError, defer.CancelledError) as exc:
            log.info("reading the page counter of %s: %s", name, exc)
            return None

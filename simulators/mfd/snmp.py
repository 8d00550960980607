"""The simulated MFD's SNMP agent: Host Resources and Printer-MIB values that follow the printer.

Built on pysnmp's agent side (asyncio; the MFD runs on Twisted's asyncio
reactor): pysnmp does the message processing, community and USM security and
VACM, and a small MIB instrumentation controller of our own (`MfdMib`)
answers GET/GETNEXT/GETBULK from a snapshot of the printer taken at each
request, so values follow the simulator live. No MIB files: numeric OIDs.

What it shows (hrDeviceIndex 1, prtMarkerIndex 1 = every impression,
2 = colour impressions on a colour device):

- system: sysDescr, sysObjectID, sysUpTime, sysContact, sysName, sysLocation
- hrDeviceTable row 1: type (hrDevicePrinter), descr, status, errors
- hrPrinterTable row 1: hrPrinterStatus, hrPrinterDetectedErrorState (2 octets)
- prtMarkerTable: mark tech, counter unit (impressions), prtMarkerLifeCount
- prtMarkerSuppliesTable: toners, level and capacity in percent
- prtAlertTable: one row per active condition (jam, door open, offline, toner low/empty)

Conditions come from the printer (a standing jam, the `offline` fault) and from
two sensors only this agent has: `door_open` and toner levels (`set_supply`).
SNMPv2c with one read-only community, SNMPv3 with one USM user (authPriv,
HMAC-SHA-96 + AES-128 by default). A wrong community or wrong keys get no data.
"""

from __future__ import annotations

import bisect
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pysnmp.carrier.asyncio.dgram import udp
from pysnmp.entity import config, engine
from pysnmp.entity.rfc3413 import cmdrsp, context
from pysnmp.proto import rfc1902, rfc1905
from pysnmp.smi import error as smi_error
from pysnmp.smi.instrum import AbstractMibInstrumController

Oid = tuple[int, ...]

# ---------------------------------------------------------------- OIDs (numeric)

SYSTEM = (1, 3, 6, 1, 2, 1, 1)
SYS_DESCR = (*SYSTEM, 1, 0)
SYS_OBJECT_ID = (*SYSTEM, 2, 0)
SYS_UPTIME = (*SYSTEM, 3, 0)
SYS_CONTACT = (*SYSTEM, 4, 0)
SYS_NAME = (*SYSTEM, 5, 0)
SYS_LOCATION = (*SYSTEM, 6, 0)
HR_DEVICE_ENTRY = (1, 3, 6, 1, 2, 1, 25, 3, 2, 1)
HR_DEVICE_PRINTER = (1, 3, 6, 1, 2, 1, 25, 3, 1, 5)
HR_DEVICE_STATUS = (*HR_DEVICE_ENTRY, 5, 1)
HR_PRINTER_ENTRY = (1, 3, 6, 1, 2, 1, 25, 3, 5, 1)
HR_PRINTER_STATUS = (*HR_PRINTER_ENTRY, 1, 1)
HR_PRINTER_ERROR_STATE = (*HR_PRINTER_ENTRY, 2, 1)
PRT_MARKER_ENTRY = (1, 3, 6, 1, 2, 1, 43, 10, 2, 1)
PRT_MARKER_LIFE_COUNT = (*PRT_MARKER_ENTRY, 4, 1)       # + marker index
PRT_SUPPLIES_ENTRY = (1, 3, 6, 1, 2, 1, 43, 11, 1, 1)
PRT_ALERT_ENTRY = (1, 3, 6, 1, 2, 1, 43, 18, 1, 1)
#: RFC 5612's enterprise number for documentation: this device belongs to no vendor.
SIMULATOR_OBJECT_ID = (1, 3, 6, 1, 4, 1, 32473, 1, 1)

# hrDeviceStatus
DEVICE_RUNNING, DEVICE_WARNING, DEVICE_DOWN = 2, 3, 5
# hrPrinterStatus
PRINTER_OTHER, PRINTER_IDLE, PRINTER_PRINTING = 1, 3, 4

#: hrPrinterDetectedErrorState bits: (octet, mask). Bit 0 is the first octet's high bit.
ERROR_BITS: dict[str, tuple[int, int]] = {
    "low_paper": (0, 0x80), "no_paper": (0, 0x40), "low_toner": (0, 0x20),
    "no_toner": (0, 0x10), "door_open": (0, 0x08), "jammed": (0, 0x04),
    "offline": (0, 0x02), "service_requested": (0, 0x01),
    "input_tray_missing": (1, 0x80), "output_tray_missing": (1, 0x40),
    "marker_supply_missing": (1, 0x20), "output_near_full": (1, 0x10),
    "output_full": (1, 0x08), "input_tray_empty": (1, 0x04),
    "overdue_prevent_maint": (1, 0x02),
}

#: condition -> (prtAlertSeverityLevel, prtAlertGroup, prtAlertCode, description)
#: severity: critical(3), warning(4); group: generalPrinter(5), cover(6),
#: markerSupplies(11), mediaPath(13); code: coverOpen(3), jam(8), subunitOffline(22),
#: markerTonerEmpty(1101), markerTonerAlmostEmpty(1104).
ALERTS: dict[str, tuple[int, int, int, str]] = {
    "jammed": (3, 13, 8, "Paper jam"),
    "door_open": (3, 6, 3, "Front door open"),
    "offline": (3, 5, 22, "Printer offline"),
    "no_toner": (3, 11, 1101, "Toner empty"),
    "low_toner": (4, 11, 1104, "Toner low"),
}

LOW_TONER_PERCENT = 10.0

LAB_COMMUNITY = "public"
LAB_V3 = {"user": "outpost", "auth_protocol": "SHA", "auth_key": "outpost-auth-key",
          "priv_protocol": "AES", "priv_key": "outpost-priv-key"}

AUTH_PROTOCOLS = {"SHA": config.USM_AUTH_HMAC96_SHA, "MD5": config.USM_AUTH_HMAC96_MD5,
                  "SHA-256": config.USM_AUTH_HMAC192_SHA256,
                  "SHA-512": config.USM_AUTH_HMAC384_SHA512}
PRIV_PROTOCOLS = {"AES": config.USM_PRIV_CFB128_AES, "AES128": config.USM_PRIV_CFB128_AES,
                  "DES": config.USM_PRIV_CBC56_DES}


def error_state_octets(conditions: set[str] | frozenset[str]) -> bytes:
    """hrPrinterDetectedErrorState for a set of condition names (always two octets)."""
    octets = bytearray(2)
    for name in conditions:
        if name in ERROR_BITS:
            index, mask = ERROR_BITS[name]
            octets[index] |= mask
    return bytes(octets)


@dataclass
class Supply:
    """A toner: its level falls by 100/life percent per impression it marks."""

    name: str
    colour: bool           # counts colour impressions (cyan/magenta/yellow) or every one (black)
    life: int              # impressions from full to empty
    level: float = 100.0   # percent at `mark`
    mark: int = 0          # the counter value when `level` was set

    def percent(self, counter: int) -> float:
        return max(0.0, self.level - (counter - self.mark) * 100.0 / self.life)


@dataclass
class _Alert:
    index: int
    since: int  # sysUpTime, centiseconds


@dataclass
class Sensors:
    """What the agent knows beyond the printer's IPP state."""

    door_open: bool = False
    supplies: list[Supply] = field(default_factory=list)


class GuardedUdpTransport(udp.UdpAsyncioTransport):
    """pysnmp's UDP transport, except that a datagram pysnmp trips over is dropped and counted.

    Some garbage makes pyasn1 raise TypeError, which pysnmp does not catch: it would
    surface as an asyncio "Exception in callback" log line per datagram.
    """

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

        self.loop.call_soon(deliver)


class MfdMib(AbstractMibInstrumController):
    """Read-only MIB instrumentation over a snapshot function (OID -> value, rebuilt per request)."""

    def __init__(self, snapshot: Callable[[], dict[Oid, Any]]) -> None:
        self.snapshot = snapshot
        self.requests = 0

    def _table(self) -> tuple[list[Oid], dict[Oid, Any]]:
        self.requests += 1
        values = self.snapshot()
        return sorted(values), values

    @staticmethod
    def _hidden(ac: Any, oid: Oid, value: Any, context: dict[str, Any]) -> bool:
        """True when VACM keeps `oid` out of the requester's view (raises when not authorised)."""
        return bool(ac and ac("read", (oid, value), **context))

    def read_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        oids, values = self._table()
        ac = context.get("acFun")
        out: list[tuple[Any, Any]] = []
        for idx, (name, _) in enumerate(var_binds):
            context["idx"] = idx
            oid = tuple(name)
            if oid in values and not self._hidden(ac, oid, values[oid], context):
                out.append((rfc1902.ObjectName(oid), values[oid]))
            elif any(o[:-1] == oid[:-1] for o in oids):
                out.append((rfc1902.ObjectName(oid), rfc1905.noSuchInstance))
            else:
                out.append((rfc1902.ObjectName(oid), rfc1905.noSuchObject))
        return out

    def read_next_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        oids, values = self._table()
        ac = context.get("acFun")
        out: list[tuple[Any, Any]] = []
        for idx, (name, _) in enumerate(var_binds):
            context["idx"] = idx
            at = bisect.bisect_right(oids, tuple(name))
            while at < len(oids) and self._hidden(ac, oids[at], values[oids[at]], context):
                at += 1
            if at < len(oids):
                out.append((rfc1902.ObjectName(oids[at]), values[oids[at]]))
            else:
                out.append((name, rfc1905.endOfMibView))
        return out

    def write_variables(self, *var_binds: Any, **context: Any) -> list[tuple[Any, Any]]:
        raise smi_error.NotWritableError(idx=0, name=var_binds[0][0] if var_binds else ())


class MfdSnmpAgent:
    """An SNMP agent for one `SimulatedMfd`, on its own UDP port.

    `printer` needs: name, colour, counters, printer_state_reasons, printer_state
    (PROCESSING = printing), fault.mode, uuid. Nothing in the printer changes.
    """

    def __init__(self, printer: Any, *, community: str = LAB_COMMUNITY,
                 v3: dict[str, str] | None = None, location: str = "Outpost lab") -> None:
        self.printer = printer
        self.community = community
        self.v3 = dict(LAB_V3 if v3 is None else v3)
        self.location = location
        self.sensors = Sensors(supplies=self._default_supplies())
        self._alerts: dict[str, _Alert] = {}
        self._next_alert = 1
        self._started = time.monotonic()
        self._engine: Any = None
        self._socket: socket.socket | None = None
        self._transport: GuardedUdpTransport | None = None
        self.mib = MfdMib(self.snapshot)
        self.port: int | None = None

    def _default_supplies(self) -> list[Supply]:
        supplies = [Supply("black toner", False, 20000)]
        if self.printer.colour:
            supplies += [Supply(f"{c} toner", True, 10000) for c in ("cyan", "magenta", "yellow")]
        return supplies

    # ------------------------------------------------------------ sensors

    def _counter_for(self, supply: Supply) -> int:
        counters = self.printer.counters
        return int(counters.get("colour", 0) if supply.colour else counters.get("total", 0))

    def set_supply(self, name: str, percent: float) -> None:
        """Set a toner's level now (e.g. 5 for "toner low", 0 for "empty", 100 for a new one)."""
        for supply in self.sensors.supplies:
            if supply.name == name or supply.name == f"{name} toner":
                supply.level = max(0.0, min(100.0, float(percent)))
                supply.mark = self._counter_for(supply)
                return
        raise KeyError(f"no supply {name!r}; have {[s.name for s in self.sensors.supplies]}")

    def set_door_open(self, open_: bool) -> None:
        self.sensors.door_open = open_

    def sensors_json(self) -> dict[str, Any]:
        return {"door_open": self.sensors.door_open,
                "supplies": {s.name: round(s.percent(self._counter_for(s)), 2)
                             for s in self.sensors.supplies},
                "conditions": sorted(self.conditions())}

    def apply_sensors(self, body: Any) -> dict[str, Any]:
        """`POST /control/sensors`: {"door_open": bool, "supplies": {name: percent}}; checks first."""
        if not isinstance(body, dict) or set(body) - {"door_open", "supplies"}:
            raise ValueError('expected {"door_open": bool, "supplies": {name: percent}}')
        door = body.get("door_open", self.sensors.door_open)
        if not isinstance(door, bool):
            raise ValueError("door_open must be true or false")
        supplies = body.get("supplies", {})
        names = {s.name for s in self.sensors.supplies} | {
            s.name.removesuffix(" toner") for s in self.sensors.supplies}
        if not isinstance(supplies, dict) or any(
                name not in names or isinstance(level, bool) or not isinstance(level, int | float)
                or not 0 <= level <= 100 for name, level in supplies.items()):
            raise ValueError(f"supplies: {{name: 0..100}} with names from {sorted(names)}")
        self.set_door_open(door)
        for name, level in supplies.items():
            self.set_supply(name, level)
        return self.sensors_json()

    def conditions(self) -> set[str]:
        """The error-state conditions the printer is in now."""
        found: set[str] = set()
        if "media-jam-error" in self.printer.printer_state_reasons:
            found.add("jammed")
        if self.printer.fault.mode == "offline":
            found.add("offline")
        if self.sensors.door_open:
            found.add("door_open")
        levels = [s.percent(self._counter_for(s)) for s in self.sensors.supplies]
        if any(level <= 0 for level in levels):
            found.add("no_toner")
        if any(level <= LOW_TONER_PERCENT for level in levels):
            found.add("low_toner")
        return found

    def up_time(self) -> int:
        """sysUpTime in hundredths of a second."""
        return int((time.monotonic() - self._started) * 100)

    # ------------------------------------------------------------ the MIB

    def snapshot(self) -> dict[Oid, Any]:
        """Every object the agent serves, as it is now."""
        from appliance.protocols.ipp.constants import PrinterState

        printer = self.printer
        now = self.up_time()
        conditions = self.conditions()
        critical = conditions & {"jammed", "door_open", "offline", "no_toner"}
        if critical:
            device_status, printer_status = DEVICE_DOWN, PRINTER_OTHER
        else:
            printing = printer.printer_state == PrinterState.PROCESSING
            printer_status = PRINTER_PRINTING if printing else PRINTER_IDLE
            device_status = DEVICE_WARNING if conditions else DEVICE_RUNNING
        kind = "colour" if printer.colour else "mono"
        values: dict[Oid, Any] = {
            SYS_DESCR: rfc1902.OctetString(f"Outpost simulated MFD {printer.name} ({kind})"),
            SYS_OBJECT_ID: rfc1902.ObjectName(SIMULATOR_OBJECT_ID),
            SYS_UPTIME: rfc1902.TimeTicks(now),
            SYS_CONTACT: rfc1902.OctetString("lab@outpost.test"),
            SYS_NAME: rfc1902.OctetString(printer.name),
            SYS_LOCATION: rfc1902.OctetString(self.location),
            (*HR_DEVICE_ENTRY, 1, 1): rfc1902.Integer32(1),
            (*HR_DEVICE_ENTRY, 2, 1): rfc1902.ObjectName(HR_DEVICE_PRINTER),
            (*HR_DEVICE_ENTRY, 3, 1): rfc1902.OctetString(f"Outpost simulated MFD ({kind})"),
            (*HR_DEVICE_ENTRY, 4, 1): rfc1902.ObjectName((0, 0)),
            HR_DEVICE_STATUS: rfc1902.Integer32(device_status),
            (*HR_DEVICE_ENTRY, 6, 1): rfc1902.Counter32(self._next_alert - 1),
            HR_PRINTER_STATUS: rfc1902.Integer32(printer_status),
            HR_PRINTER_ERROR_STATE: rfc1902.OctetString(error_state_octets(conditions)),
        }
        counters = printer.counters
        markers = [int(counters.get("total", 0))]
        if printer.colour:
            markers.append(int(counters.get("colour", 0)))
        for m, count in enumerate(markers, start=1):
            values[(*PRT_MARKER_ENTRY, 2, 1, m)] = rfc1902.Integer32(4)   # electrophotographicLaser
            values[(*PRT_MARKER_ENTRY, 3, 1, m)] = rfc1902.Integer32(7)   # impressions
            values[(*PRT_MARKER_LIFE_COUNT, m)] = rfc1902.Counter32(count % 2**32)
        for s, supply in enumerate(self.sensors.supplies, start=1):
            marker = 2 if supply.colour else 1
            values[(*PRT_SUPPLIES_ENTRY, 2, 1, s)] = rfc1902.Integer32(marker)
            values[(*PRT_SUPPLIES_ENTRY, 4, 1, s)] = rfc1902.Integer32(3)  # supplyThatIsConsumed
            values[(*PRT_SUPPLIES_ENTRY, 5, 1, s)] = rfc1902.Integer32(3)  # toner
            values[(*PRT_SUPPLIES_ENTRY, 6, 1, s)] = rfc1902.OctetString(supply.name)
            values[(*PRT_SUPPLIES_ENTRY, 7, 1, s)] = rfc1902.Integer32(19)  # percent
            values[(*PRT_SUPPLIES_ENTRY, 8, 1, s)] = rfc1902.Integer32(100)
            level = supply.percent(self._counter_for(supply))
            values[(*PRT_SUPPLIES_ENTRY, 9, 1, s)] = rfc1902.Integer32(int(level))
        for name, alert in self._refresh_alerts(conditions, now):
            severity, group, code, text = ALERTS[name]
            row = (1, alert.index)
            values[(*PRT_ALERT_ENTRY, 2, *row)] = rfc1902.Integer32(severity)
            values[(*PRT_ALERT_ENTRY, 3, *row)] = rfc1902.Integer32(4)  # trainingLevel: fieldService
            values[(*PRT_ALERT_ENTRY, 4, *row)] = rfc1902.Integer32(group)
            values[(*PRT_ALERT_ENTRY, 5, *row)] = rfc1902.Integer32(1)
            values[(*PRT_ALERT_ENTRY, 6, *row)] = rfc1902.Integer32(-1)
            values[(*PRT_ALERT_ENTRY, 7, *row)] = rfc1902.Integer32(code)
            values[(*PRT_ALERT_ENTRY, 8, *row)] = rfc1902.OctetString(text)
            values[(*PRT_ALERT_ENTRY, 9, *row)] = rfc1902.TimeTicks(alert.since)
        return values

    def _refresh_alerts(self, conditions: set[str], now: int) -> list[tuple[str, _Alert]]:
        """Active alerts, each keeping the index and time it was raised with."""
        for name in list(self._alerts):
            if name not in conditions:
                del self._alerts[name]
        for name in sorted(conditions):
            if name in ALERTS and name not in self._alerts:
                self._alerts[name] = _Alert(self._next_alert, now)
                self._next_alert += 1
        return sorted(self._alerts.items(), key=lambda item: item[1].index)

    # ------------------------------------------------------------ engine

    def engine_id(self) -> bytes:
        """RFC 3411 format: enterprise 32473 (documentation), octets taken from the MFD's uuid."""
        return b"\x80\x00\x7e\xd9\x05" + self.printer.uuid.bytes[:8]

    def listen(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Bind the UDP port now (0: any free one) and serve it; returns the port."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        if family == socket.AF_INET6:
            raise ValueError("the simulated MFD's SNMP agent serves IPv4 only")
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        try:
            sock.bind((host, port))
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self.port = sock.getsockname()[1]
        snmp = engine.SnmpEngine(snmpEngineID=rfc1902.OctetString(self.engine_id()))
        # What pysnmp would otherwise load (compile) at the first request, in the reactor.
        snmp.get_mib_builder().load_modules("__SNMP-USER-BASED-SM-MIB", "__SNMPv2-MIB")
        self._transport = GuardedUdpTransport().open_server_mode(sock=sock)
        config.add_transport(snmp, udp.DOMAIN_NAME, self._transport)
        view = (1, 3, 6, 1)
        config.add_v1_system(snmp, "lab-community", self.community)
        for model in (1, 2):  # SNMPv1, SNMPv2c
            config.add_vacm_user(snmp, model, "lab-community", "noAuthNoPriv", view)
        v3 = self.v3
        config.add_v3_user(
            snmp, v3["user"],
            AUTH_PROTOCOLS[v3.get("auth_protocol", "SHA").upper()], v3["auth_key"],
            PRIV_PROTOCOLS[v3.get("priv_protocol", "AES").upper()], v3["priv_key"],
        )
        config.add_vacm_user(snmp, 3, v3["user"], "authPriv", view)
        snmp_context = context.SnmpContext(snmp)
        snmp_context.unregister_context_name(b"")
        snmp_context.register_context_name(b"", self.mib)
        for responder in (cmdrsp.GetCommandResponder, cmdrsp.NextCommandResponder,
                          cmdrsp.BulkCommandResponder, cmdrsp.SetCommandResponder):
            responder(snmp, snmp_context)
        self._engine = snmp
        return self.port

    @property
    def dropped(self) -> int:
        """Datagrams that were not SNMP pysnmp could handle."""
        return self._transport.dropped if self._transport is not None else 0

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close_dispatcher()
            self._engine = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None

"""sd_notify without libsystemd: READY=1 once serving, WATCHDOG=1 while the reactor turns.

The units are `Type=notify` with `WatchdogSec=`: systemd counts the service as
started only when it says READY=1 (after every port is bound, so that a unit
ordered after it finds it serving), and restarts it when the WATCHDOG=1 pings
stop. The pings come from a LoopingCall on the reactor itself, so a wedged
reactor (a blocking call on the reactor thread, a deadlock) stops them, which
is exactly what the watchdog is there to catch. Outside systemd
($NOTIFY_SOCKET unset) every call is a no-op, so `outpost serve` behaves the
same from a shell.

The protocol is one AF_UNIX datagram of newline-separated KEY=VALUE lines
(sd_notify(3)); an address starting with '@' is in the abstract namespace.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)


class Notifier:
    """Talks to the service manager named by $NOTIFY_SOCKET, if any."""

    def __init__(self, address: str | None, watchdog_usec: int | None = None) -> None:
        self.address = address
        self.watchdog_usec = watchdog_usec if watchdog_usec and watchdog_usec > 0 else None
        self._looping: Any = None

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        """The notifier systemd asked for; WATCHDOG_PID naming another process disables pings."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        try:
            usec = int(env.get("WATCHDOG_USEC", ""))
        except ValueError:
            usec = None
        pid = env.get("WATCHDOG_PID")
        if pid and pid != str(os.getpid()):
            usec = None
        return cls(address, usec)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the timeout, as sd_watchdog_enabled(3) advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2_000_000

    def notify(self, *fields: str) -> bool:
        """Send one datagram; False (never an exception) when there is nobody to tell."""
        if self.address is None:
            return False
        target = "\0" + self.address[1:] if self.address.startswith("@") else self.address
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.sendto("\n".join(fields).encode(), target)
        except OSError as exc:
            log.warning("sd_notify to %s failed: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        fields = ["READY=1", f"MAINPID={os.getpid()}"]
        if status:
            fields.append(f"STATUS={status}")
        return self.notify(*fields)

    def stopping(self) -> bool:
        return self.notify("STOPPING=1")

    def ping(self) -> bool:
        return self.notify("WATCHDOG=1")

    def start_watchdog(self, clock: Any) -> Any:
        """Ping every `watchdog_interval` seconds from `clock` (the reactor); None when off."""
        interval = self.watchdog_interval
        if not self.enabled or interval is None:
            return None
        from twisted.internet.task import LoopingCall

        self._looping = LoopingCall(self.ping)
        self._looping.clock = clock
        self._looping.start(interval, now=True)
        return self._looping

    def stop_watchdog(self) -> None:
        if self._looping is not None and self._looping.running:
            self._looping.stop()
        self._looping = None

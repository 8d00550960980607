"""appliance.systemd against a real AF_UNIX datagram socket, as systemd's would be."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from appliance.systemd import Notifier


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(2)
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[str]:
    return sock.recv(4096).decode().split("\n")


def test_ready_sends_one_datagram_with_status(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path})
    assert notifier.ready("site branch-12 serving")
    assert received(sock) == ["READY=1", f"MAINPID={os.getpid()}", "STATUS=site branch-12 serving"]


def test_abstract_namespace_address() -> None:
    name = f"outpost-test-{os.getpid()}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        assert Notifier("@" + name).stopping()
        assert received(sock) == ["STOPPING=1"]
    finally:
        sock.close()


def test_watchdog_pings_every_half_timeout(manager: tuple[str, socket.socket]) -> None:
    path, sock = manager
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "4000000",
                                          "WATCHDOG_PID": str(os.getpid())})
    assert notifier.watchdog_interval == 2.0
    clock = Clock()
    looping = notifier.start_watchdog(clock)
    assert looping is not None
    assert received(sock) == ["WATCHDOG=1"]          # at once
    clock.advance(1.9)
    sock.settimeout(0.05)
    with pytest.raises(TimeoutError):
        sock.recv(4096)
    clock.advance(0.1)
    assert received(sock) == ["WATCHDOG=1"]
    notifier.stop_watchdog()
    clock.advance(10)
    with pytest.raises(TimeoutError):
        sock.recv(4096)


def test_no_socket_means_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert not notifier.ready()
    assert notifier.start_watchdog(Clock()) is None


def test_watchdog_for_another_pid_is_not_ours(manager: tuple[str, socket.socket]) -> None:
    path, _ = manager
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "1000000",
                                          "WATCHDOG_PID": "1"})
    assert notifier.watchdog_interval is None
    assert notifier.start_watchdog(Clock()) is None


def test_a_vanished_manager_is_not_fatal(tmp_path: Path) -> None:
    assert not Notifier(str(tmp_path / "gone")).ready()

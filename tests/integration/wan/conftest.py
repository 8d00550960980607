"""Fixtures for the WAN simulator's real-socket tests.

Nothing here imports the reactor at module level: pytest loads this file
before pytest-twisted installs the asyncio reactor.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


@pytest.fixture
def sim() -> Iterator[Any]:
    from simulators.wan import WanSimulator
    from tests.integration.wan.helpers import reactor

    simulator = WanSimulator(reactor, seed=4)
    yield simulator
    simulator.shutdown()


def _server(echo: bool, half_close: bool = False) -> Iterator[Any]:
    from tests.integration.wan.helpers import listen

    server = listen(echo=echo, half_close=half_close)
    yield server
    server.port.stopListening()
    for peer in server.peers:
        if peer.transport is not None:
            peer.transport.abortConnection()


@pytest.fixture
def echo() -> Iterator[Any]:
    yield from _server(echo=True)


@pytest.fixture
def sink() -> Iterator[Any]:
    """An upstream that records and does not echo."""
    yield from _server(echo=False)


@pytest.fixture
def half_sink() -> Iterator[Any]:
    """A recording upstream whose connections survive a FIN from the client."""
    yield from _server(echo=False, half_close=True)

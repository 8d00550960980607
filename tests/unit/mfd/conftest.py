from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted

from simulators.mfd import printer
from simulators.mfd.printer import SimulatedMfd


@pytest.fixture
def make_mfd(tmp_path: Path) -> Iterator[Callable[..., SimulatedMfd]]:
    """Start simulated MFDs on loopback; each is stopped after the test."""
    started: list[SimulatedMfd] = []

    def make(name: str = "mfd-1", *, state: Path | None = None, **options: Any) -> SimulatedMfd:
        mfd = SimulatedMfd(
            name,
            tmp_path / name / "output",
            state or tmp_path / name / "state",
            **options,
        )
        mfd.listen()
        started.append(mfd)
        return mfd

    yield make
    for mfd in started:
        pytest_twisted.blockon(mfd.stop())


@pytest.fixture
def mfd(make_mfd: Callable[..., SimulatedMfd]) -> SimulatedMfd:
    return make_mfd()


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Make page counting deterministic: set `pages["pages"]` and `pages["colour"]`."""
    answer: dict[str, Any] = {"pages": 3, "colour": False, "calls": []}

    def fake(path: Path, document_format: str | None) -> tuple[int | None, bool | None]:
        answer["calls"].append((Path(path), document_format))
        return answer["pages"], answer["colour"]

    monkeypatch.setattr(printer, "count_document", fake)
    return answer

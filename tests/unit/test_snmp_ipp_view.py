"""The IPP view beside SNMP: Get-Printer-Attributes → DeviceView, merged in the DeviceMonitor."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.core.devices import DeviceMonitor
from appliance.protocols.ipp import codec
from appliance.protocols.ipp.client import IppClient
from appliance.protocols.ipp.constants import GroupTag, ValueTag
from appliance.protocols.ipp.watcher import IppWatcher, reasons_of, view_of
from appliance.protocols.snmp.poller import SnmpPoller, SnmpTarget
from simulators.mfd.printer import SimulatedMfd
from tests.unit.mfd.helpers import job_done, job_id_of, pdf_bytes, print_job


def answer(state: int, reasons: list[str], levels: list[int] | None = None) -> codec.Message:
    message = codec.Message(version=(2, 0), code=0, request_id=1)
    group = message.ensure_group(GroupTag.PRINTER)
    group.add(codec.attr("printer-state", ValueTag.ENUM, state))
    group.add(codec.attr("printer-state-reasons", ValueTag.KEYWORD, *reasons))
    if levels is not None:
        group.add(codec.attr("marker-levels", ValueTag.INTEGER, *levels))
        group.add(codec.attr("marker-low-levels", ValueTag.INTEGER, *([10] * len(levels))))
    return message


@pytest.mark.parametrize(("state", "reasons", "levels", "view_state", "view_reasons"), [
    (3, ["none"], [80], "idle", ()),
    (4, ["none"], None, "printing", ()),
    (5, ["media-jam-error"], None, "jammed", ("jammed",)),
    (5, ["cover-open-error", "toner-low-warning"], None, "door_open",
     ("door_open", "low_toner")),
    (3, ["toner-low-report"], [80], "idle", ()),  # reports are informational
    (3, ["none"], [80, 5], "toner_low", ("low_toner",)),
    (3, ["none"], [0], "toner_low", ("no_toner", "low_toner")),
    (5, ["none"], None, "offline", ("stopped",)),
    (3, ["offline-report", "shutdown-warning"], None, "offline", ("offline",)),
])
def test_view_of_a_printer_answer(state: int, reasons: list[str], levels: list[int] | None,
                                  view_state: str, view_reasons: tuple[str, ...]) -> None:
    view = view_of(answer(state, reasons, levels), 5.0)
    assert (view.source, view.state, view.reasons, view.at) == ("ipp", view_state, view_reasons,
                                                                5.0)


def test_reason_keywords() -> None:
    assert reasons_of(["media-empty-error", "media-needed", "door-open-warning", "none"]) == [
        "no_paper", "door_open"]


@pytest.fixture
def mfd(tmp_path: Path) -> Iterator[SimulatedMfd]:
    printer = SimulatedMfd("mfd-1", tmp_path / "out", tmp_path / "state", reactor=reactor)
    printer.listen("127.0.0.1", snmp_port=0)
    yield printer
    pytest_twisted.blockon(printer.stop())


@pytest_twisted.ensureDeferred
async def test_snmp_and_ipp_views_of_the_simulator_merge(mfd: SimulatedMfd) -> None:
    monitor = DeviceMonitor()
    client = IppClient(reactor, connect_timeout=1.0)
    watcher = IppWatcher([("mfd-1", mfd.ipp_uri)], client=client, reactor=reactor,
                         on_view=monitor.update, interval=1.0, timeout=2.0)
    assert mfd.snmp_port is not None
    poller = SnmpPoller([SnmpTarget("mfd-1", "127.0.0.1", mfd.snmp_port)], reactor=reactor,
                        timeout=0.5, retries=0,
                        on_reading=lambda n, r, at: monitor.update(n, r.view(at)))
    try:
        await watcher.poll_once("mfd-1")
        await poller.poll_once("mfd-1")
        status = monitor.status("mfd-1")
        assert (status.state, set(status.views), status.page_count) == ("idle", {"ipp", "snmp"}, 0)

        await mfd.set_fault("jam", after_pages=1, once=False)
        await job_done(mfd, job_id_of(await print_job(mfd, pdf_bytes(2))))
        ipp_view = await watcher.poll_once("mfd-1")
        assert ipp_view.state == "jammed"
        assert monitor.refusal("mfd-1") == "mfd-1 is jammed", "IPP alone is enough"

        # Offline: the IPP port closes, SNMP still answers and says offline.
        await mfd.set_fault("offline")
        ipp_view = await watcher.poll_once("mfd-1")
        assert (ipp_view.state, ipp_view.reachable) == ("offline", False)
        await poller.poll_once("mfd-1")
        status = monitor.status("mfd-1")
        assert (status.state, status.reasons) == ("offline", ("offline",))
        assert monitor.refusal("mfd-1") == "mfd-1 is offline"

        # SNMP silent but IPP answers: not offline.
        await mfd.set_fault("none")
        mfd.snmp_agent.close()
        await watcher.poll_once("mfd-1")
        await poller.poll_once("mfd-1")
        status = monitor.status("mfd-1")
        assert status.views["snmp"].reachable is False
        assert status.state == "idle" and monitor.refusal("mfd-1") is None
    finally:
        watcher.stop()
        await poller.stop()
        await client.close()

"""Fault modes of the simulated MFD, and its control API."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet.error import ConnectionRefusedError

from appliance.protocols.ipp.codec import attr
from appliance.protocols.ipp.constants import (
    GroupTag,
    JobState,
    Operation,
    PrinterState,
    Status,
    ValueTag,
)
from simulators.mfd.faults import Fault, FaultError, fault_from_json, make_fault
from simulators.mfd.printer import SimulatedMfd

from .helpers import call, job_done, job_id_of, output_files, pdf_bytes, print_job, until

ensure = pytest_twisted.ensureDeferred


def printer_attributes(reply: Any) -> dict[str, Any]:
    group = reply.group(GroupTag.PRINTER)
    return {name: a.values for name, a in group.attributes.items()}


# ---------------------------------------------------------------- checking fault requests


def test_fault_requests_are_checked() -> None:
    assert make_fault("none") == Fault()
    assert make_fault("jam", after_pages=2) == Fault("jam", after_pages=2, once=True)
    assert make_fault("jam", after_pages=0, once=False) == Fault("jam", 0, 0.0, False)
    assert make_fault("slow", page_delay=0.5) == Fault("slow", page_delay=0.5)
    assert make_fault("slow") == Fault("slow", page_delay=1.0)
    assert make_fault("reject", after_pages=None) == Fault("reject")
    for bad in (
        {"mode": "explode"},
        {"mode": 3},
        {"mode": "jam", "after_pages": -1},
        {"mode": "jam", "after_pages": True},
        {"mode": "jam", "after_pages": "2"},
        {"mode": "jam", "once": "yes"},
        {"mode": "slow", "page_delay": -1},
        {"mode": "slow", "page_delay": float("nan")},
        {"mode": "slow", "page_delay": 1e9},
        {"mode": "slow", "colour": True},
        {"after_pages": 2},
        [],
    ):
        with pytest.raises(FaultError):
            fault_from_json(bad)


def test_set_fault_refuses_unknown_parameters(tmp_path: Any) -> None:
    mfd = SimulatedMfd("m", tmp_path / "o", tmp_path / "s")
    with pytest.raises(FaultError, match="unknown parameter"):
        mfd.set_fault("jam", pages=3)
    with pytest.raises(FaultError):
        mfd.set_fault("melt")
    assert mfd.fault == Fault()


# ---------------------------------------------------------------- jam


@ensure
async def test_jam_after_k_pages_aborts_the_job_and_counts_k(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    await mfd.set_fault("jam", after_pages=2)
    pages["pages"] = 3
    document = pdf_bytes(3)
    job_id = job_id_of(await print_job(mfd, document))
    await job_done(mfd, job_id)

    reply = await call(mfd, Operation.GET_JOB_ATTRIBUTES,
                       extra=[attr("job-id", ValueTag.INTEGER, job_id)])
    job = reply.group(GroupTag.JOB)
    assert job is not None
    assert job.get("job-state").value == JobState.ABORTED  # type: ignore[union-attr]
    assert job.get("job-state-reasons").values == ["media-jam"]  # type: ignore[union-attr]
    assert job.get("job-impressions-completed").value == 2  # type: ignore[union-attr]
    assert job.get("job-impressions").value == 3  # type: ignore[union-attr]
    assert output_files(mfd)[0].read_bytes() == document  # the whole document was sent
    assert mfd.counters == {"total": 2, "mono": 2, "colour": 0}

    printer = printer_attributes(await call(mfd, Operation.GET_PRINTER_ATTRIBUTES))
    assert printer["printer-state"] == [PrinterState.STOPPED]
    assert printer["printer-state-reasons"] == ["media-jam-error"]
    assert mfd.fault == Fault()  # `once`: the jam is cleared by that one job

    # the next job starts on a cleared printer and prints whole
    job_id = job_id_of(await print_job(mfd, document))
    await job_done(mfd, job_id)
    assert mfd.job(job_id).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert mfd.counters["total"] == 5
    assert mfd.printer_state == PrinterState.IDLE


@ensure
async def test_a_job_shorter_than_k_pages_does_not_jam(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    await mfd.set_fault("jam", after_pages=3)
    job_id = job_id_of(await print_job(mfd, b"%PDF"))  # 3 pages
    await job_done(mfd, job_id)
    assert mfd.job(job_id).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert mfd.fault.mode == "jam"  # still armed for a longer job


@ensure
async def test_a_persistent_jam_stops_the_printer_until_cleared(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    await mfd.set_fault("jam", after_pages=0, once=False)
    first = job_id_of(await print_job(mfd, b"%PDF"))
    await job_done(mfd, first)
    assert mfd.job(first).state == JobState.ABORTED  # type: ignore[union-attr]
    assert mfd.counters["total"] == 0  # jammed before the first page: nothing counted

    second = job_id_of(await print_job(mfd, b"%PDF"))
    await until(lambda: True)
    await until(lambda: True)
    assert mfd.job(second).state == JobState.PENDING  # type: ignore[union-attr]
    assert mfd.printer_state == PrinterState.STOPPED
    assert mfd.status()["printer_state_reasons"] == ["media-jam-error"]

    await mfd.set_fault("none")
    await job_done(mfd, second)
    assert mfd.job(second).state == JobState.COMPLETED  # type: ignore[union-attr]
    assert mfd.counters["total"] == 3


# ---------------------------------------------------------------- offline, reject, slow


@ensure
async def test_offline_refuses_connections_until_cleared(mfd: SimulatedMfd) -> None:
    port = mfd.ipp_port
    state = await mfd.set_fault("offline")
    assert state["listening"] is False
    with pytest.raises(ConnectionRefusedError):
        await call(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    assert (await call_control(mfd))["fault"]["mode"] == "offline"  # control stays up

    await mfd.set_fault("none")
    assert mfd.ipp_port == port
    assert (await call(mfd, Operation.GET_PRINTER_ATTRIBUTES)).code == Status.SUCCESSFUL_OK


@ensure
async def test_reject_answers_not_accepting_jobs(mfd: SimulatedMfd, pages: dict[str, Any]) -> None:
    await mfd.set_fault("reject")
    reply = await print_job(mfd, b"%PDF")
    assert reply.code == Status.SERVER_ERROR_NOT_ACCEPTING_JOBS
    assert (await call(mfd, Operation.CREATE_JOB)).code == Status.SERVER_ERROR_NOT_ACCEPTING_JOBS
    printer = printer_attributes(await call(mfd, Operation.GET_PRINTER_ATTRIBUTES))
    assert printer["printer-is-accepting-jobs"] == [False]
    assert mfd.jobs() == [] and output_files(mfd) == []

    await mfd.set_fault("none")
    assert (await print_job(mfd, b"%PDF")).code == Status.SUCCESSFUL_OK


@ensure
async def test_slow_takes_page_delay_per_impression(
    mfd: SimulatedMfd, pages: dict[str, Any]
) -> None:
    await mfd.set_fault("slow", page_delay=0.2)
    started = time.monotonic()
    job_id = job_id_of(await print_job(mfd, b"%PDF"))  # 3 pages
    await until(lambda: mfd.printer_state == PrinterState.PROCESSING)
    reply = await call(mfd, Operation.GET_PRINTER_ATTRIBUTES)
    assert printer_attributes(reply)["printer-state"] == [PrinterState.PROCESSING]
    await job_done(mfd, job_id)
    assert time.monotonic() - started >= 0.55
    assert mfd.counters["total"] == 3


# ---------------------------------------------------------------- control API


async def call_control(mfd: SimulatedMfd, method: str = "GET", path: str = "/control",
                       body: Any = None, raw: bytes | None = None) -> Any:
    url = f"http://127.0.0.1:{mfd.control_port}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    response = await treq.request(method, url, data=data, persistent=False,
                                  headers={b"Content-Type": [b"application/json"]})
    answer = json.loads(await response.content())
    answer["_status"] = response.code
    return answer


@ensure
async def test_control_shows_the_mfd(mfd: SimulatedMfd, pages: dict[str, Any]) -> None:
    job_id = job_id_of(await print_job(mfd, b"%PDF", name="memo.pdf", user="bob"))
    await job_done(mfd, job_id)
    state = await call_control(mfd)
    assert state["_status"] == 200
    assert state["name"] == "mfd-1"
    assert state["fault"] == {"mode": "none", "after_pages": 0, "page_delay": 0.0, "once": True}
    assert state["counters"] == {"total": 3, "mono": 3, "colour": 0}
    assert state["printer_state"] == "idle"
    [job] = state["jobs"]
    assert {k: job[k] for k in ("id", "name", "user", "pages", "impressions", "colour", "state")} \
        == {"id": job_id, "name": "memo.pdf", "user": "bob", "pages": 3, "impressions": 3,
            "colour": False, "state": "completed"}
    assert job["file"] == str(mfd.output_dir / f"{job_id:06d}-memo.pdf")


@ensure
async def test_control_sets_faults(mfd: SimulatedMfd) -> None:
    state = await call_control(mfd, "POST", "/control/fault",
                               {"mode": "jam", "after_pages": 1, "once": False})
    assert state["_status"] == 200
    assert state["fault"] == {"mode": "jam", "after_pages": 1, "page_delay": 0.0, "once": False}
    assert mfd.fault == Fault("jam", after_pages=1, once=False)

    state = await call_control(mfd, "POST", "/control/fault", {"mode": "offline"})
    assert state["_status"] == 200 and state["listening"] is False
    state = await call_control(mfd, "POST", "/control/fault", {"mode": "none"})
    assert state["listening"] is True
    assert (await call(mfd, Operation.GET_PRINTER_ATTRIBUTES)).code == Status.SUCCESSFUL_OK


@pytest.mark.parametrize(
    ("body", "raw"),
    [
        ({"mode": "flood"}, None),
        ({"mode": "slow", "page_delay": "fast"}, None),
        ({"mode": "jam", "pages": 2}, None),
        (None, b"not json"),
        (None, b"[1, 2]"),
    ],
)
@ensure
async def test_control_refuses_bad_faults(mfd: SimulatedMfd, body: Any, raw: bytes | None) -> None:
    answer = await call_control(mfd, "POST", "/control/fault", body, raw)
    assert answer["_status"] == 400
    assert isinstance(answer["error"], str) and answer["error"]
    assert mfd.fault == Fault()


@ensure
async def test_control_unknown_paths_and_methods(mfd: SimulatedMfd) -> None:
    assert (await call_control(mfd, "GET", "/nothing"))["_status"] == 404
    assert (await call_control(mfd, "DELETE", "/control"))["_status"] == 405
    assert (await call_control(mfd, "PUT", "/control/fault", {"mode": "none"}))["_status"] == 405

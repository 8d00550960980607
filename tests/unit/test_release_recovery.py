"""Restart recovery of jobs that were being sent when the site stopped, against the MFD
simulator over real IPP. The dangerous moment is between the device accepting the job and
the site recording the device's handle: recovery used to hold such a job again, and the
next release printed it a second time (the lab's kill-site scenario found it: "printed 2
times and charged 1 times"). Now recovery asks the device (Get-Jobs) and follows the job
it finds; a job the device never got is held again; another job of the same owner and
name, already someone's, is never taken for it."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from appliance.core.charging import LAB_POLICY
from appliance.core.model import Device, JobOptions, JobState
from appliance.core.release import ReleaseService
from appliance.protocols.ipp.client import IppClient
from appliance.protocols.ipp.driver import IppDriver
from simulators.mfd.printer import SimulatedMfd
from tests.unit.mfd.helpers import pdf_bytes
from tests.unit.test_release import site_parts


@pytest.fixture
def world(tmp_path: Path) -> Iterator[Any]:
    mfd = SimulatedMfd("mfd-1", tmp_path / "out", tmp_path / "mfd-state", reactor=reactor)
    mfd.listen("127.0.0.1", snmp_port=None)
    database, store, user, jobs = site_parts(tmp_path)
    device = Device("mfd-1", "ipp", mfd.ipp_uri, True, True, "default", True)
    driver = IppDriver(IppClient(reactor, connect_timeout=1.0))

    def release_service() -> ReleaseService:
        """A fresh service: what a restarted site has (nothing in memory)."""
        return ReleaseService(jobs=jobs, store=store, drivers={"ipp": driver},
                              devices=lambda: {"mfd-1": device}, policies=lambda d: LAB_POLICY,
                              reactor=reactor, poll_interval=0.02, follow_timeout=10)

    yield SimpleNamespace(mfd=mfd, store=store, jobs=jobs, device=device, driver=driver,
                          user=user, release_service=release_service)
    database.close()
    pytest_twisted.blockon(mfd.stop())


async def held_job(world: Any, name: str) -> Any:
    document = await world.jobs.begin_document("alice")
    document.write(pdf_bytes(3))
    return await world.jobs.submit("findme", "alice", name, JobOptions(colour_mode="monochrome"),
                                   document, "application/pdf")


async def sending(world: Any, job: Any) -> Any:
    """What a release records before it sends: PROCESSING on mfd-1, attempt 1."""
    return await world.store.update_job(
        job.id, state=JobState.PROCESSING, device="mfd-1", attempts=1,
        processing_at=time.time(), state_message="sending to mfd-1")


def printed(world: Any, name: str) -> int:
    return sum(1 for j in world.mfd.jobs() if j.name == name)


@pytest_twisted.ensureDeferred
async def test_a_job_the_device_got_before_the_crash_is_followed_not_printed_again(world):
    # An earlier "report" of alice, printed and recorded: its handle is claimed.
    earlier = await held_job(world, "report")
    report = await world.release_service().release(
        owner="alice", account_id=world.user.account_id, device_name="mfd-1",
        job_ids=[earlier.id])
    assert report.released == [earlier.id]

    # Crash 1: the device accepted the job, the site died before recording the handle.
    got = await sending(world, await held_job(world, "report"))
    await world.driver.submit(world.device, got, world.jobs.spool.path(got.spool_name))
    # Crash 2: the site died before sending at all.
    never = await sending(world, await held_job(world, "report"))
    assert printed(world, "report") == 2

    restarted = world.release_service()
    await restarted.recover()
    for _ in range(500):   # until it is charged and nobody follows it, and the other held
        if (await world.store.job(got.id)).state is JobState.COMPLETED \
                and not restarted._following \
                and (await world.store.job(never.id)).state is JobState.HELD:
            break
        await deferLater(reactor, 0.01, lambda: None)
    assert (await world.store.job(got.id)).state is JobState.COMPLETED, "followed and charged"
    assert (await world.store.job(never.id)).state is JobState.HELD, "never sent: held again"
    assert printed(world, "report") == 2, "nothing printed twice"
    charges = [r for r in await world.store.ledger_entries(world.user.account_id)
               if r["kind"] == "charge"]
    assert len(charges) == 2 and {r["job_id"] for r in charges} == {earlier.id, got.id}

    # The held one is released later: printed once, for the first time.
    again = await world.release_service().release(
        owner="alice", account_id=world.user.account_id, device_name="mfd-1",
        job_ids=[never.id])
    assert again.released == [never.id] and printed(world, "report") == 3

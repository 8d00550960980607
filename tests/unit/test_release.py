"""ReleaseService with a real store and spool and a scripted device: charging rules."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from appliance.core.charging import LAB_POLICY
from appliance.core.jobs import PrintService
from appliance.core.model import Device, JobOptions, Queue
from appliance.core.release import DeviceJobStatus, DeviceUnavailable, ReleaseService
from appliance.storage.database import Database
from appliance.storage.spool import Spool
from appliance.storage.store import SiteStore, add_user_sync

PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Count 3/Kids[3 0 R 4 0 R 5 0 R]>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R>>endobj\n4 0 obj<</Type/Page/Parent 2 0 R>>endobj\n"
       b"5 0 obj<</Type/Page/Parent 2 0 R>>endobj\ntrailer<</Root 1 0 R>>\n%%EOF\n")


class ScriptedDevice:
    """A DeviceDriver whose outcomes the test sets: 'ok', 'jam:<k>', 'down'."""

    def __init__(self) -> None:
        self.outcome = "ok"
        self.sent: list[int] = []

    async def submit(self, device: Device, job, document) -> str:
        if self.outcome == "down":
            raise DeviceUnavailable("connection refused")
        self.sent.append(job.id)
        return f"{device.uri}#{len(self.sent)}"

    async def status(self, device: Device, handle: str) -> DeviceJobStatus:
        if self.outcome.startswith("jam:"):
            return DeviceJobStatus("aborted", int(self.outcome[4:]), "media jam")
        return DeviceJobStatus("completed", None)


class Watch:
    def __init__(self, difference: int) -> None:
        self.difference = difference

    async def started(self, device, job) -> None:
        return None

    async def finished(self, device, job, impressions, printed):
        return SimpleNamespace(status="discrepancy" if self.difference else "ok",
                               difference=self.difference,
                               counter_delta=impressions + self.difference)


def site_parts(tmp_path):
    """A site's database (alice, balance 1000), store, spool and Find-Me print service."""
    database = Database(tmp_path / "site.db", reactor)
    database.open()
    store = SiteStore(database)
    user = database.run_sync(lambda db: add_user_sync(db, "alice", "A", "", [], 1000))
    spool = Spool(tmp_path / "spool", max_document=10**6, max_per_user=10**7, max_total=10**8)
    jobs = PrintService(store=store, spool=spool, queues=[Queue("findme", "findme")],
                        policies=lambda d: LAB_POLICY, reactor=reactor, use_ghostscript=False)
    return database, store, user, jobs


@pytest.fixture
def world(tmp_path):
    database, store, user, jobs = site_parts(tmp_path)
    driver = ScriptedDevice()
    devices = {n: Device(n, "ipp", f"ipp://127.0.0.1:9/{n}", True, True, "default", True)
               for n in ("mfd-1", "mfd-2")}
    release = ReleaseService(jobs=jobs, store=store, drivers={"ipp": driver},
                             devices=lambda: devices, policies=lambda d: LAB_POLICY,
                             reactor=reactor, poll_interval=0.01, follow_timeout=10)
    yield SimpleNamespace(store=store, jobs=jobs, release=release, driver=driver, user=user)
    database.close()


async def hold(world, copies: int = 1):
    document = await world.jobs.begin_document("alice")
    document.write(PDF)
    return await world.jobs.submit("findme", "alice", "doc",
                                   JobOptions(copies=copies, colour_mode="monochrome"), document,
                                   "application/pdf")


async def release(world, device="mfd-1"):
    return await world.release.release(owner="alice", account_id=world.user.account_id,
                                       device_name=device, job_ids=None)


async def balance(world) -> int:
    return (await world.store.balance(world.user.account_id))[0]


@pytest_twisted.ensureDeferred
async def test_print_charges_once_and_the_document_leaves_the_spool(world):
    job = await hold(world, copies=2)
    report = await release(world)
    assert report.released == [job.id] and report.charged == 60
    assert await balance(world) == 940
    assert not world.jobs.spool.path(job.spool_name).exists()
    again = await release(world)
    assert again.results == [] and await balance(world) == 940


@pytest_twisted.ensureDeferred
async def test_device_down_charges_nothing_and_keeps_the_job(world):
    await hold(world)
    world.driver.outcome = "down"
    report = await release(world)
    assert report.failed[0].code == "device_unavailable" and report.charged == 0
    world.driver.outcome = "ok"
    assert (await release(world, "mfd-2")).charged == 30
    assert await balance(world) == 970


@pytest_twisted.ensureDeferred
async def test_jam_charges_the_reported_impressions_and_the_job_stays_releasable(world):
    await hold(world)
    world.driver.outcome = "jam:2"
    report = await release(world)
    assert report.failed[0].code == "device_error" and report.charged == 20
    world.driver.outcome = "ok"
    assert (await release(world, "mfd-2")).charged == 30
    assert await balance(world) == 950


@pytest_twisted.ensureDeferred
async def test_insufficient_balance_is_refused_before_printing(world):
    world.store.database.run_sync(lambda db: add_user_sync(db, "poor", "P", "", [], 20))
    poor = await world.store.user_by_name("poor")
    document = await world.jobs.begin_document("poor")
    document.write(PDF)
    await world.jobs.submit("findme", "poor", "doc", JobOptions(colour_mode="monochrome"),
                            document, "application/pdf")
    report = await world.release.release(owner="poor", account_id=poor.account_id,
                                         device_name="mfd-1", job_ids=None)
    assert report.failed[0].code == "insufficient_balance" and world.driver.sent == []


@pytest.mark.parametrize("difference", [2, -1])
@pytest_twisted.ensureDeferred
async def test_the_page_counter_delta_is_what_is_charged(world, difference):
    world.release.print_watch = Watch(difference)
    job = await hold(world)
    report = await release(world)
    assert report.charged == 30
    for _ in range(200):  # the watch reports after the answer, in the background
        if await balance(world) != 970:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert await balance(world) == 970 - 10 * difference
    rows = await world.store.ledger_entries(world.user.account_id)
    adjustments = [r for r in rows if r["kind"] == "adjustment"]
    assert len(adjustments) == 1 and adjustments[0]["job_id"] == job.id
    assert (await world.store.job(job.id)).charged == 30 + 10 * difference


@pytest_twisted.ensureDeferred
async def test_a_charge_refused_by_a_full_disk_is_written_once_space_returns(world):
    """The MFD printed; writing the charge fails with SQLite's "database or disk is full"
    twice (as a full disk does). The panel hears that the job printed and is charged
    later; the job stays PROCESSING, is followed again every `retry_interval` seconds
    without a restart, and is charged once (one ledger row) when the write goes through."""
    import sqlite3

    from appliance.core.model import JobState
    from appliance.storage.disk import as_disk_full

    world.release.retry_interval = 0.05
    real_finish = world.store.finish_print
    refusals = []

    async def finish_print(*args, **kwargs):
        if len(refusals) < 2:
            refusals.append(1)
            raise as_disk_full(sqlite3.OperationalError("database or disk is full"))
        return await real_finish(*args, **kwargs)

    world.store.finish_print = finish_print
    job = await hold(world)
    report = await release(world)
    assert report.processing == [job.id] and report.charged == 0 and not report.failed
    assert (await world.store.job(job.id)).state == JobState.PROCESSING
    for _ in range(400):
        if (await world.store.job(job.id)).state == JobState.COMPLETED:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert len(refusals) == 2, "followed again after each refusal"
    assert (await world.store.job(job.id)).state == JobState.COMPLETED
    assert await balance(world) == 970
    charges = [r for r in await world.store.ledger_entries(world.user.account_id)
               if r["kind"] == "charge"]
    assert len(charges) == 1
    assert world.driver.sent == [job.id], "printed once: only the charge was retried"

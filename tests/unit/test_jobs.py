"""PrintService: hold expiry, spool caps, cancel and restart recovery (real store and spool)."""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.core.charging import LAB_POLICY
from appliance.core.jobs import JobError, PrintService
from appliance.core.model import JobOptions, JobState, Queue
from appliance.storage.database import Database
from appliance.storage.spool import Spool, SpoolFull
from appliance.storage.store import SiteStore

PDF = (b"%PDF-1.4\n1 0 obj<</Type/Catalog/Pages 2 0 R>>endobj\n"
       b"2 0 obj<</Type/Pages/Count 2/Kids[3 0 R 4 0 R]>>endobj\n"
       b"3 0 obj<</Type/Page/Parent 2 0 R>>endobj\n4 0 obj<</Type/Page/Parent 2 0 R>>endobj\n"
       b"trailer<</Root 1 0 R>>\n%%EOF\n")


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def service(tmp_path):
    database = Database(tmp_path / "site.db", reactor)
    database.open()
    spool = Spool(tmp_path / "spool", max_document=4096, max_per_user=6000, max_total=10000)
    clock = Clock()
    svc = PrintService(store=SiteStore(database), spool=spool,
                       queues=[Queue("findme", "findme")], policies=lambda d: LAB_POLICY,
                       reactor=reactor, hold_ttl=3600, use_ghostscript=False, clock=clock)
    svc.test_clock = clock  # type: ignore[attr-defined]
    yield svc
    database.close()


async def submit(svc: PrintService, owner: str, data: bytes = PDF):
    document = await svc.begin_document(owner)
    document.write(data)
    return await svc.submit("findme", owner, "doc", JobOptions(colour_mode="monochrome"),
                            document, "application/pdf")


@pytest_twisted.ensureDeferred
async def test_held_jobs_expire_and_their_documents_leave_the_spool(service):
    job = await submit(service, "alice")
    assert job.state is JobState.HELD and job.pages == 2
    path = service.spool.path(job.spool_name)
    assert path.read_bytes() == PDF
    service.test_clock.now += 3599
    assert await service.expire_held() == 0
    service.test_clock.now += 2
    assert await service.expire_held() == 1
    expired = await service.job(job.id)
    assert expired.state is JobState.EXPIRED and expired.spool_name is None
    assert not path.exists()


@pytest_twisted.ensureDeferred
async def test_spool_caps_per_document_user_and_total(service):
    with pytest.raises(SpoolFull) as caught:
        document = await service.begin_document("bob")
        document.write(b"x" * 5000)  # over max_document: discarded at once
    assert caught.value.scope == "document"
    assert list(service.spool.incoming.iterdir()) == []
    await submit(service, "bob", PDF + b"%" * 3000)
    with pytest.raises(SpoolFull) as caught:
        await submit(service, "bob", PDF + b"%" * 3000)  # over bob's 6000
    assert caught.value.scope == "user"
    await submit(service, "carol", PDF + b"%" * 3000)
    await submit(service, "dave", PDF + b"%" * 2000)
    with pytest.raises(SpoolFull) as caught:
        await submit(service, "erin", PDF + b"%" * 2000)  # over the 10000 total
    assert caught.value.scope == "total"
    await submit(service, "erin", PDF)  # what fits is still taken
    assert list(service.spool.incoming.iterdir()) == []


@pytest_twisted.ensureDeferred
async def test_cancel_deletes_the_document_and_only_the_owner_may(service):
    job = await submit(service, "alice")
    with pytest.raises(JobError):
        await service.cancel(job.id, "mallory")
    cancelled = await service.cancel(job.id, "alice")
    assert cancelled.state is JobState.CANCELED
    assert not service.spool.path(job.spool_name).exists()


@pytest_twisted.ensureDeferred
async def test_recover_removes_files_no_job_references(service):
    job = await submit(service, "alice")
    stray = service.spool.root / "0123.doc"
    stray.write_bytes(b"left by a crash before the job row committed")
    await service.recover()
    assert not stray.exists()
    assert service.spool.path(job.spool_name).exists()

"""Named failpoints: arming, counting, and the sync crash points they guard (a crash
before the primary's answer, in the middle of a batch, before the site saves the
checkpoint) leave every event applied exactly once after the retry."""

from __future__ import annotations

import pytest
import pytest_twisted

from appliance import failpoints
from appliance.failpoints import FailpointHit
from tests.unit.sync_helpers import close, make_primary, make_site


@pytest.fixture(autouse=True)
def disarmed():
    failpoints.arm("")
    yield
    failpoints.arm("")


@pytest.fixture
def nodes(tmp_path):
    primary = make_primary(tmp_path)
    site = make_site(tmp_path, primary, batch=10)
    yield primary, site
    close(site, primary)


def test_arming_checks_names_and_actions():
    with pytest.raises(ValueError, match="unknown failpoint"):
        failpoints.arm("nowhere=kill")
    with pytest.raises(ValueError, match="kill or raise"):
        failpoints.arm("primary.batch.applied=explode")
    failpoints.arm("primary.batch.applied=raise@3")
    failpoints.hit("primary.batch.applied")
    failpoints.hit("primary.batch.applied")
    with pytest.raises(FailpointHit):
        failpoints.hit("primary.batch.applied")
    failpoints.hit("primary.batch.applied")          # only the third hit acts
    failpoints.hit("site.push.acked")                # unarmed: nothing


@pytest_twisted.ensureDeferred
async def test_a_crash_after_the_primary_applied_and_before_it_answered(nodes):
    primary, site = nodes
    site.charge(25)
    failpoints.arm("primary.batch.applied=raise@2")
    assert await site.sync.push_all() is False       # batch 1 acked, batch 2 answer lost
    assert primary.count("SELECT COUNT(*) FROM ledger") == 20
    assert site.count("SELECT COUNT(*) FROM outbox") == 15
    assert await site.sync.push_all() is True
    assert site.sync.stats.duplicates == 10
    assert len(set(primary.ledger_ids())) == len(primary.ledger_ids()) == 25


@pytest_twisted.ensureDeferred
async def test_a_crash_in_the_middle_of_a_batch_applies_none_of_it(nodes):
    primary, site = nodes
    site.charge(10)
    failpoints.arm("primary.batch.mid_apply=raise")
    assert await site.sync.push_all() is False
    assert primary.count("SELECT COUNT(*) FROM ledger") == 0
    assert primary.count("SELECT COUNT(*) FROM sync_events") == 0
    failpoints.arm("")
    assert await site.sync.push_all() is True
    assert primary.count("SELECT COUNT(*) FROM ledger") == 10


@pytest_twisted.ensureDeferred
async def test_a_crash_before_the_site_saved_the_checkpoint(nodes):
    primary, site = nodes
    site.charge(10)
    failpoints.arm("site.push.acked=raise")
    with pytest.raises(FailpointHit):
        await site.sync.push_all()
    assert site.count("SELECT COUNT(*) FROM outbox") == 10
    failpoints.arm("")
    assert await site.sync.push_all() is True
    assert site.sync.stats.duplicates == 10
    assert primary.count("SELECT COUNT(*) FROM ledger") == 10


def test_every_failpoint_is_placed_in_the_code():
    from pathlib import Path

    root = Path(failpoints.__file__).parent
    source = "".join(p.read_text() for p in root.rglob("*.py"))
    for name in failpoints.NAMES:
        assert f'failpoints.hit("{name}")' in source, name

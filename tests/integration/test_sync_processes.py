"""A primary and a site as real `outpost serve` processes, syncing over mutual TLS on
loopback: users imported at the primary reach the site; copies charged at the site
reach the primary; with the primary killed (-9) the site keeps logging users in and
charging them; when the primary is back, the outbox drains and the outage is reported.
"""

from __future__ import annotations

import signal

import pytest

from tests.integration.sync_procs import (  # noqa: F401  (re-exported for benchmarks)
    FAST_LINK,
    api,
    copy,
    deployment,
    query,
    serve,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration


def test_a_site_replicates_pushes_and_outlives_its_primary(tmp_path):
    d = deployment(tmp_path)
    primary_toml, site_toml, api_port = d["primary_toml"], d["site_toml"], d["api_port"]
    hq_db, site_db = d["hq_db"], d["site_db"]

    primary = serve(primary_toml, tmp_path / "hq.log")
    site = serve(site_toml, tmp_path / "branch.log")
    try:
        wait_for(lambda: query(site_db, "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        status, session = api(api_port, "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, session
        assert session["balance"] == 1000
        token = session["session"]
        status, used = api(api_port, "usage", {"id": "c1", "kind": "copy", "pages": 2,
                                               "colour": False, "sides": "one-sided"}, token)
        assert status == 200 and used["charged"] > 0
        wait_for(lambda: query(hq_db, "SELECT COUNT(*) FROM ledger "
                                      "WHERE entry_id = 'branch/usage:c1'") == [(1,)],
                 "the copy to reach the primary")

        primary.send_signal(signal.SIGKILL)
        primary.wait()
        wait_for(lambda: query(site_db, "SELECT value FROM sync_state WHERE key = 'mode'")
                 == [("offline",)], "the site to go offline")
        status, session = api(api_port, "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201, "offline, the site logs users in from its replica"
        for i in range(5):
            status, used = api(api_port, "usage", {"id": f"off{i}", "kind": "copy",
                                                   "pages": 1, "colour": False,
                                                   "sides": "one-sided"}, session["session"])
            assert status == 200
        assert query(site_db, "SELECT COUNT(*) FROM outbox") == [(5,)]

        primary = serve(primary_toml, tmp_path / "hq.log")
        wait_for(lambda: query(hq_db, "SELECT COUNT(*) FROM ledger "
                                      "WHERE entry_id LIKE 'branch/usage:off%'") == [(5,)],
                 "the offline copies to merge")
        wait_for(lambda: query(hq_db, "SELECT events_merged, merged_at IS NOT NULL "
                                      "FROM outage_reports WHERE site = 'branch'") == [(5, 1)],
                 "the outage report")
        hq_balance = query(hq_db, "SELECT SUM(amount) FROM ledger l JOIN accounts a "
                                  "ON a.id = l.account_id WHERE a.name = 'user:alice'")
        wait_for(lambda: query(site_db, "SELECT SUM(amount) FROM ledger l JOIN accounts a "
                                        "ON a.id = l.account_id WHERE a.name = 'user:alice'")
                 == hq_balance, "the same balance on both sides")
        assert query(hq_db, "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
    finally:
        stop(site)
        stop(primary)


def test_kill_9_at_the_sync_failpoints_loses_and_doubles_nothing(tmp_path):
    """The primary dies (SIGKILL) right after committing a batch, before answering; then
    the site dies right after receiving a checkpoint, before saving it. Restarted, they
    settle with every copy in the primary's ledger exactly once."""
    d = deployment(tmp_path)
    hits = tmp_path / "failpoints.log"
    primary = serve(d["primary_toml"], tmp_path / "hq.log", "primary.batch.applied=kill@1",
                    hits)
    site = serve(d["site_toml"], tmp_path / "branch.log", "site.push.acked=kill@1", hits)
    try:
        wait_for(lambda: query(d["site_db"], "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        status, session = api(d["api_port"], "sessions", {"card": "0042", "pin": "1234"})
        assert status == 201
        for i in range(10):
            assert copy(d["api_port"], session["session"], f"c{i}")[0] == 200
        wait_for(lambda: primary.poll() is not None, "the primary to die at its failpoint")
        assert primary.returncode == -signal.SIGKILL
        primary = serve(d["primary_toml"], tmp_path / "hq.log")
        wait_for(lambda: site.poll() is not None, "the site to die at its failpoint")
        assert site.returncode == -signal.SIGKILL
        site = serve(d["site_toml"], tmp_path / "branch.log")
        wait_for(lambda: query(d["site_db"], "SELECT COUNT(*) FROM outbox") == [(0,)],
                 "the outbox to drain")
        ids = [r[0] for r in query(d["hq_db"], "SELECT entry_id FROM ledger "
                                               "WHERE origin = 'branch'")]
        assert sorted(ids) == sorted(f"branch/usage:c{i}" for i in range(10))
        assert query(d["hq_db"], "SELECT COUNT(*) FROM sync_quarantine") == [(0,)]
        assert query(d["hq_db"], "SELECT SUM(duplicates) FROM sync_sites")[0][0] > 0
        hit = {line.split()[0] for line in hits.read_text().splitlines()}
        assert hit == {"primary.batch.applied", "site.push.acked"}
    finally:
        stop(site)
        stop(primary)

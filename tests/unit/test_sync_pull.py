"""Pulling: bootstrap from the snapshot, then follow the change stream page by page; master
data land in the site's tables, ledger rows are replicated (balances derive from them),
and a site's own rows coming back are not doubled."""

from __future__ import annotations

import json

import pytest_twisted

from appliance.core.charging import LAB_POLICY
from appliance.core.model import Device
from appliance.pki import Identity
from appliance.storage.store import NewIdentity, add_user_sync, balance_sync, configure_sync
from appliance.storage.sync_store import changes_since_sync, snapshot_sync
from tests.unit.sync_helpers import close, make_site, seed_users


def identities(node):
    return node.database.run_sync(lambda db: sorted(tuple(r) for r in db.conn.execute(
        "SELECT u.username, i.kind, i.lookup, i.verifier FROM identities i "
        "JOIN users u ON u.id = i.user_id").fetchall()))


def balance(node, account):
    def work(db):
        row = db.conn.execute("SELECT id FROM accounts WHERE name = ?", (account,)).fetchone()
        return None if row is None else balance_sync(db, row[0])

    return node.database.run_sync(work)


SITE_A = Identity("site", "site-a")


async def api_get(primary, path, query="", identity=SITE_A):
    status, body = await primary.api.handle("GET", path, query, b"", identity)
    return status, json.loads(body)


@pytest_twisted.ensureDeferred
async def test_a_new_site_bootstraps_from_the_snapshot_then_follows_the_stream(tmp_path, primary):
    seed_users(primary, 5, balance=1000)
    primary.database.run_sync(lambda db: configure_sync(
        db, [Device("mfd-hq", "ipp", "ipp://hq/ipp/print", True, True, "default", True)],
        {"default": LAB_POLICY}))
    site = make_site(tmp_path, primary)
    try:
        await site.sync.tick()
        assert site.mode.online
        assert site.count("SELECT COUNT(*) FROM users") == 5
        assert identities(site) == identities(primary)
        assert all(balance(site, f"user:user{i}") == 1000 for i in range(5))
        assert site.count("SELECT COUNT(*) FROM replica WHERE kind = 'device'") == 1
        assert site.count("SELECT COUNT(*) FROM replica WHERE kind = 'cost_policy'") == 1
        assert site.count("SELECT COUNT(*) FROM devices") == 0, "its config rules its devices"
        assert site.count("SELECT COUNT(*) FROM outbox") == 0, "replicated rows are not pushed"

        def changes(db):
            db.conn.execute("UPDATE users SET full_name = 'Ada' WHERE username = 'user0'")
            db.conn.execute("UPDATE accounts SET overdraft_limit = 300 "
                            "WHERE name = 'user:user1'")
            user2 = db.conn.execute("SELECT id FROM users WHERE username = 'user2'").fetchone()[0]
            from appliance.storage.store import set_identity_sync

            set_identity_sync(db, user2, NewIdentity("pin", None, "$argon2id$new"))
            db.conn.execute("DELETE FROM identities WHERE lookup = 'hmac-card-3'")
            add_user_sync(db, "zoe", "Zoe", "", [NewIdentity("card", "hmac-zoe", None)], 70)

        primary.database.run_sync(changes)
        site.clock.advance(5)
        await site.sync.tick()
        assert site.count("SELECT COUNT(*) FROM users WHERE full_name = 'Ada'") == 1
        assert site.count("SELECT overdraft_limit FROM accounts WHERE name = 'user:user1'") == 300
        assert identities(site) == identities(primary)
        assert balance(site, "user:zoe") == 70
        assert await site.sync_store.state("pull_token") == str(
            primary.count("SELECT MAX(seq) FROM changes"))
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_the_stream_pages_with_more_and_a_token(tmp_path, primary):
    seed_users(primary, 30)
    everything, head, more = primary.database.run_sync(lambda db: changes_since_sync(db, 0, 10**6))
    assert not more and len(everything) == head == 30 * 5  # account, user, card, pin, seed
    pages, token = [], "0"
    while True:
        status, page = await api_get(primary, "/sync/v1/changes", f"since={token}&limit=7")
        assert status == 200
        pages.append(page)
        assert int(page["token"]) >= int(token)
        token = page["token"]
        if not page["more"]:
            break
    assert len(pages) == -(-150 // 7)
    assert all(len(p["changes"]) == 7 for p in pages[:-1])
    assert [c["body"] for p in pages for c in p["changes"]] == [c.body for c in everything]
    # a site that follows the stream from 0 with small pages ends where the snapshot would
    site = make_site(tmp_path, primary, pull_limit=7)
    try:
        await site.sync_store.set_state("pull_token", "0")
        assert await site.sync.pull_all()
        assert identities(site) == identities(primary)
        assert site.count("SELECT COUNT(*) FROM ledger") == 30
    finally:
        close(site)


@pytest_twisted.ensureDeferred
async def test_bad_tokens_and_limits_are_refused_and_a_token_past_the_end_is_corrected(primary):
    seed_users(primary, 1)
    assert (await api_get(primary, "/sync/v1/changes", "since=abc"))[0] == 400
    assert (await api_get(primary, "/sync/v1/changes", "since=0&limit=0"))[0] == 400
    assert (await api_get(primary, "/sync/v1/changes", "since=0&limit=x"))[0] == 400
    status, page = await api_get(primary, "/sync/v1/changes", "since=999999")
    assert status == 200 and page == {"changes": [], "token": "5", "more": False}
    assert (await api_get(primary, "/sync/v1/changes", "", identity=None))[0] == 401
    assert (await api_get(primary, "/sync/v1/nothing"))[0] == 404
    status, _ = await primary.api.handle("POST", "/sync/v1/changes", "", b"",
                                         Identity("site", "site-a"))
    assert status == 405


@pytest_twisted.ensureDeferred
async def test_a_sites_own_charges_come_back_once_and_other_sites_see_them(tmp_path, primary):
    seed_users(primary, 1, balance=1000)
    a = make_site(tmp_path, primary, "site-a")
    b = make_site(tmp_path, primary, "site-b")
    try:
        await a.sync.tick()
        await b.sync.tick()
        a.charge(20, account="user:user0", amount=10)
        b.charge(5, account="user:user0", amount=7)
        for node in (a, b, a, b):
            node.clock.advance(5)
            await node.sync.tick()
        expected = 1000 - 200 - 35
        assert balance(primary, "user:user0") == expected
        assert balance(a, "user:user0") == expected
        assert balance(b, "user:user0") == expected
        assert a.count("SELECT COUNT(*) FROM ledger") == 1 + 20 + 5
        assert a.count("SELECT COUNT(*) FROM ledger WHERE origin = 'site-b'") == 5
        assert a.count("SELECT COUNT(*) FROM ledger WHERE origin IS NULL") == 20
        assert b.count("SELECT COUNT(*) FROM ledger WHERE entry_id LIKE 'site-a/%'") == 20
        assert a.count("SELECT COUNT(*) FROM outbox") == b.count("SELECT COUNT(*) FROM outbox") == 0
    finally:
        close(a, b)


def test_snapshot_bodies_have_the_change_log_shapes(primary):
    """The triggers (SQL) and the snapshot (Python) write the same JSON for the same rows."""
    seed_users(primary, 3)
    primary.database.run_sync(lambda db: configure_sync(
        db, [Device("m1", "ipp", "ipp://m1/ipp/print", False, True, "default", True)],
        {"default": LAB_POLICY}))

    def local_charge(db):
        from appliance.storage.store import _insert_ledger

        account = db.conn.execute("SELECT id FROM accounts WHERE name = 'user:user0'").fetchone()
        _insert_ledger(db, "usage:at-primary", account[0], -3, "charge", "copy", {"pages": 1},
                       device="m1", impressions=1, colour=True)

    primary.database.run_sync(local_charge)
    logged, _, _ = primary.database.run_sync(lambda db: changes_since_sync(db, 0, 10**6))
    latest = {(c.kind, c.key): c.body for c in logged}
    snapshot, token = primary.database.run_sync(snapshot_sync)
    assert token == logged[-1].token
    assert {(c.kind, c.key): c.body for c in snapshot} == latest
    ledger = latest[("ledger", "primary/usage:at-primary")]
    assert ledger["origin"] == "primary" and ledger["colour"] == 1


def test_the_change_log_carries_no_secrets(primary):
    seed_users(primary, 2)
    logged, _, _ = primary.database.run_sync(lambda db: changes_since_sync(db, 0, 10**6))
    for change in logged:
        if change.kind == "identity":
            assert set(change.body) == {"username", "kind", "lookup", "verifier", "deleted"}
            assert change.body["lookup"] is None or change.body["lookup"].startswith("hmac-")
            assert change.body["verifier"] is None or change.body["verifier"].startswith(
                "$argon2id$")

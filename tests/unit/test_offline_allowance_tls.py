"""Offline allowances end to end through the composition roots: a primary built from a
configuration with `[offline]` and a site built with `[primary]`, real mutual TLS on
loopback, the real reactor, short intervals. The site gets its grant over the wire,
is cut off, authorises copies against the grant (not the balance), and after the
primary returns merges its offline charges, tagged, into the primary's ledger, with the
overspend in the outage report and its reservation released. (Waits are generous: on a
loaded two-core machine a 0.1 s heartbeat loop can lag by seconds.)"""

from __future__ import annotations

import json

import pytest_twisted
from twisted.internet import reactor

from appliance.app import build_site
from appliance.config import parse
from appliance.core.allowance import OFFLINE_ALLOWANCE_EXHAUSTED
from appliance.core.mode import Mode
from appliance.pki import issue, make_ca
from appliance.roles.primary import build_primary
from appliance.storage.store import add_user_sync
from tests.unit.sync_helpers import eventually, fast_primary_link


def primary_config(tmp_path, pki, cert, key, port=0):
    return parse({
        "role": "primary", "name": "hq", "state_dir": str(tmp_path / "hq" / "state"),
        "secrets_dir": str(tmp_path / "hq" / "secrets"),
        "sync": {"port": port, "ca_file": str(pki / "ca.crt"), "cert_file": str(cert),
                 "key_file": str(key)},
        "offline": {"allowance": 300, "validity": 600, "refresh": 0.5,
                    "sites": {"branch": {"allowance": 55, "past_allowance": "overdraft",
                                         "overdraft": 20}}},
    })


@pytest_twisted.ensureDeferred
async def test_a_site_spends_offline_within_its_grant_and_merges_the_overspend(tmp_path):
    ca = make_ca()
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    primary_cert, primary_key = issue(ca, kind="primary", name="hq",
                                      hosts=["127.0.0.1"]).write(pki, "hq")
    site_cert, site_key = issue(ca, kind="site", name="branch").write(pki, "branch")
    primary = build_primary(primary_config(tmp_path, pki, primary_cert, primary_key), reactor)
    port = (await primary.start())["sync"]
    primary.database.run_sync(lambda db: add_user_sync(db, "alice", "A", "", [], 1000))
    site = build_site(parse({
        "name": "branch", "state_dir": str(tmp_path / "branch" / "state"),
        "secrets_dir": str(tmp_path / "branch" / "secrets"),
        "ipp": {"port": 0}, "device_api": {"port": 0}, "lpd": {"port": 0},
        "devices": [{"name": "mfd-1", "uri": "ipp://127.0.0.1:9/ipp/print"}],
        "primary": fast_primary_link(port, pki, site_cert, site_key),
    }), reactor)
    running = [primary]
    try:
        await site.start()

        def grant():
            rows = site.database.run_sync(lambda db: db.conn.execute(
                "SELECT grant_id, amount FROM offline_grants WHERE account = 'user:alice' "
                "AND state = 'active'").fetchall())
            return tuple(rows[0]) if rows else None

        async def granted():
            return grant() is not None

        await eventually(granted, timeout=60)
        grant_id, amount = grant()
        assert amount == 55, "the per-site override, reserved at the primary"
        await primary.stop()
        running.clear()

        async def offline():
            return site.sync.mode.state is Mode.OFFLINE

        await eventually(offline, timeout=60)
        local = await site.store.user_by_name("alice")
        assert local is not None
        auth = await site.accounting.authorise_copy(
            account_id=local.account_id, device="mfd-1", pages=9, colour=False,
            sides="one-sided")
        # 55 + 20 of overdraft: 7 pages of 10 fit, not 9 (the balance alone would allow 100).
        assert (auth.allowed, auth.max_pages, auth.reason) == (False, 7,
                                                               OFFLINE_ALLOWANCE_EXHAUSTED)
        charge = await site.accounting.report_usage(
            usage_id="c1", device="mfd-1", user_id=local.id, account_id=local.account_id,
            kind="copy", pages=7, colour=False, sides="one-sided")
        assert charge.charged == 70

        # The primary returns (same database, same port): merge, report, release.
        primary = build_primary(primary_config(tmp_path, pki, primary_cert, primary_key,
                                               port), reactor)
        await primary.start()
        running.append(primary)

        def merged():
            return primary.database.run_sync(lambda db: db.conn.execute(
                "SELECT l.amount, l.body, r.overspend FROM ledger l, outage_reports r "
                "WHERE l.entry_id = 'branch/usage:c1' AND r.site = 'branch'").fetchall())

        async def has_merged():
            return bool(merged()) and grant() is not None and grant()[0] != grant_id

        await eventually(has_merged, timeout=60)
        (amount_row, body, overspend), = merged()
        assert amount_row == -70 and json.loads(body)["offline"] == {"grant": grant_id,
                                                                    "over": 15}
        assert overspend == 15
        reservation = primary.database.run_sync(lambda db: db.conn.execute(
            "SELECT released_at IS NOT NULL, spent, over FROM offline_reservations "
            "WHERE grant_id = ?", (grant_id,)).fetchone())
        assert tuple(reservation) == (1, 70, 15)
    finally:
        await site.stop()
        for p in running:
            await p.stop()

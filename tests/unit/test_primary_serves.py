"""A primary with `[[devices]]` serves MFDs and queues directly, as a site does: its
charges land in the authoritative ledger, nothing piles up in its outbox, and a site
sees the new balance after its next pull (the change log carries the primary's rows)."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor, threads

from appliance.app import build_site
from appliance.config import parse
from appliance.pki import issue, make_ca
from appliance.roles.primary import build_primary
from simulators.mfd.panel import Panel
from tests.unit.sync_helpers import alice_with_card, eventually, fast_primary_link


def primary_config(tmp_path, pki, cert, key, devices):
    return parse({
        "role": "primary", "name": "hq", "state_dir": str(tmp_path / "hq" / "state"),
        "secrets_dir": str(tmp_path / "hq" / "secrets"),
        "ipp": {"host": "127.0.0.1", "port": 0},
        "device_api": {"host": "127.0.0.1", "port": 0},
        "lpd": {"host": "127.0.0.1", "port": 0},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        "devices": devices,
        "sync": {"port": 0, "ca_file": str(pki / "ca.crt"), "cert_file": str(cert),
                 "key_file": str(key)},
    })


@pytest_twisted.ensureDeferred
async def test_a_primary_without_devices_serves_sync_only(tmp_path):
    ca = make_ca()
    pki = tmp_path / "pki"
    ca.write(pki, "ca")
    cert, key = issue(ca, kind="primary", name="hq", hosts=["127.0.0.1"]).write(pki, "hq")
    primary = build_primary(primary_config(tmp_path, pki, cert, key, []), reactor)
    try:
        assert primary.serving is None
        assert set(await primary.start()) == {"sync"}
    finally:
        await primary.stop()


@pytest_twisted.ensureDeferred
async def test_a_primary_with_devices_serves_and_charges_its_own_ledger(tmp_path):
    ca = make_ca()
    pki = tmp_path / "pki"
    ca.write(pki, "ca")
    cert, key = issue(ca, kind="primary", name="hq", hosts=["127.0.0.1"]).write(pki, "hq")
    site_cert, site_key = issue(ca, kind="site", name="branch").write(pki, "branch")
    primary = build_primary(primary_config(
        tmp_path, pki, cert, key, [{"name": "hq-mfd", "uri": "ipp://127.0.0.1:9/ipp/print"}]),
        reactor)
    ports = await primary.start()
    assert set(ports) == {"sync", "ipp", "device_api", "lpd"}
    assert primary.serving is not None and primary.serving.sync is None
    alice_with_card(primary, tmp_path)

    site = build_site(parse({
        "name": "branch", "state_dir": str(tmp_path / "branch" / "state"),
        "secrets_dir": str(tmp_path / "branch" / "secrets"),
        "ipp": {"port": 0}, "device_api": {"port": 0}, "lpd": {"port": 0},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        "devices": [{"name": "mfd-1", "uri": "ipp://127.0.0.1:9/ipp/print"}],
        "primary": fast_primary_link(ports['sync'], pki, site_cert, site_key),
    }), reactor)
    try:
        await site.start()

        async def site_balance():
            user = await site.store.user_by_name("alice")
            return None if user is None else (await site.store.balance(user.account_id))[0]

        async def site_has_alice():
            return await site_balance() == 1000

        await eventually(site_has_alice)

        # A copy at the primary's own MFD, through its device API over HTTP.
        panel = Panel(f"http://127.0.0.1:{ports['device_api']}/api/v1", "hq-mfd")
        login = await threads.deferToThread(panel.login_card, "0042", "1234")
        assert login["ok"], login
        usage = await threads.deferToThread(panel.report_usage, {
            "id": "copy-hq-1", "kind": "copy", "pages": 2, "colour": False,
            "sides": "one-sided"})
        assert usage["ok"], usage
        charged = usage["charged"]
        assert charged > 0

        def one(sql):
            return primary.database.run_sync(lambda db: db.conn.execute(sql).fetchone()[0])

        # Once, in the authoritative ledger, as the primary's own row; no outbox rows.
        assert one("SELECT COUNT(*) FROM ledger WHERE entry_id = 'usage:copy-hq-1' "
                   "AND origin IS NULL") == 1
        assert one("SELECT COUNT(*) FROM outbox") == 0
        assert one("SELECT COUNT(*) FROM changes WHERE kind = 'ledger' "
                   "AND key = 'hq/usage:copy-hq-1'") == 1

        async def site_sees_it():
            return await site_balance() == 1000 - charged

        await eventually(site_sees_it)
        rows = site.database.run_sync(lambda db: db.conn.execute(
            "SELECT origin, entry_id FROM ledger WHERE amount < 0").fetchall())
        assert [tuple(r) for r in rows] == [("hq", "hq/usage:copy-hq-1")]
        assert await site.sync.store.outbox_size() == 0
    finally:
        await site.stop()
        await primary.stop()

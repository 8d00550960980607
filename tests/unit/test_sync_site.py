"""A site built by the composition root from a configuration with `[primary]`, against a
primary built from its own: real TLS on loopback, the real reactor, short intervals.
The site learns its users from the primary, pushes its charges, and keeps logging users
in and charging them when the primary is gone."""

from __future__ import annotations

import pytest_twisted
from twisted.internet import reactor

from appliance.app import build_site
from appliance.config import parse
from appliance.core.auth import Credentials
from appliance.core.mode import Mode
from appliance.pki import issue, make_ca
from appliance.roles.primary import build_primary
from tests.unit.sync_helpers import alice_with_card, eventually, fast_primary_link


@pytest_twisted.ensureDeferred
async def test_a_configured_site_replicates_pushes_and_serves_offline(tmp_path):
    ca = make_ca()
    pki = tmp_path / "pki"
    (pki).mkdir()
    (pki / "ca.crt").write_bytes(ca.cert_pem)
    primary_cert, primary_key = issue(ca, kind="primary", name="hq",
                                      hosts=["127.0.0.1"]).write(pki, "hq")
    site_cert, site_key = issue(ca, kind="site", name="branch").write(pki, "branch")
    primary = build_primary(parse({
        "role": "primary", "name": "hq", "state_dir": str(tmp_path / "hq" / "state"),
        "secrets_dir": str(tmp_path / "hq" / "secrets"),
        "sync": {"port": 0, "ca_file": str(pki / "ca.crt"), "cert_file": str(primary_cert),
                 "key_file": str(primary_key)},
    }), reactor)
    port = (await primary.start())["sync"]

    # Master data enter at the primary; the card key is the deployment's (copied).
    alice_with_card(primary, tmp_path)

    site = build_site(parse({
        "name": "branch", "state_dir": str(tmp_path / "branch" / "state"),
        "secrets_dir": str(tmp_path / "branch" / "secrets"),
        "ipp": {"port": 0}, "device_api": {"port": 0},
        "auth": {"argon2_time_cost": 1, "argon2_memory_kib": 8192},
        "devices": [{"name": "mfd-1", "uri": "ipp://127.0.0.1:9/ipp/print"}],
        "primary": fast_primary_link(port, pki, site_cert, site_key),
    }), reactor)
    stopped_primary = False
    try:
        await site.start()
        assert site.sync is not None

        async def has_alice():
            return await site.store.user_by_name("alice") is not None

        await eventually(has_alice)
        assert site.sync.mode.state is Mode.ONLINE
        session = await site.auth.login("mfd-1", Credentials(card="0042", pin="1234"))
        charge = await site.accounting.report_usage(
            usage_id="copy-1", device="mfd-1", user_id=session.user_id,
            account_id=session.account_id, kind="copy", pages=3, colour=False,
            sides="one-sided")
        assert charge.balance == 1000 - charge.charged

        async def pushed():
            rows = primary.database.run_sync(lambda db: db.conn.execute(
                "SELECT COUNT(*) FROM ledger WHERE entry_id = 'branch/usage:copy-1'").fetchone())
            return rows[0] == 1

        await eventually(pushed)

        # The primary goes away: the site goes offline and serves as before.
        await primary.stop()
        stopped_primary = True

        async def offline():
            return site.sync.mode.state is Mode.OFFLINE

        await eventually(offline)
        session = await site.auth.login("mfd-1", Credentials(card="0042", pin="1234"))
        again = await site.accounting.report_usage(
            usage_id="copy-2", device="mfd-1", user_id=session.user_id,
            account_id=session.account_id, kind="copy", pages=1, colour=False,
            sides="one-sided")
        assert again.balance == 1000 - charge.charged - again.charged
        assert await site.sync.store.outbox_size() == 1
    finally:
        await site.stop()
        if not stopped_primary:
            await primary.stop()

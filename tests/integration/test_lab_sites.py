"""`outpost lab up --sites N --providers P`: a primary, N sites and P providers as
processes, every uplink through the WAN simulator; endpoints.json's shape; restarts; a
cut link takes a site offline."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from pathlib import Path

import pytest

from simulators.lab.runner import running_lab, wait_until
from simulators.mfd.panel import Panel
from tests.integration.sync_procs import one

pytestmark = pytest.mark.integration


def wan(api: str, method: str, path: str, body: dict | None = None) -> object:
    request = urllib.request.Request(api + path, method=method,
                                     data=json.dumps(body).encode() if body is not None else None,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        raw = response.read()
    return json.loads(raw) if raw else None


def test_primary_two_sites_through_the_wan(tmp_path):
    with running_lab(tmp_path / "lab", sites=2, providers=1, profile="fast") as lab:
        data = lab.endpoints
        assert set(data["primary"]) >= {"pid", "sync", "ipp", "device_api"}
        assert data["primary"]["sync"].startswith("https://127.0.0.1:")
        assert [s["name"] for s in data["sites"]] == ["site-1", "site-2"]
        assert data["site"] == data["sites"][0]
        (provider,) = data["providers"]
        assert set(provider) >= {"name", "pid", "site", "ipp"}
        assert (provider["name"], provider["site"]) == ("provider-1", "site-1")
        assert provider["ipp"].endswith("/printers/findme")
        assert data["wan"]["links"] == {"site-1": "wan-site-1", "site-2": "wan-site-2",
                                        "provider-1": "wan-provider-1"}
        proxies = wan(data["wan"]["api"], "GET", "/proxies")
        assert isinstance(proxies, dict) and set(proxies) == set(data["wan"]["links"].values())
        for site in [*data["sites"], provider]:
            config = Path(site["config"]).read_text()
            assert proxies[data["wan"]["links"][site["name"]]]["listen"] in config
        primary_db = Path(data["primary"]["state_dir"]) / "outpost.sqlite3"

        # A copy at site 2 reaches the primary's ledger through site 2's proxy.
        site2 = data["sites"][1]
        user = data["users"][0]
        panel = Panel(site2["device_api"], site2["mfds"][0]["name"])
        assert panel.login_card(user["card"])["ok"]
        assert panel.report_usage({"id": "lab-sites-1", "kind": "copy", "pages": 1,
                                   "colour": False, "sides": "one-sided"})["ok"]
        wait_until(lambda: one(primary_db, "SELECT COUNT(*) FROM ledger WHERE entry_id = ?",
                               "site-2/usage:lab-sites-1") == 1, 30)

        # Cutting site 1's link takes it offline; healing it brings it back.
        site1_db = Path(data["sites"][0]["state_dir"]) / "outpost.sqlite3"
        api, proxy = data["wan"]["api"], data["wan"]["links"]["site-1"]
        for stream in ("upstream", "downstream"):
            wan(api, "POST", f"/proxies/{proxy}/toxics",
                {"name": f"cut_{stream}", "type": "partition", "stream": stream})
        wait_until(lambda: one(site1_db, "SELECT value FROM sync_state WHERE key = 'mode'")
                   == "offline", 30)
        for stream in ("upstream", "downstream"):
            wan(api, "DELETE", f"/proxies/{proxy}/toxics/cut_{stream}")
        wait_until(lambda: one(site1_db, "SELECT value FROM sync_state WHERE key = 'mode'")
                   == "online", 30)

        # The primary is restarted when it dies, and endpoints.json follows.
        old = data["primary"]["pid"]
        os.kill(old, signal.SIGKILL)
        wait_until(lambda: lab.endpoints["primary"]["pid"] != old, 30)

"""The lab's contracts: endpoints.json's shape, the panel CLI's JSON and exit codes, a clean stop."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from simulators.lab.runner import ROOT, running_lab
from simulators.lab.workstation import print_file

pytestmark = pytest.mark.integration


def panel_cli(lab_dir: Path, *args: str) -> tuple[int, dict]:
    out = subprocess.run([sys.executable, "-m", "appliance.cli", "sim", "panel", "--lab",
                          str(lab_dir), *args], capture_output=True, text=True, timeout=120,
                         cwd=ROOT)
    lines = out.stdout.strip().splitlines()
    return out.returncode, (json.loads(lines[-1]) if lines else {})


def test_endpoints_panel_cli_and_clean_stop(tmp_path, docs):
    lab_dir = tmp_path / "lab"
    with running_lab(lab_dir, mfds=3) as lab:
        data = lab.endpoints
        (site,) = data["sites"]
        for key in ("name", "pid", "state_dir", "ipp", "device_api", "mfds"):
            assert key in site
        assert site["ipp"].startswith("ipp://127.0.0.1:") and site["ipp"].endswith(
            "/printers/findme")
        assert site["device_api"].startswith("http://127.0.0.1:") and site[
            "device_api"].endswith("/api/v1")
        state = Path(site["state_dir"])
        assert (state / "outpost.sqlite3").exists() and (state / "spool").is_dir()
        assert (state / "logs").is_dir()
        names = [site["name"]] + [m["name"] for m in site["mfds"]]
        assert len(names) == len(set(names)) == 4
        for mfd in site["mfds"]:
            assert mfd["ipp"].startswith("ipp://") and Path(mfd["output"]).is_dir()
            assert mfd["queue"] == site["ipp"].replace("/findme", f"/{mfd['name']}")
        assert len(data["users"]) >= 10
        for user in data["users"]:
            assert all(isinstance(user[k], str) for k in ("username", "card", "pin", "password"))
            assert isinstance(user["balance"], int) and user["balance"] >= 10000
        cards = [u["card"] for u in data["users"]]
        assert len(set(cards)) == len(cards)

        alice = lab.user("alice")
        job_id = print_file(site["ipp"], "alice", docs["mono1"])
        time.sleep(0.5)
        code, answer = panel_cli(lab_dir, "--mfd", "mfd-3", "--card", alice["card"], "jobs")
        assert code == 0 and answer["ok"] and answer["error"] is None
        assert [j["id"] for j in answer["jobs"]] == [job_id]
        assert {"id", "name", "pages", "cost"} <= set(answer["jobs"][0])
        code, answer = panel_cli(lab_dir, "--mfd", "mfd-3", "--user", "alice", "--pin",
                                 alice["pin"], "release", str(job_id))
        assert code == 0 and answer["released"] == [job_id]
        code, answer = panel_cli(lab_dir, "--mfd", "mfd-3", "--user", "alice", "--password",
                                 alice["password"], "balance")
        assert code == 0 and answer["balance"] == alice["balance"] - 10
        code, answer = panel_cli(lab_dir, "--mfd", "mfd-3", "--user", "alice", "--password",
                                 "wrong", "balance")
        assert code == 3 and answer["ok"] is False and answer["error"]["code"]
        code, _ = panel_cli(lab_dir, "--mfd", "mfd-3", "balance")
        assert code == 2, "no credentials is a usage error"

        site_pid = site["pid"]
        lab.process.send_signal(signal.SIGTERM)
        assert lab.process.wait(30) == 0
        with pytest.raises(ProcessLookupError):
            for _ in range(100):
                os.kill(site_pid, 0)
                time.sleep(0.1)

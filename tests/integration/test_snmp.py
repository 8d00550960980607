"""SNMP with real peers: net-snmp's snmpwalk against the lab's MFDs, the site's poller
refusing a jammed MFD, and the poller reading a real net-snmp `snmpd`.

The lab's site polls its MFDs every second (mfd-1 over SNMPv3 authPriv, the
others over v2c) and logs each change of a device's state.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from appliance.protocols.snmp.poller import SnmpPoller, SnmpTarget, V3Credentials
from simulators.lab.lab import free_port
from simulators.lab.runner import RunningLab, outputs, sha256, wait_until
from simulators.lab.workstation import print_file

# net-snmp's tools come from `make setup`: a missing one fails, never skips.
pytestmark = [pytest.mark.integration]

LIFE_COUNT = ".1.3.6.1.2.1.43.10.2.1.4"
ALERT_DESCRIPTION = ".1.3.6.1.2.1.43.18.1.1.8"
HR_DEVICE_STATUS = ".1.3.6.1.2.1.25.3.2.1.5.1"
HR_PRINTER_STATUS = ".1.3.6.1.2.1.25.3.5.1.1.1"
HR_ERROR_STATE = ".1.3.6.1.2.1.25.3.5.1.2.1"


@pytest.fixture(scope="module")
def snmp_home(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """net-snmp's tools keep state in SNMP_PERSISTENT_DIR: ours, not /var/lib/snmp."""
    home = tmp_path_factory.mktemp("snmp-home")
    return {**os.environ, "SNMP_PERSISTENT_DIR": str(home), "MIBS": "", "MIBDIRS": str(home)}


def net_snmp(tool: str, lab: RunningLab, mfd: str, oid: str, env: dict[str, str], *,
             version: str = "v2c", community: str | None = None,
             v3: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    snmp = lab.mfd(mfd)["snmp"]
    args = [tool, "-On", "-t", "1", "-r", "0"]
    if version == "v2c":
        args += ["-v2c", "-c", community or snmp["community"]]
    else:
        keys = {**snmp["v3"], **(v3 or {})}
        args += ["-v3", "-l", "authPriv", "-u", keys["user"], "-a", keys["auth_protocol"],
                 "-A", keys["auth_key"], "-x", keys["priv_protocol"], "-X", keys["priv_key"]]
    args += [f"{snmp['host']}:{snmp['port']}", oid]
    return subprocess.run(args, capture_output=True, text=True, timeout=30, env=env)


def walk(lab: RunningLab, mfd: str, oid: str, env: dict[str, str], **kw: Any) -> dict[str, str]:
    out = net_snmp("snmpwalk", lab, mfd, oid, env, **kw)
    assert out.returncode == 0, out.stderr
    return {m[0]: m[1] for m in re.findall(r"^(\S+) = (.*)$", out.stdout, re.M)}


def life_counts(lab: RunningLab, mfd: str, env: dict[str, str], **kw: Any) -> dict[str, int]:
    values = walk(lab, mfd, LIFE_COUNT, env, **kw)
    return {oid: int(value.split(": ")[1]) for oid, value in values.items()}


def held(lab: RunningLab, user: str, mfd: str = "mfd-2") -> list[dict[str, Any]]:
    with lab.panel(mfd, user) as panel:
        jobs: list[dict[str, Any]] = panel.jobs()["jobs"]
        return jobs


def wait_held_analysed(lab: RunningLab, user: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        jobs = held(lab, user)
        return jobs if len(jobs) == count and all(j["analysed"] for j in jobs) else None

    jobs: list[dict[str, Any]] = wait_until(ready)
    return jobs


def site_log(lab: RunningLab) -> str:
    return (Path(lab.site["state_dir"]) / "logs" / "site.log").read_text(errors="replace")


def wait_logged(lab: RunningLab, text: str, after: int = 0, timeout: float = 15.0) -> None:
    wait_until(lambda: text in site_log(lab)[after:], timeout=timeout)


def counter_checks(lab: RunningLab, job_id: int) -> list[dict[str, Any]]:
    with lab.db() as db:
        return [dict(r) for r in db.execute(
            "SELECT * FROM device_counter_checks WHERE job_id = ? ORDER BY id", (job_id,))]


# ---------------------------------------------------------------- net-snmp against the simulator


def test_snmpwalk_shows_the_life_count_advance_by_the_pages_of_a_release(
        lab: RunningLab, docs: dict[str, Path], snmp_home: dict[str, str]) -> None:
    first = f"{LIFE_COUNT}.1.1"
    before_v2 = life_counts(lab, "mfd-2", snmp_home)
    before_v3 = life_counts(lab, "mfd-2", snmp_home, version="v3")
    assert before_v2 == before_v3 and set(before_v2) == {first, f"{LIFE_COUNT}.1.2"}
    print_file(lab.site["ipp"], "alice", docs["mono3"])
    (job,) = wait_held_analysed(lab, "alice", 1)
    with lab.panel("mfd-2", "alice") as panel:
        answer = panel.release("all")
    assert answer["ok"], answer
    after_v2 = life_counts(lab, "mfd-2", snmp_home)
    after_v3 = life_counts(lab, "mfd-2", snmp_home, version="v3")
    assert after_v2[first] - before_v2[first] == 3
    assert after_v3[first] - before_v3[first] == 3
    assert after_v2 == after_v3
    # The site measured the same delta around the release and found it matches.
    (check,) = wait_until(lambda: counter_checks(lab, job["id"]))
    assert (check["device"], check["status"], check["counter_delta"], check["impressions"],
            check["difference"]) == ("mfd-2", "ok", 3, 3, 0)
    assert check["counter_after"] == after_v2[first]


@pytest.mark.parametrize(("how", "message"), [
    ({"community": "not-the-community"}, "Timeout"),
    ({"version": "v3", "v3": {"auth_key": "wrong-auth-key"}}, "Authentication failure"),
    ({"version": "v3", "v3": {"priv_key": "wrong-priv-key"}}, "Decryption error"),
    ({"version": "v3", "v3": {"user": "mallory"}}, "Unknown user name"),
])
def test_wrong_community_or_keys_get_no_data(lab: RunningLab, snmp_home: dict[str, str],
                                             how: dict[str, Any], message: str) -> None:
    out = net_snmp("snmpwalk", lab, "mfd-1", LIFE_COUNT, snmp_home, **how)
    assert out.returncode != 0
    assert "Counter32" not in out.stdout and out.stdout.strip() == ""
    assert message in out.stdout + out.stderr


def test_snmpget_reads_single_objects_and_missing_ones(lab: RunningLab,
                                                       snmp_home: dict[str, str]) -> None:
    out = net_snmp("snmpget", lab, "mfd-2", ".1.3.6.1.2.1.1.1.0", snmp_home)
    assert out.returncode == 0 and "Outpost simulated MFD mfd-2" in out.stdout
    out = net_snmp("snmpget", lab, "mfd-2", ".1.3.6.1.2.1.43.10.2.1.4.1.9", snmp_home)
    assert "No Such Instance" in out.stdout
    out = net_snmp("snmpget", lab, "mfd-2", ".1.3.6.1.4.1.2021.4.5.0", snmp_home)
    assert "No Such Object" in out.stdout


# ---------------------------------------------------------------- the site's poller and a jam


def test_a_jammed_mfd_is_refused_with_a_reason_and_the_job_releases_at_another(
        lab: RunningLab, docs: dict[str, Path], snmp_home: dict[str, str]) -> None:
    print_file(lab.site["ipp"], "bob", docs["mono3"])
    (job,) = wait_held_analysed(lab, "bob", 1)
    mark = len(site_log(lab))
    # A jam that stays until someone clears it: one page comes out, then the MFD stops.
    lab.set_fault("mfd-1", {"mode": "jam", "after_pages": 1, "once": False})
    try:
        with lab.panel("mfd-1", "bob") as panel:
            answer = panel.release("all")
        assert not answer["ok"] and answer["error"]["code"] == "device_error"
        assert answer["charged"] == 10
        # What the poller sees, net-snmp sees too.
        assert walk(lab, "mfd-1", HR_PRINTER_STATUS, snmp_home) == {
            HR_PRINTER_STATUS: "INTEGER: 1"}
        assert walk(lab, "mfd-1", HR_DEVICE_STATUS, snmp_home, version="v3") == {
            HR_DEVICE_STATUS: "INTEGER: 5"}
        assert walk(lab, "mfd-1", HR_ERROR_STATE, snmp_home)[HR_ERROR_STATE].startswith(
            "Hex-STRING: 04 00")
        alerts = walk(lab, "mfd-1", ALERT_DESCRIPTION, snmp_home)
        assert list(alerts.values()) == ['STRING: "Paper jam"']
        wait_logged(lab, "device mfd-1: jammed", after=mark)
        with lab.panel("mfd-1", "bob") as panel:
            assert panel.jobs()["device"] == {"state": "jammed", "reasons": ["jammed"],
                                              "ready": False, "reason": "mfd-1 is jammed"}

        jobs_at_mfd1 = len(outputs(lab, "mfd-1"))
        with lab.panel("mfd-1", "bob") as panel:
            refused = panel.release("all")
        assert not refused["ok"]
        assert refused["error"] == {"code": "device_unavailable", "message": "mfd-1 is jammed"}
        assert refused["charged"] == 0 and refused["failed"][0]["id"] == job["id"]
        assert [j["id"] for j in held(lab, "bob")] == [job["id"]], "the job stays held"
        assert len(outputs(lab, "mfd-1")) == jobs_at_mfd1, "nothing was sent to mfd-1"

        already = set(outputs(lab, "mfd-2"))
        with lab.panel("mfd-2", "bob") as panel:
            released = panel.release("all")
        assert released["ok"] and released["released"] == [job["id"]]
        assert released["charged"] == 30
        (new,) = [p for p in outputs(lab, "mfd-2") if p not in already]
        assert sha256(new) == sha256(docs["mono3"])

        # mfd-1's direct queue does not send to a jammed MFD either: the job is held
        # (as after a failed send; IPP Release-Job can send it again).
        print_file(lab.mfd("mfd-1")["queue"], "bob", docs["mono1"], job_name="direct-to-jammed")

        def direct_job() -> tuple[str, str] | None:
            with lab.db() as db:
                row = db.execute("SELECT state, state_message FROM jobs WHERE owner = 'bob' "
                                 "AND queue = 'mfd-1' ORDER BY id DESC").fetchone()
            return tuple(row) if row is not None and row[0] != "pending" else None

        assert wait_until(direct_job) == ("held", "mfd-1 is jammed")
        assert len(outputs(lab, "mfd-1")) == jobs_at_mfd1
    finally:
        lab.set_fault("mfd-1", {"mode": "none"})
    wait_logged(lab, "device mfd-1: idle", after=mark)
    # Both attempts were measured: one impression on mfd-1 before the jam, three on mfd-2.
    checks = wait_until(lambda: (lambda c: c if len(c) == 2 else None)(
        counter_checks(lab, job["id"])))
    assert [(c["attempt"], c["device"], c["counter_delta"], c["impressions"], c["status"])
            for c in checks] == [(1, "mfd-1", 1, 1, "ok"), (2, "mfd-2", 3, 3, "ok")]


def set_sensors(lab: RunningLab, mfd: str, body: dict[str, Any]) -> dict[str, Any]:
    import json
    import urllib.request

    request = urllib.request.Request(f"{lab.mfd(mfd)['control']}/sensors",
                                      data=json.dumps(body).encode(), method="POST",
                                      headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def test_an_open_door_is_refused_and_low_toner_is_not(lab: RunningLab,
                                                      docs: dict[str, Path]) -> None:
    print_file(lab.site["ipp"], "carol", docs["mono1"])
    (job,) = wait_held_analysed(lab, "carol", 1)
    mark = len(site_log(lab))
    set_sensors(lab, "mfd-2", {"door_open": True})
    try:
        wait_logged(lab, "device mfd-2: door_open", after=mark)
        with lab.panel("mfd-2", "carol") as panel:
            refused = panel.release("all")
        assert refused["error"] == {"code": "device_unavailable",
                                    "message": "mfd-2 has a door open"}
        assert [j["id"] for j in held(lab, "carol")] == [job["id"]]
    finally:
        set_sensors(lab, "mfd-2", {"door_open": False, "supplies": {"black": 4}})
    wait_logged(lab, "device mfd-2: toner_low", after=mark)
    with lab.panel("mfd-2", "carol") as panel:
        released = panel.release("all")
    assert released["ok"] and released["released"] == [job["id"]], "low toner is a warning"
    set_sensors(lab, "mfd-2", {"supplies": {"black": 100}})


# ---------------------------------------------------------------- a real snmpd


@pytest.fixture
def snmpd(tmp_path: Path) -> Iterator[int]:
    """A private net-snmp snmpd on a loopback UDP port (the system's snmpd is left alone)."""
    binary = shutil.which("snmpd") or "/usr/sbin/snmpd"
    port = free_port()
    conf = tmp_path / "snmpd.conf"
    conf.write_text(
        f"agentAddress udp:127.0.0.1:{port}\n"
        "rocommunity public 127.0.0.1\n"
        'createUser outpost SHA "outpost-auth-key" AES "outpost-priv-key"\n'
        "rouser outpost priv\n"
        "sysDescr Outpost test snmpd\n"
        f"persistentDir {tmp_path}\n"
    )
    env = {**os.environ, "SNMP_PERSISTENT_DIR": str(tmp_path), "MIBS": "",
           "MIBDIRS": str(tmp_path)}
    log = open(tmp_path / "snmpd.log", "wb")
    process = subprocess.Popen([binary, "-f", "-Lo", "-C", "-c", str(conf), "-p",
                                str(tmp_path / "snmpd.pid")], stdout=log,
                               stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 15
        while True:
            probe = subprocess.run(["snmpget", "-v2c", "-c", "public", "-t", "0.2", "-r", "0",
                                    f"127.0.0.1:{port}", ".1.3.6.1.2.1.1.3.0"],
                                   capture_output=True, env=env)
            if probe.returncode == 0:
                break
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("snmpd did not start: " +
                                   (tmp_path / "snmpd.log").read_text(errors="replace"))
            time.sleep(0.1)
        yield port
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


@pytest_twisted.ensureDeferred
async def test_the_poller_reads_sysdescr_and_sysuptime_from_a_real_snmpd(snmpd: int) -> None:
    v3 = V3Credentials("outpost", "outpost-auth-key", "outpost-priv-key")
    poller = SnmpPoller([SnmpTarget("snmpd", "127.0.0.1", snmpd, "public"),
                         SnmpTarget("wrong", "127.0.0.1", snmpd, "private"),
                         SnmpTarget("v3", "127.0.0.1", snmpd, None, v3),
                         SnmpTarget("v3-wrong", "127.0.0.1", snmpd, None,
                                    V3Credentials("outpost", "outpost-auth-key", "wrong-priv"))],
                        reactor=reactor, interval=0.2, timeout=0.5, retries=0)
    try:
        first = await poller.poll_once("snmpd")
        await task.deferLater(reactor, 0.3, lambda: None)
        second = await poller.poll_once("snmpd")
        assert first is not None and second is not None
        assert first.sys_descr == "Outpost test snmpd"
        assert first.sys_uptime is not None and second.sys_uptime is not None
        assert second.sys_uptime > first.sys_uptime >= 0
        # No Printer-MIB there: the poller says what it does not know, and no more.
        assert (first.state, first.page_count, first.reachable) == ("unknown", None, True)
        wrong = await poller.poll_once("wrong")
        assert wrong is not None and wrong.reasons == ("no_response",)
        # SNMPv3 authPriv (SHA + AES-128) with net-snmp's USM, and wrong keys.
        over_v3 = await poller.poll_once("v3")
        assert over_v3 is not None and over_v3.sys_descr == "Outpost test snmpd", over_v3
        assert over_v3.sys_uptime is not None and over_v3.sys_uptime >= second.sys_uptime
        refused = await poller.poll_once("v3-wrong")
        assert refused is not None and refused.sys_descr is None
        # (net-snmp drops what it cannot decrypt: no report, so the poller sees silence)
        assert refused.reasons in (("snmp_auth_failed",), ("no_response",)), refused
    finally:
        await poller.stop()

"""LPD end to end over a real lab, with real peers.

The lab runs with `--lpd-mfds 1`: mfd-2 is an LPD-only device at the site.
rlpr and CUPS's lpd backend (run directly, as cupsd would) print to the
site's Find-Me queue over LPD; the jobs are held for the control file's
owner with the site's page count; a release at mfd-2 goes out over LPD and
prints byte-identical. Bad input gets the negative acknowledgement, a closed
connection and leaves no job and no spool file.
"""

from __future__ import annotations

import getpass
import json
import os
import re
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from simulators.lab.runner import RunningLab, outputs, running_lab, sha256, wait_until

pytestmark = pytest.mark.integration

CUPS_LPD = Path("/usr/lib/cups/backend/lpd")
# rlpr and CUPS's lpd backend come from `make setup`: a missing one fails, never skips.
needs_rlpr = pytest.mark.integration
needs_cups = pytest.mark.integration


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningLab]:
    with running_lab(tmp_path_factory.mktemp("lpdlab"), mfds=2, users=12, lpd_mfds=1) as running:
        yield running


def held(lab: RunningLab, user: str) -> list[dict[str, Any]]:
    with lab.panel("mfd-1", user) as panel:
        jobs: list[dict[str, Any]] = panel.jobs()["jobs"]
        return jobs


def wait_held(lab: RunningLab, user: str, count: int) -> list[dict[str, Any]]:
    def ready() -> list[dict[str, Any]] | None:
        jobs = held(lab, user)
        return jobs if len(jobs) == count and all(j["analysed"] for j in jobs) else None
    jobs: list[dict[str, Any]] = wait_until(ready)
    return jobs


def rows(lab: RunningLab, owner: str) -> list[tuple[Any, ...]]:
    with lab.db() as db:
        return [tuple(r) for r in db.execute(
            "SELECT owner, name, state, pages, copies FROM jobs WHERE owner = ? ORDER BY id",
            (owner,))]


def spool_files(lab: RunningLab) -> set[str]:
    spool = Path(lab.site["state_dir"]) / "spool"
    return {str(p.relative_to(spool)) for p in spool.rglob("*") if p.is_file()}


def rlpr(lab: RunningLab, path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["rlpr", "-N", "-H", "127.0.0.1", f"--port={lab.site['lpd_port']}", "-P", "findme",
         *extra, str(path)], capture_output=True, text=True, timeout=60)


def cups_lpd(uri: str, user: str, title: str, copies: int, path: Path
             ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(CUPS_LPD), "42", user, title, str(copies), "", str(path)],
                          env={**os.environ, "DEVICE_URI": uri}, capture_output=True,
                          text=True, timeout=90)


def raw(port: int, data: bytes, pause: float = 0.3) -> bytes:
    """Send `data`, wait for the server to answer or close, return what it said."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(data)
        time.sleep(pause)
        s.shutdown(socket.SHUT_WR)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
        return got


def test_endpoints_name_the_lpd_queues(lab: RunningLab) -> None:
    site = lab.site
    assert site["lpd"] == f"lpd://127.0.0.1:{site['lpd_port']}/findme"
    for mfd in site["mfds"]:
        assert mfd["lpd"].startswith("lpd://127.0.0.1:") and mfd["lpd"].endswith(mfd["name"])
    assert [m["site_protocol"] for m in site["mfds"]] == ["ipp", "lpd"]
    assert 'protocol = "lpd"' in Path(site["config"]).read_text()


@needs_rlpr
def test_rlpr_makes_a_held_job_with_owner_and_pages(lab: RunningLab, docs: dict[str, Path]
                                                    ) -> None:
    out = rlpr(lab, docs["mono3"], "-U", "alice", "-J", "quarterly")
    assert out.returncode == 0, out.stderr
    (job,) = wait_held(lab, "alice", 1)
    assert (job["pages"], job["cost"], job["colour"]) == (3, 30, False)
    assert rows(lab, "alice") == [("alice", "quarterly", "held", 3, 1)]


@needs_rlpr
def test_rlpr_as_given_owner_is_the_local_user(lab: RunningLab, docs: dict[str, Path]) -> None:
    me = getpass.getuser()
    before = len(rows(lab, me))
    out = rlpr(lab, docs["colour2"])
    assert out.returncode == 0, out.stderr
    found = wait_until(lambda: rows(lab, me)[before:] or None)
    ((owner, name, state, pages, copies),) = found
    assert (owner, state, pages, copies) == (me, "held", 2, 1)
    assert name.endswith("colour2.pdf")    # rlpr's J is the path it was given


@needs_cups
def test_cups_lpd_backend_makes_a_held_job(lab: RunningLab, docs: dict[str, Path]) -> None:
    uri = lab.site["lpd"]
    out = cups_lpd(uri, "bob", "Board minutes", 1, docs["mono4"])
    assert out.returncode == 0, out.stderr[-2000:]
    (job,) = wait_held(lab, "bob", 1)
    assert (job["pages"], job["cost"]) == (4, 40)
    assert rows(lab, "bob") == [("bob", "Board minutes", "held", 4, 1)]


@needs_cups
def test_cups_lpd_backend_data_first_and_copies_as_print_lines(lab: RunningLab,
                                                               docs: dict[str, Path]) -> None:
    uri = lab.site["lpd"] + "?order=data,control&manual_copies=no"
    out = cups_lpd(uri, "carol", "two copies", 2, docs["mono3"])
    assert out.returncode == 0, out.stderr[-2000:]
    (job,) = wait_held(lab, "carol", 1)
    assert (job["pages"], job["cost"]) == (3, 60)
    assert rows(lab, "carol") == [("carol", "two copies", "held", 3, 2)]


@needs_rlpr
def test_release_to_an_lpd_only_mfd_prints_byte_identical(lab: RunningLab,
                                                          docs: dict[str, Path]) -> None:
    out = rlpr(lab, docs["mono3"], "-U", "dave")
    assert out.returncode == 0, out.stderr
    wait_held(lab, "dave", 1)
    control = lab.mfd("mfd-2")["control"]
    counters = json.loads(urllib.request.urlopen(control, timeout=10).read())["counters"]
    already = set(outputs(lab, "mfd-2"))
    with lab.panel("mfd-2", "dave") as panel:
        answer = panel.release("all")
    assert answer["ok"], answer
    assert answer["charged"] == 30
    new = wait_until(lambda: [p for p in outputs(lab, "mfd-2") if p not in already] or None)
    assert len(new) == 1 and sha256(new[0]) == sha256(docs["mono3"]), "byte-identical output"
    after = wait_until(lambda: (lambda c: c if c["total"] >= counters["total"] + 3 else None)(
        json.loads(urllib.request.urlopen(control, timeout=10).read())["counters"]))
    assert after["total"] == counters["total"] + 3
    with lab.db() as db:
        (state, device, remote) = db.execute(
            "SELECT state, device, remote_job_uri FROM jobs WHERE owner = 'dave'").fetchone()
    assert (state, device) == ("completed", "mfd-2")
    assert remote.startswith(lab.mfd("mfd-2")["lpd"] + "#")
    assert held(lab, "dave") == []


@pytest.mark.parametrize(("conversation", "answer"), [
    (b"\x02nosuch\n", b"\x01"),                                   # unknown queue
    (b"\x07findme\n", b"\x01"),                                   # no such command
    (b"\x02findme\n\x0399999999999 dfA001ws\n", b"\x00\x01"),     # larger than the spool takes
    (b"\x02findme\n\x0270000 cfA001ws\n", b"\x00\x01"),           # control file too large
    # truncated files: the client half-closes, so the refusal can still be read
    (b"\x02findme\n\x0220 cfA001ws\nPerin\nldfA001ws\n", b"\x00\x00\x01"),
    (b"\x02findme\n\x0229 cfA001ws\nPerin\nJx\nldfA001ws\nUdfA001ws\n\x00"
     b"\x03100000 dfA001ws\n%PDF-1.4 and then nothing more", b"\x00\x00\x00\x00\x01"),
    (b"\x02findme\n\x0217 cfA001ws\nJx\nldfA001ws\n\x00", b"\x00\x00\x01"),  # no owner (P)
])
def test_bad_input_nack_close_and_no_partial_job(lab: RunningLab, conversation: bytes,
                                                 answer: bytes) -> None:
    before_jobs = len(rows(lab, "erin"))
    before_files = spool_files(lab)
    assert raw(lab.site["lpd_port"], conversation) == answer   # and the server closed
    time.sleep(0.2)
    assert len(rows(lab, "erin")) == before_jobs
    assert spool_files(lab) == before_files


@needs_rlpr
def test_rlpq_and_rlprm(lab: RunningLab, docs: dict[str, Path]) -> None:
    """rlprm removes as the local user (the agent): its own job goes, others' stay."""
    me = getpass.getuser()
    out = rlpr(lab, docs["mono1"], "-J", "to-remove")
    assert out.returncode == 0, out.stderr
    out = rlpr(lab, docs["mono1"], "-U", "frank", "-J", "franks")
    assert out.returncode == 0, out.stderr
    wait_held(lab, "frank", 1)
    with lab.db() as db:
        mine = db.execute("SELECT id FROM jobs WHERE owner = ? AND name = 'to-remove'",
                          (me,)).fetchone()[0]
        franks = db.execute("SELECT id FROM jobs WHERE owner = 'frank'").fetchone()[0]
    port = lab.site["lpd_port"]
    where = ["-N", "-H", "127.0.0.1", f"--port={port}", "-P", "findme"]
    listing = subprocess.run(["rlpq", *where], capture_output=True, text=True, timeout=30)
    assert "frank" in listing.stdout and "to-remove" in listing.stdout, listing
    for job_id in (franks, mine):
        removed = subprocess.run(["rlprm", *where, str(job_id)], capture_output=True, text=True,
                                 timeout=30)
        assert removed.returncode == 0, removed.stderr
    with lab.db() as db:
        states = dict(db.execute("SELECT id, state FROM jobs WHERE id IN (?, ?)",
                                 (mine, franks)).fetchall())
    assert states == {mine: "canceled", franks: "held"}


# ---------------------------------------------------------------- durability, under strace

LPD_ACK = re.compile(r'^(\d+)\s+(?:sendto|write|sendmsg|writev)\((\d+)<TCP:\[[^\]]*:(\d+)->'
                     r'[^\]]*\]>,\s+"\\0"')


@needs_rlpr
def test_the_last_lpd_acknowledgement_follows_the_fsyncs(tmp_path: Path,
                                                         docs: dict[str, Path]) -> None:
    """rlpr: control file, then data file. The data file's acknowledgement (the 5th octet
    written on the LPD connection) comes after the spool file, its folder and the WAL
    were fsync'd; the four before it come before any of those."""
    from tests.integration.test_durability import FSYNC, FSYNC_RESUMED, FSYNC_STARTED

    trace = tmp_path / "site.trace"
    prefix = (f"strace -f -qq -o {trace} -yy -s 48 "
              "-e trace=fsync,fdatasync,sendto,write,sendmsg,writev")
    with running_lab(tmp_path / "lab", mfds=1, env={"OUTPOST_LAB_SITE_PREFIX": prefix}) as lab:
        out = rlpr(lab, docs["mono1"], "-U", "alice")
        assert out.returncode == 0, out.stderr
        lpd_port = lab.site["lpd_port"]
    events: list[tuple[str, str]] = []
    pending: dict[str, str] = {}
    for line in trace.read_text(errors="replace").splitlines():
        if m := FSYNC.match(line):
            events.append(("fsync", m.group(3)))
        elif m := FSYNC_STARTED.match(line):
            pending[m.group(1)] = m.group(3)
        elif (m := FSYNC_RESUMED.match(line)) and m.group(1) in pending:
            events.append(("fsync", pending.pop(m.group(1))))
        elif (m := LPD_ACK.match(line)) and int(m.group(3)) == lpd_port:
            events.append(("ack", ""))
    acks = [i for i, e in enumerate(events) if e[0] == "ack"]
    assert len(acks) == 5, events
    synced = [e[1] for e in events[acks[3]:acks[4]] if e[0] == "fsync"]
    doc = next(i for i, p in enumerate(synced) if "/spool/" in p and p.endswith((".doc", ".part")))
    folder = next(i for i, p in enumerate(synced) if p.endswith("/spool") and i > doc)
    wal = next(i for i, p in enumerate(synced) if p.endswith("outpost.sqlite3-wal") and i > folder)
    assert doc < folder < wal
    before = [e[1] for e in events[:acks[3]] if e[0] == "fsync" and "/spool/" in e[1]]
    assert before == [], "nothing of this job was made durable before its data arrived"

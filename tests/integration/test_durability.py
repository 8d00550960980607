"""Acknowledge only what is durable: kill -9 after acknowledgements, and the fsync order under strace."""

from __future__ import annotations

import os
import re
import signal

import pytest

from simulators.lab.runner import outputs, running_lab, sha256, wait_until
from simulators.lab.workstation import print_file

pytestmark = pytest.mark.integration


def test_kill_9_after_an_acknowledged_print_job_keeps_the_job_and_its_document(lab, docs):
    pid = lab.site["pid"]
    job_id = print_file(lab.site["ipp"], "mallory", docs["mixed3"])
    os.kill(pid, signal.SIGKILL)  # right after the acknowledgement
    lab.wait_for_restart(pid)
    with lab.panel("mfd-2", "mallory") as panel:
        jobs = panel.jobs()["jobs"]
        assert [j["id"] for j in jobs] == [job_id]
        assert jobs[0]["pages"] == 3
        already = set(outputs(lab, "mfd-2"))
        answer = panel.release("all")
    assert answer["ok"], answer
    (new,) = [p for p in outputs(lab, "mfd-2") if p not in already]
    assert sha256(new) == sha256(docs["mixed3"]), "document intact after kill -9"


def test_kill_9_after_an_acknowledged_charge_keeps_it_exactly_once(lab, docs):
    print_file(lab.site["ipp"], "niaj", docs["mono1"])
    wait_until(lambda: lab.db().execute(
        "SELECT analysed FROM jobs WHERE owner = 'niaj'").fetchone()[0])
    with lab.panel("mfd-1", "niaj") as panel:
        before = panel.balance()["balance"]
        answer = panel.release("all")
        assert answer["ok"] and answer["charged"] == 10
        copied = panel.copy(2)
        assert copied["ok"] and copied["charged"] == 20
    pid = lab.site["pid"]
    os.kill(pid, signal.SIGKILL)
    lab.wait_for_restart(pid)
    conn = lab.db()
    rows = conn.execute(
        "SELECT l.source, COUNT(*) AS n FROM ledger l JOIN accounts a ON a.id = l.account_id "
        "WHERE a.name = 'user:niaj' AND l.kind = 'charge' GROUP BY l.source").fetchall()
    assert {r["source"]: r["n"] for r in rows} == {"print": 1, "copy": 1}
    with lab.panel("mfd-1", "niaj") as panel:
        assert panel.balance()["balance"] == before - 30


# ---------------------------------------------------------------- the order, under strace

FSYNC = re.compile(r"^(\d+)\s+f(?:data)?sync\((\d+)<([^>]*)>\)\s+=\s+0")
FSYNC_STARTED = re.compile(r"^(\d+)\s+f(?:data)?sync\((\d+)<([^>]*)> <unfinished \.\.\.>")
FSYNC_RESUMED = re.compile(r"^(\d+)\s+<\.\.\. f(?:data)?sync resumed>\)\s+=\s+0")
SEND = re.compile(r"^(\d+)\s+(?:sendto|write|sendmsg|writev)\((\d+)<TCP:\[[^\]]*:(\d+)->"
                  r"[^\]]*\]>,\s+\"HTTP/1\.1 (\d+)")


def parse_trace(path):
    """Completed events in the order strace logged them: ('fsync', path) when the fsync
    returned, and ('answer', port, status) when the answer's first bytes were sent.

    Threads interleave: strace splits a call as `<unfinished ...>` and `<... resumed>`;
    an fsync counts where it finished.
    """
    events = []
    pending: dict[str, str] = {}
    for line in path.read_text(errors="replace").splitlines():
        if m := FSYNC.match(line):
            events.append(("fsync", m.group(3)))
        elif m := FSYNC_STARTED.match(line):
            pending[m.group(1)] = m.group(3)
        elif (m := FSYNC_RESUMED.match(line)) and m.group(1) in pending:
            events.append(("fsync", pending.pop(m.group(1))))
        elif m := SEND.match(line):
            events.append(("answer", int(m.group(3)), int(m.group(4))))
    return events


def test_fsyncs_come_before_every_acknowledgement(tmp_path, docs):
    trace = tmp_path / "site.trace"
    prefix = (f"strace -f -qq -o {trace} -yy -s 48 "
              "-e trace=fsync,fdatasync,sendto,write,sendmsg,writev")
    with running_lab(tmp_path / "lab", env={"OUTPOST_LAB_SITE_PREFIX": prefix}) as lab:
        ipp_port, api_port = lab.site["ipp_port"], lab.site["device_api_port"]
        print_file(lab.site["ipp"], "alice", docs["mono1"])
        wait_until(lambda: lab.db().execute(
            "SELECT analysed FROM jobs WHERE owner = 'alice'").fetchone()[0])
        with lab.panel("mfd-1", "alice") as panel:
            assert panel.release("all")["ok"]
            assert panel.copy(1)["ok"]
    events = parse_trace(trace)
    answers = [i for i, e in enumerate(events) if e[0] == "answer" and e[2] == 200]
    assert answers, "the trace shows the site's answers"

    def fsyncs_between(start, end):
        return [e[1] for e in events[start:end] if e[0] == "fsync"]

    # The Print-Job answer: spool file, then spool folder, then the database's WAL.
    ipp_answers = [i for i in answers if events[i][1] == ipp_port]
    assert ipp_answers
    synced = fsyncs_between(0, ipp_answers[0])
    doc = next(i for i, p in enumerate(synced) if "/spool/" in p and p.endswith((".doc", ".part")))
    folder = next(i for i, p in enumerate(synced) if p.endswith("/spool") and i > doc)
    wal = next(i for i, p in enumerate(synced) if p.endswith("outpost.sqlite3-wal") and i > folder)
    assert doc < folder < wal

    # The panel's calls, in order: login (201), release, copy authorise, usage, logout.
    # Release and usage acknowledge charges: a WAL fsync must come after the answer before.
    api = [i for i, e in enumerate(events) if e[0] == "answer" and e[1] == api_port]
    assert [events[i][2] for i in api] == [201, 200, 200, 200, 200]
    for position in (1, 3):
        window = fsyncs_between(api[position - 1], api[position])
        assert any(p.endswith("outpost.sqlite3-wal") for p in window), (position, window)

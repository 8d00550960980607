"""A site whose disk is full stops accepting new jobs with a clear IPP and device-API error
and loses nothing acknowledged; it accepts again once space returns.

Real full disks: a small tmpfs mounted for the test (the suite runs as root, as `make
test` does; a machine that cannot mount fails here rather than skipping) and SQLite's own
`max_page_count` limit, which fails a write with SQLITE_FULL exactly as a full disk does.
The site under test is a real `outpost serve` process with its state folder on the tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor

from appliance.protocols.ipp import codec
from appliance.protocols.ipp.constants import GroupTag, Operation, Status, ValueTag
from appliance.storage.database import Database
from appliance.storage.disk import DiskFull, free_bytes, is_disk_full
from appliance.storage.spool import Spool
from simulators.lab.lab import free_port
from simulators.lab.workstation import PrintRefused, make_pdf, print_file, send
from tests.integration.sync_procs import api, port_open, query, serve, stop, wait_for

MB = 1024 * 1024


@pytest.fixture
def tiny_fs(tmp_path):
    """A fresh tmpfs of 16 MiB, unmounted afterwards whatever happens."""
    mount_point = tmp_path / "fs"
    mount_point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m,mode=0755", "tmpfs",
                           str(mount_point)], capture_output=True, text=True)
    assert done.returncode == 0, f"these tests mount a tmpfs (run as root): {done.stderr}"
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(folder: Path) -> Path:
    """Write a file until the filesystem says ENOSPC; return it (delete it to free space)."""
    filler = folder / "filler"
    chunk = b"\0" * (64 * 1024)
    with open(filler, "wb", buffering=0) as out:
        try:
            while True:
                out.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    small = b"\0" * 512
    with open(filler, "ab", buffering=0) as out:     # the last partial blocks too
        try:
            while True:
                out.write(small)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    return filler


def test_full_disk_errors_are_recognised_through_their_chain():
    assert is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert is_disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert not is_disk_full(OSError(errno.EIO, "Input/output error"))
    assert is_disk_full(sqlite3.OperationalError("database or disk is full"))
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError("no such savepoint: request") from None
    except sqlite3.OperationalError as outer:
        assert not is_disk_full(outer)          # `from None` hides it ...
    try:
        try:
            raise sqlite3.OperationalError("database or disk is full")
        except sqlite3.OperationalError:
            raise sqlite3.OperationalError("no such savepoint: request")  # noqa: B904
    except sqlite3.OperationalError as outer:
        assert is_disk_full(outer)              # ... an implicit context does not


def test_the_spool_refuses_on_enospc_and_below_its_floor_and_keeps_what_it_held(tiny_fs):
    spool = Spool(tiny_fs / "spool", max_document=64 * MB, max_per_user=64 * MB,
                  max_total=64 * MB, min_free=1 * MB)
    held = spool.begin("alice", 0, 0)
    held.write(b"%PDF-1.4 held document\n" * 1000)
    kept = held.commit()
    digest = hashlib.sha256(kept.read_bytes()).hexdigest()

    # The floor: a document may not eat into the last MiB ...
    doc = spool.begin("alice", 0, 0)
    with pytest.raises(DiskFull, match="floor"):
        for _ in range(16 * 16):
            doc.write(b"x" * 65536)
    assert list(spool.incoming.iterdir()) == [], "the refused document is gone"
    # ... and below it no document starts.
    filler = fill(tiny_fs)
    assert free_bytes(tiny_fs) < 1 * MB
    with pytest.raises(DiskFull, match="full"):
        spool.begin("alice", 0, 0)
    # A real ENOSPC in the middle of a document (no floor: the write itself fails).
    filler.unlink()
    spool.min_free = 0
    spool.free_bytes = lambda path: 1 << 40       # as if statvfs could not tell
    doc = spool.begin("alice", 0, 0)
    with pytest.raises(DiskFull, match="No space left"):
        for _ in range(32 * 16):
            doc.write(b"y" * 65536)
        doc.commit()
    assert list(spool.incoming.iterdir()) == [] and spool.names() == {kept.name}
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == digest, "held document intact"
    # Space is back: documents are accepted again.
    spool.free_bytes = free_bytes
    spool.min_free = 1 * MB
    again = spool.begin("alice", 0, 0)
    again.write(b"%PDF-1.4 after\n")
    assert again.commit().exists()


@pytest_twisted.ensureDeferred
async def test_a_full_database_refuses_with_disk_full_and_keeps_every_commit(tmp_path):
    database = Database(tmp_path / "full.sqlite3", reactor)
    database.open()
    try:
        await database.run(lambda db: db.conn.execute(
            "CREATE TABLE charges (id TEXT PRIMARY KEY, body BLOB)"))
        await database.run(lambda db: db.conn.execute(
            "INSERT INTO charges VALUES ('acked', zeroblob(100))"))
        pages = await database.run(lambda db: db.conn.execute(
            "PRAGMA page_count").fetchone()[0])
        assert database._conn is not None
        database._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
        refused = 0
        for i in range(20):
            try:
                await database.run(lambda db, i=i: db.conn.execute(
                    "INSERT INTO charges VALUES (?, zeroblob(3000))", (f"c{i}",)))
            except DiskFull:
                refused += 1
        assert refused > 0, "the database filled up"
        ids = await database.run(lambda db: [r[0] for r in db.conn.execute(
            "SELECT id FROM charges ORDER BY rowid")])
        assert ids[0] == "acked" and len(ids) == 21 - refused, "every commit kept, no partial"
        database._conn.execute("PRAGMA max_page_count = 1073741823")
        await database.run(lambda db: db.conn.execute(
            "INSERT INTO charges VALUES ('later', zeroblob(3000))"))
    finally:
        database.close()


# ---------------------------------------------------------------- a real site process


def ipp_status(queue: str, operation: Operation, user: str, data: bytes | None = None,
               ) -> tuple[int, str]:
    message = codec.request(operation, 7, queue, user=user, extra=[
        codec.attr("job-name", ValueTag.NAME, "full"),
        codec.attr("document-format", ValueTag.MIME_MEDIA_TYPE, "application/pdf")])
    message.data = data or b""
    answer = send(queue, message)
    return answer.code, str(answer.get(GroupTag.OPERATION, "status-message"))


def printer_state(queue: str) -> tuple[str, bool]:
    """(printer-state-reasons, printer-is-accepting-jobs) of a queue."""
    answer = send(queue, codec.request(Operation.GET_PRINTER_ATTRIBUTES, 8, queue, user="x"))
    assert answer.code == Status.SUCCESSFUL_OK
    return (str(answer.get(GroupTag.PRINTER, "printer-state-reasons")),
            bool(answer.get(GroupTag.PRINTER, "printer-is-accepting-jobs")))


def test_a_site_with_a_full_disk_refuses_new_work_clearly_and_loses_nothing(tiny_fs, tmp_path):
    state = tiny_fs / "state"
    ipp_port, api_port = free_port(), free_port()
    config = tmp_path / "site.toml"
    config.write_text(
        f'role = "site"\nname = "branch"\nstate_dir = "{state}"\n'
        f'secrets_dir = "{tmp_path}/secrets"\n'
        f'[ipp]\nport = {ipp_port}\n[device_api]\nport = {api_port}\n[lpd]\nport = {free_port()}\n'
        "[auth]\nargon2_memory_kib = 8192\n[jobs]\nmin_free_mb = 2\nuse_ghostscript = false\n"
        '[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n')
    users = tmp_path / "users.json"
    users.write_text(json.dumps([{"username": "alice", "card": "0042", "pin": "1234",
                                  "balance": 1000}]))
    subprocess.run([sys.executable, "-m", "appliance.cli", "users", "import", "--config",
                    str(config), str(users)], check=True, capture_output=True)
    queue = f"ipp://127.0.0.1:{ipp_port}/printers/findme"
    pdf = make_pdf(tmp_path / "one.pdf", 1)
    site = serve(config, tmp_path / "site.log")
    db = state / "outpost.sqlite3"
    try:
        wait_for(lambda: port_open(ipp_port) and port_open(api_port), "the site to listen")
        held = print_file(queue, "alice", pdf, document_format="application/pdf")
        token = api(api_port, "sessions", {"card": "0042"})[1]["session"]
        usage = {"kind": "copy", "pages": 1, "colour": False, "sides": "one-sided"}
        assert api(api_port, "usage", {"id": "before", **usage}, token)[0] == 200
        (spooled,) = [p for p in (state / "spool").iterdir() if p.is_file()]
        digest = hashlib.sha256(spooled.read_bytes()).hexdigest()

        assert printer_state(queue) == ("none", True)
        filler = fill(tiny_fs)
        # IPP: the queue says so (RFC 8011 'spool-area-full'), and Print-Job and
        # Create-Job are refused, temporarily, saying why.
        assert printer_state(queue) == ("spool-area-full", False)
        with pytest.raises(PrintRefused) as refused:
            print_file(queue, "alice", pdf, document_format="application/pdf")
        assert refused.value.status == Status.SERVER_ERROR_TEMPORARY_ERROR
        code, text = ipp_status(queue, Operation.CREATE_JOB, "alice")
        assert code == Status.SERVER_ERROR_TEMPORARY_ERROR and "disk is full" in text, text
        code, text = ipp_status(queue, Operation.PRINT_JOB, "alice", pdf.read_bytes())
        assert (code, text) == (Status.SERVER_ERROR_TEMPORARY_ERROR,
                                "The print server's disk is full; the job was not accepted. "
                                "Try again later")
        # The device API: a copy cannot be recorded, and says so (507, disk_full).
        status, answer = api(api_port, "usage", {"id": "during", **usage}, token)
        assert (status, answer["error"]["code"]) == (507, "disk_full"), answer
        # Nothing half-made, nothing acknowledged lost.
        assert query(db, "SELECT id FROM jobs") == [(held,)]
        assert list((state / "spool" / "incoming").iterdir()) == []
        assert hashlib.sha256(spooled.read_bytes()).hexdigest() == digest
        assert api(api_port, "jobs", None, token, method="GET")[1]["jobs"][0]["id"] == held

        filler.unlink()                 # space returns: accepted again, nothing latched
        assert printer_state(queue) == ("none", True)
        again = print_file(queue, "alice", pdf, document_format="application/pdf")
        assert api(api_port, "usage", {"id": "during", **usage}, token)[0] == 200
        assert sorted(r[0] for r in query(db, "SELECT id FROM jobs")) == sorted([held, again])
        assert sorted(r[0] for r in query(db, "SELECT entry_id FROM ledger "
                                              "WHERE entry_id LIKE 'usage:%'")) == \
            ["usage:before", "usage:during"]
        assert site.poll() is None, "the site kept running throughout"
    finally:
        stop(site)
        os.sync()

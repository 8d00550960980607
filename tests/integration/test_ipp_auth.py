"""IPP Basic authentication over ipps://, checked by the directory (a real slapd) or the
cached verifier: `lp -U alice` with alice's password makes an alice job; a wrong password,
or a name claimed without credentials, makes none.

`lp` asks for the password with cupsGetPassword2's default callback, which reads
/dev/tty (getpass): there is no environment variable or option for it. The test
runs `lp` on a pseudo-terminal it controls and types the password at the prompt,
with `CUPS_ENCRYPTION=Always` (lp's `-E` means an HTTP Upgrade, not ipps://) and
a private HOME (CUPS keeps the trusted-on-first-use certificate there).
"""

from __future__ import annotations

import fcntl
import os
import pty
import select
import subprocess
import termios
import time
from pathlib import Path

import pytest
import pytest_twisted

from appliance.protocols.ipp.constants import Status
from appliance.storage.database import connect

from .directory_site import ipp_print, job_id_of, off_reactor, start_site, write_config
from .slapd import Person, Slapd

pytestmark = [pytest.mark.integration]

ALICE_PW = "Alice-ipp-pw-91"
BOB_PW = "Bob-ipp-pw-92"
DOC = b"%!PS-Adobe-3.0\n%%Pages: 1\n%%Page: 1 1\nshowpage\n%%EOF\n"


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd-ipp"))
    server.start([Person("alice", ALICE_PW), Person("bob", BOB_PW)])
    yield server
    server.stop()


def jobs(site) -> list[tuple[int, str, str]]:
    conn = connect(site.config.database_path)
    try:
        return [tuple(r) for r in conn.execute("SELECT id, owner, queue FROM jobs ORDER BY id")]
    finally:
        conn.close()


async def tls_site(slapd, folder: Path, **ipp):
    cert, key = slapd.ca.issue("ipp-site", ["localhost", "127.0.0.1"])
    config = write_config(folder, slapd, auth={"max_failures": 1000}, ipp={
        "auth": "basic", "tls_cert_file": str(cert), "tls_key_file": str(key), **ipp})
    return await start_site(config)


def run_lp(port: int, user: str, password: str, document: Path, home: Path,
           max_prompts: int = 2, timeout: float = 30.0) -> tuple[int, str, int]:
    """`lp -U user` on a pseudo-terminal, typing `password` at each prompt (at most
    `max_prompts`; then lp is stopped). Returns (exit status, output, prompts answered)."""
    home.mkdir(parents=True, exist_ok=True)
    master, slave = pty.openpty()

    def controlling_tty() -> None:
        os.setsid()
        fcntl.ioctl(slave, termios.TIOCSCTTY, 0)

    env = {**os.environ, "HOME": str(home), "CUPS_ENCRYPTION": "Always"}
    env.pop("CUPS_SERVER", None)
    process = subprocess.Popen(
        ["lp", "-h", f"localhost:{port}", "-U", user, "-d", "findme", str(document)],
        stdin=slave, stdout=slave, stderr=slave, preexec_fn=controlling_tty, env=env)
    os.close(slave)
    output, prompts = b"", 0
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 4096)
                except OSError:
                    break
                if not chunk:
                    break
                output += chunk
                if b"assword" in output.rsplit(b"\n", 1)[-1]:
                    if prompts >= max_prompts:
                        break
                    os.write(master, password.encode() + b"\n")
                    prompts += 1
                    output += b"\n"
            elif process.poll() is not None:
                break
    finally:
        if process.poll() is None:
            process.terminate()
        status = process.wait(10)
        os.close(master)
    return status, output.decode(errors="replace"), prompts


@pytest_twisted.ensureDeferred
async def test_lp_with_alice_password_makes_an_alice_job_and_a_wrong_one_none(slapd, tmp_path):
    site = await tls_site(slapd, tmp_path / "site")
    try:
        port = site.ports_used["ipp"]
        document = tmp_path / "doc.ps"
        document.write_bytes(DOC)
        status, output, prompts = await off_reactor(run_lp, port, "alice", ALICE_PW, document,
                                                    tmp_path / "home")
        assert status == 0 and "request id is findme-" in output, output
        assert prompts == 1
        assert [(owner, queue) for _, owner, queue in jobs(site)] == [("alice", "findme")]
        status, output, prompts = await off_reactor(run_lp, port, "alice", "wrong-password",
                                                    document, tmp_path / "home")
        assert status != 0 and prompts == 2, output    # asked again: not accepted
        status, output, _ = await off_reactor(run_lp, port, "bob", ALICE_PW, document,
                                              tmp_path / "home")
        assert status != 0, "bob with alice's password is not bob"
        assert len(jobs(site)) == 1
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_claimed_names_without_or_with_bad_credentials_are_challenged(slapd, tmp_path):
    site = await tls_site(slapd, tmp_path / "site")
    try:
        port, ca = site.ports_used["ipp"], slapd.ca.ca_file
        for basic in (None, ("alice", "wrong"), ("alice", ""), ("", ALICE_PW),
                      ("*", ALICE_PW), ("nobody", ALICE_PW)):
            http, answer, headers = await off_reactor(ipp_print, port, "findme", DOC,
                                                      user="alice", basic=basic, tls_ca=ca)
            assert http == 401, basic
            assert answer.code == Status.CLIENT_ERROR_NOT_AUTHENTICATED
            assert headers["www-authenticate"].startswith('Basic realm="outpost"')
        assert jobs(site) == []
        # Credentials decide the owner, whatever requesting-user-name claims.
        http, answer, _ = await off_reactor(ipp_print, port, "findme", DOC, user="bob",
                                            basic=("alice", ALICE_PW), tls_ca=ca)
        assert http == 200 and answer.code == Status.SUCCESSFUL_OK
        job_id = job_id_of(answer)
        assert [(i, o) for i, o, _ in jobs(site)] == [(job_id, "alice")]
        # Get-Printer-Attributes stays open and says what the queue wants.
        from appliance.protocols.ipp import codec
        from appliance.protocols.ipp.constants import GroupTag, Operation

        from .directory_site import _ids

        def attributes() -> codec.Message:
            import http.client
            import ssl

            message = codec.request(Operation.GET_PRINTER_ATTRIBUTES, next(_ids),
                                    f"ipps://localhost:{port}/printers/findme")
            conn = http.client.HTTPSConnection(
                "localhost", port, context=ssl.create_default_context(cafile=str(ca)))
            conn.request("POST", "/printers/findme", body=codec.encode(message),
                         headers={"Content-Type": "application/ipp"})
            return codec.decode(conn.getresponse().read())

        answer = await off_reactor(attributes)
        assert answer.get(GroupTag.PRINTER, "uri-authentication-supported") == "basic"
        assert answer.get(GroupTag.PRINTER, "uri-security-supported") == "tls"
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_basic_uses_the_cached_verifier_when_the_directory_is_down(slapd, tmp_path):
    site = await tls_site(slapd, tmp_path / "site")
    try:
        port, ca = site.ports_used["ipp"], slapd.ca.ca_file
        http, _, _ = await off_reactor(ipp_print, port, "findme", DOC,
                                       basic=("bob", BOB_PW), tls_ca=ca)
        assert http == 200
        from dataclasses import replace

        directory = site.auth.directory
        directory.settings = replace(directory.settings, url="ldap://127.0.0.1:1")
        http, answer, _ = await off_reactor(ipp_print, port, "findme", DOC,
                                            basic=("bob", BOB_PW), tls_ca=ca)
        assert http == 200 and answer.code == Status.SUCCESSFUL_OK
        http, _, _ = await off_reactor(ipp_print, port, "findme", DOC,
                                       basic=("alice", ALICE_PW), tls_ca=ca)
        assert http == 401, "alice has no saved password here"
        assert [o for _, o, _ in jobs(site)] == ["bob", "bob"]
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_a_queue_trusting_requesting_user_name_beside_a_basic_one(slapd, tmp_path):
    cert, key = slapd.ca.issue("ipp-mixed", ["localhost"])
    devices = ('[[devices]]\nname = "mfd-1"\nuri = "ipp://127.0.0.1:9/ipp/print"\n'
               'ipp_auth = "requesting-user-name"\n')
    config = write_config(tmp_path, slapd, devices=devices, ipp={
        "auth": "basic", "tls_cert_file": str(cert), "tls_key_file": str(key)})
    site = await start_site(config)
    try:
        port, ca = site.ports_used["ipp"], slapd.ca.ca_file
        http, answer, _ = await off_reactor(ipp_print, port, "mfd-1", DOC, user="carol",
                                            tls_ca=ca)
        assert http == 200 and answer.code < 0x0400
        http, _, _ = await off_reactor(ipp_print, port, "findme", DOC, user="carol", tls_ca=ca)
        assert http == 401
    finally:
        await site.stop()


def test_basic_without_tls_is_refused_off_loopback(tmp_path):
    from appliance.config import ConfigError, parse

    with pytest.raises(ConfigError) as caught:
        parse({"name": "s", "state_dir": str(tmp_path / "s"), "secrets_dir": str(tmp_path / "k"),
               "ipp": {"host": "0.0.0.0", "auth": "basic"}})
    assert any("ipps://" in e for e in caught.value.errors)
    parse({"name": "s", "state_dir": str(tmp_path / "s"), "secrets_dir": str(tmp_path / "k"),
           "ipp": {"host": "127.0.0.1", "auth": "basic"}})

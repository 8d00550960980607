"""Password logins against a real slapd: online bind, offline cache, expiry, LDAPS, injection,
a directory that is slow, refuses or talks garbage, card linking and throttling at the panel."""

from __future__ import annotations

import itertools
import socket
import threading
import time
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from appliance.protocols.ldap.client import LdapDirectory, LdapSettings
from appliance.storage.database import connect

from .directory_site import Api, off_reactor, start_site, write_config
from .slapd import PEOPLE, READER_DN, READER_PW, Person, Slapd

pytestmark = [pytest.mark.integration]

PASSWORDS = {"alice": "Alice-dir-pw-71", "bob": "Bob-dir-pw-72", "o'brien": "Obrien-dir-pw-73",
             "smithj": "Smith-dir-pw-74", "dave": "Dave-dir-pw-75"}


@pytest.fixture(scope="module")
def slapd(tmp_path_factory):
    server = Slapd(tmp_path_factory.mktemp("slapd"))
    people = [Person(uid, pw) for uid, pw in PASSWORDS.items() if uid != "smithj"]
    people.append(Person("smithj", PASSWORDS["smithj"], cn="Smith, John"))
    # Decoys an injected filter would match if the username were not escaped.
    people += [Person(f"decoy{i}", "Alice-dir-pw-71") for i in range(3)]
    server.start(people)
    yield server
    server.stop()


def dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]   # closed again: connections are refused


def password_rows(site, username):
    conn = connect(site.config.database_path)
    try:
        return conn.execute(
            "SELECT i.verifier, i.verified_at FROM identities i JOIN users u ON u.id = i.user_id "
            "WHERE u.username = ? AND i.kind = 'password'", (username,)).fetchall()
    finally:
        conn.close()


def point_directory_at(site, url):
    directory = site.auth.directory
    from dataclasses import replace

    directory.settings = replace(directory.settings, url=url)


@pytest_twisted.ensureDeferred
async def test_bind_online_then_offline_with_fresh_verifier_then_refused_when_expired(
        slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd))
    try:
        api = Api(site.ports_used["device_api"])
        status, answer = await off_reactor(api.login, username="alice",
                                           password=PASSWORDS["alice"])
        assert status == 201 and answer["user"]["username"] == "alice", answer
        ((verifier, verified_at),) = password_rows(site, "alice")
        assert verifier.startswith("$argon2id$") and PASSWORDS["alice"] not in verifier
        assert abs(verified_at - time.time()) < 60
        # Online, the directory decides: a wrong password is refused.
        status, answer = await off_reactor(Api(api.port).login, username="alice",
                                           password="not-her-password")
        assert (status, answer["error"]["code"]) == (401, "invalid_credentials")

        point_directory_at(site, f"ldap://127.0.0.1:{dead_port()}")   # refused: offline
        status, answer = await off_reactor(Api(api.port).login, username="alice",
                                           password=PASSWORDS["alice"])
        assert status == 201, answer
        status, answer = await off_reactor(Api(api.port).login, username="alice",
                                           password="not-her-password")
        assert (status, answer["error"]["code"]) == (401, "invalid_credentials")
        # bob never logged in here: no verifier, a clear refusal.
        status, answer = await off_reactor(Api(api.port).login, username="bob",
                                           password=PASSWORDS["bob"])
        assert (status, answer["error"]["code"]) == (503, "directory_unavailable")
        assert "no saved password" in answer["error"]["message"]
        # A day and a bit later, alice's saved password is too old.
        site.auth.clock = lambda: time.time() + 25 * 3600
        status, answer = await off_reactor(Api(api.port).login, username="alice",
                                           password=PASSWORDS["alice"])
        assert (status, answer["error"]["code"]) == (503, "directory_unavailable")
        assert "too old" in answer["error"]["message"]
        # Back online, the bind refreshes the verifier and its age.
        point_directory_at(site, slapd.ldap_url)
        status, answer = await off_reactor(Api(api.port).login, username="alice",
                                           password=PASSWORDS["alice"])
        assert status == 201, answer
        assert password_rows(site, "alice")[0][1] > time.time() + 24 * 3600
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_directory_accepts_someone_the_site_does_not_know(slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd))
    try:
        status, answer = await off_reactor(Api(site.ports_used["device_api"]).login,
                                           username="dave", password=PASSWORDS["dave"])
        assert (status, answer["error"]["code"]) == (403, "unknown_user")
    finally:
        await site.stop()


@pytest.mark.parametrize("how", ["ldaps", "starttls"])
@pytest_twisted.ensureDeferred
async def test_ldaps_and_starttls_verify_against_the_test_ca(slapd, tmp_path, how):
    url = slapd.ldaps_url("localhost") if how == "ldaps" else \
        f"ldap://localhost:{slapd.ldap_port}"
    site = await start_site(write_config(tmp_path, slapd, url=url,
                                         directory={"starttls": how == "starttls"}))
    try:
        status, answer = await off_reactor(Api(site.ports_used["device_api"]).login,
                                           username="alice", password=PASSWORDS["alice"])
        assert status == 201, answer
    finally:
        await site.stop()


@pytest.mark.parametrize("how", ["name-mismatch", "foreign-ca", "starttls-mismatch"])
@pytest_twisted.ensureDeferred
async def test_a_certificate_that_does_not_verify_is_refused(slapd, tmp_path, how):
    url = {"name-mismatch": slapd.ldaps_url("127.0.0.1"),
           "foreign-ca": slapd.ldaps_url("localhost"),
           "starttls-mismatch": slapd.ldap_url}[how]
    directory = {"starttls": how == "starttls-mismatch"}
    if how == "foreign-ca":
        from .slapd import TestCa

        directory["ca_file"] = str(TestCa(tmp_path / "other-ca", "Someone Else").ca_file)
    site = await start_site(write_config(tmp_path, slapd, url=url, directory=directory))
    try:
        status, answer = await off_reactor(Api(site.ports_used["device_api"]).login,
                                           username="alice", password=PASSWORDS["alice"])
        assert (status, answer["error"]["code"]) == (503, "directory_unavailable"), answer
        assert password_rows(site, "alice") == [], "nothing learnt from an untrusted server"
    finally:
        await site.stop()


def test_certificate_errors_read_well_in_the_log(slapd):
    directory = LdapDirectory(LdapSettings(
        url=slapd.ldaps_url("127.0.0.1"), base_dn=PEOPLE, bind_dn=READER_DN,
        bind_password=READER_PW, ca_file=str(slapd.ca.ca_file), timeout=2), reactor)
    from appliance.core.directory import DirectoryUnavailable

    with pytest.raises(DirectoryUnavailable) as caught:
        directory.check_blocking("alice", PASSWORDS["alice"])
    assert "does not match" in str(caught.value)
    assert PASSWORDS["alice"] not in str(caught.value) and READER_PW not in str(caught.value)


INJECTIONS = ["*", "*)(uid=*", "alice)(|(uid=*", "*)(|(objectClass=*)", "al*", "decoy*",
              "\\", "alice\\", "alice)", "(uid=alice)", "*)(userPassword=*"]


@pytest_twisted.ensureDeferred
async def test_injection_attempts_match_no_one_and_real_names_still_work(slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd, auth={"max_failures": 1000}))
    try:
        port = site.ports_used["device_api"]
        for name in INJECTIONS:
            # alice's password is also every decoy's: a filter that matched anyone would let in
            status, answer = await off_reactor(Api(port).login, username=name,
                                               password=PASSWORDS["alice"])
            assert (status, answer["error"]["code"]) == (401, "invalid_credentials"), name
        for name in ("alice\x00", "a" * 300, "\x01alice"):
            status, answer = await off_reactor(Api(port).login, username=name,
                                               password=PASSWORDS["alice"])
            assert (status, answer["error"]["code"]) == (400, "bad_request"), repr(name)
        for name in ("o'brien", "smithj"):   # smithj's DN is cn=Smith\, John,...
            status, answer = await off_reactor(Api(port).login, username=name,
                                               password=PASSWORDS[name])
            assert status == 201 and answer["user"]["username"] == name, answer
        assert not any(password_rows(site, f"decoy{i}") for i in range(3))
    finally:
        await site.stop()


def test_a_name_with_dn_metacharacters_found_by_cn(slapd):
    """A filter on cn: the typed name 'Smith, John' is escaped for the filter, the DN comes
    from the server, and the account is the entry's uid."""
    directory = LdapDirectory(LdapSettings(
        url=slapd.ldap_url, base_dn=PEOPLE, user_filter="(cn={username})", bind_dn=READER_DN,
        bind_password=READER_PW, timeout=2), reactor)
    answer = directory.check_blocking("Smith, John", PASSWORDS["smithj"])
    assert answer.accepted and answer.username == "smithj"
    assert answer.dn is not None and answer.dn.lower().startswith("cn=smith\\")
    assert not directory.check_blocking("Smith, John", "wrong").accepted
    assert not directory.check_blocking("Smith*", PASSWORDS["smithj"]).accepted
    assert not directory.check_blocking("smithj", "").accepted, "no unauthenticated bind"


class SilentServer:
    """Accepts connections and either says nothing or answers with garbage."""

    def __init__(self, garbage: bytes | None) -> None:
        self.garbage = garbage
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.held: list[socket.socket] = []
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.held.append(conn)
            if self.garbage is not None:
                try:
                    conn.recv(4096)
                    conn.sendall(self.garbage)
                except OSError:
                    pass

    def close(self) -> None:
        self.sock.close()
        for conn in self.held:
            conn.close()


@pytest.mark.parametrize("kind", ["silent", "garbage", "ber-garbage", "refused"])
@pytest_twisted.ensureDeferred
async def test_a_bad_directory_blocks_neither_the_reactor_nor_other_logins(slapd, tmp_path,
                                                                           kind):
    site = await start_site(write_config(tmp_path, slapd, directory={"pool_size": 2},
                                         auth={"max_failures": 1000}))
    server = None
    try:
        port = site.ports_used["device_api"]
        status, _ = await off_reactor(Api(port).login, username="alice",
                                      password=PASSWORDS["alice"])
        assert status == 201   # a cached verifier from a good day
        if kind == "refused":
            bad = dead_port()
        else:
            garbage = {"silent": None, "garbage": b"\xff" * 64 + b"HTTP/1.1 200 OK\r\n\r\n",
                       "ber-garbage": bytes.fromhex("3084ffffffff0201")}[kind]
            server = SilentServer(garbage)
            bad = server.port
        point_directory_at(site, f"ldap://127.0.0.1:{bad}")
        ticks: list[float] = []
        ticker = task.LoopingCall(lambda: ticks.append(time.monotonic()))
        ticker.start(0.05)
        started = time.monotonic()
        # Six password logins at once against a pool of two, and card logins meanwhile.
        logins = [off_reactor(Api(port).login, username="alice", password=PASSWORDS["alice"])
                  for _ in range(6)]
        card_started = time.monotonic()
        status, answer = await off_reactor(Api(port).login, card="0007000001")
        card_took = time.monotonic() - card_started
        assert status == 201 and answer["user"]["username"] == "bob"
        results = [await d for d in logins]
        took = time.monotonic() - started
        ticker.stop()
        # Every login finished, by the cached verifier, within the deadline.
        assert [s for s, _ in results] == [201] * 6, results
        assert took < site.auth.directory.deadline + 3
        assert card_took < 2.0, "a card login does not wait for the directory"
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert max(gaps, default=0.0) < 0.5, "the reactor kept running"
    finally:
        if server is not None:
            server.close()
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_a_paused_slapd_times_out_and_the_cache_decides(slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd))
    try:
        port = site.ports_used["device_api"]
        assert (await off_reactor(Api(port).login, username="bob",
                                  password=PASSWORDS["bob"]))[0] == 201
        slapd.pause()
        try:
            started = time.monotonic()
            status, answer = await off_reactor(Api(port).login, username="bob",
                                               password=PASSWORDS["bob"])
            assert status == 201, answer
            assert time.monotonic() - started < site.auth.directory.deadline + 2
        finally:
            slapd.resume()
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_link_a_card_at_the_panel_after_a_password_login_even_offline(slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd))
    try:
        port = site.ports_used["device_api"]
        # A card session may not link cards.
        by_card = Api(port)
        assert (await off_reactor(by_card.login, card="0004123456"))[0] == 201
        status, answer, _ = await off_reactor(by_card.call, "POST", "cards",
                                              {"card": "0009999991"})
        assert (status, answer["error"]["code"]) == (403, "password_session_required")
        # carol has no card; she logs in once online (so the site keeps her verifier)...
        first = Api(port)
        await off_reactor(first.login, username="carol", password="x")  # not in the directory
        assert (await off_reactor(Api(port).login, username="alice",
                                  password=PASSWORDS["alice"]))[0] == 201
        # ...then, offline, alice links a new card (read by a hex reader) with her password.
        point_directory_at(site, f"ldap://127.0.0.1:{dead_port()}")
        panel = Api(port, device="mfd-hex")
        status, answer = await off_reactor(panel.login, username="alice",
                                           password=PASSWORDS["alice"])
        assert status == 201, answer
        status, answer, _ = await off_reactor(panel.call, "POST", "cards", {"card": "3EFE40"})
        assert (status, answer["linked"]) == (201, True), answer
        status, answer, _ = await off_reactor(panel.call, "POST", "cards", {"card": "3efe40"})
        assert (status, answer["linked"]) == (200, False)
        # The decimal reader of mfd-1 reads the same card as 0004128320: alice.
        status, answer = await off_reactor(Api(port).login, card="0004128320")
        assert status == 201 and answer["user"]["username"] == "alice"
        # bob's card cannot be taken over.
        status, answer, _ = await off_reactor(panel.call, "POST", "cards", {"card": "6ACFC1"})
        assert (status, answer["error"]["code"]) == (409, "card_in_use")
        status, answer, _ = await off_reactor(panel.call, "POST", "cards", {"card": "not hex"})
        assert (status, answer["error"]["code"]) == (400, "bad_request")
    finally:
        await site.stop()


@pytest_twisted.ensureDeferred
async def test_lockout_is_visible_and_expires(slapd, tmp_path):
    site = await start_site(write_config(tmp_path, slapd, auth={"max_failures": 3,
                                                                "lockout": 1.0}))
    try:
        port = site.ports_used["device_api"]
        codes = []
        for _ in range(4):
            status, answer = await off_reactor(Api(port).login, username="alice",
                                               password="guess")
            codes.append(answer["error"]["code"])
        assert codes == ["invalid_credentials"] * 3 + ["throttled"]
        status, answer, headers = await off_reactor(
            Api(port).call, "POST", "sessions", {"username": "alice",
                                                 "password": PASSWORDS["alice"]})
        assert (status, answer["error"]["code"]) == (429, "throttled")
        assert answer["retry_after"] >= 1 and headers["retry-after"] == str(answer["retry_after"])
        await task.deferLater(reactor, 1.2, lambda: None)
        status, answer = await off_reactor(Api(port).login, username="alice",
                                           password=PASSWORDS["alice"])
        assert status == 201, "the lock expired"
    finally:
        await site.stop()


def test_bind_password_file_must_be_private(slapd, tmp_path):
    from appliance.config import load

    path = write_config(tmp_path, slapd)
    secret = tmp_path / "secrets" / "ldap-bind.password"
    secret.chmod(0o644)
    config = load(path)
    assert config.directory is not None
    with pytest.raises(PermissionError):
        config.directory.bind_password()
    assert READER_PW not in repr(config) and READER_PW not in Path(path).read_text()

"""Card reader rules, Basic credentials parsing, usernames, and the directory decision table
(with a fake directory: accepted, rejected, unavailable with a fresh / old / no verifier)."""

from __future__ import annotations

import base64

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from appliance.config import ConfigError, parse
from appliance.core.auth import AuthError, AuthService, Credentials
from appliance.core.credentials import (
    CardFormatError,
    CardKey,
    CardRule,
    SessionTable,
    Throttle,
    make_verifier,
    normalise_card,
    password_hasher,
)
from appliance.core.directory import (
    DirectoryAnswer,
    DirectoryUnavailable,
    UnusableUsername,
    check_username,
)
from appliance.protocols.ipp.auth import basic_credentials
from appliance.storage.credential_store import CredentialStore
from appliance.storage.database import Database
from appliance.storage.store import NewIdentity, SiteStore, add_user_sync

HASHER = password_hasher(time_cost=1, memory_kib=8192)


def test_default_rule_is_unchanged():
    assert normalise_card(" 0004-123:456 ") == "0004123456"
    assert normalise_card("ab cd") == "ABCD"
    assert normalise_card("0004123456", CardRule()) == "0004123456"


@pytest.mark.parametrize(("sent", "rule", "canonical"), [
    ("4123456", CardRule("decimal"), "0004123456"),
    ("0004123456", CardRule("decimal"), "0004123456"),
    ("3EFF40", CardRule("hex"), "0004128576"),
    ("0x3eff40", CardRule("hex"), "0004128576"),
    ("40FF3E", CardRule("hex-reversed"), "0004128576"),
    ("40:FF:3E", CardRule("hex-reversed"), "0004128576"),
    # Wiegand 26: facility 123 << 16 | card 4660
    (str((123 << 16) | 4660), CardRule("decimal", strip_facility=True), "0000004660"),
    (f"{(123 << 16) | 4660:X}", CardRule("hex", strip_facility=True), "0000004660"),
])
def test_readers_of_one_card_agree(sent, rule, canonical):
    assert normalise_card(sent, rule) == canonical


def test_the_same_card_through_two_readers_has_one_hmac():
    key = CardKey(b"k" * 32)
    assert key.lookup("0004128576", CardRule("decimal")) == key.lookup("3EFF40", CardRule("hex"))
    assert key.lookup("0004128576") == key.lookup("40FF3E", CardRule("hex-reversed"))


@pytest.mark.parametrize(("sent", "rule"), [
    ("12AB", CardRule("decimal")), ("XYZ", CardRule("hex")), ("", CardRule("hex")),
    ("1" * 65, CardRule("decimal")), ("١٢٣", CardRule("decimal")),
])
def test_what_is_not_a_number_in_the_format_is_refused(sent, rule):
    with pytest.raises(CardFormatError):
        normalise_card(sent, rule)


def test_card_rules_in_the_configuration(tmp_path):
    base = {"name": "s", "state_dir": str(tmp_path / "s"), "secrets_dir": str(tmp_path / "k")}
    config = parse({**base, "devices": [
        {"name": "a", "uri": "ipp://x/p", "card_format": "hex-reversed",
         "card_strip_facility": True, "card_number_bits": 24},
        {"name": "b", "uri": "ipp://x/p"}]})
    assert config.devices[0].card_rule == CardRule("hex-reversed", True, 24)
    assert config.devices[1].card_rule is None
    with pytest.raises(ConfigError) as caught:
        parse({**base, "devices": [{"name": "a", "uri": "ipp://x/p", "card_format": "octal"},
                                   {"name": "b", "uri": "ipp://x/p", "ipp_auth": "kerberos"}]})
    assert len(caught.value.errors) == 2
    with pytest.raises(ConfigError) as caught:
        parse({**base, "directory": {"url": "http://x", "base_dn": "dc=x",
                                     "bind_password": "inline", "user_filter": "(uid=*)"}})
    text = "\n".join(caught.value.errors)
    assert "bind_password_file" in text and "user_filter" in text and "directory.url" in text


def test_basic_credentials():
    def header(text: str) -> bytes:
        return b"Basic " + base64.b64encode(text.encode())

    assert basic_credentials(header("alice:pa:ss")) == ("alice", "pa:ss")
    assert basic_credentials(header("o'brien:ü")) == ("o'brien", "ü")
    for bad in (None, b"", b"Bearer x", b"Basic", b"Basic !!!", header("nocolon"),
                header(":pw"), b"Basic " + base64.b64encode(b"\xff:x")):
        assert basic_credentials(bad) is None


def test_usernames():
    assert check_username(" o'brien ") == "o'brien"
    assert check_username("*)(uid=*") == "*)(uid=*"      # escaped later, not refused
    for bad in ("", "   ", "a\x00b", "a\nb", "x" * 257):
        with pytest.raises(UnusableUsername):
            check_username(bad)


class FakeDirectory:
    def __init__(self) -> None:
        self.mode = "up"
        self.passwords = {"alice": "right"}
        self.calls = 0

    async def check(self, username: str, password: str) -> DirectoryAnswer:
        self.calls += 1
        if self.mode == "down":
            raise DirectoryUnavailable("connection refused")
        ok = self.passwords.get(username) == password
        return DirectoryAnswer(ok, username if ok else None)


@pytest.fixture()
def auth(tmp_path):
    database = Database(tmp_path / "site.sqlite3", reactor)
    database.open()
    database.run_sync(lambda db: [add_user_sync(db, name, name.title(), "", [
        NewIdentity("password", None, make_verifier(HASHER, "imported"))]) for name in
        ("alice", "bob")])
    now = [1_000_000.0]
    service = AuthService(store=SiteStore(database), card_key=CardKey(b"k" * 32), hasher=HASHER,
                          sessions=SessionTable(), throttle=Throttle(max_failures=100),
                          verify_in_thread=lambda fn, *a: defer.maybeDeferred(fn, *a),
                          directory=FakeDirectory(), directory_max_age=3600.0,
                          credential_store=CredentialStore(database), clock=lambda: now[0])
    service.now = now  # type: ignore[attr-defined]
    yield service
    database.close()


async def code_of(auth, username, password):
    try:
        await auth.login("mfd-1", Credentials(username=username, password=password))
    except AuthError as exc:
        return exc.code
    return "ok"


@pytest_twisted.ensureDeferred
async def test_directory_decision_table(auth):
    directory = auth.directory
    directory.mode = "down"
    # An imported password (no verified_at) is not a directory cache: refused offline.
    assert await code_of(auth, "alice", "imported") == "directory_unavailable"
    assert await code_of(auth, "alice", "right") == "directory_unavailable"
    directory.mode = "up"
    assert await code_of(auth, "alice", "imported") == "invalid_credentials"
    assert await code_of(auth, "alice", "right") == "ok"
    directory.mode = "down"
    assert await code_of(auth, "alice", "right") == "ok"
    assert await code_of(auth, "alice", "wrong") == "invalid_credentials"
    auth.now[0] += 3601
    assert await code_of(auth, "alice", "right") == "directory_unavailable"
    assert await code_of(auth, "bob", "anything") == "directory_unavailable"
    # Online, a "no" from the directory is final even with a fresh cache.
    directory.mode = "up"
    assert await code_of(auth, "alice", "right") == "ok"
    directory.passwords["alice"] = "changed"
    assert await code_of(auth, "alice", "right") == "invalid_credentials"
    assert await code_of(auth, "alice", "changed") == "ok"
    directory.mode = "down"
    assert await code_of(auth, "alice", "right") == "invalid_credentials"


@pytest_twisted.ensureDeferred
async def test_sessions_remember_the_method_and_only_password_sessions_link_cards(auth):
    session = await auth.login("mfd-1", Credentials(username="alice", password="right"))
    assert session.method == "password"
    assert await auth.link_card(session, "1234") == "linked"
    assert await auth.link_card(session, "1234") == "already"
    by_card = await auth.login("mfd-1", Credentials(card="1234"))
    assert by_card.method == "card" and by_card.username == "alice"
    with pytest.raises(AuthError) as caught:
        await auth.link_card(by_card, "5678")
    assert caught.value.code == "password_session_required"

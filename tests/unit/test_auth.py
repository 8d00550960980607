"""Logins: one indexed HMAC lookup for a card, one Argon2id verification for a PIN,
no scan of the users, same refusal for every kind of wrong, throttling."""

import pytest
import pytest_twisted
from twisted.internet import defer, reactor

from appliance.core.auth import AuthError, AuthService, Credentials
from appliance.core.credentials import (
    CardKey,
    SessionTable,
    Throttle,
    check_verifier,
    make_verifier,
    password_hasher,
)
from appliance.storage.database import Database
from appliance.storage.store import NewIdentity, SiteStore, add_user_sync

HASHER = password_hasher(time_cost=1, memory_kib=8192)
USERS = 3000


class CountingVerify:
    """Runs verifications inline (no thread) and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, fn, *args):
        if fn is check_verifier:
            self.calls += 1
        return defer.succeed(fn(*args))


@pytest.fixture(scope="module")
def site_db(tmp_path_factory):
    folder = tmp_path_factory.mktemp("auth")
    key = CardKey.load_or_create(folder / "card.key")
    pin = make_verifier(HASHER, "2468")
    password = make_verifier(HASHER, "correct horse")
    database = Database(folder / "site.sqlite3", reactor)
    database.open()

    def seed(db):
        for i in range(USERS):
            add_user_sync(db, f"user{i:05d}", f"User {i}", "", [
                NewIdentity("card", key.lookup(f"{i:010d}"), None),
                NewIdentity("pin", None, pin), NewIdentity("password", None, password)], 100)

    database.run_sync(seed)
    yield database, key
    database.close()


def service(site_db, verify, throttle=None):
    database, key = site_db
    return AuthService(store=SiteStore(database), card_key=key, hasher=HASHER,
                       sessions=SessionTable(), throttle=throttle or Throttle(),
                       verify_in_thread=verify)


def traced(database):
    statements = []
    database.run_sync(lambda db: db.conn.set_trace_callback(statements.append))
    return statements


def plans(database, statements):
    out = []
    for sql in statements:
        if sql.lstrip().upper().startswith("SELECT"):
            rows = database.run_sync(lambda db, s=sql: db.conn.execute(
                "EXPLAIN QUERY PLAN " + s).fetchall())
            out.append(" | ".join(str(r[3]) for r in rows))
    return out


@pytest_twisted.ensureDeferred
async def test_card_login_is_one_indexed_lookup_and_no_argon2(site_db):
    database, _ = site_db
    verify = CountingVerify()
    auth = service(site_db, verify)
    statements = traced(database)
    session = await auth.login("mfd-1", Credentials(card="0000002999"))
    database.run_sync(lambda db: db.conn.set_trace_callback(None))
    assert session.username == "user02999"
    assert verify.calls == 0
    card_queries = [s for s in statements if "lookup = " in s]
    assert len(card_queries) == 1
    for plan in plans(database, statements):
        assert "SCAN u" not in plan and "SCAN users" not in plan
        assert "SCAN i" not in plan and "SCAN identities" not in plan


@pytest_twisted.ensureDeferred
async def test_username_pin_verifies_exactly_one_argon2id_hash(site_db):
    database, _ = site_db
    verify = CountingVerify()
    auth = service(site_db, verify)
    statements = traced(database)
    session = await auth.login("mfd-1", Credentials(username="user01500", pin="2468"))
    database.run_sync(lambda db: db.conn.set_trace_callback(None))
    assert session.username == "user01500"
    assert verify.calls == 1
    for plan in plans(database, statements):
        assert "SCAN" not in plan, plan


@pytest_twisted.ensureDeferred
async def test_wrong_pin_unknown_user_and_unknown_card_are_the_same_refusal(site_db):
    verify = CountingVerify()
    auth = service(site_db, verify)
    errors = []
    for credentials in (Credentials(username="user00001", pin="0000"),
                        Credentials(username="nobody", pin="2468"),
                        Credentials(card="9999999999"),
                        Credentials(card="0000000001", pin="1111"),
                        Credentials(username="user00001", password="wrong")):
        with pytest.raises(AuthError) as caught:
            await auth.login("mfd-1", credentials)
        errors.append((caught.value.code, str(caught.value)))
    assert len(set(errors)) == 1 and errors[0][0] == "invalid_credentials"
    assert verify.calls == 4, "unknown users still cost one verification (timing)"


@pytest_twisted.ensureDeferred
async def test_failed_attempts_lock_the_identity_and_the_lock_expires(site_db):
    now = [0.0]
    throttle = Throttle(clock=lambda: now[0], max_failures=3, lockout=30)
    auth = service(site_db, CountingVerify(), throttle)
    for _ in range(3):
        with pytest.raises(AuthError):
            await auth.login("mfd-1", Credentials(username="user00002", pin="0000"))
    with pytest.raises(AuthError) as caught:
        await auth.login("mfd-1", Credentials(username="user00002", pin="2468"))
    assert caught.value.code == "throttled" and caught.value.retry_after == pytest.approx(30)
    now[0] += 31
    session = await auth.login("mfd-1", Credentials(username="user00002", pin="2468"))
    assert session.username == "user00002"

"""Card HMACs, Argon2id verifiers, throttling and sessions (simulated time)."""

import stat

import pytest

from appliance.core.credentials import (
    CardKey,
    SessionTable,
    Throttle,
    check_verifier,
    make_verifier,
    normalise_card,
    password_hasher,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_card_key_is_created_0600_and_reused(tmp_path):
    path = tmp_path / "secrets" / "card.key"
    key = CardKey.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again = CardKey.load_or_create(path)
    assert key.lookup("1234") == again.lookup("1234")
    assert "1234" not in repr(key)


def test_card_key_refuses_a_world_readable_file(tmp_path):
    path = tmp_path / "card.key"
    CardKey.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(PermissionError):
        CardKey.load_or_create(path)


def test_card_lookup_is_an_hmac_not_the_number(tmp_path):
    key = CardKey.load_or_create(tmp_path / "k")
    other = CardKey.load_or_create(tmp_path / "k2")
    lookup = key.lookup("0004123456")
    assert "0004123456" not in lookup and len(lookup) == 64
    assert lookup != other.lookup("0004123456"), "the key must matter"
    assert key.lookup(" 0004-123-456 ") == lookup == key.lookup(normalise_card("0004123456"))


def test_argon2id_verifier_checks_and_hides_the_secret():
    hasher = password_hasher(time_cost=1, memory_kib=8192)
    verifier = make_verifier(hasher, "1234")
    assert verifier.startswith("$argon2id$")
    assert "1234" not in verifier.split("$")[-1]
    assert check_verifier(hasher, verifier, "1234")
    assert not check_verifier(hasher, verifier, "1235")
    assert not check_verifier(hasher, "garbage", "1234")


def test_throttle_locks_after_max_failures_and_the_lock_expires_and_doubles():
    clock = FakeClock()
    throttle = Throttle(clock=clock, max_failures=3, window=60, lockout=10)
    for _ in range(2):
        throttle.failed("user:alice")
    assert throttle.retry_after("user:alice") == 0
    throttle.failed("user:alice")
    assert throttle.retry_after("user:alice") == pytest.approx(10)
    clock.now += 10.5
    assert throttle.retry_after("user:alice") == 0
    for _ in range(3):
        throttle.failed("user:alice")
    assert throttle.retry_after("user:alice") == pytest.approx(20), "second lock doubles"
    assert throttle.retry_after("user:bob") == 0, "other identities are not affected"


def test_throttle_success_clears_the_count():
    clock = FakeClock()
    throttle = Throttle(clock=clock, max_failures=3, window=60, lockout=10)
    throttle.failed("k")
    throttle.failed("k")
    throttle.succeeded("k")
    throttle.failed("k")
    assert throttle.retry_after("k") == 0


def test_sessions_expire_when_idle_and_at_max_age_and_are_bound_to_a_device():
    clock = FakeClock()
    table = SessionTable(clock=clock, idle_timeout=30, max_age=100)
    session = table.open(user_id=1, username="alice", full_name="A", account_id=1,
                         device="mfd-1")
    assert table.get(session.token, "mfd-2") is None
    assert table.get(session.token, "mfd-1") is session
    for _ in range(4):
        clock.now += 25
        assert table.get(session.token, "mfd-1") is session
    clock.now += 25  # 125 s after opening: past max_age
    assert table.get(session.token, "mfd-1") is None
    other = table.open(user_id=1, username="alice", full_name="A", account_id=1, device="mfd-1")
    clock.now += 31
    assert table.get(other.token, "mfd-1") is None

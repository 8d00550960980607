"""Offline allowances (docs/offline-allowance.md): the policy arithmetic, `[offline]`, the
primary's reservations and the sync endpoint, and a site authorising offline (releases,
copies, usage, unknown users) with the real storage and services."""

from __future__ import annotations

import json
import random
from types import SimpleNamespace

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task

from appliance.config import ConfigError, parse
from appliance.config_offline import OfflineConfig
from appliance.core.accounting import AccountingService
from appliance.core.allowance import (
    OFFLINE_ALLOWANCE_EXHAUSTED,
    OFFLINE_USER_UNKNOWN,
    OfflineGate,
    OfflinePolicy,
    Position,
    PrimaryAllowances,
    SiteAllowances,
    SitePolicy,
    affordable_units,
    authorised,
    grant_amount,
    split_charge,
)
from appliance.core.charging import LAB_POLICY
from appliance.core.jobs import PrintService
from appliance.core.model import Device, JobOptions, JobState, Queue
from appliance.core.release import ReleaseService
from appliance.pki import Identity
from appliance.storage.allowance_store import AllowanceStore, GrantAnswer, store_answer_sync
from appliance.storage.database import Database
from appliance.storage.spool import Spool
from appliance.storage.store import SiteStore, add_user_sync
from appliance.storage.sync_store import declare_role_sync, set_state_sync
from tests.unit.sync_helpers import close, make_primary, make_site, seed_users
from tests.unit.test_release import PDF, ScriptedDevice

# ---------------------------------------------------------------- the arithmetic (pure)

money = st.integers(min_value=0, max_value=10**7)


@given(balance=st.integers(min_value=-10**6, max_value=10**7),
       limit=st.one_of(st.none(), money), others=money,
       fixed=st.one_of(st.none(), money),
       share=st.floats(min_value=0.01, max_value=1.0))
def test_a_grant_never_takes_what_other_sites_reserved(balance, limit, others, fixed, share):
    """The escrow invariant at its root: whatever the policy, reserved_by_others + grant
    never exceeds balance + overdraft limit once others did not already exceed it."""
    policy = SitePolicy(allowance=fixed, allowance_share=share)
    grant = grant_amount(policy, balance=balance, overdraft_limit=limit,
                         reserved_by_others=others)
    assert grant >= 0
    if limit is not None:
        spendable = balance + limit
        assert others + grant <= max(spendable, others)
        if fixed is None:
            assert grant <= max(0, spendable) * share + 1e-9
    if fixed is not None:
        assert grant <= fixed


@given(grant=money, within=money, over=money, extra=money, cost=money,
       expired=st.booleans(), overdraft=st.booleans())
def test_authorised_is_exactly_the_headroom(grant, within, over, extra, cost, expired,
                                            overdraft):
    """A cost is allowed iff it fits what is left of the grant plus the policy's unused
    overdraft; the split of an allowed charge never puts more than the headroom past."""
    within = min(within, grant)
    policy = OfflinePolicy("overdraft" if overdraft else "deny", extra)
    position = Position("g", grant, within, over, expired)
    remaining = 0 if expired else grant - within
    headroom = remaining + (max(0, extra - over) if overdraft else 0)
    assert authorised(position, policy, cost) == (cost <= headroom)
    inside, past = split_charge(position, cost)
    assert inside + past == cost and inside == min(cost, remaining)
    if authorised(position, policy, cost):
        assert past <= max(0, (extra if overdraft else 0) - over)
        if not overdraft:
            assert past == 0


@given(grant=money, within=money, per=st.integers(min_value=1, max_value=1000),
       wanted=st.integers(min_value=1, max_value=10**4))
def test_affordable_units_agree_with_authorised(grant, within, per, wanted):
    within = min(within, grant)
    policy = OfflinePolicy()
    position = Position("g", grant, within, 0)
    fit = affordable_units(position, policy, per, wanted)
    assert 0 <= fit <= wanted
    assert authorised(position, policy, fit * per)
    if fit < wanted:
        assert not authorised(position, policy, (fit + 1) * per)


# ---------------------------------------------------------------- [offline]


def test_offline_configuration_defaults_and_per_site_overrides(tmp_path):
    config = parse({"role": "primary", "name": "hq", "state_dir": str(tmp_path / "s"),
                    "secrets_dir": str(tmp_path / "k"),
                    "sync": {"ca_file": "ca", "cert_file": "c", "key_file": "k"},
                    "offline": {"allowance": 300, "validity": 30, "refresh": 2,
                                "sites": {"b": {"allowance_share": 0.5,
                                                "past_allowance": "overdraft",
                                                "overdraft": 40}}}})
    offline = config.offline
    assert offline is not None and (offline.validity, offline.refresh) == (30.0, 2.0)
    assert offline.policy_for("a") == SitePolicy(allowance=300)
    assert offline.policy_for("b") == SitePolicy(None, 0.5, "overdraft", 40)


def test_offline_configuration_errors_name_their_path(tmp_path):
    with pytest.raises(ConfigError) as caught:
        parse({"role": "site", "name": "b", "state_dir": str(tmp_path / "s"),
               "secrets_dir": str(tmp_path / "k"),
               "offline": {"allowance": -1, "allowance_share": 2.0, "validity": 0,
                           "unknown_users": "maybe", "colour": 1,
                           "sites": {"x": {"overdraft": -5, "past_allowance": "always"}}}})
    errors = caught.value.errors
    for expected in ("offline: configured at the primary only",
                     "offline: give allowance or allowance_share, not both",
                     "offline.allowance: must not be negative",
                     "offline.allowance_share: must be in (0, 1]",
                     "offline.validity: must be positive",
                     "offline.unknown_users: one of deny, account",
                     "offline.colour: unknown setting",
                     "offline.sites.x.overdraft: must not be negative",
                     "offline.sites.x.past_allowance: one of deny, overdraft"):
        assert any(e.startswith(expected) for e in errors), (expected, errors)


# ---------------------------------------------------------------- the primary


async def ask(primary, site, used=None, identity=None):
    body = json.dumps({"site": site, "request_id": "t", "used": used or []}).encode()
    status, answer = await primary.api.handle("POST", "/sync/v1/allowances", "", body,
                                              identity or Identity("site", site))
    return status, json.loads(answer)


def with_allowances(primary, config, clock):
    primary.api.allowances = PrimaryAllowances(store=AllowanceStore(primary.database),
                                               config=config, clock=clock.seconds)


def active_reserved(primary, account, now):
    return primary.count("SELECT COALESCE(SUM(amount), 0) FROM offline_reservations WHERE "
                         "account = ? AND released_at IS NULL AND expires_at > ?",
                         (account, now))


@pytest_twisted.ensureDeferred
async def test_concurrent_requests_from_two_sites_never_reserve_more_than_spendable(tmp_path):
    """Sixty rounds of interleaved requests from two sites with a greedy policy (the whole
    balance): the reservations of an account never add up to more than it can spend, and
    a site's new grant replaces its old one."""
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    seed_users(primary, 5, balance=1000)
    primary.database.run_sync(lambda db: db.conn.execute(
        "UPDATE accounts SET overdraft_limit = 200 WHERE name = 'user:user1'"))
    with_allowances(primary, OfflineConfig(defaults=SitePolicy(allowance_share=1.0),
                                           validity=50.0), clock)
    rng = random.Random(5)
    try:
        for _ in range(60):
            sites = ["site-a", "site-b"] * rng.randint(1, 3)
            rng.shuffle(sites)
            answers = await defer.gatherResults(
                [defer.ensureDeferred(ask(primary, s)) for s in sites])
            assert all(status == 200 and a["enabled"] for status, a in answers)
            for i in range(5):
                account = f"user:user{i}"
                spendable = 1000 + (200 if i == 1 else 0)
                assert active_reserved(primary, account, clock.seconds()) <= spendable
            for site in ("site-a", "site-b"):
                assert primary.count("SELECT COUNT(*) FROM offline_reservations WHERE site = ? "
                                     "AND released_at IS NULL", (site,)) == 5
            clock.advance(rng.choice([1, 5, 20]))
        # Greedy policies saturate the account and never go past it.
        assert active_reserved(primary, "user:user0", clock.seconds()) == 1000
    finally:
        close(primary)


@pytest_twisted.ensureDeferred
async def test_reservations_expire_and_usage_reports_are_recorded_idempotently(tmp_path):
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    seed_users(primary, 1, balance=1000)
    with_allowances(primary, OfflineConfig(defaults=SitePolicy(allowance=600), validity=10.0),
                    clock)
    try:
        _, a = await ask(primary, "site-a")
        _, b = await ask(primary, "site-b")
        assert [g["amount"] for g in a["grants"]] == [600]
        assert [g["amount"] for g in b["grants"]] == [400], "only what site-a left"
        clock.advance(11)   # site-a's reservation expired: site-b may now have 600
        _, b = await ask(primary, "site-b")
        assert [g["amount"] for g in b["grants"]] == [600]
        used = [{"grant": b["grants"][0]["grant"], "spent": 250, "over": 0, "charges": 2}]
        for _ in range(2):   # a retry after a lost answer records the same values
            status, answer = await ask(primary, "site-b", used)
            assert status == 200 and answer["grants"][0]["amount"] == 600
        row = primary.database.run_sync(lambda db: db.conn.execute(
            "SELECT spent, over, charges, released_at IS NOT NULL FROM offline_reservations "
            "WHERE grant_id = ?", (used[0]["grant"],)).fetchone())
        assert tuple(row) == (250, 0, 2, 1)
        assert primary.count("SELECT COUNT(*) FROM offline_reservations WHERE site = 'site-b' "
                             "AND released_at IS NULL") == 1
    finally:
        close(primary)


@pytest_twisted.ensureDeferred
async def test_the_endpoint_refuses_what_is_not_a_sites_own_request(tmp_path):
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    with_allowances(primary, None, clock)
    try:
        status, answer = await ask(primary, "site-a")
        assert (status, answer) == (200, {"enabled": False, "grants": []})
        status, answer = await ask(primary, "site-a", identity=Identity("site", "site-b"))
        assert (status, answer["error"]["code"]) == (403, "wrong_site")
        status, answer = await ask(primary, "site-a", identity=Identity("provider", "site-a"))
        assert (status, answer["error"]["code"]) == (403, "not_a_site")
        status, answer = await ask(primary, "site-a", used=[{"grant": "site-b/1", "spent": 1,
                                                             "over": 0, "charges": 1}])
        assert (status, answer["error"]["code"]) == (400, "malformed")
        status, raw = await primary.api.handle("POST", "/sync/v1/allowances", "", b"{",
                                               Identity("site", "site-a"))
        assert (status, json.loads(raw)["error"]["code"]) == (400, "malformed")
    finally:
        close(primary)


# ---------------------------------------------------------------- the site


@pytest.fixture
def site(tmp_path):
    """A site database (role declared) with alice (balance 1000), release and accounting
    services with the offline gate, a direct queue, and a scripted device."""
    database = Database(tmp_path / "site.db", reactor)
    database.open()
    database.run_sync(lambda db: declare_role_sync(db, "site", "site-a"))
    store = SiteStore(database)
    user = database.run_sync(lambda db: add_user_sync(db, "alice", "A", "", [], 1000))
    spool = Spool(tmp_path / "spool", max_document=10**6, max_per_user=10**7, max_total=10**8)
    jobs = PrintService(store=store, spool=spool,
                        queues=[Queue("findme", "findme"), Queue("mfd-1", "direct", "mfd-1")],
                        policies=lambda d: LAB_POLICY, reactor=reactor, use_ghostscript=False)
    state = SimpleNamespace(offline=True)
    gate = OfflineGate(AllowanceStore(database), offline=lambda: state.offline)
    devices = {"mfd-1": Device("mfd-1", "ipp", "ipp://127.0.0.1:9/x", True, True, "default",
                               True)}
    release = ReleaseService(jobs=jobs, store=store, drivers={"ipp": ScriptedDevice()},
                             devices=lambda: devices, policies=lambda d: LAB_POLICY,
                             reactor=reactor, poll_interval=0.01, follow_timeout=10,
                             offline_gate=gate)
    accounting = AccountingService(store=store, policies=lambda d: LAB_POLICY,
                                   offline_gate=gate)

    def go_offline(policy: OfflinePolicy | None, grant: int | None, valid_for: float = 3600,
                   elsewhere: int = 0):
        def work(db):
            set_state_sync(db, "mode", "offline")
            grants = [] if grant is None else [("site-a/1", "user:alice", grant, elsewhere)]
            import time

            store_answer_sync(db, GrantAnswer(policy is not None, valid_for, 60.0, policy,
                                              grants), [], time.time())

        database.run_sync(work)

    yield SimpleNamespace(database=database, store=store, jobs=jobs, release=release,
                          accounting=accounting, gate=gate, user=user, state=state,
                          go_offline=go_offline)
    database.close()


async def hold(site, queue="findme", owner="alice"):
    document = await site.jobs.begin_document(owner)
    document.write(PDF)   # 3 pages, mono: 30
    return await site.jobs.submit(queue, owner, "doc", JobOptions(colour_mode="monochrome"),
                                  document, "application/pdf")


def ledger(site):
    return site.database.run_sync(lambda db: [
        (r[0], json.loads(r[1]).get("offline")) for r in db.conn.execute(
            "SELECT amount, body FROM ledger WHERE amount < 0 ORDER BY id").fetchall()])


@pytest_twisted.ensureDeferred
async def test_offline_releases_are_authorised_against_the_grant(site):
    """Deny policy, grant 50: the first 30-job is released and tagged with its grant, the
    second would pass the grant: refused with offline_allowance_exhausted, still held."""
    site.go_offline(OfflinePolicy("deny"), 50)
    first, second = await hold(site), await hold(site)
    report = await site.release.release(owner="alice", account_id=site.user.account_id,
                                        device_name="mfd-1", job_ids=[first.id, second.id])
    assert report.released == [first.id]
    assert [(r.job_id, r.code) for r in report.failed] == [
        (second.id, OFFLINE_ALLOWANCE_EXHAUSTED)]
    assert (await site.jobs.job(second.id)).state is JobState.HELD
    assert ledger(site) == [(-30, {"grant": "site-a/1", "over": 0})]
    assert site.gate.denied == 1


@pytest_twisted.ensureDeferred
async def test_concurrent_offline_releases_of_one_user_share_one_headroom(site):
    """Two MFDs release two 30-jobs of alice at once with 50 left: the first allowed
    release holds its cost until it is charged, so the other is refused — without the
    hold both would pass the check before either was charged."""
    site.go_offline(OfflinePolicy("deny"), 50)
    first, second = await hold(site), await hold(site)
    reports = await defer.gatherResults([defer.ensureDeferred(site.release.release(
        owner="alice", account_id=site.user.account_id, device_name="mfd-1",
        job_ids=[job.id])) for job in (first, second)])
    codes = sorted(r.results[0].code for r in reports)
    assert codes == ["", OFFLINE_ALLOWANCE_EXHAUSTED]
    assert ledger(site) == [(-30, {"grant": "site-a/1", "over": 0})]
    assert site.gate._held == {}, "every hold was released once its job was charged"


@pytest_twisted.ensureDeferred
async def test_the_overdraft_policy_allows_past_the_grant_and_reports_it(site):
    site.go_offline(OfflinePolicy("overdraft", 20), 50)
    jobs = [await hold(site) for _ in range(3)]
    report = await site.release.release(owner="alice", account_id=site.user.account_id,
                                        device_name="mfd-1", job_ids=[j.id for j in jobs])
    # 30 within; 20 within + 10 over; the third (30) would need 30 over of 20: refused.
    assert report.released == [jobs[0].id, jobs[1].id]
    assert report.failed[0].code == OFFLINE_ALLOWANCE_EXHAUSTED
    assert ledger(site) == [(-30, {"grant": "site-a/1", "over": 0}),
                            (-30, {"grant": "site-a/1", "over": 10})]


@pytest_twisted.ensureDeferred
async def test_copies_offline_and_usage_past_the_allowance_is_charged_as_over(site):
    site.go_offline(OfflinePolicy("deny"), 55)
    auth = await site.accounting.authorise_copy(account_id=site.user.account_id,
                                                device="mfd-1", pages=8, colour=False,
                                                sides="one-sided")
    assert (auth.allowed, auth.max_pages, auth.reason) == (False, 5,
                                                           OFFLINE_ALLOWANCE_EXHAUSTED)
    # The device copied 8 anyway: a physical fact, charged; 25 of it past the grant.
    charge = await site.accounting.report_usage(
        usage_id="u1", device="mfd-1", user_id=site.user.id, account_id=site.user.account_id,
        kind="copy", pages=8, colour=False, sides="one-sided")
    assert charge.charged == 80
    assert ledger(site) == [(-80, {"grant": "site-a/1", "over": 25})]
    again = await site.accounting.authorise_copy(account_id=site.user.account_id,
                                                 device="mfd-1", pages=1, colour=False,
                                                 sides="one-sided")
    assert (again.allowed, again.max_pages) == (False, 0)


@pytest_twisted.ensureDeferred
async def test_offline_copy_sessions_on_one_account_at_two_devices_share_one_headroom(site):
    """Grant 55, deny. A copy authorisation holds the cost of what fits for its device
    until that device reports: a second device then gets only what is left (without the
    hold both would be told 5 pages and 100 would be spent on a grant of 55). A report
    ends the hold, a new authorisation at the same device replaces its own, and a device
    that never reports holds only for COPY_HOLD_SECONDS."""
    now = [1000.0]
    site.gate.clock = lambda: now[0]
    site.go_offline(OfflinePolicy("deny"), 55)
    account = site.user.account_id

    async def authorise(device, pages):
        auth = await site.accounting.authorise_copy(
            account_id=account, device=device, pages=pages, colour=False, sides="one-sided")
        return auth.allowed, auth.max_pages

    assert await authorise("mfd-1", 5) == (True, 5)           # holds 50
    assert await authorise("mfd-2", 5) == (False, 0)          # 5 left: not a page
    assert await authorise("mfd-1", 3) == (True, 3)           # replaces its own: holds 30
    assert await authorise("mfd-2", 5) == (False, 2)          # 25 left; holds 20
    await site.accounting.report_usage(
        usage_id="c1", device="mfd-1", user_id=site.user.id, account_id=account,
        kind="copy", pages=3, colour=False, sides="one-sided")  # charged 30, hold ends
    assert await authorise("mfd-1", 1) == (False, 0)          # 55 - 30 - 20 held: 5 left
    assert site.gate._copy_holds[account] == {"mfd-2": (20, 1600.0)}
    # mfd-2 never reports: its hold lapses; mfd-1 reports nothing either.
    now[0] += site.gate.COPY_HOLD_SECONDS
    assert await authorise("mfd-2", 3) == (False, 2), "55 - 30 charged: 2 pages fit"
    assert ledger(site) == [(-30, {"grant": "site-a/1", "over": 0})]
    site.state.offline = False
    assert await authorise("mfd-1", 50) == (True, 50), "online: the balance decides"


@pytest_twisted.ensureDeferred
async def test_a_release_beside_a_copy_hold_releases_only_its_own_hold(site):
    site.go_offline(OfflinePolicy("deny"), 100)
    auth = await site.accounting.authorise_copy(
        account_id=site.user.account_id, device="mfd-2", pages=2, colour=False,
        sides="one-sided")
    assert auth.allowed
    job = await hold(site)
    report = await site.release.release(owner="alice", account_id=site.user.account_id,
                                        device_name="mfd-1", job_ids=[job.id])
    assert report.released == [job.id]
    assert site.gate._held == {}, "the release's hold ended with its charge"
    holds = site.gate._copy_holds[site.user.account_id]
    assert list(holds) == ["mfd-2"] and holds["mfd-2"][0] == 20, "the copy's hold stays"


@pytest_twisted.ensureDeferred
async def test_a_job_printing_across_a_restart_is_held_against_the_allowance(site):
    """The site restarted (a fresh gate: nothing in memory) while a 30-job was printing
    offline. recover() follows it again and holds its cost until it is charged, so a copy
    authorisation meanwhile sees 55 - 30 = 25 left, not 55."""
    site.go_offline(OfflinePolicy("deny"), 55)
    job = await hold(site)
    await site.store.update_job(job.id, state=JobState.PROCESSING, device="mfd-1",
                                remote_job_uri="ipp://127.0.0.1:9/x#1", attempts=1)
    done = []

    class StillPrinting:
        async def status(self, device, handle):
            from appliance.core.release import DeviceJobStatus

            return DeviceJobStatus("completed" if done else "processing", None)

    site.release.drivers["ipp"] = StillPrinting()
    await site.release.recover()
    auth = await site.accounting.authorise_copy(
        account_id=site.user.account_id, device="mfd-2", pages=5, colour=False,
        sides="one-sided")
    assert (auth.allowed, auth.max_pages) == (False, 2)
    done.append(True)
    for _ in range(500):   # until the job is charged and nobody follows it any more
        if (await site.jobs.job(job.id)).state is JobState.COMPLETED \
                and not site.release._following:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    assert ledger(site) == [(-30, {"grant": "site-a/1", "over": 0})]
    assert site.gate._held == {}, "charged: the hold ended"
    again = await site.accounting.authorise_copy(
        account_id=site.user.account_id, device="mfd-2", pages=2, colour=False,
        sides="one-sided")
    assert (again.allowed, again.max_pages) == (True, 2)


@pytest_twisted.ensureDeferred
async def test_online_a_site_leaves_other_sites_reserves_and_uses_its_own_grant_up(site):
    """Online with a policy: money another site holds in reserve is not spendable here,
    and what is spent here online uses this site's grant up (no ledger tag online), so a
    cut that follows cannot spend it a second time."""
    site.go_offline(OfflinePolicy("deny"), 100, elsewhere=900)
    site.state.offline = False
    site.database.run_sync(lambda db: set_state_sync(db, "mode", "online"))
    account, user = site.user.account_id, site.user.id
    auth = await site.accounting.authorise_copy(account_id=account, device="mfd-1", pages=20,
                                                colour=False, sides="one-sided")
    assert (auth.allowed, auth.max_pages, auth.reason, auth.balance) == (
        False, 10, "insufficient_balance", 1000)
    await site.accounting.report_usage(usage_id="on1", device="mfd-1", user_id=user,
                                       account_id=account, kind="copy", pages=6,
                                       colour=False, sides="one-sided")
    assert ledger(site) == [(-60, None)]
    site.state.offline = True
    site.database.run_sync(lambda db: set_state_sync(db, "mode", "offline"))
    auth = await site.accounting.authorise_copy(account_id=account, device="mfd-1", pages=5,
                                                colour=False, sides="one-sided")
    assert (auth.allowed, auth.max_pages) == (False, 4), "100 granted, 60 used online"


@pytest_twisted.ensureDeferred
async def test_an_expired_grant_authorises_nothing(site):
    site.go_offline(OfflinePolicy("deny"), 500, valid_for=-1.0)
    auth = await site.accounting.authorise_copy(account_id=site.user.account_id,
                                                device="mfd-1", pages=1, colour=False,
                                                sides="one-sided")
    assert (auth.allowed, auth.reason) == (False, OFFLINE_ALLOWANCE_EXHAUSTED)


@pytest_twisted.ensureDeferred
async def test_online_or_without_a_policy_nothing_changes(site):
    """Online, or offline under a primary without [offline]: the balance decides, as
    before, and no charge is tagged."""
    site.go_offline(None, None)
    auth = await site.accounting.authorise_copy(account_id=site.user.account_id,
                                                device="mfd-1", pages=150, colour=False,
                                                sides="one-sided")
    assert (auth.allowed, auth.max_pages, auth.reason) == (False, 100, "insufficient_balance")
    site.go_offline(OfflinePolicy("deny"), 0)
    site.state.offline = False
    site.database.run_sync(lambda db: set_state_sync(db, "mode", "online"))
    job = await hold(site)
    report = await site.release.release(owner="alice", account_id=site.user.account_id,
                                        device_name="mfd-1", job_ids=[job.id])
    assert report.released == [job.id]
    assert ledger(site) == [(-30, None)]


@pytest_twisted.ensureDeferred
async def test_unknown_users_offline_are_refused_or_charged_to_the_offline_account(site):
    site.go_offline(OfflinePolicy("deny", unknown_users="deny"), 0)
    job = await hold(site, queue="mfd-1", owner="mallory")
    await site.release.print_direct(job)
    held = await site.jobs.job(job.id)
    assert (held.state, held.state_message) == (JobState.HELD, OFFLINE_USER_UNKNOWN)
    site.go_offline(OfflinePolicy("deny", unknown_users="account",
                                  offline_account="site:offline"), 0)
    job = await hold(site, queue="mfd-1", owner="trent")
    await site.release.print_direct(job)
    for _ in range(50):
        if (await site.jobs.job(job.id)).state is JobState.COMPLETED:
            break
        await task.deferLater(reactor, 0.01, lambda: None)
    rows = site.database.run_sync(lambda db: db.conn.execute(
        "SELECT a.name, l.amount, l.body FROM ledger l JOIN accounts a ON a.id = l.account_id "
        "WHERE l.amount < 0").fetchall())
    assert [(r[0], r[1], json.loads(r[2])["offline"]) for r in rows] == [
        ("site:offline", -30, {"grant": None, "over": 0})]


@pytest_twisted.ensureDeferred
async def test_an_unknown_card_at_a_panel_offline_is_refused_even_under_account(site, tmp_path):
    """`unknown_users = "account"` covers direct-queue jobs (they name their owner); a card
    the replica does not know names nobody, so its panel login stays refused (and counts
    against the throttle): no session charging the unlimited offline account."""
    from appliance.core.auth import AuthError, AuthService, Credentials
    from appliance.core.credentials import CardKey, SessionTable, Throttle, password_hasher

    site.go_offline(OfflinePolicy("deny", unknown_users="account",
                                  offline_account="site:offline"), 0)
    auth = AuthService(store=site.store, card_key=CardKey.load_or_create(tmp_path / "card.key"),
                       hasher=password_hasher(1, 8192), sessions=SessionTable(),
                       throttle=Throttle())
    with pytest.raises(AuthError) as refused:
        await auth.login("mfd-1", Credentials(card="0099887766"))
    assert refused.value.code == "invalid_credentials"
    assert auth.sessions._sessions == {}
    rows = site.database.run_sync(lambda db: db.conn.execute(
        "SELECT COUNT(*) FROM ledger l JOIN accounts a ON a.id = l.account_id "
        "WHERE a.name = 'site:offline'").fetchone()[0])
    assert rows == 0


# ---------------------------------------------------------------- both, over the wire


class LosesAllowanceAnswers:
    """Delivers every request; loses the answer of allowance requests (the primary applied
    them: the case that makes superseding before asking matter)."""

    def __init__(self, inner):
        self.inner = inner

    async def call(self, method, path, body):
        from appliance.core.sync import SyncUnavailable

        answer = await self.inner.call(method, path, body)
        if path.endswith("/allowances"):
            raise SyncUnavailable("answer lost")
        return answer


@pytest_twisted.ensureDeferred
async def test_a_lost_answer_leaves_the_site_with_no_grant_never_a_released_one(tmp_path):
    """The site supersedes its grants before asking: when the answer is lost after the
    primary released them, the site holds none (offline it refuses), and the next answer
    brings grants again, the very ones the primary reserves."""
    clock = task.Clock()
    primary = make_primary(tmp_path, clock)
    seed_users(primary, 1, balance=1000)
    with_allowances(primary, OfflineConfig(defaults=SitePolicy(allowance=100)), clock)
    site = make_site(tmp_path, primary, clock=clock, rng=random.Random(1), misses=1,
                     successes=1)
    allowances = SiteAllowances(name=site.name, store=AllowanceStore(site.database),
                                client=site.sync.client, clock=clock)
    site.sync.allowances = allowances
    try:
        await site.sync.tick()
        grants = lambda: site.count("SELECT COUNT(*) FROM offline_grants "  # noqa: E731
                                    "WHERE state = 'active'")
        assert grants() == 1 and allowances.requests == 1
        link = site.sync.client.transport
        site.sync.client.transport = LosesAllowanceAnswers(link)
        allowances.force()
        clock.advance(5)
        await site.sync.tick()
        assert allowances.failures == 1 and grants() == 0
        assert primary.count("SELECT COUNT(*) FROM offline_reservations "
                             "WHERE released_at IS NULL") == 1, "the lost answer's grant"
        site.sync.client.transport = link
        clock.advance(5)
        await site.sync.tick()
        assert grants() == 1
        held = site.database.run_sync(lambda db: db.conn.execute(
            "SELECT grant_id FROM offline_grants").fetchall())
        active = primary.database.run_sync(lambda db: db.conn.execute(
            "SELECT grant_id FROM offline_reservations WHERE released_at IS NULL").fetchall())
        assert [tuple(r) for r in held] == [tuple(r) for r in active], (
            "the site holds exactly what the primary reserves; the lost answer's is released")
    finally:
        close(site, primary)


@pytest_twisted.ensureDeferred
async def test_outage_overspend_counts_each_offline_event_once(tmp_path):
    """The outage report's overspend is the `offline.over` of newly applied events: a
    replayed batch (duplicates) and a forged body under a known id (quarantined) add
    nothing."""
    from tests.unit.sync_helpers import push_raw

    clock = task.Clock()
    primary = make_primary(tmp_path, clock)

    def event(seq, entry, over, amount=-50):
        return {"seq": seq, "event_id": f"site-a/{entry}", "kind": "ledger", "body": {
            "entry_id": entry, "account": "user:alice", "account_kind": "personal",
            "amount": amount, "kind": "charge", "source": "copy", "job_uuid": None,
            "device": "mfd1", "impressions": 5, "colour": 0,
            "body": {"pages": 5, "offline": {"grant": "site-a/1", "over": over}},
            "created_at": 1.0}}

    try:
        status, _ = await primary.api.handle(
            "POST", "/sync/v1/heartbeat", "", json.dumps({
                "site": "site-a", "mode": "online", "outbox": 2, "pull_token": None,
                "outage": {"started_at": 1.0, "ended_at": 9.0}}).encode(),
            Identity("site", "site-a"))
        assert status == 200
        batch = {"site": "site-a", "batch_id": "b1",
                 "events": [event(1, "usage:1", 0), event(2, "usage:2", 30)]}
        for _ in range(2):   # the second is a replay: duplicates
            status, answer = await push_raw(primary, "site-a", batch)
            assert status == 200
        forged = {"site": "site-a", "batch_id": "b2",
                  "events": [event(2, "usage:2", 45, amount=-65)]}
        status, answer = await push_raw(primary, "site-a", forged)
        assert status == 200 and len(answer["quarantined"]) == 1
        overspend = primary.count("SELECT overspend FROM outage_reports WHERE site = 'site-a'")
        assert overspend == 30
    finally:
        close(primary)

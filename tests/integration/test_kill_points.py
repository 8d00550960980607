"""kill -9 of the site and of the primary at 20 seeded points each, at named failpoints,
with acknowledged charges flowing: in the end every acknowledged charge is in the
primary's ledger exactly once (0 lost, 0 doubled) and every relevant failpoint was hit.

The points (issue 5, acceptance):

| process | failpoint | where it dies |
|---|---|---|
| site | `db.after_commit` | a transaction (charge, outbox ack, pulled page) committed, unanswered |
| site | `site.push.acked` | the checkpoint arrived, before the site saved it (deleted the rows) |
| primary | `db.after_commit` | a transaction (a batch, a heartbeat) committed, before the answer |
| primary | `primary.batch.mid_apply` | in the middle of applying a pushed batch, inside its transaction |
| primary | `primary.batch.applied` | the batch committed, before the checkpoint was answered |

A seeded generator picks 20 `(failpoint, N)` per process, each relevant failpoint at least
once; `N` is the hit on which the armed process kills itself (`name=kill@N`). One pair of
processes serves every point: for each point the target is restarted armed (as systemd
or the lab restarts a dead daemon), charges are reported through the device API (as an
MFD does: an unanswered usage report is sent again with the same id, after the site is
back) until the target dies at its point. Some site `db.after_commit` points are
"quiet" (primary stopped, long heartbeat: see `plan`), so that the kill lands between a
charge's commit and its answer; the test requires at least one such charge (answered
`duplicate: true` when the panel sends it again). The seed comes from
`OUTPOST_KILL_SEED` (default 5) and is named in every assertion message.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.integration.sync_procs import (
    NO_ANSWER,
    api,
    copy,
    deployment,
    port_open,
    query,
    serve,
    stop,
    wait_for,
)

pytestmark = pytest.mark.integration

SITE_POINTS = {"db.after_commit": (1, 8), "site.push.acked": (1, 3)}
PRIMARY_POINTS = {"db.after_commit": (1, 10), "primary.batch.mid_apply": (1, 3),
                  "primary.batch.applied": (1, 3)}
POINTS_PER_PROCESS = 20
#: A point not reached after this many reported charges fails the test (a failpoint that
#: the workload cannot reach is a broken test, not a pass).
MAX_CHARGES_PER_POINT = 40


def plan(seed: int) -> list[tuple[str, str, int, bool]]:
    """(process, failpoint, N, primary stopped) for 20 site points then 20 primary points;
    every failpoint of each process at least once, the rest drawn at random, each group
    shuffled.

    A "quiet" point: the primary stopped and the site restarted with a 30 s heartbeat, so
    that the site runs almost no transaction of its own (every transaction counts, reads
    too, and a heartbeat reads twice), and its `db.after_commit` lands on a charge's
    commit: the charge is durable, its answer never left. The first site `db.after_commit`
    point is always quiet, the others at random; N is 12..20 there, past the start-up's
    and the login's transactions, while the panel reports one copy after another."""
    rng = random.Random(seed)
    points: list[tuple[str, str, int, bool]] = []
    for process, table in (("site", SITE_POINTS), ("primary", PRIMARY_POINTS)):
        names = list(table) + [rng.choice(sorted(table))
                               for _ in range(POINTS_PER_PROCESS - len(table))]
        rng.shuffle(names)
        first = True
        for name in names:
            nth = rng.randint(*table[name])
            quiet = process == "site" and name == "db.after_commit" and (
                first or rng.random() < 0.5)
            if process == "site" and name == "db.after_commit":
                first = False
            points.append((process, name, rng.randint(12, 20) if quiet else nth, quiet))
    return points


def test_the_plan_covers_every_failpoint_and_is_seeded():
    from appliance import failpoints

    for seed in range(50):
        points = plan(seed)
        assert plan(seed) == points
        for process, table in (("site", SITE_POINTS), ("primary", PRIMARY_POINTS)):
            mine = [p for p in points if p[0] == process]
            assert len(mine) == POINTS_PER_PROCESS
            assert {name for _, name, _, _ in mine} == set(table), seed
        assert any(quiet for _, _, _, quiet in points), seed
    assert set(SITE_POINTS) | set(PRIMARY_POINTS) == set(failpoints.NAMES)


class Pair:
    """The two processes, restarted by the test as a supervisor would."""

    def __init__(self, tmp_path: Path, d: dict) -> None:
        self.tmp = tmp_path
        self.d = d
        self.hits = {"site": tmp_path / "site-hits.log", "primary": tmp_path / "hq-hits.log"}
        self.config = {"site": d["site_toml"], "primary": d["primary_toml"]}
        self.port = {"site": d["api_port"], "primary": d["sync_port"]}
        self.proc: dict[str, subprocess.Popen[bytes] | None] = {"site": None, "primary": None}
        self.restarts = Counter[str]()
        self.token: str | None = None
        #: Charges the site committed but never answered (killed in between), recognised
        #: when the panel's retry is answered `duplicate: true`.
        self.committed_unanswered: list[str] = []

    def start(self, role: str, failpoints: str = "", quiet: bool = False) -> None:
        old = self.proc[role]
        if old is not None:
            stop(old)
        config = self.config[role]
        if quiet:
            config = self.tmp / "quiet-site.toml"
            config.write_text(self.config["site"].read_text().replace(
                "heartbeat_interval = 0.2", "heartbeat_interval = 30.0"))
        self.proc[role] = serve(config, self.tmp / f"{role}.log", failpoints, self.hits[role])
        self.restarts[role] += 1
        if role == "site":
            self.token = None

    def alive(self, role: str) -> bool:
        process = self.proc[role]
        return process is not None and process.poll() is None

    def wait_ready(self, role: str) -> bool:
        """True once the role's port answers; False if it died first (at its point)."""
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not self.alive(role):
                return False
            if port_open(self.port[role]):
                return True
            time.sleep(0.05)
        raise AssertionError(f"{role} did not open its port")

    def ensure(self, role: str) -> None:
        """Restart a dead process unarmed (the other role's point killed it earlier)."""
        if not self.alive(role):
            self.start(role)
            assert self.wait_ready(role), f"{role} died unarmed"

    def charge(self, usage_id: str) -> bool:
        """Report one copy as the MFD; True once the site acknowledged it."""
        try:
            if self.token is None:
                status, session = api(self.d["api_port"], "sessions",
                                      {"card": "0042", "pin": "1234"})
                if status != 201:
                    return False
                self.token = session["session"]
            status, body = copy(self.d["api_port"], self.token, usage_id)
        except NO_ANSWER:
            return False
        if status == 401:
            self.token = None
            return False
        assert status == 200, (status, body)
        if body["duplicate"]:
            self.committed_unanswered.append(usage_id)
        return True

    def stop_all(self) -> None:
        for process in self.proc.values():
            if process is not None:
                stop(process)


def test_kill_9_at_40_seeded_failpoints_loses_and_doubles_nothing(tmp_path):
    seed = int(os.environ.get("OUTPOST_KILL_SEED", "5"))
    where = f"(seed {seed}; rerun with OUTPOST_KILL_SEED={seed})"
    points = plan(seed)
    d = deployment(tmp_path, balance=100000)
    pair = Pair(tmp_path, d)
    acked: list[str] = []
    unacked: list[str] = []
    made = 0
    try:
        pair.start("primary")
        pair.start("site")
        assert pair.wait_ready("primary") and pair.wait_ready("site")
        wait_for(lambda: query(d["site_db"], "SELECT username FROM users") == [("alice",)],
                 "alice to reach the site")
        for index, (role, name, nth, quiet) in enumerate(points):
            other = "primary" if role == "site" else "site"
            if quiet:
                proc = pair.proc["primary"]
                if proc is not None:
                    stop(proc)
            else:
                pair.ensure(other)
            pair.start(role, f"{name}=kill@{nth}", quiet)
            pair.wait_ready(role)
            charges = 0
            while pair.alive(role):
                assert charges < MAX_CHARGES_PER_POINT, \
                    f"point {index} {role} {name}@{nth} not reached {where}"
                if not pair.alive("site"):
                    break
                if unacked:
                    usage_id = unacked.pop(0)
                else:
                    usage_id, made = f"k{made}", made + 1
                (acked if pair.charge(usage_id) else unacked).append(usage_id)
                charges += 1
                time.sleep(0.1)     # about one push per charge: batches of one or two
            process = pair.proc[role]
            assert process is not None
            process.wait(30)
            assert process.returncode == -signal.SIGKILL, \
                f"point {index} {role} {name}@{nth}: exit {process.returncode} {where}"

        # Both back, unarmed: every charge the panel still holds is reported again until
        # acknowledged, and the outbox drains.
        pair.ensure("primary")
        pair.ensure("site")
        while unacked:
            usage_id = unacked.pop(0)
            if pair.charge(usage_id):
                acked.append(usage_id)
            else:
                unacked.append(usage_id)
                time.sleep(0.2)
        wait_for(lambda: query(d["site_db"], "SELECT COUNT(*) FROM outbox") == [(0,)],
                 f"the outbox to drain {where}", timeout=60)

        expected = sorted(f"branch/usage:{u}" for u in acked)
        at_primary = [r[0] for r in query(d["hq_db"], "SELECT entry_id FROM ledger "
                                                      "WHERE origin = 'branch'")]
        counts = Counter(at_primary)
        lost = sorted(set(expected) - set(counts))
        doubled = sorted(i for i, n in counts.items() if n > 1)
        assert not lost, f"lost {len(lost)}: {lost[:5]} {where}"
        assert not doubled, f"doubled {len(doubled)}: {doubled[:5]} {where}"
        assert sorted(at_primary) == expected, f"ledger has charges never made {where}"
        at_site = Counter(r[0] for r in query(d["site_db"], "SELECT entry_id FROM ledger "
                                                            "WHERE entry_id LIKE 'usage:%'"))
        assert sorted(at_site) == sorted(f"usage:{u}" for u in acked) and \
            set(at_site.values()) == {1}, f"the site's own ledger {where}"
        assert query(d["hq_db"], "SELECT COUNT(*) FROM sync_quarantine") == [(0,)], where
        balance = ("SELECT SUM(amount) FROM ledger l JOIN accounts a ON a.id = l.account_id "
                   "WHERE a.name = 'user:alice'")
        wait_for(lambda: query(d["site_db"], balance) == query(d["hq_db"], balance),
                 f"the same balance on both sides {where}")

        for role, table in (("site", SITE_POINTS), ("primary", PRIMARY_POINTS)):
            lines = [line.split() for line in pair.hits[role].read_text().splitlines()]
            assert all(line[2] == "kill" for line in lines), where
            hit = Counter(line[0] for line in lines)
            planned = Counter(name for r, name, _, _ in points if r == role)
            assert hit == planned, f"{role}: hits {dict(hit)} != planned {dict(planned)} {where}"
            assert set(hit) == set(table), where
        assert len(acked) >= POINTS_PER_PROCESS, f"only {len(acked)} charges {where}"
        assert pair.committed_unanswered, \
            f"no charge was killed between its commit and its answer {where}"
        print(f"seed {seed}: {len(acked)} acknowledged charges "
              f"({len(pair.committed_unanswered)} committed, killed before the answer, "
              f"answered on the retry), restarts {dict(pair.restarts)}, duplicates at the primary "
              f"{query(d['hq_db'], 'SELECT SUM(duplicates) FROM sync_sites')[0][0]}")
    finally:
        pair.stop_all()

"""Card login latency at a big site: 100,000 users, 200,000 cards; p50/p99.

Seeds a site's database directly (the store's own `add_user_sync`, in bulk
transactions; PIN verifiers with cheap Argon2id parameters, since a card login
never verifies one), starts the site as its own process (`outpost serve`), and
swipes random cards at the device API as a panel does (`POST /api/v1/sessions`,
a new connection per swipe, as `simulators/mfd/panel.py` does), timing each from
the client's side; then times `AuthService.login` alone in this process. Prints
figures, decides nothing. Usage:

    .venv/bin/python benchmarks/card_login.py [--users 100000] [--cards-per-user 2] [--logins 2000]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def card_number(user: int, slot: int) -> str:
    return f"{(user * 7919 + slot * 104729) % 10**10:010d}"


def write_config(folder: Path, api_port: int) -> Path:
    path = folder / "site.toml"
    path.write_text("\n".join([
        'name = "bench-site"', f'state_dir = "{folder / "state"}"',
        f'secrets_dir = "{folder / "secrets"}"',
        "[ipp]", f"port = {free_port()}", "[lpd]", f"port = {free_port()}",
        "[device_api]", f"port = {api_port}",
        "[auth]", "max_failures = 100000",
        '[[devices]]', 'name = "mfd-1"', 'uri = "ipp://127.0.0.1:9/ipp/print"', ""]))
    return path


def seed(config_path: Path, users: int, cards_per_user: int) -> float:
    from twisted.internet import reactor

    from appliance.config import load
    from appliance.core.credentials import CardKey, make_verifier, password_hasher
    from appliance.storage.database import Database
    from appliance.storage.store import NewIdentity, add_user_sync
    from appliance.storage.sync_store import declare_role_sync

    config = load(config_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    key = CardKey.load_or_create(config.card_key_path)
    cheap = password_hasher(time_cost=1, memory_kib=8)
    database = Database(config.database_path, reactor)
    database.open()
    started = time.perf_counter()
    try:
        database.run_sync(lambda db: declare_role_sync(db, "site", config.name))
        batch = 10_000
        for first in range(0, users, batch):
            rows = []
            for i in range(first, min(users, first + batch)):
                identities = [NewIdentity("card", key.lookup(card_number(i, s)), None)
                              for s in range(cards_per_user)]
                identities.append(NewIdentity("pin", None, make_verifier(cheap, f"{i % 10000:04d}")))
                rows.append((f"user{i:06d}", identities))

            def work(db, rows=rows):  # type: ignore[no-untyped-def]
                for name, identities in rows:
                    add_user_sync(db, name, name, "", identities, 0)

            database.run_sync(work)
            print(f"  seeded {min(users, first + batch):,} users", file=sys.stderr, flush=True)
    finally:
        database.close()
    return time.perf_counter() - started


def http_logins(api_port: int, users: int, cards_per_user: int, count: int) -> list[float]:
    from simulators.mfd.panel import Panel

    rng = random.Random(7)
    times = []
    base = f"http://127.0.0.1:{api_port}/api/v1"
    for _ in range(50):  # warm-up
        Panel(base, "mfd-1").login_card(card_number(rng.randrange(users), 0))
    for _ in range(count):
        user, slot = rng.randrange(users), rng.randrange(cards_per_user)
        panel = Panel(base, "mfd-1")
        started = time.perf_counter()
        answer = panel.login_card(card_number(user, slot))
        times.append((time.perf_counter() - started) * 1000)
        assert answer["ok"] and answer["user"]["username"] == f"user{user:06d}", answer
        panel.logout()
    return times


def core_logins(config_path: Path, users: int, cards_per_user: int, count: int) -> list[float]:
    """AuthService.login alone (HMAC, one indexed lookup in the database thread)."""
    from twisted.internet import defer, reactor

    from appliance.app import build_site
    from appliance.config import load
    from appliance.core.auth import Credentials

    site = build_site(load(config_path), reactor)
    rng = random.Random(11)
    times: list[float] = []

    async def run() -> None:
        for _ in range(count):
            user, slot = rng.randrange(users), rng.randrange(cards_per_user)
            started = time.perf_counter()
            session = await site.auth.login("mfd-1", Credentials(card=card_number(user, slot)))
            times.append((time.perf_counter() - started) * 1000)
            site.auth.sessions.close(session.token)

    def go() -> None:
        d = defer.ensureDeferred(run())
        d.addErrback(lambda f: print(f.getTraceback(), file=sys.stderr))
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(go)
    reactor.run()
    site.database.close()
    return times


def report(label: str, times: list[float]) -> dict[str, float]:
    figures = {"n": len(times), "p50_ms": round(percentile(times, 50), 2),
               "p99_ms": round(percentile(times, 99), 2),
               "mean_ms": round(statistics.fmean(times), 2), "max_ms": round(max(times), 2)}
    print(f"{label}: " + ", ".join(f"{k} {v}" for k, v in figures.items()))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--cards-per-user", type=int, default=2)
    parser.add_argument("--logins", type=int, default=2000)
    args = parser.parse_args()
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    with tempfile.TemporaryDirectory() as folder:
        api_port = free_port()
        config = write_config(Path(folder), api_port)
        took = seed(config, args.users, args.cards_per_user)
        size = (Path(folder) / "state" / "outpost.sqlite3").stat().st_size
        print(f"seeded {args.users:,} users and {args.users * args.cards_per_user:,} cards in "
              f"{took:.1f}s; database {size / 1e6:.1f} MB")
        log = open(Path(folder) / "site.log", "wb")
        site = subprocess.Popen([sys.executable, "-m", "appliance.cli", "serve", "--config",
                                 str(config)], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", api_port), timeout=0.5).close()
                    break
                except OSError:
                    if time.monotonic() > deadline or site.poll() is not None:
                        raise RuntimeError(
                            (Path(folder) / "site.log").read_text()[-2000:]) from None
                    time.sleep(0.2)
            http = report("card login over the device API (site process, new connection each)",
                          http_logins(api_port, args.users, args.cards_per_user, args.logins))
        finally:
            site.send_signal(signal.SIGTERM)
            site.wait(30)
            log.close()
        core = report("card login in AuthService (in process, HMAC + one indexed lookup)",
                      core_logins(config, args.users, args.cards_per_user, args.logins))
        print(json.dumps({"users": args.users, "cards": args.users * args.cards_per_user,
                          "cpus": os.cpu_count(), "device_api": http, "core": core}))


if __name__ == "__main__":
    main()

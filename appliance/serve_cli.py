"""`outpost serve` (run a site) and `outpost users import` (seed users and credentials)."""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
from pathlib import Path
from typing import Any

from appliance.cli import config_option, subcommands


def register(commands: Any) -> None:
    serve = commands.add_parser("serve", help="run the appliance with a configuration file")
    config_option(serve)
    serve.add_argument("--check", action="store_true",
                       help="only check the configuration, report every error, and exit")
    serve.set_defaults(func=serve_command)

    users = commands.add_parser("users", help="manage the site's users")
    users_commands = subcommands(users, "users_command")
    imp = users_commands.add_parser(
        "import", help="add users with cards, PINs, passwords and opening balances",
        description="Reads a JSON list of {username, full_name, email, card, pin, password, "
        "balance} from FILE or standard input. Secrets are stored only as HMACs and Argon2id "
        "verifiers.")
    config_option(imp)
    imp.add_argument("file", nargs="?", default="-")
    imp.set_defaults(func=import_users_command)


def _setup_logging(level: str) -> None:
    from twisted.logger import globalLogBeginner, textFileLogObserver

    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    observer: Any = textFileLogObserver(sys.stderr)
    globalLogBeginner.beginLoggingTo([observer],
                                     redirectStandardIO=False)


def serve_command(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if args.check:
        print("configuration ok")
        return 0
    from appliance.enroll_cli import enroll_before_serve

    enrolled = enroll_before_serve(args.config, config)   # first boot: enroll.toml, no cert
    if enrolled:
        return enrolled
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer
    from twisted.internet import reactor as installed

    from appliance.app import build_site
    from appliance.systemd import Notifier

    reactor: Any = installed
    notifier = Notifier.from_environment()  # a no-op unless run by systemd (Type=notify)

    _setup_logging(config.log_level)
    log = logging.getLogger("outpost")
    site: Any
    if config.role == "primary":
        from appliance.roles.primary import build_primary

        site = build_primary(config, reactor)
    else:
        site = build_site(config, reactor)

    async def start() -> None:
        ports = await site.start()
        log.info("%s %s serving: %s", config.role, config.name,
                 ", ".join(f"{name} port {port}" for name, port in ports.items()))
        print(json.dumps({"event": "serving", "name": config.name, **ports}), flush=True)
        notifier.ready(f"{config.role} {config.name} serving")

    start_failures: list[Any] = []

    def failed(failure: Any) -> None:
        log.error("start-up failed: %s", failure.getTraceback())
        start_failures.append(failure)  # exit non-zero, so that Restart=on-failure retries
        reactor.stop()

    def stop(signum: int, frame: Any) -> None:
        log.info("signal %d: stopping", signum)
        reactor.callFromThread(reactor.stop)

    reactor.callWhenRunning(lambda: defer.ensureDeferred(start()).addErrback(failed))
    reactor.callWhenRunning(notifier.start_watchdog, reactor)
    reactor.addSystemEventTrigger("before", "shutdown", notifier.stopping)
    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: defer.ensureDeferred(site.stop()))
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    reactor.run(installSignalHandlers=False)
    return 1 if start_failures else 0


def import_users(config_path: Path, users: list[dict[str, Any]]) -> int:
    """Insert users into the site's database; returns how many were added."""
    from appliance.config import load
    from appliance.core.credentials import CardKey, make_verifier, password_hasher
    from appliance.storage.database import Database
    from appliance.storage.store import NewIdentity, add_user_sync

    config = load(config_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    card_key = CardKey.load_or_create(config.card_key_path)
    hasher = password_hasher(config.auth.argon2_time_cost, config.auth.argon2_memory_kib)
    prepared = []
    for user in users:
        identities = []
        if user.get("card"):
            identities.append(NewIdentity("card", card_key.lookup(str(user["card"])), None))
        for kind in ("pin", "password"):
            if user.get(kind):
                identities.append(NewIdentity(kind, None, make_verifier(hasher, str(user[kind]))))
        prepared.append((user, identities))

    from twisted.internet import reactor

    database = Database(config.database_path, reactor)
    database.open()
    try:
        def work(db: Any) -> int:
            from appliance.storage.sync_store import declare_role_sync

            declare_role_sync(db, "primary" if config.role == "primary" else "site", config.name)
            for user, identities in prepared:
                add_user_sync(db, str(user["username"]), str(user.get("full_name", "")),
                              str(user.get("email", "")), identities,
                              int(user.get("balance", 0)))
            return len(prepared)

        return database.run_sync(work)
    finally:
        database.close()


def import_users_command(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError

    text = sys.stdin.read() if args.file == "-" else Path(args.file).read_text()
    try:
        users = json.loads(text)
    except ValueError as exc:
        print(f"not JSON: {exc}", file=sys.stderr)
        return 2
    if not isinstance(users, list) or not all(isinstance(u, dict) and u.get("username")
                                              for u in users):
        print("expected a JSON list of objects with a username", file=sys.stderr)
        return 2
    try:
        count = import_users(args.config, users)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(json.dumps({"imported": count}))
    return 0

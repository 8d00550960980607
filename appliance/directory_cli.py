"""`outpost directory sync` (the primary reads its directory) and `outpost directory check`."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from typing import Any

from appliance.cli import config_option, subcommands


def register(commands: Any) -> None:
    directory = commands.add_parser("directory", help="the organisation's directory (LDAP)")
    actions = subcommands(directory, "directory_command")
    sync = actions.add_parser(
        "sync", help="read users and groups from [directory] into the primary",
        description="One run: paged searches, nested groups, users matched by entryUUID or "
        "objectGUID (a rename keeps the account); incremental after the first run. The "
        "primary's change log carries the changes to the sites.")
    config_option(sync)
    sync.add_argument("--full", action="store_true", help="read everything, not only changes")
    sync.set_defaults(func=sync_command)


def sync_settings(config: Any) -> tuple[Any, Any]:
    from appliance.protocols.ldap.client import LdapSettings
    from appliance.protocols.ldap.sync import ACTIVE_DIRECTORY, SyncMapping

    d = config.directory
    mapping = ACTIVE_DIRECTORY if d.sync_schema == "active-directory" else SyncMapping()
    if d.sync_user_filter:
        mapping = replace(mapping, user_filter=d.sync_user_filter)
    if d.sync_group_filter:
        mapping = replace(mapping, group_filter=d.sync_group_filter)
    if d.sync_group_base_dn:
        mapping = replace(mapping, group_base_dn=d.sync_group_base_dn)
    settings = LdapSettings(
        url=d.url, base_dn=d.base_dn, user_filter=d.user_filter,
        username_attribute=d.username_attribute, bind_dn=d.bind_dn,
        bind_password=d.bind_password(), ca_file=str(d.ca_file) if d.ca_file else None,
        starttls=d.starttls, timeout=d.timeout, pool_size=d.pool_size)
    return settings, mapping


def sync_command(args: argparse.Namespace) -> int:
    from appliance.config import ConfigError, load

    try:
        config = load(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    if config.role != "primary" or config.directory is None:
        print("directory sync runs at the primary, with a [directory] section", file=sys.stderr)
        return 2
    from twisted.internet import asyncioreactor

    asyncioreactor.install()
    from twisted.internet import defer
    from twisted.internet import reactor as installed

    from appliance.core.credentials import CardKey
    from appliance.protocols.ldap.sync import DirectoryReader
    from appliance.roles.directory_sync import DirectorySyncRunner
    from appliance.storage.database import Database
    from appliance.storage.sync_store import declare_role_sync

    reactor: Any = installed
    settings, mapping = sync_settings(config)
    database = Database(config.database_path, reactor)
    database.open()
    database.run_sync(lambda db: declare_role_sync(db, "primary", config.name))
    runner = DirectorySyncRunner(DirectoryReader(settings, mapping, reactor=reactor), database,
                                 CardKey.load_or_create(config.card_key_path).lookup)
    outcome: dict[str, Any] = {"status": 3}

    async def run() -> None:
        try:
            summary = await runner.run(full=args.full)
            print(json.dumps(summary))
            outcome["status"] = 0 if not summary["conflicts"] else 1
        except Exception as exc:   # the directory's trouble, reported in one line
            print(f"directory sync failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        finally:
            reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run()))
    reactor.run()
    database.close()
    return int(outcome["status"])

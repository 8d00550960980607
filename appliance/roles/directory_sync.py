"""The primary's directory sync: read the directory (paged, in a thread), plan, apply.

`DirectorySyncRunner.run()` is one run: a full read the first time, then
incremental ones (entries modified since the last run, with a safety margin for
clock skew between the primary and the directory, plus a cheap listing of every
stable id to see deletions; groups are always read whole, since a membership
change does not touch the member's entry). The plan is applied to the primary's
tables in one transaction; the change-log triggers carry it to the sites.
Run it from `outpost directory sync --config primary.toml` (cron or a systemd
timer), or on an interval from the primary process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from twisted.internet import threads

from appliance.core.directory_sync import DirectoryUser, plan, resolve_groups
from appliance.protocols.ldap.sync import DirectoryReader
from appliance.storage.database import Database
from appliance.storage.directory_store import apply_plan_sync, hashed, previous_entries_sync
from appliance.storage.sync_store import set_state_sync, state_sync

log = logging.getLogger(__name__)

SINCE_KEY = "directory_sync_since"
#: Re-read entries modified this long before the last run's start (clock skew).
SKEW_MARGIN = 600.0


def generalized_time(ts: float) -> str:
    return time.strftime("%Y%m%d%H%M%SZ", time.gmtime(ts))


class DirectorySyncRunner:
    def __init__(self, reader: DirectoryReader, database: Database,
                 card_lookup: Callable[[str], str], clock: Callable[[], float] = time.time,
                 ) -> None:
        self.reader = reader
        self.database = database
        self.card_lookup = card_lookup
        self.clock = clock

    def _read(self, previous: dict[str, DirectoryUser], since: str | None) -> list[DirectoryUser]:
        groups = self.reader.read_groups()
        if since is None or not previous:
            users = [hashed(u, self.card_lookup) for u in self.reader.read_users()]
        else:
            present = self.reader.user_ids()
            changed = {u.stable_id: hashed(u, self.card_lookup)
                       for u in self.reader.read_users(since=since)}
            users = [changed.get(sid) or previous[sid] for sid in present
                     if sid in changed or sid in previous]
        return resolve_groups(users, groups)

    async def run(self, full: bool = False) -> dict[str, Any]:
        started = self.clock()
        previous = await self.database.run(previous_entries_sync)
        since = None if full else await self.database.run(lambda db: state_sync(db, SINCE_KEY))
        current = await threads.deferToThread(self._read, previous, since)
        result = plan(previous, current, complete=True)

        def apply(db: Any) -> dict[str, int]:
            counts = apply_plan_sync(db, result)
            set_state_sync(db, SINCE_KEY, generalized_time(started - SKEW_MARGIN))
            return counts

        counts = await self.database.run(apply)
        summary = {**counts, "deleted": len(result.deleted), "conflicts": list(result.conflicts),
                   "read": len(current), "incremental": since is not None,
                   "seconds": round(self.clock() - started, 2)}
        log.info("directory sync: %s", {k: v for k, v in summary.items() if k != "conflicts"})
        return summary

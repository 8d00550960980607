"""Replication logic (docs/wire/sync.md): what the primary does with pushed batches and
pull requests, and how a site drains its outbox, follows the stream and beats its heart.

No wire format here beyond the JSON values of the spec (the HTTP adapter is
`protocols/http/sync_api.py`, the client `protocols/http/sync_client.py`) and no SQL
(`storage/sync_store.py`).

Idempotency rests on the site-made event id ("<site>/<entry id>"): the primary keeps
the SHA-256 of the canonical JSON of every applied event, so a replay is recognised
(same digest: a duplicate, answered ok) and a forgery or a bug (same id, other
digest) is quarantined, never applied. A batch is applied in one transaction, so a
truncated or refused batch changes nothing, and the site forgets outbox rows only
after the primary's answer names a checkpoint covering them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.internet import defer, task
from twisted.python.failure import Failure

from appliance import failpoints
from appliance.core.mode import LinkMode, Mode, Transition
from appliance.core.sync_events import CHECKERS
from appliance.storage.sync_store import (
    HELD,
    MODE,
    MODE_SINCE,
    NAME,
    PULL_TOKEN,
    SNAPSHOT_NEXT,
    Change,
    IncomingEvent,
    LedgerEvent,
    Peer,
    SnapshotCursor,
    SyncStore,
)

log = logging.getLogger(__name__)

EVENT_KINDS = frozenset({"ledger"}) | frozenset(CHECKERS)   # job, counter_check, card, user
#: A site forwarding a provider's event (docs/providers.md); unwrapped by `parse_batch`.
RELAY = "relay"
LEDGER_KINDS = frozenset({"charge", "credit", "refund", "adjustment"})
ACCOUNT_KINDS = frozenset({"personal", "shared", "system"})
MAX_BATCH_EVENTS = 5000
MAX_PULL_LIMIT = 5000
DEFAULT_PULL_LIMIT = 1000


class SyncError(Exception):
    """A request refused as a whole: nothing was applied. `status` is the HTTP status."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


def canonical(value: Any) -> str:
    """The one JSON text of a value: sorted keys, no spaces, UTF-8 as is."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------- checking pushed batches


@dataclass(frozen=True)
class Batch:
    site: str
    batch_id: str
    events: list[IncomingEvent]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_batch(payload: Any, peer: str | None) -> Batch:
    """Check a pushed batch's envelope; raises SyncError (400, 403) for the whole batch.

    Envelope faults (not an object, a missing field, seqs not increasing, an event id
    of another site) refuse the batch: they come from a broken or hostile client, or a
    request cut in transit, and a retry of the real batch will follow. A well-formed
    event whose body cannot apply (unknown kind, bad ledger fields) is not a reason to
    block the site's outbox forever: it is quarantined and reported instead.
    """
    if not isinstance(payload, dict):
        raise SyncError(400, "malformed", "the body must be a JSON object")
    site, batch_id, events = payload.get("site"), payload.get("batch_id"), payload.get("events")
    if not isinstance(site, str) or not site or "/" in site:
        raise SyncError(400, "malformed", "site: a name without '/' is required")
    if peer is None:
        raise SyncError(401, "no_identity", "no client certificate")
    if site != peer:
        raise SyncError(403, "wrong_site",
                        f"the client certificate is {peer!r}'s, the batch says {site!r}")
    if not isinstance(batch_id, str) or not batch_id or len(batch_id) > 200:
        raise SyncError(400, "malformed", "batch_id: a string of 1..200 characters is required")
    if not isinstance(events, list):
        raise SyncError(400, "malformed", "events: a list is required")
    if len(events) > MAX_BATCH_EVENTS:
        raise SyncError(413, "too_large", f"at most {MAX_BATCH_EVENTS} events per batch")
    checked: list[IncomingEvent] = []
    previous = 0
    seen: set[str] = set()
    for i, event in enumerate(events):
        where = f"events[{i}]"
        if not isinstance(event, dict) or set(event) != {"seq", "event_id", "kind", "body"}:
            raise SyncError(400, "malformed",
                            f"{where}: an object with exactly seq, event_id, kind, body")
        seq, event_id, kind, body = event["seq"], event["event_id"], event["kind"], event["body"]
        if not _is_int(seq) or seq <= previous:
            raise SyncError(400, "malformed", f"{where}.seq: positive and increasing")
        previous = seq
        if not isinstance(event_id, str) or not event_id.startswith(site + "/") \
                or len(event_id) <= len(site) + 1:
            raise SyncError(400, "malformed", f"{where}.event_id: must be '{site}/<entry id>'")
        if event_id in seen:
            raise SyncError(400, "malformed", f"{where}.event_id: twice in one batch")
        seen.add(event_id)
        if not isinstance(kind, str) or not isinstance(body, dict):
            raise SyncError(400, "malformed", f"{where}: kind is a string, body an object")
        try:
            text = canonical(body)
        except ValueError as exc:
            raise SyncError(400, "malformed", f"{where}.body: {exc}") from None
        if kind == RELAY:
            checked.append(_relay_event(seq, event_id, site, body, text, seen))
            continue
        invalid: str | None = None
        ledger: LedgerEvent | None = None
        record: dict[str, Any] | None = None
        if kind not in EVENT_KINDS:
            invalid = f"unknown event kind {kind!r}"
        elif kind in CHECKERS:
            record, invalid = CHECKERS[kind](body, event_id[len(site) + 1:])
        else:
            ledger, invalid = _ledger_event(body, event_id[len(site) + 1:])
        checked.append(IncomingEvent(seq, event_id, kind, text, digest(text), invalid, ledger,
                                     record=record))
    return Batch(site, batch_id, checked)


def _relay_event(seq: int, event_id: str, site: str, body: dict[str, Any], text: str,
                 seen: set[str]) -> IncomingEvent:
    """A provider's event that a site forwards (docs/providers.md): handled as if the
    provider had pushed it itself — its id, its canonical body and digest, its origin — so
    that the same event arriving directly and through a site is applied once. A relay
    event that cannot be read is quarantined under its own id."""
    origin, inner_id, inner_kind, inner = (body.get("origin"), body.get("event_id"),
                                           body.get("kind"), body.get("body"))
    problem: str | None = None
    if not isinstance(origin, str) or not origin or "/" in origin or origin == site:
        problem = "origin: the name of another appliance"
    elif not isinstance(inner_id, str) or not inner_id.startswith(origin + "/") \
            or len(inner_id) <= len(origin) + 1:
        problem = "event_id: '<origin>/<entry id>'"
    elif not isinstance(inner_kind, str) or inner_kind == RELAY:
        problem = f"kind: an event kind other than {RELAY!r}"
    elif not isinstance(inner, dict):
        problem = "body: an object"
    elif inner_id in seen:
        problem = f"{inner_id} relayed twice in one batch"
    if problem is not None:
        return IncomingEvent(seq, event_id, RELAY, text, digest(text),
                             f"invalid relay event: {problem}")
    assert isinstance(inner_id, str) and isinstance(origin, str)
    seen.add(inner_id)
    # The inner event is checked exactly as the provider's own push would be.
    try:
        (event,) = parse_batch({"site": origin, "batch_id": "relay", "events": [
            {"seq": seq, "event_id": inner_id, "kind": inner_kind, "body": inner}]},
            origin).events
    except SyncError as exc:
        return IncomingEvent(seq, event_id, RELAY, text, digest(text),
                             f"invalid relay event: {exc}")
    return replace(event, origin=origin)


def reparse_held(row: dict[str, Any]) -> IncomingEvent:
    """A relay event the primary held (its origin was not a known provider yet), rebuilt
    from its quarantine row (the inner event's id, kind and body; the relaying site, the
    relay's seq) and checked again as `parse_batch` checked it."""
    inner_id = str(row["event_id"])
    origin = inner_id.split("/", 1)[0]
    body = {"origin": origin, "event_id": inner_id, "kind": row["kind"],
            "body": json.loads(row["body"])}
    return _relay_event(int(row["seq"]), f"{row['site']}/{RELAY}:{inner_id}", str(row["site"]),
                        body, canonical(body), set())


def _ledger_event(body: dict[str, Any], entry_id: str) -> tuple[LedgerEvent | None, str | None]:
    problems = []
    if body.get("entry_id") != entry_id:
        problems.append("entry_id does not match the event id")
    if not isinstance(body.get("account"), str) or not body.get("account"):
        problems.append("account: a name")
    if body.get("account_kind") not in ACCOUNT_KINDS:
        problems.append(f"account_kind: one of {sorted(ACCOUNT_KINDS)}")
    if not _is_int(body.get("amount")):
        problems.append("amount: an integer (minor units)")
    if body.get("kind") not in LEDGER_KINDS:
        problems.append(f"kind: one of {sorted(LEDGER_KINDS)}")
    if not isinstance(body.get("source"), str):
        problems.append("source: a string")
    for name in ("impressions", "colour"):
        if body.get(name) is not None and not _is_int(body.get(name)):
            problems.append(f"{name}: an integer or null")
    if body.get("device") is not None and not isinstance(body.get("device"), str):
        problems.append("device: a string or null")
    created = body.get("created_at")
    if not isinstance(created, int | float) or isinstance(created, bool):
        problems.append("created_at: a number")
    if not isinstance(body.get("body", {}), dict):
        problems.append("body: an object")
    if problems:
        return None, "invalid ledger event: " + "; ".join(problems)
    return LedgerEvent(
        entry_id=entry_id, account=body["account"], account_kind=body["account_kind"],
        amount=body["amount"], kind=body["kind"], source=body["source"],
        device=body.get("device"), impressions=body.get("impressions"),
        colour=body.get("colour"), body=canonical(body.get("body") or {}),
        created_at=float(body["created_at"])), None


def parse_token(value: str | None) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 19:
        raise SyncError(400, "bad_token", "since: a token this primary gave")
    return int(value)


# ---------------------------------------------------------------- the primary


def pull_limit(limit: str | int | None) -> int:
    """A pull's `limit` (DEFAULT_PULL_LIMIT when absent): 1..MAX_PULL_LIMIT, or a 400."""
    if limit is None:
        return DEFAULT_PULL_LIMIT
    if isinstance(limit, str) and not limit.isdigit():
        raise SyncError(400, "bad_limit", "limit: a positive integer")
    count = int(limit)
    if not 1 <= count <= MAX_PULL_LIMIT:
        raise SyncError(400, "bad_limit", f"limit: 1..{MAX_PULL_LIMIT}")
    return count


class PrimarySync:
    """The primary's side of the wire, one method per request (peer: the certificate's site)."""

    def __init__(self, *, store: SyncStore, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock
        self._seen: set[tuple[str, str]] = set()

    def _peer(self, name: str, kind: str | None) -> Peer | None:
        """What the store records of the pusher (its certificate kind; a provider seen for
        the first time gets the relay events held for it applied, docs/providers.md), or
        None once recorded by this process."""
        if kind is None or (name, kind) in self._seen:
            return None
        return Peer(kind, reparse_held)

    async def receive_batch(self, payload: Any, peer: str | None,
                            kind: str | None = None) -> dict[str, Any]:
        """Apply a pushed batch; `kind` is the pusher's certificate kind (site, provider)."""
        batch = parse_batch(payload, peer)
        events = batch.events
        if kind is not None and kind != "site":
            # Only a site relays (a provider's own outbox holds no relay events).
            events = [e if e.origin is None else replace(
                e, invalid=f"invalid relay event: a {kind} certificate may not relay")
                for e in events]
        outcome = await self.store.apply_batch(batch.site, batch.batch_id, events,
                                               self.clock(), self._peer(batch.site, kind))
        self._saw(batch.site, kind)
        failpoints.hit("primary.batch.applied")
        if outcome.gap_after is not None:
            log.warning("sync: %s's batch %s starts at seq %d, past its checkpoint %d",
                        batch.site, batch.batch_id, batch.events[0].seq, outcome.gap_after)
        for q in outcome.quarantined:
            log.log(logging.WARNING if q["reason"].startswith(HELD) else logging.ERROR,
                    "sync: quarantined %s from %s: %s", q["event_id"], batch.site, q["reason"])
        return {"checkpoint": outcome.checkpoint, "applied": outcome.applied,
                "duplicates": outcome.duplicates, "quarantined": outcome.quarantined}

    def _saw(self, name: str, kind: str | None) -> None:
        if kind is not None:
            self._seen.add((name, kind))

    async def changes(self, since: str | None, limit: str | int | None) -> dict[str, Any]:
        start = parse_token(since)
        count = pull_limit(limit)
        rows, token, more = await self.store.changes_since(start, count)
        return {"changes": [c.to_wire() for c in rows], "token": str(token), "more": more}

    async def snapshot(self, after: str | None = None,
                       limit: str | int | None = None) -> dict[str, Any]:
        """The whole snapshot in one answer, or (with `limit`, and `after` = the previous
        page's `next`) one page of it: `next` is null on the last page."""
        if after is None and limit is None:
            rows, token = await self.store.snapshot()
            return {"changes": [c.to_wire() for c in rows], "token": str(token)}
        cursor = None
        if after:
            cursor = SnapshotCursor.parse(after)
            if cursor is None:
                raise SyncError(400, "bad_token", "after: a cursor this primary gave")
        count = pull_limit(limit)
        page, token, following = await self.store.snapshot_page(cursor, count)
        return {"changes": [c.to_wire() for c in page], "token": str(token),
                "next": None if following is None else str(following)}

    async def heartbeat(self, payload: Any, peer: str | None,
                        kind: str | None = None) -> dict[str, Any]:
        if not isinstance(payload, dict) or not isinstance(payload.get("site"), str):
            raise SyncError(400, "malformed", "a JSON object with site is required")
        if peer is None:
            raise SyncError(401, "no_identity", "no client certificate")
        if payload["site"] != peer:
            raise SyncError(403, "wrong_site",
                            f"the client certificate is {peer!r}'s, the heartbeat says "
                            f"{payload['site']!r}")
        mode: Any = payload.get("mode")
        outbox: Any = payload.get("outbox")
        pull_token: Any = payload.get("pull_token")
        if mode not in {m.value for m in Mode} or not _is_int(outbox) or outbox < 0 or (
                pull_token is not None and not isinstance(pull_token, str)):
            raise SyncError(400, "malformed", "mode, outbox (>= 0) and pull_token (string)")
        outage = payload.get("outage")
        period: tuple[float, float] | None = None
        if outage is not None:
            if not isinstance(outage, dict) or not all(
                    isinstance(outage.get(k), int | float) and not isinstance(outage.get(k), bool)
                    for k in ("started_at", "ended_at")):
                raise SyncError(400, "malformed", "outage: {started_at, ended_at}")
            period = (float(outage["started_at"]), float(outage["ended_at"]))
        now = self.clock()
        head = await self.store.heartbeat(peer, mode=mode, outbox=outbox, pull_token=pull_token,
                                          outage=period, now=now, peer=self._peer(peer, kind))
        self._saw(peer, kind)
        return {"ok": True, "token": str(head), "time": now}


# ---------------------------------------------------------------- the site


class SyncUnavailable(Exception):
    """The primary could not be reached or did not answer (a miss): try again later."""


class SyncRefused(Exception):
    """The primary answered with a refusal (4xx): retrying the same request will not help."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"primary refused: {status} {body!r}")
        self.status = status
        self.body = body


class SyncClient(Protocol):
    """The wire as the site sees it (`protocols/http/sync_client.py` implements it)."""

    async def push(self, batch: dict[str, Any]) -> dict[str, Any]: ...
    async def changes(self, since: str, limit: int) -> dict[str, Any]: ...
    async def snapshot(self, after: str | None = None,
                       limit: int | None = None) -> dict[str, Any]: ...
    async def heartbeat(self, body: dict[str, Any]) -> dict[str, Any]: ...
    # and, for offline allowances: async def allowances(self, body) -> dict[str, Any]


def _changes(values: Any) -> list[Change]:
    if not isinstance(values, list):
        raise SyncRefused(200, "changes: not a list")
    out = []
    for value in values:
        if not isinstance(value, dict) or not isinstance(value.get("body"), dict) \
                or not isinstance(value.get("kind"), str):
            raise SyncRefused(200, f"not a change: {value!r}")
        out.append(Change(parse_token(str(value.get("token", "0"))), value["kind"],
                          str(value.get("key", "")), value["body"]))
    return out


@dataclass
class SyncStats:
    heartbeats: int = 0
    misses: int = 0
    pushed_batches: int = 0
    pushed_events: int = 0
    duplicates: int = 0
    quarantined: int = 0
    push_failures: int = 0
    pulled_changes: int = 0
    pull_failures: int = 0


class TickLoop:
    """The heartbeat loop (and an optional faster push loop) of a sync that ticks:
    `tick` every `heartbeat_interval`, a push step every `push_interval` when that is
    shorter. Shared by SiteSync and the provider's ProviderSync."""

    clock: Any
    heartbeat_interval: float
    push_interval: float | None
    _loop: task.LoopingCall | None
    _push_loop: task.LoopingCall | None
    _ticking: defer.Deferred[None] | None
    _heartbeat_owed: bool
    _tick_log: logging.Logger = log
    _tick_failed: str = "sync tick failed: %s"

    async def tick(self) -> None:
        raise NotImplementedError

    def _start_loops(self, push: Callable[[], Any]) -> None:
        self._loop = task.LoopingCall(self._guarded, self.tick, heartbeat=True)
        self._loop.clock = self.clock
        self._loop.start(self.heartbeat_interval, now=True)
        if self.push_interval is not None and self.push_interval < self.heartbeat_interval:
            self._push_loop = task.LoopingCall(self._guarded, push)
            self._push_loop.clock = self.clock
            self._push_loop.start(self.push_interval, now=False)

    async def stop(self) -> None:
        for loop in (self._loop, self._push_loop):
            if loop is not None and loop.running:
                loop.stop()
        if self._ticking is not None:
            await self._ticking

    def _guarded(self, step: Callable[[], Any], heartbeat: bool = False) -> None:
        """Run one step unless one is still running. A push between heartbeats is then
        skipped; a heartbeat is owed and runs right after (a busy link is not a miss)."""
        if self._ticking is not None:
            self._heartbeat_owed = self._heartbeat_owed or heartbeat
            return None
        d: defer.Deferred[None] = defer.ensureDeferred(step())
        self._ticking = d

        def done(result: Any) -> None:
            self._ticking = None
            if isinstance(result, Failure):
                self._tick_log.error(self._tick_failed, result.getTraceback())
            if self._heartbeat_owed and self._loop is not None and self._loop.running:
                self._heartbeat_owed = False
                self._guarded(self.tick, heartbeat=True)

        d.addBoth(done)
        return None


class SiteSync(TickLoop):
    """A site's uplink: every `heartbeat_interval` one tick — heartbeat, then, online,
    drain the outbox in batches and follow the change stream.

    Everything it needs is injected (store, client, mode, clock); a tick is also
    callable directly, which is how tests step it on simulated time.
    """

    def __init__(self, *, name: str, store: SyncStore, client: SyncClient, mode: LinkMode,
                 clock: Any, heartbeat_interval: float, push_batch_size: int = 500,
                 pull_limit: int = DEFAULT_PULL_LIMIT, push_interval: float | None = None) -> None:
        self.name = name
        self.store = store
        self.client = client
        self.mode = mode
        self.clock = clock
        self.heartbeat_interval = heartbeat_interval
        self.push_batch_size = push_batch_size
        self.pull_limit = pull_limit
        #: Online, the outbox is also drained this often between heartbeats.
        self.push_interval = push_interval
        self._push_loop: task.LoopingCall | None = None
        self._heartbeat_owed = False
        self.stats = SyncStats()
        self._pending_outage: tuple[float, float] | None = None
        self._restored = False
        self._unsaved: Transition | None = None
        self._loop: task.LoopingCall | None = None
        self._ticking: defer.Deferred[None] | None = None
        mode.subscribe(self._on_transition)
        #: core.allowance.SiteAllowances when offline allowances are on (app.py sets it).
        self.allowances: Any = None

    def _on_transition(self, transition: Transition) -> None:
        self._unsaved = transition
        if transition.outage_started is not None:
            self._pending_outage = (transition.outage_started, transition.at)
            if self.allowances is not None:
                self.allowances.force()   # report offline spending, get fresh grants

    async def _restore_mode(self) -> None:
        """An outage outlives a restart: the mode and its start are kept in sync_state."""
        self._restored = True
        state, since = await self.store.state(MODE), await self.store.state(MODE_SINCE)
        if state == Mode.OFFLINE.value and since:
            self.mode.restore(Mode.OFFLINE, float(since))

    async def _save_mode(self) -> None:
        transition, self._unsaved = self._unsaved, None
        if transition is not None:
            await self.store.set_states({MODE: transition.after.value,
                                         MODE_SINCE: repr(transition.at)})

    # -- lifecycle

    def start(self) -> None:
        self._start_loops(self.sync_if_online)

    # -- one tick

    async def tick(self) -> None:
        if not self._restored:
            await self._restore_mode()
        ok = await self.heartbeat()
        await self._save_mode()
        if not ok or not self.mode.online:
            return
        if self._pending_outage is not None:
            await self.heartbeat()
        pushed = await self.push_all()
        pulled = await self.pull_all()
        # Offline allowances only once the primary has every charge (its balances are
        # then complete): after the outbox drained (docs/offline-allowance.md).
        if self.allowances is not None and pushed and pulled and self.allowances.due() \
                and not await self.store.outbox_size():
            await self.allowances.refresh()

    async def sync_if_online(self) -> None:
        """Between heartbeats: drain what the outbox gained, then pull."""
        if self.mode.online and await self.store.outbox_size():
            await self.push_all()
            await self.pull_all()

    async def heartbeat(self) -> bool:
        body: dict[str, Any] = {
            "site": self.name, "mode": self.mode.state.value,
            "outbox": await self.store.outbox_size(),
            "pull_token": await self.store.state(PULL_TOKEN), "at": self.clock.seconds()}
        outage = self._pending_outage
        if outage is not None:
            body["outage"] = {"started_at": outage[0], "ended_at": outage[1]}
        try:
            await self.client.heartbeat(body)
        except (SyncUnavailable, SyncRefused) as exc:
            self.stats.misses += 1
            log.debug("heartbeat missed: %s", exc)
            self.mode.record(False)
            return False
        self.stats.heartbeats += 1
        if outage is not None and self._pending_outage == outage:
            self._pending_outage = None
        self.mode.record(True)
        return True

    async def push_once(self) -> int:
        """Push the oldest `push_batch_size` outbox events; returns how many were forgotten."""
        events = await self.store.outbox_batch(self.push_batch_size)
        if not events:
            return 0
        batch = {
            "site": self.name,
            "batch_id": f"{self.name}:{events[0].seq}-{events[-1].seq}",
            "events": [{"seq": e.seq, "event_id": e.event_id, "kind": e.kind,
                        "body": json.loads(e.body)} for e in events],
        }
        answer = await self.client.push(batch)
        checkpoint: Any = answer.get("checkpoint") if isinstance(answer, dict) else None
        if not _is_int(checkpoint) or not 0 <= checkpoint <= events[-1].seq:
            # Never forget beyond what was sent and acknowledged.
            raise SyncRefused(200, f"checkpoint {checkpoint!r} outside the batch sent")
        failpoints.hit("site.push.acked")
        forgotten = await self.store.outbox_ack(checkpoint)
        self.stats.pushed_batches += 1
        self.stats.pushed_events += int(answer.get("applied", 0))
        self.stats.duplicates += int(answer.get("duplicates", 0))
        for q in answer.get("quarantined") or []:
            self.stats.quarantined += 1
            log.error("sync: the primary quarantined %s: %s", q.get("event_id"), q.get("reason"))
        return forgotten

    async def push_all(self) -> bool:
        """Drain the outbox; False when a push failed (the next tick resumes from the
        checkpoint: unacknowledged events are still in the outbox)."""
        try:
            while await self.push_once():
                pass
        except (SyncUnavailable, SyncRefused) as exc:
            self.stats.push_failures += 1
            log.info("sync: push interrupted: %s", exc)
            return False
        return True

    async def _bootstrap(self) -> str:
        """Read the primary's snapshot in pages of `pull_limit` rows, each applied in its
        own transaction, so a big primary never needs one giant answer; a restart resumes
        after the last page applied (`snapshot_next`). The pull token is set with the
        last page: the first page's token, from which the stream then replays whatever
        changed while the pages were read. A primary that does not page answers the
        whole snapshot without `next`: one page."""
        after = await self.store.state(SNAPSHOT_NEXT)
        while True:
            snap = await self.client.snapshot(after, self.pull_limit)
            changes = _changes(snap.get("changes"))
            token = str(parse_token(str(snap.get("token"))))
            following: Any = snap.get("next")
            if following is not None and (not isinstance(following, str)
                                          or (following == after and not changes)):
                raise SyncRefused(200, f"snapshot: next {following!r} after {after!r}")
            await self.store.apply_changes(changes, int(token), self.name,
                                           snapshot_next=following)
            self.stats.pulled_changes += len(changes)
            if following is None:
                log.info("sync: bootstrapped from the primary's snapshot at token %s", token)
                return token
            after = following

    async def pull_all(self) -> bool:
        """Follow the stream to its head (bootstrapping from the snapshot the first time)."""
        try:
            token = await self.store.state(PULL_TOKEN)
            if token is None:
                token = await self._bootstrap()
            while True:
                page = await self.client.changes(token, self.pull_limit)
                changes = _changes(page.get("changes"))
                new_token = str(parse_token(str(page.get("token"))))
                await self.store.apply_changes(changes, int(new_token), self.name)
                self.stats.pulled_changes += len(changes)
                token = new_token
                if not page.get("more") or not changes:
                    return True
        except (SyncUnavailable, SyncRefused, SyncError) as exc:
            self.stats.pull_failures += 1
            log.info("sync: pull interrupted: %s", exc)
            return False


async def site_name(store: SyncStore) -> str | None:
    return await store.state(NAME)

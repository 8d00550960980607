"""Bounded offline spending (docs/offline-allowance.md): the arithmetic and the site's gate.

The primary grants each site, per account, an allowance it reserves, so that the
grants of all sites never add up to more than the account can spend; offline, a site
authorises against what is left of its grant. The functions here are pure integer
arithmetic (no floats touch money except the configured share, applied once with a
floor); `OfflineGate` asks the store for the account's position and applies them.
No SQL here (`storage/allowance_store.py`), no wire (`core/sync.py`).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

OFFLINE_ALLOWANCE_EXHAUSTED = "offline_allowance_exhausted"
OFFLINE_USER_UNKNOWN = "offline_user_unknown"
PAST_ALLOWANCE = ("deny", "overdraft")
UNKNOWN_USERS = ("deny", "account")


@dataclass(frozen=True)
class SitePolicy:
    """What the primary configured for one site (`[offline]` + `[offline.sites.NAME]`)."""

    allowance: int | None = None          # fixed amount, or None: a share
    allowance_share: float = 0.5
    past_allowance: str = "deny"
    overdraft: int = 0
    unknown_users: str = "deny"
    offline_account: str = "site:offline"

    def wire(self) -> dict[str, Any]:
        """The part a site needs to authorise offline."""
        return {"past_allowance": self.past_allowance, "overdraft": self.overdraft,
                "unknown_users": self.unknown_users, "offline_account": self.offline_account}


@dataclass(frozen=True)
class OfflinePolicy:
    """The policy as a site holds it (from the primary's answer)."""

    past_allowance: str = "deny"
    overdraft: int = 0
    unknown_users: str = "deny"
    offline_account: str = "site:offline"

    @classmethod
    def from_wire(cls, body: Any) -> OfflinePolicy:
        if not isinstance(body, dict):
            raise ValueError("policy: an object")
        policy = cls(past_allowance=str(body.get("past_allowance", "deny")),
                     overdraft=int(body.get("overdraft", 0)),
                     unknown_users=str(body.get("unknown_users", "deny")),
                     offline_account=str(body.get("offline_account", "site:offline")))
        if policy.past_allowance not in PAST_ALLOWANCE or policy.unknown_users not in \
                UNKNOWN_USERS or policy.overdraft < 0:
            raise ValueError(f"policy: not a valid offline policy: {body!r}")
        return policy

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def extra(self) -> int:
        """How far past the grant this policy lets a site go (per grant)."""
        return self.overdraft if self.past_allowance == "overdraft" else 0


# ---------------------------------------------------------------- the primary's arithmetic


def base_allowance(policy: SitePolicy, spendable: int | None, balance: int) -> int:
    """What the policy would grant before other sites' reservations are considered.

    `spendable` is balance + overdraft limit (None: the account has no limit)."""
    if policy.allowance is not None:
        return max(0, policy.allowance)
    basis = balance if spendable is None else spendable
    return max(0, math.floor(policy.allowance_share * max(0, basis)))


def grant_amount(policy: SitePolicy, *, balance: int, overdraft_limit: int | None,
                 reserved_by_others: int) -> int:
    """The grant for one site and account: never more than what is left unreserved, so
    that `reserved_by_others + grant <= balance + overdraft_limit` whenever the account
    has a limit (and reservations already past it leave 0)."""
    spendable = None if overdraft_limit is None else balance + overdraft_limit
    base = base_allowance(policy, spendable, balance)
    if spendable is None:
        return base
    return max(0, min(base, spendable - reserved_by_others))


# ---------------------------------------------------------------- the site's arithmetic


@dataclass(frozen=True)
class Position:
    """An account's offline position at a site under its current grant."""

    grant_id: str | None
    grant: int          # 0 when there is none
    within: int         # charged under the grant, up to it
    over: int           # charged under the grant beyond it
    expired: bool = False

    def remaining(self) -> int:
        return 0 if self.expired else max(0, self.grant - self.within)

    def headroom(self, policy: OfflinePolicy) -> int:
        """The most a new charge may cost and still be authorised."""
        return self.remaining() + max(0, policy.extra - self.over)


def split_charge(position: Position, amount: int) -> tuple[int, int]:
    """(within, over): how a charge of `amount` counts against the grant."""
    amount = max(0, amount)
    within = min(amount, position.remaining())
    return within, amount - within


def authorised(position: Position, policy: OfflinePolicy, cost: int) -> bool:
    return cost <= position.headroom(policy)


def affordable_units(position: Position, policy: OfflinePolicy, per_unit: int,
                     wanted: int) -> int:
    """How many of `wanted` units at `per_unit` fit in the headroom."""
    if per_unit <= 0:
        return wanted
    return max(0, min(wanted, position.headroom(policy) // per_unit))


# ---------------------------------------------------------------- the gate


@dataclass(frozen=True)
class Verdict:
    """An offline decision. `allowed` False carries the refusal code."""

    allowed: bool
    code: str = ""
    message: str = ""
    max_units: int | None = None


class OfflineGate:
    """Asked by release and accounting before they charge: None means "not offline, or
    no policy: decide as online"; otherwise the offline verdict.

    `store` is an `AllowanceStore`: `position(account_id)` answers the policy and the
    position in one transaction (None when the site is not offline or has no policy).
    `offline` is the link mode's word (`core/mode.py`); while it says online, `check`,
    `units` and `unknown_user_account` read nothing and answer "as online"; the one
    online rule is `reserved_elsewhere` (read only at a site with an uplink).
    """

    #: How long an offline copy authorisation holds its cost when the device never
    #: reports the copies (a panel that crashed mid-session): longer than a copy session.
    COPY_HOLD_SECONDS = 600.0

    def __init__(self, store: Any, offline: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.offline = offline
        self.clock = clock
        #: Offline releases allowed and not yet charged, per account id (see `check`).
        self._held: dict[int, int] = {}
        #: Offline copy authorisations not yet reported, per account id and device: the
        #: authorised cost and until when it is held (see `units`).
        self._copy_holds: dict[int, dict[str, tuple[int, float]]] = {}
        #: Refusals by policy since start (the site's own count; panels count theirs).
        self.denied = 0

    def _online(self) -> bool:
        return self.offline is None or not self.offline()

    async def _offline_position(self, account_id: int) -> tuple[OfflinePolicy, Position] | None:
        """Offline, the account's policy and position (None online or without a policy)."""
        if self._online():
            return None
        return await self.store.position(account_id)

    async def check(self, account_id: int, cost: int, hold: bool = False) -> Verdict | None:
        """Offline, may `cost` be spent now? With `hold`, an allowed cost is held until
        `release_hold` (the caller charges it meanwhile): concurrent releases of one user
        at two MFDs are then checked against what is left after each other."""
        state = await self._offline_position(account_id)
        if state is None:
            return None
        policy, position = state
        held = self._held_total(account_id)   # read after the await: no interleaving
        if authorised(position, policy, cost + held):
            if hold:
                self.add_hold(account_id, cost)
            return Verdict(True)
        self.denied += 1
        message = (f"offline: costs {cost}, the offline allowance left is "
                   f"{max(0, position.headroom(policy) - held)}")
        log.info("offline: refused %s for account %d: %s", OFFLINE_ALLOWANCE_EXHAUSTED,
                 account_id, message)
        return Verdict(False, OFFLINE_ALLOWANCE_EXHAUSTED, message)

    async def reserved_elsewhere(self, account_id: int) -> int:
        """Online: what other sites hold in reserve for this account (when this site got
        its grant); the site lets the user spend balance + overdraft limit minus it, so
        that money reserved for another site's outage is not spent here meanwhile.
        0 without an uplink, offline, or without a policy."""
        if self.offline is None or self.offline():
            return 0
        reserved: int = await self.store.reserved_elsewhere(account_id)
        return reserved

    def add_hold(self, account_id: int, amount: int) -> None:
        """Hold `amount` for a release on its way until `release_hold`: one `check`
        allowed, or a job that was printing when the site restarted, followed again."""
        if amount > 0:
            self._held[account_id] = self._held.get(account_id, 0) + amount

    def release_hold(self, account_id: int, amount: int) -> None:
        left = self._held.get(account_id, 0) - amount
        if left > 0:
            self._held[account_id] = left
        else:
            self._held.pop(account_id, None)

    def _held_total(self, account_id: int, except_device: str | None = None) -> int:
        """What is held for the account: releases not yet charged, and copy authorisations
        not yet reported (but not `except_device`'s: a new authorisation replaces it)."""
        held = self._held.get(account_id, 0)
        holds = self._copy_holds.get(account_id)
        if holds:
            now = self.clock()
            for device, (amount, until) in list(holds.items()):
                if until <= now:
                    del holds[device]
                elif device != except_device:
                    held += amount
            if not holds:
                del self._copy_holds[account_id]
        return held

    def release_copy_hold(self, account_id: int, device: str) -> None:
        """The device reported its copies (charged as reported): its hold ends."""
        holds = self._copy_holds.get(account_id)
        if holds is not None:
            holds.pop(device, None)
            if not holds:
                del self._copy_holds[account_id]

    async def units(self, account_id: int, per_unit: int, wanted: int,
                    device: str | None = None) -> Verdict | None:
        """Offline, how many of `wanted` units fit. With `device` (a copy authorisation),
        the cost of what fits is held for that device until it reports its usage (or
        COPY_HOLD_SECONDS pass), so that copy sessions on one account at two devices are
        checked against what is left after each other, as releases are."""
        state = await self._offline_position(account_id)
        if state is None:
            return None
        policy, position = state
        held = self._held_total(account_id, except_device=device)
        fit = affordable_units(position, policy, per_unit, wanted) if not held else (
            wanted if per_unit <= 0 else
            max(0, min(wanted, (position.headroom(policy) - held) // per_unit)))
        if device is not None:
            self.release_copy_hold(account_id, device)
            if fit > 0 and per_unit > 0:
                self._copy_holds.setdefault(account_id, {})[device] = (
                    fit * per_unit, self.clock() + self.COPY_HOLD_SECONDS)
        if fit == wanted:
            return Verdict(True, max_units=fit)
        self.denied += 1
        log.info("offline: refused %s for account %d: %d of %d units fit",
                 OFFLINE_ALLOWANCE_EXHAUSTED, account_id, fit, wanted)
        return Verdict(False, OFFLINE_ALLOWANCE_EXHAUSTED,
                       f"offline: {fit} of {wanted} fit in the offline allowance", fit)

    async def unknown_user_account(self) -> tuple[bool, int | None]:
        """Offline with a policy: (True, the account to charge, or None: refuse).
        Otherwise (False, None): decide as online."""
        if self._online():
            return False, None
        result: tuple[bool, int | None] = await self.store.unknown_user_account()
        if result[0] and result[1] is None:
            self.denied += 1
        return result


# ---------------------------------------------------------------- the wire: primary side


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_used(values: Any, site: str) -> list[dict[str, Any]]:
    """Check the `used` report of an allowance request; raises SyncError (400) whole."""
    from appliance.core.sync import SyncError

    if values is None:
        return []
    if not isinstance(values, list) or len(values) > 1_000_000:
        raise SyncError(400, "malformed", "used: a list")
    out = []
    for i, u in enumerate(values):
        where = f"used[{i}]"
        if not isinstance(u, dict) or not isinstance(u.get("grant"), str) \
                or not u["grant"].startswith(site + "/"):
            raise SyncError(400, "malformed", f"{where}.grant: one of this site's grant ids")
        for key in ("spent", "over", "charges"):
            if not _is_int(u.get(key)) or u[key] < 0:
                raise SyncError(400, "malformed", f"{where}.{key}: an integer >= 0")
        out.append({"grant": u["grant"], "spent": u["spent"], "over": u["over"],
                    "charges": u["charges"]})
    return out


class PrimaryAllowances:
    """`POST /sync/v1/allowances` at the primary: one transaction per request (release the
    site's reservations, record its usage report, reserve fresh grants)."""

    def __init__(self, *, store: Any, config: Any, clock: Any) -> None:
        self.store = store          # storage.allowance_store.AllowanceStore
        self.config = config        # config_offline.OfflineConfig, or None: off
        self.clock = clock

    async def request(self, payload: Any, peer: str | None) -> dict[str, Any]:
        from appliance.core.sync import SyncError

        if not isinstance(payload, dict) or not isinstance(payload.get("site"), str):
            raise SyncError(400, "malformed", "a JSON object with site is required")
        if peer is None:
            raise SyncError(401, "no_identity", "no client certificate")
        if payload["site"] != peer:
            raise SyncError(403, "wrong_site", f"the client certificate is {peer!r}'s, the "
                            f"request says {payload['site']!r}")
        used = parse_used(payload.get("used"), peer)
        now = self.clock()
        if self.config is None:
            await self.store.grant(peer, None, used, now, 0.0)
            return {"enabled": False, "grants": []}
        policy = self.config.policy_for(peer)
        validity = float(self.config.validity)
        grants = await self.store.grant(peer, policy, used, now, validity)
        return {"enabled": True, "valid_for": validity, "refresh": float(self.config.refresh),
                "expires_at": now + validity, "policy": OfflinePolicy(
                    policy.past_allowance, policy.overdraft, policy.unknown_users,
                    policy.offline_account).to_wire(),
                "grants": [{"grant": g, "account": a, "amount": n, "elsewhere": e}
                           for g, a, n, e in grants]}


# ---------------------------------------------------------------- the wire: site side


def parse_answer(answer: Any) -> Any:
    """The primary's answer as a `GrantAnswer`; ValueError when it is not one."""
    from appliance.storage.allowance_store import GrantAnswer

    if not isinstance(answer, dict) or not isinstance(answer.get("enabled"), bool):
        raise ValueError("not an allowance answer")
    if not answer["enabled"]:
        return GrantAnswer(False, 0.0, 60.0, None, [])
    valid_for, refresh = answer.get("valid_for"), answer.get("refresh", 60.0)
    if not isinstance(valid_for, int | float) or valid_for <= 0 \
            or not isinstance(refresh, int | float) or refresh <= 0:
        raise ValueError("valid_for, refresh: positive numbers")
    grants = []
    for g in answer.get("grants") or []:
        if not isinstance(g, dict) or not isinstance(g.get("grant"), str) \
                or not isinstance(g.get("account"), str) or not _is_int(g.get("amount")) \
                or g["amount"] < 0:
            raise ValueError(f"not a grant: {g!r}")
        elsewhere = g.get("elsewhere", 0)
        if not _is_int(elsewhere) or elsewhere < 0:
            raise ValueError(f"not a grant: {g!r}")
        grants.append((g["grant"], g["account"], int(g["amount"]), int(elsewhere)))
    return GrantAnswer(True, float(valid_for), float(refresh),
                       OfflinePolicy.from_wire(answer.get("policy")), grants)


class SiteAllowances:
    """The site's half: after a tick drained the outbox and followed the stream, ask for
    fresh grants when they are due (never asked, `refresh` elapsed, or an outage ended),
    reporting what was spent under the old ones.

    The site marks its grants superseded *before* asking (docs/offline-allowance.md,
    "Lifecycle"): a lost answer leaves it with no grant rather than a released one.
    """

    def __init__(self, *, name: str, store: Any, client: Any, clock: Any,
                 wall_clock: Any = None) -> None:
        import time

        self.name = name
        self.store = store            # AllowanceStore of the site's database
        self.client = client          # has `allowances(body)`
        self.clock = clock            # the reactor (refresh timing)
        self.wall_clock = wall_clock or time.time   # grant expiry, as the ledger's clock
        self._next: float | None = None
        self.refresh_after = 60.0
        self.requests = 0
        self.failures = 0

    def due(self) -> bool:
        return self._next is None or self.clock.seconds() >= self._next

    def force(self) -> None:
        """An outage ended: refresh at the next chance (and report offline spending)."""
        self._next = None

    async def refresh(self) -> bool:
        from appliance.core.sync import SyncRefused, SyncUnavailable

        used, superseded = await self.store.supersede()
        sent_at = self.wall_clock()
        body = {"site": self.name, "request_id": f"{self.name}:{sent_at!r}", "used": used}
        self.requests += 1
        try:
            answer = parse_answer(await self.client.allowances(body))
        except (SyncUnavailable, SyncRefused, ValueError) as exc:
            self.failures += 1
            log.info("offline allowances: request failed (%s); no grant until the next one",
                     exc)
            # A miss: retry at the next tick. A refusal (an older primary): not before long.
            self._next = self.clock.seconds() + (
                self.refresh_after if isinstance(exc, SyncRefused) else 0.0)
            return False
        await self.store.store_answer(answer, superseded, sent_at)
        self.refresh_after = answer.refresh
        self._next = self.clock.seconds() + answer.refresh
        return True

"""Balances, copy authorisation and device usage (copy, scan, fax) charging."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from appliance.core.charging import CostPolicy, affordable, usage_rate


class UsageError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CopyAuthorisation:
    allowed: bool
    max_pages: int
    cost_per_page: int
    cost: int
    balance: int
    #: Why not allowed: 'insufficient_balance', or offline 'offline_allowance_exhausted'.
    reason: str | None = None


@dataclass(frozen=True)
class UsageCharge:
    charged: int
    balance: int
    duplicate: bool


class AccountingService:
    def __init__(self, *, store: Any, policies: Callable[[str | None], CostPolicy],
                 offline_gate: Any = None) -> None:
        self.store = store
        self.policies = policies
        #: core.allowance.OfflineGate: offline, copies are authorised against the allowance.
        self.offline_gate = offline_gate

    async def balance(self, account_id: int) -> int:
        balance, _ = await self.store.balance(account_id)
        return int(balance)

    async def authorise_copy(self, *, account_id: int, device: str, pages: int, colour: bool,
                             sides: str) -> CopyAuthorisation:
        """How many of `pages` the user may copy now. Online nothing is reserved; offline
        the cost of what fits is held against the allowance until the device reports."""
        per_page = usage_rate(self.policies(device), "copy", colour=colour, sides=sides)
        balance, overdraft = await self.store.balance(account_id)
        if self.offline_gate is not None:
            verdict = await self.offline_gate.units(account_id, per_page, pages, device)
            if verdict is not None:   # offline, with an allowance policy
                fit = pages if verdict.max_units is None else verdict.max_units
                return CopyAuthorisation(verdict.allowed, fit, per_page, per_page * pages,
                                         balance, None if verdict.allowed else verdict.code)
            # Online: money other sites hold in reserve for their outages is not spendable.
            reserved = await self.offline_gate.reserved_elsewhere(account_id)
        else:
            reserved = 0
        max_pages = affordable(balance - reserved, overdraft, per_page, pages)
        return CopyAuthorisation(max_pages == pages, max_pages, per_page, per_page * pages,
                                 balance, None if max_pages == pages else "insufficient_balance")

    async def report_usage(self, *, usage_id: str, device: str, user_id: int, account_id: int,
                           kind: str, pages: int, colour: bool, sides: str) -> UsageCharge:
        """Charge reported usage once per device-made id; a different body is a conflict."""
        per_page = usage_rate(self.policies(device), kind, colour=colour, sides=sides)
        body = {"device": device, "kind": kind, "pages": pages, "colour": colour,
                "sides": sides, "user_id": user_id}
        result = await self.store.post_usage(
            usage_id=usage_id, device=device, user_id=user_id, account_id=account_id, kind=kind,
            pages=pages, colour=colour, sides=sides, cost=per_page * pages, body=body,
        )
        if not result.body_matches:
            raise UsageError("conflict", f"usage id {usage_id} was reported with another body")
        if self.offline_gate is not None and kind == "copy":
            self.offline_gate.release_copy_hold(account_id, device)
        return UsageCharge(result.amount, result.balance, not result.inserted)

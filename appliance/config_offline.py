"""`[offline]` of the primary: offline allowance policies, defaults and per site.

See docs/offline-allowance.md. Errors are collected with their path, like every other
section (`offline.sites.branch-12.overdraft: must not be negative`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from appliance.core.allowance import PAST_ALLOWANCE, UNKNOWN_USERS, SitePolicy

POLICY_KEYS = ("allowance", "allowance_share", "past_allowance", "overdraft", "unknown_users",
               "offline_account")


@dataclass(frozen=True)
class OfflineConfig:
    defaults: SitePolicy = field(default_factory=SitePolicy)
    sites: dict[str, SitePolicy] = field(default_factory=dict)
    validity: float = 86400.0
    refresh: float = 60.0

    def policy_for(self, site: str) -> SitePolicy:
        return self.sites.get(site, self.defaults)


def _policy(r: Any, table: dict[str, Any], path: str, base: SitePolicy) -> SitePolicy:
    values: dict[str, Any] = {}
    allowance = r.get(table, path, "allowance", int, None)
    share = r.get(table, path, "allowance_share", float, None)
    if allowance is not None and share is not None:
        r.errors.append(f"{path}: give allowance or allowance_share, not both")
    if isinstance(allowance, int):
        if allowance < 0:
            r.errors.append(f"{path}.allowance: must not be negative")
        values["allowance"] = allowance
    if isinstance(share, float):
        if not 0.0 < share <= 1.0:
            r.errors.append(f"{path}.allowance_share: must be in (0, 1]")
        values["allowance"] = None
        values["allowance_share"] = share
    past = r.get(table, path, "past_allowance", str, None)
    if past is not None:
        if past not in PAST_ALLOWANCE:
            r.errors.append(f"{path}.past_allowance: one of {', '.join(PAST_ALLOWANCE)}")
        values["past_allowance"] = past
    overdraft = r.get(table, path, "overdraft", int, None)
    if isinstance(overdraft, int):
        if overdraft < 0:
            r.errors.append(f"{path}.overdraft: must not be negative")
        values["overdraft"] = overdraft
    unknown = r.get(table, path, "unknown_users", str, None)
    if unknown is not None:
        if unknown not in UNKNOWN_USERS:
            r.errors.append(f"{path}.unknown_users: one of {', '.join(UNKNOWN_USERS)}")
        values["unknown_users"] = unknown
    account = r.get(table, path, "offline_account", str, None)
    if account is not None:
        if not account.strip():
            r.errors.append(f"{path}.offline_account: a non-empty account name")
        values["offline_account"] = account
    return replace(base, **values)


def parse_offline(r: Any, root: dict[str, Any], role: str) -> OfflineConfig | None:
    """`[offline]` (None when absent: the primary grants nothing, sites behave as online)."""
    if "offline" not in root:
        return None
    table = r.table(root, "", "offline")
    if role != "primary":
        r.errors.append(f"offline: configured at the primary only (this is role {role!r})")
    r.unknown(table, "offline", {*POLICY_KEYS, "validity", "refresh", "sites"})
    defaults = _policy(r, table, "offline", SitePolicy())
    validity = r.get(table, "offline", "validity", float, 86400.0)
    refresh = r.get(table, "offline", "refresh", float, 60.0)
    r.positive(validity, "offline.validity")
    r.positive(refresh, "offline.refresh")
    sites: dict[str, SitePolicy] = {}
    for name, body in r.table(table, "offline", "sites").items():
        path = f"offline.sites.{name}"
        if not isinstance(body, dict):
            r.errors.append(f"{path}: expected a table")
            continue
        r.unknown(body, path, set(POLICY_KEYS))
        sites[name] = _policy(r, body, path, defaults)
    return OfflineConfig(defaults=defaults, sites=sites, validity=validity, refresh=refresh)

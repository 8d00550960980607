"""What a print, copy, scan or fax costs.

Pure arithmetic on integers (minor units): no floats touch money. A charge
is per impression (one side of a sheet), so a duplex job of 3 pages costs
3 impressions at the duplex rate; `number-up` puts several pages on one
side; `copies` multiplies.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

DUPLEX_SIDES = frozenset({"two-sided-long-edge", "two-sided-short-edge"})


@dataclass(frozen=True)
class Rates:
    """Per-impression prices for one paper size."""

    mono: int
    colour: int
    #: Per side of a duplex sheet; None means the simplex price.
    duplex_mono: int | None = None
    duplex_colour: int | None = None

    def per_impression(self, colour: bool, duplex: bool) -> int:
        if duplex:
            rate = self.duplex_colour if colour else self.duplex_mono
            if rate is not None:
                return rate
        return self.colour if colour else self.mono


@dataclass(frozen=True)
class CostPolicy:
    """Prices of a device (or a site). Sizes not listed use `default`."""

    default: Rates
    sizes: dict[str, Rates] = field(default_factory=dict)
    copy: Rates | None = None  # None: copies cost as prints
    scan: int = 0
    fax: int = 0

    def rates_for(self, media: str | None) -> Rates:
        if media:
            for size, rates in self.sizes.items():
                if media == size or media.startswith(size):
                    return rates
        return self.default

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, body: dict[str, Any]) -> CostPolicy:
        copy = body.get("copy")
        return cls(
            default=Rates(**body["default"]),
            sizes={k: Rates(**v) for k, v in body.get("sizes", {}).items()},
            copy=Rates(**copy) if copy else None,
            scan=int(body.get("scan", 0)),
            fax=int(body.get("fax", 0)),
        )

    @classmethod
    def from_json(cls, text: str) -> CostPolicy:
        return cls.from_dict(json.loads(text))


@dataclass(frozen=True)
class Quote:
    impressions: int       # sides printed, all copies
    sheets: int            # sheets of paper, all copies
    per_impression: int
    cost: int


def impressions_per_copy(pages: int, number_up: int) -> int:
    return math.ceil(pages / max(1, number_up)) if pages > 0 else 0


def quote_print(
    policy: CostPolicy,
    *,
    pages: int | None,
    colour: bool,
    copies: int = 1,
    sides: str = "one-sided",
    number_up: int = 1,
    media: str | None = None,
) -> Quote:
    """The price of printing a document; pages None (uncountable) quotes 0 impressions."""
    duplex = sides in DUPLEX_SIDES
    per_copy = impressions_per_copy(pages or 0, number_up)
    impressions = per_copy * max(1, copies)
    sheets = (math.ceil(per_copy / 2) if duplex else per_copy) * max(1, copies)
    per = policy.rates_for(media).per_impression(colour, duplex)
    return Quote(impressions, sheets, per, impressions * per)


def price_impressions(
    policy: CostPolicy, impressions: int, *, colour: bool, sides: str, media: str | None
) -> int:
    """What `impressions` sides cost: used for what an MFD reports it printed."""
    per = policy.rates_for(media).per_impression(colour, sides in DUPLEX_SIDES)
    return max(0, impressions) * per


def copy_rate(policy: CostPolicy, *, colour: bool, sides: str) -> int:
    rates = policy.copy or policy.default
    return rates.per_impression(colour, sides in DUPLEX_SIDES)


def usage_rate(policy: CostPolicy, kind: str, *, colour: bool, sides: str) -> int:
    if kind == "copy":
        return copy_rate(policy, colour=colour, sides=sides)
    if kind == "scan":
        return policy.scan
    if kind == "fax":
        return policy.fax
    raise ValueError(f"unknown usage kind {kind!r}")


def affordable(balance: int, overdraft_limit: int | None, per_unit: int, wanted: int) -> int:
    """How many of `wanted` units at `per_unit` the account can pay for."""
    if per_unit <= 0 or overdraft_limit is None:
        return wanted
    spendable = balance + overdraft_limit
    if spendable <= 0:
        return 0
    return min(wanted, spendable // per_unit)


LAB_POLICY = CostPolicy(default=Rates(mono=10, colour=40))

"""A program's earning rules, tiers and limits, parsed from its configuration.

Points are integers and every multiplier is a rational (``Fraction``), never a float, so
two nodes computing the same earn always agree to the last point. Earned points round
down (floor) once, after every multiplier is applied.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from fractions import Fraction
from typing import Any

from coalition.errors import InvalidArgument, quoted

_DURATION = re.compile(r"(\d+)(ms|s|m|h|d)")
_UNITS = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_RATIONAL = re.compile(r"(\d+)(?:/(\d+))?")


def parse_duration(text: str | int, what: str) -> timedelta:
    """Parse ``"30d"``, ``"12h"``, ``"15m"``, ``"20s"``, ``"250ms"`` (or whole seconds)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return timedelta(seconds=text)
    match = _DURATION.fullmatch(str(text))
    if not match:
        raise InvalidArgument(f"{what}: bad duration {text!r}, expected e.g. 30d, 12h, 20s")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_rational(text: str | int, what: str) -> Fraction:
    """Parse a non-negative rational written ``"3"`` or ``"5/4"`` (never a float)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return Fraction(text)
    match = _RATIONAL.fullmatch(str(text))
    if not match or match.group(2) == "0":
        raise InvalidArgument(f"{what}: bad rational {text!r}, expected e.g. 3 or 5/4")
    return Fraction(int(match.group(1)), int(match.group(2) or 1))


def rational_text(value: Fraction) -> str:
    """A rational as the ledger writes it: ``"3"`` or ``"5/4"``."""
    return (
        str(value.numerator) if value.denominator == 1 else f"{value.numerator}/{value.denominator}"
    )


@dataclass(frozen=True, slots=True)
class Tier:
    """A status level reached with ``threshold`` qualifying points over the rolling window."""

    name: str
    threshold: int
    multiplier: Fraction


@dataclass(frozen=True, slots=True)
class Promotion:
    """A time-boxed multiplier, such as a double-points weekend, optionally per category."""

    name: str
    multiplier: Fraction
    start: datetime
    end: datetime
    categories: frozenset[str] | None = None

    def applies(self, at: datetime, category: str) -> bool:
        in_window = self.start <= at < self.end
        return in_window and (self.categories is None or category in self.categories)


@dataclass(frozen=True, slots=True)
class EarnQuote:
    """Points for one purchase and the multipliers that produced them (the entry's 'why')."""

    points: int
    multipliers: tuple[tuple[str, str], ...]  # (name, rational as text), in order applied
    capped: bool


@dataclass(frozen=True, slots=True)
class ProgramRules:
    """Everything that decides how many points an event is worth and when they move."""

    currency: str = "EUR"
    minor_units: int = 100
    points_per_unit: Fraction = Fraction(1)
    categories: Mapping[str, Fraction] = field(default_factory=dict)
    promotions: Sequence[Promotion] = ()
    tiers: Sequence[Tier] = (Tier("base", 0, Fraction(1)),)
    tier_window: timedelta = timedelta(days=365)
    holding_period: timedelta = timedelta(days=30)
    expiry_period: timedelta = timedelta(days=365)
    max_points_per_purchase: int = 1_000_000
    max_points_per_operation: int = 100_000_000
    max_spend_minor: int = 10_000_000_000
    rewards: Mapping[str, int] = field(default_factory=dict)
    _factors: dict[
        tuple[str, str, tuple[str, ...]], tuple[tuple[tuple[str, str], ...], Fraction]
    ] = field(default_factory=dict, init=False, repr=False, compare=False)

    def tier_for(self, qualifying: int) -> Tier:
        """The highest tier whose threshold ``qualifying`` points reach."""
        reached = [t for t in self.tiers if qualifying >= t.threshold]
        return max(reached, key=lambda t: t.threshold) if reached else self.tiers[0]

    def quote_purchase(
        self, spend_minor: int, category: str, at: datetime, tier: Tier
    ) -> EarnQuote:
        """Points for spending ``spend_minor`` (minor currency units) in ``category``."""
        check_positive(spend_minor, "spend", self.max_spend_minor)
        multipliers, factor = self._earn_factor(category, at, tier)
        points = spend_minor * factor.numerator // (self.minor_units * factor.denominator)
        capped = points > self.max_points_per_purchase
        return EarnQuote(min(points, self.max_points_per_purchase), multipliers, capped)

    def _earn_factor(
        self, category: str, at: datetime, tier: Tier
    ) -> tuple[tuple[tuple[str, str], ...], Fraction]:
        """The multipliers that apply and their product, cached per (category, tier,
        active promotions): rational arithmetic once per combination, not per purchase."""
        active = (
            tuple(p.name for p in self.promotions if p.applies(at, category))
            if self.promotions
            else ()
        )
        key = (category, tier.name, active)
        cached = self._factors.get(key)
        if cached is not None:
            return cached
        multipliers: list[tuple[str, Fraction]] = [("base", self.points_per_unit)]
        if category:
            if category not in self.categories:
                known = ", ".join(sorted(self.categories)) or "none"
                raise InvalidArgument(f"unknown category {quoted(category)} (known: {known})")
            multipliers.append((f"category:{category}", self.categories[category]))
        multipliers.extend(
            (f"promotion:{p.name}", p.multiplier) for p in self.promotions if p.name in active
        )
        multipliers.append((f"tier:{tier.name}", tier.multiplier))
        factor = Fraction(1)
        for _, value in multipliers:
            factor *= value
        result = (tuple((name, rational_text(value)) for name, value in multipliers), factor)
        self._factors[key] = result
        return result

    def reward_points(self, event: str) -> int:
        """Fixed points for a behaviour event (sign-up, review, referral, ...)."""
        if event not in self.rewards:
            known = ", ".join(sorted(self.rewards)) or "none"
            raise InvalidArgument(f"unknown reward event {quoted(event)} (known: {known})")
        return self.rewards[event]


def check_positive(value: int, what: str, limit: int) -> int:
    """Return ``value`` if it is an int in 1..limit, else raise InvalidArgument saying why."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidArgument(f"{what} must be an integer, got {value!r}")
    if value <= 0:
        raise InvalidArgument(f"{what} must be positive, got {value}")
    if value > limit:
        raise InvalidArgument(f"{what} {value} is over the limit of {limit}")
    return value


def _aware(value: Any, what: str) -> datetime:
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        except ValueError as exc:
            raise InvalidArgument(f"{what}: bad time {value!r}") from exc
    if parsed.tzinfo is None:
        raise InvalidArgument(f"{what}: time {value!r} needs a time zone")
    return parsed


def rules_from_mapping(raw: Mapping[str, Any]) -> ProgramRules:
    """Build rules from a configuration table (the ``[rules]`` table of a node's TOML)."""
    try:
        tiers_raw = raw.get("tiers", {})
        levels = tiers_raw.get("levels") or [{"name": "base", "threshold": 0, "multiplier": "1"}]
        tiers = tuple(
            Tier(str(t["name"]), int(t["threshold"]), parse_rational(t["multiplier"], "tier"))
            for t in levels
        )
        promotions = tuple(
            Promotion(
                str(p["name"]),
                parse_rational(p["multiplier"], f"promotion {p['name']}"),
                _aware(p["start"], f"promotion {p['name']} start"),
                _aware(p["end"], f"promotion {p['name']} end"),
                frozenset(p["categories"]) if "categories" in p else None,
            )
            for p in raw.get("promotions", [])
        )
        defaults = ProgramRules()
        rules = ProgramRules(
            currency=str(raw.get("currency", defaults.currency)),
            minor_units=int(raw.get("minor_units", defaults.minor_units)),
            points_per_unit=parse_rational(raw.get("points_per_unit", 1), "points_per_unit"),
            categories={
                str(k): parse_rational(v, f"category {k}")
                for k, v in raw.get("categories", {}).items()
            },
            promotions=promotions,
            tiers=tiers,
            tier_window=parse_duration(tiers_raw.get("window", "365d"), "tiers.window"),
            holding_period=parse_duration(raw.get("holding_period", "30d"), "holding_period"),
            expiry_period=parse_duration(raw.get("expiry_period", "365d"), "expiry_period"),
            max_points_per_purchase=int(
                raw.get("max_points_per_purchase", defaults.max_points_per_purchase)
            ),
            max_points_per_operation=int(
                raw.get("max_points_per_operation", defaults.max_points_per_operation)
            ),
            max_spend_minor=int(raw.get("max_spend_minor", defaults.max_spend_minor)),
            rewards={str(k): int(v) for k, v in raw.get("rewards", {}).items()},
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InvalidArgument(f"bad rules configuration: {exc!r}") from exc
    if rules.minor_units <= 0 or not rules.tiers:
        raise InvalidArgument("bad rules configuration: minor_units must be > 0, tiers non-empty")
    names = [p.name for p in rules.promotions]
    if len(set(names)) != len(names):
        raise InvalidArgument("bad rules configuration: promotion names must be unique")
    if any(v <= 0 for v in rules.rewards.values()):
        raise InvalidArgument("bad rules configuration: reward points must be positive")
    return rules

"""Parking fees as a simulated lot computes them: a tempPrice tariff (B.20), coupons (B.13), prepayment.

The standard fixes the tariff's fields, not the arithmetic; this is one
plausible reading, used the same way for exits (carOut, backfill) and for the
platform's `feeQuery`:

- parking up to `free_minutes` is free;
- otherwise time is charged in units from the entry on: a unit that starts in
  the day (`day_start` to `day_end`, local time) costs `day_price` and lasts
  `day_time` minutes, one that starts at night `night_price` and `night_time`;
- per local calendar day, the day units are capped at `capping_day`, the night
  units at `capping_night`, and both together at `capping_all` (0: no cap).

Coupons apply in order, each to what is left: a cash coupon (type 0) takes its
`discountMoney` off when the fee reaches `minimumConsumption`; a discount coupon
(1) leaves `discountRate` of it, at most `maxDiscountMoney` off; a time coupon
(3) charges as if the car had come `freeMinutes` (else `parkingTime`) minutes
later; a full coupon (4) takes everything.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import date, datetime
from zoneinfo import ZoneInfo

from attrs import evolve, frozen

__all__ = ["Fee", "Tariff", "compute_fee", "parking_fee", "parking_minutes"]


def _money(value: object) -> float:
    """A money amount from a message, 0 when it is absent or not a number."""
    if isinstance(value, bool):
        return 0.0
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else 0.0
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return 0.0
        return number if math.isfinite(number) else 0.0
    return 0.0


def _round(amount: float) -> float:
    return round(amount + 1e-9, 2)


@frozen
class Tariff:
    """A temporary-parking tariff: the fields of tempPrice (B.20), plus where the day begins and ends."""

    free_minutes: int = 15
    day_price: float = 5.0
    day_time: int = 60
    night_price: float = 2.0
    night_time: int = 120
    capping_all: float = 60.0
    capping_day: float = 50.0
    capping_night: float = 10.0
    day_start: int = 7 * 60
    day_end: int = 21 * 60

    def __attrs_post_init__(self) -> None:
        if self.day_time < 1 or self.night_time < 1 or self.free_minutes < 0:
            raise ValueError(f"not a usable tariff: {self!r}")

    def updated(self, data: Mapping[str, object]) -> Tariff:
        """This tariff with the members of a tempPrice message applied (a sync from the platform)."""
        changes: dict[str, object] = {}
        for field, attribute, kind in _TEMP_PRICE_FIELDS:
            value = data.get(field)
            if value is None or value == "":
                continue
            number = _money(value)
            changes[attribute] = int(number) if kind is int else number
        try:
            return evolve(self, **changes)  # type: ignore[arg-type]
        except ValueError:  # a day or night unit of 0 minutes: the old tariff stands
            return self

    def temp_price(self, park_code: str) -> dict[str, object]:
        """This tariff as a tempPrice message's `data` (B.20)."""
        data: dict[str, object] = {"parkCode": park_code}
        for field, attribute, _ in _TEMP_PRICE_FIELDS:
            data[field] = getattr(self, attribute)
        start, end = self.day_start, self.day_end
        data["other"] = f"日间 {start // 60:02d}:{start % 60:02d}-{end // 60:02d}:{end % 60:02d}"
        return data


_TEMP_PRICE_FIELDS: tuple[tuple[str, str, type], ...] = (
    ("freeMinutes", "free_minutes", int),
    ("dayPrice", "day_price", float),
    ("dayTime", "day_time", int),
    ("nightPrice", "night_price", float),
    ("nightTime", "night_time", int),
    ("cappingAll", "capping_all", float),
    ("cappingDay", "capping_day", float),
    ("cappingNight", "capping_night", float),
)


def parking_minutes(in_time: float, out_time: float) -> int:
    """Whole minutes parked, a started minute counting as one."""
    return max(0, math.ceil((out_time - in_time) / 60 - 1e-9))


def parking_fee(tariff: Tariff, in_time: float, out_time: float, zone: ZoneInfo) -> float:
    """The fee for parking from `in_time` to `out_time` (seconds since the epoch) under `tariff`."""
    if parking_minutes(in_time, out_time) <= tariff.free_minutes:
        return 0.0
    days: dict[date, list[float]] = {}
    moment = in_time
    while moment < out_time:
        local = datetime.fromtimestamp(moment, zone)
        minute_of_day = local.hour * 60 + local.minute
        sums = days.setdefault(local.date(), [0.0, 0.0])
        if tariff.day_start <= minute_of_day < tariff.day_end:
            sums[0] += tariff.day_price
            moment += tariff.day_time * 60
        else:
            sums[1] += tariff.night_price
            moment += tariff.night_time * 60
    total = 0.0
    for day, night in days.values():
        if tariff.capping_day > 0:
            day = min(day, tariff.capping_day)
        if tariff.capping_night > 0:
            night = min(night, tariff.capping_night)
        both = day + night
        if tariff.capping_all > 0:
            both = min(both, tariff.capping_all)
        total += both
    return _round(total)


@frozen
class Fee:
    """What a stay costs: the fee, the coupons' discount, what was prepaid, and what is still due."""

    minutes: int
    pay_money: float
    discount_money: float = 0.0
    real_pay_money: float = 0.0
    coupons: tuple[Mapping[str, object], ...] = ()

    @property
    def charge_money(self) -> float:
        """What the driver still has to pay: the fee less discounts and prepayments, at least 0."""
        return _round(max(0.0, self.pay_money - self.discount_money - self.real_pay_money))

    @property
    def income_money(self) -> float:
        """What the lot takes in for the stay: the fee less the discounts."""
        return _round(max(0.0, self.pay_money - self.discount_money))


def compute_fee(
    tariff: Tariff,
    in_time: float,
    out_time: float,
    zone: ZoneInfo,
    coupons: Sequence[Mapping[str, object]] = (),
    prepaid: float = 0.0,
) -> Fee:
    """The fee of a stay under `tariff`, with `coupons` applied in order and `prepaid` already paid."""
    fee = parking_fee(tariff, in_time, out_time, zone)
    remaining = fee
    applied: list[Mapping[str, object]] = []
    for coupon in coupons:
        kind = int(_money(coupon.get("couponType")))
        if kind == 0:
            amount = _money(coupon.get("discountMoney"))
            if fee < _money(coupon.get("minimumConsumption")):
                amount = 0.0
        elif kind == 1:
            rate = _money(coupon.get("discountRate")) or 1.0
            amount = remaining * (1.0 - min(max(rate, 0.0), 1.0))
            ceiling = _money(coupon.get("maxDiscountMoney"))
            if ceiling > 0:
                amount = min(amount, ceiling)
        elif kind == 3:
            minutes = _money(coupon.get("freeMinutes")) or _money(coupon.get("parkingTime"))
            later = min(out_time, in_time + minutes * 60)
            amount = fee - parking_fee(tariff, later, out_time, zone)
        elif kind == 4:
            amount = remaining
        else:
            amount = 0.0
        amount = _round(min(max(amount, 0.0), remaining))
        if amount > 0:
            remaining = _round(remaining - amount)
            applied.append({**coupon, "discountMoney": amount})
    return Fee(
        minutes=parking_minutes(in_time, out_time),
        pay_money=fee,
        discount_money=_round(fee - remaining),
        real_pay_money=_round(max(0.0, prepaid)),
        coupons=tuple(applied),
    )

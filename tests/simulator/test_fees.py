"""Fees as a simulated lot computes them: tariff units, day and night, caps, coupons, prepayment."""

from __future__ import annotations

from datetime import datetime

import pytest

from gateway.protocol.catalog import lookup
from gateway.protocol.validation import validate
from gateway.simulator.fees import Tariff, compute_fee, parking_fee
from tests.simulator.helpers import ZONE

TARIFF = Tariff()  # 15 free minutes; day 07-21 5.0 an hour; night 2.0 per 2 h; caps 50 / 10 / 60 a day


def at(day: int, hour: int, minute: int = 0) -> float:
    return datetime(2026, 11, day, hour, minute, tzinfo=ZONE).timestamp()


@pytest.mark.parametrize(
    ("start", "end", "fee"),
    [
        (at(24, 10), at(24, 10, 15), 0.0),  # within the free minutes
        (at(24, 10), at(24, 10, 16), 5.0),  # one day unit started
        (at(24, 10), at(24, 12, 30), 15.0),  # three day units
        (at(24, 20, 30), at(24, 23), 7.0),  # a day unit, then a night unit
        (at(24, 7), at(24, 20, 59), 50.0),  # 14 day units capped at capping_day
        (at(24, 8), at(26, 8), 125.0),  # 54 + 60 (capping_all) + 11, day by local day
    ],
)
def test_parking_fee(start: float, end: float, fee: float) -> None:
    """The fee charges started units by the part of the day each starts in, capped per local day."""
    assert parking_fee(TARIFF, start, end, ZONE) == fee


def test_cash_coupon_needs_its_minimum() -> None:
    """A cash coupon takes its amount off when the fee reaches its minimumConsumption, else nothing."""
    coupon = {"couponType": 0, "discountMoney": 5.0, "minimumConsumption": 10.0}
    fee = compute_fee(TARIFF, at(24, 10), at(24, 12, 30), ZONE, [coupon])
    assert (fee.pay_money, fee.discount_money, fee.charge_money) == (15.0, 5.0, 10.0)
    assert fee.coupons == ({**coupon, "discountMoney": 5.0},)
    short = compute_fee(TARIFF, at(24, 10), at(24, 10, 30), ZONE, [coupon])
    assert (short.pay_money, short.discount_money, short.coupons) == (5.0, 0.0, ())


def test_discount_coupon_is_capped() -> None:
    """A discount coupon leaves discountRate of the fee, taking at most maxDiscountMoney off."""
    coupon = {"couponType": 1, "discountRate": 0.8, "maxDiscountMoney": 2.0}
    fee = compute_fee(TARIFF, at(24, 10), at(24, 12, 30), ZONE, [coupon])
    assert (fee.discount_money, fee.charge_money) == (2.0, 13.0)


def test_time_coupon_charges_as_if_the_car_came_later() -> None:
    """A time coupon of 60 free minutes charges 10:00-12:30 as 11:00-12:30."""
    coupon = {"couponType": 3, "timeType": 1, "freeMinutes": 60}
    fee = compute_fee(TARIFF, at(24, 10), at(24, 12, 30), ZONE, [coupon])
    assert (fee.discount_money, fee.charge_money) == (5.0, 10.0)


def test_coupons_apply_in_order_to_what_is_left() -> None:
    """A cash coupon then a full coupon: together they take the whole fee, never more."""
    coupons = [{"couponType": 0, "discountMoney": 5.0}, {"couponType": 4}]
    fee = compute_fee(TARIFF, at(24, 10), at(24, 12, 30), ZONE, coupons)
    assert (fee.discount_money, fee.charge_money, fee.income_money) == (15.0, 0.0, 0.0)
    assert [coupon["discountMoney"] for coupon in fee.coupons] == [5.0, 10.0]


def test_prepayment_is_deducted_from_what_is_due() -> None:
    """What was prepaid shows as realPayMoney and is not charged again."""
    fee = compute_fee(TARIFF, at(24, 10), at(24, 12, 30), ZONE, prepaid=12.0)
    assert (fee.pay_money, fee.real_pay_money, fee.charge_money, fee.income_money) == (15.0, 12.0, 3.0, 15.0)


def test_temp_price_sync_changes_the_tariff() -> None:
    """A tempPrice from the platform changes the fields it carries; a broken one changes nothing."""
    tariff = TARIFF.updated({"freeMinutes": 30, "dayPrice": "6", "parkCode": "P001"})
    assert (tariff.free_minutes, tariff.day_price, tariff.night_price) == (30, 6.0, 2.0)
    assert parking_fee(tariff, at(24, 10), at(24, 10, 25), ZONE) == 0.0
    assert parking_fee(tariff, at(24, 10), at(24, 10, 31), ZONE) == 6.0
    assert TARIFF.updated({"dayTime": 0}) == TARIFF


def test_temp_price_report_validates() -> None:
    """The tariff as a tempPrice message validates against B.20."""
    interface = lookup("tempPrice")
    assert interface is not None
    data = TARIFF.temp_price("P001")
    assert validate(interface.request, data) is data
    assert Tariff().updated(data) == TARIFF

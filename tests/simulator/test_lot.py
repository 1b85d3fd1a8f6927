"""One simulated lot on a Clock: set-up, retries, backfills in an outage, heartbeats, downlink answers."""

from __future__ import annotations

from typing import Any

from gateway.protocol.catalog import lookup
from gateway.protocol.envelope import Request
from gateway.protocol.signing import compact
from gateway.protocol.validation import validate
from gateway.simulator.fees import compute_fee
from gateway.simulator.lot import SimulatedLot
from tests.simulator.helpers import ZONE, FakeUplink, simulated_lot


def downlink(code: str, data: Any) -> Request:
    return Request(token="t", code=code, opr=f"ack-{code}", signature="", data=data, data_text=compact(data))


def records_sent(uplink: FakeUplink) -> list[tuple[str, Any]]:
    """(code, recordCode) of each message sent, retries included."""
    return [
        (code, data.get("recordCode") if isinstance(data, dict) else None) for _, code, data, _ in uplink.sent
    ]


def leave_one(lot: SimulatedLot) -> str:
    """A car inside leaves now; its record code."""
    record = lot.model.random_record()
    assert record is not None
    now = lot._clock.seconds()
    exit = lot.model.leave(record, now)
    assert exit is not None
    lot.left(exit, now)
    return record


def test_the_lot_reports_its_set_up_after_logging_in() -> None:
    """After login: the environment (totalNum first: freeSpace is checked against it), then the rest."""
    lot, uplink, _, stats = simulated_lot()
    assert uplink.codes() == ["parkEnv", "tempPrice", "channel", "devStatus", "pcStatus", "freeSpace"]
    assert stats.sent == stats.acked == 6
    assert lot.model.occupied == lot.model.layout.total_spaces // 2
    assert lot.idle


def test_a_failed_upload_is_retried_after_the_scaled_interval_with_its_opr() -> None:
    """With time scale 60, an entry that fails is sent again 10 s later, with the same oprNum."""
    lot, uplink, clock, stats = simulated_lot(retry_interval=600 / 60)
    uplink.down = True
    car = lot.model.enter(clock.seconds())
    lot.entered(car, clock.seconds())
    [(failed_at, _, _, opr)] = [entry for entry in uplink.sent if entry[1] == "carIn"]
    uplink.down = False
    clock.advance(9.9)
    assert [entry[0] for entry in uplink.sent if entry[1] == "carIn"] == [failed_at]
    clock.advance(0.1)
    retries = [entry for entry in uplink.sent if entry[1] == "carIn"]
    assert [(at - failed_at, sent_opr) for at, _, _, sent_opr in retries] == [(0.0, opr), (10.0, opr)]
    assert stats.retried == 3 and stats.acked == 6 + 3  # the entry, its pictures, the free spaces
    assert lot.idle


def test_exits_during_an_outage_are_backfilled_newest_first_when_it_ends() -> None:
    """Exits while the platform is down go as backfills, newest first once it answers again."""
    lot, uplink, clock, stats = simulated_lot(retry_interval=600.0, heartbeat_interval=30.0)
    uplink.down = True
    records = []
    for _ in range(4):
        clock.advance(5)
        records.append(leave_one(lot))
    # The first exit's carOut is how the lot finds the platform gone; it becomes a backfill too.
    assert uplink.codes().count("carOut") == 1
    assert lot.queue.backfills == 4
    uplink.down = False
    clock.advance(15)  # the heartbeat 30 s after the start finds the platform back
    backfills = [data for _, code, data, _ in uplink.sent if code == "backfill"]
    assert [data["recordCode"] for data in backfills] == records[::-1]
    out_times = [data["outTime"] for data in backfills]
    assert out_times == sorted(out_times, reverse=True)
    for data in backfills:
        interface = lookup("backfill")
        assert interface is not None and validate(interface.request, data) is data
    assert stats.backfilled == 4


def test_an_exit_whose_entry_failed_is_backfilled_and_the_entry_dropped() -> None:
    """A car whose carIn failed and who leaves: no carIn retry, no carOut, one backfill with its entry."""
    lot, uplink, clock, stats = simulated_lot(retry_interval=10.0)
    uplink.down = True
    car = lot.model.enter(clock.seconds())
    lot.entered(car, clock.seconds())
    uplink.down = False
    clock.advance(1)
    exit = lot.model.leave(car.record_code, clock.seconds())
    assert exit is not None
    lot.left(exit, clock.seconds())
    clock.advance(30)
    codes = records_sent(uplink)
    assert codes.count(("carIn", car.record_code)) == 1  # the failed attempt only
    assert ("carOut", car.record_code) not in codes
    assert ("backfill", car.record_code) in codes
    assert stats.superseded == 1
    assert lot.idle


def test_a_failed_exit_becomes_a_backfill() -> None:
    """A carOut that fails is not retried as carOut: the exit is backfilled once the platform is back."""
    lot, uplink, _, _ = simulated_lot(retry_interval=600.0)
    uplink.results["carOut"] = "9999"
    record = leave_one(lot)
    uplink.results.clear()
    codes = records_sent(uplink)
    assert codes.count(("carOut", record)) == 1
    assert ("backfill", record) in codes


def test_a_refused_message_is_an_error_and_not_retried() -> None:
    """A field error (9010) is the lot's own fault: counted an error, never sent again."""
    lot, uplink, clock, stats = simulated_lot(retry_interval=10.0)
    uplink.results["carIn"] = "9010"
    car = lot.model.enter(clock.seconds())
    lot.entered(car, clock.seconds())
    clock.advance(60)
    assert uplink.codes().count("carIn") == 1
    assert stats.errors == 1 and list(stats.reasons) == ["carIn 9010: "]


def test_heartbeats_go_every_interval() -> None:
    """The lot sends an HTTP heartbeat every heartbeat_interval (at most 60 s by the standard)."""
    lot, uplink, clock, _ = simulated_lot(heartbeat_interval=30.0)
    for _ in range(10):
        clock.advance(30)
    assert uplink.heartbeats == 10
    lot.stop()
    clock.advance(300)
    assert uplink.heartbeats == 10


def test_fee_query_answers_the_computed_fee() -> None:
    """feeQuery for a car inside answers its fee with the platform's coupons applied, as B.13 writes it."""
    lot, _, clock, _ = simulated_lot()
    record = lot.model.random_record()
    assert record is not None
    parked = lot.model.parked(record)
    assert parked is not None
    coupon = {"usercouponId": "CP-1", "couponType": 0, "discountMoney": 3.0}
    reply = lot.answer(downlink("feeQuery", {"recordCode": record, "couponList": [coupon]}))
    expected = compute_fee(lot.model.tariff, parked.car.in_time, clock.seconds(), ZONE, [coupon])
    assert reply.result_code == "0000"
    assert isinstance(reply.data, dict)
    assert reply.data["payMoney"] == expected.pay_money
    assert reply.data["chargeMoney"] == expected.charge_money
    assert reply.data["discountMoney"] == expected.discount_money
    interface = lookup("feeQuery")
    assert interface is not None and validate(interface.response, reply.data) is reply.data
    unknown = lot.answer(downlink("feeQuery", {"recordCode": "NOPE"}))
    assert unknown.result_code == "9101"


def test_a_price_change_from_the_platform_changes_the_fees() -> None:
    """After a tempPrice sync, feeQuery charges by the new tariff."""
    lot, _, _, _ = simulated_lot()
    assert lot.answer(downlink("tempPrice", {"freeMinutes": 100_000})).result_code == "0000"
    record = lot.model.random_record()
    reply = lot.answer(downlink("feeQuery", {"recordCode": record}))
    assert isinstance(reply.data, dict) and reply.data["payMoney"] == 0.0


def test_no_plate_cars_come_in_and_go_out_on_the_platforms_request() -> None:
    """noPlateIn lets the car in and reports its entry; noPlateOut lets it out and reports the exit."""
    lot, uplink, _, _ = simulated_lot()
    inside = lot.model.occupied
    entered = lot.answer(downlink("noPlateIn", {"plateNum": "临A00001", "inCross": "IN-01"}))
    assert entered.result_code == "0000" and lot.model.occupied == inside + 1
    assert isinstance(entered.data, dict)
    record = entered.data["recordCode"]
    [car_in] = [data for _, code, data, _ in uplink.sent if code == "carIn"]
    assert car_in["carNum"] == "临A00001" and car_in["recordCode"] == record
    left = lot.answer(downlink("noPlateOut", {"plateNum": "临A00001"}))
    assert left.result_code == "0000" and lot.model.occupied == inside
    [car_out] = [data for _, code, data, _ in uplink.sent if code == "carOut"]
    assert car_out["recordCode"] == record
    assert lot.answer(downlink("noPlateOut", {"plateNum": "临A00001"})).result_code == "9101"


def test_sync_lists_are_kept_and_applied_idempotently() -> None:
    """Blacklist entries are added and removed, prepayments counted once per order, however often sent."""
    lot, _, _, _ = simulated_lot()
    for _ in range(2):
        assert lot.answer(downlink("blacklist", {"carNum": "苏E88888", "Type": 1})).result_code == "0000"
    assert set(lot.model.blacklist) == {"苏E88888"}
    lot.answer(downlink("blacklist", [{"carNum": "苏E88888", "Type": 2}]))
    assert lot.model.blacklist == {}
    record = lot.model.random_record()
    assert record is not None
    for _ in range(2):
        lot.answer(downlink("prepay", {"recordCode": record, "orderCode": "O1", "orderMoney": 4.0}))
    parked = lot.model.parked(record)
    assert parked is not None and parked.prepaid == {"O1": 4.0}
    assert lot.answer(downlink("heartbeatX", {})).result_code == "9001"

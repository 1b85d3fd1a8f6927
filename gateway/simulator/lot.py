"""One simulated lot: its world (`LotModel`) and its conduct toward the gateway (`SimulatedLot`).

`LotModel` is the lot without I/O: the cars inside, the gates, what the
platform told it (blacklist, members, reservations, month cards, prices,
prepayments, coupons), the day's takings, and its answer to each downlink.

`SimulatedLot` drives one lot through an uplink client: it logs in, reports
its set-up (environment, prices, lanes, devices, free spaces), turns traffic
events into uploads sent one at a time in order, retries failed uploads after
the standard's 10 minutes with the same oprNum, backfills exits that could not
be uploaded (newest first) once the platform answers again, and sends a
heartbeat at least every minute. The clock and the uplink are passed in.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Mapping
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from attrs import Factory, define, frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkReply
from gateway.protocol.envelope import Reply, Request
from gateway.protocol.results import Result
from gateway.protocol.times import wire_time
from gateway.simulator.fees import Fee, Tariff, compute_fee, parking_minutes
from gateway.simulator.stats import Stats
from gateway.simulator.traffic import Car, Exit, Traffic
from gateway.simulator.uploads import RETRY_INTERVAL, Upload, UploadQueue

__all__ = [
    "EVENTS",
    "HEARTBEAT_INTERVAL",
    "RETRYABLE",
    "LotModel",
    "Outcome",
    "SimulatedLot",
    "Uplink",
]

log = Logger()

HEARTBEAT_INTERVAL = 30.0
"""Seconds between heartbeats; the standard asks for at most 60 (5.1.8)."""

# Answers after which the same message is sent again later: the platform could
# not take it now (9999), the token went and the new login failed (9000), or the
# platform could not reach or hear from someone (9008, 9009).
RETRYABLE = frozenset({"9999", "9000", "9008", "9009"})

# Traffic events and their weights: mostly cars coming and going.
EVENTS: tuple[tuple[str, int], ...] = (
    ("car", 900),
    ("device", 25),
    ("pc", 5),
    ("channel", 2),
    ("gate_manual", 10),
    ("car_fix", 10),
    ("prepay", 15),
    ("coupon", 10),
    ("invoice", 15),
    ("month_card", 3),
    ("cashier_off", 3),
    ("park_env", 2),
    ("reconcile", 1),
    ("prices", 1),
)
_EVENT_NAMES = tuple(name for name, _ in EVENTS)
_EVENT_WEIGHTS = tuple(weight for _, weight in EVENTS)
_FREE_IDENTITIES = frozenset({1, 4, 5})  # 月租车, 军警车, 会员免费车: nothing to pay at the exit


@define
class Parked:
    """A car inside, with what was paid or given for it ahead of its exit."""

    car: Car
    prepaid: dict[str, float] = Factory(dict)
    coupons: list[Mapping[str, object]] = Factory(list)


@frozen
class Outcome:
    """A lot's answer to a downlink, and the cars it let in or out because of it."""

    reply: DownlinkReply
    entered: tuple[Car, ...] = ()
    left: tuple[Exit, ...] = ()


_Item = Mapping[str, Any]


def _items(data: object) -> list[_Item]:
    if isinstance(data, Mapping):
        return [data]
    if isinstance(data, list):
        return [item for item in data if isinstance(item, Mapping)]
    return []


def _text(value: object) -> str:
    return "" if value is None else str(value)


class LotModel:
    """A lot's world and decisions, without I/O: cars, gates, lists, tariff, takings."""

    def __init__(
        self, traffic: Traffic, rng: random.Random, zone: ZoneInfo, tariff: Tariff | None = None
    ) -> None:
        self.traffic = traffic
        self.layout = traffic.layout
        self.tariff = tariff if tariff is not None else Tariff()
        self.zone = zone
        self._rng = rng
        self._cars: dict[str, Parked] = {}
        self._order: list[str] = []  # record codes, for a random pick in O(1)
        self._index: dict[str, int] = {}
        self._plates: dict[str, str] = {}
        self.gates: dict[str, int] = {gate.code: 0 for gate in self.layout.gates}
        self.blacklist: dict[str, Mapping[str, object]] = {}
        self.members: dict[str, Mapping[str, object]] = {}
        self.reservations: dict[str, Mapping[str, object]] = {}
        self.month_cards: dict[str, Mapping[str, object]] = {}
        self.month_prices: Mapping[str, object] = {}
        self.invoices: dict[str, Mapping[str, object]] = {}
        self.recent_exits: deque[Exit] = deque(maxlen=64)
        self.shift_start = 0.0
        self.cash_count = 0
        self.cash_sum = 0.0
        self.day_count = 0
        self.day_receivable = 0.0
        self.day_received = 0.0
        self.day_discounts = 0.0

    # --- cars ------------------------------------------------------------

    @property
    def occupied(self) -> int:
        """Cars inside."""
        return len(self._cars)

    @property
    def empty(self) -> int:
        """Free spaces (never negative: a full lot still lets a no-plate car in by hand)."""
        return max(0, self.layout.total_spaces - len(self._cars))

    def parked(self, record: str) -> Parked | None:
        """The car inside with this record code, if any."""
        return self._cars.get(record)

    def record_of(self, plate: str) -> str | None:
        """The record code of the car inside with this plate, if any."""
        return self._plates.get(plate)

    def _add(self, car: Car) -> None:
        self._cars[car.record_code] = Parked(car)
        self._index[car.record_code] = len(self._order)
        self._order.append(car.record_code)
        self._plates[car.car_num] = car.record_code

    def _remove(self, record: str) -> Parked:
        parked = self._cars.pop(record)
        index = self._index.pop(record)
        last = self._order.pop()
        if last != record:
            self._order[index] = last
            self._index[last] = index
        if self._plates.get(parked.car.car_num) == record:
            del self._plates[parked.car.car_num]
        return parked

    def populate(self, now: float, occupancy: float) -> None:
        """Fill the lot to `occupancy` with cars that came in (and were reported) before `now`."""
        self.shift_start = now
        for _ in range(int(self.layout.total_spaces * occupancy)):
            self._add(self.traffic.new_car(now - self._rng.uniform(300, 12 * 3600)))

    def random_record(self) -> str | None:
        """A car inside, picked at random."""
        return self._rng.choice(self._order) if self._order else None

    def enter(self, now: float, plate: str | None = None, identity: int | None = None, lane: str = "") -> Car:
        """A car comes in now."""
        car = self.traffic.new_car(now, plate, identity, lane or None)
        self._add(car)
        return car

    def fee(self, parked: Parked, now: float, coupons: list[Mapping[str, object]] | None = None) -> Fee:
        """What the car inside owes if it leaves now, with its coupons (or those given) and prepayments."""
        car = parked.car
        prepaid = sum(parked.prepaid.values())
        if car.in_identity in _FREE_IDENTITIES:
            return Fee(parking_minutes(car.in_time, now), 0.0)
        applied = parked.coupons if coupons is None else coupons
        return compute_fee(self.tariff, car.in_time, now, self.zone, applied, prepaid)

    def leave(self, record: str, now: float, lane: str = "") -> Exit | None:
        """The car with this record code leaves now, paying; None if no such car is inside."""
        parked = self._cars.get(record)
        if parked is None:
            return None
        fee = self.fee(parked, now)
        self._remove(record)
        exit = self.traffic.leave(parked.car, now, fee, lane or None)
        self.recent_exits.append(exit)
        if exit.payment_mode == 1:
            self.cash_count += 1
            self.cash_sum += fee.charge_money
        self.day_count += 1
        self.day_receivable += fee.pay_money
        self.day_received += fee.income_money
        self.day_discounts += fee.discount_money
        return exit

    def correct_plate(self, record: str, plate: str) -> Car | None:
        """The plate of a car inside was misread: it becomes `plate`. The corrected car, if any."""
        parked = self._cars.get(record)
        if parked is None or not plate:
            return None
        old = parked.car
        if self._plates.get(old.car_num) == record:
            del self._plates[old.car_num]
        car = Car(old.record_code, plate, old.car_color, old.in_identity, old.in_cross, old.in_time)
        parked.car = car
        self._plates[plate] = record
        return car

    # --- downlinks -------------------------------------------------------

    def answer(self, code: str, data: object, now: float) -> Outcome:
        """The lot's REPLY to a downlink of `code` with `data`, and what it did because of it."""
        items = _items(data)
        first: Mapping[str, Any] = items[0] if items else {}
        name = _ANSWERS.get(code)
        if name is None:
            return Outcome(DownlinkReply.of(Result.NO_SUCH_INTERFACE, f"code: {code!r} is not a downlink"))
        outcome: Outcome = getattr(self, name)(first, items, now)
        return outcome

    def _answer_fee_query(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        record = _text(first.get("recordCode"))
        parked = self._cars.get(record)
        if parked is None:
            reply = DownlinkReply.of(Result.NO_SUCH_RECORD, f"recordCode {record!r}", {"recordCode": record})
            return Outcome(reply)
        coupons = [coupon for coupon in first.get("couponList") or () if isinstance(coupon, Mapping)]
        fee = self.fee(parked, now, [*parked.coupons, *coupons])
        data = {
            "recordCode": record,
            "payMoney": fee.pay_money,
            "discountMoney": fee.discount_money,
            "chargeMoney": fee.charge_money,
            "realPayMoney": fee.real_pay_money,
            "couponList": [dict(coupon) for coupon in fee.coupons],
            "chargeTime": wire_time(now, self.zone),
        }
        return Outcome(DownlinkReply(data=data))

    def _answer_gate_open(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        bar = _text(first.get("barCode"))
        is_open = first.get("isOpen")
        self.gates[bar] = 0 if is_open in (False, 0, "0", "false") else 1
        return Outcome(DownlinkReply(data={"barCode": bar, "status": 1}))

    def _answer_gate_state(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        bar = _text(first.get("barCode"))
        return Outcome(DownlinkReply(data={"barCode": bar, "barStatus": self.gates.get(bar, 0)}))

    def _answer_dev_reboot(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        return Outcome(DownlinkReply(data={"barCode": _text(first.get("equipmentCode")), "status": 1}))

    def _answer_no_plate_in(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        plate = _text(first.get("plateNum"))
        record = self._plates.get(plate)
        if record is not None:  # asked twice: the car is already in
            return Outcome(DownlinkReply(data={"recordCode": record, "plateNum": plate}))
        if self.empty <= 0:
            return Outcome(DownlinkReply.of(Result.FAILED, "the lot is full"))
        car = self.enter(now, plate, 2, _text(first.get("inCross")))
        return Outcome(DownlinkReply(data={"recordCode": car.record_code, "plateNum": plate}), entered=(car,))

    def _answer_no_plate_out(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        plate = _text(first.get("plateNum"))
        record = _text(first.get("recordCode"))
        if record not in self._cars:
            record = self._plates.get(plate, "")
        exit = self.leave(record, now, _text(first.get("outCross"))) if record else None
        if exit is None:
            return Outcome(DownlinkReply.of(Result.NO_SUCH_RECORD, f"no car {plate!r} inside"))
        data = {"recordCode": record, "plateNum": plate, "payMoney": exit.fee.pay_money}
        return Outcome(DownlinkReply(data=data), left=(exit,))

    def _answer_car_fix(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            self.correct_plate(_text(item.get("recordCode")), _text(item.get("correctionNum")))
        return Outcome(DownlinkReply())

    def _answer_prepay(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            record = _text(item.get("recordCode")) or self._plates.get(_text(item.get("carNum")), "")
            parked = self._cars.get(record)
            if parked is not None:
                amount = item.get("realPayMoney") or item.get("orderMoney") or 0
                order = _text(item.get("orderCode")) or f"order-{len(parked.prepaid)}"
                parked.prepaid[order] = float(amount) if isinstance(amount, int | float) else 0.0
        return Outcome(DownlinkReply())

    def _answer_coupon(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            parked = self._cars.get(self._plates.get(_text(item.get("carNum")), ""))
            if parked is not None:
                listed = [coupon for coupon in item.get("couponList") or () if isinstance(coupon, Mapping)]
                known = {_text(coupon.get("usercouponId")) for coupon in parked.coupons}
                parked.coupons.extend(c for c in listed if _text(c.get("usercouponId")) not in known)
        return Outcome(DownlinkReply())

    def _answer_temp_price(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        self.tariff = self.tariff.updated(first)
        return Outcome(DownlinkReply())

    def _by_plate(self, table: dict[str, Mapping[str, object]], items: list[_Item]) -> Outcome:
        for item in items:
            table[_text(item.get("carNum"))] = item
        return Outcome(DownlinkReply())

    def _answer_reserve(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        return self._by_plate(self.reservations, items)

    def _answer_member(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        return self._by_plate(self.members, items)

    def _answer_blacklist(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            plate = _text(item.get("carNum"))
            if item.get("Type") in (2, "2"):
                self.blacklist.pop(plate, None)
            else:
                self.blacklist[plate] = item
        return Outcome(DownlinkReply())

    def _answer_month_card(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            for plate in _text(item.get("carNums")).split(","):
                if plate:
                    self.month_cards[plate] = item
        return Outcome(DownlinkReply())

    def _answer_month_price(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        self.month_prices = first
        return Outcome(DownlinkReply())

    def _answer_invoice(self, first: _Item, items: list[_Item], now: float) -> Outcome:
        for item in items:
            self.invoices[_text(item.get("recordCode"))] = item
        return Outcome(DownlinkReply())


# Each downlink code of the catalog, and the LotModel method that answers it.
_ANSWERS: dict[str, str] = {
    "feeQuery": "_answer_fee_query",
    "gateOpen": "_answer_gate_open",
    "gateState": "_answer_gate_state",
    "devReboot": "_answer_dev_reboot",
    "noPlateIn": "_answer_no_plate_in",
    "noPlateOut": "_answer_no_plate_out",
    "carFix": "_answer_car_fix",
    "prepay": "_answer_prepay",
    "coupon": "_answer_coupon",
    "tempPrice": "_answer_temp_price",
    "reserve": "_answer_reserve",
    "member": "_answer_member",
    "blacklist": "_answer_blacklist",
    "monthCard": "_answer_month_card",
    "monthPrice": "_answer_month_price",
    "invoice": "_answer_invoice",
}


class Uplink(Protocol):
    """What a simulated lot needs of its uplink (`gateway.client.UplinkClient`)."""

    def new_opr(self) -> str:
        """A new oprNum."""

    def login(self) -> Deferred[Reply]:
        """Log in; the answer."""

    def send(self, code: str, data: object, opr: str | None = None) -> Deferred[Reply]:
        """Send one message (re-logging in on 9000); the answer."""

    def heartbeat(self) -> Deferred[Reply]:
        """Send a heartbeat; the answer."""


class SimulatedLot:
    """One lot toward the gateway: set-up, traffic, uploads in order, retries, backfills, heartbeats."""

    def __init__(
        self,
        *,
        credentials: LotCredentials,
        uplink: Uplink,
        model: LotModel,
        clock: IReactorTime,
        stats: Stats,
        rng: random.Random,
        retry_interval: float = RETRY_INTERVAL,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        occupancy: float = 0.6,
    ) -> None:
        self.park = credentials.park_code
        self.model = model
        self.traffic = model.traffic
        self.queue = UploadQueue(retry_interval)
        self.online = False
        self.started = False
        self._uplink = uplink
        self._clock = clock
        self._stats = stats
        self._rng = rng
        self._occupancy = occupancy
        self._stopped = False
        self._in_flight: Upload | None = None
        self._pumping = False
        self._wake: IDelayedCall | None = None
        self._heartbeat_pending = False
        self._heartbeats = LoopingCall(self.heartbeat)
        self._heartbeats.clock = clock
        self._heartbeat_interval = heartbeat_interval

    @property
    def pending(self) -> int:
        """Messages not acknowledged yet: queued, waiting for a retry or a backfill, or in flight."""
        return len(self.queue) + (1 if self._in_flight is not None else 0)

    @property
    def idle(self) -> bool:
        """Whether nothing is left to upload."""
        return self.pending == 0

    # --- life ------------------------------------------------------------

    def start(self) -> Deferred[bool]:
        """Log in and report the set-up; fires True once logged in, False (counted an error) if not."""
        return Deferred.fromCoroutine(self._start())

    async def _start(self) -> bool:
        try:
            login = await self._uplink.login()
        except Exception as error:
            self._stats.error(f"login: {error.__class__.__name__}: {error}")
            return False
        if not login.ok:
            self._stats.error(f"login {login.result_code}: {login.result_message}")
            return False
        if self._stopped:
            return False
        self.online = self.started = True
        now = self._clock.seconds()
        self.model.populate(now, self._occupancy)
        traffic = self.traffic
        self.push("parkEnv", traffic.park_env())
        self.push("tempPrice", self.model.tariff.temp_price(self.park))
        self.push("channel", traffic.channels())
        self.push("devStatus", traffic.devices(now))
        self.push("pcStatus", [traffic.pc_status(now, pc) for pc in traffic.layout.pcs])
        self.push("freeSpace", traffic.free_space(self.model.empty))
        self._heartbeats.start(self._heartbeat_interval, now=False)
        return True

    def stop(self) -> None:
        """Send nothing more (what is in flight finishes): no heartbeats, no retries."""
        self._stopped = True
        if self._heartbeats.running:
            self._heartbeats.stop()
        if self._wake is not None and self._wake.active():
            self._wake.cancel()
        self._wake = None

    # --- traffic ---------------------------------------------------------

    def push(self, code: str, data: object, record: str = "", exit: Exit | None = None) -> Upload:
        """Queue a new message (a new oprNum) and send it in its turn."""
        upload = Upload(code, data, self._uplink.new_opr(), record, exit)
        self.queue.push(upload)
        self._pump()
        return upload

    def event(self) -> None:
        """One traffic event, picked at random: mostly a car coming or going."""
        if not self.started or self._stopped:
            return
        now = self._clock.seconds()
        kind = self._rng.choices(_EVENT_NAMES, _EVENT_WEIGHTS)[0]
        model, traffic = self.model, self.traffic
        if kind == "car":
            occupancy = model.occupied / model.layout.total_spaces
            entering = self._rng.random() < min(0.95, max(0.05, 0.5 + 2 * (self._occupancy - occupancy)))
            record = model.random_record()
            if (entering and model.empty > 0) or record is None:
                self.entered(model.enter(now), now)
            else:
                exit = model.leave(record, now)
                if exit is not None:
                    self.left(exit, now)
        elif kind == "device":
            self.push("devStatus", traffic.device_change(now))
        elif kind == "pc":
            self.push("pcStatus", traffic.pc_status(now))
        elif kind == "channel":
            self.push("channel", traffic.channel_change())
        elif kind == "gate_manual":
            self.push("gateManual", traffic.gate_manual(now))
        elif kind == "car_fix":
            self._car_fix(now)
        elif kind == "prepay":
            self._prepay(now)
        elif kind == "coupon":
            self._coupon()
        elif kind == "invoice" and model.recent_exits:
            exit = model.recent_exits.popleft()
            if exit.fee.income_money > 0:
                self.push("invoice", traffic.invoice(exit), exit.car.record_code)
        elif kind == "month_card":
            self.push("monthCard", traffic.month_card(now))
        elif kind == "cashier_off":
            data = traffic.cashier_off(model.shift_start, now, model.cash_count, model.cash_sum)
            self.push("cashierOff", data)
            model.shift_start, model.cash_count, model.cash_sum = now, 0, 0.0
        elif kind == "park_env":
            self.push("parkEnv", traffic.park_env())
        elif kind == "reconcile":
            data = traffic.reconcile(
                now, model.day_count, model.day_receivable, model.day_received, model.day_discounts
            )
            self.push("reconcile", data)
            model.day_count, model.day_receivable, model.day_received, model.day_discounts = 0, 0.0, 0.0, 0.0
        elif kind == "prices":
            self.push("monthPrice", traffic.month_price())

    def entered(self, car: Car, now: float) -> None:
        """A car came in: its entry, its pictures, the free spaces."""
        self.push("carIn", self.traffic.car_in(car), car.record_code)
        self.push("carImage", self.traffic.car_images(car, now, leaving=False), car.record_code)
        self.push("freeSpace", self.traffic.free_space(self.model.empty))

    def left(self, exit: Exit, now: float) -> None:
        """A car went out: its exit (or backfill), its pictures, the free spaces.

        An exit goes as a backfill, not a carOut, when the platform is not
        answering or the car's entry failed to upload (§5.2.6 and its note); the
        failed carIn is dropped, the backfill carries the entry.
        """
        record = exit.car.record_code
        dropped = self.queue.drop_failed(record, "carIn")
        self._stats.superseded += len(dropped)
        if self.online and not dropped:
            self.push("carOut", self.traffic.car_out(exit), record, exit)
        else:
            self._backfill(exit, now)
        self.push("carImage", self.traffic.car_images(exit.car, now, leaving=True), record)
        self.push("freeSpace", self.traffic.free_space(self.model.empty))

    def _backfill(self, exit: Exit, now: float) -> None:
        record = exit.car.record_code
        upload = Upload("backfill", self.traffic.backfill(exit), self._uplink.new_opr(), record, exit)
        self.queue.push_backfill(upload, now)
        self._pump()

    def _car_fix(self, now: float) -> None:
        record = self.model.random_record()
        parked = self.model.parked(record) if record is not None else None
        if parked is None:
            return
        plate, _ = self.traffic.plate()
        data = self.traffic.car_fix(parked.car, plate, now)
        self.model.correct_plate(parked.car.record_code, plate)
        self.push("carFix", data, parked.car.record_code)

    def _prepay(self, now: float) -> None:
        record = self.model.random_record()
        parked = self.model.parked(record) if record is not None else None
        if parked is None or parked.car.in_identity != 2:
            return
        fee = self.model.fee(parked, now)
        if fee.charge_money <= 0:
            return
        order = f"ORD{self._rng.randrange(10**12):012d}"
        self.push("prepay", self.traffic.prepay(parked.car, now, fee, order), parked.car.record_code)
        parked.prepaid[order] = fee.charge_money

    def _coupon(self) -> None:
        record = self.model.random_record()
        parked = self.model.parked(record) if record is not None else None
        if parked is None:
            return
        amount = float(self._rng.choice((2, 5, 10)))
        data = self.traffic.coupon(parked.car, amount)
        parked.coupons.append({"couponType": 0, "discountMoney": amount})
        self.push("coupon", data, parked.car.record_code)

    # --- downlinks -------------------------------------------------------

    def answer(self, request: Request) -> DownlinkReply:
        """The REPLY to a downlink ACK; cars let in or out by it are reported like any others."""
        now = self._clock.seconds()
        outcome = self.model.answer(request.code, request.data, now)
        if self.started and not self._stopped:
            for car in outcome.entered:
                self.entered(car, now)
            for exit in outcome.left:
                self.left(exit, now)
        return outcome.reply

    # --- heartbeats ------------------------------------------------------

    def heartbeat(self) -> None:
        """Send an HTTP heartbeat; its answer says whether the platform is reachable."""
        if self._heartbeat_pending or self._stopped:
            return
        self._heartbeat_pending = True

        def answered(response: Reply) -> None:
            if response.ok:
                self._set_online(True)

        def failed(failure: Failure) -> None:
            self.online = False

        def done(_: object) -> None:
            self._heartbeat_pending = False

        maybeDeferred(self._uplink.heartbeat).addCallbacks(answered, failed).addBoth(done)

    def _set_online(self, online: bool) -> None:
        was, self.online = self.online, online
        if online and not was:
            self._pump()  # backfills may go now

    # --- sending ---------------------------------------------------------

    def _pump(self) -> None:
        """Send the next due upload if none is in flight; a loop, for uplinks that answer at once."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while self._in_flight is None and not self._stopped and self.started:
                upload = self.queue.take(self._clock.seconds(), self.online)
                if upload is None:
                    self._wake_at(self.queue.next_due(self.online))
                    break
                self._send(upload)
        finally:
            self._pumping = False

    def _wake_at(self, due: float | None) -> None:
        if due is None:
            return
        if self._wake is not None and self._wake.active():
            if self._wake.getTime() <= due:
                return
            self._wake.cancel()
        self._wake = self._clock.callLater(max(0.0, due - self._clock.seconds()), self._woken)

    def _woken(self) -> None:
        self._wake = None
        self._pump()

    def _send(self, upload: Upload) -> None:
        self._in_flight = upload
        self._stats.message_sent(retry=upload.attempts > 0)
        upload.attempts += 1
        started = self._clock.seconds()
        sent = maybeDeferred(self._uplink.send, upload.code, upload.data, upload.opr)
        sent.addCallbacks(self._answered, self._failed, callbackArgs=(upload, started), errbackArgs=(upload,))
        sent.addErrback(self._broken)
        sent.addBoth(self._sent)

    def _broken(self, failure: Failure) -> None:
        log.failure("lot {park}: handling an upload's answer failed", failure, park=self.park)

    def _sent(self, _: object) -> None:
        self._in_flight = None
        self._pump()

    def _answered(self, response: Reply, upload: Upload, started: float) -> None:
        self._stats.answered(self._clock.seconds() - started)
        if response.ok:
            self._set_online(True)
            self._stats.message_acked(self.park, upload.code, upload.opr)
        elif response.result_code in RETRYABLE:
            self._retry(upload)
        else:
            self._stats.error(f"{upload.code} {response.result_code}: {response.result_message}")

    def _failed(self, failure: Failure, upload: Upload) -> None:
        self._stats.transport_failures += 1
        self.online = False
        self._retry(upload)

    def _retry(self, upload: Upload) -> None:
        """The upload failed: again in 10 minutes, except an exit, which becomes a backfill."""
        now = self._clock.seconds()
        if upload.code == "carOut" and upload.exit is not None:
            self._stats.superseded += 1
            self._backfill(upload.exit, now)
        else:
            self.queue.failed(upload, now)

"""Realistic `data` for a lot's uplinks (附录B), from a seeded random: no I/O, no clock.

A `Layout` is a lot's fixed equipment (entrances, exits, their cameras, gates
and displays, the booth computers); `Traffic` writes the messages a lot with
that layout sends: entries and exits with fees and payment modes, pictures of a
few KB, free spaces, device and channel states, and the rarer reports (plate
corrections, cashier shifts, reconciliation, coupons, prepayments, month
cards, invoices, price tables). Times are passed in as seconds since the epoch
and written as the standard does, `yyyy-MM-dd HH:mm:ss` in the lot's zone.

Every message validates unchanged against the gateway's catalog
(`gateway.protocol.validation`); the tests check each one.
"""

from __future__ import annotations

import base64
import random
import zlib
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from attrs import frozen

from gateway.protocol.times import wire_time
from gateway.simulator.fees import Fee, Tariff, compute_fee

__all__ = [
    "EMITTED_CODES",
    "Car",
    "Channel",
    "Device",
    "Exit",
    "Layout",
    "Traffic",
    "record_prefix",
]

PROVINCES = "京津沪渝冀豫云辽黑湘皖鲁新苏浙赣鄂桂甘晋蒙陕吉闽贵粤青藏川宁琼"
PLATE_LETTERS = "ABCDEFGHJKLMNPQRSTUVWXYZ"  # no I or O on Chinese plates
PLATE_CHARACTERS = "0123456789" + PLATE_LETTERS
OPERATORS = ("张伟", "王芳", "李娜", "刘洋", "陈静", "杨磊", "赵敏", "黄勇")
WEATHER = ("晴", "多云", "阴", "小雨", "中雨", "暴雨", "小雪", "大风", "雾")
SITUATIONS = ("", "", "", "周末", "商场店庆", "球赛", "节假日", "演唱会")
IDENTITY_NAMES = {1: "月租车", 2: "临时车", 3: "储值车", 4: "军警车", 5: "会员免费车"}
# B.8 paymentMode: 1 现金 4 微信 5 支付宝 6 银联闪付 7 交通卡 9 账户余额 12 第三方余额.
PAYMENT_MODES = ((4, 40), (5, 30), (1, 10), (6, 6), (9, 5), (7, 4), (12, 5))
PAYMENT_FREE = 8
# payOrigin: 1 出入口 2 中央缴费 3 自助缴费机 6 移动 APP 7 微信服务号 8 支付宝服务窗.
PAY_ORIGINS = ((1, 50), (3, 15), (2, 10), (7, 12), (8, 8), (6, 5))
IMAGE_SIZES = {1: (800, 2000), 2: (2500, 6000), 3: (800, 2000), 4: (2500, 6000)}

# The uplink codes `Traffic.sample` writes: every report interface of Table 1.
EMITTED_CODES = (
    "parkEnv",
    "carIn",
    "carFix",
    "carOut",
    "carImage",
    "freeSpace",
    "prepay",
    "coupon",
    "cashierOff",
    "backfill",
    "reconcile",
    "tempPrice",
    "monthCard",
    "monthPrice",
    "gateManual",
    "devStatus",
    "pcStatus",
    "channel",
    "invoice",
)


def _weighted(rng: random.Random, choices: Sequence[tuple[int, int]]) -> int:
    values = [value for value, _ in choices]
    weights = [weight for _, weight in choices]
    return rng.choices(values, weights)[0]


def record_prefix(park_code: str) -> str:
    """The start of a lot's record codes: the park code when short and plain, else its CRC32."""
    if len(park_code) <= 8 and park_code.isascii() and park_code.isalnum():
        return park_code
    return f"{zlib.crc32(park_code.encode('utf-8')):08X}"


@frozen
class Channel:
    """A lane of the lot (B.31): entrances have even channel types, exits odd ones."""

    id: str
    name: str
    type: str
    pc: str

    @property
    def is_entrance(self) -> bool:
        """Whether cars come in through it."""
        return int(self.type) % 2 == 0


@frozen
class Device:
    """A piece of equipment (B.28): a camera, gate, display or pay station on a lane."""

    code: str
    name: str
    type: int
    pc: str
    channel_type: str


@frozen
class Layout:
    """A lot's fixed equipment and size."""

    park_code: str
    total_spaces: int
    channels: tuple[Channel, ...]
    devices: tuple[Device, ...]

    @property
    def pcs(self) -> tuple[str, ...]:
        """The booth computers, one per lane."""
        return tuple(channel.pc for channel in self.channels)

    @property
    def entrances(self) -> tuple[Channel, ...]:
        """The lanes cars enter by."""
        return tuple(channel for channel in self.channels if channel.is_entrance)

    @property
    def exits(self) -> tuple[Channel, ...]:
        """The lanes cars leave by."""
        return tuple(channel for channel in self.channels if not channel.is_entrance)

    @property
    def gates(self) -> tuple[Device, ...]:
        """The barrier gates (equipment type 2)."""
        return tuple(device for device in self.devices if device.type == 2)

    @classmethod
    def generate(cls, park_code: str, rng: random.Random) -> Layout:
        """A plausible lot: 1-3 entrances and exits (outer lanes), 80-1500 spaces."""
        channels: list[Channel] = []
        devices: list[Device] = []
        lanes = (("IN", rng.randint(1, 3), "2"), ("OUT", rng.randint(1, 3), "3"))
        for direction, count, channel_type in lanes:
            word = "入口" if direction == "IN" else "出口"
            for number in range(1, count + 1):
                lane = f"{direction}-{number:02d}"
                pc = f"PC-{lane}"
                channels.append(Channel(lane, f"{word}{number}", channel_type, pc))
                devices.append(Device(f"CAM-{lane}", f"{word}{number}车牌识别一体机", 6, pc, channel_type))
                devices.append(Device(f"GATE-{lane}", f"{word}{number}道闸", 2, pc, channel_type))
                devices.append(Device(f"LED-{lane}", f"{word}{number}显示屏", 4, pc, channel_type))
        devices.append(Device("APM-01", "自助缴费机1", 5, channels[-1].pc, "3"))
        total = rng.choice((80, 120, 200, 300, 450, 600, 800, 1000, 1500))
        return cls(park_code, total, tuple(channels), tuple(devices))


@frozen
class Car:
    """A car in the lot: its parking record and how it came in."""

    record_code: str
    car_num: str
    car_color: str
    in_identity: int
    in_cross: str
    in_time: float


@frozen
class Exit:
    """A car leaving: when, by which lane, what it cost and how it was paid."""

    car: Car
    out_time: float
    out_cross: str
    fee: Fee
    payment_mode: int
    pay_origin: int
    bill_number: str
    operator: str


class Traffic:
    """Writes one lot's uplink messages, deterministic for a given random."""

    def __init__(self, layout: Layout, rng: random.Random, zone: ZoneInfo) -> None:
        self.layout = layout
        self.park_code = layout.park_code
        self._rng = rng
        self._zone = zone
        self._prefix = record_prefix(layout.park_code)
        self._records = rng.randrange(10**6)
        self._bills = rng.randrange(10**6)
        self._link = {device.code: 1 for device in layout.devices}

    def time(self, seconds: float) -> str:
        """`seconds` as the standard writes a time, in the lot's zone."""
        return wire_time(seconds, self._zone)

    def _record_code(self, counter: int) -> str:
        """The prefix, then the counter's last digits: 20 characters, C.7's limit for recordCode."""
        width = 20 - len(self._prefix)
        return self._prefix + str(counter % 10**width).zfill(width)

    # --- cars ------------------------------------------------------------

    def plate(self) -> tuple[str, str]:
        """A plate number and its colour: blue, green (new energy, 6 characters) or yellow."""
        rng = self._rng
        colour = rng.choices(("蓝", "绿", "黄"), (80, 15, 5))[0]
        length = 6 if colour == "绿" else 5
        body = "".join(rng.choice(PLATE_CHARACTERS) for _ in range(length))
        return rng.choice(PROVINCES) + rng.choice(PLATE_LETTERS) + body, colour

    def new_car(
        self, in_time: float, plate: str | None = None, identity: int | None = None, lane: str | None = None
    ) -> Car:
        """A car entering at `in_time`, with a new record code."""
        self._records += 1
        colour = ""
        if plate is None:
            plate, colour = self.plate()
        if identity is None:
            identity = self._rng.choices((2, 1, 3, 4, 5), (85, 9, 3, 1, 2))[0]
        if lane is None:
            lane = self._rng.choice(self.layout.entrances).id
        return Car(self._record_code(self._records), plate, colour, identity, lane, in_time)

    def car_in(self, car: Car) -> dict[str, object]:
        """carIn (B.6)."""
        return {
            "recordCode": car.record_code,
            "carNum": car.car_num,
            "inCross": car.in_cross,
            "inTime": self.time(car.in_time),
            "inIdentity": car.in_identity,
            "carColor": car.car_color,
            "operatorName": self._rng.choice(OPERATORS),
        }

    def leave(self, car: Car, out_time: float, fee: Fee, lane: str | None = None) -> Exit:
        """The car leaves at `out_time` having paid `fee`: a lane, a payment mode, a bill number."""
        rng = self._rng
        self._bills += 1
        if fee.charge_money <= 0 and fee.real_pay_money <= 0:
            mode, origin = PAYMENT_FREE, 1
        else:
            mode, origin = _weighted(rng, PAYMENT_MODES), _weighted(rng, PAY_ORIGINS)
            if mode == 1:
                origin = 1  # cash is paid at the exit booth
        return Exit(
            car=car,
            out_time=out_time,
            out_cross=lane if lane is not None else rng.choice(self.layout.exits).id,
            fee=fee,
            payment_mode=mode,
            pay_origin=origin,
            bill_number=f"B{self._prefix[:6]}{self._bills:013d}"[:20],
            operator=rng.choice(OPERATORS),
        )

    def car_out(self, exit: Exit) -> dict[str, object]:
        """carOut (B.8)."""
        car, fee = exit.car, exit.fee
        return {
            "recordCode": car.record_code,
            "carNum": car.car_num,
            "inCross": car.in_cross,
            "outCross": exit.out_cross,
            "inTime": self.time(car.in_time),
            "outTime": self.time(exit.out_time),
            "inIdentity": car.in_identity,
            "outIdentity": IDENTITY_NAMES.get(car.in_identity, "临时车"),
            "parkMinutes": fee.minutes,
            "carColor": car.car_color,
            "chargeStatus": 1 if fee.pay_money > 0 else 0,
            "payMoney": fee.pay_money,
            "discountMoney": fee.discount_money,
            "incomeMoney": fee.income_money,
            "paymentMode": exit.payment_mode,
            "payOrigin": exit.pay_origin,
            "exitType": 0,
            "operatorName": exit.operator,
        }

    def backfill(self, exit: Exit) -> dict[str, object]:
        """backfill (B.18): an exit not uploaded in time, with its entry and its bill (§5.2.6)."""
        car, fee = exit.car, exit.fee
        return {
            "parkCode": self.park_code,
            "carNum": car.car_num,
            "inCross": car.in_cross,
            "outCross": exit.out_cross,
            "inTime": self.time(car.in_time),
            "outTime": self.time(exit.out_time),
            "carType": "小型车",
            "recordCode": car.record_code,
            "inImage": "",
            "outImage": "",
            "payMoney": fee.pay_money,
            "incomeMoney": fee.income_money,
            "discountMoney": fee.discount_money,
            "paymentRecordList": [
                {
                    "billNumber": exit.bill_number,
                    "amountReceivable": fee.pay_money,
                    "actualReceivable": fee.income_money,
                    "discountAmount": fee.discount_money,
                    "payTime": self.time(exit.out_time),
                    "payStatus": 1,
                    "paymentMode": exit.payment_mode,
                    "payOrigin": exit.pay_origin,
                    "tollerAccout": exit.operator if exit.payment_mode == 1 else "",
                }
            ],
        }

    def image(self, size: int) -> str:
        """A JPEG-looking picture of about `size` bytes, base64."""
        body = self._rng.randbytes(max(0, size - 4))
        return base64.b64encode(b"\xff\xd8" + body + b"\xff\xd9").decode("ascii")

    def car_images(self, car: Car, at: float, leaving: bool) -> list[dict[str, object]]:
        """carImage (B.9): the plate close-up and the whole car, at the entry or the exit."""
        types = (3, 4) if leaving else (1, 2)
        stamp = self.time(at).replace("-", "").replace(" ", "").replace(":", "")
        return [
            {
                "recordCode": car.record_code,
                "imageCode": f"{car.record_code}-{stamp}-{image_type}",
                "imageType": image_type,
                "imageBase64": self.image(self._rng.randint(*IMAGE_SIZES[image_type])),
            }
            for image_type in types
        ]

    def car_fix(self, car: Car, corrected: str, at: float) -> dict[str, object]:
        """carFix (B.7): a misread plate corrected at the booth."""
        return {
            "recordCode": car.record_code,
            "carNum": car.car_num,
            "correctionNum": corrected,
            "inCross": car.in_cross,
            "inTime": self.time(car.in_time),
            "inIdentity": car.in_identity,
            "parkMinutes": max(0, int((at - car.in_time) // 60)),
            "carColor": car.car_color,
            "outCross": "",
            "operatorName": self._rng.choice(OPERATORS),
        }

    # --- the lot ---------------------------------------------------------

    def free_space(self, empty: int) -> dict[str, object]:
        """freeSpace (B.11)."""
        return {"parkCode": self.park_code, "emptyNum": empty}

    def park_env(self) -> dict[str, object]:
        """parkEnv (B.10): the size, the weather and what goes on nearby."""
        return {
            "parkCode": self.park_code,
            "totalNum": self.layout.total_spaces,
            "weather": self._rng.choice(WEATHER),
            "situation": self._rng.choice(SITUATIONS),
        }

    @staticmethod
    def _channel(channel: Channel, action: int) -> dict[str, object]:
        return {
            "pcName": channel.pc,
            "channelName": channel.name,
            "channelId": channel.id,
            "channelType": channel.type,
            "isExit": True,
            "actionType": action,
        }

    def channels(self) -> list[dict[str, object]]:
        """channel (B.31): every lane, as added (actionType 1)."""
        return [self._channel(channel, 1) for channel in self.layout.channels]

    def channel_change(self) -> dict[str, object]:
        """channel (B.31): one lane reported again as modified (actionType 2)."""
        return self._channel(self._rng.choice(self.layout.channels), 2)

    def _device(self, device: Device, at: float, operation: int) -> dict[str, object]:
        return {
            "equipmentCode": device.code,
            "equipmentName": device.name,
            "linkStatus": self._link[device.code],
            "equipmentType": device.type,
            "pcName": device.pc,
            "channelType": device.channel_type,
            "createTime": self.time(at),
            "operationType": operation,
        }

    def devices(self, at: float) -> list[dict[str, object]]:
        """devStatus (B.28) of every device, as the lot starts (operationType 0, 初始化)."""
        return [self._device(device, at, 0) for device in self.layout.devices]

    def device_change(self, at: float) -> dict[str, object]:
        """devStatus (B.28) of one device whose link went down or came back (operationType 3)."""
        device = self._rng.choice(self.layout.devices)
        self._link[device.code] ^= 1
        return self._device(device, at, 3)

    def pc_status(self, at: float, pc: str | None = None, online: bool = True) -> dict[str, object]:
        """pcStatus (B.29) of one booth computer."""
        return {
            "pcName": pc if pc is not None else self._rng.choice(self.layout.pcs),
            "linkStatus": 1 if online else 0,
            "createTime": self.time(at),
            "operationType": 3,
        }

    def gate_manual(self, at: float, car: Car | None = None) -> dict[str, object]:
        """gateManual (B.27): a gate opened by hand at a booth or by remote control."""
        channel = self._rng.choice(self.layout.channels)
        return {
            "outCross": "" if channel.is_entrance else channel.id,
            "inCross": channel.id if channel.is_entrance else "",
            "inOutDoor": 1 if channel.is_entrance else 2,
            "carNum": car.car_num if car is not None else "",
            "operateTime": self.time(at),
            "openType": self._rng.choice((1, 3, 3, 4)),
            "operatorName": self._rng.choice(OPERATORS),
        }

    def cashier_off(self, start: float, end: float, cash_count: int, cash_sum: float) -> dict[str, object]:
        """cashierOff (B.17): a toll collector's shift totals."""
        lane = self._rng.choice(self.layout.exits)
        coupons = self._rng.randint(0, 5)
        return {
            "parkCode": self.park_code,
            "userId": f"toll{self._rng.randint(1, 20):03d}",
            "userName": self._rng.choice(OPERATORS),
            "operatorType": "出口岗亭",
            "outCross": lane.id,
            "startDate": self.time(start),
            "endDate": self.time(end),
            "moneyNum": cash_count,
            "moneySum": round(cash_sum, 2),
            "couponSum": float(coupons * 5),
            "couponNum": coupons,
            "uploadDate": self.time(end),
        }

    def reconcile(
        self, at: float, count: int, receivable: float, received: float, discounts: float
    ) -> dict[str, object]:
        """reconcile (B.19): the day's totals."""
        return {
            "parkCode": self.park_code,
            "dateTime": self.time(at)[:10],
            "payNum": count,
            "payMoneySum": round(receivable, 2),
            "incomeMoneySum": round(received, 2),
            "discountMoneySum": round(discounts, 2),
            "checkTime": self.time(at),
        }

    def coupon(self, car: Car, amount: float) -> dict[str, object]:
        """coupon (B.16): a shop's coupon given to a parked car."""
        return {
            "parkCode": self.park_code,
            "carNum": car.car_num,
            "discountMoney": amount,
            "couponValue": amount,
            "discountDetail": [{"couponName": "商户停车券", "discountAmout": amount, "discountType": 1}],
            "couponList": [
                {
                    "discountType": 1,
                    "couponType": 0,
                    "discountRate": 0.0,
                    "usercouponId": f"CP{self._rng.randrange(10**10):010d}",
                    "maxDiscountMoney": amount,
                }
            ],
        }

    def prepay(self, car: Car, at: float, fee: Fee, order: str) -> dict[str, object]:
        """prepay (B.14): a driver paid ahead at a pay station or in an app."""
        return {
            "entryTime": self.time(car.in_time),
            "predictExitTime": self.time(at + 900),
            "orderMoney": fee.charge_money,
            "discountDetail": [],
            "carNum": car.car_num,
            "orderCode": order,
            "carColor": car.car_color,
            "recordCode": car.record_code,
            "cashier": "",
            "terminalCode": "APM-01",
            "phoneNumber": f"1{self._rng.choice('3578')}{self._rng.randrange(10**9):09d}",
            "payType": _weighted(self._rng, PAYMENT_MODES),
            "realPayMoney": fee.charge_money,
            "parkCode": self.park_code,
        }

    def month_card(self, at: float) -> dict[str, object]:
        """monthCard (B.23): a month card bought at the office."""
        plate, colour = self.plate()
        begin = at - at % 86400
        return {
            "msRecordId": f"MS{self._rng.randrange(10**12):012d}",
            "carNums": plate,
            "inIdentity": 1,
            "carColor": colour,
            "carSize": "小型车",
            "amount": 300.0,
            "beginTime": self.time(begin),
            "endTime": self.time(begin + 30 * 86400 - 1),
            "operatorName": self._rng.choice(OPERATORS),
            "operatorTime": self.time(at),
            "status": 1,
        }

    def month_price(self) -> dict[str, object]:
        """monthPrice (B.24): the lot's card prices."""
        return {
            "monthlyPrice": 300.0,
            "quarterlyPrice": 850.0,
            "halfyearPrice": 1600.0,
            "yearPrice": 3000.0,
            "dayMonthlyPrice": 200.0,
            "dayTimeStart": "07:00",
            "dayTimeEnd": "21:00",
            "nightMonthlyPrice": 150.0,
            "nightTimeStart": "21:00",
            "nightTimeEnd": "07:00",
            "other": "",
            "carSize": "小型车",
        }

    def invoice(self, exit: Exit) -> dict[str, object]:
        """invoice (B.35): an electronic invoice issued for a paid stay."""
        return {
            "recordCode": exit.car.record_code,
            "invoiceCode": f"0440019001{self._rng.randrange(10**8):08d}",
            "payment": exit.fee.income_money,
        }

    # --- one of each -----------------------------------------------------

    def sample(self, code: str, at: float, tariff: Tariff | None = None) -> object:
        """One message of the report interface `code`, as the lot would send it at `at`."""
        tariff = tariff or Tariff()
        car = self.new_car(at - self._rng.randint(600, 6 * 3600))
        exit = self.leave(car, at, compute_fee(tariff, car.in_time, at, self._zone))
        writers = {
            "parkEnv": lambda: self.park_env(),
            "carIn": lambda: self.car_in(car),
            "carFix": lambda: self.car_fix(car, self.plate()[0], at),
            "carOut": lambda: self.car_out(exit),
            "carImage": lambda: self.car_images(car, at, leaving=True),
            "freeSpace": lambda: self.free_space(self.layout.total_spaces // 2),
            "prepay": lambda: self.prepay(car, at, exit.fee, f"ORD{self._rng.randrange(10**12):012d}"),
            "coupon": lambda: self.coupon(car, 5.0),
            "cashierOff": lambda: self.cashier_off(at - 8 * 3600, at, 37, 415.5),
            "backfill": lambda: self.backfill(exit),
            "reconcile": lambda: self.reconcile(at, 412, 4820.5, 4512.0, 308.5),
            "tempPrice": lambda: tariff.temp_price(self.park_code),
            "monthCard": lambda: self.month_card(at),
            "monthPrice": lambda: self.month_price(),
            "gateManual": lambda: self.gate_manual(at, car),
            "devStatus": lambda: self.device_change(at),
            "pcStatus": lambda: self.pc_status(at),
            "channel": lambda: self.channel_change(),
            "invoice": lambda: self.invoice(exit),
        }
        if code not in writers:
            raise ValueError(f"{code!r} is not a report interface the simulator writes")
        return writers[code]()

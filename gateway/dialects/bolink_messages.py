"""The bolink line protocol without I/O: framing, envelopes, signatures, answers and translation.

bolink is the lot protocol of the ParkingOS cloud as legacy lot software speaks
it: one JSON object per line, ``{"service_name": ..., "token": ..., "sign": ...,
"data": {...}}``, signed with the upper-case MD5 of ``data`` + ``"key="`` + the
lot's secret. A lot sends the line ``0x11`` as a heartbeat and is answered ``0x12``.

The ground truth is the ParkingOS cloud's own server (``SensorServerHandler``
and ``DoUploadImpl`` of ParkingOS_cloud, both its 2017 ``com.zld.sdk`` version
and its later ``parkingos.com.bolink`` one), lines captured from a real SDK
2.1.0.0 (daiybh/Park_Cloud) and the bolink SDK documentation; docs/dialects.md
says which rule comes from where.

This module only turns bytes into values and values into bytes; the Twisted
protocol on top of it decides what to do with them. :func:`translate` turns the
legacy messages that have a counterpart in the standard (``in_park``,
``out_park``, ``upload_order``) into the standard's messages; the others are
kept as they are by the caller.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import math
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from json import JSONDecodeError
from zoneinfo import ZoneInfo

from attrs import frozen

from gateway.dialects.interface import Message
from gateway.protocol import signing
from gateway.protocol.envelope import members
from gateway.protocol.times import wire_time

__all__ = [
    "CLOUD",
    "FRAMINGS",
    "HEARTBEAT",
    "HEARTBEAT_ANSWER",
    "LINES",
    "MAX_LINE",
    "PROCESSED_ALREADY",
    "TRANSLATED",
    "BadMessage",
    "Envelope",
    "LiftrodReply",
    "LineSplitter",
    "Oversize",
    "Untranslatable",
    "answer",
    "canonical",
    "digest",
    "frame",
    "liftrod_reply",
    "login_answer",
    "operate_liftrod",
    "parse_line",
    "repeat_answer",
    "sign",
    "sign_ok",
    "translate",
]

MAX_LINE = 65536
HEARTBEAT = b"0x11"
HEARTBEAT_ANSWER = "0x12"

# How frames are written to a lot (the [[lot]] key `framing`). The ParkingOS server writes
# every frame, the 0x12 heartbeat and an empty answer included, as "\n" + text + "\r"
# (SensorServerHandler.doBackMessage, both versions); "lines" is text + "\n", for lot
# software written against a line protocol.
CLOUD = "cloud"
LINES = "lines"
FRAMINGS = (CLOUD, LINES)

# The later ParkingOS server's answer to an in_park, out_park or upload_order it has seen
# (TempUtil.isReSend): state 0 and this text, with the order_id and car_number.
PROCESSED_ALREADY = "数据已处理过..."

# What bolink appends to the data text before the secret, where the standard puts the token.
_KEY_PREFIX = "key="
_BLANKS = b" \t"


# --- framing -------------------------------------------------------------------------------------


@frozen
class Oversize:
    """A line longer than `limit` bytes arrived and was dropped; the caller decides what to do."""

    limit: int


class LineSplitter:
    """Feed bytes in any split; get back the lines they complete, stripped and without terminators.

    A line ends at ``\\n`` or ``\\r`` (JSON never holds a raw CR or LF inside a
    string), so ``\\n``, ``\\r\\n`` and ``\\r`` endings all work, and lines that
    are empty once spaces and tabs are stripped are skipped. As soon as a line
    grows past `limit` bytes, one :class:`Oversize` is returned in its place and
    the rest of it, up to the next terminator, is dropped unread: the splitter
    never holds more than `limit` bytes.
    """

    def __init__(self, limit: int = MAX_LINE) -> None:
        if limit < 1:
            raise ValueError(f"limit must be positive, not {limit}")
        self._limit = limit
        # The start of a line whose terminator has not come yet; never more than `limit` bytes.
        self._pending = bytearray()
        # Dropping the rest of an oversize line, up to its terminator.
        self._discarding = False

    @property
    def buffered_bytes(self) -> int:
        """How many bytes of an unterminated line are held waiting for its end."""
        return len(self._pending)

    def feed(self, data: bytes) -> list[bytes | Oversize]:
        """Take the next bytes of the stream; return the lines (and oversize notices) they complete."""
        if not data:
            return []
        # Splitting in C on one terminator beats a scan for two; CR becomes LF, the empty
        # lines that makes of CR LF are skipped with the other empty lines. A heartbeat
        # byte 0x11 is a line of its own even without an end: JSON text never holds one raw.
        data = bytes(data).replace(b"\r", b"\n")
        if b"\x11" in data:
            data = data.replace(b"\x11", b"\n\x11\n")
        pieces = data.split(b"\n")
        last = pieces.pop()  # the unterminated rest ("" when the data ends with a terminator)
        limit = self._limit
        events: list[bytes | Oversize] = []
        if pieces:
            if self._discarding:
                self._discarding = False
                pieces[0] = b""  # the end of the oversize line
            elif self._pending:
                pieces[0] = bytes(self._pending) + pieces[0]
                self._pending.clear()
            for piece in pieces:
                if len(piece) > limit:
                    events.append(Oversize(limit))
                    continue
                line = piece.strip(_BLANKS)
                if line:
                    events.append(line)
        elif self._discarding:
            return events
        if len(self._pending) + len(last) > limit:
            self._pending.clear()
            self._discarding = True
            events.append(Oversize(limit))
        else:
            self._pending += last
        return events


# --- envelopes -----------------------------------------------------------------------------------


@frozen
class Envelope:
    """One legacy message: its header members, `data` parsed, and `data` exactly as written."""

    service: str
    token: str
    sign: str
    data: object
    data_text: str
    order_id: str


class BadMessage(Exception):
    """A line that is not a bolink message; `reason` says why, `service` names it when known."""

    def __init__(self, service: str, reason: str) -> None:
        super().__init__(reason)
        self.service = service
        self.reason = reason


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: object) -> str:
    """A value as an error message quotes it: repr, cut short."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to print
        return "a very long number"
    return _short(text, 40)


def _header(found: Mapping[str, tuple[object, int, int]], name: str, service: str) -> str:
    entry = found.get(name)
    if entry is None or entry[0] is None:
        return ""
    value = entry[0]
    if not isinstance(value, str):
        raise BadMessage(service, f"{name}: must be a string")
    return value


def parse_line(line: bytes) -> Envelope:
    """Parse one line (as :class:`LineSplitter` returns it), or raise :class:`BadMessage`.

    A ``token`` or ``sign`` of null counts as absent, like an absent one.
    """
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError:
        raise BadMessage("", "not UTF-8 text") from None
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        found = members(text)
    except RecursionError:
        raise BadMessage("", "nested too deeply") from None
    except ValueError as error:
        if isinstance(error, JSONDecodeError):
            detail = f"{error.msg} at character {error.pos}"
        elif not text.strip(" \t\r\n"):
            detail = "empty"
        elif not text.lstrip(" \t\r\n").startswith("{"):
            detail = "does not begin with '{'"
        else:
            detail = str(error)
        raise BadMessage("", f"not a JSON object: {_short(detail)}") from None
    entry = found.get("service_name")
    service = entry[0] if entry is not None else None
    if not isinstance(service, str) or not service:
        raise BadMessage("", "service_name: required")
    token = _header(found, "token", service)
    signature = _header(found, "sign", service)
    data: object = None
    data_text = ""
    order_id = ""
    entry = found.get("data")
    if entry is not None and entry[0] is not None:
        data, start, end = entry
        if not isinstance(data, dict):
            raise BadMessage(service, "data: must be a JSON object")
        data_text = text[start:end]
        order = data.get("order_id")
        if isinstance(order, str) or (isinstance(order, int) and not isinstance(order, bool)):
            order_id = str(order)
    return Envelope(
        service=service,
        token=token,
        sign=signature,
        data=data,
        data_text=data_text,
        order_id=order_id,
    )


# --- signatures ----------------------------------------------------------------------------------

# fastjson escapes these in a string besides '"' and '\\' (IOUtils.specicalFlags_doubleQuotes):
# \b \t \n \f \r by their letter, the other controls and U+007F..U+009F as \uXXXX.
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}
_ESCAPED = (
    frozenset(_SHORT_ESCAPES) | frozenset(map(chr, range(0x20))) | frozenset(map(chr, range(0x7F, 0xA0)))
)


def _quote(text: str) -> str:
    if _ESCAPED.isdisjoint(text):
        return '"' + text + '"'
    parts = ['"']
    for character in text:
        if character in _ESCAPED:
            parts.append(_SHORT_ESCAPES.get(character) or f"\\u{ord(character):04X}")
        else:
            parts.append(character)
    parts.append('"')
    return "".join(parts)


def _number(value: Decimal) -> str:
    # Java's BigDecimal.toString and Python's str(Decimal) follow the same scientific
    # notation rules; BigDecimal has no negative zero.
    return str(value.copy_abs() if value.is_zero() else value)


def _canonical(value: object) -> str:
    if isinstance(value, dict):
        return "{" + ",".join(_quote(k) + ":" + _canonical(v) for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_canonical(v) for v in value) + "]"
    if isinstance(value, str):
        return _quote(value)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if value is None:
        return "null"
    if isinstance(value, Decimal):
        return _number(value)
    return str(value)  # an int


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def canonical(data_text: str) -> str | None:
    """`data` as the ParkingOS server signs it: re-serialized compactly, or None when it is no JSON.

    The server parses the message with fastjson (``Feature.OrderedField``) and
    signs ``getString("data")``: the members in their order, no blanks, text
    unescaped but for the characters fastjson escapes, numbers as they were
    written (fastjson reads them as BigDecimal), except a negative zero.
    """
    try:
        value = json.loads(data_text, parse_float=Decimal, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        return None
    try:
        return _canonical(value)
    except RecursionError:
        return None


def sign(data_text: str, secret: str) -> str:
    """The signature of `data_text` for a lot sharing `secret`: upper-case MD5 of text + "key=" + secret."""
    return signing.sign(data_text, _KEY_PREFIX, secret)


def _md5(text: str) -> str:
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest().upper()


def sign_ok(envelope: Envelope, secret: str, mode: str) -> bool:
    """Whether `envelope` passes the lot's signature `mode`: "off", "optional" or anything else (required).

    As the ParkingOS server checks it (``DoUploadImpl.checkTokenSign`` and
    ``doLogin``): ``sign`` must equal the upper-case MD5 of :func:`canonical`
    ``data`` + ``"key="`` + secret, character for character. ``data`` exactly as
    the lot wrote it is accepted too (the same text for a lot writing compact
    JSON). "optional" lets an unsigned message through but checks a signed one; a
    message without ``data`` signs the empty text.
    """
    if mode == "off":
        return True
    if mode == "optional" and not envelope.sign:
        return True
    claimed = envelope.sign.encode("utf-8", "replace")
    written = _md5(envelope.data_text + _KEY_PREFIX + secret)
    if hmac.compare_digest(claimed, written.encode("ascii")):
        return True
    if not envelope.data_text:
        return False
    text = canonical(envelope.data_text)
    if text is None or text == envelope.data_text:
        return False
    return hmac.compare_digest(claimed, _md5(text + _KEY_PREFIX + secret).encode("ascii"))


def digest(envelope: Envelope) -> str:
    """A short fingerprint of the message's `data`, whatever its blanks: the repeat rule's key."""
    text = canonical(envelope.data_text) if envelope.data_text else ""
    if text is None:
        text = envelope.data_text
    return hashlib.md5(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]


# --- answers and downlinks -----------------------------------------------------------------------


def frame(text: str, framing: str = CLOUD) -> bytes:
    """One frame as written to a lot: "\\n" + text + "\\r" as the ParkingOS server writes it, or a line."""
    # A lone surrogate (JSON allows "\ud800") cannot be UTF-8; as "\ud800" again it is still JSON.
    data = text.encode("utf-8", "backslashreplace")
    return data + b"\n" if framing == LINES else b"\n" + data + b"\r"


def _message(message: dict[str, object], framing: str) -> bytes:
    return frame(signing.compact(message), framing)


def answer(service: str, ok: bool, errmsg: str, order_id: str, framing: str = CLOUD) -> bytes:
    """The frame answering a message of `service`: state 1 when `ok`, else 0 with `errmsg`.

    The members of the ParkingOS server's answers to in_park, out_park and upload_order.
    """
    return _message(
        {"service_name": service, "state": 1 if ok else 0, "errmsg": errmsg, "order_id": order_id}, framing
    )


def repeat_answer(service: str, order_id: str, car_number: str, framing: str = CLOUD) -> bytes:
    """The frame answering a repeat of an in_park/out_park/upload_order: state 0 "数据已处理过...".

    The later ParkingOS server's answer (SensorServerHandler, TempUtil.isReSend).
    """
    message: dict[str, object] = {"state": 0, "errmsg": PROCESSED_ALREADY, "service_name": service}
    if order_id:
        message["order_id"] = order_id
    if car_number:
        message["car_number"] = car_number
    return _message(message, framing)


def login_answer(ok: bool, errmsg: str, token: str, framing: str = CLOUD) -> bytes:
    """The frame answering a login, as the ParkingOS server writes it (SensorServerHandler.doLogin).

    ``{"state":1,"token":...,"service_name":"login"}``, or state 0 with `errmsg`.
    """
    if ok:
        return _message({"state": 1, "token": token, "service_name": "login"}, framing)
    return _message({"state": 0, "errmsg": errmsg, "service_name": "login"}, framing)


def operate_liftrod(
    channel_id: str, operate: int, park_id: str, liftrod_id: str, framing: str = CLOUD
) -> bytes:
    """The frame telling a lot to work the barrier of `channel_id`: `operate` 0 raises it, 1 lowers it.

    The members the ParkingOS cloud sends (SendMessageByTCPAction: ``channel_name``,
    ``channel_id``, ``operate``, ``service_name``) and those the SDK documentation
    adds (``park_id``, ``liftrod_id``, which the lot returns as it was).
    """
    return _message(
        {
            "service_name": "operate_liftrod",
            "channel_id": channel_id,
            "channel_name": "",
            "operate": operate,
            "park_id": park_id,
            "liftrod_id": liftrod_id,
        },
        framing,
    )


@frozen
class LiftrodReply:
    """A lot's answer to operate_liftrod, from its signed ``data``; None where it left a member out."""

    state: int | None
    channel_id: str | None
    operate: int | None
    liftrod_id: str | None
    errmsg: str


def _small_int(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit() and len(value) < 10:
        return int(value.strip())
    return None


def _text(value: object) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def liftrod_reply(envelope: Envelope) -> LiftrodReply:
    """The members of a lot's operate_liftrod answer: inside ``data``, where the server reads them.

    The ParkingOS server reads ``state``, ``channel_id`` and ``operate`` of
    ``data`` (SensorServerHandler); members beside ``data`` are not signed and are
    not read.
    """
    data = envelope.data if isinstance(envelope.data, dict) else {}
    errmsg = data.get("errmsg")
    return LiftrodReply(
        state=_small_int(data.get("state")),
        channel_id=_text(data.get("channel_id")),
        operate=_small_int(data.get("operate")),
        liftrod_id=_text(data.get("liftrod_id")),
        errmsg=errmsg if isinstance(errmsg, str) else "",
    )


# --- translation ---------------------------------------------------------------------------------


class Untranslatable(Exception):
    """A legacy message whose member `field` has no counterpart in the standard; `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"data.{field}: {reason}")
        self.field = field
        self.reason = reason


TRANSLATED = ("in_park", "out_park", "upload_order")

# The standard's inIdentity (车辆类型, T/CPMI 002-2018 表B.6 and 表B.8): 1 月租车, 2 临时车,
# 3 储值车, 4 军警车, 5 会员免费车.
#
# From car_cost_type (车辆种类), bolink SDK documentation 2.1 车辆入场: 1 临停车, 2 月卡车,
# 3 白名单车, 4 无牌车, 5 贵宾车, 6 VIP, 7 内部车, 8 月卡多位多车, 9 储值车.
_IDENTITY_BY_COST_TYPE: Mapping[int, int] = {
    1: 2,  # 临停车 -> 临时车
    2: 1,  # 月卡车 -> 月租车
    # 白名单车: a car let through free by a list -> 会员免费车. Judgement: the standard's
    # other free kind, 军警车, is a white list too, but nothing in the message says so.
    3: 5,
    # 无牌车: a car without a plate, charged by the time it stayed -> 临时车. Judgement: it
    # says how the car was recognised, not who pays; a no-plate car pays as a temporary one.
    4: 2,
    5: 5,  # 贵宾车 -> 会员免费车. Judgement: a guest the lot lets through free.
    6: 5,  # VIP -> 会员免费车. Judgement: as 贵宾车.
    # 内部车: the operator's or tenants' own cars -> 会员免费车. Judgement: they pass free;
    # a lot that bills them monthly reports them as 月卡车 anyway.
    7: 5,
    8: 1,  # 月卡多位多车 (one month card, several cars and places) -> 月租车
    9: 3,  # 储值车 -> 储值车
}
# From car_type, when car_cost_type is absent. car_type is the vehicle's size in the SDK
# documentation (小车, 大车), which the standard does not carry; but lots also write the
# category there, as the captured upload_order quoted in the ParkingOS server
# (TempUtil.isReSend) shows ("car_type":"临时车"). Those category names, and nothing else:
_IDENTITY_BY_NAME: Mapping[str, int] = {
    "月租车": 1,
    "月卡车": 1,
    "临时车": 2,
    "临停车": 2,
    "储值车": 3,
    "军警车": 4,
    "免费车": 5,
    "会员免费车": 5,
}

# The standard's paymentMode (支付方式, 表B.8): 0 未知, 1 现金, 2 自发卡, 3 次数, 4 微信支付,
# 5 支付宝支付, 6 银联闪付, 7 交通卡, 8 免费, 9 账户余额, 10 银联接触卡, 11 银联网络支付,
# 12 第三方余额.
#
# From pay_type, bolink SDK documentation 2.2 车辆出场 and 2.3 (cash, wallet, sweepcode,
# escape, etc_pay, monthuser, free; scancode), the asynchronous payment result (etc) and
# the ParkingOS server's setOrder (scancode counted with wallet and sweepcode as electronic).
_PAYMENT_MODE: Mapping[str, int] = {
    "cash": 1,  # 现金 -> 现金
    "wallet": 9,  # 余额支付, the car owner's balance with the platform -> 账户余额
    # 扫码枪 / 出场扫码 / 付款码: WeChat or Alipay, the message does not say which -> 未知.
    "sweepcode": 0,
    "scancode": 0,
    "auth_code": 0,
    # 月卡用户: nothing is paid at the exit -> 免费. The standard has no month-card payment;
    # the car's inIdentity (月租车) says why.
    "monthuser": 8,
    "free": 8,  # 免费 -> 免费
    "escape": 0,  # 逃单出场: left without paying; no payment was made -> 未知
    # ETC: the toll card of the car's on-board unit -> 交通卡. Judgement: the nearest kind.
    "etc_pay": 7,
    "etc": 7,
}
# The SDK documentation (2.2): "free 和 无效值为免费", free and any value it does not define
# mean free.
_UNDEFINED_PAY_TYPE = 8

_CAR_IN_SOURCES: Mapping[str, str] = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "inTime": "in_time",
    "inIdentity": "car_cost_type",
}
_CAR_OUT_SOURCES: Mapping[str, str] = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "outCross": "out_channel_id",
    "inTime": "in_time",
    "outTime": "out_time",
    "inIdentity": "car_cost_type",
    "parkMinutes": "out_time",
    "payMoney": "amount_receivable",
    "incomeMoney": "total",
    "discountMoney": "reduce_amount",
    "paymentMode": "pay_type",
}
# SDK 2.1.0.0 writes empty_plot of out_park with a blank in its name (json_test.go of
# daiybh/Park_Cloud: "empty_ plot"); it is read when empty_plot is absent.
_EMPTY_PLOT = "empty_plot"
_EMPTY_PLOT_MISSPELT = "empty_ plot"

# Characters of an amount written as text; Decimal alone would also take "1_000", "NaN" or Arabic digits.
_AMOUNT_CHARACTERS = frozenset("0123456789+-.eE")


def _absent(value: object) -> bool:
    """Whether a member counts as not given: absent, null, or text with nothing but blanks."""
    return value is None or (isinstance(value, str) and not value.strip())


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return type(value).__name__


def _record_code(data: Mapping[str, object]) -> str:
    value = data.get("order_id")
    if _absent(value):
        raise Untranslatable("order_id", "required")
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Untranslatable("order_id", f"must be a string or an integer, not {_kind(value)}")


def _plate(data: Mapping[str, object]) -> str:
    value = data.get("car_number")
    if _absent(value):
        raise Untranslatable("car_number", "required")
    if not isinstance(value, str):
        raise Untranslatable("car_number", f"must be a string, not {_kind(value)}")
    return value


def _channel(data: Mapping[str, object], name: str) -> str | None:
    value = data.get(name)
    if _absent(value):
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise Untranslatable(name, f"must be a string or an integer, not {_kind(value)}")


def _seconds(data: Mapping[str, object], name: str) -> int | None:
    """Unix seconds: an int, a string of digits, or a float (truncated); None when absent."""
    value = data.get(name)
    if _absent(value):
        return None
    seconds: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        seconds = value
    elif isinstance(value, float):
        if math.isfinite(value):
            seconds = int(value)
            if value < 0:
                seconds = None
    elif isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit() and len(text) <= 20:
            seconds = int(text)
    if seconds is None or seconds < 0:
        raise Untranslatable(name, f"not unix seconds: {_show(value)}")
    return seconds


def _time(seconds: int, name: str, value: object, zone: ZoneInfo) -> str:
    try:
        return wire_time(seconds, zone)
    except (OverflowError, OSError, ValueError):  # beyond the years datetime holds
        raise Untranslatable(name, f"not unix seconds: {_show(value)}") from None


def _amount(data: Mapping[str, object], name: str) -> float | None:
    """An amount in yuan (a number, or its text such as "12.50"), as a float; None when absent."""
    value = data.get(name)
    if _absent(value):
        return None
    number: float | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int | float):
        try:
            number = float(value)
        except OverflowError:  # an int beyond any float
            number = None
    elif isinstance(value, str):
        text = value.strip()
        if _AMOUNT_CHARACTERS.issuperset(text):
            try:
                number = float(Decimal(text))
            except (InvalidOperation, ValueError, OverflowError):
                number = None
    if number is None or not math.isfinite(number):
        raise Untranslatable(name, f"not an amount in yuan: {_show(value)}")
    return number


def _identity(data: Mapping[str, object]) -> int | None:
    """inIdentity from car_cost_type, else from a category name in car_type; None when neither says."""
    value = data.get("car_cost_type")
    if not _absent(value):
        number = _small_int(value)
        if number is None:
            raise Untranslatable("car_cost_type", f"not a whole number: {_show(value)}")
        return _IDENTITY_BY_COST_TYPE.get(number)
    name = data.get("car_type")
    if isinstance(name, str):
        return _IDENTITY_BY_NAME.get(name.strip())
    return None


def _payment_mode(data: Mapping[str, object]) -> int | None:
    """paymentMode from pay_type; None when the lot gave none."""
    value = data.get("pay_type")
    if _absent(value):
        return None
    if isinstance(value, str):
        return _PAYMENT_MODE.get(value.strip(), _UNDEFINED_PAY_TYPE)
    return _UNDEFINED_PAY_TYPE


def _free_space(data: Mapping[str, object]) -> tuple[Message, ...]:
    """The freeSpace message of `empty_plot`, or nothing when the lot did not give it."""
    name = _EMPTY_PLOT
    value = data.get(name)
    if _absent(value) and not _absent(data.get(_EMPTY_PLOT_MISSPELT)):
        name = _EMPTY_PLOT_MISSPELT
        value = data[name]
    if _absent(value):
        return ()
    count: int | None = None
    if isinstance(value, bool):
        pass
    elif isinstance(value, int):
        count = value
    elif isinstance(value, str):
        text = value.strip()
        digits = text[1:] if text.startswith("-") else text
        if digits.isascii() and digits.isdigit() and len(digits) <= 18:
            count = int(text)
    if count is None:
        raise Untranslatable(name, f"not a whole number: {_show(value)}")
    return (Message("freeSpace", {"emptyNum": count}, {"emptyNum": name}),)


def _car_in(data: Mapping[str, object], zone: ZoneInfo) -> tuple[Message, ...]:
    out: dict[str, object] = {"recordCode": _record_code(data), "carNum": _plate(data)}
    in_cross = _channel(data, "in_channel_id")
    if in_cross is not None:
        out["inCross"] = in_cross
    in_seconds = _seconds(data, "in_time")
    if in_seconds is not None:
        out["inTime"] = _time(in_seconds, "in_time", data["in_time"], zone)
    identity = _identity(data)
    if identity is not None:
        out["inIdentity"] = identity
    return (Message("carIn", out, _CAR_IN_SOURCES), *_free_space(data))


def _car_out(data: Mapping[str, object], zone: ZoneInfo) -> tuple[Message, ...]:
    out: dict[str, object] = {"recordCode": _record_code(data), "carNum": _plate(data)}
    for name, legacy in (("inCross", "in_channel_id"), ("outCross", "out_channel_id")):
        channel = _channel(data, legacy)
        if channel is not None:
            out[name] = channel
    in_seconds = _seconds(data, "in_time")
    out_seconds = _seconds(data, "out_time")
    if in_seconds is not None:
        out["inTime"] = _time(in_seconds, "in_time", data["in_time"], zone)
    if out_seconds is not None:
        out["outTime"] = _time(out_seconds, "out_time", data["out_time"], zone)
    identity = _identity(data)
    if identity is not None:
        out["inIdentity"] = identity
    if in_seconds is not None and out_seconds is not None:
        if out_seconds < in_seconds:
            raise Untranslatable("out_time", "before in_time")
        out["parkMinutes"] = (out_seconds - in_seconds) // 60
    for name, legacy in (
        ("payMoney", "amount_receivable"),
        ("incomeMoney", "total"),
        ("discountMoney", "reduce_amount"),
    ):
        amount = _amount(data, legacy)
        if amount is not None:
            out[name] = amount
    mode = _payment_mode(data)
    if mode is not None:
        out["paymentMode"] = mode
    return (Message("carOut", out, _CAR_OUT_SOURCES), *_free_space(data))


def translate(service: str, data: Mapping[str, object], zone: ZoneInfo) -> tuple[Message, ...] | None:
    """The standard's messages a legacy message of `service` stands for, or None when it has none.

    ``in_park`` makes a carIn, ``out_park`` and ``upload_order`` a carOut, each
    followed by a freeSpace when the lot gave ``empty_plot``. Times are written
    in `zone`. Raises :class:`Untranslatable` naming the legacy member that
    cannot be carried over; members the standard has no place for are left out
    (the journal keeps the original message).
    """
    if service == "in_park":
        return _car_in(data, zone)
    if service in ("out_park", "upload_order"):
        return _car_out(data, zone)
    return None

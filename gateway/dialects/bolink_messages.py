"""The bolink line protocol without I/O: framing, envelopes, signatures, answers and translation.

bolink is the lot protocol of the ParkingOS cloud as legacy lot software speaks
it: one JSON object per line, ``{"service_name": ..., "token": ..., "sign": ...,
"data": {...}}``, signed with the upper-case MD5 of ``data`` as written +
``"key="`` + the lot's secret. A lot sends the bare line ``0x11`` as a heartbeat
and is answered ``0x12``.

This module only turns bytes into values and values into bytes; the Twisted
protocol on top of it decides what to do with them. :func:`translate` turns the
legacy messages that have a counterpart in the standard (``in_park``,
``out_park``, ``upload_order``) into the standard's messages; the others are
kept as they are by the caller.
"""

from __future__ import annotations

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
    "HEARTBEAT",
    "HEARTBEAT_ANSWER",
    "MAX_LINE",
    "TRANSLATED",
    "BadMessage",
    "Envelope",
    "LineSplitter",
    "Oversize",
    "Untranslatable",
    "answer",
    "login_answer",
    "operate_liftrod",
    "parse_line",
    "sign",
    "sign_ok",
    "translate",
]

MAX_LINE = 65536
HEARTBEAT = b"0x11"
HEARTBEAT_ANSWER = b"0x12\n"

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


def sign(data_text: str, secret: str) -> str:
    """The signature of `data_text` for a lot sharing `secret`: upper-case MD5 of text + "key=" + secret."""
    return signing.sign(data_text, _KEY_PREFIX, secret)


def sign_ok(envelope: Envelope, secret: str, mode: str) -> bool:
    """Whether `envelope` passes the lot's signature `mode`: "off", "optional" or anything else (required).

    "optional" lets an unsigned message through but checks a signed one. The
    signature may sign `data` as written or its compact form, in either hex case;
    a message without `data` signs the empty text.
    """
    if mode == "off":
        return True
    if mode == "optional" and not envelope.sign:
        return True
    return signing.signature_matches(envelope.sign, envelope.data_text, envelope.data, _KEY_PREFIX, secret)


# --- answers -------------------------------------------------------------------------------------


def _line(message: dict[str, object]) -> bytes:
    # A lone surrogate (JSON allows "\ud800") cannot be UTF-8; as "\ud800" again it is still JSON.
    return (signing.compact(message) + "\n").encode("utf-8", "backslashreplace")


def answer(service: str, ok: bool, errmsg: str, order_id: str) -> bytes:
    """The line answering a message of `service`: state 1 when `ok`, else 0 with `errmsg`."""
    return _line({"service_name": service, "state": 1 if ok else 0, "errmsg": errmsg, "order_id": order_id})


def login_answer(ok: bool, errmsg: str, token: str) -> bytes:
    """The line answering a login: state 1 and the session's `token` when `ok`, else 0 with `errmsg`."""
    return _line({"service_name": "login", "state": 1 if ok else 0, "errmsg": errmsg, "token": token})


def operate_liftrod(channel_id: str, operate: int) -> bytes:
    """The line telling a lot to work the barrier of the channel `channel_id`."""
    return _line(
        {
            "service_name": "operate_liftrod",
            "channel_id": channel_id,
            "channel_name": "",
            "operate": operate,
        }
    )


# --- translation ---------------------------------------------------------------------------------


class Untranslatable(Exception):
    """A legacy message whose member `field` has no counterpart in the standard; `reason` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"data.{field}: {reason}")
        self.field = field
        self.reason = reason


TRANSLATED = ("in_park", "out_park", "upload_order")

# bolink's car_type -> the standard's inIdentity (C: 1 月租车 2 临时车 3 储值车 4 军警车 5 会员免费车).
_IDENTITY: Mapping[str, int] = {
    "月租车": 1,
    "临时车": 2,
    "储值车": 3,
    "军警车": 4,
    "免费车": 5,
    "会员免费车": 5,
}
_DEFAULT_IDENTITY = 2

# bolink's pay_type -> the standard's paymentMode (0 未知, 1 现金, 8 月卡, 9 钱包).
_PAYMENT_MODE: Mapping[str, int] = {"cash": 1, "wallet": 9, "monthuser": 8, "sweepcode": 0}
_DEFAULT_PAYMENT_MODE = 0

_CAR_IN_SOURCES: Mapping[str, str] = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "inTime": "in_time",
    "inIdentity": "car_type",
}
_CAR_OUT_SOURCES: Mapping[str, str] = {
    "recordCode": "order_id",
    "carNum": "car_number",
    "inCross": "in_channel_id",
    "outCross": "out_channel_id",
    "inTime": "in_time",
    "outTime": "out_time",
    "inIdentity": "car_type",
    "parkMinutes": "out_time",
    "payMoney": "amount_receivable",
    "incomeMoney": "total",
    "discountMoney": "reduce_amount",
    "paymentMode": "pay_type",
}
_FREE_SPACE_SOURCES: Mapping[str, str] = {"emptyNum": "empty_plot"}

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


def _identity(data: Mapping[str, object]) -> int:
    value = data.get("car_type")
    if isinstance(value, str):
        return _IDENTITY.get(value.strip(), _DEFAULT_IDENTITY)
    return _DEFAULT_IDENTITY


def _payment_mode(data: Mapping[str, object]) -> int:
    value = data.get("pay_type")
    if isinstance(value, str):
        return _PAYMENT_MODE.get(value.strip(), _DEFAULT_PAYMENT_MODE)
    return _DEFAULT_PAYMENT_MODE


def _free_space(data: Mapping[str, object]) -> tuple[Message, ...]:
    """The freeSpace message of `empty_plot`, or nothing when the lot did not give it."""
    value = data.get("empty_plot")
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
        raise Untranslatable("empty_plot", f"not a whole number: {_show(value)}")
    return (Message("freeSpace", {"emptyNum": count}, _FREE_SPACE_SOURCES),)


def _car_in(data: Mapping[str, object], zone: ZoneInfo) -> tuple[Message, ...]:
    out: dict[str, object] = {"recordCode": _record_code(data), "carNum": _plate(data)}
    in_cross = _channel(data, "in_channel_id")
    if in_cross is not None:
        out["inCross"] = in_cross
    in_seconds = _seconds(data, "in_time")
    if in_seconds is not None:
        out["inTime"] = _time(in_seconds, "in_time", data["in_time"], zone)
    out["inIdentity"] = _identity(data)
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
    out["inIdentity"] = _identity(data)
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
    out["paymentMode"] = _payment_mode(data)
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

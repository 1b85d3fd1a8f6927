"""What the conformance kit checks, as data: one `Check` per row of its report.

The interface rows are derived from the catalog (`gateway.protocol.catalog`):
one per uplink a lot sends, one "refused when invalid" row per report or query
uplink, one per downlink a platform sends. The protocol rules (login and
tokens, signature, repeats, framing, idle timers) are listed here once. Both
sides of the kit (`platform.py`, `lot.py`) plan their run from these lists, and
the report gives each planned check exactly one row.
"""

from __future__ import annotations

from attrs import frozen

from gateway.protocol.catalog import INTERFACES, DeliveryClass, Field, FieldType, Interface
from gateway.protocol.results import Result

__all__ = [
    "FIELD_ERRORS",
    "INVALID_VALUE",
    "Check",
    "InvalidField",
    "downlink_interfaces",
    "invalid_field",
    "lot_checks",
    "platform_checks",
    "uplink_interfaces",
]

# A field the platform must refuse is answered with the contract's 9010 (the
# message names the field); a platform that only knows table B.4 says 9002.
FIELD_ERRORS = (Result.FIELD_INVALID.code, Result.MALFORMED.code)
INVALID_VALUE = "not-a-number"
"""What an invalid message puts in a number field."""


@frozen
class Check:
    """One check of the kit: its name (the row's), group, what it checks, and where the rule is."""

    name: str
    group: str
    title: str
    reference: str
    code: str = ""


@frozen
class InvalidField:
    """How the kit makes a valid message of an interface invalid: which field, and how."""

    field: Field
    missing: bool

    def describe(self) -> str:
        """The change, in words: "recordCode missing" or "totalNum not a number"."""
        return f"{self.field.name} missing" if self.missing else f"{self.field.name} not a number"


def invalid_field(interface: Interface) -> InvalidField | None:
    """The change that makes a message of `interface` invalid: its first required field left
    out, else its first number field given a text; None when it has neither."""
    for field in interface.request:
        if field.required:
            return InvalidField(field, missing=True)
    for field in interface.request:
        if field.type in (FieldType.INT, FieldType.FLOAT):
            return InvalidField(field, missing=False)
    return None


def uplink_interfaces() -> tuple[Interface, ...]:
    """The interfaces a lot sends, in Table-1 order (login and heartbeat included)."""
    return tuple(interface for interface in INTERFACES if interface.uplink is not None)


def downlink_interfaces() -> tuple[Interface, ...]:
    """The interfaces a platform sends down to a lot (command and sync class), in Table-1 order."""
    return tuple(interface for interface in INTERFACES if interface.downlink is not None)


def _reference(interface: Interface) -> str:
    return f"表1 #{interface.number}, {interface.table}"


_LOGIN = (
    Check(
        "login.accepted",
        "login",
        "the lot's account gets a 32-character token, answer signed",
        "B.4.1, B.3.7",
    ),
    Check("login.refused", "login", "a wrong password is refused with 9003", "B.4.1, B.4"),
)
_TOKEN = (
    Check("token.unknown", "token", "a request with an unknown token is refused with 9000", "B.3.6"),
    Check("token.revoked", "token", "a second login replaces the token: the first gets 9000", "B.3.5"),
    Check("token.expired", "token", "an expired token is refused with 9000", "B.3.6, CONTRACT §4"),
)
_SIGNATURE = (
    Check("signature.missing", "signature", "a request without a signature is refused with 9006", "B.3.7"),
    Check("signature.wrong", "signature", "a request whose signature does not match is refused", "B.3.7"),
    Check(
        "signature.as-written",
        "signature",
        "a signature over `data` as written (with spaces) is accepted",
        "B.3.7, CONTRACT §4",
    ),
)
_REPEAT = (
    Check(
        "repeat.first-answer",
        "repeat",
        "a repeated oprNum gets the first answer and is not processed again",
        "B.2.3.6",
    ),
    Check("repeat.limit", "repeat", "the 6th repeat of an oprNum within an hour gets 9007", "B.2.3.6"),
)
_TCP = (
    Check("tcp.bind-login", "tcp", "a login frame binds the connection and returns a token", "B.3, B.3.5"),
    Check("tcp.bind-heartbeat", "tcp", "a heartbeat frame with the token binds the connection", "B.3"),
    Check("tcp.rebind", "tcp", "a new bind of the same lot closes the older connection", "CONTRACT §5"),
    Check(
        "tcp.bind-required", "tcp", "a first frame other than login or heartbeat is refused", "CONTRACT §5"
    ),
    Check("tcp.bad-token", "tcp", "a heartbeat with an unknown token is refused with 9000", "B.3.6"),
    Check("tcp.heartbeat", "tcp", "a heartbeat frame is answered 0000 with the time, signed", "B.4.8, B.3.7"),
    Check(
        "tcp.escaped-in",
        "tcp",
        "`$`, `#` and `*` written \\u0024 \\u0023 \\u002a in a frame are read, signature intact",
        "B.3.4, CONTRACT §5",
    ),
    Check("tcp.split", "tcp", "a frame arriving in several pieces is read", "B.3.4"),
    Check("tcp.batch", "tcp", "several frames in one write, `*`-separated, are each answered", "B.3.4"),
    Check("tcp.garbage", "tcp", "bytes outside frames are skipped", "B.3.4, CONTRACT §5"),
    Check("tcp.oversize", "tcp", "a frame over max_frame_bytes closes the connection", "CONTRACT §5"),
)
_IDLE = (
    Check("idle.write", "idle", "a silent lot gets a heartbeat request after write_idle", "B.3.4"),
    Check("idle.read", "idle", "a lot silent past read_idle is disconnected, not before", "B.3.4"),
)
_ESCAPED_OUT = Check(
    "tcp.escaped-out",
    "tcp",
    "an ACK whose data holds `$`, `#`, `*` has them escaped, signature over the unescaped JSON",
    "B.3.4, B.3.7, CONTRACT §5",
)


def platform_checks() -> tuple[Check, ...]:
    """Every check `cpmictl conformance platform` runs, in the order it runs them."""
    uplinks: list[Check] = []
    invalid: list[Check] = []
    for interface in uplink_interfaces():
        if interface.code == "login":
            continue  # login.accepted
        kind = interface.uplink.value if interface.uplink else ""
        uplinks.append(
            Check(
                f"uplink.{interface.code}",
                "uplink",
                f"{interface.code} ({interface.title}, {kind}): a valid message is answered, signed",
                _reference(interface),
                interface.code,
            )
        )
        change = invalid_field(interface)
        if interface.uplink in (DeliveryClass.REPORT, DeliveryClass.QUERY) and change is not None:
            invalid.append(
                Check(
                    f"invalid.{interface.code}",
                    "invalid",
                    f"{interface.code} with {change.describe()} is refused (9010) naming the field",
                    f"{_reference(interface)}, CONTRACT §4",
                    interface.code,
                )
            )
    downlinks = [
        Check(
            f"downlink.{interface.code}",
            "downlink",
            f"{interface.code} ({interface.title}, {interface.downlink.value if interface.downlink else ''}):"
            " the ACK is framed, signed and valid; the lot's REPLY is taken",
            _reference(interface),
            interface.code,
        )
        for interface in downlink_interfaces()
    ]
    return (
        *_LOGIN,
        *_TOKEN,
        *_SIGNATURE,
        *uplinks,
        *invalid,
        *_REPEAT,
        *_TCP,
        *_IDLE,
        *downlinks,
        _ESCAPED_OUT,
    )


_LOT_RULES = (
    Check("login", "login", "the lot logs in with its account", "B.4.1"),
    Check("signature", "signature", "every request's signature matches its data", "B.3.7"),
    Check(
        "oprnum", "repeat", "an oprNum is used for one message only (repeats carry the same data)", "B.2.3.2"
    ),
    Check("repeat.limit", "repeat", "no oprNum is repeated more than 5 times within an hour", "B.2.3.6"),
    Check("heartbeat.interval", "heartbeat", "heartbeats come at most 60 s apart", "B.4.8, 5.1.8"),
)
_LOT_TCP = (
    Check("tcp.bind", "tcp", "the lot binds its TCP connection by login or heartbeat", "B.3, CONTRACT §5"),
    Check("tcp.frames", "tcp", "every frame is well formed ($${json}##*) and within the size limit", "B.3.4"),
    Check("tcp.heartbeat-reply", "tcp", "the lot replies to the platform's heartbeat request", "B.3.4"),
)


def lot_checks() -> tuple[Check, ...]:
    """Every check `cpmictl conformance lot` reports, in report order."""
    uplinks = [
        Check(
            f"uplink.{interface.code}",
            "uplink",
            f"{interface.code} ({interface.title}): what the lot sent is valid and was accepted",
            _reference(interface),
            interface.code,
        )
        for interface in uplink_interfaces()
        if interface.code != "login"
    ]
    downlinks = [
        Check(
            f"downlink.{interface.code}",
            "downlink",
            f"{interface.code} ({interface.title}): the lot's REPLY is timely, signed and valid",
            _reference(interface),
            interface.code,
        )
        for interface in downlink_interfaces()
    ]
    return (*_LOT_RULES, *uplinks, *_LOT_TCP, *downlinks)

"""The TCP downlink's protocol and factory (B.3): bytes to frames to envelopes, and back.

Nothing here decides anything. `DownlinkProtocol` feeds bytes to a
`FrameDecoder`, parses each payload into a `Request` or a `Reply` and hands it
to a `FrameHandler` (the `Downlinks` object), which answers by calling `send`
and `close`. A connection costs one slotted object and its decoder: no timers,
since the handler sweeps all connections' idle timestamps at once.
"""

from __future__ import annotations

import re
from typing import Protocol as TypingProtocol

from attrs import frozen
from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.logs import describe
from gateway.protocol.envelope import (
    OPR_NUM_MAX,
    EnvelopeError,
    Request,
    _header,
    parse_request,
    refusal,
)
from gateway.protocol.envelope import (
    members as json_members,
)
from gateway.protocol.framing import FrameDecoder, FrameTooLarge
from gateway.protocol.results import Result

log = Logger()

_OPR_NUM = re.compile(r'"oprNum"\s*:\s*"([^"]*)"')


@frozen
class Reply:
    """A response envelope (B.3) from a lot: its REPLY to one of the gateway's ACKs."""

    code: str
    opr: str
    result_code: str
    result_message: str
    signature: str
    data: object
    data_text: str


def parse_reply(text: str) -> Reply:
    """Parse a response envelope, or raise EnvelopeError (9002) saying what is wrong."""
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        members = json_members(text)
        return _reply(text, members)
    except ValueError as error:
        raise refusal(error) from None


def _reply(text: str, members: dict[str, tuple[object, int, int]]) -> Reply:
    if "data" in members:
        data, start, end = members["data"]
        data_text = text[start:end]
    else:
        data, data_text = None, ""
    return Reply(
        code=_header(members, "code"),
        opr=_header(members, "oprNum"),
        result_code=_header(members, "resultCode"),
        result_message=_header(members, "resultMessage"),
        signature=_header(members, "signature"),
        data=data,
        data_text=data_text,
    )


def parse_frame(payload: bytes) -> Request | Reply:
    """A frame's payload as a request (from the lot: heartbeat, login) or a reply to an ACK.

    A payload is a reply when its top-level object has a `resultCode` member.
    Raises EnvelopeError when it is neither; `error.opr` is set when an oprNum
    could still be read from the text, so the sender can be told.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError(
            Result.MALFORMED, "not UTF-8", opr=opr_in(payload.decode("utf-8", "replace")) or ""
        ) from None
    try:
        if '"resultCode"' in text:
            if text.startswith("\ufeff"):
                text = text[1:]
            try:
                members = json_members(text)
            except ValueError as error:
                raise refusal(error) from None
            if "resultCode" in members:
                try:
                    reply = _reply(text, members)
                except ValueError as error:
                    raise EnvelopeError(Result.MALFORMED, str(error)) from None
                if len(reply.opr) > OPR_NUM_MAX:
                    raise EnvelopeError(Result.MALFORMED, f"oprNum: longer than {OPR_NUM_MAX} characters")
                return reply
        return parse_request(text)
    except EnvelopeError as error:
        if error.opr:
            raise
        opr = opr_in(text)
        raise EnvelopeError(error.result, error.detail, code=error.code, opr=opr or "") from None


def opr_in(text: str) -> str | None:
    """The oprNum a text that does not parse seems to carry, if one can be read (and is not too long)."""
    match = _OPR_NUM.search(text)
    if match is None or len(match.group(1)) > OPR_NUM_MAX:
        return None
    return match.group(1)


class FrameHandler(TypingProtocol):
    """What a downlink connection reports to (the `Downlinks` object)."""

    def connection_made(self, connection: DownlinkProtocol) -> None:
        """A lot connected; it is not bound yet."""

    def request_received(self, connection: DownlinkProtocol, request: Request) -> None:
        """A request envelope arrived (login, heartbeat, or a code the lot should not send here)."""

    def reply_received(self, connection: DownlinkProtocol, reply: Reply) -> None:
        """A response envelope arrived: the REPLY to an ACK, or to the gateway's heartbeat."""

    def malformed_received(self, connection: DownlinkProtocol, error: EnvelopeError) -> None:
        """A frame that is not an envelope."""

    def garbage_received(self, connection: DownlinkProtocol, count: int) -> None:
        """`count` bytes outside frames were skipped."""

    def too_large(self, connection: DownlinkProtocol, event: FrameTooLarge) -> None:
        """A frame overflowed max_frame_bytes: the connection must be closed."""

    def unbound_overflow(self, connection: DownlinkProtocol, limit: int) -> None:
        """More than `limit` bytes arrived before the connection bound: it must be closed."""

    def frame_failed(self, connection: DownlinkProtocol, failure: Failure) -> None:
        """Handling one frame raised: logged and counted, the connection goes on."""

    def connection_lost(self, connection: DownlinkProtocol, reason: Failure) -> None:
        """The connection is gone."""


class DownlinkProtocol(Protocol):
    """One lot's TCP connection: turns bytes into envelopes for the handler, and frames into bytes.

    `park`, `token`, `bound_at`, `binding`, `queued` and `close_reason` belong to
    the handler, which keeps its per-connection state here so that a connection
    is one object. Until `park` is set, the bytes received are counted and
    capped at `max_unbound_bytes` (CONTRACT §4): past the cap the handler is
    told before the bytes are decoded, so an unbound peer cannot make the
    gateway decode or hold more than that.
    """

    __slots__ = (
        "_clock",
        "_decoder",
        "_handler",
        "_max_unbound",
        "_skipped",
        "binding",
        "bound_at",
        "close_reason",
        "closing",
        "last_read",
        "last_write",
        "opened",
        "park",
        "peer",
        "queued",
        "token",
        "unbound_bytes",
    )

    def __init__(
        self,
        handler: FrameHandler,
        clock: IReactorTime,
        max_frame_bytes: int,
        peer: str,
        max_unbound_bytes: int = 65536,
    ) -> None:
        self._handler = handler
        self._clock = clock
        self._decoder = FrameDecoder(max_frame_bytes)
        self._skipped = 0
        self._max_unbound = max_unbound_bytes
        self.unbound_bytes = 0
        self.peer = peer
        self.opened = self.last_read = self.last_write = clock.seconds()
        self.park: str | None = None
        self.token = ""
        self.bound_at: float | None = None
        self.binding = False
        self.queued: list[Request | Reply | EnvelopeError] | None = None
        self.close_reason = ""
        self.closing = False

    def connectionMade(self) -> None:
        self.opened = self.last_read = self.last_write = self._clock.seconds()
        self._handler.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        if self.closing:
            return
        self.last_read = self._clock.seconds()
        if self.park is None:
            self.unbound_bytes += len(data)
            if self.unbound_bytes > self._max_unbound:
                self._handler.unbound_overflow(self, self._max_unbound)
                return
        decoder = self._decoder
        events = decoder.feed(data)
        skipped = decoder.skipped_bytes
        if skipped != self._skipped:
            self._handler.garbage_received(self, skipped - self._skipped)
            self._skipped = skipped
        for event in events:
            if self.closing:
                return
            if isinstance(event, FrameTooLarge):
                self._handler.too_large(self, event)
                return
            try:
                self.frame_received(event)
            except Exception:
                self._handler.frame_failed(self, Failure())

    def frame_received(self, payload: bytes) -> None:
        """Parse one payload and hand it to the handler."""
        try:
            message = parse_frame(payload)
        except EnvelopeError as error:
            self._handler.malformed_received(self, error)
            return
        if isinstance(message, Reply):
            self._handler.reply_received(self, message)
        else:
            self._handler.request_received(self, message)

    def send(self, frame: bytes) -> None:
        """Write one encoded frame."""
        if self.transport is not None and not self.closing:
            self.last_write = self._clock.seconds()
            self.transport.write(frame)

    def close(self, reason: str) -> None:
        """Close the connection (after what was written), remembering why."""
        if self.closing:
            return
        self.closing = True
        self.close_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.closing = True
        self._handler.connection_lost(self, reason)


class DownlinkFactory(ServerFactory):
    """Builds a `DownlinkProtocol` per accepted connection, all reporting to one handler."""

    noisy = False

    def __init__(
        self, handler: FrameHandler, clock: IReactorTime, max_frame_bytes: int, max_unbound_bytes: int = 65536
    ) -> None:
        self.handler = handler
        self.clock = clock
        self.max_frame_bytes = max_frame_bytes
        self.max_unbound_bytes = max_unbound_bytes

    def buildProtocol(self, addr: IAddress | None) -> DownlinkProtocol:
        peer = describe(addr) if addr is not None else "unknown"
        return DownlinkProtocol(self.handler, self.clock, self.max_frame_bytes, peer, self.max_unbound_bytes)

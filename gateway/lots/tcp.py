"""The TCP downlink's protocol and factory (B.3): bytes to frames to envelopes, and back.

Nothing here decides anything. `DownlinkProtocol` feeds bytes to a
`FrameDecoder`, parses each payload into a `Request` or a `Reply` and hands it
to a `FrameHandler` (the `Downlinks` object), which answers by calling `send`
and `close`. A connection costs one slotted object and its decoder: no timers,
since the handler sweeps all connections' idle timestamps at once.
"""

from __future__ import annotations

from typing import Protocol as TypingProtocol

from twisted.internet.interfaces import IAddress, IReactorTime
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.logs import describe
from gateway.lots.connections import Bind
from gateway.protocol.envelope import EnvelopeError, Reply, Request, parse_frame
from gateway.protocol.framing import FrameDecoder, FrameTooLarge

log = Logger()

UNBOUND, BINDING, BOUND, CLOSING = Bind.UNBOUND, Bind.BINDING, Bind.BOUND, Bind.CLOSING


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

    `park`, `token`, `bound_at`, `phase` (its `Bind`), `queued` and `close_reason`
    belong to the handler, which keeps its per-connection state here so that a connection
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
        "bound_at",
        "close_reason",
        "last_read",
        "last_write",
        "opened",
        "park",
        "peer",
        "phase",
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
        # The bind lifecycle (gateway.lots.connections.Bind); the handler moves it on.
        self.phase: Bind = UNBOUND
        # The frames that arrived while BINDING, handled once the login is decided.
        self.queued: list[Request | Reply | EnvelopeError] | None = None
        self.close_reason = ""

    def connectionMade(self) -> None:
        self.opened = self.last_read = self.last_write = self._clock.seconds()
        self._handler.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        if self.phase is CLOSING:
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
            if self.phase is CLOSING:
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

    def settle(self) -> None:
        """A login is decided: BINDING gives way to BOUND or UNBOUND, by whether the connection has a lot."""
        if self.phase is BINDING:
            self.phase = UNBOUND if self.park is None else BOUND

    def send(self, frame: bytes) -> None:
        """Write one encoded frame."""
        if self.transport is not None and self.phase is not CLOSING:
            self.last_write = self._clock.seconds()
            self.transport.write(frame)

    def close(self, reason: str) -> None:
        """Close the connection (after what was written), remembering why."""
        if self.phase is CLOSING:
            return
        self.phase = CLOSING
        self.close_reason = reason
        if self.transport is not None:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.phase = CLOSING
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

"""A lot's TCP downlink (B.3): the connection to the gateway, kept up.

`DownlinkClient` binds by `heartbeat` with the uplink's token (or by `login`),
sends heartbeats, answers every ACK with a REPLY signed with the ACK's token,
and reconnects with exponential backoff when the connection fails or is lost
(or, with `read_idle`, when the server has said nothing for that long). What a
lot replies is not decided here: the `answer` function passed in returns a
`DownlinkReply`. Frames are read with `gateway.protocol.envelope.parse_frame`.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from attrs import Factory, define, frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory as ProtocolFactory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.lotclient.credentials import LotCredentials
from gateway.protocol.envelope import (
    EnvelopeError,
    Reply,
    Request,
    as_text,
    new_opr_prefix,
    parse_frame,
    request_text,
    response_text,
)
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import signature_matches

__all__ = [
    "AnswerFunction",
    "Backoff",
    "DownlinkClient",
    "DownlinkCounters",
    "DownlinkReply",
    "LotDownlinkProtocol",
]

log = Logger()

OK = Result.OK.code
TOKEN_INVALID = Result.TOKEN_INVALID.code


@frozen
class Backoff:
    """Delays between reconnection attempts: `initial` times `factor` per failure, at most `maximum`.

    With `jitter` j, each delay is drawn between (1 - j) and 1 times that, so
    hundreds of lots cut off together do not come back in the same instant.
    """

    initial: float = 1.0
    factor: float = 2.0
    maximum: float = 60.0
    jitter: float = 0.0

    def __attrs_post_init__(self) -> None:
        if self.initial < 0 or self.factor < 1 or self.maximum < self.initial or not 0 <= self.jitter <= 1:
            raise ValueError(f"not a usable backoff: {self!r}")

    def delay(self, failures: int, rng: random.Random | None = None) -> float:
        """The wait before the next attempt after `failures` failures in a row (0: after a lost link)."""
        base = min(self.maximum, self.initial * self.factor ** min(failures, 64))
        if self.jitter and rng is not None:
            base *= 1 - self.jitter * rng.random()
        return base


@frozen
class DownlinkReply:
    """What a lot answers to one ACK: a result code, a message and the reply's `data`."""

    result_code: str = OK
    result_message: str = Result.OK.text
    data: object = Factory(dict)

    @classmethod
    def of(cls, result: Result, detail: str = "", data: object = None) -> DownlinkReply:
        """A reply with one of the standard's results."""
        return cls(result.code, result.message(detail), {} if data is None else data)


# Returns the REPLY to send, a Deferred of it, or None to send none (a silent lot).
AnswerFunction = Callable[[Request], "DownlinkReply | Deferred[DownlinkReply] | None"]


@define
class DownlinkCounters:
    """What one downlink client has done since it started."""

    connects: int = 0
    connect_failures: int = 0
    binds: int = 0
    reconnects: int = 0
    bind_failures: int = 0
    lost: int = 0
    heartbeats_sent: int = 0
    heartbeats_answered: int = 0
    acks: int = 0
    replies: int = 0
    heartbeat_replies: int = 0
    bad_signatures: int = 0
    bad_frames: int = 0
    read_idle_closes: int = 0


class LotDownlinkProtocol(TwistedProtocol):
    """Bytes to frames to the client, and frames to bytes: nothing is decided here."""

    def __init__(self, client: DownlinkClient, max_frame_bytes: int) -> None:
        self._client = client
        self._decoder = FrameDecoder(max_frame_bytes)

    def connectionMade(self) -> None:
        self._client.connection_made(self)

    def dataReceived(self, data: bytes) -> None:
        self._client.data_received(self)
        for event in self._decoder.feed(data):
            if isinstance(event, FrameTooLarge):
                self._client.counters.bad_frames += 1
                self.close()
                return
            self._client.frame_received(self, event)

    def send(self, frame: bytes) -> None:
        """Write one encoded frame."""
        if self.transport is not None:
            self.transport.write(frame)

    def close(self) -> None:
        """Close the connection after what was written."""
        if self.transport is not None:
            self.transport.loseConnection()

    def abort(self) -> None:
        """Close the connection at once, dropping what is still buffered (the peer is gone)."""
        if self.transport is None:
            return
        abort = getattr(self.transport, "abortConnection", None)  # ITCPTransport's; not ITransport's
        if abort is not None:
            abort()
        else:
            self.transport.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._client.connection_lost(self, reason)


class _DownlinkFactory(ProtocolFactory):
    noisy = False

    def __init__(self, client: DownlinkClient, max_frame_bytes: int) -> None:
        self._client = client
        self._max_frame_bytes = max_frame_bytes

    def buildProtocol(self, addr: IAddress | None) -> LotDownlinkProtocol:
        return LotDownlinkProtocol(self._client, self._max_frame_bytes)


class DownlinkClient:
    """One lot's downlink connection, kept up: bind, heartbeats, REPLYs, reconnection with backoff.

    `bind="heartbeat"` binds with the token `token()` returns (the uplink's, so
    HTTP and TCP share one login; an empty or refused token calls
    `on_token_invalid`, whose caller logs in again before the next attempt);
    `bind="login"` logs in on the connection itself, which replaces any other
    token of the account (B.3.5). `heartbeat_interval` is at most 60 s by the
    standard (B.4.8, 5.1.8). `on_frame`, if given, sees each frame's payload as it
    arrived (still escaped) before it is parsed: a conformance kit checks them.
    `read_idle` (seconds, 0 = off) closes a connection on which nothing at all
    has arrived for that long, and so reconnects as after any lost link: a
    server that vanished without closing (a NAT or firewall dropping the flow)
    is otherwise only noticed when the kernel gives up, many minutes later.
    """

    def __init__(
        self,
        *,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        credentials: LotCredentials,
        answer: AnswerFunction,
        token: Callable[[], str] | None = None,
        bind: str = "heartbeat",
        heartbeat_interval: float = 30.0,
        bind_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
        rng: random.Random | None = None,
        on_token_invalid: Callable[[], object] | None = None,
        max_frame_bytes: int = 2**20,
        opr_prefix: str | None = None,
        on_frame: Callable[[bytes], object] | None = None,
        read_idle: float = 0.0,
    ) -> None:
        if bind not in ("heartbeat", "login"):
            raise ValueError(f"bind must be 'heartbeat' or 'login', not {bind!r}")
        if bind == "heartbeat" and token is None:
            raise ValueError("binding by heartbeat needs a token source")
        if heartbeat_interval <= 0:
            raise ValueError("heartbeat_interval must be positive")
        if read_idle < 0:
            raise ValueError("read_idle must be 0 (off) or positive")
        self.credentials = credentials
        self.counters = DownlinkCounters()
        self.token = ""
        self.bound_listeners: list[Callable[[], None]] = []
        self._endpoint = endpoint
        self._clock = clock
        self._answer = answer
        self._token_source = token
        self._bind_by = bind
        self._heartbeat_interval = heartbeat_interval
        self._bind_timeout = bind_timeout
        self._backoff = backoff
        self._rng = rng
        self._on_token_invalid = on_token_invalid
        self._max_frame_bytes = max_frame_bytes
        self._prefix = opr_prefix if opr_prefix is not None else new_opr_prefix()
        self._on_frame = on_frame
        self._read_idle = read_idle
        self._count = 0
        self._running = False
        self._failures = 0
        self._attempt: Deferred[Any] | None = None
        self._protocol: LotDownlinkProtocol | None = None
        self._bound = False
        self._bind_opr = ""
        self._bind_timer: IDelayedCall | None = None
        self._retry_timer: IDelayedCall | None = None
        self._read_timer: IDelayedCall | None = None
        self._heartbeats = LoopingCall(self.send_heartbeat)
        self._heartbeats.clock = clock
        self._bound_waiters: list[Deferred[None]] = []
        self._stop_waiters: list[Deferred[None]] = []

    @property
    def bound(self) -> bool:
        """Whether the connection is up and bound to the lot now."""
        return self._bound

    def _new_opr(self) -> str:
        self._count += 1
        return f"{self._prefix}-d{self._count}"

    # --- running ---------------------------------------------------------

    def start(self) -> None:
        """Connect, and keep connecting until `stop`."""
        if self._running:
            return
        self._running = True
        self._connect()

    def stop(self) -> Deferred[None]:
        """Stop reconnecting and close the connection; fires once it is closed."""
        self._running = False
        for timer in (self._retry_timer, self._bind_timer, self._read_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._retry_timer = self._bind_timer = self._read_timer = None
        if self._heartbeats.running:
            self._heartbeats.stop()
        if self._attempt is not None:
            self._attempt.cancel()
        if self._protocol is None:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._stop_waiters.append(waiter)
        self._protocol.close()
        return waiter

    def when_bound(self) -> Deferred[None]:
        """Fires when the connection is bound (at once if it is now)."""
        if self._bound:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._bound_waiters.append(waiter)
        return waiter

    def _connect(self) -> None:
        self._retry_timer = None
        attempt: Deferred[Any] = self._endpoint.connect(_DownlinkFactory(self, self._max_frame_bytes))
        self._attempt = attempt

        def done(_: object) -> None:
            self._attempt = None

        def failed(failure: Failure) -> None:
            self._attempt = None
            self.counters.connect_failures += 1
            self._failed()

        attempt.addCallbacks(done, failed)

    def _failed(self) -> None:
        self._failures += 1
        self._reconnect_later()

    def connect_now(self) -> None:
        """Connect at once, unless stopped, connected or connecting: what it waited for has come.

        A link that had no token waits out its backoff; a fresh login calls
        this so that it binds without that wait. The backoff starts over.
        """
        if not self._running or self._protocol is not None or self._attempt is not None:
            return
        if self._retry_timer is not None and self._retry_timer.active():
            self._retry_timer.cancel()
        self._retry_timer = None
        self._failures = 0
        self._connect()

    def _reconnect_later(self) -> None:
        if not self._running or self._retry_timer is not None:
            return
        delay = self._backoff.delay(self._failures, self._rng)
        self._retry_timer = self._clock.callLater(delay, self._connect)

    # --- the connection ------------------------------------------------

    def connection_made(self, protocol: LotDownlinkProtocol) -> None:
        """A connection is up: send the bind frame."""
        self.counters.connects += 1
        self._protocol = protocol
        self.data_received(protocol)
        opr = self._new_opr()
        secret = self.credentials.secret
        if self._bind_by == "login":
            data = {"parkUserName": self.credentials.username, "parkUserPwd": self.credentials.password}
            text = request_text("login", opr, "", secret, data)
        else:
            assert self._token_source is not None
            token = self._token_source()
            if not token:
                self._token_invalid()
                protocol.close()
                return
            self.token = token
            text = request_text("heartbeat", opr, token, secret, {})
        self._bind_opr = opr
        self._bind_timer = self._clock.callLater(self._bind_timeout, self._bind_timed_out, protocol)
        protocol.send(encode_json_frame(text))

    def data_received(self, protocol: LotDownlinkProtocol) -> None:
        """Something arrived on `protocol` (or it just opened): the read-idle timer starts again."""
        if self._read_idle <= 0 or protocol is not self._protocol:
            return
        timer = self._read_timer
        if timer is not None and timer.active():
            timer.reset(self._read_idle)
        else:
            self._read_timer = self._clock.callLater(self._read_idle, self._read_idled, protocol)

    def _read_idled(self, protocol: LotDownlinkProtocol) -> None:
        self._read_timer = None
        if protocol is not self._protocol:
            return
        self.counters.read_idle_closes += 1
        log.info(
            "lot {park}: nothing from the server in {seconds:g} s; closing the downlink",
            park=self.credentials.park_code,
            seconds=self._read_idle,
        )
        protocol.abort()

    def _bind_timed_out(self, protocol: LotDownlinkProtocol) -> None:
        self._bind_timer = None
        self.counters.bind_failures += 1
        protocol.close()

    def connection_lost(self, protocol: LotDownlinkProtocol, reason: Failure) -> None:
        """The connection is gone: stop heartbeats, reconnect (unless stopping)."""
        if protocol is not self._protocol:
            return
        self._protocol = None
        if self._bind_timer is not None and self._bind_timer.active():
            self._bind_timer.cancel()
        self._bind_timer = None
        if self._read_timer is not None and self._read_timer.active():
            self._read_timer.cancel()
        self._read_timer = None
        if self._heartbeats.running:
            self._heartbeats.stop()
        was_bound, self._bound = self._bound, False
        waiters, self._stop_waiters = self._stop_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        if not self._running:
            return
        if was_bound:
            self.counters.lost += 1
            self._failures = 0
            self._reconnect_later()
        else:
            self._failed()

    def frame_received(self, protocol: LotDownlinkProtocol, payload: bytes) -> None:
        """One frame from the gateway: the answer to a request of ours, or an ACK to reply to."""
        if self._on_frame is not None:
            self._on_frame(payload)
        try:
            message = parse_frame(payload)
        except EnvelopeError:
            self.counters.bad_frames += 1
            return
        if isinstance(message, Reply):
            self._answered(protocol, message)
            return
        self._acked(protocol, message)

    def _answered(self, protocol: LotDownlinkProtocol, response: Reply) -> None:
        if response.opr and response.opr == self._bind_opr:
            self._bind_opr = ""
            if self._bind_timer is not None and self._bind_timer.active():
                self._bind_timer.cancel()
            self._bind_timer = None
            if response.ok:
                if self._bind_by == "login" and isinstance(response.data, dict):
                    self.token = as_text(response.data.get("token"))
                self._bound_now()
            else:
                self.counters.bind_failures += 1
                if response.result_code == TOKEN_INVALID:
                    self._token_invalid()
                protocol.close()
        elif response.code == "heartbeat":
            self.counters.heartbeats_answered += 1
            if response.result_code == TOKEN_INVALID:
                self._token_invalid()

    def _bound_now(self) -> None:
        self._bound = True
        self._failures = 0
        self.counters.binds += 1
        if self.counters.binds > 1:
            self.counters.reconnects += 1
        self._heartbeats.start(self._heartbeat_interval, now=False)
        waiters, self._bound_waiters = self._bound_waiters, []
        for waiter in waiters:
            waiter.callback(None)
        for listener in self.bound_listeners:
            try:
                listener()
            except Exception:
                log.failure("a bound listener of lot {park} failed", park=self.credentials.park_code)

    def _token_invalid(self) -> None:
        if self._on_token_invalid is not None:
            try:
                self._on_token_invalid()
            except Exception:
                log.failure("on_token_invalid of lot {park} failed", park=self.credentials.park_code)

    def send_heartbeat(self) -> None:
        """Send one heartbeat request on the bound connection (the loop calls this every interval)."""
        if self._protocol is None or not self._bound:
            return
        if self._token_source is not None and self._bind_by == "heartbeat":
            # After a new HTTP login the heartbeat carries the new token: the gateway adopts it.
            self.token = self._token_source() or self.token
        self.counters.heartbeats_sent += 1
        text = request_text("heartbeat", self._new_opr(), self.token, self.credentials.secret, {})
        self._protocol.send(encode_json_frame(text))

    def _acked(self, protocol: LotDownlinkProtocol, request: Request) -> None:
        self.counters.acks += 1
        secret = self.credentials.secret
        reply: Deferred[Any]
        if not signature_matches(request.signature, request.data_text, request.data, request.token, secret):
            self.counters.bad_signatures += 1
            reply = succeed(DownlinkReply.of(Result.BAD_SIGNATURE, "signature: does not match data"))
        elif request.code == "heartbeat":
            reply = succeed(DownlinkReply())
        else:
            reply = maybeDeferred(self._answer, request)

        def failed(failure: Failure) -> DownlinkReply:
            park = self.credentials.park_code
            log.failure("lot {park} failed to answer {code}", failure, park=park, code=request.code)
            return DownlinkReply.of(Result.FAILED, "the lot failed to answer")

        def send(answer: DownlinkReply | None) -> None:
            if answer is None or self._protocol is not protocol:
                return
            if request.code == "heartbeat":
                self.counters.heartbeat_replies += 1
            else:
                self.counters.replies += 1
            text = response_text(
                request.code,
                request.opr,
                answer.result_code,
                answer.result_message,
                answer.data,
                request.token,
                secret,
            )
            protocol.send(encode_json_frame(text))

        reply.addErrback(failed).addCallback(send)

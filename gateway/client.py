"""A lot system's side of T/CPMI 002-2018: the HTTP uplink and the TCP downlink, reusable.

`UplinkClient` logs in (B.4.1), signs each request over its compact `data` with
the token and the lot's secret (B.3.7), gives every request its own oprNum and
lets a caller keep one oprNum across the retries of one message (B.2.3.6). On
`9000` it logs in again and sends the same request once more.

`DownlinkClient` keeps a lot's TCP connection to the gateway (B.3): it binds by
`heartbeat` with the uplink's token (or by `login`), sends heartbeats, answers
every ACK with a REPLY signed with the ACK's token, and reconnects with
exponential backoff when the connection fails or is lost (or, with `read_idle`,
when the server has said nothing for that long). What a lot replies is not
decided here: the `answer` function passed in returns a `DownlinkReply`.

The HTTP client, the clock and the TCP endpoint are passed in, so the same
classes run a simulator on a real reactor, a test on `Clock`/`StubTreq`/iosim,
and a conformance kit against any gateway.
"""

from __future__ import annotations

import csv
import json
import random
import uuid
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlencode

import treq
from attrs import Factory, define, frozen
from twisted.internet.defer import Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IAddress, IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.protocol import Factory as ProtocolFactory
from twisted.internet.protocol import Protocol as TwistedProtocol
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from gateway.protocol.envelope import EnvelopeError, Request, parse_request
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign, signature_matches

__all__ = [
    "AnswerFunction",
    "Backoff",
    "CredentialsError",
    "DownlinkClient",
    "DownlinkCounters",
    "DownlinkReply",
    "HTTPRequester",
    "LotCredentials",
    "LotDownlinkProtocol",
    "Response",
    "UplinkClient",
    "UplinkError",
    "envelope_text",
    "parse_response",
    "post_param",
    "read_credentials",
    "reply_text",
    "request_text",
]

log = Logger()

FORM_TYPE = "application/x-www-form-urlencoded"
OK = Result.OK.code
TOKEN_INVALID = Result.TOKEN_INVALID.code


# --- credentials -----------------------------------------------------------


class CredentialsError(ValueError):
    """The credentials file cannot be used; the message names the line."""


@frozen
class LotCredentials:
    """One lot's account at the gateway: its park, user name, password and key-pool secret."""

    park_code: str
    username: str
    password: str
    secret: str = ""


def read_credentials(path: str) -> list[LotCredentials]:
    """The lots of a CSV file of `park_code,username,password[,secret]`, in file order.

    A first row naming `park_code` is a header and skipped, as are blank lines
    and lines starting with `#`. Raises CredentialsError (or OSError) otherwise.
    """
    lots: list[LotCredentials] = []
    with open(path, newline="", encoding="utf-8-sig") as stream:
        for number, row in enumerate(csv.reader(stream), start=1):
            cells = [cell.strip() for cell in row]
            if not cells or not any(cells) or cells[0].startswith("#"):
                continue
            if not lots and cells[0].lower() == "park_code":
                continue
            if len(cells) not in (3, 4) or not all(cells[:3]):
                raise CredentialsError(
                    f"{path}:{number}: expected park_code,username,password[,secret], got {len(cells)} cells"
                )
            lots.append(LotCredentials(*cells))
    if not lots:
        raise CredentialsError(f"{path}: no lots")
    return lots


# --- envelopes --------------------------------------------------------------


class UplinkError(Exception):
    """An exchange that failed below the protocol: not HTTP 200, not a response envelope."""


@frozen
class Response:
    """A response envelope (B.3) from the gateway, with the text it came in."""

    code: str
    opr: str
    result_code: str
    result_message: str
    signature: str
    data: object
    text: str

    @property
    def ok(self) -> bool:
        """Whether the result code is 0000."""
        return self.result_code == OK

    def signed_by(self, token: str, secret: str) -> bool:
        """Whether `signature` signs `data` with `token` and `secret` (B.3.7)."""
        return signature_matches(self.signature, compact(self.data), self.data, token, secret)


def _text(value: object) -> str:
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


def _response(message: dict[str, Any], text: str) -> Response:
    return Response(
        code=_text(message.get("code")),
        opr=_text(message.get("oprNum")),
        result_code=_text(message.get("resultCode")),
        result_message=_text(message.get("resultMessage")),
        signature=_text(message.get("signature")),
        data=message.get("data"),
        text=text,
    )


def parse_response(text: str) -> Response:
    """A response envelope, or UplinkError saying why the text is none."""
    try:
        message = json.loads(text)
    except ValueError as error:
        raise UplinkError(f"the answer is not JSON: {error}") from None
    if not isinstance(message, dict) or "resultCode" not in message:
        raise UplinkError(f"the answer is not a response envelope: {text[:100]!r}")
    return _response(message, text)


def envelope_text(code: str, opr: str, token: str, secret: str, data_text: str) -> str:
    """A request envelope (B.2) carrying `data_text` as written, signed over it (B.3.7)."""
    return '{"token":%s,"code":%s,"oprNum":%s,"signature":"%s","data":%s}' % (
        compact(token),
        compact(code),
        compact(opr),
        sign(data_text, token, secret),
        data_text,
    )


def request_text(code: str, opr: str, token: str, secret: str, data: object) -> str:
    """A request envelope (B.2) as JSON text, signed over the compact `data` it carries."""
    return envelope_text(code, opr, token, secret, compact(data))


def reply_text(code: str, opr: str, token: str, secret: str, reply: DownlinkReply) -> str:
    """A REPLY (a response envelope, B.3) to the ACK `opr`, signed over its compact `data`."""
    data_text = compact(reply.data)
    return '{"code":%s,"oprNum":%s,"resultCode":%s,"resultMessage":%s,"signature":"%s","data":%s}' % (
        compact(code),
        compact(opr),
        compact(reply.result_code),
        compact(reply.result_message),
        sign(data_text, token, secret),
        data_text,
    )


# --- the HTTP uplink --------------------------------------------------------


class HTTPRequester(Protocol):
    """The part of `treq.client.HTTPClient` (or `treq.testing.StubTreq`) the uplink uses."""

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        """Send a request; fires with its `IResponse` once the headers are in."""


def post_param(http: HTTPRequester, url: str, text: str) -> Deferred[Any]:
    """POST `text` to `url` as the `param` of a form (B.2); fires with the response, headers in."""
    body = urlencode({"param": text}).encode("ascii")
    return http.request("POST", url, headers=Headers({"Content-Type": [FORM_TYPE]}), data=body)


def _new_prefix() -> str:
    return uuid.uuid4().hex[:12]


class UplinkClient:
    """One lot's HTTP uplink: login, signed requests, re-login on 9000.

    `url` is where requests are POSTed as `param={JSON}` (the gateway's `/uplink`).
    `send` fails with UplinkError, a network error or a TimeoutError (after
    `timeout` seconds on `clock`) when no response envelope came back.
    """

    def __init__(
        self,
        *,
        http: HTTPRequester,
        url: str,
        credentials: LotCredentials,
        clock: IReactorTime,
        timeout: float = 30.0,
        relogin: bool = True,
        opr_prefix: str | None = None,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.token = ""
        self.park_code = credentials.park_code
        self.logins = 0
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._relogin = relogin
        self._prefix = opr_prefix if opr_prefix is not None else _new_prefix()
        self._count = 0
        self._login_waiters: list[Deferred[Response]] | None = None

    def new_opr(self) -> str:
        """A new oprNum, unique to this client (a random prefix and a counter, at most 36 characters)."""
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def post(self, code: str, data: object, *, token: str, opr: str) -> Deferred[Response]:
        """POST one request envelope as it is: no login, no retry."""
        return self.post_text(request_text(code, opr, token, self.credentials.secret, data))

    def post_text(self, text: str) -> Deferred[Response]:
        """POST `text` as the `param` of a form, whatever it holds (a conformance kit sends broken ones)."""
        sent = post_param(self._http, self.url, text)
        sent.addCallback(self._read)
        sent.addTimeout(self._timeout, self._clock)
        return sent

    def _read(self, response: Any) -> Deferred[Response]:
        status = int(response.code)

        def parsed(body: bytes) -> Response:
            if status != 200:
                raise UplinkError(f"HTTP {status}: {body[:100]!r}")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise UplinkError("the answer is not UTF-8") from None
            return parse_response(text)

        content: Deferred[bytes] = treq.content(response)
        return content.addCallback(parsed)

    def login(self) -> Deferred[Response]:
        """Log in (one login at a time: callers during one get its answer); keeps the token on 0000."""
        if self._login_waiters is not None:
            waiter: Deferred[Response] = Deferred()
            self._login_waiters.append(waiter)
            return waiter
        self._login_waiters = []
        data = {"parkUserName": self.credentials.username, "parkUserPwd": self.credentials.password}
        answered = self.post("login", data, token="", opr=self.new_opr())

        def logged_in(response: Response) -> Response:
            if response.ok and isinstance(response.data, dict):
                self.token = _text(response.data.get("token"))
                self.park_code = _text(response.data.get("parkCode")) or self.park_code
                self.logins += 1
            return response

        def notify(result: Response | Failure) -> Response | Failure:
            waiters, self._login_waiters = self._login_waiters or [], None
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return answered.addCallback(logged_in).addBoth(notify)

    def send(self, code: str, data: object, opr: str | None = None) -> Deferred[Response]:
        """Send `data` as `code` with `opr` (a new oprNum if None), logging in first if need be.

        A `9000` answer (token replaced or expired) is followed by a login and the
        same request, same oprNum, once more. A refused login's answer is returned.
        """
        return Deferred.fromCoroutine(self._send(code, data, opr or self.new_opr()))

    async def _send(self, code: str, data: object, opr: str) -> Response:
        if not self.token and self._relogin:
            login = await self.login()
            if not login.ok:
                return login
        token = self.token
        response = await self.post(code, data, token=token, opr=opr)
        if response.result_code == TOKEN_INVALID and self._relogin:
            if self.token == token:
                login = await self.login()
                if not login.ok:
                    return login
            response = await self.post(code, data, token=self.token, opr=opr)
        return response

    def heartbeat(self) -> Deferred[Response]:
        """An HTTP heartbeat (B.4.8): its answer carries the gateway's time."""
        return self.send("heartbeat", {})


# --- the TCP downlink -------------------------------------------------------


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
        self._prefix = opr_prefix if opr_prefix is not None else _new_prefix()
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
            text = payload.decode("utf-8")
            message = json.loads(text)
        except ValueError:  # UnicodeDecodeError too
            self.counters.bad_frames += 1
            return
        if not isinstance(message, dict):
            self.counters.bad_frames += 1
            return
        if "resultCode" in message:
            self._answered(protocol, _response(message, text))
            return
        try:
            request = parse_request(text)
        except EnvelopeError:
            self.counters.bad_frames += 1
            return
        self._acked(protocol, request)

    def _answered(self, protocol: LotDownlinkProtocol, response: Response) -> None:
        if response.opr and response.opr == self._bind_opr:
            self._bind_opr = ""
            if self._bind_timer is not None and self._bind_timer.active():
                self._bind_timer.cancel()
            self._bind_timer = None
            if response.ok:
                if self._bind_by == "login" and isinstance(response.data, dict):
                    self.token = _text(response.data.get("token"))
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
            text = reply_text(request.code, request.opr, request.token, secret, answer)
            protocol.send(encode_json_frame(text))

        reply.addErrback(failed).addCallback(send)

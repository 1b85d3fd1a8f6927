"""The HTTP uplink (B.2.1): `POST /uplink` and `POST /uplink/{code}`, served on llhttp.

`UplinkChannel` is the lot-facing port's HTTP/1.1 channel: the request head
and body are parsed by llhttp (Node.js's parser, through MagicStack's
`httptools`, as uvicorn does), and the answer is written as one buffer.
twisted.web's channel and request objects cost the reactor about six times
what the uplink's own work costs (docs/benchmarks.md, "Where the rest goes");
the command API stays on twisted.web (`gateway.lots.httpbounds.GuardedSite`).

`UplinkEndpoint` turns a request into the request text and file parts, and
the handler's answer into an HTTP response. The body may be a form with
`param=`, a multipart form with a `param` field (and image files), or raw
JSON (`gateway.lots.bodies` decodes it). A body over the `BodyPool`'s
`inline_bytes` is decoded and parsed by a worker process instead, so that no
body of some MiB holds up the reactor (issue 19).

The port faces the internet, so the channel keeps what twisted.web's did and
the bounds of CONTRACT §4 (`HttpLimits`, as the command API's channel keeps
them): the head within `header_timeout` of the connection or the last
answer, the body at `min_body_rate` once its first `header_timeout` seconds
are over, no body over `max_body_bytes` (413 before it is read, or as soon
as a chunked one passes it), and connections capped by peer and in all. And
what llhttp leaves to its caller: at most `MAX_HEADERS` header fields and
`MAX_HEAD_BYTES` of head (431), `MAX_URL_BYTES` of URL (414), 400 for what
llhttp cannot parse; one request handled at a time, at most `MAX_PIPELINED`
read ahead of their answers and `PIPELINE_BUFFER` bytes held before reading
pauses (as it does while the peer does not read its answers).
"""

from __future__ import annotations

import io
import marshal
import tempfile
from collections import deque
from collections.abc import Callable
from email.utils import formatdate
from typing import IO, Any
from urllib.parse import parse_qs, unquote

from httptools import HttpParserCallbackError, HttpParserError, HttpParserUpgrade, HttpRequestParser
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.limits import ConnectionGuard, IGuardsItself, peer_host
from gateway.logs import ECHO_CHARS, describe, lot_rejected
from gateway.lots.answers import Answer
from gateway.lots.bodies import BodyError, Outcome, body_text, form_unquote, parse_form
from gateway.lots.bodypool import BodyPool
from gateway.lots.httpbounds import BODY_WINDOW, IN_GRACE, NO_BODY, HttpLimits
from gateway.lots.login import STANDARD
from gateway.lots.uplink import FilePart, UplinkHandler
from gateway.protocol.envelope import EnvelopeError, build_response
from gateway.protocol.envelope import Request as Envelope
from gateway.protocol.results import Result

__all__ = [
    "MAX_HEADERS",
    "MAX_HEAD_BYTES",
    "MAX_PIPELINED",
    "MAX_URL_BYTES",
    "PIPELINE_BUFFER",
    "BodyError",
    "UplinkChannel",
    "UplinkEndpoint",
    "UplinkRequest",
    "UplinkSite",
    "form_unquote",
    "parse_form",
    "request_text",
]

JSON_TYPE = b"application/json; charset=utf-8"
TEXT_TYPE = b"text/plain; charset=utf-8"
log = Logger()

MAX_HEAD_BYTES = 16384
"""Bytes of a request's URL, header (and trailer) names and values: twisted.web's `totalHeadersSize`.

A field still unfinished is counted by the reads that bring it, after the one it began in."""

MAX_HEADERS = 100
"""Header fields a request may have (twisted.web allowed 500; a lot sends a handful)."""

MAX_URL_BYTES = 8192
"""Bytes of a request's URL (twisted.web allowed a 16 KiB request line)."""

MAX_PIPELINED = 16
"""Requests read ahead of their answers; past them, those are answered and the connection closed."""

PIPELINE_BUFFER = 16384
"""Bytes held unparsed while a request is handled; past them reading pauses (twisted.web's own figure)."""

IN_MEMORY_BODY = 100_000
"""A body declared larger, or chunked and grown larger, is spooled to a temporary file (as twisted.web)."""


_REASONS = {
    200: b"OK",
    400: b"Bad Request",
    404: b"Not Found",
    405: b"Method Not Allowed",
    413: b"Request Entity Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    500: b"Internal Server Error",
}


def _refusal(status: int, text: bytes) -> bytes:
    """A whole answer that closes the connection: what the channel sends a request it will not handle."""
    return b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
        status,
        _REASONS[status],
        TEXT_TYPE,
        len(text),
        text,
    )


_BAD_REQUEST = _refusal(400, b"bad request\n")
_TOO_LARGE = _refusal(413, b"request body too large\n")
_URL_TOO_LONG = _refusal(414, b"request URL too long\n")
_HEAD_TOO_LARGE = _refusal(431, b"request head too large\n")
_FAULT = _refusal(500, b"internal error\n")
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


class _Stop(Exception):
    """Raised in a parser callback to stop llhttp where it is: nothing more of this connection is parsed."""


class UplinkRequest:
    """One request read by an `UplinkChannel`: its head, its body, and `respond` to answer it."""

    __slots__ = (
        "_body_left",
        "channel",
        "content",
        "expects_continue",
        "finished",
        "headers",
        "http10",
        "keep_alive",
        "method",
        "path",
        "query",
    )

    def __init__(self, channel: UplinkChannel) -> None:
        self.channel: UplinkChannel | None = channel
        """None once its connection has gone: an answer is then dropped."""
        self.method = b""
        self.path = b""
        self.query: bytes | None = None
        self.http10 = False
        self.keep_alive = True
        self.expects_continue = False
        self.headers: dict[bytes, bytes] = {}
        """By lower-case name; of a repeated field, the last (as twisted.web's `getHeader`)."""
        self.content: IO[bytes] = io.BytesIO()
        self.finished = False
        self._body_left: int | None = None

    def header(self, name: bytes) -> bytes | None:
        """The value of header `name` (lower case), or None."""
        return self.headers.get(name)

    def param(self) -> bytes | None:
        """The URL's `param` (some lots put the request text there), or None."""
        if not self.query:
            return None
        values = parse_qs(self.query, keep_blank_values=True).get(b"param")
        return values[0] if values else None

    def peer(self) -> IAddress | None:
        """The client's address (behind a PROXY-protocol balancer, the one its header named)."""
        channel = self.channel
        return None if channel is None or channel.transport is None else channel.transport.getPeer()

    def gone(self) -> bool:
        """Whether the client has gone (its connection lost) or the request has been answered."""
        return self.channel is None or self.finished

    def respond(self, status: int, body: bytes, content_type: bytes, headers: bytes = b"") -> None:
        """Answer with `body` (`headers`: whole lines); nothing if the client has gone or it is answered."""
        channel = self.channel
        if channel is not None and not self.finished:
            channel.respond(self, status, body, content_type, headers)


@implementer(IPushProducer)
class UplinkChannel(Protocol):
    """The uplink port's HTTP/1.1 connection: llhttp parses, the channel keeps the bounds and the order.

    Its one timer is a deadline, not an idle timer (bytes never restart it;
    issue 19: slowloris): `header_timeout` from the connection or the last
    answer for the next head, `header_timeout` again once a head announcing
    a body is in (the body's free start), then `BODY_WINDOW` again and again
    while each window brings `min_body_rate`; while a request is handled it
    is ignored, as twisted.web stops its own. A refusal stops the parser:
    nothing more is read into memory, and once the requests before it are
    answered the refusal is sent and the connection closed.
    """

    transport: Any

    def __init__(self, site: UplinkSite, peer: str) -> None:
        self.site = site
        self.peer: str | None = peer
        """The host it is counted under ("" until a proxied peer is known), None once released."""
        self._parser: HttpRequestParser | None = HttpRequestParser(self)
        self._received = 0
        # Outside a body: NO_BODY; in its first header_timeout seconds: IN_GRACE; after: the
        # bytes received (since the connection opened) when its rate was last checked.
        self._body_mark = NO_BODY
        self._timer: IDelayedCall | None = None
        self._queue: deque[UplinkRequest] = deque()
        """Requests read whole and not answered yet, in order; the first is with the endpoint."""
        self._parsing: UplinkRequest | None = None
        """The request whose head or body is being read."""
        self._in_head = False
        self._url = b""
        self._head_bytes = 0
        self._headers = 0
        # httptools gathers a header (or trailer) field across reads before it reports it:
        # whether it may be gathering one, the reads since, and how many times it began.
        self._gathering = False
        self._gathered = 0
        self._gatherings = 0
        self._held: list[bytes] = []
        self._held_bytes = 0
        self._handling = False
        self._pumping = False
        self._stopped = False
        """The parser takes nothing more: a refusal, a broken request, or enough read ahead."""
        self._final: bytes | None = None
        """The refusal to send once the requests before it are answered, then close."""
        self._write_blocked = False
        self._reading_paused = False
        self._over_cap = False
        self._closed = False

    @property
    def reading(self) -> UplinkRequest | None:
        """The request whose head or body is being read, if any."""
        return self._parsing

    # The connection -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        transport = self.transport
        if ITCPTransport.providedBy(transport):
            transport.setTcpNoDelay(True)
        # Told when the peer does not read its answers: reading stops until it does.
        transport.registerProducer(self, True)
        self._set_timer(self.site.limits.header_timeout)

    def dataReceived(self, data: bytes) -> None:
        self._received += len(data)
        if self.peer == "" and not self._place():
            return
        if self._stopped or self._closed:
            return  # refused: what was in flight still arrives, and is dropped
        if self._handling or self._queue:
            self._held.append(data)
            self._held_bytes += len(data)
            if self._held_bytes > PIPELINE_BUFFER:
                self._update_reading()
            return
        self._feed(data)
        self._pump()

    def peer_known(self) -> None:
        """The PROXY header has named the peer (`gateway.limits.ProxyHeaderFactory`): count it there now."""
        if self.peer == "":
            self._place()

    def _place(self) -> bool:
        """Count a proxied connection under its peer, whose address the PROXY header has given now."""
        if self._over_cap:
            return False
        host = self.site.guard.place(self.transport.getPeer())
        if host is None:
            self._over_cap = True
            self._closed = True
            self.transport.abortConnection()
            return False
        self.peer = host
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._closed = True
        self._cancel_timer()
        self.site.guard.release(self.peer)
        self.peer = None
        # Their answers, should they come, are dropped; a login waiting for its check is dropped too.
        for request in self._queue:
            request.channel = None
        if self._parsing is not None:
            self._parsing.channel = None
        self._queue.clear()
        self._parsing = None
        self._held = []
        # The parser holds the channel's methods: a cycle the collector would otherwise have to find.
        self._parser = None

    # Writes blocked (IPushProducer, registered with the transport) ---------------------------

    def pauseProducing(self) -> None:
        """The peer is not reading its answers: read nothing more from it until it does."""
        self._write_blocked = True
        self._update_reading()

    def resumeProducing(self) -> None:
        self._write_blocked = False
        self._update_reading()

    def stopProducing(self) -> None:
        """The connection is closing: nothing to stop."""

    def _update_reading(self) -> None:
        pause = self._write_blocked or self._held_bytes > PIPELINE_BUFFER
        if pause != self._reading_paused and not self._closed:
            self._reading_paused = pause
            if pause:
                self.transport.pauseProducing()
            else:
                self.transport.resumeProducing()

    # Parsing ------------------------------------------------------------------------------

    def _feed(self, data: bytes) -> None:
        parser = self._parser
        if parser is None:
            return
        gatherings = self._gatherings
        try:
            parser.feed_data(data)
        except HttpParserCallbackError as error:
            if not self._stopped:  # a fault of the channel's own, not a refusal
                log.failure("uplink channel failed", Failure(error.__context__ or error))
                self._refuse(_FAULT)
            return
        except (HttpParserError, HttpParserUpgrade):
            if not self._stopped:  # llhttp found the request malformed
                self._refuse(_BAD_REQUEST)
            return
        if self._gathering:
            # A head (or the trailer of a chunked body) still unfinished: what httptools holds
            # of it is counted by the reads after the one it began in, whatever llhttp skipped.
            if self._gatherings == gatherings:
                self._gathered += len(data)
                if self._gathered > MAX_HEAD_BYTES:
                    self._refuse(_HEAD_TOO_LARGE)
            else:
                self._gathered = 0

    def on_message_begin(self) -> None:
        if len(self._queue) >= MAX_PIPELINED:
            # Enough read ahead of their answers: those are answered, the last closing the connection.
            self._queue[-1].keep_alive = False
            self._stopped = True
            raise _Stop
        self._parsing = UplinkRequest(self)
        self._in_head = self._gathering = True
        self._gatherings += 1
        self._url = b""
        self._head_bytes = self._headers = 0

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._head_bytes += len(url)
        if len(self._url) > MAX_URL_BYTES:
            self._refuse(_URL_TOO_LONG)
            raise _Stop

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers += 1
        self._head_bytes += len(name) + len(value)
        if self._headers > MAX_HEADERS or self._head_bytes > MAX_HEAD_BYTES:
            self._refuse(_HEAD_TOO_LARGE)
            raise _Stop
        if self._in_head:  # a chunked body's trailer fields are counted, and dropped (as twisted.web)
            self._parsing.headers[name.lower()] = value  # type: ignore[union-attr]

    def on_headers_complete(self) -> None:
        self._in_head = self._gathering = False
        request = self._parsing
        parser = self._parser
        assert request is not None and parser is not None
        if parser.should_upgrade():  # CONNECT, or an Upgrade: the uplink is plain HTTP/1.1
            self._refuse(_BAD_REQUEST)
            raise _Stop
        path, question, query = self._url.partition(b"?")
        request.path = path
        request.query = query if question else None
        request.method = parser.get_method()
        request.http10 = parser.get_http_version() == "1.0"
        request.keep_alive = parser.should_keep_alive()
        headers = request.headers
        limit = self.site.limits.max_body_bytes
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                length = int(declared)  # llhttp has checked it (digits, one value)
            except ValueError:
                self._refuse(_BAD_REQUEST)
                raise _Stop from None
            if length > limit:
                self._refuse_body()
                raise _Stop
            if length > IN_MEMORY_BODY:
                request.content = tempfile.TemporaryFile()
        elif b"transfer-encoding" in headers:  # llhttp takes it in a request only with chunked last
            length = -1
            request._body_left = limit
            request.content = tempfile.SpooledTemporaryFile(IN_MEMORY_BODY)
        else:
            length = 0
        if length:
            expect = headers.get(b"expect")
            request.expects_continue = (
                expect is not None and expect.lower() == b"100-continue" and not request.http10
            )
            if not self._queue:  # the first not answered: its body's time starts now
                self._body_begins(request)

    def on_chunk_header(self) -> None:
        # The last chunk's header is followed by the trailer's fields, if any.
        self._gathering = True
        self._gatherings += 1

    def on_chunk_complete(self) -> None:
        self._gathering = False

    def on_body(self, data: bytes) -> None:
        self._gathering = False
        request = self._parsing
        assert request is not None
        left = request._body_left
        if left is not None:
            left -= len(data)
            if left < 0:
                self._refuse_body()
                raise _Stop
            request._body_left = left
        request.content.write(data)

    def on_message_complete(self) -> None:
        request = self._parsing
        assert request is not None
        self._parsing = None
        self._gathering = False
        self._body_mark = NO_BODY
        self._queue.append(request)

    def _body_begins(self, request: UplinkRequest) -> None:
        """The request first in line has a body to come: its grace starts, and a 100 Continue is sent."""
        self._body_mark = IN_GRACE
        self._set_timer(self.site.limits.header_timeout)
        if request.expects_continue:
            self.transport.write(_CONTINUE)

    # Refusals -----------------------------------------------------------------------------

    def _refuse(self, answer: bytes) -> None:
        """Read nothing more; once the requests before this one are answered, send `answer` and close."""
        self._stopped = True
        self._final = answer
        request = self._parsing
        if request is not None:
            self._parsing = None
            request.channel = None
            request.content = io.BytesIO()  # what it read of its body is dropped
        self._held = []
        self._held_bytes = 0
        self._body_mark = NO_BODY
        self._cancel_timer()

    def _refuse_body(self) -> None:
        """The body is over `max_body_bytes`: 413, counted, and nothing more of it read."""
        limits = self.site.limits
        self._note("body_size", limits.max_body_bytes)
        self._refuse(_TOO_LARGE)

    def _note(self, kind: str, limit: float) -> None:
        self.site.guard.note(kind, peer_host(self.transport.getPeer()), limit)

    # Deadlines ----------------------------------------------------------------------------

    def _set_timer(self, seconds: float) -> None:
        timer = self._timer
        if timer is not None and timer.active():
            timer.reset(seconds)
        else:
            self._timer = self.site.clock.callLater(seconds, self._timed_out)

    def _cancel_timer(self) -> None:
        timer = self._timer
        self._timer = None
        if timer is not None and timer.active():
            timer.cancel()

    def _timed_out(self) -> None:
        """The head is late, or the body's last window brought too little: abort, and count it."""
        self._timer = None
        if self._handling or self._closed or self._final is not None:
            return  # a request is with the endpoint: no deadline runs for the peer
        broken = self.site.limits.overdue(self._body_mark, self._received)
        if broken is None:
            self._body_mark = self._received
            self._set_timer(BODY_WINDOW)
            return
        self._note(*broken)
        # A polite close would wait for a peer that may never read; a slow peer gets none.
        self._closed = True
        self.transport.abortConnection()

    # Handling, in order -------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand the first request to the endpoint, or parse what was held, until one is handled."""
        if self._pumping:
            return
        self._pumping = True
        try:
            while not self._closed and not self._handling:
                if self._queue:
                    self._handle(self._queue[0])
                elif self._final is not None:
                    self._close_with(self._final)
                elif self._held and not self._stopped:
                    data = b"".join(self._held)
                    self._held = []
                    self._held_bytes = 0
                    self._update_reading()
                    self._feed(data)
                else:
                    break
        finally:
            self._pumping = False

    def _handle(self, request: UplinkRequest) -> None:
        self._handling = True
        try:
            self.site.endpoint.serve(request)
        except Exception:
            log.failure("uplink request failed inside the gateway")
            request.keep_alive = False
            request.respond(500, b"internal error\n", TEXT_TYPE)

    def respond(
        self, request: UplinkRequest, status: int, body: bytes, content_type: bytes, headers: bytes
    ) -> None:
        """Write the answer to the first request in line, then go on to the next (`UplinkRequest.respond`)."""
        if not self._queue or self._queue[0] is not request or self._closed:
            return
        self._queue.popleft()
        request.finished = True
        self._handling = False
        close = not request.keep_alive
        if close:
            connection = b"Connection: close\r\n"
        elif request.http10:
            connection = b"Connection: keep-alive\r\n"
        else:
            connection = b""
        head = b"%s %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\nDate: %s\r\n%s%s\r\n" % (
            b"HTTP/1.0" if request.http10 else b"HTTP/1.1",
            status,
            _REASONS.get(status, b"Unknown"),
            content_type,
            len(body),
            self.site.date(),
            headers,
            connection,
        )
        self.transport.write(head if request.method == b"HEAD" else head + body)
        if close:
            self._close_with(b"")
            return
        # The next head has the whole of header_timeout; a body already begun, its grace anew.
        self._body_mark = NO_BODY
        parsing = self._parsing
        if parsing is not None and not self._in_head:
            self._body_begins(parsing)
        elif self._final is None:
            self._set_timer(self.site.limits.header_timeout)
        self._update_reading()
        self._pump()

    def _close_with(self, answer: bytes) -> None:
        """Send `answer` (if any) and close once it is written; nothing more is read or answered."""
        self._closed = True
        self._cancel_timer()
        transport = self.transport
        if answer:
            transport.write(answer)
        transport.unregisterProducer()
        transport.loseConnection()


@implementer(IGuardsItself)
class UplinkSite(Factory):
    """The uplink port's factory: an `UplinkChannel` a connection, counted by a `ConnectionGuard`.

    Over a connection cap, `buildProtocol` gives no channel, and the port
    closes the connection at once. No access log: the journal records every
    message a lot sends, and a line per request on top would fill the
    operator's log at thousands of requests a second.
    """

    noisy = False

    def __init__(
        self,
        endpoint: UplinkEndpoint,
        *,
        reactor: Any = None,
        limits: HttpLimits | None = None,
        guard: ConnectionGuard | None = None,
        name: str = "uplink",
        proxied: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.endpoint = endpoint
        self.clock = reactor
        self.limits = limits = limits or HttpLimits()
        self.guard = guard or limits.guard(name, reactor, proxied=proxied)
        self._second = -1
        self._date = b""

    def buildProtocol(self, addr: Any) -> UplinkChannel | None:
        host = self.guard.admit(addr)
        if host is None:
            return None
        return UplinkChannel(self, host)

    def date(self) -> bytes:
        """The Date header's value now, formatted once a second."""
        now = self.clock.seconds()
        second = int(now)
        if second != self._second:
            self._second = second
            self._date = formatdate(second, usegmt=True).encode("ascii")
        return self._date


def request_text(request: UplinkRequest, max_body_bytes: int) -> tuple[str, list[FilePart]] | int:
    """The request's protocol text and file parts, or an HTTP status (413) to refuse it with."""
    content = request.content
    size = content.seek(0, 2)
    if size > max_body_bytes:
        return 413
    content.seek(0)
    text, files = body_text(content.read(), request.header(b"content-type"), request.param())
    return text, [FilePart(name, value) for name, value in files]


class UplinkEndpoint:
    """The uplink endpoint: `POST /uplink` and `POST /uplink/{code}`; any other path is 404.

    It answers each `UplinkRequest` its channel hands it, now or once the
    handler has: 404 for another path, 405 (with `Allow: POST`) for another
    method, 413 for a body over `max_body_bytes`, and otherwise the
    protocol's JSON answer, always 200 (CONTRACT §4).
    """

    def __init__(self, handler: UplinkHandler, max_body_bytes: int, bodies: BodyPool | None = None) -> None:
        self._handler = handler
        self._max_body_bytes = max_body_bytes
        self._bodies = bodies
        """Where a body over its `inline_bytes` is parsed, off the reactor; None: every body here."""

    def serve(self, request: UplinkRequest) -> None:
        """Answer `request`, now or later."""
        path = request.path
        if path == b"/uplink":
            code = None
        elif path.startswith(b"/uplink/") and len(path) > 8 and b"/" not in path[8:]:
            # No interface code is longer than 10: whatever the answer and the log
            # echo of a longer one is cut to 36 characters (CONTRACT §4).
            code = unquote(path[8:].decode("latin-1"))[:36]
        else:
            request.respond(404, _NOT_FOUND, TEXT_TYPE)
            return
        if request.method != b"POST":
            request.respond(405, b"the uplink takes POST\n", TEXT_TYPE, b"Allow: POST\r\n")
            return
        answered = self._answer(request, code)
        if isinstance(answered, Deferred):
            answered.addCallback(_respond, request)
        elif answered is not None:
            request.respond(200, answered, JSON_TYPE)

    def _answer(self, request: UplinkRequest, url_code: str | None) -> Deferred[bytes] | bytes | None:
        """The JSON answer, now or later; None when `request` is answered already (413)."""
        bodies = self._bodies
        if bodies is not None:
            size = request.content.seek(0, 2)
            if bodies.inline_bytes < size <= self._max_body_bytes:
                return self._offload(bodies, request, size, url_code)
        try:
            body = request_text(request, self._max_body_bytes)
        except BodyError as error:
            return self._body_refused(request, url_code, Answer.of(error.result, error.detail))
        if isinstance(body, int):
            request.respond(body, b"request body too large\n", TEXT_TYPE)
            return None
        text, files = body
        answered = maybeDeferred(self._handler.handle, text, url_code, files, request.gone)
        return answered.addErrback(self._failed, url_code, request)

    def _body_refused(self, request: UplinkRequest, url_code: str | None, answer: Answer) -> bytes:
        """The answer to a body that is no protocol text (or that cannot be parsed now), logged."""
        _rejected(request, url_code, answer)
        return build_response(_echo(url_code), "", answer.result, answer.message, {}, "", "")

    def _offload(
        self, bodies: BodyPool, request: UplinkRequest, size: int, url_code: str | None
    ) -> Deferred[bytes] | bytes:
        """Have a worker process parse this big body; 9999 "busy, retry" when too many wait already."""
        content = request.content
        request.content = io.BytesIO()  # the pool owns the body's file now, and closes it
        gone = request.gone
        parsed = bodies.parse(content, size, request.header(b"content-type"), request.param(), gone)
        if parsed is None:
            return self._body_refused(request, url_code, _BUSY)
        answered: Deferred[bytes] = parsed.addCallback(self._parsed, request, url_code, gone)
        return answered.addErrback(self._failed, url_code, request)

    def _parsed(
        self, outcome: Outcome, request: UplinkRequest, url_code: str | None, gone: Callable[[], bool]
    ) -> Deferred[bytes] | bytes:
        """Answer the request as a worker found it (`gateway.lots.bodies.parse_body`)."""
        kind = outcome[0]
        if kind == "request":
            token, code, opr, signature, data_text, data, files = outcome[1:]
            envelope = Envelope(
                token=token, code=code, opr=opr, signature=signature, data=None, data_text=data_text
            )
            parts = [FilePart(name, value) for name, value in files]
            return self._handler.handle_request(envelope, url_code, parts, gone, lambda: marshal.loads(data))
        if kind == "envelope":
            result, detail, code, opr = outcome[1:]
            error = EnvelopeError(Result.from_code(result) or Result.MALFORMED, detail, code, opr)
            return self._handler.refused(error, url_code)
        if kind == "body":
            result, detail = outcome[1:]
            answer = Answer.of(Result.from_code(result) or Result.MALFORMED, detail)
            return self._body_refused(request, url_code, answer)
        if kind == "gone":
            return b""  # nobody to answer (see _respond)
        raise BodyWorkerFault(outcome[1])

    def _failed(self, failure: Failure, url_code: str | None, request: UplinkRequest) -> bytes:
        """A fault of the gateway's own is still answered in the protocol: 9999, and logged."""
        log.failure("uplink request failed inside the gateway", failure)
        answer = Answer.of(Result.FAILED, "internal error in the gateway; retry")
        _rejected(request, url_code, answer)
        return build_response(_echo(url_code), "", answer.result, answer.message, {}, "", "")


_NOT_FOUND = b"no such resource: the uplink is POST /uplink or /uplink/{code}\n"
_BUSY = Answer.of(Result.FAILED, "busy, retry: too many large bodies are waiting to be parsed")


class BodyWorkerFault(Exception):
    """A body's worker process failed to parse it (its traceback, or why it ended)."""


def _echo(url_code: str | None) -> str:
    """The URL's code as an answer here echoes it: at most its first 36 characters (CONTRACT §4)."""
    return (url_code or "")[:ECHO_CHARS]


def _respond(body: bytes, request: UplinkRequest) -> None:
    """Send a later answer, unless the lot has gone: it learns nothing from a closed socket."""
    request.respond(200, body, JSON_TYPE)


def _rejected(request: UplinkRequest, url_code: str | None, answer: Answer) -> None:
    """Log an answer given here, not by the handler (which logs its own): a body not understood, a fault."""
    address = request.peer()
    lot_rejected(
        log,
        park="",
        peer=describe(address) if address is not None else "(gone)",
        code=url_code or "",
        result=answer.result.code,
        reason=answer.message,
        dialect=STANDARD,
        via="http",
    )

"""The HTTP uplink (B.2.1): `POST /uplink` and `POST /uplink/{code}`, and the HTTP listeners' bounds.

This only turns an HTTP request into the request text and file parts, and the
handler's answer into an HTTP response. The body may be a form with `param=`,
a multipart form with a `param` field (and image files), or raw JSON
(`gateway.lots.bodies` decodes it). A body over the `BodyPool`'s
`inline_bytes` is decoded and parsed by a worker process instead, so that no
body of some MiB holds up the reactor (issue 19).

Both HTTP listeners (the uplink and the command API) face the internet, so
their channel holds a peer to the bounds of CONTRACT §4 (`HttpLimits`): the
request head within `header_timeout` of the connection or the last answer,
the body at `min_body_rate` once its first `header_timeout` seconds are over, no
body over `max_body_bytes` (413 before it is read, or as soon as a chunked
one passes it), and connections capped by peer and in all.
"""

from __future__ import annotations

import io
import marshal
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote

from attrs import frozen
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.limits import ConnectionGuard, peer_host
from gateway.logs import ECHO_CHARS, describe, lot_rejected
from gateway.lots.answers import Answer
from gateway.lots.bodies import BodyError, Outcome, body_text, form_unquote, parse_form
from gateway.lots.bodypool import BodyPool
from gateway.lots.login import STANDARD
from gateway.lots.uplink import FilePart, UplinkHandler
from gateway.protocol.envelope import EnvelopeError, build_response
from gateway.protocol.envelope import Request as Envelope
from gateway.protocol.results import Result
from gateway.settings import UplinkConfig

__all__ = [
    "BodyError",
    "GuardedChannel",
    "GuardedSite",
    "HttpLimits",
    "UplinkResource",
    "UplinkSite",
    "form_unquote",
    "parse_form",
    "request_text",
]

JSON_TYPE = b"application/json; charset=utf-8"
log = Logger()

BODY_WINDOW = 5.0
"""Seconds over which a body's rate is measured after the grace: each must bring `min_body_rate` × 5 bytes."""

_NO_BODY = -1
_IN_GRACE = 0
_TOO_LARGE = b"request body too large\n"
_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 413 Request Entity Too Large\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: %d\r\n"
    b"Connection: close\r\n\r\n%s" % (len(_TOO_LARGE), _TOO_LARGE)
)


@frozen
class HttpLimits:
    """What an HTTP listener allows a peer (CONTRACT §4); the defaults are the configuration's."""

    max_body_bytes: int = 16 * 2**20
    header_timeout: float = 10.0
    min_body_rate: int = 1024
    max_connections_per_peer: int = 64
    max_connections: int = 20000

    @classmethod
    def uplink(cls, config: UplinkConfig) -> HttpLimits:
        """The uplink port's limits: `[uplink]` as configured."""
        return cls(
            max_body_bytes=config.max_body_bytes,
            header_timeout=config.header_timeout,
            min_body_rate=config.min_body_rate,
            max_connections_per_peer=config.max_connections_per_peer,
            max_connections=config.max_connections,
        )

    @classmethod
    def api(cls, config: UplinkConfig) -> HttpLimits:
        """The command API's: its own body limit and connection cap, room left while the uplink is flooded."""
        return cls(
            max_body_bytes=config.api_max_body_bytes,
            header_timeout=config.header_timeout,
            min_body_rate=config.min_body_rate,
            max_connections_per_peer=min(config.max_connections_per_peer, config.api_max_connections),
            max_connections=config.api_max_connections,
        )


class GuardedChannel(http.HTTPChannel):
    """An HTTP channel a slow or greedy peer cannot hold: deadlines for the head and the body, capped bodies.

    twisted.web's timer (``TimeoutMixin``) is an idle timer, restarted by each
    byte, so a peer sending a header byte every few seconds held its
    connection for ever (issue 19: slowloris). Here the same timer is a
    deadline: bytes do not restart it. It is set to `header_timeout` when the
    connection opens and after each answer (twisted.web's own save and
    restore of it), to `header_timeout` again once a head announcing a body
    is in (the body's free start: the contract's "after the first 10 s"), and
    then to `BODY_WINDOW` again and again while each window brings the body's
    minimum rate. The connection's count in its listener's guard is released
    as it closes.
    """

    site: GuardedSite
    peer: str | None = None
    """The host it is counted under in the guard ("" until a proxied peer is known), None once released."""
    _received = 0
    # Outside a body: _NO_BODY; in its first header_timeout seconds: _IN_GRACE; after: the
    # bytes received (since the connection opened) when its rate was last checked.
    _body_mark = -1
    _refusing = False
    _over_cap = False

    def dataReceived(self, data: bytes) -> None:
        # Unlike HTTPChannel's, no resetTimeout: the timer is a deadline.
        self._received += len(data)
        if self.peer == "" and not self._place():
            return
        LineReceiver.dataReceived(self, data)

    def peer_known(self) -> None:
        """The PROXY header has named the peer (`gateway.limits.ProxyHeaderFactory`): count it there now."""
        if self.peer == "":
            self._place()

    def _place(self) -> bool:
        """Count a proxied connection under its peer, whose address the PROXY header has given now."""
        if self._over_cap:
            return False
        host = self.site.guard.place(self.transport.getPeer())  # type: ignore[union-attr]
        if host is None:
            self._over_cap = True
            self.transport.abortConnection()  # type: ignore[union-attr]
            return False
        self.peer = host
        return True

    def allHeadersReceived(self) -> None:
        super().allHeadersReceived()  # the request's gotLength may refuse the body already
        if self.length != 0 and not self._refusing:
            self._body_mark = _IN_GRACE
            self.setTimeout(self.site.limits.header_timeout)

    def requestDone(self, request: http.Request) -> None:
        # The next request's head has the whole of header_timeout, whatever the body's timer was.
        self._body_mark = _NO_BODY
        self._savedTimeOut = self.site.limits.header_timeout  # type: ignore[assignment]
        super().requestDone(request)

    def timeoutConnection(self) -> None:
        """The head is late, or the body's last window brought too little: close, and count it."""
        limits = self.site.limits
        mark = self._body_mark
        if mark == _NO_BODY:
            self._refuse("header_timeout", limits.header_timeout)
        elif mark == _IN_GRACE or self._received - mark >= limits.min_body_rate * BODY_WINDOW:
            self._body_mark = self._received
            self.setTimeout(BODY_WINDOW)
            return
        else:
            self._refuse("body_rate", limits.min_body_rate)
        # Twisted's own closes politely and logs each; a slow peer gets neither.
        self.transport.abortConnection()  # type: ignore[union-attr]

    def _refuse(self, kind: str, limit: float) -> None:
        self.site.guard.note(kind, peer_host(self.transport.getPeer()), limit)  # type: ignore[union-attr]

    def refuse_body(self) -> None:
        """Answer 413 and close: the body is over `max_body_bytes`. Nothing more of it is read.

        What the same read still holds is dropped, and the request is never
        processed, even should its body end there (as twisted.web itself
        silences a channel that is not persistent).
        """
        self._refusing = True
        self._body_mark = _NO_BODY
        self.setTimeout(None)
        self.rawDataReceived = self.allContentReceived = _ignore  # type: ignore[method-assign,assignment]
        self._refuse("body_size", self.site.limits.max_body_bytes)
        self.transport.write(_TOO_LARGE_RESPONSE)  # type: ignore[union-attr]
        self.loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.site.guard.release(self.peer)
        self.peer = None
        super().connectionLost(reason)


def _ignore(*args: object) -> None:
    """Take what a refused request's channel still gets, and drop it."""


class UnparsedBodyRequest(Request):
    """A request whose body twisted.web leaves alone: the uplink's `request_text` reads it, the API's JSON.

    Twisted parses form bodies itself, building an email.message.EmailMessage
    per POST to read the Content-Type; that alone costs about a tenth of the
    uplink's time (a twentieth of a gateOpen command's), and it drops the
    file names of multipart parts.

    On a `GuardedChannel`, a body over the listener's `max_body_bytes` is
    refused with 413 as soon as that is known: from the Content-Length before
    any of it is read, or as a chunked body passes the limit. Nothing of it
    beyond the limit is kept.
    """

    channel: Any
    _body_left: int | None = None
    """Body bytes still allowed when only counting can tell (a chunked body); None when the length did."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)

    def gotLength(self, length: int | None) -> None:
        channel = self.channel
        if isinstance(channel, GuardedChannel):
            limit = channel.site.limits.max_body_bytes
            if length is None:
                self._body_left = limit
            elif length > limit:
                self._refuse_body(channel)
                return
        super().gotLength(length)

    def handleContentChunk(self, data: bytes) -> None:
        left = self._body_left
        if left is not None:
            left -= len(data)
            if left < 0:
                if left + len(data) >= 0:  # this chunk passes the limit; any later one is dropped
                    self._refuse_body(self.channel)
                return
            self._body_left = left
        self.content.write(data)  # type: ignore[attr-defined]

    def _refuse_body(self, channel: GuardedChannel) -> None:
        self._body_left = -1
        self.content = io.BytesIO()  # type: ignore[assignment]
        # No "100 Continue" after the 413: twisted.web would send one for this header.
        self.requestHeaders.removeHeader(b"expect")
        channel.refuse_body()


class GuardedSite(Site):
    """A twisted.web site whose channels keep `limits`, counted by a `ConnectionGuard`.

    Over a connection cap, `buildProtocol` gives no channel, and the port
    closes the connection at once. `timeout` (the channel's timer) starts as
    `header_timeout`.
    """

    # The channel itself, not twisted.web's wrapper choosing between HTTP/1.1 and
    # HTTP/2 (which the gateway does not offer): one layer less per read.
    protocol = GuardedChannel  # type: ignore[assignment]
    requestFactory = UnparsedBodyRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        *,
        reactor: Any = None,
        limits: HttpLimits | None = None,
        guard: ConnectionGuard | None = None,
        name: str = "http",
        proxied: bool = False,
    ) -> None:
        if reactor is None:
            from twisted.internet import reactor as global_reactor

            reactor = global_reactor
        self.limits = limits = limits or HttpLimits()
        super().__init__(resource, reactor=reactor, timeout=limits.header_timeout)
        self.guard = guard or ConnectionGuard(
            name,
            clock=reactor,
            max_per_peer=limits.max_connections_per_peer,
            max_total=limits.max_connections,
            proxied=proxied,
        )

    def buildProtocol(self, addr: Any) -> Any:
        host = self.guard.admit(addr)
        if host is None:
            return None
        channel = super().buildProtocol(addr)
        channel.peer = host
        return channel


class UplinkSite(GuardedSite):
    """The uplink's HTTP site: our requests, and no access log.

    The journal records every message a lot sends; an access line per request
    on top would fill the operator's log at thousands of requests a second.
    """

    def __init__(self, resource: IResource, **kwargs: Any) -> None:
        kwargs.setdefault("name", "uplink")
        super().__init__(resource, **kwargs)

    def log(self, request: http.Request) -> None:
        """Write no access-log line."""


def request_text(request: IRequest, max_body_bytes: int) -> tuple[str, list[FilePart]] | int:
    """The request's protocol text and file parts, or an HTTP status (413) to refuse it with."""
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    if size > max_body_bytes:
        return 413
    content.seek(0)
    query = (request.args or {}).get(b"param")  # the URL's query string: some lots put param there
    text, files = body_text(content.read(), request.getHeader(b"content-type"), query[0] if query else None)
    return text, [FilePart(name, value) for name, value in files]


class UplinkResource(Resource):
    """The uplink endpoint: `POST /uplink` and `POST /uplink/{code}`; any other path is 404.

    A plain twisted.web resource rather than a klein app, unlike the gateway's
    other endpoints: this is the hot path, and klein's router cost about a
    fifth of each uplink's time and left some forty objects in reference
    cycles per request for the garbage collector, whose full passes were the
    uplink's p99 (docs/benchmarks.md).
    """

    isLeaf = True

    def __init__(self, handler: UplinkHandler, max_body_bytes: int, bodies: BodyPool | None = None) -> None:
        super().__init__()
        self._handler = handler
        self._max_body_bytes = max_body_bytes
        self._bodies = bodies
        """Where a body over its `inline_bytes` is parsed, off the reactor; None: every body here."""

    def resource(self) -> IResource:
        """The twisted.web resource to serve: this one."""
        return self

    def render(self, request: Request) -> bytes | int:
        path = request.path
        if path == b"/uplink":
            code = None
        elif path.startswith(b"/uplink/") and len(path) > 8 and b"/" not in path[8:]:
            # No interface code is longer than 10: whatever the answer and the log
            # echo of a longer one is cut to 36 characters (CONTRACT §4).
            code = unquote(path[8:].decode("latin-1"))[:36]
        else:
            page: bytes = notFound().render(request)
            return page
        if request.method != b"POST":
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"the uplink takes POST\n"
        answered = self._answer(request, code)
        if isinstance(answered, bytes):
            return answered
        answered.addCallback(_respond, request)
        return NOT_DONE_YET

    def _answer(self, request: IRequest, url_code: str | None) -> Deferred[bytes] | bytes:
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
            request.setResponseCode(body)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"request body too large\n"
        text, files = body
        request.setHeader(b"content-type", JSON_TYPE)
        answered = maybeDeferred(self._handler.handle, text, url_code, files, client_gone(request))
        return answered.addErrback(self._failed, url_code, request)

    def _body_refused(self, request: IRequest, url_code: str | None, answer: Answer) -> bytes:
        """The answer to a body that is no protocol text (or that cannot be parsed now), logged."""
        request.setHeader(b"content-type", JSON_TYPE)
        _rejected(request, url_code, answer)
        return build_response(_echo(url_code), "", answer.result, answer.message, {}, "", "")

    def _offload(
        self, bodies: BodyPool, request: IRequest, size: int, url_code: str | None
    ) -> Deferred[bytes] | bytes:
        """Have a worker process parse this big body; 9999 "busy, retry" when too many wait already."""
        content = request.content
        request.content = io.BytesIO()  # the pool owns the body's file now, and closes it
        query = (request.args or {}).get(b"param")
        gone = client_gone(request)
        parsed = bodies.parse(
            content, size, request.getHeader(b"content-type"), query[0] if query else None, gone
        )
        if parsed is None:
            return self._body_refused(request, url_code, _BUSY)
        request.setHeader(b"content-type", JSON_TYPE)
        answered: Deferred[bytes] = parsed.addCallback(self._parsed, request, url_code, gone)
        return answered.addErrback(self._failed, url_code, request)

    def _parsed(
        self, outcome: Outcome, request: IRequest, url_code: str | None, gone: Callable[[], bool]
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

    def _failed(self, failure: Failure, url_code: str | None, request: IRequest) -> bytes:
        """A fault of the gateway's own is still answered in the protocol: 9999, and logged."""
        log.failure("uplink request failed inside the gateway", failure)
        answer = Answer.of(Result.FAILED, "internal error in the gateway; retry")
        _rejected(request, url_code, answer)
        return build_response(_echo(url_code), "", answer.result, answer.message, {}, "", "")


_BUSY = Answer.of(Result.FAILED, "busy, retry: too many large bodies are waiting to be parsed")


class BodyWorkerFault(Exception):
    """A body's worker process failed to parse it (its traceback, or why it ended)."""


def _echo(url_code: str | None) -> str:
    """The URL's code as an answer here echoes it: at most its first 36 characters (CONTRACT §4)."""
    return (url_code or "")[:ECHO_CHARS]


def client_gone(request: IRequest) -> Callable[[], bool]:
    """Whether the client of `request` has gone (connection lost, or the request ended): a login's
    password check is then dropped before it runs."""

    def gone() -> bool:
        return getattr(request, "channel", None) is None or bool(getattr(request, "finished", False))

    return gone


def _respond(body: bytes, request: Request) -> None:
    """Send a later answer, unless the lot has gone: it learns nothing from a closed socket."""
    if request.channel is None:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _rejected(request: IRequest, url_code: str | None, answer: Answer) -> None:
    """Log an answer given here, not by the handler (which logs its own): a body not understood, a fault."""
    lot_rejected(
        log,
        park="",
        peer=describe(request.getClientAddress()),
        code=url_code or "",
        result=answer.result.code,
        reason=answer.message,
        dialect=STANDARD,
        via="http",
    )

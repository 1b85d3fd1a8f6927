"""The HTTP listeners' bounds (CONTRACT §4), and the command API's twisted.web channel that keeps them.

Both HTTP listeners (the uplink and the command API) face the internet, so
each holds a peer to `HttpLimits`: the request head within `header_timeout`
of the connection or the last answer, the body at `min_body_rate` once its
first `header_timeout` seconds are over, no body over `max_body_bytes` (413
before it is read, or as soon as a chunked one passes it), and connections
capped by peer and in all. The uplink keeps them in its own channel on
llhttp (`gateway.lots.http`); the command API, a klein app, in the
twisted.web channel here (`GuardedSite`).
"""

from __future__ import annotations

import io
from typing import Any

from attrs import frozen
from twisted.internet.protocol import connectionDone
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from zope.interface import implementer

from gateway.limits import ConnectionGuard, IGuardsItself, peer_host
from gateway.settings import UplinkConfig

__all__ = [
    "BODY_WINDOW",
    "IN_GRACE",
    "NO_BODY",
    "GuardedChannel",
    "GuardedSite",
    "HttpLimits",
    "UnparsedBodyRequest",
]

BODY_WINDOW = 5.0
"""Seconds over which a body's rate is measured after the grace: each must bring `min_body_rate` × 5 bytes."""

NO_BODY = -1
"""A channel's body mark outside a body: its deadline is the head's."""
IN_GRACE = 0
"""A channel's body mark in a body's first `header_timeout` seconds; after them, the bytes received
(since the connection opened) when the body's rate was last checked."""
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

    def overdue(self, mark: int, received: int) -> tuple[str, float] | None:
        """What a channel's deadline passing means, given its body `mark` and the bytes `received`:
        the bound the peer broke and its limit, or None when the body's last window brought enough
        (the next `BODY_WINDOW` starts, from `received`)."""
        if mark == NO_BODY:
            return "header_timeout", self.header_timeout
        if mark == IN_GRACE or received - mark >= self.min_body_rate * BODY_WINDOW:
            return None
        return "body_rate", self.min_body_rate

    def guard(self, name: str, clock: Any, *, proxied: bool = False) -> ConnectionGuard:
        """A guard counting a listener's connections under these caps (by peer, behind a proxy or not)."""
        return ConnectionGuard(
            name,
            clock=clock,
            max_per_peer=self.max_connections_per_peer,
            max_total=self.max_connections,
            proxied=proxied,
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
    # Outside a body: NO_BODY; in its first header_timeout seconds: IN_GRACE; after: the
    # bytes received (since the connection opened) when its rate was last checked.
    _body_mark = NO_BODY
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
            self._body_mark = IN_GRACE
            self.setTimeout(self.site.limits.header_timeout)

    def requestDone(self, request: http.Request) -> None:
        # The next request's head has the whole of header_timeout, whatever the body's timer was.
        self._body_mark = NO_BODY
        self._savedTimeOut = self.site.limits.header_timeout  # type: ignore[assignment]
        super().requestDone(request)

    def timeoutConnection(self) -> None:
        """The head is late, or the body's last window brought too little: close, and count it."""
        broken = self.site.limits.overdue(self._body_mark, self._received)
        if broken is None:
            self._body_mark = self._received
            self.setTimeout(BODY_WINDOW)
            return
        self._refuse(*broken)
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
        self._body_mark = NO_BODY
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
    """A request whose body twisted.web leaves alone: the command API reads its JSON itself.

    Twisted parses form bodies itself, building an email.message.EmailMessage
    per POST to read the Content-Type; that alone costs about a twentieth of
    a gateOpen command's time.

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


@implementer(IGuardsItself)
class GuardedSite(Site):
    """A twisted.web site whose channels keep `limits`, counted by a `ConnectionGuard`: the command API's.

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
        self.guard = guard or limits.guard(name, reactor, proxied=proxied)

    def buildProtocol(self, addr: Any) -> Any:
        host = self.guard.admit(addr)
        if host is None:
            return None
        channel = super().buildProtocol(addr)
        channel.peer = host
        return channel

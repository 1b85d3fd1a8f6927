"""The HTTP listeners' bounds (CONTRACT §4, issue 19 items 2 and 3), on StringTransport and Clock.

Each test shows the bound itself: when a connection is closed, how many are
held, how many body bytes are kept. The bounds are the same on both HTTP
listeners, so each runs against the uplink's channel (llhttp,
`gateway.lots.http`) and the command API's (twisted.web,
`gateway.lots.httpbounds.GuardedSite`).
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.config import parse
from gateway.lots.http import UplinkChannel, UplinkEndpoint, UplinkSite
from gateway.lots.httpbounds import BODY_WINDOW, GuardedChannel, GuardedSite, HttpLimits

OK = b'{"resultCode":"0000"}'
HEAD = b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"


class Answering:
    """An uplink handler that answers at once and keeps the texts it was given."""

    def __init__(self) -> None:
        self.texts: list[str] = []

    def handle(
        self, text: str, url_code: str | None = None, files: object = (), gone: object = None
    ) -> Deferred[bytes]:
        self.texts.append(text)
        return succeed(OK)


class AnsweringResource(Resource):
    """The same on the API's twisted.web site: a resource that keeps each body and answers OK."""

    isLeaf = True

    def __init__(self, handler: Answering) -> None:
        super().__init__()
        self.handler = handler

    def render_POST(self, request: Request) -> bytes:
        self.handler.texts.append(request.content.read().decode())  # type: ignore[union-attr]
        return OK


Site = UplinkSite | GuardedSite
Channel = UplinkChannel | GuardedChannel


@pytest.fixture(params=["uplink", "api"])
def kind(request: pytest.FixtureRequest) -> str:
    """Which listener's channel: the uplink's (llhttp) or the command API's (twisted.web)."""
    return str(request.param)


def make_site(
    kind: str, clock: Clock, handler: Answering | None = None, proxied: bool = False, **limits: Any
) -> Site:
    """The uplink's site or the command API's, with `limits`, answering through `handler`."""
    handler = handler or Answering()
    bounds = HttpLimits(**limits)
    if kind == "uplink":
        endpoint = UplinkEndpoint(handler, 10**9)  # type: ignore[arg-type]
        return UplinkSite(endpoint, reactor=clock, limits=bounds, proxied=proxied)
    return GuardedSite(AnsweringResource(handler), reactor=clock, limits=bounds, name="api", proxied=proxied)


def uplink_site(clock: Clock, handler: Answering | None = None, **limits: Any) -> UplinkSite:
    site = make_site("uplink", clock, handler, **limits)
    assert isinstance(site, UplinkSite)
    return site


Connected = tuple[Any, StringTransport]


def connect(site: Site, host: str = "10.0.0.1", port: int = 1) -> Connected:
    """A channel of `site` for a connection from host:port, as the port would make it."""
    address = IPv4Address("TCP", host, port)
    channel = site.buildProtocol(address)
    assert isinstance(channel, UplinkChannel | GuardedChannel)
    transport = StringTransport(peerAddress=address)
    channel.makeConnection(transport)
    return channel, transport


def close(channel: Channel) -> None:
    """What the reactor does once the transport has closed."""
    channel.connectionLost(Failure(ConnectionDone()))


def held(channel: Channel) -> int:
    """Bytes of body the channel holds for the request it is reading (0 once it is refused)."""
    if isinstance(channel, UplinkChannel):
        request = channel.reading
        return 0 if request is None else request.content.tell()
    return channel.requests[-1].content.tell() if channel.requests else 0  # type: ignore[no-any-return]


# item 2: slowloris


def test_a_head_sent_a_byte_at_a_time_is_closed_at_header_timeout(kind: str) -> None:
    """Bytes of an unfinished head do not restart the timer: it closes header_timeout after it opened.

    Before, Twisted's idle timer restarted on each byte, so a byte every 20 s held the connection for ever.
    """
    clock = Clock()
    site = make_site(kind, clock, header_timeout=10)
    channel, transport = connect(site)
    for byte in HEAD[:5]:
        clock.advance(1.9)
        channel.dataReceived(bytes([byte]))
    clock.advance(10 - 5 * 1.9 - 0.01)
    assert not transport.disconnecting
    clock.advance(0.01)
    assert transport.disconnected  # aborted: no polite close for a slow peer
    assert site.guard.refused["header_timeout"] == 1
    assert transport.value() == b""
    close(channel)
    assert site.guard.open == 0 and site.guard.by_peer == {}


def test_each_answer_gives_the_next_head_a_fresh_deadline(kind: str) -> None:
    """A keep-alive connection is closed header_timeout after its last answer unless a whole head comes."""
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, header_timeout=10)
    channel, transport = connect(site)
    clock.advance(8)
    channel.dataReceived(HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert handler.texts == ["{}"] and transport.value().endswith(OK)
    clock.advance(9.9)
    assert not transport.disconnecting
    channel.dataReceived(HEAD + b"Content-Length: 2\r\n\r\n{}")
    assert handler.texts == ["{}", "{}"]
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected and site.guard.refused["header_timeout"] == 1


def test_a_body_slower_than_min_body_rate_is_closed_after_its_grace(kind: str) -> None:
    """A body's first header_timeout seconds are free; then each window must bring min_body_rate bytes/s."""
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, min_body_rate=1024, header_timeout=10)
    channel, transport = connect(site)
    clock.advance(9)
    channel.dataReceived(HEAD + b"Content-Length: 100000\r\n\r\n")
    clock.advance(10)  # nothing came, but the head's deadline is gone and the body's grace still runs
    assert not transport.disconnecting
    # A window at the rate keeps it open...
    channel.dataReceived(b" " * int(1024 * BODY_WINDOW))
    clock.advance(BODY_WINDOW)
    assert not transport.disconnecting
    # ...one a byte short of it closes it.
    channel.dataReceived(b" " * int(1024 * BODY_WINDOW - 1))
    clock.advance(BODY_WINDOW)
    assert transport.disconnected and site.guard.refused["body_rate"] == 1
    assert handler.texts == []


def test_a_slow_but_steady_body_is_served(kind: str) -> None:
    """A body arriving at twice min_body_rate for 30 s is answered, and the next head has header_timeout."""
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, min_body_rate=100, header_timeout=10)
    channel, transport = connect(site)
    body = b" " * 6000 + b"{}"
    channel.dataReceived(HEAD + b"Content-Length: %d\r\n\r\n" % len(body))
    for offset in range(0, len(body), 200):
        clock.advance(1)
        channel.dataReceived(body[offset : offset + 200])
    assert handler.texts == [body.decode()] and not transport.disconnecting
    clock.advance(9.9)
    assert not transport.disconnecting
    clock.advance(0.1)
    assert transport.disconnected and site.guard.refused["body_rate"] == 0


# item 3: bodies over the limit


def test_a_declared_length_over_the_limit_is_413_before_any_body_is_read(kind: str) -> None:
    """Content-Length 300 MiB: 413 as soon as the head is in; what follows is neither kept nor handled.

    Before, the whole body was spooled to a temporary file, then refused.
    """
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, max_body_bytes=1000)
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"Content-Length: %d\r\nExpect: 100-continue\r\n\r\n" % (300 * 2**20))
    answer = transport.value()
    assert answer.startswith(b"HTTP/1.1 413 ") and b"Connection: close\r\n" in answer
    assert b"100 Continue" not in answer
    assert transport.disconnecting
    channel.dataReceived(b"x" * 65536)  # what was in flight still arrives
    assert held(channel) == 0
    assert handler.texts == [] and transport.value() == answer
    assert site.guard.refused["body_size"] == 1
    clock.advance(3600)  # no timer of its own is left to fire on a closing connection
    assert site.guard.refused["header_timeout"] == site.guard.refused["body_rate"] == 0


def test_a_chunked_body_is_cut_with_413_as_it_passes_the_limit(kind: str) -> None:
    """A chunked body is refused by the chunk that takes it past the limit; at most the limit is held."""
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, max_body_bytes=1000)
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"Transfer-Encoding: chunked\r\n\r\n")
    for _ in range(2):
        channel.dataReceived(b"190\r\n" + b"x" * 400 + b"\r\n")
    assert transport.value() == b"" and held(channel) == 800
    channel.dataReceived(b"190\r\n" + b"x" * 400 + b"\r\n0\r\n\r\n")
    assert transport.value().startswith(b"HTTP/1.1 413 ") and transport.disconnecting
    assert held(channel) == 0
    assert handler.texts == []


def test_a_body_of_exactly_the_limit_is_served(kind: str) -> None:
    """max_body_bytes is allowed, chunked or not: the limit refuses only what is over it."""
    clock = Clock()
    handler = Answering()
    site = make_site(kind, clock, handler, max_body_bytes=1000)
    body = b"{}" + b" " * 998
    channel, transport = connect(site)
    channel.dataReceived(HEAD + b"Content-Length: 1000\r\n\r\n" + body)
    channel.dataReceived(HEAD + b"Transfer-Encoding: chunked\r\n\r\n3e8\r\n" + body + b"\r\n0\r\n\r\n")
    assert handler.texts == [body.decode()] * 2
    assert transport.value().count(b"HTTP/1.1 200 ") == 2


# connection caps


def test_connections_are_capped_by_peer_and_in_all(kind: str) -> None:
    """Over max_connections_per_peer from one address, or max_connections in all, no channel is made."""
    clock = Clock()
    site = make_site(kind, clock, max_connections_per_peer=3, max_connections=5)
    first = [connect(site, "10.0.0.1", port) for port in range(3)]
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.1", 99)) is None
    others = [connect(site, "10.0.0.2", port) for port in range(2)]
    assert site.buildProtocol(IPv4Address("TCP", "10.0.0.3", 1)) is None
    assert site.guard.open == 5 and site.guard.by_peer == {"10.0.0.1": 3, "10.0.0.2": 2}
    assert site.guard.refused["per_peer"] == 1 and site.guard.refused["total"] == 1
    close(first[0][0])
    close(first[0][0])  # a second connectionLost counts nothing twice
    assert site.guard.open == 4
    connect(site, "10.0.0.3", 1)
    assert site.guard.by_peer == {"10.0.0.1": 2, "10.0.0.2": 2, "10.0.0.3": 1}
    for channel, _ in first[1:] + others:
        close(channel)
    assert site.guard.open == 1


def test_behind_a_proxy_each_connection_is_counted_under_its_own_peer(kind: str) -> None:
    """With the PROXY protocol, the balancer's address is not capped; the peer its header names is."""
    clock = Clock()
    site = make_site(kind, clock, proxied=True, max_connections_per_peer=2)
    balancer = IPv4Address("TCP", "10.9.9.9", 1)
    held = []
    for port in range(3):
        channel = site.buildProtocol(balancer)
        assert isinstance(channel, UplinkChannel | GuardedChannel)
        # What the PROXY wrapper's getPeer gives once the header is read.
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", port))
        channel.makeConnection(transport)
        channel.dataReceived(HEAD)
        held.append((channel, transport))
    assert [t.disconnected for _, t in held] == [False, False, True]
    assert site.guard.by_peer == {"192.0.2.7": 2} and site.guard.refused["per_peer"] == 1
    for channel, _ in held:
        close(channel)
    assert site.guard.open == 0 and site.guard.by_peer == {}


def test_the_api_limits_come_from_its_own_keys() -> None:
    """The command API takes api_max_body_bytes and api_max_connections, the uplink [uplink]'s."""
    keys = {"max_body_bytes": 2**24, "api_max_body_bytes": 2**16, "api_max_connections": 8}
    settings = parse({"uplink": keys})
    api = HttpLimits.api(settings.uplink)
    uplink = HttpLimits.uplink(settings.uplink)
    assert (api.max_body_bytes, api.max_connections, api.max_connections_per_peer) == (2**16, 8, 8)
    assert (uplink.max_body_bytes, uplink.max_connections) == (2**24, settings.uplink.max_connections)
    assert api.header_timeout == uplink.header_timeout == settings.uplink.header_timeout


def test_an_answer_echoes_at_most_36_characters_of_what_the_peer_sent() -> None:
    """A huge code in the URL or charset in the header is echoed in the answer as 36 characters."""
    clock = Clock()
    site = uplink_site(clock)
    channel, transport = connect(site)
    code = "C" * 4000
    charset = "x" * 4000
    channel.dataReceived(
        b"POST /uplink/%s HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json; charset=%s\r\n"
        b"Content-Length: 2\r\n\r\n{}" % (code.encode(), charset.encode())
    )
    answer = transport.value().split(b"\r\n\r\n", 1)[1]
    assert len(answer) < 600
    assert b'"code":"' + b"C" * 36 + b'"' in answer and b"x" * 37 not in answer

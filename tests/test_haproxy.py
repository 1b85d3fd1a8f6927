"""The lot-facing listeners behind a PROXY-protocol balancer (CONTRACT §9), in memory.

Each connection goes through the wrapper a `haproxy:` listener uses
(`gateway.limits.ProxyHeaderFactory`, Twisted's own with a bound and a hook),
accepted from the balancer's address and then given a real PROXY header, as
HAProxy's `send-proxy-v2` writes it. What is keyed on the peer (the per-peer
cap, logs, the journal's online records, the status page's peer) must see the
lot's address; a connection that never sends a whole header is closed.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from twisted.application.internet import StreamServerEndpointService
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.protocols.policies import ProtocolWrapper
from twisted.python.failure import Failure

from gateway.journal.kinds import ONLINE_RECORD
from gateway.limits import (
    MAX_PROXY_HEADER,
    ConnectionGuard,
    GuardedFactory,
    Listener,
    ProxyHeaderFactory,
)
from gateway.lots.http import UplinkEndpoint, UplinkSite
from gateway.lots.httpbounds import HttpLimits
from gateway.protocol.framing import encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import PASSWORD
from tests.lots.test_downlink import Gateway
from tests.lots.test_http_limits import HEAD, Answering
from tests.test_logs import captured

BALANCER = IPv4Address("TCP", "10.9.9.9", 50000)
LOT = "192.0.2.7"
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"


def header_v2(source: str = LOT, port: int = 40000, dest: str = "10.0.0.1", dest_port: int = 9000) -> bytes:
    """A PROXY protocol version 2 header for TCP over IPv4, as HAProxy's send-proxy-v2 writes it."""
    addresses = socket.inet_aton(source) + socket.inet_aton(dest) + struct.pack("!HH", port, dest_port)
    return V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", len(addresses)) + addresses


def header_v1(source: str = LOT, port: int = 40000) -> bytes:
    """A PROXY protocol version 1 (text) header."""
    return f"PROXY TCP4 {source} 10.0.0.1 {port} 9000\r\n".encode()


class Proxied:
    """One connection accepted from the balancer through a `ProxyHeaderFactory`."""

    def __init__(self, factory: ProxyHeaderFactory) -> None:
        protocol = factory.buildProtocol(BALANCER)
        assert protocol is not None, "refused as it was accepted"
        self.protocol = protocol
        self.transport = StringTransport(peerAddress=BALANCER)
        protocol.makeConnection(self.transport)
        self.lost = False

    @property
    def inner(self) -> Any:
        """The lot-side protocol under the proxy and guard wrappers."""
        protocol = self.protocol.wrappedProtocol
        while isinstance(protocol, ProtocolWrapper):
            protocol = protocol.wrappedProtocol
        return protocol

    def send(self, data: bytes) -> None:
        self.protocol.dataReceived(data)

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def lose(self) -> None:
        """What the reactor does once the socket has closed (once)."""
        if not self.lost:
            self.lost = True
            self.protocol.connectionLost(Failure(ConnectionDone()))


@pytest.fixture
def downlink() -> Iterator[tuple[Gateway, ProxyHeaderFactory, ConnectionGuard]]:
    """The standard downlink behind `haproxy:`: Downlinks, its guard (2 unbound per peer) and the wrapper."""
    gateway = Gateway(tcp={"bind_timeout": 5})
    guard = ConnectionGuard("downlink", clock=gateway.clock, max_per_peer=2, max_total=100, proxied=True)
    factory = ProxyHeaderFactory(GuardedFactory(gateway.factory, guard))
    gateway.downlinks.start()
    yield gateway, factory, guard
    gateway.downlinks.stop()


def login_frame() -> bytes:
    """lot001's login, as one downlink frame."""
    data = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
    signature = sign(compact(data), "", "s3cret")
    return encode_frame({"token": "", "code": "login", "oprNum": "o1", "signature": signature, "data": data})


def test_the_per_peer_cap_counts_the_lots_address_as_soon_as_the_header_is_read(downlink: Any) -> None:
    """Header-only connections count under the address the header names; over the cap one is closed at once.

    The balancer's own address is never capped, whatever number of lots it carries.
    """
    _, factory, guard = downlink
    held = [Proxied(factory) for _ in range(3)]
    assert guard.by_peer == {} and guard.open == 3  # the header is not read yet: only the total counts
    for number, connection in enumerate(held):
        connection.send(header_v2(port=40000 + number))
    assert [c.closed for c in held] == [False, False, True]
    assert guard.by_peer == {LOT: 2} and guard.refused["per_peer"] == 1
    other = Proxied(factory)
    other.send(header_v1("192.0.2.8"))
    assert not other.closed and guard.by_peer == {LOT: 2, "192.0.2.8": 1}
    for connection in [*held, other]:
        connection.lose()
    assert guard.open == 0 and guard.by_peer == {}


def test_a_header_with_the_first_frame_in_one_read_is_counted_once(downlink: Any) -> None:
    """Header and data in one read: placed once; over the cap the data never reaches the lot side."""
    _, factory, guard = downlink
    held = [Proxied(factory) for _ in range(3)]
    for connection in held:
        connection.send(header_v2() + b"$$garbage")
    assert [c.closed for c in held] == [False, False, True]
    assert guard.by_peer == {LOT: 2} and guard.refused["per_peer"] == 1
    assert [c.inner.unbound_bytes for c in held] == [9, 9, 0]
    for connection in held:
        connection.lose()
    assert guard.open == 0 and guard.by_peer == {}


def test_a_bound_lot_is_journaled_logged_and_shown_with_its_own_address(downlink: Any) -> None:
    """Its online record, its bind's log line and its state's peer name the lot's address."""
    gateway, factory, guard = downlink
    connection = Proxied(factory)
    with captured() as events:
        connection.send(header_v2(port=41234) + login_frame())
    [answer] = [m for m in connection.transport.value().split(b"$$") if b"resultCode" in m]
    assert b'"0000"' in answer
    assert guard.by_peer == {}  # bound: no longer counted against its address
    assert gateway.downlinks.state("P001").peer == f"{LOT}:41234"
    online = [r for r in gateway.journal.records if r.kind == ONLINE_RECORD]
    assert online and online[0].body["peer"] == f"{LOT}:41234"
    texts = [str(e.get("peer", "")) for e in events if e.get("peer")]
    assert texts and all(LOT in text for text in texts)
    assert not any("10.9.9.9" in str(e) for e in events)
    connection.lose()
    assert guard.open == 0


@pytest.mark.parametrize(
    "sent",
    [b"", header_v2()[:20], header_v2()],
    ids=["nothing", "half a header", "a header and nothing more"],
)
def test_a_connection_that_never_binds_is_closed_at_bind_timeout(downlink: Any, sent: bytes) -> None:
    """No header, half a header or only a header: the downlink's bind_timeout closes it, and its counts go."""
    gateway, factory, guard = downlink
    connection = Proxied(factory)
    if sent:
        connection.send(sent)
    gateway.clock.advance(4)
    assert not connection.closed
    gateway.clock.advance(1)
    assert connection.closed and gateway.downlinks.counters["closed_unbound"] == 1
    connection.lose()
    assert guard.open == 0 and guard.by_peer == {}


def test_what_is_not_a_proxy_header_is_closed_at_once(downlink: Any) -> None:
    """A peer that reaches the proxied port directly and speaks the downlink is closed, nothing decoded."""
    _, factory, guard = downlink
    connection = Proxied(factory)
    connection.send(login_frame())
    assert connection.closed and connection.inner.unbound_bytes == 0
    connection.lose()
    assert guard.open == 0


def test_a_header_that_never_ends_is_cut_at_max_proxy_header(downlink: Any) -> None:
    """A version 2 header may declare 64 KiB: past MAX_PROXY_HEADER bytes still unfinished, it is closed."""
    _, factory, guard = downlink
    connection = Proxied(factory)
    connection.send(V2_SIGNATURE + b"\x21\x11" + struct.pack("!H", 65000))
    sent = 16
    while not connection.closed and sent < 65000:
        connection.send(b"\0" * 512)
        sent += 512
    assert connection.closed and sent <= MAX_PROXY_HEADER + 512
    connection.lose()
    assert guard.open == 0 and guard.by_peer == {}


# the HTTP uplink


def uplink(clock: Clock, **limits: Any) -> tuple[UplinkSite, ProxyHeaderFactory]:
    """An uplink site behind `haproxy:`, and the wrapper its listener puts around it."""
    site = UplinkSite(
        UplinkEndpoint(Answering(), 10**9),  # type: ignore[arg-type]
        reactor=clock,
        limits=HttpLimits(**limits),
        proxied=True,
    )
    return site, ProxyHeaderFactory(site)


def test_the_uplinks_per_peer_cap_counts_the_lots_address_from_its_header() -> None:
    """On the HTTP uplink too, header-only connections count under the lot; the third is closed."""
    clock = Clock()
    site, factory = uplink(clock, max_connections_per_peer=2)
    held = [Proxied(factory) for _ in range(3)]
    for connection in held:
        connection.send(header_v2())
    assert [c.closed for c in held] == [False, False, True]
    assert site.guard.by_peer == {LOT: 2} and site.guard.refused["per_peer"] == 1
    for connection in held:
        connection.lose()
    assert site.guard.open == 0 and site.guard.by_peer == {}


@pytest.mark.parametrize("sent", [b"", header_v2()], ids=["no header", "a header and no request"])
def test_an_uplink_connection_without_a_request_is_closed_at_header_timeout(sent: bytes) -> None:
    """Without a header, or with one and no request head, header_timeout closes it and counts it."""
    clock = Clock()
    site, factory = uplink(clock, header_timeout=10)
    connection = Proxied(factory)
    if sent:
        connection.send(sent)
    clock.advance(9.9)
    assert not connection.closed
    clock.advance(0.1)
    assert connection.closed and site.guard.refused["header_timeout"] == 1
    connection.lose()
    assert site.guard.open == 0 and site.guard.by_peer == {}


def test_an_uplink_refusal_is_logged_with_the_lots_address() -> None:
    """A request answered with an error logs the peer the header named, not the balancer."""
    clock = Clock()
    _, factory = uplink(clock)
    connection = Proxied(factory)
    body = b"nothing=here"
    with captured("lot.rejected") as events:
        connection.send(
            header_v2(port=41000)
            + HEAD.replace(b"application/json", b"application/x-www-form-urlencoded")
            + b"Content-Length: %d\r\n\r\n" % len(body)
            + body
        )
    assert b"HTTP/1.1 200" in connection.transport.value()
    assert [e["peer"] for e in events] == [f"{LOT}:41000"]
    connection.lose()


def test_a_haproxy_listener_wraps_its_factory_in_the_bounded_proxy_wrapper() -> None:
    """`haproxy:tcp:…` listens on the inner endpoint with `ProxyHeaderFactory` around the given factory."""
    reactor = MemoryReactor()
    factory = Factory()
    listener = Listener("downlink", "haproxy:tcp:9000:interface=127.0.0.1", factory, reactor)
    listener.startService()
    try:
        [(port, wrapped, _, interface)] = reactor.tcpServers
        assert (port, interface) == (9000, "127.0.0.1")
        assert isinstance(wrapped, ProxyHeaderFactory) and wrapped.wrappedFactory is factory
        [service] = list(listener)
        assert isinstance(service, StreamServerEndpointService)
    finally:
        listener.stopService()
    plain = Listener("downlink", "tcp:9001", factory, reactor)
    plain.startService()
    try:
        assert reactor.tcpServers[-1][1] is factory
    finally:
        plain.stopService()


class LateBinding(Protocol):
    """A lot side that binds as the downlink does after a password check: later, answering just before."""

    bound_at: float | None = None

    def __init__(self, clock: Clock) -> None:
        self.clock = clock

    def dataReceived(self, data: bytes) -> None:
        self.clock.callLater(0.06, self.logged_in)

    def logged_in(self) -> None:
        assert self.transport is not None
        self.transport.write(b"$$reply##")
        self.bound_at = self.clock.seconds()


def test_a_lot_that_binds_after_its_password_check_no_longer_counts_against_its_address() -> None:
    """Bound once its answer is written, without sending more: its address's share is free again."""
    clock = Clock()
    guard = ConnectionGuard("downlink", clock=clock, max_per_peer=1, max_total=10, proxied=True)
    lot_side = Factory()
    lot_side.buildProtocol = lambda addr: LateBinding(clock)  # type: ignore[method-assign]
    factory = ProxyHeaderFactory(GuardedFactory(lot_side, guard))
    first = Proxied(factory)
    first.send(header_v2() + b"$$login##")
    assert guard.by_peer == {LOT: 1}
    clock.advance(0.06)
    assert first.transport.value() == b"$$reply##"
    clock.advance(0)
    assert guard.by_peer == {} and guard.open == 1
    second = Proxied(factory)
    second.send(header_v2(port=40001))
    assert not second.closed and guard.by_peer == {LOT: 1}
    for connection in (first, second):
        connection.lose()
    assert guard.open == 0 and guard.by_peer == {} and not clock.getDelayedCalls()

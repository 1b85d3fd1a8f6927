"""The file-descriptor limit is raised at start; each listener's connections are capped by peer and in all."""

from __future__ import annotations

import resource

import pytest
from attrs import define
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet.address import IPv4Address
from twisted.internet.error import ConnectionDone
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactor, StringTransport
from twisted.logger import LogEvent, globalLogPublisher
from twisted.python.failure import Failure

from gateway.limits import (
    BACKLOG,
    REFUSAL_LOG_INTERVAL,
    RESERVED,
    ConnectionGuard,
    GuardedFactory,
    Listener,
    proxied,
    raise_fd_limit,
    register_guards,
    with_backlog,
)
from gateway.logs import RecentRejections

INFINITY = resource.RLIM_INFINITY


@define
class FakeLimits:
    """The resource module's NOFILE limits, in memory; `refuse` makes setrlimit fail as Linux can."""

    soft: int
    hard: int
    refuse: bool = False
    RLIMIT_NOFILE: int = resource.RLIMIT_NOFILE
    RLIM_INFINITY: int = INFINITY

    def getrlimit(self, which: int, /) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int], /) -> None:
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = limits


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    """A soft limit of 1024 under a hard one of 524288 becomes 524288, with room for that less the reserve."""
    limits = FakeLimits(1024, 524288)
    limit = raise_fd_limit(limits)
    assert (limits.soft, limits.hard) == (524288, 524288)
    assert (limit.before, limit.after, limit.problem) == (1024, 524288, "")
    assert limit.lots == 524288 - RESERVED


def test_an_unlimited_hard_limit_is_capped() -> None:
    """An unlimited hard limit raises the soft one to 1048576, which Linux accepts, not to infinity."""
    limits = FakeLimits(1024, INFINITY)
    assert raise_fd_limit(limits).after == 1048576
    assert limits.soft == 1048576 and limits.hard == INFINITY


def test_a_soft_limit_already_at_the_hard_one_is_left() -> None:
    """Nothing is set when the soft limit is the hard one already."""
    limits = FakeLimits(4096, 4096, refuse=True)
    limit = raise_fd_limit(limits)
    assert (limit.before, limit.after, limit.problem) == (4096, 4096, "")


def test_a_refusal_is_reported_not_raised() -> None:
    """When the system refuses, the limit stays and the reason is kept for the log."""
    limit = raise_fd_limit(FakeLimits(1024, 65536, refuse=True))
    assert (limit.after, limit.lots) == (1024, 1024 - RESERVED)
    assert "not allowed" in limit.problem


def test_the_real_limit_can_be_raised_in_this_process() -> None:
    """On this machine the call succeeds and leaves the soft limit at the hard one (or the cap)."""
    limit = raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit.problem == "" and soft == limit.after
    assert soft == hard or (hard == INFINITY and soft == 1048576)


# connection caps (CONTRACT §4)


class Counting(Protocol):
    """A lot-side protocol stand-in: counts what it is told."""

    made = 0
    received = b""
    lost = 0
    bound_at: float | None = None

    def connectionMade(self) -> None:
        self.made += 1

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        if b"bind" in data:
            self.bound_at = 1.0

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost += 1


def guarded(clock: Clock, per_peer: int, total: int, proxy: bool = False) -> GuardedFactory:
    guard = ConnectionGuard("downlink", clock=clock, max_per_peer=per_peer, max_total=total, proxied=proxy)
    return GuardedFactory(Factory.forProtocol(Counting), guard)


def open_from(
    factory: GuardedFactory, host: str, port: int = 1, peer: str | None = None
) -> StringTransport | None:
    """Accept a connection from host:port as a port would; `peer` is what getPeer says later (a proxy's)."""
    address = IPv4Address("TCP", host, port)
    protocol = factory.buildProtocol(address)
    if protocol is None:
        return None
    transport = StringTransport(peerAddress=IPv4Address("TCP", peer or host, port))
    protocol.makeConnection(transport)
    transport.protocol = protocol
    return transport


def lose(transport: StringTransport) -> None:
    transport.protocol.connectionLost(Failure(ConnectionDone()))


def test_a_tcp_listener_holds_at_most_its_caps_and_frees_them_as_connections_close() -> None:
    """Over the per-peer or total cap, a TCP connection is refused before the lot side sees it."""
    factory = guarded(Clock(), per_peer=2, total=3)
    held = [open_from(factory, "10.0.0.1", port) for port in range(3)]
    assert held[2] is None  # per peer
    held.append(open_from(factory, "10.0.0.2"))
    assert open_from(factory, "10.0.0.3") is None  # in all
    guard = factory.guard
    assert guard.open == 3 and guard.by_peer == {"10.0.0.1": 2, "10.0.0.2": 1}
    assert guard.refused["per_peer"] == 1 and guard.refused["total"] == 1
    kept = [t for t in held if t is not None]
    inner = [t.protocol.wrappedProtocol for t in kept]  # type: ignore[attr-defined]
    assert [p.made for p in inner] == [1, 1, 1]
    kept[0].protocol.dataReceived(b"$$")  # type: ignore[attr-defined]
    assert inner[0].received == b"$$"
    for transport in kept:
        lose(transport)
    assert guard.open == 0 and guard.by_peer == {}
    assert [p.lost for p in inner] == [1, 1, 1]
    assert open_from(factory, "10.0.0.3") is not None


def test_lots_that_have_bound_no_longer_count_against_their_address() -> None:
    """Many lots behind one address may hold their connections: the per-peer cap is on unbound ones."""
    factory = guarded(Clock(), per_peer=2, total=5)
    held = [open_from(factory, "10.0.0.1", port) for port in range(2)]
    assert open_from(factory, "10.0.0.1", 2) is None
    for transport in held:
        assert transport is not None
        transport.protocol.dataReceived(b"bind")  # type: ignore[attr-defined]
    assert factory.guard.by_peer == {} and factory.guard.open == 2
    held += [open_from(factory, "10.0.0.1", port) for port in range(2, 6)]
    assert [t is not None for t in held] == [True, True, True, True, False, False]
    assert factory.guard.by_peer == {"10.0.0.1": 2} and factory.guard.open == 4
    assert factory.guard.refused["per_peer"] == 3 and factory.guard.refused["total"] == 0
    for transport in held:
        if transport is not None:
            lose(transport)
    assert factory.guard.open == 0 and factory.guard.by_peer == {}


def test_behind_a_proxy_a_tcp_connection_is_placed_under_its_peer_on_its_first_bytes() -> None:
    """The balancer's address is not capped; a lot site's third connection is closed, nothing passed on."""
    factory = guarded(Clock(), per_peer=2, total=10, proxy=True)
    held = [open_from(factory, "10.9.9.9", port, peer="192.0.2.7") for port in range(3)]
    for transport in held:
        assert transport is not None
        transport.protocol.dataReceived(b"$ping#")  # type: ignore[attr-defined]
    assert [t.disconnected for t in held if t is not None] == [False, False, True]
    assert held[2] is not None and held[2].protocol.wrappedProtocol.received == b""  # type: ignore[attr-defined]
    assert factory.guard.by_peer == {"192.0.2.7": 2} and factory.guard.open == 3
    for transport in held:
        assert transport is not None
        lose(transport)
    assert factory.guard.open == 0 and factory.guard.by_peer == {}


def test_a_flood_of_refusals_is_one_log_line_a_minute_and_every_one_is_counted() -> None:
    """10,000 refusals in a minute log one connection.refused line; the next says how many since."""
    clock = Clock()
    guard = ConnectionGuard("uplink", clock=clock, max_per_peer=1, max_total=10)
    events: list[LogEvent] = []
    recent = RecentRejections()
    globalLogPublisher.addObserver(events.append)
    globalLogPublisher.addObserver(recent)
    try:
        for _ in range(10_000):
            guard.note("per_peer", "10.0.0.1", 1)
            clock.advance(REFUSAL_LOG_INTERVAL / 10_001)
        clock.advance(REFUSAL_LOG_INTERVAL)
        guard.note("per_peer", "10.0.0.1" * 1000, 1)
    finally:
        globalLogPublisher.removeObserver(events.append)
        globalLogPublisher.removeObserver(recent)
    logged = [e for e in events if e.get("event") == "connection.refused"]
    assert [e["count"] for e in logged] == [1, 10_000]
    assert guard.refused["per_peer"] == 10_001
    assert len(logged[1]["peer"]) < 100 and logged[1]["listener"] == "uplink"
    # The status page's rejections show the two lines, not ten thousand entries.
    assert [(r["event"], r["count"], r["listener"]) for r in recent.recent()] == [
        ("connection.refused", 10_000, "uplink"),
        ("connection.refused", 1, "uplink"),
    ]
    reason = str(recent.recent()[0]["reason"])
    assert reason.startswith("uplink: 10000 refused, per_peer (limit 1), the last from 10.0.0.1")


def test_the_guards_are_metrics() -> None:
    """Each listener's open connections and refusals by kind are exposed for Prometheus."""
    factory = guarded(Clock(), per_peer=1, total=5)
    open_from(factory, "10.0.0.1")
    open_from(factory, "10.0.0.1")
    registry = CollectorRegistry()
    register_guards(registry, [factory.guard])
    text = generate_latest(registry).decode()
    assert 'cpmi_listener_connections{listener="downlink"} 1.0' in text
    assert 'cpmi_listener_refused_total{limit="per_peer",listener="downlink"} 1.0' in text
    assert 'cpmi_listener_refused_total{limit="body_size",listener="downlink"} 0.0' in text


def test_haproxy_endpoints_are_proxied() -> None:
    """A listener takes the PROXY protocol when its endpoint description says haproxy."""
    assert proxied("haproxy:tcp:8080") and proxied(" HAProxy:tcp:8080")
    assert not proxied("tcp:8080") and not proxied("ssl:8443:privateKey=k.pem")


def _backlog_listened(description: str) -> tuple[int, int, str]:
    """Start a Listener on `description` on a MemoryReactor: (port, backlog, interface) it listened with."""
    reactor = MemoryReactor()
    listener = Listener("uplink", description, Factory.forProtocol(Protocol), reactor)
    listener.startService()
    try:
        [(port, _factory, backlog, interface)] = reactor.tcpServers
    finally:
        listener.stopService()
    return port, backlog, interface


@pytest.mark.parametrize(
    ("description", "listened"),
    [
        ("tcp:8080", (8080, BACKLOG, "")),
        ("tcp:port=8080:interface=127.0.0.1", (8080, BACKLOG, "127.0.0.1")),
        ("haproxy:tcp:8080", (8080, BACKLOG, "")),
        ("tcp:8080:backlog=7", (8080, 7, "")),
        (r"haproxy:tcp:8080:backlog=4096:interface=\:\:1", (8080, 4096, "::1")),
    ],
)
def test_a_listener_listens_with_a_deep_backlog_unless_told(
    description: str, listened: tuple[int, int, str]
) -> None:
    """A listener whose description names no backlog listens with BACKLOG (not Twisted's 50), a
    `haproxy:` one too; an explicit `backlog=` is the one listened with."""
    assert BACKLOG == 1024
    assert _backlog_listened(description) == listened


def test_a_listener_keeps_the_operators_description() -> None:
    """The backlog is added only to what is listened on: the listener reports the operator's description."""
    listener = Listener("uplink", "tcp:8080", Factory.forProtocol(Protocol), MemoryReactor())
    assert listener.description == "tcp:8080"


@pytest.mark.parametrize(
    ("description", "built"),
    [
        ("unix:/run/gw.sock", "unix:/run/gw.sock:backlog=1024"),
        ("systemd:domain=INET:index=0", "systemd:domain=INET:index=0"),
        ("tcp:8080:backlog=3", "tcp:8080:backlog=3"),
    ],
)
def test_the_backlog_is_added_only_where_the_endpoint_takes_one(description: str, built: str) -> None:
    """tcp, tcp6, ssl and unix endpoints take `backlog=`; others (systemd's sockets) are left as written."""
    assert with_backlog(description) == built

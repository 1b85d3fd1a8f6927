"""The one connection registry and the bind lifecycle, shared by the standard's downlink and bolink."""

from __future__ import annotations

from attrs import define
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.interfaces import LotState
from gateway.lots.connections import Bind, Registry
from gateway.lots.tcp import DownlinkFactory
from tests.lots.test_tcp import Recorder


@define(eq=False)
class Peer:
    """A connection as the registry reads it."""

    peer: str
    last_read: float = 0.0
    bound_at: float | None = None


def test_a_bound_connection_is_its_lots_until_released() -> None:
    """bind makes a connection its lot's (no longer unbound); release lets it go and remembers it."""
    registry: Registry[Peer] = Registry()
    first, second = Peer("192.0.2.1:1", last_read=5.0), Peer("192.0.2.2:2")
    registry.opened(first)
    registry.opened(second)
    assert registry.unbound() == [first, second]
    first.bound_at = 3.0
    registry.bind(first, "P1")
    assert registry.unbound() == [second]
    assert registry.lot("P1") is first and registry.holds(first, "P1")
    assert registry.state("P1") == LotState("P1", True, 3.0, 5.0, "192.0.2.1:1")
    assert registry.release(first, "P1") is True
    assert registry.lot("P1") is None
    assert registry.state("P1") == LotState("P1", False, None, 5.0, "192.0.2.1:1")


def test_releasing_a_replaced_connection_leaves_the_new_one_bound() -> None:
    """Once a lot's new connection is bound, releasing the old one does not unbind the new one."""
    registry: Registry[Peer] = Registry()
    old, new = Peer("192.0.2.1:1", last_read=1.0), Peer("192.0.2.1:2", last_read=2.0)
    registry.bind(old, "P1")
    registry.bind(new, "P1")
    assert registry.release(old, "P1") is False
    assert registry.lot("P1") is new
    assert registry.bound() == [("P1", new)]


def test_a_forgotten_connection_is_no_longer_unbound() -> None:
    """A connection lost before it bound leaves the unbound ones (the bind-timeout sweep's list)."""
    registry: Registry[Peer] = Registry()
    lost = Peer("192.0.2.1:1")
    registry.opened(lost)
    registry.forget(lost)
    assert registry.unbound() == []
    assert registry.state("P1") == LotState("P1", False, None, None, "")


def test_the_downlink_protocol_walks_the_bind_lifecycle() -> None:
    """A connection opens UNBOUND; settle() ends BINDING by whether it has a lot; close() makes it CLOSING."""
    factory = DownlinkFactory(Recorder(), Clock(), 1000)
    connection = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
    connection.makeConnection(StringTransport())
    assert connection.phase is Bind.UNBOUND
    connection.phase = Bind.BINDING
    connection.settle()
    assert connection.phase is Bind.UNBOUND
    connection.phase = Bind.BINDING
    connection.park = "P1"
    connection.settle()
    assert connection.phase is Bind.BOUND
    connection.close("done")
    assert connection.phase is Bind.CLOSING
    connection.settle()
    assert connection.phase is Bind.CLOSING
    connection.send(b"$$x##*")
    assert connection.transport.value() == b""  # type: ignore[union-attr]


def test_a_lot_seen_over_http_is_last_seen_then_whichever_is_later() -> None:
    """seen (an HTTP uplink) sets an unbound lot's last seen; a bound one shows the later of it and its
    connection's last read, and releasing an older connection does not move last seen back."""
    registry: Registry[Peer] = Registry()
    registry.seen("P1", 10.0)
    assert registry.state("P1") == LotState("P1", False, None, 10.0, "")
    connection = Peer("192.0.2.1:1", last_read=12.0, bound_at=11.0)
    registry.bind(connection, "P1")
    assert registry.state("P1").last_seen == 12.0
    registry.seen("P1", 15.0)
    assert registry.state("P1").last_seen == 15.0
    registry.release(connection, "P1")
    assert registry.state("P1") == LotState("P1", False, None, 15.0, "192.0.2.1:1")
    connection.last_read = 20.0
    registry.release(connection, "P1")
    assert registry.state("P1").last_seen == 20.0

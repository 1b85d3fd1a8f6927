"""Test doubles: an uplink that answers as told, endpoints on StringTransport or iosim."""

from __future__ import annotations

import random
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.interfaces import IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.test import iosim
from zope.interface import implementer

from gateway.lotclient.credentials import LotCredentials
from gateway.protocol.envelope import Reply
from gateway.simulator.lot import LotModel, SimulatedLot
from gateway.simulator.stats import Stats
from gateway.simulator.traffic import Layout, Traffic

ZONE = ZoneInfo("Asia/Shanghai")
START = 1795480200.0  # 2026-11-24 08:30:00 in Shanghai
CREDENTIALS = LotCredentials("P001", "lot001", "lot-password", "s3cret")


def response(code: str, opr: str = "", result: str = "0000", data: object = None) -> Reply:
    """A response envelope as the gateway would answer."""
    return Reply(code, opr, result, "", "", {} if data is None else data, "")


class FakeUplink:
    """An uplink that records what is sent and answers 0000, a result code of the test's, or fails."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.sent: list[tuple[float, str, Any, str]] = []
        self.heartbeats = 0
        self.down = False
        self.results: dict[str, str] = {}  # code -> resultCode to answer
        self.token = "0123456789abcdef0123456789abcdef"
        self._count = 0

    def new_opr(self) -> str:
        self._count += 1
        return f"opr-{self._count}"

    def login(self) -> Deferred[Reply]:
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed(response("login", data={"token": self.token, "parkCode": "P001"}))

    def send(self, code: str, data: object, opr: str | None = None) -> Deferred[Reply]:
        opr = opr or self.new_opr()
        self.sent.append((self.clock.seconds(), code, data, opr))
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed(response(code, opr, self.results.get(code, "0000")))

    def heartbeat(self) -> Deferred[Reply]:
        self.heartbeats += 1
        if self.down:
            return fail(ConnectionRefusedError())
        return succeed(response("heartbeat", data={"time": ""}))

    def codes(self) -> list[str]:
        """The codes sent, in order (retries included)."""
        return [code for _, code, _, _ in self.sent]


def simulated_lot(
    seed: int = 7, retry_interval: float = 600.0, heartbeat_interval: float = 30.0, occupancy: float = 0.5
) -> tuple[SimulatedLot, FakeUplink, Clock, Stats]:
    """A started lot (logged in, set-up reported) on a Clock and a FakeUplink."""
    clock = Clock()
    clock.advance(START)
    uplink = FakeUplink(clock)
    stats = Stats()
    rng = random.Random(seed)
    traffic = Traffic(Layout.generate("P001", rng), rng, ZONE)
    lot = SimulatedLot(
        credentials=CREDENTIALS,
        uplink=uplink,
        model=LotModel(traffic, rng, ZONE),
        clock=clock,
        stats=stats,
        rng=rng,
        retry_interval=retry_interval,
        heartbeat_interval=heartbeat_interval,
        occupancy=occupancy,
    )
    started: list[bool] = []
    lot.start().addCallback(started.append)
    assert started == [True]
    return lot, uplink, clock, stats


@implementer(IStreamClientEndpoint)
class ScriptedEndpoint:
    """Refuses connections while `refuse` is set; otherwise connects the protocol to a StringTransport."""

    def __init__(self) -> None:
        self.refuse = False
        self.attempts = 0
        self.connections: list[tuple[Protocol, StringTransport]] = []

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        self.attempts += 1
        if self.refuse:
            return fail(ConnectionRefusedError())
        protocol = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 9000))
        assert isinstance(protocol, Protocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.connections.append((protocol, transport))
        return succeed(protocol)


@implementer(IStreamClientEndpoint)
class PumpEndpoint:
    """Connects to a server factory in memory over an iosim pump."""

    def __init__(self, server: IProtocolFactory) -> None:
        self.server = server
        self.pump: iosim.IOPump | None = None

    def connect(self, factory: IProtocolFactory) -> Deferred[Any]:
        address = IPv4Address("TCP", "127.0.0.1", 40000)
        server = self.server.buildProtocol(address)
        client = factory.buildProtocol(address)
        server_transport = iosim.FakeTransport(server, isServer=True)
        client_transport = iosim.FakeTransport(client, isServer=False)
        self.pump = iosim.connect(server, server_transport, client, client_transport)
        return succeed(client)

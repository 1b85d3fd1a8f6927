"""
The `acme` dialect: lots running ACME ParkSoft, which speaks lines of text on a TCP port of its own.

A lot says ``HELLO <park> <secret>`` once, then ``IN <park> <plate> <recordCode>``
for each car that enters; each becomes the standard's ``carIn``. Every line is
answered ``OK`` or ``ERR <why>``, in the order the lines came. ParkSoft takes
no commands, so no downlink is supported.
"""

from __future__ import annotations

import hashlib
import hmac

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.plugin import IPlugin
from twisted.protocols.basic import LineOnlyReceiver
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.config import LotConfig
from gateway.dialects.interface import (
    IDialect,
    IDialectHost,
    IDialectServer,
    LotReply,
    LotState,
    Message,
    Original,
    Unsupported,
)
from gateway.lots.answers import Answer
from gateway.protocol.results import Result

__all__ = ["AcmeConnection", "AcmeDialect", "AcmeFactory", "AcmeServer", "acme"]

log = Logger()

NAME = "acme"
USAGE = "expected HELLO <park> <secret> or IN <park> <plate> <recordCode>"


class AcmeConnection(LineOnlyReceiver):
    """One lot's connection: turns lines into calls of the server, and its answers into lines, in order."""

    delimiter = b"\n"
    MAX_LENGTH = 1024

    def __init__(self, server: AcmeServer, peer: str) -> None:
        self.server = server
        self.peer = peer
        self.park: str | None = None
        self.since = self.last_read = server.host.clock.seconds()
        self._answered: Deferred[None] = succeed(None)

    def connectionMade(self) -> None:
        self.server.connection_made(self)

    def lineReceived(self, line: bytes) -> None:
        self.last_read = self.server.host.clock.seconds()
        try:
            text = line.rstrip(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            self.answer(succeed("ERR the line is not UTF-8"))
            return
        self.answer(self.server.line_received(self, text))

    def answer(self, outcome: Deferred[str]) -> None:
        """Write `outcome` once it and every earlier answer are written (a carIn waits for the disk)."""
        self._answered.addCallback(lambda _: outcome).addCallback(self._write).addErrback(self._failed)

    def _write(self, answer: str) -> None:
        if self.transport is not None:
            self.transport.write(answer.encode("utf-8") + b"\n")

    def _failed(self, failure: Failure) -> None:
        log.failure("answering a line from {peer} failed", failure, peer=self.peer)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.server.connection_lost(self, f"closed: {reason.getErrorMessage()}")


class AcmeFactory(ServerFactory):
    """Makes a connection for each lot that connects to [listen] acme."""

    noisy = False

    def __init__(self, server: AcmeServer) -> None:
        self.server = server

    def buildProtocol(self, addr: IAddress | None) -> AcmeConnection:
        peer = f"{addr.host}:{addr.port}" if isinstance(addr, IPv4Address | IPv6Address) else str(addr)
        return AcmeConnection(self.server, peer)


@implementer(IDialectServer)
class AcmeServer:
    """The ParkSoft lots' connections: HELLOs, entries, and which lot is connected."""

    def __init__(self, host: IDialectHost) -> None:
        self.host = host
        self._bound: dict[str, AcmeConnection] = {}
        self._connections: set[AcmeConnection] = set()

    def factory(self, listener: str) -> ServerFactory:
        if listener != NAME:
            raise KeyError(listener)
        return AcmeFactory(self)

    def supports(self, code: str) -> bool:
        return False

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        return fail(Unsupported(NAME, code))

    def state(self, park: str) -> LotState:
        connection = self._bound.get(park)
        if connection is not None:
            return LotState(park, True, connection.since, connection.last_read, connection.peer)
        return LotState(park, False, None, None, "")

    def disconnect(self, park: str, reason: str) -> bool:
        connection = self._bound.get(park)
        if connection is None:
            return False
        self._unbind(connection, reason)
        if connection.transport is not None:
            connection.transport.loseConnection()
        return True

    def start(self) -> None:
        pass

    def stop(self) -> None:
        for connection in list(self._connections):
            self._unbind(connection, "gateway stopping")
            if connection.transport is not None:
                connection.transport.loseConnection()

    def connection_made(self, connection: AcmeConnection) -> None:
        self._connections.add(connection)

    def line_received(self, connection: AcmeConnection, line: str) -> Deferred[str]:
        """The answer to one line from `connection`: ``OK`` or ``ERR <why>``."""
        match line.split():
            case ["HELLO", park, secret]:
                lot = self.host.lot(park)
                if lot is None or not hmac.compare_digest(lot.secret.encode(), secret.encode()):
                    return succeed(f"ERR HELLO: {park} is not an acme lot here, or the secret is wrong")
                if connection.park != park:
                    self._unbind(connection, f"said HELLO as {park}")
                    self._bind(connection, park)
                return succeed("OK")
            case ["IN", park, plate, record_code]:
                if connection.park != park:
                    return succeed(f"ERR IN: say HELLO {park} <secret> first")
                return self._car_in(park, plate, record_code, line)
            case _:
                return succeed(f"ERR {USAGE}")

    def _car_in(self, park: str, plate: str, record_code: str, line: str) -> Deferred[str]:
        opr = f"IN:{record_code}"
        if len(opr) > 32:  # Original.opr's limit: the record code's digest is its identity still
            opr = hashlib.md5(opr.encode("utf-8")).hexdigest()
        original = Original(service="IN", opr=opr, message={"line": line})
        car_in = Message(
            "carIn",
            {"recordCode": record_code, "carNum": plate},
            {"recordCode": "recordCode", "carNum": "plate"},
        )

        def answered(outcome: Answer) -> str:
            return "OK" if outcome.result is Result.OK else f"ERR {outcome.message}"

        return self.host.submit(park, original, [car_in]).addCallback(answered)

    def _bind(self, connection: AcmeConnection, park: str) -> None:
        old = self._bound.get(park)
        if old is not None:
            self._unbind(old, f"replaced by a connection from {connection.peer}")
            if old.transport is not None:
                old.transport.loseConnection()
        connection.park, connection.since = park, self.host.clock.seconds()
        self._bound[park] = connection
        self.host.online(park, connection.peer, "HELLO")

    def _unbind(self, connection: AcmeConnection, reason: str) -> None:
        park, connection.park = connection.park, None
        if park is not None and self._bound.get(park) is connection:
            del self._bound[park]
            self.host.offline(park, connection.peer, reason)

    def connection_lost(self, connection: AcmeConnection, reason: str) -> None:
        self._connections.discard(connection)
        self._unbind(connection, reason)


@implementer(IPlugin, IDialect)
class AcmeDialect:
    """ACME ParkSoft: HELLO and IN lines on a TCP port of its own."""

    name = NAME
    listeners = (NAME,)
    summary = "lots running ACME ParkSoft: HELLO/IN lines on [listen] acme; entries become carIn"

    def check_lot(self, lot: LotConfig) -> str | None:
        if not lot.secret:
            return "secret: must not be empty: an acme lot says it in its HELLO"
        return None

    def serve(self, host: IDialectHost) -> AcmeServer:
        return AcmeServer(host)


acme = AcmeDialect()

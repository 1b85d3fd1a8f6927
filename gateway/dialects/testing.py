"""
A test kit for dialects: serve one in memory and check what it made against the journal and catalog.

A vendor's tests build a `DialectRig` around their dialect, connect a lot over a
``StringTransport``, feed it what their lot software sends, and check the
answers on the wire, the records in the (in-memory) journal, the CloudEvents the
cloud would get, and that every standard message passes the catalog::

    rig = DialectRig(acme, lots=[{"park_code": "P1", "secret": "s", "dialect": "acme"}])
    lot = rig.connect()
    lot.send(b'...a legacy entry...')
    assert rig.codes() == ["carIn"]
    rig.check_catalog()

Everything runs on a ``Clock``; nothing touches the network or the disk. No
pytest import here: the module is imported when plugins are looked for.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

from attrs import define, field
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from gateway.cloud.events import to_event
from gateway.config import Config, parse
from gateway.dialects.host import DialectHost, GatewayParts
from gateway.dialects.interface import IDialect, IDialectServer
from gateway.dialects.standard import standard
from gateway.interfaces import LotReply
from gateway.journal.kinds import LEGACY_RECORD, UPLINK_RECORD
from gateway.journal.record import Record
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.protocol.catalog import lookup
from gateway.protocol.validation import FieldError, validate

__all__ = ["DialectRig", "LotPeer", "MemoryJournal"]

START = 1_700_000_000.0
"""The rig's clock starts here: 2023-11-14T22:13:20Z, 2023-11-15 06:13:20 in Asia/Shanghai."""


@define
class MemoryJournal:
    """The journal in memory: real `Record` values, durable at once unless held or broken.

    `hold` keeps appends pending until `release` (to see that nothing is answered
    before it is durable); `broken` fails every append with that exception.
    """

    clock: Clock
    records: list[Record] = field(factory=list)
    hold: bool = False
    broken: Exception | None = None
    pending: list[tuple[Deferred[Record], Record]] = field(factory=list)

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        if self.broken is not None:
            return fail(self.broken)
        seq = len(self.records) + len(self.pending) + 1
        ts = datetime.fromtimestamp(self.clock.seconds(), UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        record = Record(seq, ts, kind, park, code, opr, copy.deepcopy(body), "0" * 32)
        if self.hold:
            waiting: Deferred[Record] = Deferred()
            self.pending.append((waiting, record))
            return waiting
        self.records.append(record)
        return succeed(record)

    def release(self) -> None:
        """Make the held appends durable, in order."""
        pending, self.pending = self.pending, []
        for waiting, record in pending:
            self.records.append(record)
            waiting.callback(record)


class _NoPasswords:
    """Dialects log their lots in their own way; an account password never matches here."""

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        return succeed(False)


class LotPeer:
    """The lot's end of one connection to the dialect: send bytes, read what the gateway wrote."""

    def __init__(self, protocol: Any, transport: StringTransport) -> None:
        self.protocol = protocol
        self.transport = transport

    def send(self, data: bytes) -> None:
        """Bytes from the lot, as one read."""
        self.protocol.dataReceived(data)

    def received(self) -> bytes:
        """What the gateway wrote since the last call."""
        data = self.transport.value()
        self.transport.clear()
        return data

    @property
    def closed(self) -> bool:
        """Whether the gateway closed the connection."""
        return bool(self.transport.disconnecting)

    def lose(self, reason: Exception | None = None) -> None:
        """The lot goes away."""
        from twisted.python.failure import Failure

        self.protocol.connectionLost(Failure(reason or ConnectionError("the lot went away")))


class DialectRig:
    """One dialect served in memory by the gateway's own host, with a memory journal."""

    def __init__(
        self,
        dialect: IDialect,
        lots: Sequence[Mapping[str, Any]],
        *,
        settings: Mapping[str, Any] | None = None,
        zone: str = "Asia/Shanghai",
        start: float = START,
    ) -> None:
        self.dialect = dialect
        self.clock = Clock()
        self.clock.advance(start)
        document: dict[str, Any] = {
            "gateway": {"timezone": zone},
            "listen": {key: "tcp:0" for key in dialect.listeners if key not in ("uplink", "downlink")},
            "lot": [dict(lot) for lot in lots],
        }
        for table, values in (settings or {}).items():
            document[table] = {**document.get(table, {}), **values}
        self.config: Config = parse(document, dialects={dialect.name: dialect, "standard": standard})
        self.zone = ZoneInfo(zone)
        self.journal = MemoryJournal(self.clock)
        self.resumed: list[str] = []
        self.parts = GatewayParts(
            config=self.config,
            clock=self.clock,
            journal=self.journal,
            sessions=Sessions(self.clock, self.zone),
            repeats=Repeats(self.clock),
            totals=ParkTotals(),
            passwords=_NoPasswords(),
        )
        self.host = DialectHost(dialect.name, self.parts, self.resumed.append)
        self.server: IDialectServer = dialect.serve(self.host)
        self._port = 40000

    def connect(self, listener: str | None = None) -> LotPeer:
        """A new connection from a lot to the dialect's `listener` (its first by default)."""
        key = listener or self.dialect.listeners[0]
        self._port += 1
        protocol = self.server.factory(key).buildProtocol(IPv4Address("TCP", "192.0.2.7", self._port))
        if protocol is None:
            raise AssertionError(f"the {key} factory refused the connection")
        transport = StringTransport(peerAddress=IPv4Address("TCP", "192.0.2.7", self._port))
        protocol.makeConnection(transport)
        return LotPeer(protocol, transport)

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        """Send a downlink through the dialect, as the command API does."""
        return self.server.command(park, code, data)

    # what was stored

    def records(self, kind: str | None = None) -> list[Record]:
        """The journal's records (of `kind`), in order."""
        return [r for r in self.journal.records if kind is None or r.kind == kind]

    def codes(self) -> list[str]:
        """The codes of the standard messages stored, in order."""
        return [r.code for r in self.records(UPLINK_RECORD)]

    def originals(self) -> list[Record]:
        """The legacy messages kept."""
        return self.records(LEGACY_RECORD)

    def events(self) -> list[dict[str, object]]:
        """The CloudEvents the cloud would get for the journal as it is."""
        events = (to_event(r, gateway_id="gw-test", zone=self.zone) for r in self.journal.records)
        return [event for event in events if event is not None]

    def check_catalog(self, records: Iterable[Record] | None = None) -> None:
        """Raise AssertionError unless every stored standard message passes the catalog as it is."""
        for record in self.records(UPLINK_RECORD) if records is None else records:
            interface = lookup(record.code)
            if interface is None or interface.uplink is None:
                raise AssertionError(f"record {record.seq}: {record.code!r} is not an uplink interface")
            try:
                validate(interface.request, record.body)
            except FieldError as error:
                raise AssertionError(f"record {record.seq} ({record.code}): {error.message()}") from None

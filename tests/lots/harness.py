"""An in-memory gateway uplink for tests: treq on the uplink's own channel, a Clock, a journal double."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import nacl.pwhash
import treq
from attrs import define, field
from nacl.signing import SigningKey
from treq.client import HTTPClient
from treq.testing import StubTreq
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IConsumer, IProtocolFactory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test import iosim
from twisted.web.client import Agent
from twisted.web.iweb import IAgent, IBodyProducer
from twisted.web.resource import IResource
from zope.interface import implementer

from gateway import config
from gateway.cloud.query import QueryClient
from gateway.lots.http import UplinkEndpoint, UplinkSite
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.uplink import Queries, UplinkHandler
from gateway.protocol.signing import compact, sign

T = TypeVar("T")
ZONE = ZoneInfo("Asia/Shanghai")
# Cheap hashes keep the tests fast; the real checker is tested on its own.
PASSWORD = "lot-password"
HASH = nacl.pwhash.argon2id.str(
    PASSWORD.encode(),
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
).decode()


def result_of(deferred: Deferred[T]) -> T:
    """The result of a Deferred that must already have fired."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    if hasattr(results[0], "raiseException"):
        results[0].raiseException()
    return results[0]  # type: ignore[no-any-return]


@implementer(IBodyProducer)
class _Body:
    """A request body written whole at once, so that a request goes out without a reactor turn."""

    def __init__(self, body: bytes | str) -> None:
        self.body = body.encode("utf-8") if isinstance(body, str) else body
        self.length = len(self.body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self.body)
        return succeed(None)

    def stopProducing(self) -> None:
        pass

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass


class _Endpoints:
    def __init__(self, reactor: MemoryReactorClock) -> None:
        self.reactor = reactor

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(self.reactor, "127.0.0.1", uri.port)


@implementer(IAgent)
class _FactoryAgent:
    """treq's `RequestTraversalAgent`, serving each request from a connection of a protocol factory."""

    def __init__(self, factory: IProtocolFactory) -> None:
        self._reactor = MemoryReactorClock()
        self._agent = Agent.usingEndpointFactory(self._reactor, endpointFactory=_Endpoints(self._reactor))
        self._factory = factory
        self._pumps: set[iosim.IOPump] = set()

    def request(self, method: bytes, uri: bytes, headers: Any = None, bodyProducer: Any = None) -> Any:
        response = self._agent.request(method, uri, headers, bodyProducer)
        _host, port, client_factory, _timeout, _bind = self._reactor.tcpClients[-1]
        client_address = IPv4Address("TCP", "127.0.0.1", 31337)
        server_address = IPv4Address("TCP", "127.0.0.1", port)
        server = self._factory.buildProtocol(client_address)
        assert server is not None, "the server refused the connection"
        client = client_factory.buildProtocol(None)
        self._pumps.add(
            iosim.connect(
                server,
                iosim.FakeTransport(server, True, server_address, client_address),
                client,
                iosim.FakeTransport(client, False, client_address, server_address),
            )
        )
        return response

    def flush(self) -> None:
        """Move the bytes each open connection has to send, as StubTreq's flush does."""
        for pump in list(self._pumps):
            pump.flush()
            if pump.clientIO.disconnected and pump.serverIO.disconnected:
                self._pumps.discard(pump)


class SiteTreq:
    """`treq.testing.StubTreq` for a server's protocol factory instead of a twisted.web resource.

    Each request is sent by treq's real client, on a connection of its own
    to a protocol of `factory` (the uplink's `UplinkSite`) over an in-memory
    transport; `flush()` moves what either side has written since.
    """

    def __init__(self, factory: IProtocolFactory) -> None:
        self._agent = _FactoryAgent(factory)
        client = HTTPClient(agent=self._agent, data_to_body_producer=_Body)
        for name in treq.__all__:
            setattr(self, name, getattr(client, name, None) or getattr(treq, name))
        self.flush = self._agent.flush


def multipart(param: bytes | str, files: dict[str, bytes]) -> tuple[bytes, str]:
    """A multipart/form-data body with a `param` field and file parts named as given."""
    boundary = "cpmi-test-boundary"
    text = param.decode() if isinstance(param, bytes) else param
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="param"\r\n\r\n'.encode()
        + text.encode()
        + b"\r\n"
    ]
    for name, content in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="{name}.jpg"\r\n'
            "Content-Type: image/jpeg\r\n\r\n".encode()
            + content
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def fired(deferred: Deferred[Any]) -> bool:
    """Whether a Deferred has a result now (not merely waiting on another)."""
    results: list[Any] = []
    deferred.addBoth(lambda result: results.append(result) or result)
    return bool(results)


@define
class Stored:
    kind: str
    park: str
    code: str
    opr: str
    body: Any
    ts: str
    seq: int = 0


@define
class MemoryJournal:
    """Records appended in memory; `hold` keeps them undurable until `release`, `broken` fails them."""

    clock: Clock
    records: list[Stored] = field(factory=list)
    hold: bool = False
    broken: Exception | None = None
    pending: list[tuple[Deferred[Stored], Stored]] = field(factory=list)
    seq: int = 0  # the last seq given, as the journal numbers its records

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Stored]:
        if self.broken is not None:
            return fail(self.broken)
        ts = datetime.fromtimestamp(self.clock.seconds(), ZoneInfo("UTC")).isoformat()
        self.seq += 1
        record = Stored(kind, park, code, opr, json.loads(json.dumps(body)), ts, self.seq)
        if self.hold:
            waiting: Deferred[Stored] = Deferred()
            self.pending.append((waiting, record))
            return waiting
        self.records.append(record)
        return succeed(record)

    def release(self) -> None:
        pending, self.pending = self.pending, []
        for waiting, record in pending:
            self.records.append(record)
            waiting.callback(record)

    def replay(self) -> list[Stored]:
        return list(self.records)


class SyncPasswords:
    """The password checker's interface, answered at once (argon2 at minimum cost)."""

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        if password_hash is None:
            return succeed(False)
        try:
            return succeed(nacl.pwhash.verify(password_hash.encode(), password.encode()))
        except Exception:
            return succeed(False)


def lot_entry(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "park_code": "P001",
        "username": "lot001",
        "password": HASH,
        "signature": "required",
        "secret": "s3cret",
    }
    entry.update(changes)
    return entry


def signed_envelope(
    code: str,
    data: Any,
    token: str = "",
    secret: str = "s3cret",
    opr: str | None = None,
    signature: str | None = None,
) -> dict[str, Any]:
    """A request envelope signed over compact `data` like a lot would (a new oprNum unless given)."""
    text = compact(data) if data is not None else ""
    envelope: dict[str, Any] = {
        "token": token,
        "code": code,
        "oprNum": opr if opr is not None else str(uuid.uuid4()),
        "signature": sign(text, token, secret) if signature is None else signature,
    }
    if data is not None:
        envelope["data"] = data
    return envelope


class Uplink:
    """A gateway uplink in memory, with a lot's point of view for sending to it."""

    def __init__(
        self,
        lots: list[dict[str, Any]] | None = None,
        start: str = "2026-11-24 10:00:00",
        queries: Queries | None = None,
        tables: dict[str, Any] | None = None,
    ) -> None:
        self.queries = queries
        self.clock = Clock()
        self.clock.advance(datetime.strptime(start, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE).timestamp())
        # `tables`: more of the configuration, e.g. {"listen": {...}}.
        self.settings = config.parse({"lot": lots if lots is not None else [lot_entry()], **(tables or {})})
        self.journal = MemoryJournal(self.clock)
        self.restart()

    def restart(self) -> None:
        """A new gateway process on the same journal."""
        from gateway.state import rebuild

        self.sessions = Sessions(self.clock, ZONE)
        self.repeats = Repeats(self.clock)
        self.totals = ParkTotals()
        rebuild(self.journal.replay(), self.sessions, self.repeats, self.totals)
        self.handler = UplinkHandler(
            config=self.settings,
            journal=self.journal,
            sessions=self.sessions,
            repeats=self.repeats,
            totals=self.totals,
            passwords=SyncPasswords(),  # type: ignore[arg-type]
            clock=self.clock,
            queries=self.queries,
        )
        self.treq = self.serve(UplinkEndpoint(self.handler, max_body_bytes=1_000_000))

    def serve(self, endpoint: UplinkEndpoint) -> Any:
        """A treq client posting to `endpoint` on the uplink's own channel (an `UplinkSite` on the clock)."""
        self.site = UplinkSite(endpoint, reactor=self.clock)
        return SiteTreq(self.site)

    def query_cloud(self, cloud: IResource) -> StubTreq:
        """Have `cloud` answer the query uplinks (autoPay) through a QueryClient, as the gateway's
        cloud does, from a restarted gateway: the StubTreq to flush."""
        http = StubTreq(cloud)
        self.queries = QueryClient(
            http=http,
            clock=self.clock,
            url="https://cloud.example/query",
            gateway_id="gw-01",
            zone=ZONE,
            signing_key=SigningKey(bytes(32)),
        )
        self.restart()
        return http

    def post(
        self,
        body: bytes | str,
        path: str = "/uplink",
        content_type: str = "application/x-www-form-urlencoded",
        method: str = "POST",
        files: dict[str, bytes] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """Send a raw HTTP request; the status, headers and body of the answer."""
        if files is not None:
            body, content_type = multipart(body, files)
        headers = {"Content-Type": [content_type]}
        deferred = self.treq.request(method, "http://gw" + path, data=body, headers=headers)
        self.treq.flush()
        response = result_of(deferred)
        content = self.treq.content(response)
        self.treq.flush()
        answer = result_of(content)
        return (
            response.code,
            {k.decode().lower(): v[0].decode() for k, v in response.headers.getAllRawHeaders()},
            answer,
        )

    envelope = staticmethod(signed_envelope)

    def send(self, code: str, data: Any, path: str = "/uplink", **options: Any) -> dict[str, Any]:
        """Send an envelope as `param=` and return the parsed response envelope."""
        from urllib.parse import urlencode

        envelope = self.envelope(code, data, **options)
        status, headers, body = self.post(
            urlencode({"param": json.dumps(envelope, ensure_ascii=False)}), path
        )
        assert status == 200
        assert headers["content-type"] == "application/json; charset=utf-8"
        answer: dict[str, Any] = json.loads(body)
        return answer

    def login(self, username: str = "lot001", password: str = PASSWORD, secret: str = "s3cret") -> str:
        answer = self.send("login", {"parkUserName": username, "parkUserPwd": password}, secret=secret)
        assert answer["resultCode"] == "0000", answer
        token: str = answer["data"]["token"]
        return token

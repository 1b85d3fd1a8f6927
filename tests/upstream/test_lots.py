"""UpstreamLots: each configured lot's upstream session and TCP link, started, stopped and reloaded."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qs

from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import Request

from gateway.config import Config, parse
from gateway.interfaces import LotReply, NotConnected
from gateway.protocol.framing import FrameDecoder, encode_json_frame
from gateway.upstream.lots import UpstreamLots
from tests.lots.harness import HASH
from tests.simulator.helpers import ScriptedEndpoint

TOKEN = "T" * 32


class LoginOnly(Resource):
    """An upstream whose HTTP side answers every login with a token, and counts them."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.logins: list[str] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        message = json.loads(parse_qs(request.content.read().decode())["param"][0])
        self.logins.append(message["data"]["parkUserName"])
        answer = {
            "code": message["code"],
            "oprNum": message["oprNum"],
            "resultCode": "0000",
            "resultMessage": "ok",
            "signature": "",
            "data": {"token": TOKEN, "parkCode": ""},
        }
        return json.dumps(answer).encode()


class NoLots:
    """No lot is connected on the lot side."""

    def supports(self, park: str, code: str) -> bool:
        return True

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        return fail(NotConnected(park))


def config(*lots: tuple[str, str, str]) -> Config:
    """A t002 configuration with lots (park, upstream user, upstream password)."""
    return parse(
        {
            "cloud": {
                "sink": "t002",
                "url": "http://upstream.example/uplink",
                "downlink": "upstream.example:9000",
            },
            "lot": [
                {
                    "park_code": park,
                    "username": f"lot-{park}",
                    "password": HASH,
                    "upstream_username": user,
                    "upstream_password": password,
                }
                for park, user, password in lots
            ],
        }
    )


class Harness:
    def __init__(self, settings: Config) -> None:
        self.clock = Clock()
        self.http = LoginOnly()
        self.endpoints: list[ScriptedEndpoint] = []
        self.journal = MemoryJournal()
        self.lots = UpstreamLots(
            config=settings,
            http=StubTreq(self.http),
            clock=self.clock,
            endpoint=self._endpoint,
            journal=self.journal,
            lots=NoLots(),
            sync=None,
            deadlines={},
        )

    def _endpoint(self) -> ScriptedEndpoint:
        endpoint = ScriptedEndpoint()
        self.endpoints.append(endpoint)
        return endpoint

    def frames(self, endpoint: ScriptedEndpoint, index: int = -1) -> list[dict[str, Any]]:
        decoder = FrameDecoder(2**20)
        _, transport = endpoint.connections[index]
        return [json.loads(frame) for frame in decoder.feed(transport.value())]  # type: ignore[arg-type]

    def closed(self) -> None:
        """Deliver connectionLost to every connection the client closed (StringTransport does not)."""
        for endpoint in self.endpoints:
            for protocol, transport in endpoint.connections:
                if transport.disconnecting and not getattr(transport, "lost", False):
                    transport.lost = True  # type: ignore[attr-defined]
                    protocol.connectionLost(Failure(ConnectionDone()))

    def bind(self, endpoint: ScriptedEndpoint) -> None:
        """Answer the latest connection's bind heartbeat with 0000."""
        protocol, _ = endpoint.connections[-1]
        [bind] = self.frames(endpoint)
        answer = {
            "code": "heartbeat",
            "oprNum": bind["oprNum"],
            "resultCode": "0000",
            "resultMessage": "",
            "data": {},
        }
        protocol.dataReceived(encode_json_frame(json.dumps(answer)))


class MemoryJournal:
    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, str, object]] = []

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Any]:
        self.records.append((kind, park, code, opr, body))
        d: Deferred[Any] = Deferred()
        d.callback(None)
        return d


def test_a_link_logs_in_upstream_then_binds_with_the_token() -> None:
    """Started, a lot's link finds no token, the session logs in, and the next connection binds with it."""
    harness = Harness(config(("P1", "up1", "pw1")))
    harness.lots.start()
    [endpoint] = harness.endpoints
    assert harness.http.logins == ["up1"]
    assert endpoint.connections[0][1].disconnecting  # no token yet: closed at once
    harness.closed()
    harness.clock.advance(60)
    bind = harness.frames(endpoint)
    assert bind[0]["code"] == "heartbeat" and bind[0]["token"] == TOKEN
    harness.bind(endpoint)
    assert harness.lots.bound() == 1
    assert harness.lots.session("P1") is not None and harness.lots.session("P1").token == TOKEN  # type: ignore[union-attr]


def test_reload_adds_removes_and_renews_lots() -> None:
    """A reload starts an added lot's link, closes a removed one's and renews one whose account changed."""
    harness = Harness(config(("P1", "up1", "pw1"), ("P2", "up2", "pw2"), ("P3", "up3", "pw3")))
    harness.lots.start()
    harness.closed()
    harness.clock.advance(60)
    p1, p2, p3 = harness.endpoints
    kept = harness.lots.session("P1")
    renewed = harness.lots.session("P3")
    harness.lots.reconfigure(config(("P1", "up1", "pw1"), ("P3", "up3", "new"), ("P4", "up4", "pw4")))
    assert harness.lots.session("P1") is kept
    assert harness.lots.session("P2") is None
    assert p2.connections[-1][1].disconnecting
    assert harness.lots.session("P3") is not renewed
    assert p3.connections[-1][1].disconnecting
    assert harness.lots.session("P4") is not None
    assert len(harness.endpoints) == 5  # P3 and P4 got links of their own, started at once
    assert all(endpoint.attempts >= 1 for endpoint in harness.endpoints[3:])
    assert not p1.connections[-1][1].disconnecting


def test_stop_closes_every_link_and_totals_add_up() -> None:
    """Stopping closes each link, and totals sum the sessions' counters over the lots."""
    harness = Harness(config(("P1", "up1", "pw1"), ("P2", "up2", "pw2")))
    harness.lots.start()
    assert harness.lots.totals()["logins"] == 2
    harness.lots.stop()
    harness.closed()
    assert all(endpoint.connections[-1][1].disconnecting for endpoint in harness.endpoints)
    harness.clock.advance(600)
    assert all(endpoint.attempts == 1 for endpoint in harness.endpoints)

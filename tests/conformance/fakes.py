"""Platforms for the kit to test, on loopback: the reference platform, and broken ones made from it.

Each broken platform is the reference platform (cpmi-gateway's lot side in
memory, `gateway.conformance.lot.ReferencePlatform`) with one rule broken by
composition: a handler that strips signatures, an account whose signatures are
off, a repeat memory that forgets, a connection that writes `$` raw, one that
ignores heartbeats. The command API is the gateway's own `CommandApi` over it.
"""

from __future__ import annotations

import io
import json
from typing import Any

import attrs
from prometheus_client import CollectorRegistry
from twisted.internet import reactor
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IAddress, IListeningPort
from twisted.web.server import Site

from gateway.cli.main import build_parser
from gateway.cloud.api import CommandApi
from gateway.conformance.lot import MirrorSettings, PaidQueries, RecordingUplinkHandler, ReferencePlatform
from gateway.lotclient.credentials import LotCredentials
from gateway.lots.http import UplinkEndpoint, UplinkSite
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sync import SyncQueue
from gateway.lots.tcp import DownlinkFactory, DownlinkProtocol

API_TOKEN = "kit-api-token"
PASSWORD = "lot-password"
SECRET = "k"
CREDENTIALS = LotCredentials("P001", "lot001", PASSWORD, SECRET)

Rows = dict[str, tuple[str, str]]


def rows_of(text: str) -> Rows:
    """The report rows printed by a run: check name -> (outcome, reason)."""
    rows: Rows = {}
    for line in text.splitlines():
        outcome, _, rest = line.partition("  ")
        if outcome in ("PASS", "FAIL", "SKIP"):
            name, _, reason = rest.strip().partition(" ")
            rows[name] = (outcome, reason.strip())
    return rows


class _Factory(DownlinkFactory):
    """The downlink's factory, building connections of a (possibly broken) subclass."""

    connection_type: type[DownlinkProtocol] = DownlinkProtocol

    def buildProtocol(self, addr: IAddress | None) -> DownlinkProtocol:
        return self.connection_type(self.handler, self.clock, self.max_frame_bytes, "127.0.0.1")


class Served:
    """A platform listening on loopback: where to reach it, and how to stop it."""

    def __init__(self, platform: ReferencePlatform, ports: list[IListeningPort]) -> None:
        self.platform = platform
        self.ports = ports

    def port(self, index: int) -> int:
        address: Any = self.ports[index].getHost()
        return int(address.port)

    def options(self) -> list[str]:
        """The kit's options to reach it (the API among them)."""
        return [
            "--uplink",
            f"http://127.0.0.1:{self.port(0)}",
            "--downlink",
            f"127.0.0.1:{self.port(1)}",
            "--api",
            f"http://127.0.0.1:{self.port(2)}",
            "--api-token",
            API_TOKEN,
        ]

    async def stop(self) -> None:
        self.platform.stop()
        for port in self.ports:
            await maybeDeferred(port.stopListening)


def serve(
    platform: ReferencePlatform,
    uplink: UplinkEndpoint | None = None,
    protocol: type[DownlinkProtocol] = DownlinkProtocol,
) -> Served:
    """Listen on loopback with the platform's uplink (or `uplink`), its downlink built of
    `protocol` connections, and the gateway's command API over it."""
    config = attrs.evolve(platform.config, cloud=attrs.evolve(platform.config.cloud, api_token=API_TOKEN))
    sync = SyncQueue(lots=platform.downlinks, journal=platform.journal, clock=reactor)
    platform.downlinks.bound_listeners.append(sync.lot_bound)
    api = CommandApi(
        config=config,
        lots=platform.downlinks,
        journal=platform.journal,
        clock=reactor,
        registry=CollectorRegistry(),
        ready=lambda: (True, "ready"),
        sync=sync,
        deadlines=config.deadlines,
    )
    factory = _Factory(platform.downlinks, reactor, platform.config.tcp.max_frame_bytes)
    factory.connection_type = protocol
    platform.start()
    tcp: Any = reactor
    listen = tcp.listenTCP
    ports = [
        listen(0, UplinkSite(uplink or platform.uplink_endpoint()), interface="127.0.0.1"),
        listen(0, factory, interface="127.0.0.1"),
        listen(0, Site(api.resource()), interface="127.0.0.1"),
    ]
    return Served(platform, ports)


def reference(**changes: Any) -> ReferencePlatform:
    """The reference platform for the test lot; `repeats` or MirrorSettings fields may be changed."""
    repeats = changes.pop("repeats", None)
    return ReferencePlatform(MirrorSettings(credentials=CREDENTIALS, **changes), reactor, repeats=repeats)


async def run_kit(options: list[str]) -> tuple[int, str]:
    """`cpmictl conformance platform` in this process: its exit code and what it printed."""
    from gateway.cli.conformance import platform_main

    args = build_parser().parse_args(
        ["conformance", "platform", "--user", "lot001", "--password", PASSWORD, "--secret", SECRET, *options]
    )
    out = io.StringIO()
    code = await Deferred.fromCoroutine(platform_main(args, reactor, out))
    return code, out.getvalue()


# --- the broken platforms -------------------------------------------------


class UnsignedHandler(RecordingUplinkHandler):
    """Answers like the gateway, but with every signature blanked."""

    def handle(
        self, text: str, url_code: str | None = None, files: Any = (), gone: Any = None
    ) -> Deferred[bytes]:
        def strip(body: bytes) -> bytes:
            answer = json.loads(body)
            answer["signature"] = ""
            return json.dumps(answer, ensure_ascii=False).encode("utf-8")

        return super().handle(text, url_code, files, gone).addCallback(strip)


def unsigned_uplink(platform: ReferencePlatform) -> UplinkEndpoint:
    """The platform's uplink answering unsigned."""
    handler = UnsignedHandler(
        recorder=[],
        clock=reactor,
        config=platform.config,
        journal=platform.journal,
        sessions=platform.sessions,
        repeats=platform.repeats,
        totals=ParkTotals(),
        passwords=platform.passwords,
        queries=PaidQueries(),
    )
    return UplinkEndpoint(handler, platform.config.uplink.max_body_bytes)


class ForgetfulRepeats(Repeats):
    """Never remembers an oprNum: every repeat is processed (and stored) again, none gets 9007."""

    def seen(self, park: str, opr: str) -> Deferred[Any] | None:
        return None


class RawDollars(DownlinkProtocol):
    """Writes `$` raw inside frames instead of \\u0024."""

    def send(self, frame: bytes) -> None:
        super().send(frame[:2] + frame[2:].replace(b"\\u0024", b"$"))


class DeafToHeartbeats(DownlinkProtocol):
    """Binds by heartbeat, then never answers another one."""

    def frame_received(self, payload: bytes) -> None:
        if self.park is not None and b'"heartbeat"' in payload and b'"resultCode"' not in payload:
            return
        super().frame_received(payload)

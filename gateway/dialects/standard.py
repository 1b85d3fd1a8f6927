"""
The built-in `standard` dialect: T/CPMI 002-2018 itself, as the contract gives it.

Lots post their uplinks over HTTP (`[listen] uplink`, B.2) and hold the TCP
downlink (`[listen] downlink`, B.3). The work is done by the lot side
(`gateway.lots`); this module puts it behind the same interface as every
other dialect.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.plugin import IPlugin
from zope.interface import implementer

from gateway.dialects.host import DialectHost
from gateway.dialects.interface import IDialect, IDialectServer
from gateway.interfaces import LotReply, LotState
from gateway.limits import proxied
from gateway.lots.bodypool import BodyPool, provides_processes
from gateway.lots.downlink import Downlinks
from gateway.lots.http import UplinkEndpoint, UplinkSite
from gateway.lots.httpbounds import HttpLimits
from gateway.lots.uplink import UplinkHandler
from gateway.protocol.catalog import lookup
from gateway.settings import Config, LotConfig

__all__ = ["StandardDialect", "StandardServer", "standard"]


@implementer(IDialectServer)
class StandardServer:
    """The standard dialect at work: the HTTP uplink site and the TCP downlinks."""

    def __init__(self, host: DialectHost) -> None:
        parts = host.parts
        config = parts.config
        handler = UplinkHandler(
            config=config,
            journal=parts.journal,
            sessions=parts.sessions,
            repeats=parts.repeats,
            totals=parts.totals,
            passwords=parts.passwords,
            clock=parts.clock,
            queries=parts.queries,
        )
        self.handler = handler
        # The uplink's HTTP bounds (CONTRACT §4) live in its site; the downlink's
        # connection caps are put around every lot-facing listener by tap.py.
        # Big bodies are parsed by worker processes, where the reactor can run them.
        uplink = config.uplink
        self.bodies: BodyPool | None = None
        if uplink.body_workers and provides_processes(parts.clock):
            self.bodies = BodyPool(
                parts.clock,
                workers=uplink.body_workers,
                max_pending=uplink.max_pending_bodies,
                inline_bytes=uplink.inline_body_bytes,
            )
        self.site = UplinkSite(
            UplinkEndpoint(handler, uplink.max_body_bytes, self.bodies),
            reactor=parts.clock,
            limits=HttpLimits.uplink(config.uplink),
            proxied=proxied(config.listen.uplink),
        )
        self.downlinks = Downlinks(
            config=config,
            sessions=parts.sessions,
            passwords=parts.passwords,
            journal=parts.journal,
            clock=parts.clock,
            deadlines=config.deadlines,
        )
        handler.seen = self.downlinks.seen
        self.downlinks.bound_listeners.append(host.resume)
        self.downlinks.unbound_listeners.append(host.released)

    @property
    def counters(self) -> Mapping[str, int]:
        """The TCP downlinks' counters (connections, frames, closes, ...), for the metrics."""
        return self.downlinks.counters

    def factory(self, listener: str) -> IProtocolFactory:
        if listener == "uplink":
            return self.site
        if listener == "downlink":
            return self.downlinks.factory()
        raise KeyError(listener)

    def supports(self, code: str) -> bool:
        interface = lookup(code)
        return interface is not None and interface.downlink is not None

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        return self.downlinks.command(park, code, data)

    def command_as(self, park: str, code: str, data: object, opr: str) -> Deferred[LotReply]:
        """`command`, sent with the oprNum the command API journaled it under."""
        return self.downlinks.command(park, code, data, opr)

    def state(self, park: str) -> LotState:
        return self.downlinks.state(park)

    def bound_parks(self) -> Iterable[str]:
        """The parks whose downlink is bound now, for counting them (``IDialectServer``'s optional one)."""
        return self.downlinks.bound_parks()

    def disconnect(self, park: str, reason: str) -> bool:
        return self.downlinks.disconnect(park, reason)

    def reconfigure(self, config: Config) -> None:
        """Take the lots of a reloaded configuration (the host's lookups see it by themselves)."""
        self.handler.reconfigure(config)
        self.downlinks.reconfigure(config)

    def start(self) -> None:
        self.downlinks.start()
        if self.bodies is not None:
            self.bodies.start()

    def stop(self) -> Deferred[None] | None:
        self.downlinks.stop()
        ended = self.bodies.stop() if self.bodies is not None else None
        # This runs before the journal closes, so each bound lot's offline record is kept.
        self.downlinks.disconnect_all("gateway stopping")
        return ended


@implementer(IPlugin, IDialect)
class StandardDialect:
    """T/CPMI 002-2018 as the contract gives it: HTTP uplink, TCP downlink."""

    name = "standard"
    listeners = ("uplink", "downlink")
    summary = "T/CPMI 002-2018 itself: uplinks over HTTP (B.2), the downlink over TCP (B.3)"

    def check_lot(self, lot: LotConfig) -> str | None:
        if not lot.username:
            return "username: must not be empty"
        if not lot.password:
            return "password: must not be empty: the argon2id hash of cpmictl passwd"
        return None

    def serve(self, host: DialectHost) -> StandardServer:  # type: ignore[override]
        return StandardServer(host)


standard = StandardDialect()

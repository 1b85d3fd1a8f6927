"""
The lot side of the service tree: the lots' sessions and logins, the sync queue, and the dialect hosts.

:class:`LotsService` builds what every dialect shares (sessions, repeats,
park totals, the password checker, the lot router and the sync queue), then
:meth:`LotsService.serve` runs the dialects the configuration uses, each on
its listeners under the connection caps (CONTRACT §4). Stopping stops the
listeners first, then the servers (reporting their lots offline), then the
shared parts -- all before the journal closes, which is the tree's to order.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.logger import Logger

from gateway.cloud.metrics import register as register_gateway_metrics
from gateway.cloud.metrics import register_bodies, register_logins, register_workers
from gateway.dialects import installed
from gateway.dialects.host import DialectHost, GatewayParts, LotRouter, Queries
from gateway.dialects.interface import IDialectServer
from gateway.dialects.standard import StandardServer
from gateway.heap import BindSettler
from gateway.journal.writer import Journal
from gateway.limits import ConnectionGuard, GuardedFactory, IGuardsItself, Listener, proxied
from gateway.lots.parks import ParkTotals
from gateway.lots.passwords import PasswordChecker
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.sync import SyncQueue
from gateway.settings import Config

__all__ = ["LotsService", "SyncDelivery"]


class SyncDelivery(Protocol):
    """The sync queue: journal-only (`gateway.lots.sync.SyncQueue`) or, with [cluster],
    `gateway.cluster.sync.ClusterSync`, which tap puts in its place before the lots are served."""

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]: ...
    def restore(self, record: Any) -> None: ...
    def lot_bound(self, park: str) -> None: ...
    def pending(self, park: str) -> int: ...
    def pending_total(self) -> int: ...
    def depths(self) -> dict[str, int]: ...
    def first_pending_seq(self) -> int | None: ...
    def stop(self) -> None: ...


log = Logger()


class LotsService(MultiService):
    """Everything that faces the lots; :attr:`guards` are its listeners' caps, for the metrics."""

    def __init__(self, settings: Config, *, reactor: Any, journal: Journal) -> None:
        super().__init__()
        self.setName("lots")
        self._settings = settings
        self._reactor = reactor
        self._journal = journal
        self.sessions = Sessions(reactor, settings.gateway.timezone)
        self.repeats = Repeats(reactor)
        self.totals = ParkTotals()
        uplink = settings.uplink
        self.passwords = PasswordChecker(
            reactor, workers=uplink.login_workers, max_pending=uplink.max_pending_logins
        )
        self.router = LotRouter(settings)
        self.sync: SyncDelivery = SyncQueue(lots=self.router, journal=journal, clock=reactor)
        # Told of each lot's bind and unbind, after the sync queue ([cluster]: NATS commands, sync).
        self.bound_listeners: list[Callable[[str], None]] = []
        self.unbound_listeners: list[Callable[[str], None]] = []
        # The heap is settled once a wave of binds is over (gateway.heap).
        self.settler = BindSettler(reactor)
        self.settler.setServiceParent(self)
        self.guards: list[ConnectionGuard] = []
        self.servers: dict[str, IDialectServer] = {}
        self.parts: GatewayParts | None = None

    def serve(self, queries: Queries | None) -> GatewayParts:
        """Run every dialect the configuration uses, on its listeners; ``queries`` answers autoPay."""
        settings, reactor = self._settings, self._reactor
        parts = GatewayParts(
            config=settings,
            clock=reactor,
            journal=self._journal,
            sessions=self.sessions,
            repeats=self.repeats,
            totals=self.totals,
            passwords=self.passwords,
            queries=queries,
        )
        self.parts = parts
        dialects = installed()
        # The standard one always, others when a lot speaks them or they listen.
        used = {"standard"} | {lot.dialect for lot in settings.lots}
        used |= {
            name
            for name, dialect in dialects.items()
            if any(settings.listen.endpoint(listener) for listener in dialect.listeners)
        }
        for name in sorted(used):
            server = dialects[name].serve(DialectHost(name, parts, self._bound, self._unbound))
            self.router.servers[name] = server
            self.servers[name] = server
            for listener in dialects[name].listeners:
                endpoint = settings.listen.endpoint(listener)
                assert endpoint is not None  # the configuration is refused otherwise
                factory = self._guarded(listener, endpoint, server.factory(listener))
                Listener(listener, endpoint, factory, reactor).setServiceParent(self)
            if name != "standard":
                count = sum(1 for lot in settings.lots if lot.dialect == name)
                listeners = dialects[name].listeners
                where = ", ".join(f"{settings.listen.endpoint(k)}" for k in listeners) or "no listener"
                log.info("dialect {name}: {count} lots, on {where}", name=name, count=count, where=where)
        return parts

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The lots' metrics on ``registry``: connections, downlink counters, sync queues, logins,
        and the password and body worker processes."""
        register_gateway_metrics(registry, self.router, self._journal, self.sync)
        register_logins(registry, self.passwords)
        pools = {"password": self.passwords.pool}
        standard = self.servers.get("standard")
        if isinstance(standard, StandardServer) and standard.bodies is not None:
            register_bodies(registry, standard.bodies)
            pools["body"] = standard.bodies.workers
        register_workers(registry, pools)

    def _bound(self, park: str) -> None:
        """A lot of any dialect bound its connection: its sync deliveries resume, the heap settles
        later, and the bind listeners (the cluster's commands and sync) hear of it."""
        self.sync.lot_bound(park)
        self.settler.bound(park)
        for listener in self.bound_listeners:
            listener(park)

    def _unbound(self, park: str) -> None:
        for listener in self.unbound_listeners:
            listener(park)

    def reconfigurable(self) -> list[Any]:
        """The parts a reload hands the new configuration to."""
        standard = [s for s in self.servers.values() if isinstance(s, StandardServer)]
        return [*([self.parts] if self.parts is not None else []), self.router, *standard, self.passwords]

    def _guarded(self, name: str, description: str, factory: Any) -> Any:
        """A listener's factory with its connections capped by peer and in all.

        An HTTP site guards itself (`IGuardsItself`: the uplink's `UplinkSite`);
        any other factory (the TCP downlink, a dialect's listener) is wrapped in
        a `GuardedFactory`.
        """
        if IGuardsItself.providedBy(factory):
            self.guards.append(factory.guard)
            return factory
        guard = ConnectionGuard(
            name,
            clock=self._reactor,
            max_per_peer=self._settings.uplink.max_connections_per_peer,
            max_total=self._settings.uplink.max_connections,
            proxied=proxied(description),
        )
        self.guards.append(guard)
        return GuardedFactory(factory, guard)

    def startService(self) -> None:
        self.passwords.start()
        for server in self.servers.values():
            server.start()
        super().startService()  # the settler and the listeners

    def stopService(self) -> Deferred[Any]:
        """Stop listening, then the servers (their lots go offline), then the sync timers and logins."""
        stopping = [maybeDeferred(super().stopService)]
        stopping += [maybeDeferred(server.stop) for server in reversed(list(self.servers.values()))]
        self.sync.stop()
        stopping.append(self.passwords.stop())
        return DeferredList(stopping)

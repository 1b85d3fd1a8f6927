"""
The operators' side of the service tree: the command API and status page, and the reload.

:class:`OperatorsService` listens on ``[listen] api`` under its own connection
cap and body limit (operators reach ``/healthz`` while the lots' ports are
flooded), keeps the status page's recent rejections (the log's
``lot.rejected``/``cloud.rejected`` events) and, given the configuration
file, reloads it on SIGHUP and on ``POST /v1/admin/reload``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.threads import deferToThreadPool

from gateway.cloud.api import CommandApi, CommandPath
from gateway.cloud.status import StatusReport
from gateway.cluster.connection import NatsConnection
from gateway.config import load
from gateway.dialects.service import LotsService
from gateway.forwarding import ForwardingEngine
from gateway.journal.writer import Journal
from gateway.limits import ConnectionGuard, Listener, proxied
from gateway.logs import Observing, RecentRejections
from gateway.lots.httpbounds import GuardedSite, HttpLimits
from gateway.reload import Reconfigurable, Reloader, Sighup, StopSignals
from gateway.settings import Config

__all__ = ["OperatorsService"]


class OperatorsService(MultiService):
    """The command API's listener, the status page's rejections and the reload; :attr:`guards` its cap."""

    def __init__(
        self,
        settings: Config,
        *,
        reactor: Any,
        journal: Journal,
        ready: Callable[[], tuple[bool, str]],
        lots: LotsService,
        registry: CollectorRegistry,
        forwarding: ForwardingEngine | None,
        reconfigurable: Sequence[Reconfigurable],
        config_path: str | None,
        connection: NatsConnection | None = None,
        forwards: Sequence[tuple[str, str, ForwardingEngine]] = (),
    ) -> None:
        """With ``config_path``, the file ``settings`` were read from, the reload hands a new
        configuration to ``reconfigurable`` and to the command API."""
        super().__init__()
        self.setName("api")
        self.reloader: Reloader | None = None
        # SIGTERM/SIGINT: Twisted's handlers run from the reactor's loop, never waiting on the log's lock.
        StopSignals(reactor).setServiceParent(self)
        if config_path is not None:
            self.reloader = Reloader(
                path=config_path,
                running=settings,
                read=lambda path: deferToThreadPool(reactor, reactor.getThreadPool(), load, path),
                parts=reconfigurable,
                lots=lots.router,
                sessions=lots.sessions,
                journal=journal,
                served=frozenset(lots.servers),
            )
            Sighup(reactor, self.reloader.reload).setServiceParent(self)
        rejections = RecentRejections()
        Observing(rejections).setServiceParent(self)
        status = StatusReport(
            config=self.configuration,
            clock=reactor,
            started=reactor.seconds(),
            lots=lots.router,
            backlog=lots.sync.pending,
            journal=journal,
            ready=ready,
            forwarding=forwarding,
            rejections=rejections.recent,
            nats=connection,
            forwards=forwards,
        )
        self.status = status
        """The status page's report ([cluster]: placement adds each lot's gateway to it)."""
        self.api = CommandApi(
            config=settings,
            lots=lots.router,
            journal=journal,
            clock=reactor,
            registry=registry,
            ready=ready,
            sync=lots.sync,
            deadlines=settings.deadlines,
            status=status,
            reload=self.reloader.reload if self.reloader is not None else None,
            nats=connection,
        )
        # The one command path, which NATS requests for the lots held here share (gateway/cluster).
        self.commands: CommandPath = self.api.commands
        if self.reloader is not None:
            self.reloader.parts.append(self.api)
        self._settings = settings
        site = GuardedSite(
            self.api.resource(),
            reactor=reactor,
            limits=HttpLimits.api(settings.uplink),
            name="api",
            proxied=proxied(settings.listen.api),
        )
        self.guards: list[ConnectionGuard] = [site.guard]
        Listener("api", settings.listen.api, site, reactor).setServiceParent(self)

    def configuration(self) -> Config:
        """The configuration in force: a reload changes it."""
        return self.reloader.running if self.reloader is not None else self._settings

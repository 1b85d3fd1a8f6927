"""The ``[cluster]`` part of the service tree: the NATS connection, and what uses it.

`cluster_service` makes it from the configuration (none without ``[cluster]``).
The gateway's tree hooks it onto the lots in two steps, as they are built:
`ClusterService.join_lots` before the lots serve (JetStream sync takes the
journal-only queue's place before anything uses it), and
`ClusterService.serve_lots` once the command API exists and the journal is
replayed (its command path answers NATS requests for the lots bound here and
asks other gateways for the others; placement and tokens in NATS KV).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service

from gateway.cloud.api import DEADLINE_GRACE, CommandApi
from gateway.cloud.metrics import register_cluster, register_nats
from gateway.cloud.status import StatusReport
from gateway.cluster.commands import NatsCommands
from gateway.cluster.connection import NatsConnection
from gateway.cluster.placement import place_lots
from gateway.cluster.sync import ClusterSync
from gateway.dialects.service import LotsService
from gateway.journal.writer import Journal
from gateway.protocol.catalog import deadline_of
from gateway.settings import Config
from gateway.tree import OrderedService

__all__ = ["ClusterService", "CommandsService", "cluster_service"]


def cluster_service(settings: Config, *, reactor: Any) -> ClusterService | None:
    """The cluster's part of the tree with ``[cluster]``, else None."""
    return ClusterService(settings, reactor=reactor) if settings.cluster is not None else None


class ClusterService(OrderedService):
    """The gateway's NATS connection (:attr:`connection`) and the parts that use it.

    The connection is the first child: it starts first, and the children stop
    one after the other, the last added first, so the connection closes only
    once what uses it (commands, sync) has stopped.
    """

    def __init__(self, settings: Config, *, reactor: Any) -> None:
        if settings.cluster is None:
            raise ValueError("ClusterService needs [cluster] settings")
        super().__init__()
        self.setName("cluster")
        self._settings = settings
        self._cluster = settings.cluster
        self._reactor = reactor
        self.connection = NatsConnection(settings.cluster, reactor=reactor)
        self.connection.setServiceParent(self)

    def join_lots(self, lots: LotsService, *, journal: Journal) -> ClusterSync:
        """Put JetStream sync in place of the journal-only queue; before `lots.serve` and the API."""
        settings = self._settings
        sync = ClusterSync(
            connection=self.connection,
            lots=lots.router,
            journal=journal,
            clock=self._reactor,
            prefix=self._cluster.prefix,
            gateway_id=settings.gateway.id,
            # The running configuration's lots: a reload replaces the parts' configuration.
            parks=lambda: [lot.park_code for lot in (lots.parts.config if lots.parts else settings).lots],
        )
        lots.sync = sync
        lots.unbound_listeners.append(sync.lot_unbound)
        return sync

    def serve_lots(
        self,
        lots: LotsService,
        api: CommandApi,
        *,
        status: StatusReport,
        journal: Journal,
        registry: CollectorRegistry,
    ) -> NatsCommands:
        """Answer NATS commands for the lots bound here and ask the others' through NATS, with `api`'s
        command path; share placement and tokens in NATS KV (`api` and `status` show each lot's
        gateway); the connection's, commands' and sync's metrics on `registry`.

        After the journal's replay, so the tokens it restored are not written again.
        """
        register_nats(registry, self.connection)
        deadlines = self._settings.deadlines
        path = api.commands
        commands = NatsCommands(
            connection=self.connection,
            commands=path,
            clock=self._reactor,
            prefix=self._cluster.prefix,
            gateway_id=self._settings.gateway.id,
            deadline=lambda code: deadline_of(code, deadlines),
            grace=DEADLINE_GRACE,
        )
        path.remote = commands
        lots.bound_listeners.append(commands.lot_bound)
        lots.unbound_listeners.append(commands.lot_unbound)
        CommandsService(commands).setServiceParent(self)
        if isinstance(lots.sync, ClusterSync):
            register_cluster(registry, commands, lots.sync)
        place_lots(
            self,
            lots,
            api,
            journal=journal,
            gateway_id=self._settings.gateway.id,
            reactor=self._reactor,
            status=status,
        )
        return commands


class CommandsService(Service):
    """`NatsCommands` in the service tree: its timers stop with it."""

    def __init__(self, commands: NatsCommands) -> None:
        self.commands = commands
        self.setName("nats-commands")

    def stopService(self) -> None:
        super().stopService()
        self.commands.stop()

"""The lots' side of `[cluster]`: NATS commands and JetStream sync, wired to the lots a gateway holds.

`make_makeService` calls `join_sync` when it builds the lots (the cluster's sync
takes the journal-only queue's place before anything uses it) and
`answer_commands` once the command API exists (its command path answers NATS
requests, and asks other gateways for the lots not held here).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import Service

from gateway.cloud.api import DEADLINE_GRACE, CommandPath
from gateway.cloud.metrics import register_cluster
from gateway.cluster.commands import NatsCommands
from gateway.cluster.service import ClusterService
from gateway.cluster.sync import ClusterSync
from gateway.dialects.service import LotsService
from gateway.journal.writer import Journal
from gateway.protocol.catalog import deadline_of
from gateway.settings import Config

__all__ = ["CommandsService", "answer_commands", "join_sync"]


class CommandsService(Service):
    """`NatsCommands` in the service tree: its timers stop with it."""

    def __init__(self, commands: NatsCommands) -> None:
        self.commands = commands
        self.setName("nats-commands")

    def stopService(self) -> None:
        super().stopService()
        self.commands.stop()


def join_sync(
    cluster: ClusterService, lots: LotsService, settings: Config, *, journal: Journal, reactor: Any
) -> ClusterSync:
    """Put JetStream sync in place of the journal-only queue; before `lots.serve` and the API."""
    assert settings.cluster is not None
    sync = ClusterSync(
        connection=cluster.connection,
        lots=lots.router,
        journal=journal,
        clock=reactor,
        prefix=settings.cluster.prefix,
        gateway_id=settings.gateway.id,
        # The running configuration's lots: a reload replaces the parts' configuration.
        parks=lambda: [lot.park_code for lot in (lots.parts.config if lots.parts else settings).lots],
    )
    lots.sync = sync
    lots.unbound_listeners.append(sync.lot_unbound)
    return sync


def answer_commands(
    cluster: ClusterService,
    lots: LotsService,
    path: CommandPath,
    settings: Config,
    *,
    reactor: Any,
    registry: CollectorRegistry | None = None,
) -> NatsCommands:
    """Answer NATS commands for the lots bound here; ask the others' through NATS; metrics on `registry`."""
    assert settings.cluster is not None
    deadlines = settings.deadlines
    commands = NatsCommands(
        connection=cluster.connection,
        commands=path,
        clock=reactor,
        prefix=settings.cluster.prefix,
        gateway_id=settings.gateway.id,
        deadline=lambda code: deadline_of(code, deadlines),
        grace=DEADLINE_GRACE,
    )
    path.remote = commands
    lots.bound_listeners.append(commands.lot_bound)
    lots.unbound_listeners.append(commands.lot_unbound)
    CommandsService(commands).setServiceParent(cluster)
    if registry is not None and isinstance(lots.sync, ClusterSync):
        register_cluster(registry, commands, lots.sync)
    return commands

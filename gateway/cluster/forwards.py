"""
The sinks over one journal: ``cloud.sink = "nats"`` and the ``[[forward]]`` tables (CONTRACT §9).

Each ``[[forward]]`` is a forwarding engine of its own (:class:`ForwardingEngine`)
with its own sink, progress records (named by the table's ``name``), backlog,
retry state and retention floor: one sink that is down holds back only itself.
The main ``[cloud]`` sink keeps its unnamed progress records, as before.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService

from gateway.cloud.forwarder import CloudEventsSink
from gateway.cloud.metrics import register_forwarder
from gateway.cloud.post import CloudClient
from gateway.cloud.query import QueryClient
from gateway.cluster.connection import NatsConnection
from gateway.cluster.sink import TAKE_IN_DELAY, NatsSink
from gateway.forwarding import ForwardingEngine, ForwardingService, Progress
from gateway.interfaces import Sink
from gateway.journal.writer import Journal
from gateway.settings import CloudConfig, Config, ConfigError

__all__ = ["NatsEventsService", "forward_services", "make_sink"]


def make_sink(
    cloud: CloudConfig,
    *,
    settings: Config,
    reactor: Any,
    key: SigningKey,
    connection: NatsConnection | None,
    http: CloudClient | None = None,
) -> Sink:
    """The sink ``cloud`` names: signed CloudEvents batches over HTTP, or JetStream."""
    if cloud.sink == "nats":
        if connection is None:
            raise ConfigError("cloud.sink: 'nats' needs [cluster] servers")
        return NatsSink(
            connection=connection,
            settings=cloud,
            gateway_id=settings.gateway.id,
            zone=settings.gateway.timezone,
        )
    if cloud.sink == "cloudevents":
        return CloudEventsSink(
            http=http if http is not None else CloudClient(reactor),
            clock=reactor,
            settings=cloud,
            gateway_id=settings.gateway.id,
            zone=settings.gateway.timezone,
            signing_key=key,
        )
    raise ConfigError(f"sink {cloud.sink!r} cannot be a [[forward]]")


class NatsEventsService(MultiService):
    """``cloud.sink = "nats"``: the events into JetStream (:attr:`forwarding`) and, with
    ``cloud.query_url``, the lots' autoPay queries over HTTP (:attr:`queries`), as with cloudevents."""

    def __init__(
        self,
        settings: Config,
        *,
        reactor: Any,
        journal: Journal,
        key: SigningKey,
        connection: NatsConnection,
        skipped: Callable[[int, int], int] | None = None,
    ) -> None:
        super().__init__()
        self.setName("nats-events")
        cloud = settings.cloud
        self.queries: QueryClient | None = None
        if cloud.query_url:
            self.queries = QueryClient(
                http=CloudClient(reactor),
                clock=reactor,
                url=cloud.query_url,
                gateway_id=settings.gateway.id,
                zone=settings.gateway.timezone,
                signing_key=key,
                deadlines=settings.deadlines,
            )
        sink = make_sink(cloud, settings=settings, reactor=reactor, key=key, connection=connection)
        engine = ForwardingEngine(
            journal=journal,
            clock=reactor,
            settings=cloud,
            sink=sink,
            skipped=skipped,
            take_in_delay=TAKE_IN_DELAY,
        )
        self.forwarding = ForwardingService(engine)
        self.forwarding.setServiceParent(self)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The forwarding's metrics on ``registry``."""
        register_forwarder(registry, self.forwarding.engine)


def forward_services(
    settings: Config,
    *,
    reactor: Any,
    journal: Journal,
    key: SigningKey,
    connection: NatsConnection | None,
    skipped: Callable[[int, int], int] | None = None,
) -> list[ForwardingService]:
    """One forwarding service per ``[[forward]]``, named ``forward {name}``, progress records ``name``."""
    services = []
    for forward in settings.forwards:
        sink = make_sink(forward.cloud, settings=settings, reactor=reactor, key=key, connection=connection)
        engine = ForwardingEngine(
            journal=journal,
            clock=reactor,
            settings=forward.cloud,
            sink=sink,
            progress=forward.name,
            skipped=skipped,
            take_in_delay=TAKE_IN_DELAY if forward.cloud.sink == "nats" else 0.0,
        )
        services.append(ForwardingService(engine, Progress(forward.name)))
    return services

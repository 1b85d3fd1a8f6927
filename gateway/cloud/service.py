"""The cloud side of the service tree with the ``cloudevents`` sink: the forwarding engine and queries."""

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
from gateway.forwarding import ForwardingEngine, ForwardingService
from gateway.journal.writer import Journal
from gateway.settings import Config

__all__ = ["CloudService"]


class CloudService(MultiService):
    """Signed CloudEvents batches to ``cloud.url`` (:attr:`forwarding`) and, with ``cloud.query_url``,
    the lots' autoPay queries (:attr:`queries`)."""

    def __init__(
        self,
        settings: Config,
        *,
        reactor: Any,
        journal: Journal,
        key: SigningKey,
        skipped: Callable[[int, int], int] | None = None,
    ) -> None:
        super().__init__()
        self.setName("cloud")
        cloud = settings.cloud
        http = CloudClient(reactor)
        self.queries: QueryClient | None = None
        if cloud.query_url:
            self.queries = QueryClient(
                http=http,
                clock=reactor,
                url=cloud.query_url,
                gateway_id=settings.gateway.id,
                zone=settings.gateway.timezone,
                signing_key=key,
                deadlines=settings.deadlines,
            )
        sink = CloudEventsSink(
            http=http,
            clock=reactor,
            settings=cloud,
            gateway_id=settings.gateway.id,
            zone=settings.gateway.timezone,
            signing_key=key,
        )
        engine = ForwardingEngine(journal=journal, clock=reactor, settings=cloud, sink=sink, skipped=skipped)
        self.forwarding = ForwardingService(engine)
        self.forwarding.setServiceParent(self)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The forwarding's metrics on ``registry``."""
        register_forwarder(registry, self.forwarding.engine)

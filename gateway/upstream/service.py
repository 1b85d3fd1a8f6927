"""The upstream side of the service tree with the ``t002`` sink: each lot's session and link,
its queries, and the forwarding engine that sends its uplinks upstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from gateway.cloud.metrics import register_forwarder, register_upstream
from gateway.cloud.post import CloudClient
from gateway.forwarding import ForwardingEngine, ForwardingService
from gateway.journal.writer import Journal
from gateway.settings import Config
from gateway.upstream.forwarding import UpstreamQueries, UpstreamSink
from gateway.upstream.lots import UpstreamLots
from gateway.upstream.relay import RelayLots, RelaySync

__all__ = ["UPSTREAM_CONCURRENCY", "UpstreamService"]

UPSTREAM_CONCURRENCY = 16
"""With the t002 sink, how many lots' uplinks go upstream at once (and keep-alive connections)."""


class UpstreamService(MultiService):
    """The lots' upstream links (:attr:`links`), their autoPay (:attr:`queries`) and :attr:`forwarding`."""

    def __init__(
        self,
        settings: Config,
        *,
        reactor: Any,
        journal: Journal,
        lots: RelayLots,
        sync: RelaySync,
        skipped: Callable[[int, int], int] | None = None,
    ) -> None:
        super().__init__()
        self.setName("upstream")
        cloud = settings.cloud
        self.links = UpstreamLots(
            config=settings,
            http=CloudClient(reactor, connections=UPSTREAM_CONCURRENCY),
            clock=reactor,
            endpoint=lambda: endpoints.clientFromString(reactor, cloud.downlink_endpoint),
            journal=journal,
            lots=lots,
            sync=sync,
            deadlines=settings.deadlines,
        )
        self.queries = UpstreamQueries(
            session_of=self.links.session, clock=reactor, deadlines=settings.deadlines
        )
        sink = UpstreamSink(
            url=cloud.url,
            gateway_id=settings.gateway.id,
            session_of=self.links.session,
            clock=reactor,
            settings=cloud,
            concurrency=UPSTREAM_CONCURRENCY,
        )
        engine = ForwardingEngine(journal=journal, clock=reactor, settings=cloud, sink=sink, skipped=skipped)
        self.forwarding = ForwardingService(engine)
        self.forwarding.setServiceParent(self)

    def register_metrics(self, registry: CollectorRegistry) -> None:
        """The forwarding's and the upstream links' metrics on ``registry``."""
        register_forwarder(registry, self.forwarding.engine)
        register_upstream(registry, self.links)

    def startService(self) -> None:
        super().startService()
        self.links.start()

    def stopService(self) -> Deferred[Any]:
        """Close the links first (their relays journal what they pass on), then stop forwarding."""
        links = self.links.stop()
        return DeferredList([links, maybeDeferred(super().stopService)])

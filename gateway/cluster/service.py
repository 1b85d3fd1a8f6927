"""The ``[cluster]`` part of the service tree: the NATS connection, and what uses it."""

from __future__ import annotations

from typing import Any

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed

from gateway.cluster.connection import NatsConnection
from gateway.settings import ClusterSettings

__all__ = ["ClusterService"]


class ClusterService(MultiService):
    """The gateway's NATS connection (:attr:`connection`) and the parts that use it.

    The connection is the first child: it starts first, and the children stop
    one after the other, the last added first, so the connection closes only
    once what uses it (commands, sync) has stopped.
    """

    def __init__(self, settings: ClusterSettings, *, reactor: Any) -> None:
        super().__init__()
        self.setName("cluster")
        self.connection = NatsConnection(settings, reactor=reactor)
        self.connection.setServiceParent(self)

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        stopped: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            stopped.addCallback(_stop_after, child)
        return stopped


def _stop_after(_: object, child: IService) -> Deferred[Any]:
    """Stop ``child`` once the one before has stopped; its failure is logged, the next still stops."""
    return DeferredList([maybeDeferred(child.stopService)])

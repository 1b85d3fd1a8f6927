"""
The root of the gateway's service tree: it stops its children in order, the last added first.

Each child stops once the one after it has finished: the parts append as they
stop (offline records, a checkpoint) and some only once what they wait for is
done, so the journal, the first child, closes only after every other part has
stopped. A listener that cannot bind its port (:class:`gateway.limits.ListenFailed`)
is handed to :attr:`GatewayService.cannot_listen`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed

from gateway.limits import ListenFailed

__all__ = ["GatewayService", "OrderedService"]


class OrderedService(MultiService):
    """A `MultiService` whose children stop one after the other, the last added first, each once
    the one after it has finished (a child's failure to stop is logged; the next still stops)."""

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        stopped: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            stopped.addCallback(_stop_after, child)
        return stopped


class GatewayService(OrderedService):
    """
    The gateway's service tree: the journal first, then the parts that use it.

    Its children stop one after the other, the last added first, each once the
    one after it has finished: the parts append as they stop (offline records,
    a checkpoint) and some only once what they wait for is done, so the
    journal, the first child, closes only after every other part has stopped.
    """

    cannot_listen: Callable[[str, BaseException], NoReturn] | None = None
    """Called with a listener's name and error when it cannot bind its port (see gateway.tap.makeService)."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenFailed as failed:
            self._failed(failed)

    def startService(self) -> None:
        try:
            super().startService()
        except ListenFailed as failed:
            self._failed(failed)

    def _failed(self, failed: ListenFailed) -> None:
        if self.cannot_listen is None:
            raise failed.error
        self.cannot_listen(failed.name, failed.error)


def _stop_after(_: object, child: IService) -> Deferred[Any]:
    """Stop `child` once the one before has stopped; its failure is logged, the next still stops."""
    return DeferredList([maybeDeferred(child.stopService)])

"""What the cluster's parts need of the gateway's NATS connection (`gateway.cluster.connection`).

Protocols only, so that commands and sync can be driven by a test double
without a NATS client.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

from twisted.internet.defer import Deferred

__all__ = ["NatsRunner", "StreamRunner"]

_T = TypeVar("_T")


class NatsRunner(Protocol):
    """The connection's state and its NATS loop, as commands over NATS use them."""

    @property
    def state(self) -> str:
        """ "connecting", "connected", "reconnecting" or "closed"."""

    @property
    def state_observers(self) -> list[Callable[[str], None]]:
        """Called on the reactor thread with each new state."""

    def run(self, fn: Callable[[Any, Any], Awaitable[_T]]) -> Deferred[_T]:
        """Run `fn(nc, js)` on the NATS loop; its result fires on the reactor thread."""

    def to_reactor(self, f: Callable[..., object], *args: object) -> None:
        """From a NATS-loop callback: call `f(*args)` on the reactor thread."""


class StreamRunner(NatsRunner, Protocol):
    """A `NatsRunner` that also makes JetStream streams (sync's stream)."""

    def ensure_stream(self, name: str, subjects: list[str], **config: Any) -> Deferred[object]:
        """The stream `name`, created if missing."""

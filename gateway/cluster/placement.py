"""
Placement (CONTRACT §9): which gateway holds each lot's downlink, in the KV bucket ``cpmi_lots``.

Key = park, value ``{"gateway": id, "since": RFC 3339}``: written when a lot
binds here, deleted when it unbinds (only if it still names this gateway).
Every gateway watches the bucket, so each knows every lot's holder
(:meth:`Placement.holder`, for ``GET /v1/parks`` and the status page).

Newest bind wins: a gateway that sees a lot it holds bound on another gateway,
later than its own bind, closes its own connection for it (the lot has moved,
e.g. back through the balancer after a failover, and the old connection is
half-open or about to go). "Later" is the bucket's order (a higher revision)
once this gateway's own write has landed, else the ``since`` times.

Binding never waits on NATS: with NATS down the lot binds here at once, and
its placement is written when NATS is back (`gateway.cluster.buckets`). An
entry naming this gateway for a lot it does not hold (left by a crash) is
deleted once seen.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from attrs import define, frozen
from twisted.application.service import Service
from twisted.logger import Logger

from gateway.cluster.buckets import Bucket, Value
from gateway.cluster.connection import NatsConnection
from gateway.protocol.times import rfc3339_seconds, utc_rfc3339

__all__ = ["LOTS_BUCKET", "Holder", "Placement"]

LOTS_BUCKET = "cpmi_lots"

log = Logger()


@frozen
class Holder:
    """A lot's entry in the bucket: the gateway holding it, since when, at which revision."""

    gateway: str
    since: str
    revision: int


@define
class _Mine:
    since: float
    revision: int | None = None


class Placement(Service):
    """The placement bucket, kept up to date with the lots bound here, and watched."""

    def __init__(
        self,
        connection: NatsConnection,
        *,
        gateway_id: str,
        clock: Any,
        disconnect: Callable[[str, str], object],
        retry: float = 1.0,
    ) -> None:
        self.gateway_id = gateway_id
        self._clock = clock
        self._disconnect = disconnect
        self.holders: dict[str, Holder] = {}
        """Every lot's entry in the bucket, as last seen."""
        self._mine: dict[str, _Mine] = {}
        self.bucket = Bucket(connection, LOTS_BUCKET, clock=clock, on_entry=self._entry, retry=retry)
        self.setName("placement")

    def startService(self) -> None:
        super().startService()
        self.bucket.start()

    def stopService(self) -> None:
        super().stopService()
        self.bucket.stop()

    # -- the lots' side (LotsService's bound and unbound listeners)

    def lot_bound(self, park: str) -> None:
        """A lot bound here: say so in the bucket (now, or when NATS is back)."""
        mine = self._mine[park] = _Mine(self._clock.seconds())
        value = {"gateway": self.gateway_id, "since": utc_rfc3339(mine.since)}

        def written(revision: int) -> None:
            if self._mine.get(park) is mine:
                mine.revision = revision

        self.bucket.put(park, value, written)

    def lot_unbound(self, park: str) -> None:
        """A lot left here: delete its entry, unless another gateway's bind replaced it."""
        self._mine.pop(park, None)
        self.bucket.delete_if(park, self._names_me)

    # -- what others see

    def holder(self, park: str) -> str | None:
        """The gateway holding ``park``'s downlink: this one, another (from the bucket), or None."""
        if park in self._mine:
            return self.gateway_id
        held = self.holders.get(park)
        return held.gateway if held is not None else None

    # -- the bucket's entries

    def _names_me(self, value: Value) -> bool:
        return value.get("gateway") == self.gateway_id

    def _entry(self, park: str, value: Value | None, revision: int) -> None:
        if value is None:
            self.holders.pop(park, None)
            return
        gateway, since = str(value.get("gateway", "")), str(value.get("since", ""))
        self.holders[park] = Holder(gateway, since, revision)
        mine = self._mine.get(park)
        if gateway == self.gateway_id:
            if mine is None:
                self.bucket.delete_if(park, self._names_me)  # left by this gateway before a restart
            return
        if mine is None:
            return
        if mine.revision is not None:
            newer = revision > mine.revision
        else:
            when = _seconds(since)
            newer = when is not None and when >= mine.since
        if newer:
            del self._mine[park]
            log.info(
                "lot {park} bound on gateway {gateway} since {since}: closing its connection here",
                park=park,
                gateway=gateway,
                since=since,
            )
            self._disconnect(park, f"bound on gateway {gateway} since {since}")


def _seconds(text: str) -> float | None:
    try:
        return rfc3339_seconds(text)
    except ValueError:
        return None


def place_lots(
    cluster: Any, lots: Any, api: Any, *, journal: Any, gateway_id: str, reactor: Any, status: Any = None
) -> tuple[Placement, Any]:
    """With [cluster]: placement and tokens shared through NATS, once the journal is replayed.

    ``cluster`` is the `ClusterService` (they stop before its connection),
    ``lots`` the `LotsService` (its binds and sessions), ``api`` the
    `CommandApi` (its parks listing shows each lot's gateway), ``status``
    the `StatusReport` (its lot table too).
    """
    from gateway.cluster.tokens import TokenShare

    def config() -> Any:
        return lots.parts.config

    def disconnect(park: str, reason: str) -> object:
        lot = config().lot_by_park(park)
        return lot is not None and lots.router.disconnect(lot, reason)

    placement = Placement(cluster.connection, gateway_id=gateway_id, clock=reactor, disconnect=disconnect)
    lots.bound_listeners.append(placement.lot_bound)
    lots.unbound_listeners.append(placement.lot_unbound)
    placement.setServiceParent(cluster)
    tokens = TokenShare(
        cluster.connection,
        sessions=lots.sessions,
        journal=journal,
        lot_by_park=lambda park: config().lot_by_park(park),
        gateway_id=gateway_id,
        clock=reactor,
    )
    tokens.setServiceParent(cluster)
    api.placement = placement.holder
    if status is not None:
        status.placement.append(placement.holder)
    return placement, tokens

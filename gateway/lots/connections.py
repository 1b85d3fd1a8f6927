"""Which connection is which lot, for every dialect: the one registry, and the bind lifecycle.

A lot's downlink connection goes through `Bind`: it opens `UNBOUND`, is
`BINDING` while a login is checked (its frames wait), `BOUND` once it is a lot's
connection, and `CLOSING` from the moment it is told to close (or is lost) on.
The phase is one attribute of the connection (a connection stays one slotted
object), read where the booleans `binding` and `closing` were.

`Registry` keeps the connections not bound yet (for the bind timeout) and the
one bound connection of each lot, and remembers when and from where each lot was
last seen once its connection is gone: what `LotState` shows. The standard's
TCP downlink (`gateway.lots.downlink`) and the bolink dialect
(`gateway.dialects.bolink`) each hold one; what they journal and log around a
bind stays theirs.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

from gateway.interfaces import LotState

__all__ = ["Bind", "Bindable", "Registry"]


class Bind(enum.Enum):
    """Where a connection stands in its bind lifecycle."""

    UNBOUND = "unbound"
    BINDING = "binding"
    BOUND = "bound"
    CLOSING = "closing"


class Bindable(Protocol):
    """What the registry reads of a connection."""

    @property
    def peer(self) -> str: ...

    @property
    def last_read(self) -> float: ...

    @property
    def bound_at(self) -> float | None: ...


C = TypeVar("C", bound=Bindable)


class Registry(Generic[C]):
    """The connections of one listener's lots: unbound ones, and one bound connection per park."""

    __slots__ = ("_bound", "_last_peer", "_last_seen", "_unbound")

    def __init__(self) -> None:
        self._bound: dict[str, C] = {}
        # Insertion-ordered: the oldest unbound connection first.
        self._unbound: dict[C, None] = {}
        self._last_seen: dict[str, float] = {}
        self._last_peer: dict[str, str] = {}

    def opened(self, connection: C) -> None:
        """A connection was made: unbound until it binds."""
        self._unbound[connection] = None

    def lot(self, park: str) -> C | None:
        """The connection bound to `park`, if any."""
        return self._bound.get(park)

    def holds(self, connection: C, park: str) -> bool:
        """Whether `connection` is the one bound to `park`."""
        return self._bound.get(park) is connection

    def bind(self, connection: C, park: str) -> None:
        """`connection` is now `park`'s (the caller has released any other first)."""
        self._unbound.pop(connection, None)
        self._bound[park] = connection

    def release(self, connection: C, park: str) -> bool:
        """`connection` is `park`'s no more, remembering when and from where the lot was last seen.

        Returns whether it was `park`'s bound connection (a replaced one is not).
        """
        held = self._bound.get(park) is connection
        if held:
            del self._bound[park]
        seen = self._last_seen.get(park)
        if seen is None or connection.last_read > seen:
            self._last_seen[park] = connection.last_read
        self._last_peer[park] = connection.peer
        return held

    def seen(self, park: str, when: float) -> None:
        """`park` was heard from at `when` some other way than a connection here (an HTTP uplink)."""
        self._last_seen[park] = when

    def forget(self, connection: C) -> None:
        """The connection is gone: drop it from the unbound ones."""
        self._unbound.pop(connection, None)

    def unbound(self) -> list[C]:
        """The connections not bound, oldest first (a copy: closing them changes the registry)."""
        return list(self._unbound)

    def bound(self) -> list[tuple[str, C]]:
        """Each bound lot and its connection (a copy)."""
        return list(self._bound.items())

    def bound_parks(self) -> Iterable[str]:
        """The parks with a bound connection, as they are (a view: read it before anything changes)."""
        return self._bound.keys()

    def bound_connections(self) -> Iterable[C]:
        """The bound connections, as they are (the sweep's pass: change nothing while iterating)."""
        return self._bound.values()

    def state(self, park: str) -> LotState:
        """The lot's connection state: bound (since when), or when and from where it was last seen."""
        connection = self._bound.get(park)
        last_seen = self._last_seen.get(park)
        if connection is not None:
            read = connection.last_read
            seen = read if last_seen is None or read >= last_seen else last_seen
            return LotState(park, True, connection.bound_at, seen, connection.peer)
        return LotState(park, False, None, last_seen, self._last_peer.get(park, ""))

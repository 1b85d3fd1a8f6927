"""The garbage collector for a long-running gateway: long-lived objects are set aside.

CPython's full collections walk every container object in the process. Most
of a gateway's live as long as it does: what start-up builds (modules, the
interface catalog, the configuration, the replayed state) and each bound
lot's connection, which lasts for days. Walked on every full pass they were
the uplink's and gateOpen's p99 (tens of milliseconds a pass at 10,000 lots;
docs/benchmarks.md). So they are frozen (`gc.freeze`): once the reactor runs,
and again when a wave of binds has settled, as after a restart when every lot
reconnects. During a long wave (the month's end: every lot logs in again)
what has bound so far is frozen every `FREEZE_EVERY` binds as well, without a
collection: `gc.freeze` only moves the collector's lists, and the full passes
the wave's garbage still triggers then walk the connections bound since, not
all of them (up to 60 ms a pass at 10,000 lots otherwise).

Frozen objects are still freed by reference counting; only cycles among them
would wait. Each settling therefore unfreezes, collects everything once
(one pause, at a quiet moment) and freezes what is left, so a cycle left by
a lot that went away lasts until the next wave at most.
"""

from __future__ import annotations

import gc
from collections.abc import Callable
from typing import Any

from twisted.application.service import Service
from twisted.internet.interfaces import IDelayedCall, IReactorTime

__all__ = ["FREEZE_EVERY", "SETTLE_AFTER", "BindSettler", "settle_heap"]

SETTLE_AFTER = 10.0
"""Seconds without a new bind after which the lots' connections are frozen."""

FREEZE_EVERY = 1000
"""Binds within a wave after which what lives is frozen, uncollected, until the wave settles."""


def settle_heap() -> int:
    """Unfreeze, collect everything, freeze what is left; the number of objects frozen."""
    gc.unfreeze()
    gc.collect()
    gc.freeze()
    return gc.get_freeze_count()


class BindSettler(Service):
    """Freezes the heap `quiet` seconds after the last of a wave of lot binds."""

    def __init__(
        self,
        clock: IReactorTime,
        quiet: float = SETTLE_AFTER,
        every: int = FREEZE_EVERY,
        freeze: Callable[[], None] = gc.freeze,
    ) -> None:
        self._clock = clock
        self._quiet = quiet
        self._every = every
        self._freeze = freeze
        self._call: IDelayedCall | None = None
        self._since_frozen = 0
        self.settled = 0
        self.frozen_in_waves = 0

    def bound(self, *_: Any) -> None:
        """A lot bound: settle once binds have been quiet for a while (a `bound_listeners` hook)."""
        if self._call is not None and self._call.active():
            self._call.reset(self._quiet)
        else:
            self._call = self._clock.callLater(self._quiet, self._settle)
        self._since_frozen += 1
        if self._since_frozen >= self._every:
            self._since_frozen = 0
            self._freeze()  # cycles among them wait for the settling's collection
            self.frozen_in_waves += 1

    def _settle(self) -> None:
        self._call = None
        self._since_frozen = 0
        settle_heap()
        self.settled += 1

    def stop(self) -> None:
        """Cancel a pending settling."""
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def stopService(self) -> None:
        super().stopService()
        self.stop()

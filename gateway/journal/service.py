"""
The journal's part of the service tree: the journal and what keeps it (space, seals, retention).

:class:`JournalService` starts first and stops last: the parts that append as
they stop (offline records, a checkpoint, the last seal) must find it open.
Services that write the journal's own bookkeeping (the checkpointer) are its
children and stop before its sealer, so the last seal covers them. Other
rooms hold back retention through :meth:`JournalService.keep`, not by
reaching into it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from nacl.signing import SigningKey
from twisted.application.service import MultiService
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred

from gateway.journal.retention import Retention, RunBlocking
from gateway.journal.sealer import Sealer
from gateway.journal.space import SpaceWatch
from gateway.journal.writer import Journal

__all__ = ["JournalService"]


class JournalService(MultiService):
    """The open journal with its space watch, sealer and retention; closes the journal as it stops."""

    def __init__(
        self,
        journal: Journal,
        *,
        clock: Any,
        key: SigningKey,
        gateway_id: str,
        min_free_bytes: int,
        seal_interval: float,
        seal_records: int,
        retain_bytes: int,
        retain_age: float,
        run_blocking: RunBlocking,
    ) -> None:
        super().__init__()
        self.setName("journal")
        self.journal = journal
        self.space = SpaceWatch(path=journal.path, min_free_bytes=min_free_bytes, clock=clock)
        journal.guard = self.space.guard
        self.sealer = Sealer(
            journal=journal,
            key=key,
            gateway_id=gateway_id,
            clock=clock,
            interval=seal_interval,
            records=seal_records,
        )
        self._floors: list[Callable[[], int | None]] = []
        self.retention = Retention(
            journal,
            clock,
            max_bytes=retain_bytes,
            max_age=retain_age,
            floor=self._floor,
            run_blocking=run_blocking,
        )

    def keep(self, floor: Callable[[], int | None]) -> None:
        """Retention keeps every seq from ``floor()`` on (None: nothing to keep for it now)."""
        self._floors.append(floor)

    def _floor(self) -> int:
        """The first seq retention must keep: what every keeper still needs."""
        floors = [seq for seq in (floor() for floor in self._floors) if seq is not None]
        return min(floors) if floors else self.journal.committed_seq + 1

    def ready(self) -> tuple[bool, str]:
        """Whether the journal can take records, and what an operator must see about it."""
        problem = self.journal.problem or self.space.problem
        if problem:
            return False, f"journal cannot write: {problem}"
        # Damage set aside does not stop serving, but whoever looks must see it.
        damaged = "; ".join(
            f"segment {q.segment} quarantined at seq {q.seq}: {q.reason}" for q in self.journal.quarantined
        )
        return True, f"journal writable; {damaged}" if damaged else "journal writable"

    def startService(self) -> None:
        self.space.start()
        self.sealer.start()
        super().startService()  # the children (the checkpointer)
        self.retention.start()

    def stopService(self) -> Deferred[Any]:
        """Stop retention and the children, seal the end, then close the journal once all is durable."""
        stopping = [maybeDeferred(self.retention.stop), maybeDeferred(super().stopService)]
        stopping.append(maybeDeferred(self.sealer.stop))  # after the children's last appends
        self.space.stop()
        # A failed final fsync is the journal's to log: the rest of the stop still completes.
        return DeferredList(stopping).addCallback(lambda _: DeferredList([maybeDeferred(self.journal.close)]))

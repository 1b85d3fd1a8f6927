"""The sealer: appends a seal record every so often, and one when the gateway stops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import JournalAppend
from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.record import Record
from gateway.journal.seals import seal_body

__all__ = ["Sealer"]

_log = Logger()


class SealedJournal(JournalAppend, Protocol):
    """What the sealer needs of :class:`gateway.journal.writer.Journal`."""

    @property
    def head(self) -> tuple[int, str]: ...

    @property
    def commit_observers(self) -> list[Callable[[list[Record]], None]]: ...


class Sealer:
    """
    Seals the journal's chain head every ``interval`` seconds or ``records`` records.

    Whichever comes first, and only when something was appended since the last
    seal (a quiet journal gets no seal records). Seal records themselves do not
    count. :meth:`stop` seals once more, so a journal closed cleanly ends sealed.
    """

    def __init__(
        self,
        *,
        journal: SealedJournal,
        key: SigningKey,
        gateway_id: str,
        clock: IReactorTime,
        interval: float,
        records: int,
    ) -> None:
        self._journal = journal
        self._key = key
        self._gateway_id = gateway_id
        self._clock = clock
        self._interval = interval
        self._records = records
        self._since = 0
        self._sealed_seq = -1  # the seq of the last seal record appended
        self._timer: IDelayedCall | None = None
        self._running = False

    def start(self) -> None:
        """Count committed records and start the timer."""
        if self._running:
            return
        self._running = True
        self._journal.commit_observers.append(self._committed)
        self._timer = self._clock.callLater(self._interval, self._tick)

    def stop(self) -> Deferred[Any] | None:
        """Stop the timer and seal what was appended since the last seal; fires once it is durable."""
        if not self._running:
            return None
        self._running = False
        self._journal.commit_observers.remove(self._committed)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        return self.seal()

    def seal(self) -> Deferred[Any] | None:
        """Append a seal of the current head, unless nothing was appended since the last seal."""
        seq, chain = self._journal.head
        if seq == 0 or seq == self._sealed_seq:
            return None
        self._since = 0
        self._sealed_seq = seq + 1
        d = self._journal.append(SEAL_RECORD, "", "", "", seal_body(self._key, self._gateway_id, seq, chain))
        return d.addErrback(self._not_sealed)

    def _committed(self, records: list[Record]) -> None:
        self._since += sum(1 for record in records if record.kind != SEAL_RECORD)
        if self._since >= self._records:
            self.seal()

    def _tick(self) -> None:
        self._timer = self._clock.callLater(self._interval, self._tick)
        self.seal()

    def _not_sealed(self, failure: Failure) -> None:
        # The next seal covers this head too; a failed append rolled the seq back.
        self._sealed_seq = -1
        _log.warn("journal: could not append a seal record: {error}", error=failure.getErrorMessage())

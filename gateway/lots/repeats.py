"""Repeated requests (B.2.3.6): the same `oprNum` from the same lot.

A repeat is answered with the first answer and is neither journaled nor
forwarded again; a repeat that arrives while the first is still being
journaled waits for its answer. Past `limit` repeats within `window` seconds
of the first, the lot is answered 9007.
"""

from __future__ import annotations

from attrs import define
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from gateway.lots.answers import Answer
from gateway.protocol.results import Result

TOO_MANY = Answer(
    Result.TOO_MANY_REPEATS, Result.TOO_MANY_REPEATS.message("more than 5 repeats within an hour")
)


@define
class _Seen:
    first: float
    repeats: int = 0
    answer: Answer | None = None
    waiting: list[Deferred[Answer]] | None = None


class Repeats:
    """The `oprNum`s each lot used within the last `window` seconds, and their answers."""

    def __init__(self, clock: IReactorTime, window: float = 3600.0, limit: int = 5) -> None:
        self._clock = clock
        self._window = window
        self._limit = limit
        self._entries: dict[tuple[str, str], _Seen] = {}

    def _prune(self, now: float) -> None:
        entries = self._entries
        horizon = now - self._window
        while entries:
            key = next(iter(entries))
            if entries[key].first > horizon:
                break
            del entries[key]

    def seen(self, park: str, opr: str) -> Deferred[Answer] | None:
        """The answer for a repeat, or None when the request is to be processed.

        Every call for an `oprNum` seen before counts as a repeat. When the
        first request was answered without being stored (a rejection), the
        repeat is processed again: call `begin`.
        """
        self._prune(self._clock.seconds())
        entry = self._entries.get((park, opr))
        if entry is None:
            return None
        entry.repeats += 1
        if entry.repeats > self._limit:
            return succeed(TOO_MANY)
        if entry.answer is not None:
            return succeed(entry.answer)
        if entry.waiting is not None:
            waiter: Deferred[Answer] = Deferred()
            entry.waiting.append(waiter)
            return waiter
        return None

    def begin(self, park: str, opr: str) -> None:
        """Mark the request as being processed, so repeats wait for its answer."""
        entry = self._entries.get((park, opr))
        if entry is None:
            entry = self._entries[(park, opr)] = _Seen(first=self._clock.seconds())
        entry.waiting = []

    def finish(self, park: str, opr: str, answer: Answer, stored: bool) -> None:
        """Give the answer; keep it for later repeats when the request was `stored`."""
        entry = self._entries.get((park, opr))
        if entry is None:
            return
        waiting, entry.waiting = entry.waiting or [], None
        if stored:
            entry.answer = answer
        for waiter in waiting:
            waiter.callback(answer)

    def restore(self, park: str, opr: str, at: float, answer: Answer) -> None:
        """Remember a stored request found in the journal at start-up."""
        if at <= self._clock.seconds() - self._window:
            return
        entry = self._entries.get((park, opr))
        if entry is None:
            self._entries[(park, opr)] = _Seen(first=at, answer=answer)
        else:
            entry.answer = answer

    def __len__(self) -> int:
        return len(self._entries)

"""Repeated requests (B.2.3.6): the same `oprNum` from the same lot.

A repeat is answered with the first answer and is neither journaled nor
forwarded again; a repeat that arrives while the first is still being
journaled waits for its answer. Past `limit` repeats within `window` seconds
of the first, the lot is answered 9007.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime

from gateway.lots.answers import Answer
from gateway.protocol.results import Result

TOO_MANY = Answer(
    Result.TOO_MANY_REPEATS, Result.TOO_MANY_REPEATS.message("more than 5 repeats within an hour")
)


_Key = tuple[str, str]


class Repeats:
    """The `oprNum`s each lot used within the last `window` seconds, and their answers.

    An hour of a busy gateway's uplinks is hundreds of thousands of entries,
    so they are kept as plain dict items (strings, floats and the shared answer
    values) rather than an object each: the garbage collector's full passes
    then have a few dicts to walk, not one object per uplink.
    """

    def __init__(self, clock: IReactorTime, window: float = 3600.0, limit: int = 5) -> None:
        self._clock = clock
        self._window = window
        self._limit = limit
        self._first: dict[_Key, float] = {}  # in order of arrival, for pruning
        self._answers: dict[_Key, Answer] = {}
        self._repeats: dict[_Key, int] = {}
        self._waiting: dict[_Key, list[Deferred[Answer]]] = {}

    def _prune(self, now: float) -> None:
        first = self._first
        horizon = now - self._window
        while first:
            key = next(iter(first))
            if first[key] > horizon:
                break
            del first[key]
            self._answers.pop(key, None)
            self._repeats.pop(key, None)

    def seen(self, park: str, opr: str) -> Deferred[Answer] | None:
        """The answer for a repeat, or None when the request is to be processed.

        Every call for an `oprNum` seen before counts as a repeat. When the
        first request was answered without being stored (a rejection), the
        repeat is processed again: call `begin`.
        """
        self._prune(self._clock.seconds())
        key = (park, opr)
        if key not in self._first:
            return None
        repeats = self._repeats[key] = self._repeats.get(key, 0) + 1
        if repeats > self._limit:
            return succeed(TOO_MANY)
        answer = self._answers.get(key)
        if answer is not None:
            return succeed(answer)
        waiting = self._waiting.get(key)
        if waiting is not None:
            waiter: Deferred[Answer] = Deferred()
            waiting.append(waiter)
            return waiter
        return None

    def begin(self, park: str, opr: str) -> None:
        """Mark the request as being processed, so repeats wait for its answer."""
        key = (park, opr)
        if key not in self._first:
            self._first[key] = self._clock.seconds()
        self._waiting[key] = []

    def finish(self, park: str, opr: str, answer: Answer, stored: bool) -> None:
        """Give the answer; keep it for later repeats when the request was `stored`."""
        key = (park, opr)
        waiting = self._waiting.pop(key, None) or []
        if stored and key in self._first:
            self._answers[key] = answer
        for waiter in waiting:
            waiter.callback(answer)

    def restore(self, park: str, opr: str, at: float, answer: Answer) -> None:
        """Remember a stored request found in the journal at start-up."""
        if at <= self._clock.seconds() - self._window:
            return
        key = (park, opr)
        if key not in self._first:
            self._first[key] = at
        self._answers[key] = answer

    def __len__(self) -> int:
        return len(self._first)

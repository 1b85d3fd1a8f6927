"""Repeated requests (B.2.3.6): the same `oprNum` from the same lot.

A repeat is answered with the first answer and is neither journaled nor
forwarded again; a repeat that arrives while the first is still being
journaled waits for its answer. Past `limit` repeats within `window` seconds
of the first, the lot is answered 9007.

Only a request that was stored is a repeat (CONTRACT §4): an attempt answered
without being stored (a refusal, or 9999 for a full disk, a failing journal or
a fault inside the gateway) leaves its oprNum free and uncounted, so the lot's
next attempt is processed as a first one. `attempt` guarantees that every
attempt begun is finished, whatever happens while it is handled.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.lots.answers import Answer
from gateway.protocol.results import Result

TOO_MANY = Answer(
    Result.TOO_MANY_REPEATS, Result.TOO_MANY_REPEATS.message("more than 5 repeats within an hour")
)
FAULT = Answer.of(Result.FAILED, "internal error in the gateway; retry")
"""The answer to a request whose handling failed inside the gateway: not stored, so the lot retries."""

log = Logger()


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

        Every call for an `oprNum` stored (or being processed) counts as a
        repeat. An `oprNum` whose attempts were all answered without being
        stored is new: the request is processed (`attempt`, or `begin`).
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
        """Give the answer; keep it for later repeats when the request was `stored`.

        A request not stored is no request of the repeat rule: its `oprNum` is
        forgotten, with the repeats counted while it was processed, so that
        failures (a full disk answering 9999 six times, say) never add up to 9007.
        """
        key = (park, opr)
        waiting = self._waiting.pop(key, None) or []
        if stored:
            if key in self._first:
                self._answers[key] = answer
        elif key not in self._answers:
            self._first.pop(key, None)
            self._repeats.pop(key, None)
        for waiter in waiting:
            waiter.callback(answer)

    def attempt(
        self, park: str, opr: str, handle: Callable[[], Deferred[tuple[Answer, bool]]]
    ) -> Deferred[Answer]:
        """Process the first attempt of `opr`: its repeats wait for it, and it is always finished.

        `handle` gives the answer and whether the request was stored. When it
        raises or fails instead, the fault is logged, the attempt is answered
        FAULT (9999, not stored) and the `oprNum` freed: no later attempt is
        left waiting on an answer that would never come.
        """
        self.begin(park, opr)
        try:
            handled = handle()
        except Exception:
            handled = fail()

        def faulted(failure: Failure) -> tuple[Answer, bool]:
            log.failure(
                "handling oprNum {opr} of lot {park} failed inside the gateway", failure, park=park, opr=opr
            )
            return FAULT, False

        def done(outcome: tuple[Answer, bool]) -> Answer:
            answer, stored = outcome
            self.finish(park, opr, answer, stored)
            return answer

        return handled.addErrback(faulted).addCallback(done)

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

"""
Uplinks to the upstream platform: the ``t002`` sink of the forwarder, and ``autoPay`` asked at once.

:class:`UpstreamSink` plugs into :class:`gateway.cloud.forwarder.Forwarder`,
which follows the journal, keeps progress and rejections as records and backs
off while the upstream is away, as it does for CloudEvents. What differs is
the delivery: every journaled ``uplink`` of a lot (a standard lot's request,
or a dialect's message translated to the standard) is sent upstream as the
standard's HTTP request, ``param={JSON}``, with the lot's own ``oprNum`` on
every attempt, by that lot's :class:`~gateway.upstream.session.UpstreamSession`.

Order and outcomes
------------------
A lot's uplinks go one at a time, in journal order; different lots go side
by side (at most ``concurrency`` at once). For each request:

- ``0000``: delivered.
- ``9000`` even after a new login, ``9007`` (the upstream's own repeat
  limit), ``9999`` (failed: nothing against the message), HTTP 5xx/408/429,
  no answer, a network error, a refused login or the repeat rule's hold: not
  delivered yet; it and the lot's later uplinks go again after the lot's own
  backoff (``Outcome.retry_at``). Other lots' uplinks are not held up by it.
- any other ``9xxx`` (or a code the standard does not have), or HTTP 4xx:
  refused. The forwarder journals a ``rejected`` record with the upstream's
  answer, and the lot's next uplink follows.

Records of other kinds (lot online/offline, legacy messages no standard
message was made of, the gateway's own bookkeeping) have no counterpart in
the standard and stay in the journal.

Queries
-------
:class:`UpstreamQueries` answers a lot's ``autoPay`` (a ``query`` record) by
sending it upstream at once, by the same session; the upstream's answer --
its result code, message and data -- is the lot's answer, and no answer
within the interface's deadline is ``9999``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from attrs import evolve, frozen
from twisted.internet.defer import CancelledError, Deferred, DeferredSemaphore, gatherResults, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cloud.forwarder import retry_delay
from gateway.cloud.post import failure_reason
from gateway.interfaces import Entry, Outcome, Split
from gateway.journal.kinds import UPLINK_RECORD
from gateway.journal.record import Record, dumps_compact
from gateway.protocol.catalog import deadline_of
from gateway.protocol.results import Result
from gateway.settings import CloudConfig
from gateway.upstream.session import Exchange, LoginRefused, RepeatLimit, UpstreamSession

__all__ = ["UpstreamQueries", "UpstreamSink"]

_TYPE_PREFIX = "org.cpmi.t002."
_OK = Result.OK.code
# 9000 twice, the upstream's own repeat limit, and 9999 "failed" (which a gateway answers
# when it cannot store the message now) say nothing against the message: it goes again.
_RETRIED_CODES = frozenset({Result.TOKEN_INVALID.code, Result.TOO_MANY_REPEATS.code, Result.FAILED.code})

SessionOf = Callable[[str], "UpstreamSession | None"]
"""The upstream session of a park, or None when the park has no upstream account now."""

log = Logger()


def judge(exchange: Exchange) -> Outcome:
    """What the upstream's answer to one uplink makes of it (see the module docstring)."""
    status = exchange.status
    if status != 200:
        if 400 <= status < 500 and status not in (408, 429):
            return Outcome.refusal(status, exchange.text.encode("utf-8"))
        return Outcome.not_yet(f"HTTP {status}", status)
    response = exchange.response
    if response is None:
        return Outcome.not_yet(
            f"the upstream's answer is not a response envelope: {exchange.text[:80]!r}", status
        )
    if response.result_code == _OK:
        return Outcome.delivered(status)
    if response.result_code in _RETRIED_CODES:
        return Outcome.not_yet(f"upstream {response.result_code} {response.result_message}".strip(), status)
    return Outcome.refusal(status, exchange.text.encode("utf-8"))


class UpstreamSink:
    """The forwarder's ``t002`` sink: each lot's uplinks, in order, as the standard's requests."""

    def __init__(
        self,
        *,
        url: str,
        gateway_id: str,
        session_of: SessionOf,
        clock: IReactorTime,
        settings: CloudConfig,
        concurrency: int = 16,
        random: Callable[[], float] = random.random,
    ) -> None:
        self._url = url
        self._gateway_id = gateway_id
        self._session_of = session_of
        self._clock = clock
        self._settings = settings
        self._random = random
        self._lanes = DeferredSemaphore(concurrency)
        # Lots whose last attempt was not done, and how many times in a row.
        self._failures: dict[str, int] = {}

    def _retry_at(self, park: str, error: Exception | None) -> float:
        """When a lot whose entry was not done may try again: its own backoff, or what it waits for."""
        failures = self._failures[park] = self._failures.get(park, 0) + 1
        at = self._clock.seconds() + retry_delay(self._settings, failures, self._random)
        if isinstance(error, RepeatLimit):
            at = max(at, error.until)
        elif isinstance(error, LoginRefused) and error.not_before is not None:
            at = max(at, error.not_before)
        return at

    @property
    def target(self) -> str:
        return self._url

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        """The lots' uplinks among `records`, each with its data as compact JSON."""
        return [
            Entry(
                record.seq,
                record.park,
                record.code,
                record.opr,
                f"{self._gateway_id}-{record.seq}",
                f"{_TYPE_PREFIX}{record.code}.v1",
                dumps_compact(record.body),
                at,
                record.ts,
            )
            for record in records
            if record.kind == UPLINK_RECORD and record.park
        ]

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        """Each lot's entries in order, the lots side by side; an Outcome per entry, never a failure."""
        lanes: dict[str, list[int]] = {}
        for index, entry in enumerate(batch):
            lanes.setdefault(entry.park, []).append(index)
        runs = [
            self._lanes.run(self._lane, park, [batch[i] for i in indexes]) for park, indexes in lanes.items()
        ]

        def collect(results: list[list[Outcome]]) -> Sequence[Outcome] | Split:
            by_index: dict[int, Outcome] = {}
            for indexes, lane_outcomes in zip(lanes.values(), results, strict=True):
                by_index.update(zip(indexes, lane_outcomes, strict=True))
            return [by_index[index] for index in range(len(batch))]

        return gatherResults(runs, consumeErrors=True).addCallback(collect)

    def _lane(self, park: str, entries: list[Entry]) -> Deferred[list[Outcome]]:
        return Deferred.fromCoroutine(self._send_lane(park, entries))

    async def _send_lane(self, park: str, entries: list[Entry]) -> list[Outcome]:
        session = self._session_of(park)
        if session is None:
            answer = f"lot {park} has no upstream account in the configuration".encode()
            return [Outcome.refusal(0, answer) for _ in entries]
        outcomes: list[Outcome] = []
        for entry in entries:
            error: Exception | None = None
            try:
                exchange = await session.send(entry.code, entry.body.decode("utf-8"), entry.opr)
            except (LoginRefused, RepeatLimit) as refused:
                error, outcome = refused, Outcome.not_yet(str(refused))
            except Exception as failed:  # a network error, a timeout: the same again later
                error, outcome = failed, Outcome.not_yet(failure_reason(Failure(failed)))
            else:
                outcome = judge(exchange)
            if outcome.done:
                session.finished(entry.opr)
                self._failures.pop(park, None)
                outcomes.append(outcome)
                continue
            # This lot backs off on its own; the forwarder holds its entries back till then.
            retry_at = self._retry_at(park, error)
            outcomes.append(evolve(outcome, retry_at=retry_at))
            waiting = Outcome.not_yet(
                f"an earlier uplink of lot {park} is not delivered yet", retry_at=retry_at
            )
            outcomes.extend(waiting for _ in entries[len(outcomes) :])
            break
        return outcomes


@frozen
class QueryOutcome:
    """The upstream's answer to a query, as the lot gets it."""

    result_code: str
    message: str
    data: object = None


class UpstreamQueries:
    """Answers the lots' ``query`` uplinks (``autoPay``) by asking the upstream, within the deadline."""

    def __init__(
        self, *, session_of: SessionOf, clock: IReactorTime, deadlines: Mapping[str, float] | None = None
    ) -> None:
        self._session_of = session_of
        self._clock = clock
        self._deadlines = dict(deadlines or {})

    def ask(self, record: Record) -> Deferred[Any]:
        """The upstream's answer to the durable ``query`` record; never fails."""
        session = self._session_of(record.park)
        if session is None:
            return succeed(_failed(f"lot {record.park} has no upstream account"))
        deadline = deadline_of(record.code, self._deadlines)
        asked = session.send(record.code, dumps_compact(record.body).decode("utf-8"), record.opr)
        asked.addTimeout(deadline, self._clock)

        def answered(exchange: Exchange) -> QueryOutcome:
            session.finished(record.opr)
            response = exchange.response
            if response is None:
                return _failed(f"the upstream answered HTTP {exchange.status} without a response envelope")
            detail = _detail(response.result_code, response.result_message)
            return QueryOutcome(response.result_code, detail, response.data)

        def failed(failure: Failure) -> QueryOutcome:
            if failure.check(CancelledError, DeferredTimeout):
                return _failed(f"no answer from the upstream within {deadline:g} s")
            if failure.check(LoginRefused, RepeatLimit):
                return _failed(failure.getErrorMessage())
            log.warn(
                "query {code} {opr} of lot {park}: the upstream cannot be asked: {reason}",
                code=record.code,
                opr=record.opr,
                park=record.park,
                reason=failure_reason(failure),
            )
            return _failed(f"the upstream cannot be reached: {failure_reason(failure)}")

        return asked.addCallbacks(answered, failed)


def _detail(code: str, message: str) -> str:
    """The part of an upstream's resultMessage after the standard's text for `code`.

    The lot side writes the standard's text and then the detail (Result.message),
    so the upstream's "操作成功" must come back as "", not as "操作成功: 操作成功".
    """
    result = Result.from_code(code)
    if result is None or not message.startswith(result.text):
        return message
    return message[len(result.text) :].removeprefix(":").strip()


def _failed(message: str) -> QueryOutcome:
    return QueryOutcome(Result.FAILED.code, message, None)

"""
Asking the cloud to answer a ``query`` uplink (``autoPay``), one request at a time.

CONTRACT §3 and §6: a query is journaled by the lot side, then its record is
POSTed to ``cloud.query_url`` as one structured CloudEvent
(``application/cloudevents+json``), signed per RFC 9421 with the gateway's
key, and the cloud has the interface's deadline (1 s for ``autoPay``) to
answer. :meth:`QueryClient.ask` always comes back with a :class:`QueryAnswer`:
``0000`` with the cloud's JSON object as ``data``, or ``9999`` with the reason
(late, refused, unreachable, unreadable), which the lot reads in
``resultMessage`` and the journal keeps in the ``answer`` record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from zoneinfo import ZoneInfo

from attrs import field, frozen
from attrs.validators import in_
from nacl.signing import SigningKey
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Protocol as StreamProtocol
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.iweb import IResponse

from gateway.cloud.events import EVENT_CONTENT_TYPE, query_event
from gateway.cloud.post import HTTPRequester, failure_reason, post_signed
from gateway.journal.record import Record, dumps_compact
from gateway.protocol.catalog import lookup
from gateway.protocol.jsontext import loads
from gateway.protocol.validation import FieldError, validate

__all__ = [
    "ANSWERED",
    "DEFAULT_DEADLINE",
    "MAX_ANSWER_BYTES",
    "NOT_ANSWERED",
    "QueryAnswer",
    "QueryClient",
]

ANSWERED = "0000"
NOT_ANSWERED = "9999"

MAX_ANSWER_BYTES = 1024 * 1024
"""The largest answer body read from the cloud; a larger one is refused."""

DEFAULT_DEADLINE = 1.0
"""Seconds for a query whose interface has no deadline in the catalog (every query has one)."""

_EXCERPT = 120  # bytes of a refused answer quoted in the log

log = Logger()

_OnTimeout = Callable[[object, float], "QueryAnswer"]


@frozen
class QueryAnswer:
    """The cloud's answer to one query, as the lot will get it: a result code, why, and the data."""

    result_code: str = field(validator=in_((ANSWERED, NOT_ANSWERED)))
    message: str
    data: object

    @classmethod
    def failed(cls, message: str) -> QueryAnswer:
        """A ``9999`` answer carrying no data; ``message`` says why."""
        return cls(NOT_ANSWERED, message, None)


@frozen
class _Body:
    """A response body as read: its first bytes, and whether that was all of it."""

    content: bytes
    complete: bool


class _CappedBody(StreamProtocol):
    """Reads a response body up to ``limit`` bytes; past that it stops the transfer.

    ``done`` fires with a :class:`_Body`. Cancelling it stops the transfer too.
    """

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._chunks: list[bytes] = []
        self._size = 0
        self.done: Deferred[_Body] = Deferred(self._cancel)
        self._finished = False

    def _cancel(self, _: Deferred[_Body]) -> None:
        self._finished = True
        self._stop()

    def _stop(self) -> None:
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._finished:
            return
        room = self._limit - self._size
        if len(data) > room:
            self._chunks.append(data[:room])
            self._finished = True
            self._stop()
            self.done.callback(_Body(b"".join(self._chunks), complete=False))
            return
        self._chunks.append(data)
        self._size += len(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._finished:
            return
        self._finished = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self.done.callback(_Body(b"".join(self._chunks), complete=True))
        else:
            self.done.errback(reason)


class QueryClient:
    """Sends query records to the cloud's ``query_url`` and turns what comes back into answers."""

    def __init__(
        self,
        *,
        http: HTTPRequester,
        clock: IReactorTime,
        url: str,
        gateway_id: str,
        zone: ZoneInfo,
        signing_key: SigningKey,
        deadlines: Mapping[str, float] | None = None,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
    ) -> None:
        overrides = dict(deadlines or {})
        for code, seconds in overrides.items():
            if not seconds > 0:
                raise ValueError(f"deadline for {code!r} must be positive, not {seconds!r}")
        self._http = http
        self._clock = clock
        self._url = url
        self._gateway_id = gateway_id
        self._zone = zone
        self._signing_key = signing_key
        self._deadlines = overrides
        self._max_answer_bytes = max_answer_bytes

    def deadline(self, code: str) -> float:
        """Seconds the cloud has to answer a ``code`` query: the configured override, else the catalog's."""
        override = self._deadlines.get(code)
        if override is not None:
            return override
        interface = lookup(code)
        if interface is None or interface.deadline is None:
            return DEFAULT_DEADLINE
        return interface.deadline

    def ask(self, record: Record) -> Deferred[QueryAnswer]:
        """
        The cloud's answer to the ``query`` record ``record``; never fails.

        The whole exchange (sending, waiting, reading the body) must end within
        the deadline, else the request is abandoned and the answer is ``9999``.
        """
        code, opr = record.code, record.opr
        try:
            body = dumps_compact(query_event(record, gateway_id=self._gateway_id, zone=self._zone))
            exchange = post_signed(
                self._http,
                self._url,
                body,
                content_type=EVENT_CONTENT_TYPE,
                key=self._signing_key,
                keyid=self._gateway_id,
                created=int(self._clock.seconds()),
            )
        except Exception:
            log.failure("query {code} {opr}: cannot be sent to the cloud", code=code, opr=opr)
            return succeed(QueryAnswer.failed("the gateway cannot send this query to the cloud"))
        # Deferred.addTimeout is clock.callLater(deadline, cancel) on the whole exchange, the
        # timer cancelled once it ends; cancelling reaches the request or the body being read.
        reading = exchange.addCallback(self._read)
        judged = reading.addCallback(self._judge, code, opr)
        timed = judged.addTimeout(self.deadline(code), self._clock, onTimeoutCancel=self._late(code, opr))
        return timed.addErrback(self._unreachable, code, opr)

    def _read(self, response: IResponse) -> Deferred[tuple[int, _Body]]:
        body = _CappedBody(self._max_answer_bytes)
        response.deliverBody(body)
        status: int = response.code
        return body.done.addCallback(lambda read: (status, read))

    def _judge(self, reply: tuple[int, _Body], code: str, opr: str) -> QueryAnswer:
        status, body = reply
        if not 200 <= status < 300:
            return self._refused(f"cloud answered HTTP {status}", code, opr, body)
        if not body.complete:
            limit = _size(self._max_answer_bytes)
            return self._refused(f"cloud answer larger than {limit}", code, opr, body)
        try:
            data = loads(body.content)  # what goes on to the lot follows the lots' JSON rules
        except ValueError:
            data = None
        if not isinstance(data, dict):
            return self._refused("cloud answer is not a JSON object", code, opr, body)
        interface = lookup(code)
        try:
            data = validate(interface.response if interface is not None else (), data)
        except FieldError as error:
            return self._refused(f"cloud answer: {error.message()}", code, opr, body)
        return QueryAnswer(ANSWERED, "", data)

    def _refused(self, message: str, code: str, opr: str, body: _Body) -> QueryAnswer:
        excerpt = body.content[:_EXCERPT].decode("utf-8", "replace")
        log.warn(
            "query {code} {opr}: {message}; body starts {excerpt!r}",
            code=code,
            opr=opr,
            message=message,
            excerpt=excerpt,
        )
        return QueryAnswer.failed(message)

    def _late(self, code: str, opr: str) -> _OnTimeout:
        def late(result: object, seconds: float) -> QueryAnswer:
            message = f"cloud did not answer within {_seconds(seconds)}"
            log.warn("query {code} {opr}: {message}", code=code, opr=opr, message=message)
            return QueryAnswer.failed(message)

        return late

    def _unreachable(self, failure: Failure, code: str, opr: str) -> QueryAnswer:
        message = f"cloud unreachable: {failure_reason(failure)}"
        log.warn("query {code} {opr}: {message}", code=code, opr=opr, message=message)
        return QueryAnswer.failed(message)


def _seconds(seconds: float) -> str:
    """A deadline as people write it: ``1 s``, ``2.5 s``."""
    return f"{seconds:g} s"


def _size(limit: int) -> str:
    """A byte count as people write it: ``1 MiB``, ``64 KiB``, ``100 bytes``."""
    for unit, size in (("MiB", 1024 * 1024), ("KiB", 1024)):
        if limit >= size and limit % size == 0:
            return f"{limit // size} {unit}"
    return f"{limit} bytes"

"""
The forwarder: every journaled event reaches the cloud at least once, in order (CONTRACT §6).

It follows the journal and hands its events, in batches, to a sink:
:class:`CloudEventsSink` POSTs them to ``cloud.url`` as signed CloudEvents
batches (:mod:`gateway.cloud.events`, :mod:`gateway.cloud.httpsig`);
:class:`gateway.upstream.forwarding.UpstreamSink` sends each lot's uplinks to
an upstream T/CPMI 002 platform. A sink answers with an :class:`Outcome` per
event (delivered, refused, or not yet), or a :class:`Split` of the batch.

Order and progress
------------------
Events go out in journal order, one batch in flight at a time, so no record of
a lot can overtake an earlier one of the same lot (nor of any other). Each
outcome is a journal record, appended in order:

- ``forwarded``: a 2xx for a batch. Body ``first``/``last`` (its first and
  last event seq), ``events``, ``status`` and ``through``: every record up to
  ``through`` is done (sent, refused, or not an event at all).
- ``rejected``: a 4xx other than 408/429 for a batch of one event. Body
  ``seq``, ``id``, ``type``, ``status``, ``answer`` (its first 4 KiB) and
  ``through``. It becomes an ``org.cpmi.gateway.rejected.v1`` event itself.

A sink may finish events beyond one it could not deliver (the upstream sink
delivers other lots' events while one lot waits): those are kept aside, not
sent again, and taken into the progress once everything before them is done.

A restart resumes after the highest ``through`` (:class:`Progress` reads it
during the start-up replay): a batch acknowledged just before a crash, whose
``forwarded`` record was not yet written, is sent again with the same ids.

Failures
--------
- 5xx, 408, 429, a network error, no answer within ``request_timeout``, or any
  other status (1xx, 3xx): the batch is sent again after a capped exponential
  backoff with jitter, from ``retry_min_delay`` up to ``retry_max_delay``; the
  ids stay the same, and the retried batch may be fuller than the first try.
- Other 4xx: the cloud refuses something in the batch. The batch is halved and
  the halves sent in turn, until the refused event is alone; it alone is
  rejected, and the other events -- of its lot and of other lots -- still go
  through. A batch of one is never retried.

Memory
------
The forwarder holds at most four batches' worth of events (by count and
bytes). While it keeps up, it takes records as they commit
(``Journal.commit_observers``); when it falls behind (an outage), it drops the
live feed and reads the backlog from disk in chunks, in a thread
(:class:`gateway.journal.reader.Cursor`), then goes back to the live feed once
it has caught up. A backlog costs disk, not memory.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import Any, Protocol
from zoneinfo import ZoneInfo

import treq
from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cloud.events import BATCH_CONTENT_TYPE, to_event
from gateway.cloud.post import HTTPRequester, failure_reason, post_signed, shortened
from gateway.cloud.progress import Progress
from gateway.interfaces import Entry, JournalAppend, Outcome, Sink, Split
from gateway.journal.kinds import FORWARDED_RECORD, REJECTED_RECORD
from gateway.journal.reader import Cursor, Damage
from gateway.journal.record import Record, dumps_compact
from gateway.protocol.times import rfc3339_seconds
from gateway.settings import CloudConfig

__all__ = [
    "Forwarder",
    "ForwarderJournal",
    "Progress",
]

# How much of a refusing answer a `rejected` record keeps.
ANSWER_BYTES = 4096
# The live buffer holds this many batches' worth of events (by count and by bytes).
_BUFFER_BATCHES = 4
# Events finished early (beyond one not yet delivered) may fill this many buffers more
# before the forwarder stops taking records while it waits for that one.
_EARLY_BUFFERS = 10
# After a failed read of the journal, wait this long before reading again.
_READ_RETRY = 5.0

_log = Logger()


class ForwarderJournal(JournalAppend, Protocol):
    """What the forwarder needs of :class:`gateway.journal.writer.Journal`."""

    @property
    def path(self) -> str: ...

    @property
    def committed_seq(self) -> int: ...

    @property
    def commit_observers(self) -> list[Callable[[list[Record]], None]]: ...


RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]
"""Runs a blocking job off the reactor thread (``deferToThread``)."""


def _entries(records: Iterable[Record], gateway_id: str, zone: ZoneInfo, at: float) -> list[Entry]:
    """The events among ``records``, serialized (the records that are no event are left out)."""
    entries = []
    for record in records:
        event = to_event(record, gateway_id=gateway_id, zone=zone)
        if event is not None:
            entries.append(
                Entry(
                    record.seq,
                    record.park,
                    record.code,
                    record.opr,
                    str(event["id"]),
                    str(event["type"]),
                    dumps_compact(event),
                    at,
                    record.ts,
                )
            )
    return entries


def retry_delay(settings: CloudConfig, failures: int, random: Callable[[], float]) -> float:
    """The wait after `failures` failed attempts in a row: from retry_min_delay, doubling up to
    retry_max_delay, drawn between half and all of it (jitter, so retries do not come together)."""
    ceiling = min(settings.retry_max_delay, settings.retry_min_delay * 2 ** min(failures - 1, 62))
    return ceiling / 2 + random() * ceiling / 2


def _read_chunk(
    cursor: Cursor, through: int, max_records: int, max_bytes: int, sink: Sink, at: float
) -> tuple[int, list[Entry], list[Damage]]:
    """In a thread: read the next chunk of the backlog; the last seq read, its events, damage skipped."""
    records = cursor.read(through, max_records, max_bytes)
    damage, cursor.damage = cursor.damage, []
    return cursor.next_seq - 1, sink.entries(records, at), damage


class CloudEventsSink:
    """Batches of signed CloudEvents POSTed to ``cloud.url`` (CONTRACT §6): the cloudevents sink."""

    def __init__(
        self,
        *,
        http: HTTPRequester,
        clock: IReactorTime,
        settings: CloudConfig,
        gateway_id: str,
        zone: ZoneInfo,
        signing_key: SigningKey,
    ) -> None:
        self._http = http
        self._clock = clock
        self._settings = settings
        self._gateway_id = gateway_id
        self._zone = zone
        self._key = signing_key

    @property
    def target(self) -> str:
        return self._settings.url

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        return _entries(records, self._gateway_id, self._zone, at)

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        """One POST of the whole batch; 2xx delivers all, a 4xx refuses (or splits), others retry."""
        body = b"".join((b"[", b",".join(entry.body for entry in batch), b"]"))
        exchange = post_signed(
            self._http,
            self._settings.url,
            body,
            content_type=BATCH_CONTENT_TYPE,
            key=self._key,
            keyid=self._gateway_id,
            created=int(self._clock.seconds()),
        )
        exchange.addCallback(
            lambda response: treq.content(response).addCallback(lambda text: (response, text))
        )
        timed_out = []

        def time_out() -> None:
            timed_out.append(True)
            exchange.cancel()

        timeout = self._clock.callLater(self._settings.request_timeout, time_out)

        def finished(result: object) -> object:
            if timeout.active():
                timeout.cancel()
            return result

        def answered(answer: tuple[Any, bytes]) -> Sequence[Outcome] | Split:
            status, text = answer[0].code, answer[1]
            if 200 <= status < 300:
                return [Outcome.delivered(status)] * len(batch)
            if 400 <= status < 500 and status not in (408, 429):
                if len(batch) > 1:
                    return Split(status, text)
                return [Outcome.refusal(status, text)]
            return [Outcome.not_yet(f"HTTP {status}", status)] * len(batch)

        def failed(failure: Failure) -> Sequence[Outcome]:
            reason = (
                f"no answer within {self._settings.request_timeout:g} s"
                if timed_out
                else failure_reason(failure)
            )
            return [Outcome.not_yet(reason)] * len(batch)

        exchange.addBoth(finished)
        return exchange.addCallbacks(answered, failed)


class Forwarder:
    """
    Sends the journal's events to the cloud through a sink; see the module docstring.

    The sink is CloudEvents batches (:class:`CloudEventsSink`, built from
    ``http``, ``zone`` and ``signing_key`` when no ``sink`` is given) or a
    T/CPMI 002 upstream (:class:`gateway.upstream.forwarding.UpstreamSink`).
    ``resume_after`` is :attr:`Progress.through` from the start-up replay.
    ``run_blocking`` runs the backlog reads (a thread by default);
    ``random`` gives the jitter (``random.random`` by default).
    """

    def __init__(
        self,
        *,
        journal: ForwarderJournal,
        clock: IReactorTime,
        settings: CloudConfig,
        http: HTTPRequester | None = None,
        gateway_id: str = "",
        zone: ZoneInfo | None = None,
        signing_key: SigningKey | None = None,
        sink: Sink | None = None,
        run_blocking: RunBlocking | None = None,
        random: Callable[[], float] = random.random,
        resume_after: int = 0,
    ) -> None:
        if sink is None:
            if http is None or signing_key is None or zone is None:
                raise TypeError("a Forwarder needs a sink, or http, zone and signing_key for CloudEvents")
            sink = CloudEventsSink(
                http=http,
                clock=clock,
                settings=settings,
                gateway_id=gateway_id,
                zone=zone,
                signing_key=signing_key,
            )
        if run_blocking is None:
            from twisted.internet.threads import deferToThread

            run_blocking = deferToThread
        self._journal = journal
        self._sink = sink
        self._clock = clock
        self._url = sink.target
        self._settings = settings
        self._run_blocking = run_blocking
        self._random = random
        self._max_events = settings.batch_max_events
        self._max_bytes = settings.batch_max_bytes
        self._buffer_events = _BUFFER_BATCHES * settings.batch_max_events
        self._buffer_bytes = _BUFFER_BATCHES * settings.batch_max_bytes

        # Every record up to _done_through is done; every record up to
        # _read_through has been looked at, and its event (if any) is queued.
        self._done_through = resume_after
        self._read_through = resume_after
        self._queue: deque[Entry] = deque()
        # Queued events the sink finished (delivered or refused) while an earlier one was not:
        # they are not sent again, and are taken off the queue once everything before them is.
        self._early: dict[int, Outcome] = {}
        # Lots whose events the sink asked to hold back (Outcome.retry_at), until when.
        self._paused: dict[str, float] = {}
        self._wake_timer: IDelayedCall | None = None
        self._queued_bytes = 0
        self._live = False
        self._reading = False
        self._cursor: Cursor | None = None
        self._running = False
        self._in_flight: Deferred[Any] | None = None
        self._pumping = self._pump_again = False
        self._filling = self._fill_again = False
        self._batch_timer: IDelayedCall | None = None
        self._retry_timer: IDelayedCall | None = None
        self._read_timer: IDelayedCall | None = None
        self._attempts = 0
        # When the current run of failed attempts began (None: the last attempt was answered).
        self._failing_since: float | None = None
        # While narrowing down a refused event: batches of at most _probe events
        # until everything up to _probe_until is done.
        self._probe: int | None = None
        self._probe_until = 0
        self.counters: dict[str, int] = {
            "events": 0,
            "batches": 0,
            "retries": 0,
            "rejected": 0,
        }
        """Events delivered, batches delivered, retries and rejected events, since start."""
        self.last_error = ""
        """Why the last attempt failed ("" after a success)."""

    # -- state, for metrics and the API

    @property
    def done_through(self) -> int:
        """Every record up to this seq is forwarded (or refused, or no event)."""
        return self._done_through

    @property
    def backlog(self) -> int:
        """Durable records not yet done (events and other records alike)."""
        return max(0, self._journal.committed_seq - self._done_through)

    def lag(self, now: float) -> float | None:
        """Seconds the oldest event not yet forwarded has waited since it was journaled, at `now`.

        Events go in journal order, so the first one waiting to be sent is the
        oldest. None when none is waiting (caught up, or only records that are
        no event are left).
        """
        if not self._queue:
            return None
        try:
            return max(0.0, now - rfc3339_seconds(self._queue[0].ts))
        except ValueError:
            return None

    # -- running

    def start(self, resume_after: int | None = None) -> None:
        """
        Follow the journal: first the backlog, then records as they commit.

        ``resume_after`` (the start-up replay's :attr:`Progress.through`, known
        only once the parts are built) replaces the constructor's.
        """
        if self._running:
            return
        if resume_after is not None and resume_after > self._done_through:
            self._done_through = self._read_through = resume_after
        self._running = True
        self._journal.commit_observers.append(self._committed)
        self._fill()

    def stop(self) -> None:
        """Stop sending; an unanswered batch is abandoned (it is sent again after a restart)."""
        if not self._running:
            return
        self._running = False
        self._live = False  # records committed while stopped are read from disk on a start
        self._journal.commit_observers.remove(self._committed)
        for timer in (self._batch_timer, self._retry_timer, self._read_timer, self._wake_timer):
            if timer is not None and timer.active():
                timer.cancel()
        self._batch_timer = self._retry_timer = self._read_timer = self._wake_timer = None
        if self._in_flight is not None:
            self._in_flight.cancel()
        if not self._reading and self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    # -- taking records in

    def _room(self) -> tuple[int, int]:
        waiting = len(self._queue) - len(self._early)
        if len(self._queue) >= _EARLY_BUFFERS * self._buffer_events:
            return 0, 0
        return self._buffer_events - waiting, self._buffer_bytes - self._queued_bytes

    def _committed(self, records: list[Record]) -> None:
        """A durable batch of the journal: queue its events while live, else leave it to the reads."""
        if not self._live:
            self._fill()
            return
        now = self._clock.seconds()
        for record in records:
            if record.seq <= self._read_through:
                continue
            events = self._sink.entries((record,), now)
            if events:
                events_room, bytes_room = self._room()
                if events_room < 1 or bytes_room < len(events[0].body):
                    # Full: from here on, read the journal instead of holding records.
                    self._live = False
                    break
                self._queue.append(events[0])
                self._queued_bytes += len(events[0].body)
            self._read_through = record.seq
        self._fill()
        self._maybe_send()

    def _fill(self) -> None:
        """Read the backlog from disk while behind and there is room; go live once caught up."""
        # A read that completes at once (in tests) calls back in here: loop, don't recurse.
        if self._filling:
            self._fill_again = True
            return
        self._filling = True
        try:
            self._fill_again = True
            while self._fill_again:
                self._fill_again = False
                self._fill_once()
        finally:
            self._filling = False

    def _fill_once(self) -> None:
        if not self._running or self._live or self._reading or self._read_timer is not None:
            return
        through = self._journal.committed_seq
        if self._read_through >= through:
            self._live = True
            return
        events_room, bytes_room = self._room()
        if events_room < self._max_events or bytes_room < self._max_bytes:
            return  # sending makes room, then _fill runs again
        start = self._read_through + 1
        if self._cursor is None or self._cursor.next_seq != start:
            if self._cursor is not None:
                self._cursor.close()
            self._cursor = Cursor(self._journal.path, start)
        self._reading = True
        job = partial(
            _read_chunk,
            self._cursor,
            through,
            events_room,
            self._max_bytes,
            self._sink,
            self._clock.seconds(),
        )
        d = self._run_blocking(job)
        d.addCallbacks(self._chunk_read, self._read_failed)
        d.addErrback(self._bug)

    def _chunk_read(self, chunk: tuple[int, list[Entry], list[Damage]]) -> None:
        self._reading = False
        if not self._running:
            if self._cursor is not None:
                self._cursor.close()
                self._cursor = None
            return
        last, entries, damage = chunk
        for each in damage:
            _log.error(
                "forwarder: skipped damaged journal data at seq {seq} (segment {segment}, offset "
                "{offset}): {reason}",
                seq=each.seq,
                segment=each.segment,
                offset=each.offset,
                reason=each.reason,
            )
        for entry in entries:
            self._queue.append(entry)
            self._queued_bytes += len(entry.body)
        self._read_through = max(self._read_through, last)
        self._fill()
        self._maybe_send()

    def _read_failed(self, failure: Failure) -> None:
        self._reading = False
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        if not self._running:
            return
        _log.error(
            "forwarder: cannot read the journal after seq {seq}: {error}; trying again in {delay} s",
            seq=self._read_through,
            error=failure.getErrorMessage(),
            delay=_READ_RETRY,
        )
        self.last_error = f"journal read: {failure.getErrorMessage()}"
        self._read_timer = self._clock.callLater(_READ_RETRY, self._read_again)

    def _read_again(self) -> None:
        self._read_timer = None
        self._fill()

    # -- sending

    def _maybe_send(self) -> None:
        """Send the next batch if it is due and none is in flight."""
        # An answer that comes at once (in tests) calls back in here: loop, don't recurse.
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            self._pump_again = True
            while self._pump_again:
                self._pump_again = False
                self._send_if_due()
        finally:
            self._pumping = False

    def _next_batch(self) -> list[Entry]:
        """The next events to send: in order, leaving out finished ones and paused lots' ones."""
        limit = self._probe or self._max_events
        now = self._clock.seconds()
        paused = self._paused
        batch: list[Entry] = []
        size = 0
        for entry in self._queue:
            if entry.seq in self._early:
                continue
            if paused:
                until = paused.get(entry.park)
                if until is not None:
                    if until > now:
                        continue
                    del paused[entry.park]
            if len(batch) >= limit or (batch and size + len(entry.body) > self._max_bytes):
                break
            batch.append(entry)
            size += len(entry.body)
        return batch

    def _send_if_due(self) -> None:
        if not self._running or self._in_flight is not None or self._retry_timer is not None:
            return
        if not self._queue:
            return
        batch = self._next_batch()
        if not batch:
            self._wake_when_unpaused()
            return
        limit = self._probe or self._max_events
        due = batch[0].at + self._settings.batch_max_delay
        if (
            len(batch) >= limit
            or self._queued_bytes >= self._max_bytes
            or not self._live
            or self._probe is not None
            or due <= self._clock.seconds()
        ):
            if self._batch_timer is not None and self._batch_timer.active():
                self._batch_timer.cancel()
            self._batch_timer = None
            self._send(batch)
        elif self._batch_timer is None:
            self._batch_timer = self._clock.callLater(due - self._clock.seconds(), self._batch_due)

    def _wake_when_unpaused(self) -> None:
        """Everything waiting belongs to paused lots: try again when the first pause ends."""
        if not self._paused or self._wake_timer is not None:
            return
        delay = max(0.0, min(self._paused.values()) - self._clock.seconds())
        self._wake_timer = self._clock.callLater(delay, self._woken)

    def _woken(self) -> None:
        self._wake_timer = None
        self._maybe_send()

    def _batch_due(self) -> None:
        self._batch_timer = None
        self._maybe_send()

    def _send(self, batch: list[Entry]) -> None:
        exchange = self._sink.deliver(batch)
        self._in_flight = exchange
        exchange.addCallback(self._answered, batch)
        exchange.addErrback(self._bug)

    def _answered(self, result: Sequence[Outcome] | Split, batch: list[Entry]) -> None:
        self._in_flight = None
        if not self._running:
            return
        if isinstance(result, Split):
            self._split(batch, result)
            return
        status: int | None = None
        not_done: list[Entry] = []
        reason, status_not_done = "", None
        refused = False
        for entry, outcome in zip(batch, result, strict=True):
            if outcome.done:
                self._early[entry.seq] = outcome
                self._queued_bytes -= len(entry.body)
                status = outcome.status if outcome.status is not None else status
                if outcome.refused:
                    refused = True
                    self._log_refusal(entry, outcome)
            elif outcome.retry_at is not None:
                # The sink paces this lot: hold its events back; the others go on.
                if entry.park not in self._paused:
                    self.counters["retries"] += 1
                self._paused[entry.park] = max(self._paused.get(entry.park, 0.0), outcome.retry_at)
                self.last_error = outcome.reason
            else:
                not_done.append(entry)
                if not reason:
                    reason, status_not_done = outcome.reason, outcome.status
        if status is not None and not not_done:
            # An answer ends a run of failed attempts, unless some events must go again.
            self._recovered(status)
        self._advance()
        if not_done:
            self._retry(not_done, reason, status_not_done)
            return
        if not self._paused and not refused:
            self.last_error = ""
        self._fill()
        self._maybe_send()

    def _advance(self) -> None:
        """Take the finished events off the front of the queue, journaling what became of them."""
        delivered: list[Entry] = []
        status = 0
        while self._queue and self._queue[0].seq in self._early:
            entry = self._queue.popleft()
            outcome = self._early.pop(entry.seq)
            if outcome.refused:
                if delivered:
                    self._delivered(delivered, entry.seq - 1, status)
                    delivered = []
                self._rejected(entry, outcome)
            else:
                delivered.append(entry)
                status = outcome.status or status
        through = self._queue[0].seq - 1 if self._queue else self._read_through
        if delivered:
            self._delivered(delivered, through, status)
        else:
            self._done_through = max(self._done_through, through)
        if self._probe is not None and self._done_through >= self._probe_until:
            self._probe = None

    def _delivered(self, batch: list[Entry], through: int, status: int) -> None:
        self._done_through = through
        self.counters["events"] += len(batch)
        self.counters["batches"] += 1
        body = {
            "first": batch[0].seq,
            "last": batch[-1].seq,
            "events": len(batch),
            "status": status,
            "through": through,
        }
        self._record(FORWARDED_RECORD, "", "", "", body)

    def _split(self, batch: list[Entry], split: Split) -> None:
        # A refusal is an answer: a run of failed attempts ends with it.
        self._recovered(split.status)
        excerpt = split.answer[:ANSWER_BYTES].decode("utf-8", "replace")
        self.last_error = f"HTTP {split.status}: {excerpt[:200]}"
        # Narrow down: halves in turn, until the refused event is alone.
        self._probe = max(1, len(batch) // 2)
        self._probe_until = max(self._probe_until, batch[-1].seq)
        _log.warn(
            "forwarder: the cloud refused a batch of {count} events (seq {first}-{last}) with "
            "HTTP {status}: {reason}; sending it in halves to find the refused events",
            event="cloud.rejected",
            status=split.status,
            count=len(batch),
            first=batch[0].seq,
            last=batch[-1].seq,
            reason=shortened(excerpt),
            park="",
            code="",
        )
        self._maybe_send()

    def _log_refusal(self, entry: Entry, outcome: Outcome) -> None:
        excerpt = outcome.answer[:ANSWER_BYTES].decode("utf-8", "replace")
        self.last_error = f"HTTP {outcome.status}: {excerpt[:200]}"
        self.counters["rejected"] += 1
        _log.error(
            "forwarder: {target} rejected event {id} ({type}, seq {seq}) with HTTP {status}: {reason}",
            event="cloud.rejected",
            target=self._url,
            status=outcome.status,
            count=1,
            first=entry.seq,
            last=entry.seq,
            reason=shortened(excerpt),
            park=entry.park,
            code=entry.code,
            id=entry.id,
            type=entry.type,
            seq=entry.seq,
        )

    def _rejected(self, entry: Entry, outcome: Outcome) -> None:
        self._done_through = entry.seq
        body = {
            "seq": entry.seq,
            "id": entry.id,
            "type": entry.type,
            "status": outcome.status,
            "answer": outcome.answer[:ANSWER_BYTES].decode("utf-8", "replace"),
            "through": entry.seq,
        }
        self._record(REJECTED_RECORD, entry.park, entry.code, entry.opr, body)

    def _retry(self, batch: list[Entry], reason: str, status: int | None = None) -> None:
        self._in_flight = None
        if not self._running:
            return
        self._attempts += 1
        self.counters["retries"] += 1
        self.last_error = reason
        delay = retry_delay(self._settings, self._attempts, self._random)
        if self._failing_since is None:
            # One event as a run of failures begins, one as it ends (_recovered); debug lines between.
            self._failing_since = self._clock.seconds()
            _log.warn(
                "forwarder: cannot deliver to {url}: {reason}; retrying with backoff, "
                "{backlog} records waiting",
                event="cloud.retrying",
                url=self._url,
                reason=reason,
                status=status,
                backlog=self.backlog,
                count=len(batch),
                first=batch[0].seq,
                last=batch[-1].seq,
            )
        _log.debug(
            "forwarder: {count} events (seq {first}-{last}) not delivered to {url}: {reason}; "
            "try {attempt} in {delay:.1f} s",
            count=len(batch),
            first=batch[0].seq,
            last=batch[-1].seq,
            url=self._url,
            reason=reason,
            attempt=self._attempts + 1,
            delay=delay,
        )
        self._retry_timer = self._clock.callLater(delay, self._retry_due)

    def _recovered(self, status: int) -> None:
        """The cloud answered: end a run of failed attempts, if one was on (cloud.recovered)."""
        if self._failing_since is not None:
            _log.info(
                "forwarder: {url} answers again (HTTP {status}) after {attempts} failed attempts "
                "in {seconds:.1f} s",
                event="cloud.recovered",
                url=self._url,
                status=status,
                attempts=self._attempts,
                seconds=self._clock.seconds() - self._failing_since,
                backlog=self.backlog,
            )
            self._failing_since = None
        self._attempts = 0

    def _retry_due(self) -> None:
        self._retry_timer = None
        self._maybe_send()

    def _record(self, kind: str, park: str, code: str, opr: str, body: object) -> None:
        def not_kept(failure: Failure) -> None:
            # The next outcome's `through` covers this one; a restart may re-send a batch.
            _log.error(
                "forwarder: could not journal a {kind} record: {error}",
                kind=kind,
                error=failure.getErrorMessage(),
            )

        self._journal.append(kind, park, code, opr, body).addCallbacks(lambda _: None, not_kept)

    def _bug(self, failure: Failure) -> None:
        _log.failure("forwarder: unexpected error", failure)

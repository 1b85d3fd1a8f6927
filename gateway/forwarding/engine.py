"""
The forwarding engine: every journaled event reaches a sink at least once, in order (CONTRACT §6).

An engine follows the journal and hands its events, in batches, to a
:class:`Sink` that only delivers: the ``cloudevents`` sink
(:class:`gateway.cloud.forwarder.CloudEventsSink`) POSTs them to ``cloud.url``
as signed CloudEvents batches; the ``t002`` sink
(:class:`gateway.upstream.forwarding.UpstreamSink`) sends each lot's uplinks
to an upstream T/CPMI 002 platform. A sink answers with an :class:`Outcome`
per event (delivered, refused, or not yet), or a :class:`Split` of the batch.
Reading the journal, order, batching, retry and progress records are the
engine's.

The ``log-only`` sink has no engine, by decision: the journal is the sink
(CONTRACT §6, "nothing is forwarded"). Behind an engine it would journal a
``forwarded`` progress record for every batch of events that went nowhere --
records an operator reads as deliveries (``cpmictl log stats``, the status
page's backlog, which the API gives as null for log-only) -- and add them,
with a log line per event that repeats the journal, to the uplink's hot path,
which runs log-only in ``bench.uplink``.

Several engines may follow one journal, each with its own sink, progress
records, backlog and counters: an engine's ``progress`` name (``""`` for the
main sink, whose records keep the format below) is written into its records
as ``sink`` and :class:`gateway.cloud.progress.Progress` reads back only its own.

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
- Other 4xx: the sink refuses something in the batch. The batch is halved and
  the halves sent in turn, until the refused event is alone; it alone is
  rejected, and the other events -- of its lot and of other lots -- still go
  through. A batch of one is never retried.

Memory
------
The engine holds at most four batches' worth of events (by count and bytes).
While it keeps up (:attr:`Feed.LIVE`), it takes records as they commit
(``Journal.commit_observers``); when it falls behind (an outage), it drops the
live feed (:attr:`Feed.BEHIND`) and reads the backlog from disk in chunks, in
a thread (:attr:`Feed.READING`, :class:`gateway.journal.reader.Cursor`), then
goes back to the live feed once it has caught up. A backlog costs disk, not memory.
"""

from __future__ import annotations

import random
from collections import deque
from collections.abc import Callable, Sequence
from enum import Enum
from functools import partial
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import Entry, JournalAppend, Outcome, Sink, Split
from gateway.journal.kinds import FORWARDED_RECORD, REJECTED_RECORD
from gateway.journal.reader import Cursor, Damage
from gateway.journal.record import Record
from gateway.protocol.times import rfc3339_seconds
from gateway.settings import CloudConfig

__all__ = [
    "Feed",
    "ForwarderJournal",
    "ForwardingEngine",
    "RunBlocking",
    "retry_delay",
    "shortened",
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
    """What the engine needs of :class:`gateway.journal.writer.Journal`."""

    @property
    def path(self) -> str: ...

    @property
    def committed_seq(self) -> int: ...

    @property
    def commit_observers(self) -> list[Callable[[list[Record]], None]]: ...


RunBlocking = Callable[[Callable[[], Any]], Deferred[Any]]
"""Runs a blocking job off the reactor thread (``deferToThread``)."""


def shortened(answer: str, limit: int = 200) -> str:
    """The start of a sink's answer, on one line, for the log."""
    text = " ".join(answer.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


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


class Feed(Enum):
    """Where the engine takes the journal's records from: a mode, changed by events, never per record."""

    BEHIND = "behind"
    """Records are waiting on disk: the next read starts once there is room."""
    READING = "reading"
    """A chunk of the backlog is being read in a thread."""
    READ_FAILED = "read failed"
    """The last read failed: the next one waits for a timer."""
    LIVE = "live"
    """Caught up: records are taken as they commit."""


class _Loop:
    """Runs a step until it stops asking for more; a call from inside the step asks for one more
    round instead of recursing (a Deferred that fires at once, in tests, calls back in)."""

    __slots__ = ("_again", "_running", "_step")

    def __init__(self, step: Callable[[], None]) -> None:
        self._step = step
        self._running = self._again = False

    def __call__(self) -> None:
        if self._running:
            self._again = True
            return
        self._running = True
        try:
            self._again = True
            while self._again:
                self._again = False
                self._step()
        finally:
            self._running = False


@frozen
class _Narrowing:
    """Finding a refused event by halving: batches of at most ``size`` until ``until`` is done."""

    size: int
    until: int


class ForwardingEngine:
    """
    Sends the journal's events through a sink; see the module docstring.

    The sink only delivers: CloudEvents batches
    (:class:`gateway.cloud.forwarder.CloudEventsSink`) or a T/CPMI 002 upstream
    (:class:`gateway.upstream.forwarding.UpstreamSink`). ``progress`` names the
    engine's progress records (``""``: the main sink's, in their original form).
    ``resume_after`` is :attr:`Progress.through` from the start-up replay.
    ``skipped`` tells how many seqs a restore skipped between two seqs, so the
    backlog counts records, not seqs.
    ``run_blocking`` runs the backlog reads (a thread by default);
    ``random`` gives the jitter (``random.random`` by default).
    ``take_in_delay``: with 0, the events of committed records are mapped and
    queued inside the journal's commit callback, before the journal starts its
    next write; with a few hundred µs, a moment later, coalesced, so that the
    next write and its fsync go first and the mapping (and a batch's sending)
    runs while the fsync does: the journal's durable path -- every uplink's
    answer -- does not wait for the sink. bench.uplink --nats measured it.
    """

    def __init__(
        self,
        *,
        journal: ForwarderJournal,
        clock: IReactorTime,
        settings: CloudConfig,
        sink: Sink,
        progress: str = "",
        run_blocking: RunBlocking | None = None,
        random: Callable[[], float] = random.random,
        resume_after: int = 0,
        skipped: Callable[[int, int], int] | None = None,
        take_in_delay: float = 0.0,
    ) -> None:
        if run_blocking is None:
            from twisted.internet.threads import deferToThread

            run_blocking = deferToThread
        self._journal = journal
        self._sink = sink
        self.progress = progress
        """The name of this engine's progress records ("" for the main sink)."""
        self._skipped = skipped
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
        self._take_in_delay = take_in_delay
        # Committed records waiting to be taken in (with a take_in_delay), and the call that will.
        self._arrived: list[Record] = []
        self._take_in_call: IDelayedCall | None = None
        self._queued_bytes = 0
        self._feed = Feed.BEHIND
        self._cursor: Cursor | None = None
        self._running = False
        self._in_flight: Deferred[Any] | None = None
        self._maybe_send = _Loop(self._send_if_due)
        """Send the next batch if it is due and none is in flight."""
        self._fill = _Loop(self._fill_once)
        """Read the backlog from disk while behind and there is room; go live once caught up."""
        self._batch_timer: IDelayedCall | None = None
        self._retry_timer: IDelayedCall | None = None
        self._read_timer: IDelayedCall | None = None
        self._attempts = 0
        # When the current run of failed attempts began (None: the last attempt was answered).
        self._failing_since: float | None = None
        # While narrowing down a refused event: batches of at most its size until done.
        self._narrowing: _Narrowing | None = None
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
    def feed(self) -> Feed:
        """Where records are taken from now."""
        return self._feed

    @property
    def done_through(self) -> int:
        """Every record up to this seq is forwarded (or refused, or no event)."""
        return self._done_through

    @property
    def backlog(self) -> int:
        """Durable records not yet done (events and other records alike).

        Seqs a restore skipped are no records: they are not counted.
        """
        committed, done = self._journal.committed_seq, self._done_through
        if committed <= done:
            return 0
        skipped = self._skipped(done, committed) if self._skipped is not None else 0
        return max(0, committed - done - skipped)

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
        if self._feed is not Feed.READING:  # a read under way comes back to _chunk_read
            self._feed = Feed.BEHIND  # records committed while stopped are read from disk on a start
        self._journal.commit_observers.remove(self._committed)
        for timer in (
            self._batch_timer,
            self._retry_timer,
            self._read_timer,
            self._wake_timer,
            self._take_in_call,
        ):
            if timer is not None and timer.active():
                timer.cancel()
        self._batch_timer = self._retry_timer = self._read_timer = self._wake_timer = None
        self._take_in_call = None
        self._arrived = []  # not taken in: read from the journal after a start
        if self._in_flight is not None:
            self._in_flight.cancel()
        if self._feed is not Feed.READING and self._cursor is not None:
            self._cursor.close()
            self._cursor = None

    # -- taking records in

    def _room(self) -> tuple[int, int]:
        waiting = len(self._queue) - len(self._early)
        if len(self._queue) >= _EARLY_BUFFERS * self._buffer_events:
            return 0, 0
        return self._buffer_events - waiting, self._buffer_bytes - self._queued_bytes

    def _committed(self, records: list[Record]) -> None:
        """A durable batch of the journal: taken in now, or ``take_in_delay`` later (see __init__)."""
        if not self._take_in_delay:
            self._take_in(records)
            return
        self._arrived.extend(records)
        if self._take_in_call is None:
            self._take_in_call = self._clock.callLater(self._take_in_delay, self._take_in_arrived)

    def _take_in_arrived(self) -> None:
        self._take_in_call = None
        records, self._arrived = self._arrived, []
        if self._running:
            self._take_in(records)

    def _take_in(self, records: list[Record]) -> None:
        """Queue the events of committed records while live, else leave them to the reads."""
        if self._feed is not Feed.LIVE:
            self._fill()
            return
        read_through = self._read_through
        if records and records[0].seq <= read_through:
            records = [record for record in records if record.seq > read_through]
        # One mapping call for the whole commit; a record that is no event gives none.
        events = self._sink.entries(records, self._clock.seconds()) if records else []
        events_room, bytes_room = self._room()
        queue = self._queue
        if len(events) <= events_room:
            size = sum(len(event.body) for event in events)
            if size <= bytes_room:
                # Room for all of them (the common case): no look at each.
                queue.extend(events)
                self._queued_bytes += size
                if records:
                    self._read_through = records[-1].seq
                self._fill()
                self._maybe_send()
                return
        for event in events:
            size = len(event.body)
            if events_room < 1 or bytes_room < size:
                # Full: from here on, read the journal instead of holding records.
                self._feed = Feed.BEHIND
                self._read_through = event.seq - 1
                break
            queue.append(event)
            self._queued_bytes += size
            events_room -= 1
            bytes_room -= size
        else:
            if records:
                self._read_through = records[-1].seq
        self._fill()
        self._maybe_send()

    def _fill_once(self) -> None:
        if not self._running or self._feed is not Feed.BEHIND:
            return
        through = self._journal.committed_seq
        if self._read_through >= through:
            self._feed = Feed.LIVE
            return
        events_room, bytes_room = self._room()
        if events_room < self._max_events or bytes_room < self._max_bytes:
            return  # sending makes room, then _fill runs again
        start = self._read_through + 1
        if self._cursor is None or self._cursor.next_seq != start:
            if self._cursor is not None:
                self._cursor.close()
            self._cursor = Cursor(self._journal.path, start)
        self._feed = Feed.READING
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
        self._feed = Feed.BEHIND
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
        self._feed = Feed.BEHIND
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
        self._feed = Feed.READ_FAILED
        self._read_timer = self._clock.callLater(_READ_RETRY, self._read_again)

    def _read_again(self) -> None:
        self._read_timer = None
        self._feed = Feed.BEHIND
        self._fill()

    # -- sending

    def _next_batch(self) -> list[Entry]:
        """The next events to send: in order, leaving out finished ones and paused lots' ones."""
        limit = self._narrowing.size if self._narrowing is not None else self._max_events
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
        if self._narrowing is None and not self._early and not self._paused:
            # The common case, without building the batch: it would start with the queue's first event.
            due = self._queue[0].at + self._settings.batch_max_delay
            if not (
                len(self._queue) >= self._max_events
                or self._queued_bytes >= self._max_bytes
                or self._feed is not Feed.LIVE
                or due <= self._clock.seconds()
            ):
                if self._batch_timer is None:
                    self._batch_timer = self._clock.callLater(due - self._clock.seconds(), self._batch_due)
                return
        batch = self._next_batch()
        if not batch:
            self._wake_when_unpaused()
            return
        limit = self._narrowing.size if self._narrowing is not None else self._max_events
        due = batch[0].at + self._settings.batch_max_delay
        if (
            len(batch) >= limit
            or self._queued_bytes >= self._max_bytes
            or self._feed is not Feed.LIVE
            or self._narrowing is not None
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
        if self._all_delivered(batch, result):
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

    def _all_delivered(self, batch: list[Entry], result: Sequence[Outcome]) -> bool:
        """The common answer -- one delivered outcome for a whole batch at the queue's front, nothing
        else pending -- settled at once (as ``_answered`` and ``_advance`` would); False otherwise."""
        queue, count = self._queue, len(batch)
        if self._early or not result or len(result) != count or len(queue) < count:
            return False
        first = result[0]
        if not first.done or first.refused or first.status is None:
            return False
        if queue[0] is not batch[0] or queue[count - 1] is not batch[-1]:
            return False  # not the queue's first events in a row (some lot's were held back)
        if result.count(first) != count:
            return False
        for _ in range(count):
            queue.popleft()
        self._queued_bytes -= sum(len(entry.body) for entry in batch)
        self._recovered(first.status)
        self._delivered(batch, queue[0].seq - 1 if queue else self._read_through, first.status)
        if self._narrowing is not None and self._done_through >= self._narrowing.until:
            self._narrowing = None
        if not self._paused:
            self.last_error = ""
        self._fill()
        self._maybe_send()
        return True

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
        if self._narrowing is not None and self._done_through >= self._narrowing.until:
            self._narrowing = None

    def _delivered(self, batch: list[Entry], through: int, status: int) -> None:
        self._done_through = through
        self.counters["events"] += len(batch)
        self.counters["batches"] += 1
        body: dict[str, object] = {
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
        until = batch[-1].seq if self._narrowing is None else max(self._narrowing.until, batch[-1].seq)
        self._narrowing = _Narrowing(max(1, len(batch) // 2), until)
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
        body: dict[str, object] = {
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

    def _record(self, kind: str, park: str, code: str, opr: str, body: dict[str, object]) -> None:
        if self.progress:
            body["sink"] = self.progress  # the main sink's records keep their original form

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

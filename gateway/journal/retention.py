"""
Retention: remove the oldest segments of the journal by size and by age.

Never one that still holds a record the gateway needs: the caller says, with
``floor``, the lowest seq that must be kept (what the cloud has not yet
acknowledged, sync entries not yet done, the last checkpoint), and only
segments whose every record lies below it may go. The last segment (the one
being written) never goes, and only the oldest segments go, so what is left is
one unbroken run of seqs: its first record is the anchor ``verify`` starts from.

:func:`plan` decides (no I/O); :class:`Retention` lists the segments, removes
what the plan says in a thread, and journals a ``retention`` record saying what
went and why.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from itertools import pairwise
from typing import Protocol, TypeVar

from attrs import frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import JournalAppend
from gateway.journal.kinds import RETENTION_RECORD
from gateway.journal.record import BadLine, decode_line
from gateway.journal.segments import list_segments, read_last_line
from gateway.journal.writer import RunBlocking

__all__ = [
    "Removal",
    "RetainedJournal",
    "Retention",
    "RetentionPass",
    "SegmentInfo",
    "plan",
    "record_seconds",
]


_log = Logger()
_T = TypeVar("_T")


@frozen
class SegmentInfo:
    """A segment as retention sees it: its size, and when its last record was written (None: unknown)."""

    name: str
    path: str
    first_seq: int
    size: int
    last_ts: float | None


@frozen
class Removal:
    """
    The oldest segments to remove, oldest first.

    ``first_seq``/``last_seq`` are the seqs they held (``last_seq`` is one less
    than the first seq of the segment after them), ``total_bytes`` their size
    and ``reason`` why: ``"size"``, ``"age"`` or ``"size and age"``.
    """

    segments: tuple[SegmentInfo, ...]
    total_bytes: int
    first_seq: int
    last_seq: int
    reason: str

    @property
    def names(self) -> list[str]:
        """The names of the segments, oldest first."""
        return [segment.name for segment in self.segments]

    def first(self, count: int) -> Removal:
        """The same removal cut short after its ``count`` oldest segments (``count`` >= 1)."""
        if not 1 <= count <= len(self.segments):
            raise ValueError(f"count must be from 1 to {len(self.segments)}")
        if count == len(self.segments):
            return self
        kept = self.segments[:count]
        return Removal(
            kept,
            sum(segment.size for segment in kept),
            self.first_seq,
            self.segments[count].first_seq - 1,
            self.reason,
        )


def plan(
    segments: Sequence[SegmentInfo], *, max_bytes: int, max_age: float, now: float, floor_seq: int
) -> Removal | None:
    """
    Which of ``segments`` (in seq order) to remove, or None for none.

    The oldest go while the segments left hold more than ``max_bytes``
    (0: no limit) or while the oldest one's last record is older than
    ``now - max_age`` (0: no limit; a segment whose last record's time is not
    known does not go for age, but may for size). Never the last segment,
    never one after a segment that stays, and never one holding a record at or
    above ``floor_seq``: a segment may go only if the next one starts at or
    below ``floor_seq``.
    """
    if max_bytes < 0 or max_age < 0:
        raise ValueError("max_bytes and max_age must be 0 (no limit) or more")
    if max_bytes == 0 and max_age == 0:
        return None
    left = sum(segment.size for segment in segments)
    reasons: set[str] = set()
    count = 0
    for segment, following in pairwise(segments):
        if following.first_seq > floor_seq:
            break
        why: set[str] = set()
        if max_bytes and left > max_bytes:
            why.add("size")
        if max_age and segment.last_ts is not None and segment.last_ts < now - max_age:
            why.add("age")
        if not why:
            break
        reasons |= why
        left -= segment.size
        count += 1
    if count == 0:
        return None
    removed = tuple(segments[:count])
    return Removal(
        removed,
        sum(segment.size for segment in removed),
        removed[0].first_seq,
        segments[count].first_seq - 1,
        " and ".join(sorted(reasons, key=("size", "age").index)),
    )


def record_seconds(ts: str) -> float:
    """Seconds since the epoch of a record's ``ts`` (RFC 3339 UTC). Raises ValueError."""
    return datetime.fromisoformat(ts).timestamp()


@frozen
class RetentionPass:
    """
    What one pass did: what it planned to remove, how many of those it did remove, what stopped it.

    ``removed`` is the part of ``planned`` that is gone (None if nothing went).
    ``error`` is the OS error that cut the pass short, if any.
    """

    planned: Removal | None
    removed: Removal | None
    error: str | None


class RetainedJournal(JournalAppend, Protocol):
    """What retention needs of :class:`gateway.journal.writer.Journal`."""

    @property
    def path(self) -> str: ...


def _in_thread(job: Callable[[], _T]) -> Deferred[_T]:
    """Run ``job`` in the reactor's thread pool (the default ``run_blocking``)."""
    return deferToThread(job)


def _os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    return f"{where}{error.strerror or error}"


class Retention:
    """
    Removes the journal's oldest segments by size and age, every ``interval`` seconds.

    ``max_bytes`` (0: no limit) bounds the total size of the segments;
    ``max_age`` (seconds, 0: no limit) the age of the newest record of the
    oldest segment. ``floor`` is asked, in the reactor thread at the start of
    each pass, for the lowest seq that must be kept. The blocking work (listing,
    reading, unlinking, syncing the directory) runs in ``run_blocking``
    (``deferToThread`` unless given); ``unlink`` and ``fsync`` replace the OS
    calls (for tests). Call it in the reactor thread only.
    """

    def __init__(
        self,
        journal: RetainedJournal,
        clock: IReactorTime,
        *,
        max_bytes: int,
        max_age: float,
        floor: Callable[[], int],
        interval: float = 60.0,
        run_blocking: RunBlocking | None = None,
        unlink: Callable[[str], None] = os.unlink,
        fsync: Callable[[int], None] = os.fsync,
    ) -> None:
        if max_bytes < 0 or max_age < 0:
            raise ValueError("max_bytes and max_age must be 0 (no limit) or more")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._journal = journal
        self._directory = journal.path
        self._clock = clock
        self._max_bytes = max_bytes
        self._max_age = max_age
        self._floor = floor
        self._interval = interval
        self._run_blocking: RunBlocking = run_blocking or _in_thread
        self._unlink = unlink
        self._fsync = fsync
        self._loop: LoopingCall | None = None
        self._first: IDelayedCall | None = None
        self._passing = False
        self._idle_waiters: list[Deferred[None]] = []
        # The time of each closed segment's last record, by name: closed segments never change.
        # Read and written only by the pass's job, and passes never overlap.
        self._last_ts: dict[str, float | None] = {}
        self._removed_segments_total = 0
        self._removed_bytes_total = 0
        self._last_error: str | None = None

    # -- what the metrics read

    @property
    def removed_segments_total(self) -> int:
        """How many segments retention removed since it was made."""
        return self._removed_segments_total

    @property
    def removed_bytes_total(self) -> int:
        """How many bytes of segments retention removed since it was made."""
        return self._removed_bytes_total

    @property
    def last_error(self) -> str | None:
        """What went wrong in the last pass (listing, reading, removing, journaling), or None."""
        return self._last_error

    @property
    def enabled(self) -> bool:
        """Whether there is any limit: with neither, retention never removes anything and never runs."""
        return bool(self._max_bytes or self._max_age)

    # -- running

    def start(self) -> None:
        """Run a pass at the next reactor turn, then every ``interval`` seconds (nothing without limits)."""
        if not self.enabled or self._loop is not None:
            return
        loop = LoopingCall(self._tick)
        loop.clock = self._clock
        self._loop = loop

        def begin() -> None:
            self._first = None
            loop.start(self._interval, now=True).addErrback(self._stopped_by_bug)

        self._first = self._clock.callLater(0, begin)

    def stop(self) -> Deferred[None]:
        """Stop the passes; fires once a pass in flight, if any, is done (its removal journaled)."""
        loop, self._loop = self._loop, None
        first, self._first = self._first, None
        if first is not None and first.active():
            first.cancel()
        if loop is not None and loop.running:
            loop.stop()
        return self._idle()

    def _tick(self) -> None:
        # Not returning the pass's Deferred: the loop keeps its beat, and a tick
        # that comes while a pass is still running is skipped here.
        if not self._passing:
            self.run_pass()

    def run_pass(self) -> Deferred[None]:
        """
        Run a pass now (unless one is running: then wait for that one); fires when it is done.

        It never fails: errors are logged and kept in :attr:`last_error`.
        """
        if self._passing:
            return self._idle()
        try:
            floor = self._floor()
        except Exception:
            _log.failure("journal retention: could not learn the lowest seq to keep; nothing removed")
            self._last_error = "could not learn the lowest seq to keep"
            return succeed(None)
        max_bytes, max_age, now = self._max_bytes, self._max_age, self._clock.seconds()
        self._passing = True
        d = self._run_blocking(lambda: self._remove(floor, max_bytes, max_age, now))
        d.addCallback(self._removed, floor)
        d.addErrback(self._log_bug)
        d.addBoth(self._done)
        return self._idle()

    def _idle(self) -> Deferred[None]:
        """Fires once no pass is running."""
        if not self._passing:
            return succeed(None)
        d: Deferred[None] = Deferred()
        self._idle_waiters.append(d)
        return d

    def _done(self, _: object) -> None:
        self._passing = False
        waiters, self._idle_waiters = self._idle_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    # -- in the thread

    def _remove(self, floor: int, max_bytes: int, max_age: float, now: float) -> RetentionPass:
        """List, plan, unlink oldest first, sync the directory: the blocking part of a pass."""
        try:
            infos = self._segment_infos(floor, max_age > 0)
        except OSError as error:
            return RetentionPass(None, None, f"reading the segments: {_os_error(error)}")
        planned = plan(infos, max_bytes=max_bytes, max_age=max_age, now=now, floor_seq=floor)
        if planned is None:
            return RetentionPass(None, None, None)
        count = 0
        problem: str | None = None
        for segment in planned.segments:
            try:
                self._unlink(segment.path)
            except OSError as e:
                problem = f"removing {segment.name}: {_os_error(e)}"
                break
            self._last_ts.pop(segment.name, None)
            count += 1
        if count:
            try:
                fd = os.open(self._directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    self._fsync(fd)
                finally:
                    os.close(fd)
            except OSError as e:
                problem = problem or f"syncing the journal directory: {_os_error(e)}"
        return RetentionPass(planned, planned.first(count) if count else None, problem)

    def _segment_infos(self, floor: int, want_ts: bool) -> list[SegmentInfo]:
        """The segments with their sizes, and the time of the last record of those that may go."""
        segments = list_segments(self._directory)
        names = {segment.name for segment in segments}
        for name in [name for name in self._last_ts if name not in names]:
            del self._last_ts[name]
        infos = []
        for index, segment in enumerate(segments):
            size = os.stat(segment.path).st_size
            last_ts = None
            closed = index + 1 < len(segments)
            if want_ts and closed and segments[index + 1].first_seq <= floor:
                if segment.name not in self._last_ts:
                    self._last_ts[segment.name] = self._read_last_ts(segment.path)
                last_ts = self._last_ts[segment.name]
            infos.append(SegmentInfo(segment.name, segment.path, segment.first_seq, size, last_ts))
        return infos

    @staticmethod
    def _read_last_ts(path: str) -> float | None:
        """The time of a closed segment's last record; None if it has none or it cannot be read as one."""
        line = read_last_line(path)
        if line is None:
            return None
        try:
            return record_seconds(decode_line(line).ts)
        except (BadLine, ValueError):
            return None

    # -- back in the reactor

    def _removed(self, result: RetentionPass, floor: int) -> Deferred[None] | None:
        if result.error is not None and result.planned is None:
            _log.error("journal retention: {error}; the next pass tries again", error=result.error)
        elif result.error is not None:
            _log.error(
                "journal retention: {error}; {removed} of the {planned} segments due were removed, "
                "the next pass tries again",
                error=result.error,
                removed=0 if result.removed is None else len(result.removed.segments),
                planned=len(result.planned.segments) if result.planned else 0,
            )
        self._last_error = result.error
        removal = result.removed
        if removal is None:
            return None
        self._removed_segments_total += len(removal.segments)
        self._removed_bytes_total += removal.total_bytes
        body = {
            "removed": removal.names,
            "first_seq": removal.first_seq,
            "last_seq": removal.last_seq,
            "bytes": removal.total_bytes,
            "reason": removal.reason,
            "floor": floor,
            "max_bytes": self._max_bytes,
            "max_age": self._max_age,
        }
        _log.info(
            "journal retention: removed {count} segments ({bytes} bytes, seqs {first_seq}-{last_seq}) "
            "by {reason}; the lowest seq to keep was {floor}",
            count=len(removal.segments),
            bytes=removal.total_bytes,
            first_seq=removal.first_seq,
            last_seq=removal.last_seq,
            reason=removal.reason,
            floor=floor,
            removed=removal.names,
        )
        try:
            d = self._journal.append(RETENTION_RECORD, "", "", "", body)
        except Exception as e:  # a journal that raises rather than fails its Deferred
            self._not_journaled(Failure(e), body)
            return None
        return d.addCallbacks(lambda _: None, lambda f: self._not_journaled(f, body))

    def _not_journaled(self, failure: Failure, body: dict[str, object]) -> None:
        message = f"could not journal the removal of {body['removed']}: {failure.getErrorMessage()}"
        self._last_error = message
        _log.error("journal retention: {message} (removed: {body})", message=message, body=body)

    def _log_bug(self, failure: Failure) -> None:
        self._last_error = f"unexpected error: {failure.getErrorMessage()}"
        _log.failure("journal retention: unexpected error in a pass", failure)

    def _stopped_by_bug(self, failure: Failure) -> None:
        self._loop = None
        _log.failure("journal retention stopped", failure)

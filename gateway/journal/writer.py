"""
The journal writer: chained records appended with group commit.

How a record becomes durable
----------------------------
:meth:`Journal.append` builds the record's line and chain at once and puts it
on a pending list; the first append of a reactor turn schedules a flush with
``callLater(0)``, so every record appended in that turn shares one batch. The
flush writes the batch with one ``os.write`` (in the reactor thread: it only
copies into the page cache) and, with ``fsync="always"``, has one ``fsync`` run
by a helper process (``FsyncProcess``; the journal's own thread, ``FsyncThread``,
if the helper cannot run or ``os_fsync`` is replaced). While that fsync runs,
new appends pile up and become the next batch: at most one batch is in flight.
When the fsync returns, the batch's Deferreds fire in seq order, then the next
batch starts.

``fsync`` modes (``[journal] fsync``):

- ``"always"``: an append's Deferred fires after an fsync that covers it.
- ``"interval"``: it fires once the record is written; an fsync runs
  ``interval`` seconds after the first write that followed the last one. A
  crash of the machine (not of the process) loses up to that much.
- ``"never"``: it fires once written; the journal never fsyncs a batch
  (it still syncs a segment before starting the next one, and on close).

Segments rotate before a record that would take the current one past
``segment_bytes`` (a record larger than that gets a segment to itself). The
full segment is synced, the new file created and the directory synced, in the
thread, before anything is written to the new one; so only the last segment can
ever be torn, which is what recovery relies on.

Failures
--------
If a write or an fsync of a batch fails (``ENOSPC``, ``EIO``, ..., or the
helper process ended before answering: see ``gateway.journal.fsync_process``):

- the file is truncated back to its size before the batch (and synced), so it
  never holds a record whose writer was told it failed;
- the in-memory head (seq and chain) goes back to the last record on disk, so
  the next append reuses the failed seqs and chains onto what the file holds;
- the batch's Deferreds fail with :class:`JournalWriteError` (errno and
  message), in seq order. Records appended while the batch was in flight are
  chained onto it, so they fail too, with the same errno;
- the journal goes on: the next append is tried afresh.

If the truncation itself fails, or an ``"interval"`` fsync fails (records
already acknowledged may be lost), or the sync of a full segment fails, the
journal is *broken*: every pending and later append fails at once with
:class:`JournalWriteError`, and a critical message is logged. Restarting the
gateway recovers the journal from disk.

A body that cannot be serialized makes ``append`` raise ``TypeError`` or
``ValueError`` at once; no seq is used.
"""

from __future__ import annotations

import errno as errno_codes
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from hashlib import blake2b as _blake2b
from typing import Any, TypeVar, cast

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorCore
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.journal.damage import Damage
from gateway.journal.disk import (
    OPEN_SEGMENT,
    FsyncThread,
    JournalReactor,
    JournalWriteError,
    RunBlocking,
    SegmentNotSynced,
    create_segment,
    timed_fsync,
    write_error,
)
from gateway.journal.fsync_process import CHILD_ARGV, FsyncProcess
from gateway.journal.kinds import RECOVERY_RECORD
from gateway.journal.reader import read_records
from gateway.journal.record import (
    Record,
    dumps_compact,
    encode_line,
    format_ts,
)
from gateway.journal.recovery import (
    Quarantine,
    recover,
)
from gateway.journal.segments import segment_name
from gateway.journal.setaside import StartupDamage

__all__ = ["FSYNC_MODES", "Journal", "JournalReactor", "JournalWriteError", "RunBlocking"]

FSYNC_MODES = ("always", "interval", "never")

_T = TypeVar("_T")
_log = Logger()

_CHAIN_OPEN = b',"chain":"'
_CHAIN_CLOSE = b'"}\n'


class Journal:
    """
    An open journal directory: append records, replay them, close.

    Use :meth:`open`. All methods are called in the reactor thread.
    """

    __slots__ = (
        "_broken",
        "_busy",
        "_chain",
        "_close_waiters",
        "_closed",
        "_committed_chain",
        "_committed_seq",
        "_damage",
        "_directory",
        "_directory_fd",
        "_dirty",
        "_fd",
        "_finishing",
        "_flush_call",
        "_helper",
        "_interval",
        "_interval_call",
        "_interval_syncing",
        "_lines",
        "_mode",
        "_os_fsync",
        "_os_ftruncate",
        "_os_write",
        "_pool",
        "_reactor",
        "_records",
        "_refusal",
        "_retired",
        "_run_blocking",
        "_segment_bytes",
        "_segment_name",
        "_segment_size",
        "_seq",
        "_sync_batches",
        "_trigger",
        "_ts_prefix",
        "_ts_second",
        "_waiters",
        "commit_observers",
        "fsync_observers",
        "guard",
    )

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        reactor: JournalReactor,
        fsync: str = "always",
        segment_bytes: int = 64 * 2**20,
        interval: float = 1.0,
        os_fsync: Callable[[int], None] = os.fsync,
        os_write: Callable[[int, bytes | memoryview], int] = os.write,
        os_ftruncate: Callable[[int, int], None] = os.ftruncate,
        run_blocking: RunBlocking | None = None,
        fsync_helper: Sequence[str] | None = CHILD_ARGV,
        close_at_shutdown: bool = True,
        signing_key: SigningKey | None = None,
        gateway_id: str = "",
    ) -> Journal:
        """
        Open the journal in ``path`` (created if needed) and recover it.

        Blocks: call it at start-up, before the reactor runs. Recovery checks
        the chain of the last segment, cuts a torn, partial or undecodable tail
        at the last whole record (truncating and syncing the file; the cut bytes
        are kept in ``<segment>.cut-<offset>``) and, if anything was cut,
        appends a ``kind="recovery"`` record whose body says what: ``segment``,
        ``offset``, ``dropped_bytes``, ``reason``, ``last_good_seq``,
        ``saved_as``. Damaged records in the last segment with intact records
        after them are set aside alone, each named by a ``recovery`` record
        signed with ``signing_key`` for ``gateway_id`` (see :meth:`set_aside`;
        unsigned without a key, which ``verify`` then refuses). Raises
        :class:`JournalWriteError` if another process has the journal open
        (the directory is locked with ``flock``).

        ``os_fsync``, ``os_write``, ``os_ftruncate`` and ``run_blocking``
        replace the OS calls and the fsync thread (for tests). Without
        ``run_blocking`` the journal runs its blocking calls on its own
        thread (``FsyncThread``), started at the first of them and stopped by
        :meth:`close`; with ``fsync="always"`` and the real ``os.fsync``, the
        batches' fsyncs run in a helper process started with ``fsync_helper``
        (its argv; None: on the thread too), ended by :meth:`close`. With a
        real reactor, a "before shutdown" trigger closes
        the journal if nobody did, unless ``close_at_shutdown`` is false: a
        service that appends while it stops must be the one to close it, since
        that trigger could otherwise run first and refuse those appends.
        """
        if fsync not in FSYNC_MODES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_MODES)}, not {fsync!r}")
        if segment_bytes <= 0:
            raise ValueError("segment_bytes must be positive")
        if interval <= 0:
            raise ValueError("interval must be positive")
        directory = os.fspath(path)
        os.makedirs(directory, exist_ok=True)
        directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            try:
                fcntl.flock(directory_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise JournalWriteError(
                    errno_codes.EBUSY, f"journal {directory} is open in another process"
                ) from None
            tail = recover(directory, directory_fd=directory_fd, fsync=os_fsync)
            if tail.segment is None:
                name = segment_name(tail.last_seq + 1)
                fd = create_segment(directory, directory_fd, name, os_fsync)
            else:
                name = tail.segment.name
                fd = os.open(tail.segment.path, OPEN_SEGMENT)
        except BaseException:
            os.close(directory_fd)
            raise
        pool = helper = None
        if run_blocking is None:
            pool = run_blocking = FsyncThread(reactor)
            if fsync == "always" and fsync_helper is not None and os_fsync is os.fsync:
                helper = FsyncProcess(reactor, pool, argv=tuple(fsync_helper))
        journal = cls(
            reactor=reactor,
            directory=directory,
            directory_fd=directory_fd,
            fd=fd,
            segment_name=name,
            segment_size=tail.size,
            last_seq=tail.last_seq,
            last_chain=tail.last_chain,
            mode=fsync,
            segment_bytes=segment_bytes,
            interval=interval,
            os_fsync=os_fsync,
            os_write=os_write,
            os_ftruncate=os_ftruncate,
            run_blocking=run_blocking,
            pool=pool,
            helper=helper,
            signing_key=signing_key,
            gateway_id=gateway_id,
        )
        try:
            if tail.cut is not None:
                journal._append_now(RECOVERY_RECORD, "", "", "", tail.cut.as_body())
            for damage in tail.set_aside:
                journal._damage.set_aside_damage(damage)
            if tail.quarantine is not None:
                journal._damage.quarantine(tail.quarantine)
        except BaseException:
            os.close(fd)
            os.close(directory_fd)
            raise
        if close_at_shutdown and pool is not None and IReactorCore.providedBy(reactor):
            journal._trigger = cast(Any, reactor).addSystemEventTrigger(
                "before", "shutdown", journal._close_at_shutdown
            )
        return journal

    def __init__(
        self,
        *,
        reactor: JournalReactor,
        directory: str,
        directory_fd: int,
        fd: int,
        segment_name: str,
        segment_size: int,
        last_seq: int,
        last_chain: bytes,
        mode: str,
        segment_bytes: int,
        interval: float,
        os_fsync: Callable[[int], None],
        os_write: Callable[[int, bytes | memoryview], int],
        os_ftruncate: Callable[[int, int], None],
        run_blocking: RunBlocking,
        pool: FsyncThread | None,
        helper: FsyncProcess | None = None,
        signing_key: SigningKey | None = None,
        gateway_id: str = "",
    ) -> None:
        """Use :meth:`open`."""
        self._reactor = reactor
        self._directory = directory
        self._directory_fd = directory_fd
        self._fd = fd
        self._segment_name = segment_name
        self._segment_size = segment_size
        self._segment_bytes = segment_bytes
        self._mode = mode
        self._sync_batches = mode == "always"
        self._interval = interval
        self._os_fsync = os_fsync
        self._os_write = os_write
        self._os_ftruncate = os_ftruncate
        self._run_blocking = run_blocking
        self._pool = pool
        self._helper = helper
        self._trigger: object | None = None
        # The head appends chain onto, and the head of what the file holds for
        # good (synced in "always", written otherwise): a failure rolls back to it.
        self._seq = self._committed_seq = last_seq
        self._chain = self._committed_chain = last_chain
        # Pending records, in seq order: lines, records and Deferreds side by side.
        self._lines: list[bytes] = []
        self._records: list[Record] = []
        self._waiters: list[Deferred[Record]] = []
        self._flush_call: Any = None
        # A batch, a rotation or the undoing of a failed batch is under way.
        self._busy = False
        # Set when the journal cannot go on (see _break).
        self._broken: JournalWriteError | None = None
        # Set when broken or closing: appends fail with it at once.
        self._refusal: JournalWriteError | None = None
        self._dirty = False
        self._interval_call: Any = None
        self._interval_syncing = False
        self._retired: list[int] = []
        self._close_waiters: list[Deferred[None]] | None = None
        self._finishing = False
        self._closed = False
        self._ts_second = -1
        self._ts_prefix = ""
        self.commit_observers: list[Callable[[list[Record]], None]] = []
        """
        Called in the reactor thread with each batch of records once it is
        durable per the mode (after the appenders' Deferreds fired), in seq
        order. The list is the observer's to keep. An observer that raises is
        logged and ignored. The forwarder follows the journal this way.
        """
        self._damage = StartupDamage(
            directory=directory,
            directory_fd=directory_fd,
            os_fsync=os_fsync,
            append_now=self._append_now,
            signing_key=signing_key,
            gateway_id=gateway_id,
        )
        self.guard: Callable[[], str | None] | None = None
        """
        Asked before each append: a reason to refuse it (the disk is nearly
        full), or None. A refused append fails at once with
        :class:`JournalWriteError` (``ENOSPC``) and uses no seq. It is asked
        on every append, so it must answer from what it already knows.
        """
        self.fsync_observers: list[Callable[[float], None]] = []
        """
        Called in the reactor thread with the seconds each fsync of a batch
        (``"always"``) or of the ``"interval"`` timer took, once it succeeded.
        Add to it after :meth:`open`; an observer that raises is logged and ignored.
        """

    # -- reading

    @property
    def path(self) -> str:
        """The journal directory."""
        return self._directory

    @property
    def last_seq(self) -> int:
        """The seq of the last record appended (it may still be in flight)."""
        return self._seq

    @property
    def committed_seq(self) -> int:
        """The seq of the last record whose append succeeded (durable per the mode)."""
        return self._committed_seq

    @property
    def head(self) -> tuple[int, str]:
        """The seq and chain of the last record appended (it may still be in flight)."""
        return self._seq, self._chain.decode("ascii")

    @property
    def problem(self) -> str | None:
        """Why appends fail now (broken or closed), or None while the journal can write."""
        return None if self._refusal is None else str(self._refusal)

    @property
    def quarantined(self) -> list[Quarantine]:
        """Damage found since the journal was opened (in recovery or the start-up replay)."""
        return list(self._damage.quarantined)

    def set_aside(self, found: list[Damage]) -> list[Record]:
        """
        Set aside each damaged line found at start-up; returns the records that say so.

        For a start-up read that skips damage (``read_records_skipping``,
        ``scan_headers``), so the gateway starts and serves instead of failing
        on every start (see :meth:`StartupDamage.set_aside`). Blocks (appends
        and syncs at once): call it before the reactor runs.
        """
        return self._damage.set_aside(found)

    def note_quarantined(self, quarantine: Quarantine) -> None:
        """List in :attr:`quarantined` damage journaled before (read back at start-up)."""
        self._damage.note_quarantined(quarantine)

    def replay(self, since_seq: int = 1) -> Iterator[Record]:
        """
        Iterate the records on disk with ``seq >= since_seq``, in order.

        Blocks (it reads files): use it at start-up to rebuild state, or from
        a thread. Records still pending are not on disk yet.
        """
        return read_records(self._directory, since_seq)

    # -- appending

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        """
        Append a record; the Deferred fires with it once durable per the mode.

        Fails with :class:`JournalWriteError` if it could not be written or
        synced (see the module docstring). Deferreds fire in seq order.
        """
        if self._refusal is not None:
            return fail(self._refusal)
        if self.guard is not None:
            reason = self.guard()
            if reason is not None:
                return fail(JournalWriteError(errno_codes.ENOSPC, reason))
        if not (
            isinstance(kind, str) and isinstance(park, str) and isinstance(code, str) and isinstance(opr, str)
        ):
            raise TypeError("kind, park, code and opr must be str")
        seq = self._seq + 1
        micros = round(self._reactor.seconds() * 1_000_000)
        second = micros // 1_000_000
        if second != self._ts_second:
            self._ts_second = second
            self._ts_prefix = time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(second))
        ts = f"{self._ts_prefix}{micros - second * 1_000_000:06d}Z"
        head = dumps_compact(
            {"seq": seq, "ts": ts, "kind": kind, "park": park, "code": code, "opr": opr, "body": body}
        )[:-1]
        chain = _blake2b(self._chain + head, digest_size=16).hexdigest()
        chain_bytes = chain.encode("ascii")
        self._seq = seq
        self._chain = chain_bytes
        record = Record(seq, ts, kind, park, code, opr, body, chain)
        d: Deferred[Record] = Deferred()
        self._lines.append(b"".join((head, _CHAIN_OPEN, chain_bytes, _CHAIN_CLOSE)))
        self._records.append(record)
        self._waiters.append(d)
        if self._flush_call is None and not self._busy:
            self._flush_call = self._reactor.callLater(0, self._flush)
        return d

    def _flush(self) -> None:
        """Write the pending records as one batch (or rotate first)."""
        self._flush_call = None
        if self._busy or not self._lines:
            return
        if self._broken is not None:
            self._fail_pending(self._broken)
            return
        lines = self._lines
        data = b"".join(lines)
        size = self._segment_size
        limit = self._segment_bytes
        if size + len(data) <= limit:
            records, waiters = self._records, self._waiters
            self._lines, self._records, self._waiters = [], [], []
        else:
            if size > 0 and size + len(lines[0]) > limit:
                self._rotate(self._records[0].seq)
                return
            n = 0
            for line in lines:
                if n and size + len(line) > limit:
                    break
                size += len(line)
                n += 1
            data = b"".join(lines[:n])
            records, waiters = self._records[:n], self._waiters[:n]
            del self._lines[:n], self._records[:n], self._waiters[:n]
        self._write_batch(data, records, waiters)

    def _write_all(self, fd: int, data: bytes) -> None:
        written = self._os_write(fd, data)
        if written < len(data):
            view = memoryview(data)
            while written < len(data):
                n = self._os_write(fd, view[written:])
                if n <= 0:
                    raise OSError(errno_codes.EIO, "write wrote nothing")
                written += n

    def _write_batch(self, data: bytes, records: list[Record], waiters: list[Deferred[Record]]) -> None:
        self._busy = True
        fd = self._fd
        start = self._segment_size
        try:
            self._write_all(fd, data)
        except OSError as e:
            self._batch_failed(write_error(e, f"write to {self._segment_name}"), records, waiters, fd, start)
            return
        self._segment_size = start + len(data)
        if self._sync_batches:
            if self._helper is not None:
                d = self._helper.sync(fd)
            else:
                d = self._run_blocking(partial(timed_fsync, self._os_fsync, fd))
            d.addCallbacks(
                lambda seconds: self._batch_synced(seconds, records, waiters),
                lambda f: self._batch_failed(
                    write_error(f, f"fsync of {self._segment_name}"), records, waiters, fd, start
                ),
            )
            d.addErrback(self._log_bug)
        else:
            if self._mode == "interval":
                self._mark_dirty()
            self._batch_done(records, waiters)

    def _batch_synced(self, seconds: float, records: list[Record], waiters: list[Deferred[Record]]) -> None:
        if self.fsync_observers:
            self._observe_fsync(seconds)
        self._batch_done(records, waiters)

    def _observe_fsync(self, seconds: float) -> None:
        for observer in tuple(self.fsync_observers):
            try:
                observer(seconds)
            except Exception:
                _log.failure("journal: fsync observer {observer!r} failed", observer=observer)

    def _batch_done(self, records: list[Record], waiters: list[Deferred[Record]]) -> None:
        last = records[-1]
        self._committed_seq = last.seq
        self._committed_chain = last.chain.encode("ascii")
        self._busy = False
        for record, d in zip(records, waiters, strict=True):
            d.callback(record)
        for observer in tuple(self.commit_observers):
            try:
                observer(records)
            except Exception:
                _log.failure("journal: commit observer {observer!r} failed", observer=observer)
        self._after_batch()

    def _batch_failed(
        self,
        error: JournalWriteError,
        records: list[Record],
        waiters: list[Deferred[Record]],
        fd: int,
        start: int,
    ) -> None:
        """Undo a batch that failed: cut it off the file, roll back, fail it."""
        # Records appended since the batch left chain onto it: they fail too.
        chained = self._waiters
        self._lines, self._records, self._waiters = [], [], []
        self._seq, self._chain = self._committed_seq, self._committed_chain
        self._segment_size = start
        sync = self._mode != "never"
        follow_error = JournalWriteError(error.errno, f"{error.message} (an earlier record in flight failed)")
        _log.error(
            "journal: records {first}-{last} not written: {error}",
            first=records[0].seq,
            last=records[-1].seq + len(chained),
            error=str(error),
        )

        def undo() -> None:
            self._os_ftruncate(fd, start)
            if sync:
                self._os_fsync(fd)

        def undone(_: object) -> None:
            self._busy = False
            for d in waiters:
                d.errback(error)
            for d in chained:
                d.errback(follow_error)
            self._after_batch()

        def not_undone(failure: Failure) -> None:
            self._break(
                write_error(
                    failure,
                    f"could not cut failed records {records[0].seq}- off {self._segment_name} "
                    f"at offset {start}; the journal is broken until restarted",
                )
            )
            undone(None)

        d = self._run_blocking(undo)
        d.addCallbacks(undone, not_undone)
        d.addErrback(self._log_bug)

    def _after_batch(self) -> None:
        """Whatever comes after a batch, rotation or undo: the next batch, or closing."""
        if self._busy:
            return
        if self._lines:
            if self._broken is not None:
                self._fail_pending(self._broken)
            else:
                if self._flush_call is None:
                    self._flush_call = self._reactor.callLater(0, self._flush)
                return
        self._maybe_finish_close()

    def _fail_pending(self, error: JournalWriteError) -> None:
        waiters = self._waiters
        self._lines, self._records, self._waiters = [], [], []
        self._seq, self._chain = self._committed_seq, self._committed_chain
        for d in waiters:
            d.errback(error)

    def _break(self, error: JournalWriteError) -> None:
        _log.critical("journal broken: {error}", error=str(error))
        self._broken = self._refusal = error
        if not self._busy:
            self._fail_pending(error)

    def _log_bug(self, failure: Failure) -> None:
        _log.failure("journal: unexpected error", failure)

    # -- segments

    def _rotate(self, first_seq: int) -> None:
        """Sync the full segment, start the next one (in the thread), then flush on."""
        self._busy = True
        old_fd = self._fd
        name = segment_name(first_seq)
        sync_old = not self._sync_batches  # in "always" every batch in it is synced
        fsync = self._os_fsync
        directory, directory_fd = self._directory, self._directory_fd

        def rotate() -> int:
            if sync_old:
                try:
                    fsync(old_fd)
                except OSError as e:
                    raise SegmentNotSynced(e) from e
            return create_segment(directory, directory_fd, name, fsync)

        def rotated(fd: int) -> None:
            if self._helper is not None:
                self._helper.forget(old_fd)
            if self._interval_syncing:
                self._retired.append(old_fd)  # an interval fsync may be on it
            else:
                os.close(old_fd)
            self._fd = fd
            self._segment_name = name
            self._segment_size = 0
            self._busy = False
            self._after_batch()

        def not_rotated(failure: Failure) -> None:
            self._busy = False
            error = write_error(failure, f"start of segment {name}")
            if failure.check(SegmentNotSynced):
                self._break(write_error(failure, f"fsync of full segment {self._segment_name}"))
            else:
                _log.error("journal: {error}", error=str(error))
            self._fail_pending(error)
            self._after_batch()

        d = self._run_blocking(rotate)
        d.addCallbacks(rotated, not_rotated)
        d.addErrback(self._log_bug)

    # -- "interval"

    def _mark_dirty(self) -> None:
        self._dirty = True
        if self._interval_call is None and not self._interval_syncing:
            self._interval_call = self._reactor.callLater(self._interval, self._interval_sync)

    def _interval_sync(self) -> None:
        self._interval_call = None
        if not self._dirty or self._interval_syncing or self._finishing:
            return
        self._dirty = False
        self._interval_syncing = True
        fd = self._fd
        d = self._run_blocking(partial(timed_fsync, self._os_fsync, fd))
        d.addCallbacks(self._interval_synced, self._interval_sync_failed)
        d.addErrback(self._log_bug)

    def _end_interval_sync(self) -> None:
        self._interval_syncing = False
        retired, self._retired = self._retired, []
        for fd in retired:
            os.close(fd)

    def _interval_synced(self, seconds: float) -> None:
        self._end_interval_sync()
        if self.fsync_observers:
            self._observe_fsync(seconds)
        if self._dirty and self._close_waiters is None:
            self._mark_dirty()
        self._maybe_finish_close()

    def _interval_sync_failed(self, failure: Failure) -> None:
        self._end_interval_sync()
        self._break(
            write_error(
                failure,
                f"fsync of {self._segment_name}; records acknowledged since the last fsync may be lost",
            )
        )
        self._maybe_finish_close()

    # -- blocking writes, at start-up only

    def _append_now(self, kind: str, park: str, code: str, opr: str, body: object) -> Record:
        """Append and sync a record synchronously (while opening, before the reactor runs)."""
        seq = self._seq + 1
        ts = format_ts(self._reactor.seconds())
        line, chain = encode_line(seq, ts, kind, park, code, opr, body, self._chain)
        if self._segment_size > 0 and self._segment_size + len(line) > self._segment_bytes:
            name = segment_name(seq)
            fd = create_segment(self._directory, self._directory_fd, name, self._os_fsync)
            os.close(self._fd)
            self._fd, self._segment_name, self._segment_size = fd, name, 0
        self._write_all(self._fd, line)
        self._os_fsync(self._fd)
        self._segment_size += len(line)
        self._seq = self._committed_seq = seq
        self._chain = self._committed_chain = chain
        return Record(seq, ts, kind, park, code, opr, body, chain.decode("ascii"))

    # -- closing

    def close(self) -> Deferred[None]:
        """
        Flush what is pending, fsync, close the files (and stop the thread).

        Appends made after this fail with :class:`JournalWriteError`. Fails
        with :class:`JournalWriteError` if the final fsync fails.
        """
        if self._closed:
            return succeed(None)
        d: Deferred[None] = Deferred()
        if self._close_waiters is None:
            self._close_waiters = []
            if self._refusal is None:
                self._refusal = JournalWriteError(None, f"journal {self._directory} is closed")
        self._close_waiters.append(d)
        if self._flush_call is None and self._lines and not self._busy:
            self._flush_call = self._reactor.callLater(0, self._flush)
        self._maybe_finish_close()
        return d

    def _close_at_shutdown(self) -> Deferred[None]:
        self._trigger = None
        return self.close()

    def _maybe_finish_close(self) -> None:
        if (
            self._close_waiters is None
            or self._finishing
            or self._busy
            or self._lines
            or self._interval_syncing
        ):
            return
        self._finishing = True
        if self._interval_call is not None:
            self._interval_call.cancel()
            self._interval_call = None
        fd, directory_fd, retired = self._fd, self._directory_fd, self._retired
        self._retired = []
        fsync = self._os_fsync
        if self._helper is not None:
            self._helper.forget(fd)

        def finish() -> None:
            try:
                fsync(fd)
            finally:
                for each in (fd, *retired, directory_fd):
                    os.close(each)

        def finished(result: object) -> Deferred[None]:
            self._closed = True
            if self._pool is not None:
                self._pool.stop()
            helper_ended = succeed(None) if self._helper is None else self._helper.stop()
            return helper_ended.addBoth(lambda _: answer(result))

        def answer(result: object) -> None:
            if self._trigger is not None:
                cast(Any, self._reactor).removeSystemEventTrigger(self._trigger)
                self._trigger = None
            waiters = self._close_waiters or []
            if isinstance(result, Failure):
                error = write_error(result, f"final fsync of {self._segment_name}")
                for d in waiters:
                    d.errback(error)
            else:
                for d in waiters:
                    d.callback(None)

        self._run_blocking(finish).addBoth(finished).addErrback(self._log_bug)

"""
Reading a journal directory: its records in order, and checking its chain.

These functions block (they read files); in a running gateway call them from a
thread, or at start-up before the reactor runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol, TypeVar

from attrs import frozen

from gateway.journal.record import BadLine, Record, decode_line
from gateway.journal.recovery import is_hole
from gateway.journal.segments import iter_lines, line_seq, list_segments, segment_name, segments_from

__all__ = [
    "ChainError",
    "Cursor",
    "Damage",
    "read_lines_skipping",
    "read_records",
    "read_records_skipping",
    "verify",
]


class ChainError(Exception):
    """
    The journal is not whole.

    ``seq`` is the first seq that cannot be vouched for: the seq the record at
    the break should have had (one more than the last good record), or None
    when no seq applies. ``segment`` and ``offset`` say where the break is.
    """

    seq: int | None
    reason: str
    segment: str | None
    offset: int | None

    def __init__(
        self,
        seq: int | None,
        reason: str,
        segment: str | None = None,
        offset: int | None = None,
    ) -> None:
        super().__init__(seq, reason, segment, offset)
        self.seq = seq
        self.reason = reason
        self.segment = segment
        self.offset = offset

    def __str__(self) -> str:
        where = f" (segment {self.segment}, offset {self.offset})" if self.segment else ""
        return f"seq {self.seq}: {self.reason}{where}" if self.seq else f"{self.reason}{where}"


@frozen
class Damage:
    """A line a tolerant reader skipped: where, the seq it should have had, and why."""

    segment: str
    offset: int
    seq: int | None
    reason: str


def _raise(damage: Damage) -> None:
    raise ChainError(damage.seq, damage.reason, damage.segment, damage.offset)


def read_records(path: str | os.PathLike[str], since_seq: int = 1) -> Iterator[Record]:
    """
    Yield every whole record with ``seq >= since_seq``, in order, across segments.

    A partial line at the end of the last segment (a write in progress, or a
    torn tail not yet cut by :meth:`Journal.open`) is left out. The chain is
    not checked here (see :func:`verify`); a whole line that is not a record
    raises :class:`ChainError`.
    """
    return read_records_skipping(path, _raise, since_seq)


def read_records_skipping(
    path: str | os.PathLike[str], on_damage: Callable[[Damage], None], since_seq: int = 1
) -> Iterator[Record]:
    """
    :func:`read_records`, but a damaged line is reported to ``on_damage`` and skipped.

    For the start-up replay: a damaged record in an older segment must not stop
    the gateway from starting (the torn tail of the last segment was cut by
    recovery before). A partial line at the end of the last segment is left out
    as by :func:`read_records`.
    """
    return read_lines_skipping(path, lambda line, segment, offset: decode_line(line), on_damage, since_seq)


class _Sequenced(Protocol):
    @property
    def seq(self) -> int: ...


_S = TypeVar("_S", bound=_Sequenced)


def read_lines_skipping(
    path: str | os.PathLike[str],
    parse: Callable[[bytes, str, int], _S],
    on_damage: Callable[[Damage], None],
    since_seq: int = 1,
) -> Iterator[_S]:
    """
    What ``parse(line, segment name, offset)`` makes of each whole line with ``seq >= since_seq``.

    The loop of :func:`read_records_skipping`, for any reading of a line: a
    line ``parse`` refuses with :class:`BadLine` is reported to ``on_damage``
    (with the seq it should have had) and skipped. A hole, where damage was
    set aside under a ``recovery`` record, is skipped silently.
    """
    segments = segments_from(list_segments(path), since_seq)
    last = len(segments) - 1
    expected: int | None = None
    for index, segment in enumerate(segments):
        for offset, line in iter_lines(segment.path):
            if not line.endswith(b"\n"):
                if index == last:
                    return
                on_damage(Damage(segment.name, offset, expected, "partial line"))
                continue
            try:
                item = parse(line, segment.name, offset)
            except BadLine as e:
                if is_hole(line):
                    expected = None  # the record after it says which seq comes next
                    continue
                on_damage(Damage(segment.name, offset, expected, e.args[0]))
                if expected is not None:
                    expected += 1
                continue
            expected = item.seq + 1
            if item.seq >= since_seq:
                yield item


def verify(
    path: str | os.PathLike[str], *, allow_partial_tail: bool = False, workers: int | None = None
) -> int:
    """
    Check the whole journal; return the number of records.

    Checks each line's shape, its seq (one more than the record before; the
    first record of each segment is the one the segment is named after) and its
    chain, and that it decodes to a record that says the same. Raises
    :class:`ChainError` at the first break. If older segments were removed, the
    first record left is taken as the anchor: its own chain cannot be checked.
    A partial last line is a break unless ``allow_partial_tail`` (a live
    journal being written). The chain cannot notice whole records cut off the
    end of the journal; seal records are for that. A large journal's segments
    are checked in parallel processes, ``workers`` of them (one per CPU if not
    given; see :func:`gateway.journal.integrity.verify_journal`).
    """
    # Imported here: gateway.journal.integrity imports ChainError from this module.
    from gateway.journal.integrity import verify_journal

    return verify_journal(path, allow_partial_tail=allow_partial_tail, workers=workers).records


def _starts_with_restore(path: str) -> bool:
    """Whether a segment begins with a ``restore`` record: the seqs before it were skipped, not lost."""
    for _, line in iter_lines(path):
        return line.startswith(b'{"seq":') and b'"kind":"restore",' in line[:128]
    return False


class Cursor:
    """
    Reads a live journal forward from a seq, a chunk at a time, keeping its place.

    Each :meth:`read` goes on where the last one stopped, across segments,
    without rescanning: a follower (the forwarder) reads a backlog of any size
    in bounded chunks. It blocks (file reads): call it from a thread, one read
    at a time. It reads only up to the seq it is told is durable, so it never
    sees a record the writer may still cut off after a failed write.
    """

    def __init__(self, path: str | os.PathLike[str], next_seq: int = 1) -> None:
        self._directory = os.fspath(path)
        self.next_seq = next_seq
        """The seq the next record read will have."""
        self._file: BinaryIO | None = None
        self._segment = ""
        self._at_end = False
        self.damage: list[Damage] = []
        """What was skipped or stepped over; the reader's to empty."""

    def read(self, through_seq: int, max_records: int, max_bytes: int) -> list[Record]:
        """
        The records from :attr:`next_seq` up to ``through_seq``, in order.

        At most ``max_records``, and no more once ``max_bytes`` of lines are
        read (at least one record, however long). Damage does not stop it: a
        line that is not a record is skipped, and seqs that are missing (a
        quarantine, removed segments) are stepped over; each is noted in
        :attr:`damage`. Raises :class:`ChainError` only if nothing at all
        holds a seq it is told is durable.
        """
        records: list[Record] = []
        size = 0
        while self.next_seq <= through_seq and len(records) < max_records and size < max_bytes:
            offset = self._file.tell() if self._file is not None else 0
            line = self._next_line()
            if line is None:
                if self._at_end and self._step_over_gap():
                    continue
                raise ChainError(
                    self.next_seq, "record not found in the journal", self._segment or None, None
                )
            seq = line_seq(line)
            if seq is not None and seq < self.next_seq:
                continue  # finding the start in the segment
            try:
                record = decode_line(line)
            except BadLine as e:
                if is_hole(line):
                    continue  # damage set aside: the seqs it held are noted missing below
                self.damage.append(Damage(self._segment, offset, self.next_seq, e.args[0]))
                if seq == self.next_seq:
                    self.next_seq += 1  # its seq is still readable: the next record is not a gap
                continue
            if record.seq < self.next_seq:
                continue
            if record.seq > self.next_seq:
                self.damage.append(
                    Damage(
                        self._segment, offset, self.next_seq, f"seqs {self.next_seq}-{record.seq - 1} missing"
                    )
                )
                if record.seq > through_seq:
                    self._file.seek(offset)  # type: ignore[union-attr]
                    self.next_seq = record.seq
                    break
            records.append(record)
            size += len(line)
            self.next_seq = record.seq + 1
        return records

    def _step_over_gap(self) -> bool:
        """At the end of a segment with no segment named for the next seq: go on in a later one."""
        later = [s for s in list_segments(self._directory) if s.first_seq > self.next_seq]
        if not later:
            return False
        self.close()
        following = later[0]
        if not _starts_with_restore(following.path):
            self.damage.append(
                Damage(
                    following.name,
                    0,
                    self.next_seq,
                    f"seqs {self.next_seq}-{following.first_seq - 1} missing",
                )
            )
        self._file = open(following.path, "rb")  # kept open between reads
        self._segment = following.name
        self.next_seq = following.first_seq
        return True

    def close(self) -> None:
        """Close the open segment file (a later read opens it again)."""
        if self._file is not None:
            self._file.close()
            self._file = None

    def _open(self) -> None:
        """Open the segment that holds :attr:`next_seq`."""
        holder = None
        for segment in list_segments(self._directory):
            if segment.first_seq > self.next_seq:
                break
            holder = segment
        if holder is None:
            segments = list_segments(self._directory)
            if not segments:
                raise ChainError(self.next_seq, "no segment holds this seq", None, None)
            holder = segments[0]  # older segments were removed
            self.damage.append(
                Damage(holder.name, 0, self.next_seq, f"seqs {self.next_seq}-{holder.first_seq - 1} missing")
            )
            self.next_seq = holder.first_seq
        self._file = open(holder.path, "rb")  # kept open between reads
        self._segment = holder.name

    def _next_line(self) -> bytes | None:
        """The next whole line, moving to the next segment at the end of one; None if none yet."""
        if self._file is None:
            self._open()
        assert self._file is not None
        start = self._file.tell()
        line = self._file.readline()
        self._at_end = False
        if line.endswith(b"\n"):
            return line
        self._file.seek(start)  # a line being written: read it whole next time
        if line:
            return None
        self._at_end = True
        following = os.path.join(self._directory, segment_name(self.next_seq))
        if self._segment != segment_name(self.next_seq) and os.path.exists(following):
            self.close()
            self._file = open(following, "rb")  # kept open between reads
            self._segment = segment_name(self.next_seq)
            return self._next_line()
        return None

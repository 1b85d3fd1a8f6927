"""
Start-up recovery: find the journal's head and cut a torn tail (blocking I/O).

Only the last segment can be torn: the writer syncs a segment before it starts
the next one (see ``writer.py``). So recovery trusts the last line of the
segment before the last, and checks the last segment from its first line: the
first line that is partial, malformed, out of seq or off the chain ends the
good part, and everything from there on is cut. The cut bytes are kept beside
the segment in ``<segment>.cut-<offset>`` (not a segment name, so readers skip
it), for whoever wants to know what was lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from attrs import frozen

from gateway.journal.record import GENESIS_CHAIN, BadLine, check_line
from gateway.journal.segments import Segment, iter_lines, list_segments, read_last_line

__all__ = ["Cut", "Quarantine", "RecoveredTail", "recover"]

_COPY_CHUNK = 1 << 20


@frozen
class Cut:
    """What recovery cut off the end of the last segment."""

    segment: str
    offset: int
    dropped_bytes: int
    reason: str
    last_good_seq: int
    saved_as: str

    def as_body(self) -> dict[str, object]:
        """The body of the ``recovery`` record that reports this cut."""
        return {
            "segment": self.segment,
            "offset": self.offset,
            "dropped_bytes": self.dropped_bytes,
            "reason": self.reason,
            "last_good_seq": self.last_good_seq,
            "saved_as": self.saved_as,
        }


QUARANTINE_RECORD = "quarantine"
"""The kind of the record that reports damage set aside."""


@frozen
class Quarantine:
    """
    Damage inside a segment (not a torn tail): a bad line with whole records after it.

    ``seq`` is the first seq that cannot be vouched for. For the last segment,
    everything from ``offset`` on was moved to ``saved_as`` and the journal goes
    on after ``last_seq``, the highest seq found there, so no seq is used twice.
    For an older segment (found while replaying) nothing is moved: readers skip
    the damaged line, and ``saved_as`` is empty.
    """

    segment: str
    offset: int
    seq: int | None
    reason: str
    last_seq: int | None
    saved_as: str

    def as_body(self) -> dict[str, object]:
        """The body of the ``quarantine`` record that reports it."""
        return {
            "segment": self.segment,
            "offset": self.offset,
            "seq": self.seq,
            "reason": self.reason,
            "last_seq": self.last_seq,
            "saved_as": self.saved_as,
        }

    @classmethod
    def from_body(cls, body: dict[str, object]) -> Quarantine:
        """The quarantine a ``quarantine`` record reports (missing fields read as unknown)."""

        def number(name: str) -> int | None:
            value = body.get(name)
            return value if type(value) is int else None

        return cls(
            str(body.get("segment", "")),
            number("offset") or 0,
            number("seq"),
            str(body.get("reason", "")),
            number("last_seq"),
            str(body.get("saved_as", "")),
        )


@frozen
class RecoveredTail:
    """
    The journal's head after recovery.

    ``segment`` is the last segment (None in an empty directory, or when the
    last one was quarantined: the next record starts a new one) and ``size``
    its length, which ends with a whole record.
    """

    last_seq: int
    last_chain: bytes
    segment: Segment | None
    size: int
    cut: Cut | None
    quarantine: Quarantine | None = None


def _previous_head(segments: list[Segment]) -> tuple[int | None, bytes | None]:
    """
    The seq and chain the last segment must continue from (None: unknown).

    When the segment before it does not end with a whole record, or the seqs
    do not meet (a quarantine went on after a higher seq, or a segment is
    missing), the last segment's first record is taken as an anchor: the
    damage is for ``verify`` and the operator to see, and no reason to stop
    the gateway from starting.
    """
    last = segments[-1]
    if len(segments) == 1:
        if last.first_seq == 1:
            return 0, GENESIS_CHAIN
        # Older segments were removed: the first record is an anchor.
        return last.first_seq - 1, None
    before = segments[-2]
    line = read_last_line(before.path)
    try:
        if line is None:
            raise BadLine("empty segment")
        seq, chain = check_line(line, None, None)
    except BadLine:
        return last.first_seq - 1, None
    if seq + 1 != last.first_seq:
        return last.first_seq - 1, None
    return seq, chain


def _save_and_cut(
    segment: Segment, offset: int, fsync: Callable[[int], None], directory_fd: int, label: str = "cut"
) -> tuple[int, str]:
    """Copy the bytes from ``offset`` to a ``.cut-`` (or other label) file, then truncate; both synced."""
    directory = os.path.dirname(segment.path)
    saved_as = f"{segment.name}.{label}-{offset}"
    n = 0
    while os.path.exists(os.path.join(directory, saved_as)):  # cut here before
        n += 1
        saved_as = f"{segment.name}.cut-{offset}.{n}"
    dropped = 0
    with open(segment.path, "r+b") as src:
        src.seek(offset)
        with open(os.path.join(directory, saved_as), "xb") as dst:
            while chunk := src.read(_COPY_CHUNK):
                dst.write(chunk)
                dropped += len(chunk)
            dst.flush()
            fsync(dst.fileno())
        src.truncate(offset)
        src.flush()
        fsync(src.fileno())
    fsync(directory_fd)
    return dropped, saved_as


def recover(directory: str, *, directory_fd: int, fsync: Callable[[int], None] = os.fsync) -> RecoveredTail:
    """
    Find the head of the journal in ``directory`` and cut a torn tail.

    A bad line followed by whole records is damage, not a tear: it is set
    aside as a :class:`Quarantine` instead of cut (see there).
    """
    segments = list_segments(directory)
    if not segments:
        return RecoveredTail(0, GENESIS_CHAIN, None, 0, None)
    last = segments[-1]
    prev_seq, prev_chain = _previous_head(segments)
    assert prev_seq is not None
    seq, chain = prev_seq, prev_chain
    good_end = 0
    reason: str | None = None
    for offset, line in iter_lines(last.path):
        try:
            seq, chain = check_line(line, seq, chain)
        except BadLine as e:
            reason = e.args[0]
            break
        good_end = offset + len(line)
    cut: Cut | None = None
    if reason is not None:
        head = _whole_record_after(last, good_end, seq + 1)
        if head is not None:
            # Whole records follow the bad line: not a torn tail but damage inside
            # the segment. They are set aside with it, and the journal goes on
            # after the highest seq among them, in a new segment, so that no seq
            # (and no event id sent to the cloud) is ever used twice.
            last_seq, last_chain = head
            _, saved_as = _save_and_cut(last, good_end, fsync, directory_fd, label="quarantined")
            quarantine = Quarantine(last.name, good_end, seq + 1, reason, last_seq, saved_as)
            return RecoveredTail(last_seq, last_chain, None, 0, None, quarantine)
        dropped, saved_as = _save_and_cut(last, good_end, fsync, directory_fd)
        cut = Cut(last.name, good_end, dropped, reason, seq, saved_as)
    # With older segments removed and nothing whole left, the next record is an
    # anchor too; any prev will do.
    return RecoveredTail(seq, chain or GENESIS_CHAIN, last, good_end, cut)


def _whole_record_after(segment: Segment, offset: int, seq: int) -> tuple[int, bytes] | None:
    """
    If the bad line at ``offset`` is an altered record rather than a torn write: the last good head.

    An altered record is a whole line, where record ``seq`` should be, followed
    at once by a well-formed record ``seq + 1``: a crash cannot leave that (a
    torn write leaves a partial line, or zeros running into later lines, so
    the next whole line is not ``seq + 1``). Then the seq and chain of the last
    well-formed record of the segment are returned, else None.
    """
    lines = iter_lines(segment.path, offset)
    _, bad = next(lines)
    if not bad.endswith(b"\n"):
        return None
    head: tuple[int, bytes] | None = None
    for _, line in lines:
        try:
            found = check_line(line, None, None)
        except BadLine:
            if head is None:
                return None
            continue
        if head is None and found[0] != seq + 1:
            return None
        head = found
    return head

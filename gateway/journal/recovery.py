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

from gateway.journal.reader import ChainError
from gateway.journal.record import GENESIS_CHAIN, BadLine, check_line
from gateway.journal.segments import Segment, iter_lines, list_segments, read_last_line

__all__ = ["Cut", "RecoveredTail", "recover"]

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


@frozen
class RecoveredTail:
    """
    The journal's head after recovery.

    ``segment`` is the last segment (None in an empty directory) and ``size``
    its length, which ends with a whole record.
    """

    last_seq: int
    last_chain: bytes
    segment: Segment | None
    size: int
    cut: Cut | None


def _previous_head(segments: list[Segment]) -> tuple[int | None, bytes | None]:
    """The seq and chain the last segment must continue from (None: unknown)."""
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
    except BadLine as e:
        raise ChainError(
            None,
            f"segment {before.name} does not end with a whole record ({e.args[0]}); "
            "only the last segment can be torn by a crash",
            before.name,
        ) from None
    if seq + 1 != last.first_seq:
        raise ChainError(
            seq + 1,
            f"segment {before.name} ends at seq {seq} but {last.name} follows it",
            last.name,
            0,
        )
    return seq, chain


def _save_and_cut(
    segment: Segment, offset: int, fsync: Callable[[int], None], directory_fd: int
) -> tuple[int, str]:
    """Copy the bytes from ``offset`` to a ``.cut-`` file, then truncate; both synced."""
    directory = os.path.dirname(segment.path)
    saved_as = f"{segment.name}.cut-{offset}"
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

    Raises :class:`ChainError` when the damage is not a torn tail (a segment
    before the last one that does not end with a whole record, a gap in the
    segment names): that needs a person, not a cut.
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
        dropped, saved_as = _save_and_cut(last, good_end, fsync, directory_fd)
        cut = Cut(last.name, good_end, dropped, reason, seq, saved_as)
    # With older segments removed and nothing whole left, the next record is an
    # anchor too; any prev will do.
    return RecoveredTail(seq, chain or GENESIS_CHAIN, last, good_end, cut)

"""
The seq jumps of a journal restored from a backup: how many seqs a restore skipped between two seqs.

After ``cpmictl log restore`` the journal goes on at a seq floor (the time in
microseconds, :mod:`gateway.journal.restore`), so a follower's "last seq minus
done seq" counts ~10^15 seqs no record holds. A restore is made while the
gateway is stopped, so the jumps are read once, when the journal is opened:
each segment that begins with a ``restore`` record names the seq it goes on
from (``before``). Blocking (file reads): call it at start-up or in a thread.
"""

from __future__ import annotations

import os

from attrs import frozen

from gateway.journal.kinds import RESTORE_RECORD
from gateway.journal.record import BadLine, decode_line
from gateway.journal.segments import iter_lines, list_segments

__all__ = ["SeqJumps", "read_jumps"]


@frozen
class SeqJumps:
    """The restores' jumps, each as (the backup's last seq, the restore record's seq)."""

    jumps: tuple[tuple[int, int], ...] = ()

    def skipped(self, after: int, through: int) -> int:
        """How many of the seqs after ``after`` up to ``through`` a restore skipped (no record has them)."""
        total = 0
        for before, floor in self.jumps:
            low, high = max(before + 1, after + 1), min(floor - 1, through)
            if high >= low:
                total += high - low + 1
        return total


def read_jumps(path: str | os.PathLike[str]) -> SeqJumps:
    """The jumps of the journal in ``path``: one for each segment that begins with a ``restore`` record."""
    jumps = []
    for segment in list_segments(path):
        for _, line in iter_lines(segment.path):
            if b'"kind":"restore",' in line[:128]:
                try:
                    record = decode_line(line)
                except BadLine:
                    break
                before = record.body.get("before") if isinstance(record.body, dict) else None
                seq = before.get("seq") if isinstance(before, dict) else None
                if record.kind == RESTORE_RECORD and type(seq) is int and seq < record.seq:
                    jumps.append((seq, record.seq))
            break  # only a segment's first line can be a restore record
    return SeqJumps(tuple(jumps))

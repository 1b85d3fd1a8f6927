"""
How a journal is broken: the words its reader, its integrity check and its users share.

:class:`ChainError` is raised where the journal cannot be vouched for;
:class:`Damage` is a line a tolerant reader skipped. They live apart from
``reader`` and ``integrity`` so that each can import them without importing
the other.
"""

from __future__ import annotations

from attrs import frozen

__all__ = ["ChainError", "Damage"]


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

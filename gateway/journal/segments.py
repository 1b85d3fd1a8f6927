"""
Segment files: their names, listing them, reading their lines (blocking I/O).

A segment is named by the seq of the first record it holds, zero-padded to 20
digits so names sort as numbers: ``00000000000000000001.jsonl``. Other files in
the directory (such as the ``*.cut-*`` files recovery leaves) are ignored.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator

from attrs import frozen

__all__ = [
    "Segment",
    "iter_lines",
    "line_seq",
    "list_segments",
    "read_last_line",
    "segment_name",
    "segments_from",
]

_NAME = re.compile(r"[0-9]{20}\.jsonl")
_SEQ_PREFIX = re.compile(rb'\{"seq":([1-9][0-9]*),')
_READ_CHUNK = 1 << 16


def segment_name(first_seq: int) -> str:
    """The file name of the segment whose first record is ``first_seq``."""
    return f"{first_seq:020d}.jsonl"


@frozen
class Segment:
    """A segment file: the seq its name gives, its name and its path."""

    first_seq: int
    name: str
    path: str


def list_segments(directory: str | os.PathLike[str]) -> list[Segment]:
    """The segment files in ``directory``, in seq order."""
    directory = os.fspath(directory)
    segments = [
        Segment(int(name[:20]), name, os.path.join(directory, name))
        for name in os.listdir(directory)
        if _NAME.fullmatch(name)
    ]
    segments.sort(key=lambda s: s.first_seq)
    return segments


def segments_from(segments: list[Segment], seq: int) -> list[Segment]:
    """The segments from the one that holds ``seq`` on (all of them if ``seq`` is before the first)."""
    first = 0
    for index, segment in enumerate(segments):
        if segment.first_seq > seq:
            break
        first = index
    return segments[first:]


def line_seq(line: bytes) -> int | None:
    """The seq a line starts with, read without decoding the line (None if it has none)."""
    match = _SEQ_PREFIX.match(line)
    return None if match is None else int(match[1])


def iter_lines(path: str, offset: int = 0) -> Iterator[tuple[int, bytes]]:
    """
    Yield ``(offset, line)`` for each line of the file from ``offset`` on.

    Lines keep their ``\\n``; the last one lacks it if the file ends mid-line.
    A file that is gone when it is opened yields nothing: the segments of a
    live journal are listed first and read after, and retention may remove
    the oldest in between.
    """
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        return
    with f:
        f.seek(offset)
        for line in f:
            yield offset, line
            offset += len(line)


def read_last_line(path: str) -> bytes | None:
    """The last line of a file (with its ``\\n``, if any), or None for an empty file."""
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0:
            return None
        tail = b""
        pos = end
        chunk = _READ_CHUNK
        while pos > 0:
            step = min(chunk, pos)
            chunk *= 2  # long lines (images) are read in few steps
            pos -= step
            f.seek(pos)
            tail = f.read(step) + tail
            # the newline that ends the line before the last one
            cut = tail.rfind(b"\n", 0, len(tail) - 1)
            if cut >= 0:
                return tail[cut + 1 :]
        return tail

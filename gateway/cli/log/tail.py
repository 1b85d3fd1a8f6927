"""``cpmictl log tail``: the last records, one readable line each; ``-f`` follows the live journal."""

from __future__ import annotations

import argparse
import os
import time
from collections import deque
from collections.abc import Callable

from gateway.cli.log.common import (
    Filter,
    LineReader,
    flush,
    guard,
    journal_segments,
    parse_head,
    render,
    say,
    warn,
    whole_end,
    write_out,
)
from gateway.journal.record import BadLine
from gateway.journal.segments import Segment, list_segments

DEFAULT_LINES = 20
"""``tail`` prints this many records unless told otherwise (all of them with ``--since``)."""
POLL_SECONDS = 0.2
"""How often ``tail -f`` looks for new lines."""


def run_tail(args: argparse.Namespace, *, sleep: Callable[[float], None] = time.sleep) -> int:
    """``cpmictl log tail``; ``sleep`` waits between polls of ``-f`` (Ctrl-C ends it, exit 0)."""
    return guard("tail", lambda: _tail(args, sleep))


def _tail(args: argparse.Namespace, sleep: Callable[[float], None]) -> int:
    segments = journal_segments(args.dir)
    flt = Filter.from_args(args)
    reader = LineReader("tail", segments)
    last = segments[-1]
    end = whole_end(last.path)  # what is here now; -f goes on from there

    def emit(line: bytes) -> None:
        if args.json:
            write_out(line)
            return
        record = reader.decode(line)
        if record is not None:
            say(render(record))

    limit = args.lines if args.lines is not None else (None if flt.since is not None else DEFAULT_LINES)
    if limit is None:
        for head, line in reader.lines(flt.first_seq, end):
            if flt.matches(head):
                emit(line)
    else:
        for line in _last_matching(reader, flt, limit, end):
            emit(line)
    if not args.follow:
        return 0
    flush()
    follower = _Follower(args.dir, last, end)
    try:
        while True:
            lines = follower.read()
            for line in lines:
                try:
                    head = parse_head(line)
                except BadLine as e:
                    warn("tail", f"skipped a damaged line: {e.args[0]}")
                    continue
                if flt.matches(head):
                    emit(line)
            flush()
            if not lines:
                sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return 0
    finally:
        follower.close()


def _last_matching(reader: LineReader, flt: Filter, limit: int, end: int) -> list[bytes]:
    """The last ``limit`` matching lines, reading segments from the newest back as far as needed."""
    found: list[bytes] = []
    segments = reader.segments
    for index in range(len(segments) - 1, -1, -1):
        want = limit - len(found)
        if want <= 0:
            break
        since = flt.since.seq if flt.since is not None else None
        if since is not None and index + 1 < len(segments) and segments[index + 1].first_seq <= since:
            break  # this segment and the ones before end before --since
        window: deque[bytes] = deque(maxlen=want)
        stop = end if index == len(segments) - 1 else None
        for head, line in reader.segment_lines(segments[index], stop):
            if flt.matches(head):
                window.append(line)
        found[:0] = window
    return found


class _Follower:
    """
    Whole lines appended to a live journal, from a place in it on, across segments.

    It goes by segment names, not seqs: at the end of a segment, once a later
    segment exists (and nothing more came in the current one), it goes on
    there. The writer never writes to a segment after it started the next one.
    """

    def __init__(self, directory: str, segment: Segment, offset: int) -> None:
        self._directory = directory
        self._segment = segment
        self._file = open(segment.path, "rb")  # kept open between reads
        self._file.seek(offset)

    def read(self, max_lines: int = 1000) -> list[bytes]:
        """The whole lines written since the last read (at most ``max_lines``)."""
        lines: list[bytes] = []
        file = self._file
        if os.fstat(file.fileno()).st_size < file.tell():
            # Cut back: a failed write undone, or recovery after a crash. Go on from its new end.
            file.seek(0, os.SEEK_END)
        while len(lines) < max_lines:
            start = file.tell()
            line = file.readline()
            if line.endswith(b"\n"):
                lines.append(line)
                continue
            file.seek(start)
            if line:
                break  # a line being written: read it whole next time
            following = self._following()
            if following is None:
                break
            if file.read(1):
                file.seek(start)  # it was written to after all: that comes first
                continue
            file.close()
            self._segment = following
            self._file = file = open(following.path, "rb")
        return lines

    def _following(self) -> Segment | None:
        for segment in list_segments(self._directory):
            if segment.first_seq > self._segment.first_seq:
                return segment
        return None

    def close(self) -> None:
        self._file.close()

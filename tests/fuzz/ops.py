"""Counting the work a parser does, so linear time is checked by operations, never by the clock.

Two counts add up: the Python lines a parser's own module runs (a trace
function, so a loop per byte shows), and the bytes its C-level searches scan up to what they find
(an instrumented bytearray and regex, so a rescan per byte shows too).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from gateway.protocol import framing


class Counter:
    """Operations counted so far."""

    def __init__(self) -> None:
        self.ops = 0


@contextmanager
def lines_in(files: Iterable[str], counter: Counter) -> Iterator[None]:
    """Count every line run in a module whose file is one of `files` while the block runs."""
    watched = frozenset(files)

    def local(frame: FrameType, event: str, arg: Any) -> Any:
        if event == "line":
            counter.ops += 1
        return local

    def calls(frame: FrameType, event: str, arg: Any) -> Any:
        return local if frame.f_code.co_filename in watched else None

    previous = sys.gettrace()
    sys.settrace(calls)
    try:
        yield
    finally:
        sys.settrace(previous)


def _scanning_bytearray(counter: Counter) -> type[bytearray]:
    class Scanning(bytearray):
        """A bytearray that counts the bytes its searches may look at."""

        def find(self, sub: Any, start: Any = None, end: Any = None) -> int:
            found = super().find(sub, start, end)
            first, last = _span(len(self), start, end)
            counter.ops += 1 + (found + len(sub) - first if found >= 0 else last - first)
            return found

        def rfind(self, sub: Any, start: Any = None, end: Any = None) -> int:
            found = super().rfind(sub, start, end)
            first, last = _span(len(self), start, end)
            counter.ops += 1 + (last - found if found >= 0 else last - first)
            return found

        def endswith(self, suffix: Any, *args: Any) -> bool:
            counter.ops += 1
            return super().endswith(suffix, *args)

    return Scanning


def _span(size: int, start: int | None, end: int | None) -> tuple[int, int]:
    """The bytes a search from `start` to `end` may look at, as a range."""
    first = 0 if start is None else max(0, start if start >= 0 else size + start)
    last = size if end is None else min(size, end if end >= 0 else size + end)
    return first, max(first, last)


class _ScanningPattern:
    def __init__(self, pattern: Any, counter: Counter) -> None:
        self._pattern = pattern
        self._counter = counter

    def match(self, data: Any, pos: int = 0) -> Any:
        found = self._pattern.match(data, pos)
        self._counter.ops += 1 + (found.end() - pos if found else 0)
        return found


def decoder_ops(chunks: Iterable[bytes], max_frame_bytes: int = 1 << 20) -> tuple[int, list[object]]:
    """Feed `chunks` to a fresh FrameDecoder; the operations it took and what it returned."""
    counter = Counter()
    saved = framing.__dict__.get("bytearray"), framing._DOLLAR_RUN
    framing.bytearray = _scanning_bytearray(counter)  # type: ignore[attr-defined]
    framing._DOLLAR_RUN = _ScanningPattern(saved[1], counter)  # type: ignore[assignment]  # counts, else the same
    events: list[object] = []
    try:
        decoder = framing.FrameDecoder(max_frame_bytes)
        with lines_in([framing.__file__], counter):
            for chunk in chunks:
                events.extend(decoder.feed(chunk))
    finally:
        framing._DOLLAR_RUN = saved[1]
        if saved[0] is None:
            del framing.bytearray  # type: ignore[attr-defined]
        else:
            framing.bytearray = saved[0]  # type: ignore[attr-defined]
    return counter.ops, events


def steps(files: Iterable[str], call: Callable[[], object]) -> int:
    """The Python lines run in `files` while `call()` runs (its result or exception ignored)."""
    counter = Counter()
    with lines_in(files, counter):
        try:
            call()
        except Exception:  # only the work is counted here
            pass
    return counter.ops

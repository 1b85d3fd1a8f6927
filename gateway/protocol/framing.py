"""The `$${json}##*` framing of the TCP downlink (B.3.2-B.3.4), without I/O.

A frame is `$$` + JSON text + `##`, and frames are separated by `*`. The sender
writes `$`, `#` and `*` inside the JSON as `\\u0024`, `\\u0023` and `\\u002a`, so
a well-formed payload never holds them raw; that is what lets the decoder find
frame boundaries with a plain byte search and resynchronise after garbage.
"""

from __future__ import annotations

import re

from attrs import frozen

from gateway.protocol.signing import compact

FRAME_START = b"$$"
FRAME_END = b"##"
SEPARATOR = b"*"
_DOLLAR = ord("$")
_HASH = ord("#")
_STAR = ord("*")
_DOLLAR_RUN = re.compile(rb"\$*")


def escape_json(text: str) -> str:
    """Replace `$`, `#` and `*` with `\\u0024`, `\\u0023` and `\\u002a`.

    Only valid on JSON text, where those characters can occur only inside strings
    (and never right after an unfinished backslash escape), so the result is JSON
    that parses to the same value.
    """
    return text.replace("$", "\\u0024").replace("#", "\\u0023").replace("*", "\\u002a")


def encode_json_frame(json_text: str) -> bytes:
    """A frame holding an already-serialized JSON text, escaped, with its separator, in UTF-8.

    Callers that signed the compact text (B.3.7: the signature is over the JSON
    before the framing escapes) pass that same text here.
    """
    return b"$$" + escape_json(json_text).encode("utf-8") + b"##*"


def encode_frame(message: object) -> bytes:
    """A frame holding `message` as compact JSON (no spaces, no ASCII escaping)."""
    return encode_json_frame(compact(message))


@frozen
class FrameTooLarge:
    """A frame's payload exceeded the limit: the caller must close the connection.

    `size` is how many payload bytes had arrived when the overflow was seen; the
    frame may be larger still (it may never have been terminated).
    """

    size: int
    limit: int


class FrameDecoder:
    """Feed bytes in any split; get back complete frame payloads.

    A payload is the bytes of the JSON text between `$$` and `##`, still escaped
    (parsing the JSON unescapes it). Bytes outside frames, and frames broken by a
    `$$` or a lone `#` before their `##`, are dropped and counted in
    `skipped_bytes`. After a `FrameTooLarge` the decoder is dead and returns
    nothing more.

    Every idle connection holds one, so it is slotted and keeps no buffer
    while nothing is pending.
    """

    __slots__ = ("_buffer", "_dead", "_in_frame", "_limit", "_scan", "_separator_pending", "_skipped")

    def __init__(self, max_frame_bytes: int) -> None:
        if max_frame_bytes < 1:
            raise ValueError(f"max_frame_bytes must be positive, not {max_frame_bytes}")
        self._limit = max_frame_bytes
        # Between frames: at most one trailing `$` waiting for its pair.
        # In a frame: the `$$` opener at [0:2], then the payload so far.
        # None whenever it would be empty.
        self._buffer: bytearray | None = None
        self._in_frame = False
        # In a frame, where the next `#` search starts (everything from 2 up to
        # here holds no `#`, and no `$$` that ends before it).
        self._scan = 2
        # A frame ended exactly at the end of the data: a `*` first in the next
        # data is its separator, not garbage.
        self._separator_pending = False
        self._dead = False
        self._skipped = 0

    @property
    def skipped_bytes(self) -> int:
        """How many bytes outside frames (or of broken frames) were dropped so far."""
        return self._skipped

    @property
    def buffered_bytes(self) -> int:
        """How many bytes are held waiting for more data (a partial frame, or one `$`)."""
        return len(self._buffer) if self._buffer is not None else 0

    @property
    def dead(self) -> bool:
        """Whether a frame was too large, so the decoder returns nothing more."""
        return self._dead

    def feed(self, data: bytes) -> list[bytes | FrameTooLarge]:
        """Take the next bytes of the stream; return the frames they complete, in order."""
        if self._dead or not data:
            return []
        buffer = self._buffer
        if buffer is None:
            buffer = self._buffer = bytearray(data)
        else:
            buffer += data
        events = self._decode(buffer)
        if self._buffer is not None and not self._buffer:
            self._buffer = None
        return events

    def _decode(self, buffer: bytearray) -> list[bytes | FrameTooLarge]:
        # Linear in the bytes fed, whatever they are: each byte is searched for
        # `#` once and for `$$` once, and a run of `$` is crossed in one step
        # (a byte at a time it would cost a pass of the loop per `$`).
        if self._separator_pending:
            self._separator_pending = False
            if buffer[0] == _STAR:
                del buffer[:1]
        events: list[bytes | FrameTooLarge] = []
        # The first `#` at or after self._scan, when known; None: not searched yet.
        hash_at: int | None = None
        while True:
            if not self._in_frame:
                start = buffer.find(FRAME_START)
                if start < 0:
                    # Keep one trailing `$`: it may be half of the next `$$`.
                    drop = len(buffer) - 1 if buffer.endswith(b"$") else len(buffer)
                    self._skipped += drop
                    del buffer[:drop]
                    return events
                self._skipped += start
                del buffer[:start]
                self._in_frame = True
                self._scan = 2
                hash_at = None
            scan = self._scan
            if hash_at is None:
                hash_at = buffer.find(b"#", scan)
            end = hash_at if hash_at >= 0 else len(buffer)
            # From 1, not 2: in `$$$` the frame opens at the last pair. A `$$`
            # split by the previous search's end starts at scan - 1.
            restart = buffer.find(FRAME_START, max(1, scan - 1), end)
            if restart >= 0:
                if restart - 2 > self._limit:
                    return self._too_large(events, restart - 2)
                # The frame was broken: a new one opens inside it. Of the frames
                # broken before this `#` (or the end) only the last can complete:
                # jump to its opener, unless one between might exceed the limit;
                # then to the last pair of this run of `$` (`$$$` opens at 1).
                # Nothing before the `#` already found is a `#`, so that search
                # holds, shifted.
                opener = buffer.rfind(FRAME_START, restart, end)
                if opener - restart > self._limit:
                    opener = _DOLLAR_RUN.match(buffer, restart).end() - 2  # type: ignore[union-attr]  # * always matches
                self._skipped += opener
                del buffer[:opener]
                if hash_at >= 0:
                    hash_at -= opener
                self._scan = 2
                continue
            if hash_at < 0:
                # A trailing `$` may yet open a new frame, so it is not counted
                # as payload until the next byte says so.
                seen = len(buffer) - 2 - (1 if buffer[-1] == _DOLLAR else 0)
                if seen > self._limit:
                    return self._too_large(events, seen)
                self._scan = len(buffer)
                return events
            if hash_at - 2 > self._limit:
                return self._too_large(events, hash_at - 2)
            if hash_at + 1 == len(buffer):
                self._scan = hash_at
                return events
            if buffer[hash_at + 1] != _HASH:
                # A lone `#` never occurs in a well-formed payload: drop the frame
                # through it and look for the next `$$`. Every `#` before the next
                # `##` (or before the last byte, which may yet be half of one) is
                # lone too, and ends whatever frame is open: drop through the last
                # of them in one step, unless a frame between might exceed the limit.
                close = buffer.find(FRAME_END, hash_at + 1)
                last = buffer.rfind(b"#", hash_at + 1, close if close >= 0 else len(buffer) - 1)
                if last >= 0 and last - hash_at <= self._limit:
                    hash_at = last
                self._skipped += hash_at + 1
                del buffer[: hash_at + 1]
                self._in_frame = False
                continue
            events.append(bytes(buffer[2:hash_at]))
            consumed = hash_at + 2
            if consumed == len(buffer):
                self._separator_pending = True
            elif buffer[consumed] == _STAR:
                consumed += 1
            del buffer[:consumed]
            self._in_frame = False

    def _too_large(self, events: list[bytes | FrameTooLarge], size: int) -> list[bytes | FrameTooLarge]:
        self._dead = True
        self._buffer = None
        events.append(FrameTooLarge(size=size, limit=self._limit))
        return events

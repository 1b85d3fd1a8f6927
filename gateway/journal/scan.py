"""
Fast reads for start-up: record headers without their bodies, the last record of a kind.

Every line starts with the same fields in the same order
(``{"seq":N,"ts":"...","kind":"...","park":"...","code":"...","opr":"...","body":``),
so they can be read with one regular expression, leaving the body (an image,
a blacklist) undecoded unless the reader asks for it. These functions block
(they read files): call them at start-up, before the reactor runs, or from a thread.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator

from attrs import frozen

from gateway.journal.reader import Damage, read_lines_skipping
from gateway.journal.record import BadLine, Record, decode_line
from gateway.journal.segments import iter_lines, list_segments

__all__ = ["Header", "find_last", "first_seq_since", "scan_headers"]

_STRING = rb'"((?:[^"\\]|\\.)*)"'
_HEADER = re.compile(
    rb'\{"seq":([1-9][0-9]*),"ts":"([^"\\]*)","kind":'
    + _STRING
    + rb',"park":'
    + _STRING
    + rb',"code":'
    + _STRING
    + rb',"opr":'
    + _STRING
    + rb',"body":'
)
_CHUNK = 1 << 20
# A header is at most this long before its kind ends (20-digit seq, 27-character ts).
_HEAD_REACH = 256


def _text(raw: bytes) -> str:
    if b"\\" in raw:
        value = json.loads(b'"' + raw + b'"')
        if not isinstance(value, str):  # pragma: no cover - a JSON string literal is a str
            raise ValueError("not a string")
        return value
    return raw.decode("utf-8")


@frozen
class Header:
    """A record's fields but its body, with the line to decode when the body is wanted."""

    seq: int
    ts: str
    kind: str
    park: str
    code: str
    opr: str
    line: bytes
    segment: str
    offset: int

    def record(self) -> Record:
        """The whole record (decodes the line; raises :class:`BadLine`)."""
        return decode_line(self.line)


def _header(line: bytes, segment: str, offset: int) -> Header:
    match = _HEADER.match(line)
    if match is None:
        # Not as the gateway writes them (another order, spaces): decoded, as every reader would.
        record = decode_line(line)
        return Header(
            record.seq, record.ts, record.kind, record.park, record.code, record.opr, line, segment, offset
        )
    seq, ts, kind, park, code, opr = match.groups()
    try:
        return Header(
            int(seq),
            ts.decode("ascii"),
            _text(kind),
            _text(park),
            _text(code),
            _text(opr),
            line,
            segment,
            offset,
        )
    except (UnicodeDecodeError, ValueError) as e:
        raise BadLine(f"not a record: {e}") from None


def scan_headers(
    path: str | os.PathLike[str], on_damage: Callable[[Damage], None], since_seq: int = 1
) -> Iterator[Header]:
    """
    Yield the header of every whole record with ``seq >= since_seq``, in order.

    Like :func:`gateway.journal.reader.read_records_skipping`: a line whose
    header cannot be read is reported to ``on_damage`` and skipped, and a
    partial line at the end of the last segment is left out. Bodies are not
    decoded, so damage inside a body is found only by whoever decodes it
    (:meth:`Header.record`) or by ``cpmictl log verify``.
    """
    return read_lines_skipping(path, _header, on_damage, since_seq)


def first_seq_since(path: str | os.PathLike[str], ts: str) -> int:
    """
    A seq from which on every record with a ``ts`` at or after ``ts`` lies.

    The first seq of the newest segment that begins before ``ts`` (segments
    are looked at from the newest back, reading one line of each), or of the
    oldest segment; 1 for an empty journal. ``ts`` is compared as text, which
    works for the journal's fixed-width UTC times.
    """
    segments = list_segments(path)
    for segment in reversed(segments):
        for _, line in iter_lines(segment.path):
            match = _HEADER.match(line)
            if match is not None and match[2].decode("ascii", "replace") < ts:
                return segment.first_seq
            break
    return segments[0].first_seq if segments else 1


def find_last(path: str | os.PathLike[str], kind: str) -> Record | None:
    """
    The last whole, decodable record of ``kind``, or None; reads segments from the end back.

    Only the tail after that record is read, in chunks. A match must begin a
    line (JSON escapes every newline inside a string, so a body cannot fake
    one); a record that does not decode is passed over for an earlier one.
    """
    pattern = re.compile(
        rb'\n\{"seq":[1-9][0-9]*,"ts":"[^"\\]*","kind":' + re.escape(json.dumps(kind).encode("utf-8")) + rb","
    )
    for segment in reversed(list_segments(path)):
        with open(segment.path, "rb") as f:
            end = f.seek(0, os.SEEK_END)
            carry = b""
            while end > 0:
                start = max(0, end - _CHUNK)
                f.seek(start)
                # A newline stands before the first line so that it matches too.
                chunk = (b"\n" if start == 0 else b"") + f.read(end - start) + carry
                base = start - 1 if start == 0 else start
                for match in reversed(list(pattern.finditer(chunk))):
                    f.seek(base + match.start() + 1)
                    line = f.readline()
                    if not line.endswith(b"\n"):
                        continue
                    try:
                        record = decode_line(line)
                    except BadLine:
                        continue
                    if record.kind == kind:
                        return record
                carry = chunk[:_HEAD_REACH] if start > 0 else b""
                end = start
    return None

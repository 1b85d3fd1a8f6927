"""The shared helpers of ``cpmictl log``: errors, positions, line reading, filters, output.

Every verb of ``gateway.cli.log`` reads the journal through these: a
streaming line reader that warns about damage and skips holes, the
``--since/--until/--park/--code/--kind`` filter, and output that escapes
what a terminal could act on. ``guard`` turns a verb's failures into one line
and an exit code.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from typing import Any, NamedTuple

from attrs import frozen

from gateway.cli import progress as progress_bars
from gateway.journal.damage import ChainError
from gateway.journal.record import BadLine, Record, decode_line, dumps_compact
from gateway.journal.recovery import is_hole
from gateway.journal.segments import Segment, iter_lines, list_segments, segments_from

BODY_WIDTH = 200
"""A readable line shows at most this many characters of the body."""
SHORTEN_OVER = 100
"""Base64 strings longer than this are shortened in readable lines."""
MAX_WARNINGS = 10
"""Damaged lines warned about one by one; the rest are counted."""

# A line's fields before its body, read without decoding the line. The writer
# puts them in this order; ',"' never occurs inside a JSON string (a quote in
# a string is escaped), so the first match is the real one. A line whose
# fields hold escapes does not match and is decoded instead.
_HEAD = re.compile(
    rb'\{"seq":([1-9][0-9]*),"ts":"([^"\\]*)","kind":"([^"\\]*)","park":"([^"\\]*)",'
    rb'"code":"([^"\\]*)","opr":"([^"\\]*)","body":'
)
_WRITER_TS = re.compile(rb"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_SEQ_TEXT = re.compile(r"#?([1-9][0-9]*)")
_BASE64_TEXT = re.compile(r"(?:data:[^,;]{1,100};base64,)?[A-Za-z0-9+/=\r\n]+")

# Characters a terminal may act on, shown as \\uXXXX: C0 and C1 controls, and the
# line separators and direction overrides that could make a line lie about itself.
_UNSAFE = [*range(0x00, 0x20), *range(0x7F, 0xA0), 0x061C, 0x200E, 0x200F, *range(0x2028, 0x202F)]
_UNSAFE += list(range(0x2066, 0x206A))
_ESCAPES = {code: f"\\u{code:04x}" for code in _UNSAFE}


class Failure(Exception):
    """The command failed; ``str()`` is the one line for the operator (exit 1)."""


class Usage(Exception):
    """The command was called wrong; ``str()`` says how (exit 2)."""


def printable(text: str) -> str:
    """``text`` with the characters a terminal could act on escaped."""
    return text.translate(_ESCAPES)


def readable(value: bytes) -> str:
    """A field of a line (UTF-8 bytes) as text safe to print."""
    return printable(value.decode("utf-8", "replace"))


# -- positions (--since, --until, seqs)


@frozen
class Position:
    """A seq, or a time in the journal's own ``ts`` form (UTC, microseconds, ``Z``)."""

    seq: int | None
    ts: bytes | None


def parse_seq(text: str) -> int:
    """A seq written ``42`` or ``#42``; ValueError for anything else."""
    match = _SEQ_TEXT.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"not a seq (42 or #42): {text!r}")
    return int(match[1])


def _ts_form(moment: datetime) -> bytes:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ").encode("ascii")


def _parse_time(text: str) -> datetime:
    value = text.strip()
    if value.endswith(("z", "Z")):
        value = value[:-1] + "+00:00"
    return datetime.fromisoformat(value)


def parse_position(text: str) -> Position:
    """``--since``/``--until``: a seq (``42``, ``#42``) or an RFC 3339 time with an offset."""
    try:
        return Position(parse_seq(text), None)
    except ValueError:
        pass
    try:
        moment = _parse_time(text)
    except ValueError:
        raise ValueError(
            f"not a seq (42 or #42) nor an RFC 3339 time (2026-11-24T08:30:00+08:00): {text!r}"
        ) from None
    if moment.tzinfo is None:
        raise ValueError(f"give the time's offset (Z or +08:00): {text!r}")
    try:
        return Position(None, _ts_form(moment))
    except (OverflowError, ValueError):
        raise ValueError(f"time out of range: {text!r}") from None


def _ts_key(ts: bytes) -> bytes:
    """A record's ``ts`` in the form positions are compared in."""
    if _WRITER_TS.fullmatch(ts):
        return ts
    try:
        moment = _parse_time(ts.decode("utf-8"))
        return _ts_form(moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC))
    except (OverflowError, ValueError):
        return ts


# -- reading lines


class Head(NamedTuple):
    """A record's fields before its body, as the line holds them (UTF-8)."""

    seq: int
    ts: bytes
    kind: bytes
    park: bytes
    code: bytes
    opr: bytes


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def parse_head(line: bytes) -> Head:
    """The head of a whole line; raises BadLine for a line that is not a record."""
    match = _HEAD.match(line)
    if match is not None:
        return Head(int(match[1]), match[2], match[3], match[4], match[5], match[6])
    record = decode_line(line)
    return Head(
        record.seq,
        utf8(record.ts),
        utf8(record.kind),
        utf8(record.park),
        utf8(record.code),
        utf8(record.opr),
    )


def journal_segments(directory: str) -> list[Segment]:
    """The journal's segments; a one-line failure when there is no journal."""
    if not os.path.exists(directory):
        raise Failure(f"{directory}: no such directory")
    if not os.path.isdir(directory):
        raise Failure(f"{directory}: not a directory")
    segments = list_segments(directory)
    if not segments:
        raise Failure(f"{directory}: no journal here (no segment files like 00000000000000000001.jsonl)")
    return segments


def byte_bar(args: argparse.Namespace, segments: Iterable[Segment], description: str) -> Any:
    """A progress bar over the bytes of `segments` (see gateway.cli.progress: a terminal only)."""
    total = 0
    for segment in segments:
        try:
            total += os.stat(segment.path).st_size
        except FileNotFoundError:
            pass  # removed by retention since it was listed: the verb says so where it matters
    return progress_bars.bar(args, total=total, description=description)


def whole_end(path: str) -> int:
    """The offset just after the last whole line of a file (0 if it has none)."""
    with open(path, "rb") as file:
        pos = file.seek(0, os.SEEK_END)
        while pos > 0:
            step = min(1 << 16, pos)
            pos -= step
            file.seek(pos)
            cut = file.read(step).rfind(b"\n")
            if cut >= 0:
                return pos + cut + 1
    return 0


class LineReader:
    """Whole lines of a journal with their heads; damaged lines are warned about and skipped."""

    def __init__(self, verb: str, segments: list[Segment], *, quiet: bool = False) -> None:
        self.verb = verb
        self.segments = segments
        self.damaged = 0
        self.quiet = quiet
        self.segment = segments[0]
        self.offset = 0
        # Told the size of each segment read to its end (a progress bar's update).
        self.progress: Callable[[int], object] | None = None

    def damage(self, reason: str) -> None:
        """Warn (up to MAX_WARNINGS times) about the current line."""
        self.damaged += 1
        if self.damaged <= MAX_WARNINGS and not self.quiet:
            where = f"segment {self.segment.name}, offset {self.offset}"
            more = "; further ones are counted, not shown" if self.damaged == MAX_WARNINGS else ""
            warn(self.verb, f"skipped a damaged line ({where}): {reason}{more}")

    def segment_lines(self, segment: Segment, stop: int | None = None) -> Iterator[tuple[Head, bytes]]:
        """The whole lines of one segment (up to offset ``stop``)."""
        last = segment.name == self.segments[-1].name
        self.segment = segment
        for offset, line in iter_lines(segment.path):
            if stop is not None and offset >= stop:
                return
            self.offset = offset
            if not line.endswith(b"\n"):
                if last:
                    return  # a write in progress
                self.damage("partial line")
                continue
            try:
                head = parse_head(line)
            except BadLine as e:
                if not is_hole(line):  # a hole: damage set aside under a recovery record (verify names it)
                    self.damage(e.args[0])
                continue
            yield head, line

    def lines(self, from_seq: int = 1, end: int | None = None) -> Iterator[tuple[Head, bytes]]:
        """The whole lines with ``seq >= from_seq``, in order; in the last segment up to ``end``."""
        last = self.segments[-1].name
        for segment in segments_from(self.segments, from_seq):
            for head, line in self.segment_lines(segment, end if segment.name == last else None):
                if head.seq >= from_seq:
                    yield head, line
            if self.progress is not None:
                self.progress(os.stat(segment.path).st_size)

    def decode(self, line: bytes) -> Record | None:
        """The record of a line read last, or None (warned) if it does not decode."""
        try:
            return decode_line(line)
        except BadLine as e:
            self.damage(e.args[0])
            return None


# -- filters


@frozen
class Filter:
    """What ``--park``, ``--code``, ``--kind``, ``--since`` and ``--until`` let through."""

    parks: frozenset[bytes]
    codes: frozenset[bytes]
    kinds: frozenset[bytes]
    since: Position | None
    until: Position | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Filter:
        def values(name: str) -> frozenset[bytes]:
            return frozenset(utf8(v) for v in getattr(args, name, None) or ())

        return cls(
            values("park"),
            values("code"),
            values("kind"),
            getattr(args, "since", None),
            getattr(args, "until", None),
        )

    @property
    def first_seq(self) -> int:
        return self.since.seq if self.since is not None and self.since.seq is not None else 1

    def beyond(self, head: Head) -> bool:
        """Whether no record from this one on can match (``--until`` a seq)."""
        return self.until is not None and self.until.seq is not None and head.seq > self.until.seq

    def matches(self, head: Head) -> bool:
        if self.kinds and head.kind not in self.kinds:
            return False
        if self.parks and head.park not in self.parks:
            return False
        if self.codes and head.code not in self.codes:
            return False
        since, until = self.since, self.until
        if since is not None:
            if since.seq is not None:
                if head.seq < since.seq:
                    return False
            elif since.ts is not None and _ts_key(head.ts) < since.ts:
                return False
        if until is not None:
            if until.seq is not None:
                if head.seq > until.seq:
                    return False
            elif until.ts is not None and _ts_key(head.ts) > until.ts:
                return False
        return True


# -- output


def write_out(data: bytes) -> None:
    """Write bytes to stdout (UTF-8 whatever the locale says: the journal is UTF-8)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        buffer.write(data)


def say(text: str) -> None:
    write_out((text + "\n").encode("utf-8", "backslashreplace"))


def flush() -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    (buffer if buffer is not None else sys.stdout).flush()


def warn(verb: str, text: str) -> None:
    print(f"cpmictl log {verb}: warning: {text}", file=sys.stderr)


def short_ts(ts: str) -> str:
    """``2026-11-24T08:30:01.123456Z`` as ``2026-11-24T08:30:01Z``; other forms as they are."""
    if len(ts) == 27 and ts[19] == "." and ts[26] == "Z":
        return ts[:19] + "Z"
    return ts


def shorten(value: object) -> object:
    """``value`` with every long base64 string (images) cut to its start and its length."""
    if isinstance(value, str):
        if len(value) > SHORTEN_OVER and _BASE64_TEXT.fullmatch(value):
            keep = value.find(",") + 9 if value.startswith("data:") else 8
            return f"{value[:keep]}…({len(value)} chars)"
        return value
    if isinstance(value, dict):
        return {key: shorten(item) for key, item in value.items()}
    if isinstance(value, list):
        return [shorten(item) for item in value]
    return value


def render(record: Record, width: int = BODY_WIDTH) -> str:
    """One readable line: ``#42 2026-11-24T08:30:01Z uplink P001 carIn opr=abc {...}``."""
    try:
        body = dumps_compact(shorten(record.body)).decode("utf-8")
    except RecursionError:  # nested deeper than we walk: show it as it is
        body = dumps_compact(record.body).decode("utf-8")
    if len(body) > width:
        body = body[: width - 1] + "…"
    parts = [
        f"#{record.seq}",
        short_ts(record.ts),
        record.kind or "-",
        record.park or "-",
        record.code or "-",
    ]
    if record.opr:
        parts.append(f"opr={record.opr}")
    parts.append(body)
    return printable(" ".join(parts))


def guard(verb: str, run: Callable[[], int]) -> int:
    """Run a verb; its failures become one line on stderr and an exit code, never a traceback."""
    try:
        try:
            return run()
        finally:
            flush()
    except Usage as e:
        print(f"cpmictl log {verb}: {e}", file=sys.stderr)
        return 2
    except Failure as e:
        print(f"cpmictl log {verb}: {e}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader of our output went away (| head): nothing more to say to it.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except ChainError as e:
        print(f"cpmictl log {verb}: the journal is damaged: {e}", file=sys.stderr)
        return 1
    except BadLine as e:
        print(f"cpmictl log {verb}: the journal is damaged: {e.args[0]}", file=sys.stderr)
        return 1
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        print(f"cpmictl log {verb}: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"cpmictl log {verb}: interrupted", file=sys.stderr)
        return 1

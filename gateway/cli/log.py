"""``cpmictl log``: read, check, export, replay and back up the replay journal (CONTRACT §7).

``cpmictl log VERB [options] DIR``, DIR being the journal directory:

- ``tail``: the last records, one readable line each; ``-f`` follows the live journal;
- ``show SEQ``: one record, whole, pretty-printed;
- ``stats``: counts per kind, code and park; the forwarding backlog;
- ``verify``: the chain and the seals;
- ``export``: the raw lines (JSON Lines) of the records that match;
- ``replay``: the events of a range of records, sent again with their original ids;
- ``backup DIR DEST``: copies what is new in a live journal into a backup of it;
- ``restore DEST DIR``: makes DIR a journal restored from the backup DEST, going on
  above a seq floor (gateway.journal.backup).

``--since`` and ``--until`` take a seq -- ``42`` or ``#42`` -- or an RFC 3339 time
with its offset (``2026-11-24T08:30:00+08:00``, ``2026-11-24T00:30:00Z``); both
ends are inclusive. A time without an offset is refused rather than guessed at:
the journal's times are UTC, the lots' are not.

Every verb but ``restore`` reads the journal while the gateway writes it:
nothing else here takes the journal's lock or writes to it, and a partial last line (a write in
progress) is left out until it is whole. Reading streams, a line at a time,
so memory does not grow with the journal. A damaged line in an older segment
(which the gateway quarantines and skips, see docs/journal.md) is skipped
with a warning on stderr by every verb but ``verify``, which reports it. A
hole, where the gateway set damage aside under a signed ``recovery`` record,
is skipped silently; ``verify`` names each, and ``show`` a seq lost in one.

Exit codes: 0 done, 1 the command failed (no journal, a damaged journal, no
such seq, the cloud refusing a replay, ...), 2 usage.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import shlex
import sys
import time
import urllib.error
import urllib.request
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime
from email.message import Message
from typing import IO, TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from attrs import frozen
from nacl.signing import SigningKey, VerifyKey

from gateway.cli import progress as progress_bars
from gateway.cloud.events import BATCH_CONTENT_TYPE, EVENT_KINDS, NO_EVENT_KINDS, to_event
from gateway.cloud.httpsig import sign_request
from gateway.cloud.progress import Progress
from gateway.config import CONFIG_SEARCH, ConfigError, find_config, parse
from gateway.config import load as load_config
from gateway.journal import backup as journal_backup
from gateway.journal.integrity import KeyChangeError, KeyRun, Recovery, verify_journal
from gateway.journal.kinds import FORWARDED_RECORD, REJECTED_RECORD
from gateway.journal.reader import ChainError
from gateway.journal.record import BadLine, Record, decode_line, dumps_compact
from gateway.journal.recovery import DAMAGED, is_hole
from gateway.journal.restore import RESTORE
from gateway.journal.segments import Segment, iter_lines, line_seq, list_segments, segments_from
from gateway.keys import KeyFileError, load_signing_key, parse_public_key_b64

if TYPE_CHECKING:
    from gateway.cli.main import Subparsers

__all__ = [
    "EVENT_KINDS",
    "NO_EVENT_KINDS",
    "Position",
    "add_parser",
    "parse_position",
    "parse_seq",
    "render",
    "run_backup",
    "run_export",
    "run_replay",
    "run_show",
    "run_stats",
    "run_tail",
    "run_verify",
    "shorten",
]

DEFAULT_LINES = 20
"""``tail`` prints this many records unless told otherwise (all of them with ``--since``)."""
BODY_WIDTH = 200
"""A readable line shows at most this many characters of the body."""
SHORTEN_OVER = 100
"""Base64 strings longer than this are shortened in readable lines."""
POLL_SECONDS = 0.2
"""How often ``tail -f`` looks for new lines."""
DEFAULT_BATCH = 100
ANSWER_EXCERPT = 300
"""How much of a refusing answer ``replay`` shows."""
MAX_WARNINGS = 10
"""Damaged lines warned about one by one; the rest are counted."""

# Records that say how far forwarding went (gateway.cloud.forwarder): body "through".
_PROGRESS_KINDS = frozenset({FORWARDED_RECORD.encode(), REJECTED_RECORD.encode()})
_EVENT_KINDS_B = frozenset(kind.encode() for kind in EVENT_KINDS)
_NO_EVENT_KINDS_B = frozenset(kind.encode() for kind in NO_EVENT_KINDS)
_UTC_ZONE = ZoneInfo("UTC")

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


class _Failure(Exception):
    """The command failed; ``str()`` is the one line for the operator (exit 1)."""


class _Usage(Exception):
    """The command was called wrong; ``str()`` says how (exit 2)."""


def _printable(text: str) -> str:
    """``text`` with the characters a terminal could act on escaped."""
    return text.translate(_ESCAPES)


def _text(value: bytes) -> str:
    return _printable(value.decode("utf-8", "replace"))


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


def _seq_arg(text: str) -> int:
    try:
        return parse_seq(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _position_arg(text: str) -> Position:
    try:
        return parse_position(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _count_arg(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a count (0, 1, 2, ...): {text!r}")
    return int(text)


def _positive_arg(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"not a positive number: {text!r}")
    return int(text)


# -- reading lines


class _Head(NamedTuple):
    """A record's fields before its body, as the line holds them (UTF-8)."""

    seq: int
    ts: bytes
    kind: bytes
    park: bytes
    code: bytes
    opr: bytes


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


def _parse_head(line: bytes) -> _Head:
    """The head of a whole line; raises BadLine for a line that is not a record."""
    match = _HEAD.match(line)
    if match is not None:
        return _Head(int(match[1]), match[2], match[3], match[4], match[5], match[6])
    record = decode_line(line)
    return _Head(
        record.seq,
        _utf8(record.ts),
        _utf8(record.kind),
        _utf8(record.park),
        _utf8(record.code),
        _utf8(record.opr),
    )


def _journal(directory: str) -> list[Segment]:
    """The journal's segments; a one-line failure when there is no journal."""
    if not os.path.exists(directory):
        raise _Failure(f"{directory}: no such directory")
    if not os.path.isdir(directory):
        raise _Failure(f"{directory}: not a directory")
    segments = list_segments(directory)
    if not segments:
        raise _Failure(f"{directory}: no journal here (no segment files like 00000000000000000001.jsonl)")
    return segments


def _bar(args: argparse.Namespace, segments: Iterable[Segment], description: str) -> Any:
    """A progress bar over the bytes of `segments` (see gateway.cli.progress: a terminal only)."""
    total = 0
    for segment in segments:
        try:
            total += os.stat(segment.path).st_size
        except FileNotFoundError:
            pass  # removed by retention since it was listed: the verb says so where it matters
    return progress_bars.bar(args, total=total, description=description)


def _whole_end(path: str) -> int:
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


class _Reader:
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
            _warn(self.verb, f"skipped a damaged line ({where}): {reason}{more}")

    def segment_lines(self, segment: Segment, stop: int | None = None) -> Iterator[tuple[_Head, bytes]]:
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
                head = _parse_head(line)
            except BadLine as e:
                if not is_hole(line):  # a hole: damage set aside under a recovery record (verify names it)
                    self.damage(e.args[0])
                continue
            yield head, line

    def lines(self, from_seq: int = 1, end: int | None = None) -> Iterator[tuple[_Head, bytes]]:
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


# -- filters


@frozen
class _Filter:
    parks: frozenset[bytes]
    codes: frozenset[bytes]
    kinds: frozenset[bytes]
    since: Position | None
    until: Position | None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> _Filter:
        def values(name: str) -> frozenset[bytes]:
            return frozenset(_utf8(v) for v in getattr(args, name, None) or ())

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

    def beyond(self, head: _Head) -> bool:
        """Whether no record from this one on can match (``--until`` a seq)."""
        return self.until is not None and self.until.seq is not None and head.seq > self.until.seq

    def matches(self, head: _Head) -> bool:
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


def _write(data: bytes) -> None:
    """Write bytes to stdout (UTF-8 whatever the locale says: the journal is UTF-8)."""
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is None:
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        buffer.write(data)


def _say(text: str) -> None:
    _write((text + "\n").encode("utf-8", "backslashreplace"))


def _flush() -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    (buffer if buffer is not None else sys.stdout).flush()


def _warn(verb: str, text: str) -> None:
    print(f"cpmictl log {verb}: warning: {text}", file=sys.stderr)


def _short_ts(ts: str) -> str:
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
        _short_ts(record.ts),
        record.kind or "-",
        record.park or "-",
        record.code or "-",
    ]
    if record.opr:
        parts.append(f"opr={record.opr}")
    parts.append(body)
    return _printable(" ".join(parts))


def _guard(verb: str, run: Callable[[], int]) -> int:
    """Run a verb; its failures become one line on stderr and an exit code, never a traceback."""
    try:
        try:
            return run()
        finally:
            _flush()
    except _Usage as e:
        print(f"cpmictl log {verb}: {e}", file=sys.stderr)
        return 2
    except _Failure as e:
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


# -- tail


def run_tail(args: argparse.Namespace, *, sleep: Callable[[float], None] = time.sleep) -> int:
    """``cpmictl log tail``; ``sleep`` waits between polls of ``-f`` (Ctrl-C ends it, exit 0)."""
    return _guard("tail", lambda: _tail(args, sleep))


def _tail(args: argparse.Namespace, sleep: Callable[[float], None]) -> int:
    segments = _journal(args.dir)
    flt = _Filter.from_args(args)
    reader = _Reader("tail", segments)
    last = segments[-1]
    end = _whole_end(last.path)  # what is here now; -f goes on from there

    def emit(line: bytes) -> None:
        if args.json:
            _write(line)
            return
        record = reader.decode(line)
        if record is not None:
            _say(render(record))

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
    _flush()
    follower = _Follower(args.dir, last, end)
    try:
        while True:
            lines = follower.read()
            for line in lines:
                try:
                    head = _parse_head(line)
                except BadLine as e:
                    _warn("tail", f"skipped a damaged line: {e.args[0]}")
                    continue
                if flt.matches(head):
                    emit(line)
            _flush()
            if not lines:
                sleep(POLL_SECONDS)
    except KeyboardInterrupt:
        return 0
    finally:
        follower.close()


def _last_matching(reader: _Reader, flt: _Filter, limit: int, end: int) -> list[bytes]:
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


# -- show


def run_show(args: argparse.Namespace) -> int:
    """``cpmictl log show SEQ``: the whole record, pretty-printed; exit 1 if there is none."""
    return _guard("show", lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    segments = _journal(args.dir)
    seq: int = args.seq
    holder = segments_from(segments, seq)[0]
    if holder.first_seq <= seq:
        for offset, line in iter_lines(holder.path):
            found = line_seq(line)
            if found is None or found < seq:
                continue
            if found > seq or not line.endswith(b"\n"):
                break
            try:
                record = decode_line(line)
            except BadLine as e:
                raise _Failure(
                    f"record #{seq} is damaged (segment {holder.name}, offset {offset}): {e.args[0]}"
                ) from None
            document = {
                "seq": record.seq,
                "ts": record.ts,
                "kind": record.kind,
                "park": record.park,
                "code": record.code,
                "opr": record.opr,
                "body": record.body,
                "chain": record.chain,
            }
            text = json.dumps(document, indent=2, ensure_ascii=False)
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError:  # a lone surrogate: JSON can hold it escaped, UTF-8 cannot
                data = json.dumps(document, indent=2).encode("ascii")
            # JSON's own line breaks stay; what a terminal could act on inside strings is escaped.
            lines = data.decode("utf-8").split("\n")
            _say("\n".join(_printable(each) for each in lines))
            return 0
    lost_in = _set_aside_by(segments, seq)
    if lost_in is not None:
        raise _Failure(f"record #{seq} was set aside as damaged: {lost_in}")
    raise _Failure(f"no record #{seq} in {args.dir}")


_RECOVERY_HEAD = re.compile(rb'\{"seq":[1-9][0-9]*,"ts":"[^"\\]*","kind":"recovery",')


def _set_aside_by(segments: list[Segment], seq: int) -> str | None:
    """Which ``recovery`` record says ``seq`` was lost in damage set aside, in words; None if none."""
    for segment in segments_from(segments, seq):
        for _, line in iter_lines(segment.path):
            if _RECOVERY_HEAD.match(line) is None:
                continue
            try:
                record = decode_line(line)
            except BadLine:
                continue
            body = record.body
            lost = body.get("lost") if isinstance(body, dict) else None
            if (
                isinstance(body, dict)
                and body.get("reason") == DAMAGED
                and isinstance(lost, dict)
                and type(lost.get("first")) is int
                and type(lost.get("last")) is int
                and lost["first"] <= seq <= lost["last"]
            ):
                return (
                    f"recovery record #{record.seq} (segment {body.get('segment')}, offset "
                    f"{body.get('offset')}, {body.get('bytes')} bytes: {body.get('detail')}; "
                    f"saved as {body.get('saved_as') or 'nothing'})"
                )
    return None


# -- stats

# What stats needs of a line: kind, park and code (and the seq, for the backlog).
_KIND_PARK_CODE = re.compile(
    rb'\{"seq":[1-9][0-9]*,"ts":"[^"\\]*","kind":"([^"\\]*)","park":"([^"\\]*)","code":"([^"\\]*)",'
)
_SEQ_KIND_PARK = re.compile(rb'\{"seq":([1-9][0-9]*),"ts":"[^"\\]*","kind":"([^"\\]*)","park":"([^"\\]*)",')
# Kinds stats can count without decoding the line: whether they are events is known.
_COUNTED_KINDS = (_EVENT_KINDS_B | _NO_EVENT_KINDS_B) - _PROGRESS_KINDS


def _is_event(kind: bytes, line: bytes) -> bool:
    """Whether the record would be forwarded as an event (per gateway.cloud.events.to_event)."""
    if kind in _EVENT_KINDS_B:
        return True
    if kind in _NO_EVENT_KINDS_B:
        return False
    try:
        record = decode_line(line)
    except BadLine:
        return False
    # Only whether there is an event matters here, not its id or times.
    return to_event(record, gateway_id="stats", zone=_UTC_ZONE) is not None


def _lost_in(line: bytes) -> int | None:
    """How many records a ``recovery`` line says damage set aside took; None for a torn-tail cut."""
    try:
        body = decode_line(line).body
    except BadLine:
        return None
    if not isinstance(body, dict) or body.get("reason") != DAMAGED:
        return None
    lost = body.get("lost")
    if isinstance(lost, dict) and type(lost.get("first")) is int and type(lost.get("last")) is int:
        return max(0, lost["last"] - lost["first"] + 1)
    return 0


def _through(line: bytes) -> int:
    """The ``through`` of a forwarded/rejected line (0 if it has none), as the forwarder reads it."""
    progress = Progress()
    try:
        progress.restore(decode_line(line))
    except BadLine:
        pass
    return progress.through


def run_stats(args: argparse.Namespace) -> int:
    """``cpmictl log stats``: counts, forwarding backlog and lag, in one streaming pass (and a short one)."""
    return _guard("stats", lambda: _stats(args))


@frozen
class _Counts:
    """Where a stats pass got to: records per (kind, park, code), and events found by decoding."""

    combos: dict[tuple[bytes, ...], int]  # (kind, park, code)
    decoded_events: dict[bytes, int]  # per park, for kinds whose event depends on the body

    def copy(self) -> _Counts:
        return _Counts(dict(self.combos), dict(self.decoded_events))

    def events_per_park(self) -> dict[bytes, int]:
        per_park = dict(self.decoded_events)
        for (kind, park, _), n in self.combos.items():
            if kind in _EVENT_KINDS_B:
                per_park[park] = per_park.get(park, 0) + n
        return per_park


def _stats(args: argparse.Namespace) -> int:
    segments = _journal(args.dir)
    sizes = sum(os.stat(segment.path).st_size for segment in segments)
    reader = _Reader("stats", segments)
    counts = _Counts({}, {})
    combos, decoded_events = counts.combos, counts.decoded_events
    through = 0
    set_aside = lost = 0  # damage set aside under recovery records, and the records it took
    last_line = b""
    # The counts before each segment: the backlog lies after the highest `through`,
    # known only at the end; these let the second pass read one segment, not all.
    before: list[_Counts] = []
    match, counted = _KIND_PARK_CODE.match, _COUNTED_KINDS
    last_name = segments[-1].name
    for segment in segments:
        before.append(counts.copy())
        reader.segment = segment
        for offset, line in iter_lines(segment.path):
            if line[-1] != 10:  # no newline
                if segment.name == last_name:
                    break  # a write in progress
                reader.offset = offset
                reader.damage("partial line")
                continue
            found = match(line)
            if found is not None:
                key: tuple[bytes, ...] = found.group(1, 2, 3)
            else:  # fields with escapes, or damage
                try:
                    head = _parse_head(line)
                except BadLine as e:
                    if not is_hole(line):  # a hole: damage set aside, its recovery record counted below
                        reader.offset = offset
                        reader.damage(e.args[0])
                    continue
                key = (head.kind, head.park, head.code)
            combos[key] = combos.get(key, 0) + 1
            last_line = line
            kind = key[0]
            if kind == b"recovery":
                n = _lost_in(line)
                if n is not None:
                    set_aside += 1
                    lost += n
            if kind not in counted:
                if kind in _PROGRESS_KINDS:
                    through = max(through, _through(line))
                if kind not in _EVENT_KINDS_B and _is_event(kind, line):
                    decoded_events[key[1]] = decoded_events.get(key[1], 0) + 1

    out = [f"journal {args.dir}: {len(segments)} segments, {sizes} bytes"]
    if not last_line:
        out.append("records: none")
        _say("\n".join(out))
        return 0
    last = _parse_head(last_line)
    first = next(_Reader("stats", segments, quiet=True).lines(), (last, b""))[0]
    kinds: dict[bytes, int] = {}
    codes: dict[bytes, int] = {}
    parks: dict[bytes, int] = {}
    for (kind, park, code), n in combos.items():
        kinds[kind] = kinds.get(kind, 0) + n
        if park:
            parks[park] = parks.get(park, 0) + n
        if code:
            codes[code] = codes.get(code, 0) + n
    event_parks = counts.events_per_park()
    events = sum(event_parks.values())
    out.append(
        f"records: {sum(kinds.values())}, from #{first.seq} ({_short_ts(_text(first.ts))}) "
        f"to #{last.seq} ({_short_ts(_text(last.ts))})"
    )
    out += _table("by kind", kinds)
    out += _table("by code", codes)
    out += _table("by park", parks)
    if getattr(args, "sink", None) == "log-only":
        # Nothing is ever forwarded there: no backlog to show.
        out.append(f"forwarding: none, the sink is log-only: the journal is the sink ({events} events)")
    else:
        if through:
            out.append(f"forwarding: done through #{through} (forwarded, refused, or no event)")
        else:
            out.append("forwarding: nothing forwarded yet")
        backlog, lag, oldest = _backlog(segments, before, through, last.seq, events, event_parks)
        if backlog == 0:
            out.append(f"backlog: none ({events} events in all)")
        else:
            where = f", the oldest #{oldest.seq} ({_short_ts(_text(oldest.ts))})" if oldest else ""
            out.append(f"backlog: {backlog} events not forwarded{where}")
            out += _table("lag by park (events not forwarded)", lag)
    if set_aside:
        out.append(
            f"damage set aside: {set_aside} times, {lost} records lost "
            f"(recovery records; cpmictl log verify {args.dir} names them)"
        )
    if reader.damaged:
        out.append(f"damaged lines skipped: {reader.damaged} (cpmictl log verify {args.dir})")
    _say("\n".join(out))
    return 0


def _backlog(
    segments: list[Segment],
    before: list[_Counts],
    through: int,
    last_seq: int,
    events: int,
    event_parks: dict[bytes, int],
) -> tuple[int, dict[bytes, int], _Head | None]:
    """The events after ``through``: how many, per park, and the oldest."""
    if events == 0 or through >= last_seq:
        return 0, {}, None
    holder = 0
    for index, segment in enumerate(segments):
        if segment.first_seq > through + 1:
            break
        holder = index
    done_parks = before[holder].events_per_park()
    oldest: _Head | None = None
    match = _SEQ_KIND_PARK.match
    for segment in segments[holder:]:
        for _, line in iter_lines(segment.path):
            found = match(line)
            if found is None:
                try:
                    head = _parse_head(line)
                except BadLine:
                    continue  # damage (warned about in the first pass), or a write in progress
                seq, kind, park = head.seq, head.kind, head.park
            else:
                seq, kind, park = int(found[1]), found[2], found[3]
            if seq > last_seq:
                break
            if _is_event(kind, line):
                if seq > through:
                    oldest = _parse_head(line)
                    break
                done_parks[park] = done_parks.get(park, 0) + 1
        else:
            continue
        break
    lag = {park: n - done_parks.get(park, 0) for park, n in event_parks.items()}
    lag = {park: n for park, n in lag.items() if n > 0}
    return sum(lag.values()), lag, oldest


def _table(title: str, counts: dict[bytes, int]) -> list[str]:
    if not counts:
        return [f"{title}: none"]
    rows = sorted(((_text(name) or '""', n) for name, n in counts.items()), key=lambda row: (-row[1], row[0]))
    name_width = max(len(name) for name, _ in rows)
    count_width = max(len(str(n)) for _, n in rows)
    return [f"{title}:"] + [f"  {name:<{name_width}}  {n:>{count_width}}" for name, n in rows]


# -- verify


def run_verify(args: argparse.Namespace) -> int:
    """``cpmictl log verify``: the chain and every seal, in one pass; exit 1 with the first bad seq."""
    return _guard("verify", lambda: _verify(args))


def _read_pubkey(text: str) -> VerifyKey:
    """``--pubkey``: a base64 public key, or a file holding one."""
    if os.path.isfile(text):
        with open(text, "rb") as file:
            content = file.read(4096).decode("ascii", "replace").strip()
        if content.startswith("ed25519:"):
            raise _Usage(
                f"--pubkey: {text} is a signing key file; give its public key (cpmictl pubkey {text})"
            )
        try:
            return parse_public_key_b64(content)
        except ValueError as e:
            raise _Usage(f"--pubkey: {text}: {e}") from None
    try:
        return parse_public_key_b64(text)
    except ValueError:
        raise _Usage(
            f"--pubkey: not a public key (base64 of 32 bytes) nor a file holding one: {text!r}"
        ) from None


def _verify(args: argparse.Namespace) -> int:
    segments = _journal(args.dir)
    # the same key given twice (as a file and in base64, say) is one key
    given = list({bytes(key): key for key in map(_read_pubkey, args.pubkey or [])}.values())
    try:
        with _bar(args, segments, "verify") as bar:
            verdict = verify_journal(
                args.dir,
                allow_partial_tail=True,
                seals=True,
                keys=given,
                progress=lambda segment: bar.update(os.stat(segment.path).st_size),
            )
    except ChainError as e:
        where = f" (segment {e.segment}, offset {e.offset})" if e.segment else ""
        print(
            f"first bad seq: {e.seq if e.seq is not None else 'unknown'}: {e.reason}{where}", file=sys.stderr
        )
        if isinstance(e, KeyChangeError):
            print(_key_change_hint(e, given_keys=bool(given), directory=args.dir), file=sys.stderr)
        return 1
    count, key, last_seal = verdict.records, verdict.key, verdict.last_seal
    first_seq = segments[0].first_seq
    last_seq = first_seq + count - 1 + sum(recovery.lost_count for recovery in verdict.recoveries)
    if verdict.seals and key is not None:
        if len(given) > 1:
            checked = "the given keys: " + _key_runs(verdict.sealed_by, [bytes(each) for each in given])
        elif given:
            checked = f"the given key: {_b64(key)}"
        else:
            checked = f"the key the journal recorded first: {_b64(key)}"
        out = [f"journal whole: {count} records, {verdict.seals} seals (checked with {checked})"]
        after = (
            last_seq
            - (last_seal or 0)
            - sum(r.lost_count for r in verdict.recoveries if r.lost and r.lost[0] > (last_seal or 0))
        )
        out.append(
            f"last seal: #{last_seal}, over the records up to #{(last_seal or 1) - 1}; "
            f"{after} records after it are covered by the chain only"
        )
    else:
        out = [f"journal whole: {count} records, no seals (nothing signed to check)"]
    out += [_recovery_line(recovery) for recovery in verdict.recoveries]
    if first_seq > 1:
        out.append(f"older segments were removed: the chain is checked from #{first_seq}, taken as it is")
    last = list_segments(args.dir)[-1]
    if _whole_end(last.path) < os.stat(last.path).st_size:
        out.append(
            f"the last line of {last.name} is incomplete (being written, or torn by a crash): not checked"
        )
    _say("\n".join(out))
    return 0


def _recovery_line(recovery: Recovery) -> str:
    """What ``verify`` says of damage set aside (or a restore's seq jump), and which record vouches for it."""
    if recovery.reason == RESTORE:
        skipped = (
            f"seqs #{recovery.lost[0]}\u2013#{recovery.lost[1]} skipped"
            if recovery.lost
            else "no seq skipped"
        )
        return (
            f"restored: {recovery.detail}; {skipped} (the lost journal may have used them); vouched for "
            f"by restore record #{recovery.seq} in segment {recovery.segment}, signed with "
            f"{_b64(recovery.key)}"
        )
    if recovery.lost is None:
        lost = "no record lost (a line that was not one)"
    elif recovery.lost[0] == recovery.lost[1]:
        lost = f"record #{recovery.lost[0]} lost"
    else:
        lost = f"records #{recovery.lost[0]}\u2013#{recovery.lost[1]} lost"
    return (
        f"set aside: {lost}: {recovery.length} bytes at offset {recovery.offset} of segment "
        f"{recovery.segment} ({recovery.detail}); vouched for by recovery record #{recovery.seq}, "
        f"signed with {_b64(recovery.key)}"
    )


def _key_runs(runs: tuple[KeyRun, ...], given: list[bytes]) -> str:
    """Each key and the seals it made, in journal order (a key used twice, twice); unused keys last."""
    parts = []
    for run in runs:
        seals = f"seal #{run.first}" if run.seals == 1 else f"seals #{run.first}\u2013#{run.last}"
        parts.append(f"{_b64(run.key)} ({seals})")
    used = {run.key for run in runs}
    parts += [f"{_b64(key)} (no seals)" for key in given if key not in used]
    return ", ".join(parts)


def _key_change_hint(e: KeyChangeError, *, given_keys: bool, directory: str) -> str:
    """
    What to do about a seal by a key not checked against: the line after ``first bad seq``.

    A rotated signing key and a journal rewritten under someone else's key look
    the same here; the operator tells them apart by knowing the gateway's keys,
    so the hint says to check the key before giving it.
    """
    new = _b64(e.recorded)
    pubkeys = " ".join(f"--pubkey {key}" for key in [*map(_b64, e.checked), new])
    command = f"cpmictl log verify {pubkeys} {shlex.quote(directory)}"
    if given_keys:
        return (
            f"the seal at #{e.seq} was made by a key not given ({new}): if it is a key of this gateway "
            f"(after a rotation of [gateway] signing_key; cpmictl pubkey KEYFILE prints a key file's), "
            f"add it: {command}"
        )
    return (
        f"the seals change key at #{e.seq}: if the gateway's signing key was rotated, make sure both "
        f"keys are its own (cpmictl pubkey KEYFILE prints a key file's), then check with both: {command}"
    )


def _b64(key: bytes) -> str:
    """A public key in base64, as ``cpmictl pubkey`` prints it."""
    return base64.b64encode(key).decode("ascii")


# -- export


def run_export(args: argparse.Namespace) -> int:
    """``cpmictl log export``: the raw lines of the matching records, JSON Lines."""
    return _guard("export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    segments = _journal(args.dir)
    flt = _Filter.from_args(args)
    reader = _Reader("export", segments)
    output: IO[bytes] | None = open(args.output, "wb") if args.output else None
    write = output.write if output is not None else _write
    count = 0
    bar = _bar(args, segments_from(segments, flt.first_seq), "export")
    reader.progress = bar.update
    try:
        for head, line in reader.lines(flt.first_seq):
            if flt.beyond(head):
                break
            if not flt.matches(head) or reader.decode(line) is None:
                continue
            write(line)
            count += 1
    finally:
        bar.close()
        if output is not None:
            output.close()
    if args.output:
        print(f"exported {count} records to {args.output}", file=sys.stderr)
    return 0


# -- replay


def run_replay(args: argparse.Namespace, *, now: Callable[[], float] = time.time) -> int:
    """``cpmictl log replay``: send the events of a range of records again; ``now`` dates the signatures."""
    return _guard("replay", lambda: _replay(args, now))


@frozen
class _Identity:
    """Who replays: the gateway id and zone the events are made with, and the key they are signed with."""

    gateway_id: str
    zone: ZoneInfo
    key: SigningKey
    max_bytes: int
    timeout: float


def _identity(args: argparse.Namespace) -> _Identity:
    """The gateway id, zone and key: from the options, else from the configuration file."""
    path = find_config(args.config)
    try:
        if args.gateway_id is not None:
            parse({"gateway": {"id": args.gateway_id}})  # checks its spelling
        if args.config is not None or os.path.exists(path) or args.gateway_id is None or args.key is None:
            config = load_config(path)
        else:
            config = parse({"gateway": {"id": args.gateway_id}})  # the defaults: zone, batch bytes
    except ConfigError as e:
        hint = "" if args.config else " (give --config, or --gateway-id and --key)"
        raise _Failure(f"{e}{hint}") from None
    try:
        key = load_signing_key(args.key or config.gateway.signing_key)
    except KeyFileError as e:
        raise _Failure(str(e)) from None
    return _Identity(
        args.gateway_id or config.gateway.id,
        config.gateway.timezone,
        key,
        config.cloud.batch_max_bytes,
        config.cloud.request_timeout,
    )


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are answers like any other: a signature made for one URL must not go to another."""

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: Message, newurl: str
    ) -> urllib.request.Request | None:
        return None


class _ReplayProgress:
    """Replay's progress bar (records from --from to the last), with the events and batches sent."""

    def __init__(self, args: argparse.Namespace, first: int, last: int) -> None:
        self._first = first
        self._bar = progress_bars.bar(args, total=max(1, last - first + 1), description="replay", unit="rec")

    def update(self, seq: int, sent: int, batches: int) -> None:
        self._bar.set_postfix_str(f"#{seq}, {sent} events in {batches} batches", refresh=False)
        self._bar.update(seq - self._first + 1 - self._bar.n)

    def end(self) -> None:
        self._bar.close()


def _replay(args: argparse.Namespace, now: Callable[[], float]) -> int:
    if args.to_seq is not None and args.to_seq < args.from_seq:
        raise _Usage(f"--to #{args.to_seq} is before --from #{args.from_seq}")
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).netloc:
        raise _Usage(f"--url: not an http(s) URL: {args.url!r}")
    segments = _journal(args.dir)
    who = _identity(args)
    parks = frozenset(_utf8(park) for park in args.park or ())
    reader = _Reader("replay", segments)
    last = args.to_seq if args.to_seq is not None else _last_seq(segments)
    progress = _ReplayProgress(args, args.from_seq, last if last is not None else args.from_seq)
    opener = urllib.request.build_opener(_NoRedirect())
    batch: list[bytes] = []
    batch_seqs: list[int] = []
    size = 0
    sent = batches = skipped = 0
    read_to: int | None = None

    def send() -> None:
        nonlocal sent, batches, size
        body = b"".join((b"[", b",".join(batch), b"]"))
        signed = sign_request("POST", args.url, body, key=who.key, keyid=who.gateway_id, created=int(now()))
        headers = {"Content-Type": BATCH_CONTENT_TYPE, **signed.as_dict()}
        problem = _post(opener, args.url, body, headers, who.timeout)
        if problem is not None:
            progress.end()
            raise _Failure(
                f"{problem} for events #{batch_seqs[0]} to #{batch_seqs[-1]}; {sent} events were sent "
                f"before them; resume with --from {batch_seqs[0]}"
            )
        sent += len(batch)
        batches += 1
        progress.update(batch_seqs[-1], sent, batches)
        batch.clear()
        batch_seqs.clear()
        size = 0

    for head, line in reader.lines(args.from_seq):
        if args.to_seq is not None and head.seq > args.to_seq:
            break
        read_to = head.seq
        if parks and head.park not in parks:
            continue
        record = reader.decode(line)
        event = None if record is None else to_event(record, gateway_id=who.gateway_id, zone=who.zone)
        if event is None:
            skipped += 1
            continue
        part = dumps_compact(event)
        if batch and (len(batch) >= args.batch or size + len(part) > who.max_bytes):
            send()
        batch.append(part)
        batch_seqs.append(head.seq)
        size += len(part)
    if batch:
        send()
    progress.end()
    span = f"#{args.from_seq} to #{read_to}" if read_to is not None else f"from #{args.from_seq}: none there"
    print(
        f"replayed {sent} events in {batches} batches to {args.url} (records {span}; "
        f"{skipped} records with no event left out)",
        file=sys.stderr,
    )
    return 0


def _last_seq(segments: list[Segment]) -> int | None:
    """The seq of the journal's last whole line (for the progress bar only)."""
    for segment in reversed(segments):
        end = _whole_end(segment.path)
        if end == 0:
            continue
        with open(segment.path, "rb") as file:
            start = max(0, end - (1 << 16))
            file.seek(start)
            tail = file.read(end - start)
        line_start = tail.rfind(b"\n", 0, len(tail) - 1) + 1
        found = line_seq(tail[line_start:])
        if found is not None:
            return found
    return None


def _post(
    opener: urllib.request.OpenerDirector, url: str, body: bytes, headers: dict[str, str], timeout: float
) -> str | None:
    """POST one batch; None for a 2xx, else what went wrong, in a few words."""
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)
    try:
        with opener.open(request, timeout=timeout) as response:
            response.read()
            return None
    except urllib.error.HTTPError as e:
        try:
            answer = e.read(ANSWER_EXCERPT * 4)
        except OSError:
            answer = b""
        text = " ".join(answer.decode("utf-8", "replace").split())[:ANSWER_EXCERPT]
        return f"HTTP {e.code} from {url}: {_printable(text) or '(no body)'}"
    except (urllib.error.URLError, OSError) as e:
        reason = e.reason if isinstance(e, urllib.error.URLError) else e
        return f"no answer from {url} ({reason})"


# -- backup


def run_backup(args: argparse.Namespace) -> int:
    """``cpmictl log backup DIR DEST``: copy what is new in the journal into DEST (gateway.journal.backup)."""
    return _guard("backup", lambda: _backup(args))


def _backup(args: argparse.Namespace) -> int:
    bar = progress_bars.bar(args, total=None, description="backup")

    def progress(done: int, total: int) -> None:
        bar.total = total
        bar.update(done - bar.n)
        if done >= total:
            bar.refresh()  # the last figure, whatever tqdm's redraw interval skipped

    try:
        result = journal_backup.backup(args.dir, args.dest, progress=progress)
    except journal_backup.BackupRefused as e:
        raise _Failure(str(e)) from None
    finally:
        bar.close()
    if result.first_new is None:
        summary = f"{args.dest}: nothing new since #{result.last_seq}" if result.last_seq else "no records"
    else:
        summary = (
            f"copied {result.records} records (#{result.first_new} to #{result.last_seq}), {result.bytes} "
            f"bytes, {result.new_segments} new segments, from {args.dir} to {args.dest}: chain checked"
        )
        if result.verified:
            summary += ", the whole backup verified"
    _say(summary)
    if result.left_out:
        _say(f"left out: the incomplete last line ({result.left_out} bytes, being written)")
    return 0


def run_restore(args: argparse.Namespace) -> int:
    """``cpmictl log restore DEST DIR``: make DIR a journal restored from the backup DEST."""
    return _guard("restore", lambda: _restore(args))


def _restore(args: argparse.Namespace) -> int:
    try:
        gateway_id = args.gateway_id
        if gateway_id is not None:
            parse({"gateway": {"id": gateway_id}})  # checks its spelling
        if gateway_id is None or args.key is None:
            config = load_config(find_config(args.config))
            gateway_id = gateway_id or config.gateway.id
            key_path = args.key or config.gateway.signing_key
        else:
            key_path = args.key
    except ConfigError as e:
        hint = "" if args.config else " (give --config, or --gateway-id and --key)"
        raise _Failure(f"{e}{hint}") from None
    try:
        key = load_signing_key(key_path)
    except KeyFileError as e:
        raise _Failure(str(e)) from None
    try:
        result = journal_backup.restore(
            args.dest, args.dir, signing_key=key, gateway_id=gateway_id, replace=args.replace
        )
    except journal_backup.BackupRefused as e:
        raise _Failure(str(e)) from None
    for name in result.replaced:
        _say(f"kept the journal that was there as {name}")
    _say(
        f"restored {result.segments} segments, records up to #{result.last_seq}, from {args.dest} "
        f"to {args.dir}; the journal goes on at #{result.floor} (restore record, signed): "
        "no seq in between is used"
    )
    return 0


# -- the parser


def _add_filters(parser: argparse.ArgumentParser, *, until: bool) -> None:
    parser.add_argument(
        "--since",
        type=_position_arg,
        metavar="T",
        help="from this seq (42 or #42) or RFC 3339 time with offset on (inclusive)",
    )
    if until:
        parser.add_argument(
            "--until", type=_position_arg, metavar="T", help="up to this seq or time (inclusive)"
        )
    parser.add_argument("--park", action="append", metavar="P", help="only this lot (repeat for several)")
    parser.add_argument("--code", action="append", metavar="C", help="only this interface code (repeatable)")
    parser.add_argument("--kind", action="append", metavar="K", help="only this record kind (repeatable)")


def _add_journal(parser: argparse.ArgumentParser, *, progress: bool = False) -> None:
    """Add a verb's --config and its DIR (the journal), which the configuration gives when left out."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help=f"the gateway's configuration, for journal.path and the sink (default: {CONFIG_SEARCH})",
    )
    if progress:
        progress_bars.add_option(parser)
    parser.add_argument(
        "dir",
        metavar="DIR",
        nargs="?",
        help="the journal directory (default: journal.path of the configuration)",
    )


def _from_config(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    """`handler`, run with DIR from the configuration when not given, and the sink when it is that journal.

    The configuration is --config, else the one the gateway would read
    (gateway.config.find_config); the sink is known only for its journal.
    """

    def run(args: argparse.Namespace) -> int:
        verb = handler.__name__.removeprefix("run_")
        path = find_config(args.config)
        settings = None
        if args.config is not None or os.path.exists(path):
            try:
                settings = load_config(path)
            except ConfigError as e:
                if args.dir is None or args.config is not None:
                    print(f"cpmictl log {verb}: {e}", file=sys.stderr)
                    return 2
        if args.dir is None:
            if settings is None:
                print(
                    f"cpmictl log {verb}: give DIR, the journal directory, or --config (no {path})",
                    file=sys.stderr,
                )
                return 2
            args.dir = settings.journal.path
        same = settings is not None and os.path.abspath(settings.journal.path) == os.path.abspath(args.dir)
        args.sink = settings.cloud.sink if same and settings is not None else None
        return handler(args)

    run.__name__ = handler.__name__
    run.__doc__ = handler.__doc__
    return run


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl log VERB ... DIR``."""
    log = subparsers.add_parser(
        "log",
        help="read, check, export, replay and back up the replay journal",
        description=(
            "Read, check, export, replay and back up the gateway's replay journal (DIR: the "
            "journal directory; when left out, journal.path of the configuration). Safe while "
            "the gateway runs. T is a seq (42 or "
            "#42) or an RFC 3339 time with its offset (2026-11-24T08:30:00+08:00)."
        ),
    )
    verbs = log.add_subparsers(title="verbs", metavar="VERB", required=True)

    tail = verbs.add_parser(
        "tail",
        help="the last records, one readable line each",
        description=(
            "Print the last N matching records (20; with --since, all of them from T on), one "
            "line each with long base64 strings shortened; -f then prints new records as they "
            "are written, until Ctrl-C."
        ),
    )
    tail.add_argument("-f", "--follow", action="store_true", help="go on printing new records")
    tail.add_argument("-n", "--lines", type=_count_arg, metavar="N", help="print the last N records")
    _add_filters(tail, until=False)
    tail.add_argument("--json", action="store_true", help="print the raw lines (JSON, nothing shortened)")
    _add_journal(tail)
    tail.set_defaults(handler=_from_config(run_tail))

    show = verbs.add_parser(
        "show", help="one record, whole", description="Print record SEQ whole, as indented JSON."
    )
    show.add_argument("seq", type=_seq_arg, metavar="SEQ", help="the record's seq (42 or #42)")
    _add_journal(show)
    show.set_defaults(handler=_from_config(run_show))

    stats = verbs.add_parser(
        "stats",
        help="counts, forwarding backlog and lag",
        description=(
            "Count records per kind, code and park; show how far forwarding went and the events "
            "not forwarded yet (the oldest, and per park)."
        ),
    )
    _add_journal(stats)
    stats.set_defaults(handler=_from_config(run_stats))

    verify = verbs.add_parser(
        "verify",
        help="check the chain and the seals",
        description=(
            "Check the chain of every record and every seal. Exit 0 when whole, 1 with the first "
            "bad seq. Without --pubkey, seals are checked against the key the journal recorded "
            "first (which shows the key never changed, not whose it is). After a rotation of the "
            "gateway's signing key, give the old and the new key: --pubkey OLD --pubkey NEW."
        ),
    )
    verify.add_argument(
        "--pubkey",
        metavar="KEY",
        action="append",
        help=(
            "the gateway's public key, base64 (cpmictl pubkey prints it), or a file holding it; "
            "again for each key it has had: a seal holds when any of them made it"
        ),
    )
    _add_journal(verify, progress=True)
    verify.set_defaults(handler=_from_config(run_verify))

    export = verbs.add_parser(
        "export",
        help="the matching records as JSON Lines",
        description="Write the raw lines of the matching records (JSON Lines) to stdout or FILE.",
    )
    _add_filters(export, until=True)
    export.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of stdout")
    _add_journal(export, progress=True)
    export.set_defaults(handler=_from_config(run_export))

    replay = verbs.add_parser(
        "replay",
        help="send the events of some records again, with their original ids",
        description=(
            "POST the events of records --from..--to to URL as signed CloudEvents batches, with "
            "their original ids ({gateway id}-{seq}), so the cloud can drop those it has. Stops "
            "at the first answer that is not 2xx and says where to resume."
        ),
    )
    replay.add_argument(
        "--from",
        dest="from_seq",
        type=_seq_arg,
        required=True,
        metavar="SEQ",
        help="the first record (42 or #42)",
    )
    replay.add_argument(
        "--to", dest="to_seq", type=_seq_arg, metavar="SEQ", help="the last record (default: the end)"
    )
    replay.add_argument("--park", action="append", metavar="P", help="only this lot (repeatable)")
    replay.add_argument("--url", required=True, metavar="URL", help="where to POST the batches")
    replay.add_argument("--key", metavar="PATH", help="the signing key file (default: gateway.signing_key)")
    replay.add_argument(
        "--gateway-id",
        metavar="ID",
        help="the gateway id (default: gateway.id; with no configuration file, the zone is Asia/Shanghai)",
    )
    replay.add_argument(
        "--batch", type=_positive_arg, default=DEFAULT_BATCH, metavar="N", help="events per batch (100)"
    )
    _add_journal(replay, progress=True)
    replay.set_defaults(handler=_from_config(run_replay))

    backup = verbs.add_parser(
        "backup",
        help="copy what is new in the journal into a backup, even while the gateway writes it",
        description=(
            "Copy the journal DIR into DEST (created if missing). Into a backup of the same "
            "journal, only what is new is copied: new whole lines of its last segment and new "
            "segments, each checked on the chain from DEST's last record and synced, so it can "
            "run every minute. A DEST that is not a backup of this journal is refused. DEST "
            "verifies on its own (cpmictl log verify DEST); restore it with cpmictl log restore."
        ),
    )
    _add_journal(backup, progress=True)
    backup.add_argument(
        "--progress", action="store_true", help="kept for old scripts: a bar is drawn on a terminal anyway"
    )
    backup.add_argument("dest", metavar="DEST", help="the backup directory (created if missing)")
    backup.set_defaults(handler=_from_config(run_backup))

    restore = verbs.add_parser(
        "restore",
        help="make DIR a journal restored from the backup DEST (the gateway stopped)",
        description=(
            "Copy the backup DEST into the journal directory DIR and append a restore record, "
            "signed with the gateway's key, from which the journal goes on at a seq no record "
            "of the lost journal can have used (the time in microseconds). Refused while a "
            "gateway holds DIR, and when DIR holds segments unless --replace."
        ),
    )
    restore.add_argument(
        "--config", metavar="FILE", help=f"the gateway's configuration (default: {CONFIG_SEARCH})"
    )
    restore.add_argument("--key", metavar="PATH", help="the signing key file (default: gateway.signing_key)")
    restore.add_argument("--gateway-id", metavar="ID", help="the gateway id (default: gateway.id)")
    restore.add_argument(
        "--replace",
        action="store_true",
        help="rename the segments DIR holds to <segment>.replaced-<time> rather than refuse",
    )
    restore.add_argument("dest", metavar="DEST", help="the backup directory to restore from")
    restore.add_argument("dir", metavar="DIR", help="the journal directory to make (the gateway stopped)")
    restore.set_defaults(handler=run_restore)

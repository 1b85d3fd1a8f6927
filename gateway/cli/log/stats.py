"""``cpmictl log stats``: counts per kind, code and park; the forwarding backlog and lag."""

from __future__ import annotations

import argparse
import os
import re
from zoneinfo import ZoneInfo

from attrs import frozen

from gateway.cli.log.common import (
    Head,
    LineReader,
    guard,
    journal_segments,
    parse_head,
    readable,
    say,
    short_ts,
)
from gateway.cloud.events import EVENT_KINDS, NO_EVENT_KINDS, to_event
from gateway.forwarding.progress import Progress
from gateway.journal.kinds import FORWARDED_RECORD, RECOVERY_RECORD, REJECTED_RECORD
from gateway.journal.record import BadLine, decode_line
from gateway.journal.recovery import DAMAGED, is_hole
from gateway.journal.segments import Segment, iter_lines

# Records that say how far forwarding went (gateway.forwarding): body "through".
_PROGRESS_KINDS = frozenset({FORWARDED_RECORD.encode(), REJECTED_RECORD.encode()})
# Kinds whose event (gateway.cloud.events.to_event) does not depend on the body:
# always one, or never one. Any other kind is decoded and asked.
_EVENT_KINDS_B = frozenset(kind.encode() for kind in EVENT_KINDS)
_NO_EVENT_KINDS_B = frozenset(kind.encode() for kind in NO_EVENT_KINDS)
_RECOVERY_KIND = RECOVERY_RECORD.encode()
_UTC_ZONE = ZoneInfo("UTC")


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
    return guard("stats", lambda: _stats(args))


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
    segments = journal_segments(args.dir)
    sizes = sum(os.stat(segment.path).st_size for segment in segments)
    reader = LineReader("stats", segments)
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
                    head = parse_head(line)
                except BadLine as e:
                    if not is_hole(line):  # a hole: damage set aside, its recovery record counted below
                        reader.offset = offset
                        reader.damage(e.args[0])
                    continue
                key = (head.kind, head.park, head.code)
            combos[key] = combos.get(key, 0) + 1
            last_line = line
            kind = key[0]
            if kind == _RECOVERY_KIND:
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
        say("\n".join(out))
        return 0
    last = parse_head(last_line)
    first = next(LineReader("stats", segments, quiet=True).lines(), (last, b""))[0]
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
        f"records: {sum(kinds.values())}, from #{first.seq} ({short_ts(readable(first.ts))}) "
        f"to #{last.seq} ({short_ts(readable(last.ts))})"
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
            where = f", the oldest #{oldest.seq} ({short_ts(readable(oldest.ts))})" if oldest else ""
            out.append(f"backlog: {backlog} events not forwarded{where}")
            out += _table("lag by park (events not forwarded)", lag)
    if set_aside:
        out.append(
            f"damage set aside: {set_aside} times, {lost} records lost "
            f"(recovery records; cpmictl log verify {args.dir} names them)"
        )
    if reader.damaged:
        out.append(f"damaged lines skipped: {reader.damaged} (cpmictl log verify {args.dir})")
    say("\n".join(out))
    return 0


def _backlog(
    segments: list[Segment],
    before: list[_Counts],
    through: int,
    last_seq: int,
    events: int,
    event_parks: dict[bytes, int],
) -> tuple[int, dict[bytes, int], Head | None]:
    """The events after ``through``: how many, per park, and the oldest."""
    if events == 0 or through >= last_seq:
        return 0, {}, None
    holder = 0
    for index, segment in enumerate(segments):
        if segment.first_seq > through + 1:
            break
        holder = index
    done_parks = before[holder].events_per_park()
    oldest: Head | None = None
    match = _SEQ_KIND_PARK.match
    for segment in segments[holder:]:
        for _, line in iter_lines(segment.path):
            found = match(line)
            if found is None:
                try:
                    head = parse_head(line)
                except BadLine:
                    continue  # damage (warned about in the first pass), or a write in progress
                seq, kind, park = head.seq, head.kind, head.park
            else:
                seq, kind, park = int(found[1]), found[2], found[3]
            if seq > last_seq:
                break
            if _is_event(kind, line):
                if seq > through:
                    oldest = parse_head(line)
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
    rows = sorted(
        ((readable(name) or '""', n) for name, n in counts.items()), key=lambda row: (-row[1], row[0])
    )
    name_width = max(len(name) for name, _ in rows)
    count_width = max(len(str(n)) for _, n in rows)
    return [f"{title}:"] + [f"  {name:<{name_width}}  {n:>{count_width}}" for name, n in rows]

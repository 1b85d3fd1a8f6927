"""``cpmictl log show SEQ``: one record, whole, pretty-printed (or where damage took it)."""

from __future__ import annotations

import argparse
import json
import re

from gateway.cli.log.common import Failure, guard, journal_segments, printable, say
from gateway.journal.kinds import RECOVERY_RECORD
from gateway.journal.record import BadLine, decode_line
from gateway.journal.recovery import DAMAGED
from gateway.journal.segments import Segment, iter_lines, line_seq, segments_from


def run_show(args: argparse.Namespace) -> int:
    """``cpmictl log show SEQ``: the whole record, pretty-printed; exit 1 if there is none."""
    return guard("show", lambda: _show(args))


def _show(args: argparse.Namespace) -> int:
    segments = journal_segments(args.dir)
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
                raise Failure(
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
            say("\n".join(printable(each) for each in lines))
            return 0
    lost_in = _set_aside_by(segments, seq)
    if lost_in is not None:
        raise Failure(f"record #{seq} was set aside as damaged: {lost_in}")
    raise Failure(f"no record #{seq} in {args.dir}")


_RECOVERY_HEAD = re.compile(
    rb'\{"seq":[1-9][0-9]*,"ts":"[^"\\]*","kind":"' + re.escape(RECOVERY_RECORD.encode()) + rb'",'
)


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

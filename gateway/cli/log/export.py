"""``cpmictl log export``: the raw lines (JSON Lines) of the records that match."""

from __future__ import annotations

import argparse
import sys
from typing import IO

from gateway.cli.log.common import Filter, LineReader, byte_bar, guard, journal_segments, write_out
from gateway.journal.segments import segments_from


def run_export(args: argparse.Namespace) -> int:
    """``cpmictl log export``: the raw lines of the matching records, JSON Lines."""
    return guard("export", lambda: _export(args))


def _export(args: argparse.Namespace) -> int:
    segments = journal_segments(args.dir)
    flt = Filter.from_args(args)
    reader = LineReader("export", segments)
    output: IO[bytes] | None = open(args.output, "wb") if args.output else None
    write = output.write if output is not None else write_out
    count = 0
    bar = byte_bar(args, segments_from(segments, flt.first_seq), "export")
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

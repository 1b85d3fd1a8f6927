"""``cpmictl log replay``: the events of a range of records, sent again with their original ids.

The batches go out through ``gateway.cli.log.poster``, a blocking poster of its own.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from attrs import frozen
from nacl.signing import SigningKey

from gateway.cli import progress as progress_bars
from gateway.cli.log.common import Failure, LineReader, Usage, guard, journal_segments, utf8, whole_end
from gateway.cli.log.poster import no_redirect_opener, post_batch
from gateway.cloud.events import BATCH_CONTENT_TYPE, to_event
from gateway.cloud.httpsig import sign_request
from gateway.config import ConfigError, find_config, parse
from gateway.config import load as load_config
from gateway.journal.record import dumps_compact
from gateway.journal.segments import Segment, line_seq
from gateway.keys import KeyFileError, load_signing_key

DEFAULT_BATCH = 100


def run_replay(args: argparse.Namespace, *, now: Callable[[], float] = time.time) -> int:
    """``cpmictl log replay``: send the events of a range of records again; ``now`` dates the signatures."""
    return guard("replay", lambda: _replay(args, now))


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
        raise Failure(f"{e}{hint}") from None
    try:
        key = load_signing_key(args.key or config.gateway.signing_key)
    except KeyFileError as e:
        raise Failure(str(e)) from None
    return _Identity(
        args.gateway_id or config.gateway.id,
        config.gateway.timezone,
        key,
        config.cloud.batch_max_bytes,
        config.cloud.request_timeout,
    )


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
        raise Usage(f"--to #{args.to_seq} is before --from #{args.from_seq}")
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).netloc:
        raise Usage(f"--url: not an http(s) URL: {args.url!r}")
    segments = journal_segments(args.dir)
    who = _identity(args)
    parks = frozenset(utf8(park) for park in args.park or ())
    reader = LineReader("replay", segments)
    last = args.to_seq if args.to_seq is not None else _last_seq(segments)
    progress = _ReplayProgress(args, args.from_seq, last if last is not None else args.from_seq)
    opener = no_redirect_opener()
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
        problem = post_batch(opener, args.url, body, headers, who.timeout)
        if problem is not None:
            progress.end()
            raise Failure(
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
        end = whole_end(segment.path)
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

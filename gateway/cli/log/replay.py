"""``cpmictl log replay``: the events of a range of records, sent again with their original ids.

The batches go out through the cloud sink's own code (:class:`gateway.cloud.forwarder.CloudEventsSink`
on :class:`gateway.cloud.post.CloudClient`: treq, no redirects, HTTP message signatures),
run on a reactor of the verb's own until the last batch is answered or one is not delivered.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from attrs import evolve, frozen
from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorCore, IReactorTime
from twisted.internet.selectreactor import SelectReactor
from twisted.python.failure import Failure as TwistedFailure

from gateway.cli import progress as progress_bars
from gateway.cli.log.common import (
    Failure,
    LineReader,
    Usage,
    guard,
    journal_segments,
    printable,
    utf8,
    whole_end,
)
from gateway.cloud.forwarder import CloudEventsSink
from gateway.cloud.post import CloudClient
from gateway.config import ConfigError, find_config, parse
from gateway.config import load as load_config
from gateway.interfaces import Entry, Outcome, Split
from gateway.journal.segments import Segment, line_seq
from gateway.keys import KeyFileError, load_signing_key
from gateway.settings import CloudConfig

DEFAULT_BATCH = 100
ANSWER_EXCERPT = 300
"""How much of a refusing answer ``replay`` shows."""

_T = TypeVar("_T")


def run_replay(args: argparse.Namespace, *, reactor: Any = None) -> int:
    """``cpmictl log replay``: send the events of a range of records again.

    It runs on ``reactor`` (a reactor that is not running yet), by default a new one of
    its own, so the verb runs whole wherever it is called from (a test, a script).
    """
    return guard("replay", lambda: _replay(args, reactor if reactor is not None else SelectReactor()))


@frozen
class _Identity:
    """Who replays: the gateway id and zone the events are made with, the key they are signed
    with, and the cloud settings they are sent with (batch bytes, request timeout)."""

    gateway_id: str
    zone: ZoneInfo
    key: SigningKey
    cloud: CloudConfig


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
        evolve(config.cloud, sink="cloudevents", url=args.url),
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


def _replay(args: argparse.Namespace, reactor: Any) -> int:
    if args.to_seq is not None and args.to_seq < args.from_seq:
        raise Usage(f"--to #{args.to_seq} is before --from #{args.from_seq}")
    if urlsplit(args.url).scheme not in ("http", "https") or not urlsplit(args.url).netloc:
        raise Usage(f"--url: not an http(s) URL: {args.url!r}")
    segments = journal_segments(args.dir)
    who = _identity(args)
    last = args.to_seq if args.to_seq is not None else _last_seq(segments)
    progress = _ReplayProgress(args, args.from_seq, last if last is not None else args.from_seq)
    sink = CloudEventsSink(
        http=CloudClient(reactor, connections=1, persistent=False),  # one try per batch
        clock=reactor,
        settings=who.cloud,
        gateway_id=who.gateway_id,
        zone=who.zone,
        signing_key=who.key,
    )
    replay = _Replay(args, who, sink, reactor, progress)
    try:
        run_to_end(reactor, replay.run)
    except Interrupted:
        raise Failure(
            f"interrupted; {replay.sent} events were sent; resume with --from {replay.resume_from}"
        ) from None
    finally:
        progress.end()
    span = (
        f"#{args.from_seq} to #{replay.read_to}"
        if replay.read_to is not None
        else f"from #{args.from_seq}: none there"
    )
    print(
        f"replayed {replay.sent} events in {replay.batches} batches to {args.url} (records {span}; "
        f"{replay.skipped} records with no event left out)",
        file=sys.stderr,
    )
    return 0


class _Replay:
    """The records read in order, their events batched and delivered one batch at a time."""

    def __init__(
        self,
        args: argparse.Namespace,
        who: _Identity,
        sink: CloudEventsSink,
        clock: IReactorTime,
        progress: _ReplayProgress,
    ) -> None:
        self._args = args
        self._max_bytes = who.cloud.batch_max_bytes
        self._sink = sink
        self._clock = clock
        self._progress = progress
        self.sent = self.batches = self.skipped = 0
        self.read_to: int | None = None
        # Where a replay stopped early goes on: the first event not yet delivered.
        self.resume_from: int = args.from_seq

    async def run(self) -> None:
        args = self._args
        parks = frozenset(utf8(park) for park in args.park or ())
        reader = LineReader("replay", journal_segments(args.dir))
        batch: list[Entry] = []
        size = 0
        for head, line in reader.lines(args.from_seq):
            if args.to_seq is not None and head.seq > args.to_seq:
                break
            self.read_to = head.seq
            if parks and head.park not in parks:
                continue
            record = reader.decode(line)
            entries = [] if record is None else self._sink.entries([record], self._clock.seconds())
            if not entries:
                self.skipped += 1
                continue
            [entry] = entries
            if batch and (len(batch) >= args.batch or size + len(entry.body) > self._max_bytes):
                await self._send(batch)
                batch, size = [], 0
            batch.append(entry)
            size += len(entry.body)
            if len(batch) == 1:
                self.resume_from = entry.seq
        if batch:
            await self._send(batch)

    async def _send(self, batch: list[Entry]) -> None:
        """Deliver one batch, or stop the replay saying where to resume."""
        outcomes = await self._sink.deliver(batch)
        problem = _problem(self._args.url, outcomes)
        if problem is not None:
            raise Failure(
                f"{problem} for events #{batch[0].seq} to #{batch[-1].seq}; {self.sent} events were sent "
                f"before them; resume with --from {batch[0].seq}"
            )
        self.sent += len(batch)
        self.batches += 1
        self._progress.update(batch[-1].seq, self.sent, self.batches)


def _problem(url: str, outcomes: Any) -> str | None:
    """None when the cloud took the whole batch (2xx), else what went wrong, in a few words.

    Replay sends each batch once: what the engine would retry (a 5xx, no answer) or
    split (a 4xx) stops it here.
    """
    if isinstance(outcomes, Split):
        status, answer = outcomes.status, outcomes.answer
    else:
        first: Outcome = outcomes[0]
        if first.done and not first.refused:
            return None
        if first.status is None:
            return f"no answer from {url} ({first.reason})"
        status, answer = first.status, first.answer
    text = " ".join(answer.decode("utf-8", "replace").split())[:ANSWER_EXCERPT]
    return f"HTTP {status} from {url}: {printable(text) or '(no body)'}"


class Interrupted(Exception):
    """The reactor stopped (Ctrl-C, SIGTERM) before the work had finished."""


def run_to_end(reactor: IReactorCore, main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``reactor`` until ``main()`` has finished; its result, or its exception raised here.

    What ``twisted.internet.task.react`` does, but handing the outcome back to the
    caller instead of exiting the process. Ctrl-C (or SIGTERM) stops the reactor
    first: that raises :class:`Interrupted`. The reactor installs no signal handling
    of its own: Twisted's would take SIGCHLD and the wake-up fd from any other reactor
    of the process (a test's) and leave them unset; only SIGINT and SIGTERM are
    taken, for the run, and given back.
    """
    outcome: list[_T | TwistedFailure] = []

    def begin() -> None:
        Deferred.fromCoroutine(main()).addBoth(finished)

    def finished(result: _T | TwistedFailure) -> None:
        outcome.append(result)
        if reactor.running:
            reactor.stop()

    def interrupted(signum: int, frame: object) -> None:
        reactor.callFromThread(_stop_if_running, reactor)  # type: ignore[attr-defined]

    reactor.callWhenRunning(begin)
    previous: dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, interrupted)
    try:
        reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    finally:
        for taken, handler in previous.items():
            signal.signal(taken, handler)
    if not outcome:
        raise Interrupted()
    result = outcome[0]
    if isinstance(result, TwistedFailure):
        result.raiseException()
    return result


def _stop_if_running(reactor: IReactorCore) -> None:
    if reactor.running:
        reactor.stop()


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

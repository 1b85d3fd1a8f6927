"""What the simulated lots counted: messages sent, acknowledged, retried, refused, and latencies.

Latencies go into a histogram of 2 % wide buckets, so the percentiles of a
15-day soak cost the same memory as those of a ten-second run.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable

from attrs import asdict, frozen

__all__ = ["LatencyHistogram", "Stats", "Summary"]

_RATIO = 1.02
_LOG_RATIO = math.log(_RATIO)
_FLOOR_MS = 0.01
_REASONS_KEPT = 50


class LatencyHistogram:
    """Latencies in buckets 2 % wide; percentiles read to within that."""

    def __init__(self) -> None:
        self._buckets: Counter[int] = Counter()
        self.count = 0

    def add(self, milliseconds: float) -> None:
        """Count one latency."""
        self._buckets[math.floor(math.log(max(milliseconds, _FLOOR_MS) / _FLOOR_MS) / _LOG_RATIO)] += 1
        self.count += 1

    def percentile(self, fraction: float) -> float:
        """The latency below which `fraction` of those counted fall, in ms (0 when none)."""
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(fraction * self.count))
        seen = 0
        for bucket in sorted(self._buckets):
            seen += self._buckets[bucket]
            if seen >= rank:
                # The bucket's geometric middle.
                return round(_FLOOR_MS * _RATIO ** (bucket + 0.5), 1)
        return 0.0  # not reached


@frozen
class Summary:
    """The line `cpmictl lot simulate` ends with (the issue's keys, in its order)."""

    lots: int
    sent: int
    acked: int
    retried: int
    errors: int
    p50_ms: float
    p99_ms: float
    downlinks_replied: int

    def line(self) -> str:
        """The summary as one line of JSON."""
        return json.dumps(asdict(self), separators=(",", ":"))


class Stats:
    """Counters every simulated lot adds to.

    `sent` counts messages (not attempts) sent at least once, `acked` those
    answered 0000, `retried` the attempts after a failure, `errors` the
    messages refused for good (and, at the end, those never acknowledged),
    `superseded` the carIn and carOut uploads that a backfill replaced.
    """

    def __init__(self) -> None:
        self.sent = 0
        self.acked = 0
        self.retried = 0
        self.errors = 0
        self.superseded = 0
        self.backfilled = 0
        self.transport_failures = 0
        self.latency = LatencyHistogram()
        self.window = LatencyHistogram()
        self.reasons: Counter[str] = Counter()
        # Called with (park, code, oprNum) of each message answered 0000.
        self.acked_listeners: list[Callable[[str, str, str], None]] = []

    def message_sent(self, retry: bool) -> None:
        """A message was sent: for the first time, or again after a failure."""
        if retry:
            self.retried += 1
        else:
            self.sent += 1

    def answered(self, seconds: float) -> None:
        """An HTTP exchange got a response envelope after `seconds`."""
        milliseconds = seconds * 1000
        self.latency.add(milliseconds)
        self.window.add(milliseconds)

    def message_acked(self, park: str, code: str, opr: str) -> None:
        """A message was answered 0000."""
        self.acked += 1
        if code == "backfill":
            self.backfilled += 1
        for listener in self.acked_listeners:
            listener(park, code, opr)

    def error(self, reason: str, count: int = 1) -> None:
        """`count` messages will never be acknowledged, for `reason`."""
        self.errors += count
        if reason in self.reasons or len(self.reasons) < _REASONS_KEPT:
            self.reasons[reason] += count

    def new_window(self) -> LatencyHistogram:
        """Start a new window of latencies (soak summaries); the last one is returned."""
        window, self.window = self.window, LatencyHistogram()
        return window

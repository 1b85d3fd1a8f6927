"""The status page's data (`GET /v1/status` on the api endpoint) and the page itself (`GET /`).

`StatusReport` reads everything when asked, from collaborators passed in: the lots'
connection states, the sync backlog, forwarding progress, the journal's position,
readiness, the recent command latencies and the recent rejections. Nothing is kept
here but `CommandLatency`, a window of the last commands' durations that the command
API feeds as it answers. The configuration is read through a callable on each report,
since a reload replaces it.

The page is static (`status.html`, `status.js`, `status.css`, shipped as package
data): it holds no data, asks for a token and fetches `/v1/status` itself.
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from importlib.resources import files
from typing import Protocol

from attrs import Factory, frozen
from twisted.internet.interfaces import IReactorTime

from gateway.interfaces import JournalPosition, LotState, NatsState
from gateway.logs import ECHO_CHARS, REASON_CHARS, clip
from gateway.protocol.times import utc_rfc3339
from gateway.settings import Config

__all__ = [
    "LATENCY_WINDOW",
    "LOG_ONLY_NOTE",
    "MAX_REJECTIONS",
    "PAGE_ASSETS",
    "CommandLatency",
    "ForwardingProgress",
    "LotStates",
    "PageAsset",
    "StatusReport",
    "page_assets",
    "rfc3339",
]

LATENCY_WINDOW = 1000
MAX_REJECTIONS = 50
LOG_ONLY_NOTE = "log-only: the journal is the sink"
# The keys a rejection shows; anything else the ring buffer keeps is left out.
REJECTION_KEYS = ("event", "park", "code", "result", "reason")
# The most characters of each shown (ECHO_CHARS for the others): a reason names a field and why.
_REJECTION_CHARS = {"reason": REASON_CHARS}

JSON = dict[str, object]


def rfc3339(seconds: float | None) -> str | None:
    """Epoch seconds as RFC 3339 UTC with milliseconds (`2026-11-18T11:06:40.000Z`); None stays None."""
    return None if seconds is None else utc_rfc3339(seconds)


class LotStates(Protocol):
    """The lots' connection states (`gateway.dialects.host.LotRouter`)."""

    def states(self) -> Sequence[LotState]:
        """The state of the configured lots."""


class ForwardingProgress(Protocol):
    """How far forwarding to the cloud is behind (`gateway.cloud.forwarder.Forwarder`)."""

    @property
    def backlog(self) -> int:
        """Durable records not yet forwarded."""

    def lag(self, now: float) -> float | None:
        """Seconds the oldest unforwarded record has waited at `now`; None when nothing waits."""


def _milliseconds(seconds: float) -> float:
    return round(seconds * 1000.0, 1)


def _percentile(ordered: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of an ascending, non-empty sequence."""
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def _summary(durations: list[float]) -> JSON:
    if not durations:
        return {"count": 0, "p50Ms": None, "p90Ms": None, "p99Ms": None, "maxMs": None}
    durations.sort()
    return {
        "count": len(durations),
        "p50Ms": _milliseconds(_percentile(durations, 0.50)),
        "p90Ms": _milliseconds(_percentile(durations, 0.90)),
        "p99Ms": _milliseconds(_percentile(durations, 0.99)),
        "maxMs": _milliseconds(durations[-1]),
    }


class CommandLatency:
    """The durations of the last `window` commands answered by the API, by outcome.

    A status page wants "how slow are commands now", which a Prometheus histogram
    since start-up cannot say; a window of the last thousand answers can, for the
    cost of sorting a thousand floats when the page asks.
    """

    def __init__(self, window: int = LATENCY_WINDOW) -> None:
        if window < 1:
            raise ValueError("the window must hold at least one command")
        self.window = window
        self.total = 0
        self._recent: deque[tuple[str, float]] = deque(maxlen=window)

    def record(self, outcome: str, seconds: float) -> None:
        """Note one answered command: its outcome (`ok`, `not_connected`, `deadline`, ...) and duration."""
        self.total += 1
        self._recent.append((outcome, max(0.0, seconds)))

    def summary(self) -> JSON:
        """Count, p50, p90, p99 and max (milliseconds) over the window, overall and by outcome."""
        every: list[float] = []
        outcomes: dict[str, list[float]] = {}
        for outcome, seconds in self._recent:
            every.append(seconds)
            outcomes.setdefault(outcome, []).append(seconds)
        return {
            "window": self.window,
            "total": self.total,
            **_summary(every),
            "byOutcome": {outcome: _summary(durations) for outcome, durations in sorted(outcomes.items())},
        }


def _no_rejections() -> Sequence[Mapping[str, object]]:
    return ()


def _epoch(value: object) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _scalar(value: object, limit: int = ECHO_CHARS) -> object:
    """A JSON scalar as it is, text clipped to `limit` characters; anything else as its clipped text.

    Rejections hold what peers sent: clipped here too, so the report stays
    small whatever the list it is given holds (CONTRACT §4).
    """
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value if -(2**63) <= value < 2**64 else clip(value, limit)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    return clip(value, limit)


def _latest_rejections(rejections: Iterable[Mapping[str, object]]) -> list[JSON]:
    """The newest `MAX_REJECTIONS` first; rejections at the same time keep the order given."""
    newest = heapq.nlargest(MAX_REJECTIONS, rejections, key=lambda item: _epoch(item.get("time")) or 0.0)
    return [
        {
            "time": rfc3339(_epoch(item.get("time"))),
            **{key: _scalar(item.get(key), _REJECTION_CHARS.get(key, ECHO_CHARS)) for key in REJECTION_KEYS},
        }
        for item in newest
    ]


def _never_seen(park: str) -> LotState:
    """A configured lot the downlink side does not report (not connected since start-up)."""
    return LotState(park=park, connected=False, since=None, last_seen=None, peer="")


@frozen(kw_only=True)
class StatusReport:
    """Builds the status JSON from the running gateway's parts, each time it is asked.

    `config` returns the running configuration (a reload replaces it); `backlog(park)`
    is the sync queue's `pending`; `forwarding` is None with the log-only sink;
    `rejections` returns the recent rejection events (dicts with `time` in epoch
    seconds, `event`, `park`, `code`, `result`, `reason`), in any order (newest first,
    as `gateway.logs.RecentRejections.recent` gives them, keeps ties in that order).
    """

    config: Callable[[], Config]
    clock: IReactorTime
    started: float
    lots: LotStates
    backlog: Callable[[str], int]
    journal: JournalPosition
    ready: Callable[[], tuple[bool, str]]
    forwarding: ForwardingProgress | None = None
    rejections: Callable[[], Iterable[Mapping[str, object]]] = _no_rejections
    latency: CommandLatency = Factory(CommandLatency)
    nats: NatsState | None = None
    forwards: Sequence[tuple[str, str, ForwardingProgress]] = ()
    """The [[forward]] engines: name, sink, progress."""

    def report(self) -> JSON:
        """The status as JSON-ready data."""
        config = self.config()
        now = self.clock.seconds()
        ready, reason = self.ready()
        return {
            "gateway": {
                "id": config.gateway.id,
                "now": rfc3339(now),
                "started": rfc3339(self.started),
                "uptimeSeconds": round(max(0.0, now - self.started), 3),
            },
            "ready": {"ok": ready, "reason": reason},
            "journal": {
                "lastSeq": self.journal.last_seq,
                "committedSeq": self.journal.committed_seq,
                "problem": self.journal.problem,
            },
            "forwarding": self._forwarding(config, now),
            "forwards": [self._forward(name, sink, progress, now) for name, sink, progress in self.forwards],
            "nats": None
            if self.nats is None
            else {
                "state": self.nats.state,
                "reconnects": self.nats.reconnects,
                "error": self.nats.last_error,
            },
            "commands": self.latency.summary(),
            "lots": self._lots(config),
            "rejections": _latest_rejections(self.rejections()),
        }

    def _forwarding(self, config: Config, now: float) -> JSON:
        if self.forwarding is None:
            sink = config.cloud.sink
            note = LOG_ONLY_NOTE if sink == "log-only" else f"{sink}: forwarding progress is not reported"
            return {"sink": sink, "backlog": None, "lagSeconds": None, "note": note}
        backlog = self.forwarding.backlog
        lag = self.forwarding.lag(now)
        return {
            "sink": config.cloud.sink,
            "backlog": backlog,
            "lagSeconds": None if lag is None else round(max(0.0, lag), 3),
            "note": None,
        }

    @staticmethod
    def _forward(name: str, sink: str, progress: ForwardingProgress, now: float) -> JSON:
        lag = progress.lag(now)
        return {
            "name": name,
            "sink": sink,
            "backlog": progress.backlog,
            "lagSeconds": None if lag is None else round(max(0.0, lag), 3),
        }

    def _lots(self, config: Config) -> JSON:
        """Every configured lot, offline ones first, then by park code: one pass over each list."""
        known = {state.park: state for state in self.lots.states()}
        items: list[tuple[bool, str, JSON]] = []
        for lot in config.lots:
            state = known.get(lot.park_code) or _never_seen(lot.park_code)
            items.append(
                (
                    state.connected,
                    lot.park_code,
                    {
                        "parkCode": lot.park_code,
                        "dialect": lot.dialect,
                        "connected": state.connected,
                        "since": rfc3339(state.since),
                        "lastSeen": rfc3339(state.last_seen),
                        "peer": state.peer,
                        "backlog": self.backlog(lot.park_code),
                    },
                )
            )
        items.sort(key=lambda item: (item[0], item[1]))
        online = sum(1 for connected, _, _ in items if connected)
        return {"online": online, "offline": len(items) - online, "items": [item for _, _, item in items]}


@frozen
class PageAsset:
    """One static file of the status page, as served."""

    content_type: bytes
    body: bytes


# The route each file is served on, its package resource and its content type.
PAGE_ASSETS: tuple[tuple[str, str, bytes], ...] = (
    ("/", "status.html", b"text/html; charset=utf-8"),
    ("/status.js", "status.js", b"text/javascript; charset=utf-8"),
    ("/status.css", "status.css", b"text/css; charset=utf-8"),
)


def page_assets() -> dict[str, PageAsset]:
    """The status page's files, read from the package (they are package data, not code)."""
    package = files(__package__ or "gateway.cloud")
    return {
        route: PageAsset(content_type, package.joinpath(name).read_bytes())
        for route, name, content_type in PAGE_ASSETS
    }

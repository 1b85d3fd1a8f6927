"""The gateway's own Prometheus metrics (CONTRACT §6: `GET /metrics` on the api endpoint).

`GatewayCollector` reads the downlink counters, the lots' connection counts, the
journal's position and the sync queue depths when Prometheus scrapes, not when
things happen: the downlink keeps plain integers in a dict and the hot path pays
nothing for being measured. A scrape costs the same with 10 lots configured as
with 10,000: it counts bound lots and lists only the lots with sync entries
queued, never every configured lot (one series per lot held the reactor 0.1 to
0.3 s at 10,000 lots).

The one thing measured as it happens is the journal's fsync latency:
`observe_fsync` hooks a histogram into `Journal.fsync_observers`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.interfaces import JournalPosition, NatsState


class DownlinkCounts(Protocol):
    """What the metrics read of the lots' side (`gateway.dialects.host.LotRouter`)."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    def connected_count(self) -> int:
        """How many configured lots have a bound connection now."""

    def configured_count(self) -> int:
        """How many lots are configured."""

    def is_configured(self, park: str) -> bool:
        """Whether `park` is a configured lot's."""


class SyncQueues(Protocol):
    """What the metrics read of the sync queue (`gateway.lots.sync.SyncQueue`, or `ClusterSync`)."""

    def depths(self) -> Mapping[str, int]:
        """The entries not yet done of each lot that has any (lots with none are left out)."""


class FsyncObservable(Protocol):
    """What `observe_fsync` needs of `gateway.journal.writer.Journal`."""

    @property
    def fsync_observers(self) -> list[Callable[[float], None]]: ...


# fsync takes ~50 us on a fast NVMe with a write cache, ms on disks, up to a second when stuck.
FSYNC_BUCKETS: tuple[float, ...] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
)

# (metric name without `_total`, key in Downlinks.counters, help text)
DOWNLINK_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("cpmi_downlink_frames_in", "frames_in", "Frames received from lots on the downlink."),
    ("cpmi_downlink_frames_out", "frames_out", "Frames sent to lots on the downlink."),
    (
        "cpmi_downlink_garbage_bytes",
        "garbage_bytes",
        "Bytes received outside a frame on the downlink, skipped.",
    ),
    (
        "cpmi_downlink_bad_frames",
        "bad_frames",
        "Downlink frames that were not a valid request or response envelope.",
    ),
    ("cpmi_downlink_connections", "connections", "TCP connections lots opened to the downlink."),
    ("cpmi_downlink_binds", "binds", "Downlink connections bound to a lot (login or heartbeat)."),
    (
        "cpmi_downlink_bind_failures",
        "bind_failures",
        "Downlink connections refused a bind (wrong password, token or signature; nothing bound first).",
    ),
    (
        "cpmi_downlink_replaced",
        "replaced",
        "Bound downlink connections replaced by a newer connection of the same lot.",
    ),
    (
        "cpmi_downlink_closed_unbound",
        "closed_unbound",
        "Downlink connections closed for not binding within tcp.bind_timeout.",
    ),
    (
        "cpmi_downlink_closed_unbound_bytes",
        "closed_unbound_bytes",
        "Downlink connections closed for sending more than tcp.max_unbound_bytes before binding.",
    ),
    (
        "cpmi_downlink_closed_token",
        "closed_token",
        "Bound downlink connections closed (9000) because their token was replaced, revoked or expired.",
    ),
    (
        "cpmi_downlink_bad_signatures",
        "bad_signatures",
        "Downlink frames whose signature did not match.",
    ),
    ("cpmi_downlink_heartbeats_in", "heartbeats_in", "Heartbeats received from lots."),
    ("cpmi_downlink_heartbeats_out", "heartbeats_out", "Heartbeats the gateway sent to quiet lots."),
    (
        "cpmi_downlink_closed_idle",
        "closed_idle",
        "Bound downlink connections closed by the read or all idle timer.",
    ),
    ("cpmi_downlink_commands", "commands", "Commands sent to lots."),
    (
        "cpmi_downlink_command_timeouts",
        "command_timeouts",
        "Commands with no REPLY from the lot before their deadline.",
    ),
    (
        "cpmi_downlink_late_replies",
        "late_replies",
        "REPLYs that came after their command's deadline had passed.",
    ),
    (
        "cpmi_downlink_unmatched_replies",
        "unmatched_replies",
        "REPLYs matching no command sent (unknown oprNum).",
    ),
)


class GatewayCollector(Collector):
    """A custom collector: every scrape reads the current counts, nothing is kept here."""

    def __init__(
        self, downlinks: DownlinkCounts, journal: JournalPosition, sync: SyncQueues | None = None
    ) -> None:
        self._downlinks = downlinks
        self._journal = journal
        self._sync = sync

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values, so registration can check for clashes."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        downlinks = self._downlinks
        counters = {} if describing else downlinks.counters

        def gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
            if describing:
                return GaugeMetricFamily(name, documentation)
            return GaugeMetricFamily(name, documentation, value=value)

        yield gauge(
            "cpmi_lots_connected",
            "Configured lots whose downlink connection is bound now.",
            0 if describing else downlinks.connected_count(),
        )
        configured = 0 if describing else downlinks.configured_count()
        yield gauge("cpmi_lots_configured", "Lots in the configuration.", configured)
        if not describing:
            # Read once: the journal may move between two property reads.
            last_seq, committed_seq, problem, quarantined = (
                self._journal.last_seq,
                self._journal.committed_seq,
                self._journal.problem,
                len(self._journal.quarantined),
            )
        else:
            last_seq = committed_seq = quarantined = 0
            problem = None
        yield gauge(
            "cpmi_journal_last_seq",
            "The seq of the last record appended to the journal (it may still be in flight).",
            last_seq,
        )
        yield gauge(
            "cpmi_journal_committed_seq",
            "The seq of the last journal record whose append succeeded.",
            committed_seq,
        )
        yield gauge(
            "cpmi_journal_ok",
            "1 while the journal can write, 0 when appends fail (see /readyz for why).",
            0 if problem else 1,
        )
        yield gauge(
            "cpmi_journal_quarantined_segments",
            "Damaged journal data set aside since start (see /readyz and the quarantine records).",
            quarantined,
        )
        for name, key, documentation in DOWNLINK_COUNTERS:
            if describing:
                yield CounterMetricFamily(name, documentation)
            else:
                yield CounterMetricFamily(name, documentation, value=counters.get(key, 0))
        if self._sync is not None:
            depth = GaugeMetricFamily(
                "cpmi_sync_queue_depth",
                "Sync entries not yet delivered to the lot (the one in flight included); "
                "only lots with entries have a series.",
                labels=["park"],
            )
            queued = 0
            if not describing:
                is_configured = downlinks.is_configured
                for park, count in sorted(self._sync.depths().items()):
                    if count > 0 and is_configured(park):
                        depth.add_metric([park], count)
                        queued += count
            yield depth
            yield gauge(
                "cpmi_sync_queued_entries",
                "Sync entries not yet delivered, all configured lots together (the one in flight included).",
                queued,
            )


def register(
    registry: CollectorRegistry,
    downlinks: DownlinkCounts,
    journal: JournalPosition,
    sync: SyncQueues | None = None,
) -> GatewayCollector:
    """
    Register the gateway's metrics on `registry` (the one `/metrics` serves) and return the collector.

    With `sync`, `cpmi_sync_queue_depth{park}` shows the entries queued for each configured lot
    that has any, and `cpmi_sync_queued_entries` their sum (0 when nothing is queued).
    """
    collector = GatewayCollector(downlinks, journal, sync)
    registry.register(collector)
    return collector


def observe_fsync(registry: CollectorRegistry, journal: FsyncObservable) -> Histogram:
    """Register `cpmi_journal_fsync_seconds` on `registry`, fed by every fsync of the journal."""
    histogram = Histogram(
        "cpmi_journal_fsync_seconds",
        "Seconds each journal fsync took (a batch's, or the interval timer's).",
        buckets=FSYNC_BUCKETS,
        registry=registry,
    )
    journal.fsync_observers.append(histogram.observe)
    return histogram


class ForwardingState(Protocol):
    """What the metrics read of `gateway.cloud.forwarder.Forwarder`."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def backlog(self) -> int: ...

    @property
    def done_through(self) -> int: ...


# (metric name without `_total`, key in Forwarder.counters, help text)
FORWARD_COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("cpmi_forward_events", "events", "Events the cloud acknowledged."),
    ("cpmi_forward_batches", "batches", "Batches the cloud acknowledged."),
    (
        "cpmi_forward_retries",
        "retries",
        "Batches sent again after a 5xx, 408, 429, timeout or network error.",
    ),
    ("cpmi_forward_rejected", "rejected", "Events the cloud refused with a 4xx (journaled as rejected)."),
)


class ForwarderCollector(Collector):
    """The forwarder's counters and backlog, read at each scrape."""

    def __init__(self, forwarder: ForwardingState) -> None:
        self._forwarder = forwarder

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        counters = {} if describing else dict(self._forwarder.counters)
        for name, key, documentation in FORWARD_COUNTERS:
            if describing:
                yield CounterMetricFamily(name, documentation)
            else:
                yield CounterMetricFamily(name, documentation, value=counters.get(key, 0))
        gauges = (
            (
                "cpmi_forward_backlog_records",
                "Durable journal records not yet forwarded (events and other records alike).",
                0 if describing else self._forwarder.backlog,
            ),
            (
                "cpmi_forward_done_seq",
                "Every journal record up to this seq is forwarded, rejected or no event.",
                0 if describing else self._forwarder.done_through,
            ),
        )
        for name, documentation, value in gauges:
            if describing:
                yield GaugeMetricFamily(name, documentation)
            else:
                yield GaugeMetricFamily(name, documentation, value=value)


class ForwardsCollector(Collector):
    """The [[forward]] engines' counters and backlogs, one series per forward (label ``sink``)."""

    def __init__(self, forwards: Mapping[str, ForwardingState]) -> None:
        self._forwards = forwards

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        for name, key, documentation in FORWARD_COUNTERS:
            counter = CounterMetricFamily(
                name.replace("cpmi_forward_", "cpmi_forward_sink_"),
                f"[[forward]]: {documentation}",
                labels=["sink"],
            )
            if not describing:
                for sink, engine in self._forwards.items():
                    counter.add_metric([sink], engine.counters.get(key, 0))
            yield counter
        gauges = (
            (
                "cpmi_forward_sink_backlog_records",
                "[[forward]]: durable journal records not yet forwarded.",
                "b",
            ),
            ("cpmi_forward_sink_done_seq", "[[forward]]: every record up to this seq is done.", "d"),
        )
        for name, documentation, which in gauges:
            gauge = GaugeMetricFamily(name, documentation, labels=["sink"])
            if not describing:
                for sink, engine in self._forwards.items():
                    gauge.add_metric([sink], engine.backlog if which == "b" else engine.done_through)
            yield gauge


def register_forwards(
    registry: CollectorRegistry, forwards: Mapping[str, ForwardingState]
) -> ForwardsCollector:
    """Register the [[forward]] engines' metrics (`cpmi_forward_sink_*{sink="name"}`) on `registry`."""
    collector = ForwardsCollector(forwards)
    registry.register(collector)
    return collector


NATS_STATES = ("connecting", "connected", "reconnecting", "closed")


class NatsCollector(Collector):
    """The NATS connection's state ([cluster]), read at each scrape."""

    def __init__(self, nats: NatsState) -> None:
        self._nats = nats

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        yield GaugeMetricFamily("cpmi_nats_connected", _NATS_CONNECTED_HELP)
        yield GaugeMetricFamily("cpmi_nats_state", _NATS_STATE_HELP, labels=["state"])
        yield CounterMetricFamily("cpmi_nats_reconnects", _NATS_RECONNECTS_HELP)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        state = self._nats.state
        yield GaugeMetricFamily(
            "cpmi_nats_connected", _NATS_CONNECTED_HELP, value=1 if state == "connected" else 0
        )
        family = GaugeMetricFamily("cpmi_nats_state", _NATS_STATE_HELP, labels=["state"])
        for each in NATS_STATES:
            family.add_metric([each], 1 if state == each else 0)
        yield family
        yield CounterMetricFamily("cpmi_nats_reconnects", _NATS_RECONNECTS_HELP, value=self._nats.reconnects)


_NATS_CONNECTED_HELP = "1 while the gateway's NATS connection is up ([cluster])."
_NATS_STATE_HELP = "The NATS connection's state: 1 for the one it is in."
_NATS_RECONNECTS_HELP = "Reconnections of the NATS connection since start."


def register_nats(registry: CollectorRegistry, nats: NatsState) -> NatsCollector:
    """Register `cpmi_nats_connected`, `cpmi_nats_state{state}` and `cpmi_nats_reconnects_total`."""
    collector = NatsCollector(nats)
    registry.register(collector)
    return collector


class NatsCommandCounts(Protocol):
    """What the metrics read of `gateway.cluster.commands.NatsCommands`."""

    @property
    def answered(self) -> Mapping[str, int]: ...

    @property
    def asks(self) -> Mapping[str, int]: ...

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def in_flight(self) -> int: ...


class SyncCounts(Protocol):
    """What the metrics read of `gateway.cluster.sync.ClusterSync` (depths: `cpmi_sync_queue_depth`)."""

    @property
    def counters(self) -> Mapping[str, int]: ...


SYNC_OUTCOMES = ("published", "delivered", "expired", "refused", "retried")


class ClusterCollector(Collector):
    """Commands over NATS and sync over JetStream ([cluster]): plain counters, read at each scrape."""

    def __init__(self, commands: NatsCommandCounts, sync: SyncCounts) -> None:
        self._commands = commands
        self._sync = sync

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, describing: bool) -> Iterator[Metric]:
        commands, sync = self._commands, self._sync
        answered = CounterMetricFamily("cpmi_nats_commands", _NATS_COMMANDS_HELP, labels=["result"])
        asks = CounterMetricFamily("cpmi_nats_asks", _NATS_ASKS_HELP, labels=["outcome"])
        entries = CounterMetricFamily("cpmi_sync_entries", _SYNC_ENTRIES_HELP, labels=["outcome"])
        consumers = CounterMetricFamily("cpmi_sync_consumers", _SYNC_CONSUMERS_HELP, labels=["action"])
        if describing:
            yield from (answered, asks, entries, consumers)
            yield CounterMetricFamily("cpmi_nats_commands_busy", _NATS_BUSY_HELP)
            yield GaugeMetricFamily("cpmi_nats_commands_in_flight", _NATS_IN_FLIGHT_HELP)
            return
        for result, count in sorted(commands.answered.items()):
            answered.add_metric([result], count)
        for outcome, count in commands.asks.items():
            asks.add_metric([outcome], count)
        for outcome in SYNC_OUTCOMES:
            entries.add_metric([outcome], sync.counters.get(outcome, 0))
        for action in ("deleted", "recreated"):
            consumers.add_metric([action], sync.counters.get(f"consumers_{action}", 0))
        yield from (answered, asks, entries, consumers)
        busy = commands.counters.get("refused_busy", 0)
        yield CounterMetricFamily("cpmi_nats_commands_busy", _NATS_BUSY_HELP, value=busy)
        yield GaugeMetricFamily(
            "cpmi_nats_commands_in_flight", _NATS_IN_FLIGHT_HELP, value=commands.in_flight
        )


_NATS_COMMANDS_HELP = "Commands asked over NATS and answered here, by the reply's resultCode."
_NATS_ASKS_HELP = (
    "This gateway's API asking another gateway through NATS: answered, no_responders, timeout, failed."
)
_NATS_BUSY_HELP = "NATS commands answered 9999 at once: the in-flight cap was reached."
_NATS_IN_FLIGHT_HELP = "NATS commands being answered here now."
_SYNC_ENTRIES_HELP = (
    "Sync entries over JetStream: published here, and delivered, expired, refused, retried here."
)
_SYNC_CONSUMERS_HELP = (
    "Lots' sync consumers deleted (lot no longer configured) or made again (deleted by hand)."
)


def register_cluster(
    registry: CollectorRegistry, commands: NatsCommandCounts, sync: SyncCounts
) -> ClusterCollector:
    """Register the [cluster] commands and sync metrics (`cpmi_nats_commands*`, `cpmi_sync_*_total`)."""
    collector = ClusterCollector(commands, sync)
    registry.register(collector)
    return collector


def register_forwarder(registry: CollectorRegistry, forwarder: ForwardingState) -> ForwarderCollector:
    """Register the forwarder's metrics (`cpmi_forward_*`) on `registry`."""
    collector = ForwarderCollector(forwarder)
    registry.register(collector)
    return collector


class FreeSpace(Protocol):
    """What the metrics read of `gateway.journal.space.SpaceWatch`."""

    @property
    def free_bytes(self) -> int | None: ...

    @property
    def low(self) -> bool: ...


class SpaceCollector(Collector):
    """Free space on the journal's file system, as last measured."""

    def __init__(self, space: FreeSpace) -> None:
        self._space = space

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        yield GaugeMetricFamily("cpmi_journal_free_bytes", _FREE_HELP)
        yield GaugeMetricFamily("cpmi_journal_space_low", _LOW_HELP)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now (no free_bytes sample before the first measurement)."""
        free = self._space.free_bytes
        if free is not None:
            yield GaugeMetricFamily("cpmi_journal_free_bytes", _FREE_HELP, value=free)
        yield GaugeMetricFamily("cpmi_journal_space_low", _LOW_HELP, value=1 if self._space.low else 0)


_FREE_HELP = "Free bytes on the journal's file system, as last measured."
_LOW_HELP = "1 while free space is below journal.min_free_bytes and appends are refused."


def register_space(registry: CollectorRegistry, space: FreeSpace) -> SpaceCollector:
    """Register `cpmi_journal_free_bytes` and `cpmi_journal_space_low` on `registry`."""
    collector = SpaceCollector(space)
    registry.register(collector)
    return collector


class UpstreamState(Protocol):
    """What the metrics read of `gateway.upstream.lots.UpstreamLots` (the t002 sink)."""

    def bound(self) -> int: ...

    def totals(self) -> Mapping[str, int]: ...


UPSTREAM_COUNTERS = (
    ("cpmi_upstream_logins", "logins", "Logins of lots at the upstream platform that gave a token."),
    ("cpmi_upstream_login_failures", "login_failures", "Logins upstream refused or not answered."),
    ("cpmi_upstream_requests", "requests", "Requests sent upstream (uplinks, queries; repeats too)."),
    ("cpmi_upstream_held", "held", "Requests held back by the repeat rule (B.2.3.6), once per hold."),
    ("cpmi_upstream_link_losses", "lost", "Bound upstream TCP links that were lost."),
    ("cpmi_upstream_read_idle_closes", "read_idle_closes", "Upstream TCP links closed as silent."),
)
UPSTREAM_ACK_OUTCOMES = ("replied", "not_connected", "deadline", "refused", "failed")


class UpstreamCollector(Collector):
    """The t002 sink's links and counters, read at each scrape."""

    def __init__(self, upstream: UpstreamState) -> None:
        self._upstream = upstream

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        totals = {} if describing else dict(self._upstream.totals())
        bound = "Lots whose TCP link to the upstream is bound now."
        yield GaugeMetricFamily(
            "cpmi_upstream_links_bound", bound, value=None if describing else self._upstream.bound()
        )
        for name, key, documentation in UPSTREAM_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=None if describing else totals.get(key, 0))
        acks = CounterMetricFamily(
            "cpmi_upstream_acks",
            "Downlinks the upstream sent, by what the lot's side answered.",
            labels=["outcome"],
        )
        if not describing:
            for outcome in UPSTREAM_ACK_OUTCOMES:
                acks.add_metric([outcome], totals.get(outcome, 0))
        yield acks


def register_upstream(registry: CollectorRegistry, upstream: UpstreamState) -> UpstreamCollector:
    """Register the t002 sink's metrics (`cpmi_upstream_*`) on `registry`."""
    collector = UpstreamCollector(upstream)
    registry.register(collector)
    return collector


class LoginChecks(Protocol):
    """What the metrics read of `gateway.lots.passwords.PasswordChecker`."""

    @property
    def counters(self) -> Mapping[str, int]: ...

    @property
    def waiting(self) -> int: ...


LOGIN_COUNTERS = (
    ("cpmi_login_checks", "checked", "Password checks run (HTTP and TCP logins)."),
    (
        "cpmi_login_busy",
        "busy",
        "Logins answered 9999 busy at once: uplink.max_pending_logins checks were already waiting.",
    ),
    ("cpmi_login_dropped", "dropped", "Password checks dropped unrun: their client had gone away."),
)


class LoginCollector(Collector):
    """The login queue in front of the password workers, read at each scrape."""

    def __init__(self, checks: LoginChecks) -> None:
        self._checks = checks

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        counters = {} if describing else dict(self._checks.counters)
        waiting = "Logins waiting for a password check now."
        yield GaugeMetricFamily(
            "cpmi_login_waiting", waiting, value=None if describing else self._checks.waiting
        )
        for name, key, documentation in LOGIN_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=None if describing else counters.get(key, 0))


def register_logins(registry: CollectorRegistry, checks: LoginChecks) -> LoginCollector:
    """Register the login queue's metrics (`cpmi_login_*`) on `registry`."""
    collector = LoginCollector(checks)
    registry.register(collector)
    return collector


class BodyWorkers(Protocol):
    """What the metrics read of `gateway.lots.bodypool.BodyPool`."""

    @property
    def pending(self) -> int: ...

    @property
    def counters(self) -> Mapping[str, int]: ...


BODY_COUNTERS = (
    ("cpmi_uplink_bodies_parsed", "parsed", "Big uplink bodies parsed by the body workers."),
    (
        "cpmi_uplink_bodies_busy",
        "busy",
        "Big uplink bodies answered 9999 busy at once: uplink.max_pending_bodies were already waiting.",
    ),
    ("cpmi_uplink_bodies_dropped", "dropped", "Big uplink bodies dropped unparsed: their client had gone."),
)


class BodyCollector(Collector):
    """The queue in front of the body workers, read at each scrape."""

    def __init__(self, bodies: BodyWorkers) -> None:
        self._bodies = bodies

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        counters = {} if describing else dict(self._bodies.counters)
        pending = "Big uplink bodies waiting for or being parsed by a body worker now."
        yield GaugeMetricFamily(
            "cpmi_uplink_bodies_pending", pending, value=None if describing else self._bodies.pending
        )
        for name, key, documentation in BODY_COUNTERS:
            yield CounterMetricFamily(name, documentation, value=None if describing else counters.get(key, 0))


def register_bodies(registry: CollectorRegistry, bodies: BodyWorkers) -> BodyCollector:
    """Register the body workers' metrics (`cpmi_uplink_bodies_*`) on `registry`."""
    collector = BodyCollector(bodies)
    registry.register(collector)
    return collector


class WorkerCounts(Protocol):
    """What the metrics read of `gateway.lots.workers.WorkerPool`."""

    @property
    def workers(self) -> int: ...

    @property
    def alive(self) -> int: ...

    @property
    def counters(self) -> Mapping[str, int]: ...


# (metric name without `_total`, key in WorkerPool.counters, help text)
WORKER_COUNTERS = (
    (
        "cpmi_workers_restarts",
        "restarts",
        "Worker processes that ended after they were ready, while the gateway ran, and were replaced.",
    ),
    (
        "cpmi_workers_start_failures",
        "start_failures",
        "Worker processes that could not start: not spawned, or ended or silent before they were ready.",
    ),
    ("cpmi_workers_jobs_lost", "lost", "Jobs answered a fault because their worker process ended mid-job."),
    (
        "cpmi_workers_jobs_late",
        "late",
        "Jobs answered a fault because they passed their deadline; their worker process was killed.",
    ),
)


class WorkersCollector(Collector):
    """The worker process pools (`pool="password"`, `pool="body"`), read at each scrape."""

    def __init__(self, pools: Mapping[str, WorkerCounts]) -> None:
        self._pools = dict(pools)

    def describe(self) -> Iterator[Metric]:
        """The metric names without their values."""
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        """The metrics as they are now."""
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        pools = {} if describing else self._pools
        alive = GaugeMetricFamily(
            "cpmi_workers_alive", "Worker processes alive now (ready or starting).", labels=["pool"]
        )
        configured = GaugeMetricFamily(
            "cpmi_workers_configured", "Worker processes the pool is configured to run.", labels=["pool"]
        )
        for name, pool in pools.items():
            alive.add_metric([name], pool.alive)
            configured.add_metric([name], pool.workers)
        yield alive
        yield configured
        for metric, key, documentation in WORKER_COUNTERS:
            counter = CounterMetricFamily(metric, documentation, labels=["pool"])
            for name, pool in pools.items():
                counter.add_metric([name], pool.counters.get(key, 0))
            yield counter


def register_workers(
    registry: CollectorRegistry, pools: Mapping[str, WorkerCounts | None]
) -> WorkersCollector:
    """Register the worker pools' metrics (`cpmi_workers_*`, labelled by pool name) on `registry`.

    A pool that is None (its work is not done in processes here) has no series.
    """
    collector = WorkersCollector({name: pool for name, pool in pools.items() if pool is not None})
    registry.register(collector)
    return collector

"""The gateway's Prometheus metrics, read from fakes of the downlinks and the journal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cloud.metrics import (
    DOWNLINK_COUNTERS,
    FSYNC_BUCKETS,
    GatewayCollector,
    observe_fsync,
    register,
    register_forwarder,
    register_space,
)
from gateway.forwarding import ForwardingEngine
from gateway.lots.downlink import _COUNTERS


@define
class FakeState:
    connected: bool
    park: str = "P001"


@define
class FakeDownlinks:
    counters: dict[str, int] = field(factory=lambda: dict.fromkeys(_COUNTERS, 0))
    lots: list[FakeState] = field(factory=list)

    def states(self) -> list[FakeState]:
        return list(self.lots)


@define
class FakeJournal:
    last_seq: int = 0
    committed_seq: int = 0
    problem: str | None = None
    quarantined: list[object] = field(factory=list)
    fsync_observers: list[Callable[[float], None]] = field(factory=list)


@define
class FakeSync:
    queues: dict[str, int] = field(factory=dict)

    def pending(self, park: str) -> int:
        return self.queues.get(park, 0)


def scrape(registry: CollectorRegistry) -> dict[str, float]:
    """Every sample of the text exposition, by sample name."""
    text = generate_latest(registry).decode("utf-8")
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_every_metric_is_exposed_with_its_value() -> None:
    """A scrape shows the lots, the journal's position and health, and each downlink counter."""
    downlinks = FakeDownlinks(lots=[FakeState(True), FakeState(False), FakeState(True)])
    for number, (_, key, _) in enumerate(DOWNLINK_COUNTERS, start=1):
        downlinks.counters[key] = number * 10
    journal = FakeJournal(last_seq=42, committed_seq=40)
    registry = CollectorRegistry()
    assert isinstance(register(registry, downlinks, journal), GatewayCollector)

    samples = scrape(registry)

    assert samples["cpmi_lots_connected"] == 2
    assert samples["cpmi_lots_configured"] == 3
    assert samples["cpmi_journal_last_seq"] == 42
    assert samples["cpmi_journal_committed_seq"] == 40
    assert samples["cpmi_journal_ok"] == 1
    for number, (name, _, _) in enumerate(DOWNLINK_COUNTERS, start=1):
        assert samples[f"{name}_total"] == number * 10, name
    assert samples["cpmi_downlink_bind_failures_total"] > 0


def test_counters_are_typed_as_counters() -> None:
    """The downlink counts are exposed as Prometheus counters, the rest as gauges."""
    registry = CollectorRegistry()
    register(registry, FakeDownlinks(), FakeJournal())
    text = generate_latest(registry).decode("utf-8")
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    for name, _, _ in DOWNLINK_COUNTERS:
        assert types[name] == "counter", name
    for name in ("cpmi_lots_connected", "cpmi_lots_configured", "cpmi_journal_last_seq", "cpmi_journal_ok"):
        assert types[name] == "gauge", name


def test_every_downlink_counter_key_exists_in_the_downlinks() -> None:
    """Each exposed counter reads a key the real Downlinks.counters holds."""
    assert {key for _, key, _ in DOWNLINK_COUNTERS} <= set(_COUNTERS)


def test_values_are_read_at_each_scrape() -> None:
    """A second scrape shows what changed since the first, without registering again."""
    downlinks = FakeDownlinks(lots=[FakeState(False)])
    journal = FakeJournal(last_seq=1, committed_seq=1)
    registry = CollectorRegistry()
    register(registry, downlinks, journal)
    first = scrape(registry)

    downlinks.lots[0] = FakeState(True)
    downlinks.lots.append(FakeState(False))
    downlinks.counters["frames_in"] += 3
    downlinks.counters["command_timeouts"] += 1
    journal.last_seq = journal.committed_seq = 9
    journal.problem = "disk full"
    journal.quarantined.append("a damaged segment")
    second = scrape(registry)

    assert (first["cpmi_lots_connected"], second["cpmi_lots_connected"]) == (0, 1)
    assert (first["cpmi_lots_configured"], second["cpmi_lots_configured"]) == (1, 2)
    assert (first["cpmi_downlink_frames_in_total"], second["cpmi_downlink_frames_in_total"]) == (0, 3)
    assert second["cpmi_downlink_command_timeouts_total"] == 1
    assert (first["cpmi_journal_last_seq"], second["cpmi_journal_last_seq"]) == (1, 9)
    assert (first["cpmi_journal_ok"], second["cpmi_journal_ok"]) == (1, 0)
    assert (first["cpmi_journal_quarantined_segments"], second["cpmi_journal_quarantined_segments"]) == (0, 1)


def test_registering_does_not_read_the_collaborators() -> None:
    """Registration checks names through describe(), without reading counts or states."""

    class Untouchable:
        @property
        def counters(self) -> dict[str, int]:
            raise AssertionError("read at registration")

        def states(self) -> list[FakeState]:
            raise AssertionError("read at registration")

    register(CollectorRegistry(auto_describe=True), Untouchable(), FakeJournal())


def test_a_clashing_name_is_refused_at_registration() -> None:
    """Registering next to a metric of the same name fails at once instead of at scrape time."""
    registry = CollectorRegistry()
    Counter("cpmi_downlink_binds", "taken", registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        register(registry, FakeDownlinks(), FakeJournal())


def test_fsync_histogram_counts_each_journal_fsync() -> None:
    """observe_fsync hooks a histogram into the journal's fsync observers."""
    journal = FakeJournal()
    registry = CollectorRegistry()
    observe_fsync(registry, journal)
    assert scrape(registry)["cpmi_journal_fsync_seconds_count"] == 0

    [observer] = journal.fsync_observers
    for seconds in (0.00005, 0.0003, 0.002, 2.0):
        observer(seconds)
    samples = scrape(registry)

    assert samples["cpmi_journal_fsync_seconds_count"] == 4
    assert samples["cpmi_journal_fsync_seconds_sum"] == pytest.approx(2.00235)
    text = generate_latest(registry).decode("utf-8")
    buckets = {
        sample.labels["le"]: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "cpmi_journal_fsync_seconds_bucket"
    }
    assert len(buckets) == len(FSYNC_BUCKETS) + 1
    assert buckets["0.0001"] == 1
    assert buckets["0.0005"] == 2
    assert buckets["0.0025"] == 3
    assert buckets["1.0"] == 3
    assert buckets["+Inf"] == 4


def test_sync_queue_depth_per_configured_lot() -> None:
    """With a sync, each configured lot gets cpmi_sync_queue_depth{park}, read at each scrape."""
    downlinks = FakeDownlinks(lots=[FakeState(True, "P001"), FakeState(False, "P002")])
    sync = FakeSync({"P001": 3, "P999": 7})
    registry = CollectorRegistry(auto_describe=True)
    register(registry, downlinks, FakeJournal(), sync)

    def depths() -> dict[str, float]:
        text = generate_latest(registry).decode("utf-8")
        return {
            sample.labels["park"]: sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "cpmi_sync_queue_depth"
        }

    assert depths() == {"P001": 3, "P002": 0}
    sync.queues["P002"] = 5
    sync.queues["P001"] = 0
    assert depths() == {"P001": 0, "P002": 5}


def test_no_sync_queue_depth_without_a_sync() -> None:
    """The three-argument form keeps working and shows no queue depth."""
    registry = CollectorRegistry()
    register(registry, FakeDownlinks(lots=[FakeState(True)]), FakeJournal())
    assert not any(name.startswith("cpmi_sync_queue_depth") for name in scrape(registry))


@define
class FakeForwarder:
    counters: dict[str, int] = field(factory=dict)
    backlog: int = 0
    done_through: int = 0


def test_forwarder_metrics_show_its_counters_and_backlog() -> None:
    """cpmi_forward_* show the forwarder's counters, backlog and progress as they are at each scrape."""
    forwarder = FakeForwarder(counters=dict.fromkeys(ForwardingEngine(**_forwarder_parts()).counters, 0))
    registry = CollectorRegistry()
    register_forwarder(registry, forwarder)
    forwarder.counters.update(events=1200, batches=3, retries=7, rejected=1)
    forwarder.backlog, forwarder.done_through = 42, 1300
    samples = scrape(registry)
    assert samples["cpmi_forward_events_total"] == 1200
    assert samples["cpmi_forward_batches_total"] == 3
    assert samples["cpmi_forward_retries_total"] == 7
    assert samples["cpmi_forward_rejected_total"] == 1
    assert samples["cpmi_forward_backlog_records"] == 42
    assert samples["cpmi_forward_done_seq"] == 1300
    forwarder.backlog = 0
    assert scrape(registry)["cpmi_forward_backlog_records"] == 0


def _forwarder_parts() -> dict[str, object]:
    """What a ForwardingEngine needs to be built (not started): its counter keys are what the metrics read."""
    from zoneinfo import ZoneInfo

    from nacl.signing import SigningKey
    from twisted.internet.task import Clock

    from gateway import config
    from gateway.cloud.forwarder import CloudEventsSink

    return {
        "journal": FakeJournal(),
        "clock": Clock(),
        "settings": config.parse({"cloud": {"url": "http://c/e"}}).cloud,
        "sink": CloudEventsSink(
            http=object(),  # type: ignore[arg-type]
            clock=Clock(),
            settings=config.parse({"cloud": {"url": "http://c/e"}}).cloud,
            gateway_id="gw",
            zone=ZoneInfo("UTC"),
            signing_key=SigningKey.generate(),
        ),
    }


@define
class FakeSpace:
    free_bytes: int | None = None
    low: bool = False


def test_space_metrics_follow_the_watch() -> None:
    """cpmi_journal_free_bytes appears once measured; cpmi_journal_space_low is 1 while low."""
    space = FakeSpace()
    registry = CollectorRegistry()
    register_space(registry, space)
    first = scrape(registry)
    assert "cpmi_journal_free_bytes" not in first and first["cpmi_journal_space_low"] == 0
    space.free_bytes, space.low = 12 * 2**20, True
    second = scrape(registry)
    assert second["cpmi_journal_free_bytes"] == 12 * 2**20 and second["cpmi_journal_space_low"] == 1

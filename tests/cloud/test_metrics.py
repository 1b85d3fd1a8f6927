"""The gateway's Prometheus metrics, read from fakes of the downlinks and the journal."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from attrs import define, field
from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock

from gateway.cloud.metrics import (
    DOWNLINK_COUNTERS,
    FSYNC_BUCKETS,
    GatewayCollector,
    observe_fsync,
    register,
    register_forwarder,
    register_space,
)
from gateway.config import parse
from gateway.dialects.host import LotRouter
from gateway.forwarding import ForwardingEngine
from gateway.lots.downlink import _COUNTERS
from gateway.lots.sync import SyncQueue
from tests.dialects.test_host import bind_bolink, bind_standard, routed_rig
from tests.lots.harness import MemoryJournal, lot_entry, result_of


@define
class FakeState:
    connected: bool
    park: str = "P001"


@define
class FakeDownlinks:
    counters: dict[str, int] = field(factory=lambda: dict.fromkeys(_COUNTERS, 0))
    lots: list[FakeState] = field(factory=list)

    def connected_count(self) -> int:
        return sum(1 for lot in self.lots if lot.connected)

    def configured_count(self) -> int:
        return len(self.lots)

    def is_configured(self, park: str) -> bool:
        return any(lot.park == park for lot in self.lots)


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

    def depths(self) -> dict[str, int]:
        return {park: count for park, count in self.queues.items() if count}


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

        def connected_count(self) -> int:
            raise AssertionError("read at registration")

        def configured_count(self) -> int:
            raise AssertionError("read at registration")

        def is_configured(self, park: str) -> bool:
            raise AssertionError("read at registration")

        def depths(self) -> dict[str, int]:
            raise AssertionError("read at registration")

    untouchable = Untouchable()
    register(CollectorRegistry(auto_describe=True), untouchable, FakeJournal(), untouchable)


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


def test_lots_connected_and_configured_over_the_lots_of_every_dialect() -> None:
    """Through the real LotRouter, cpmi_lots_connected counts the bound lots of the standard dialect
    and of bolink alike, and drops a lot whose connection goes; cpmi_lots_configured counts them all."""
    rig, router = routed_rig()
    registry = CollectorRegistry()
    register(registry, router, FakeJournal())

    def lots() -> tuple[float, float]:
        samples = scrape(registry)
        return samples["cpmi_lots_connected"], samples["cpmi_lots_configured"]

    assert lots() == (0, 3)
    p3 = bind_bolink(rig, "P3")
    assert lots() == (1, 3)
    bind_standard(rig, router)
    assert lots() == (2, 3)
    p3.lose()
    assert lots() == (1, 3)


def depths_and_total(registry: CollectorRegistry) -> tuple[dict[str, float], float]:
    """The cpmi_sync_queue_depth samples by park, and cpmi_sync_queued_entries, of one scrape."""
    text = generate_latest(registry).decode("utf-8")
    samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
    depths = {
        sample.labels["park"]: sample.value for sample in samples if sample.name == "cpmi_sync_queue_depth"
    }
    [total] = [sample.value for sample in samples if sample.name == "cpmi_sync_queued_entries"]
    return depths, total


def test_sync_queue_depth_only_for_configured_lots_with_entries() -> None:
    """cpmi_sync_queue_depth{park} has a series for each configured lot with entries queued, none for
    a lot without; cpmi_sync_queued_entries is their sum, 0 when nothing is queued. Read at each scrape."""
    downlinks = FakeDownlinks(lots=[FakeState(True, "P001"), FakeState(False, "P002")])
    sync = FakeSync({"P001": 3, "P999": 7})
    registry = CollectorRegistry(auto_describe=True)
    register(registry, downlinks, FakeJournal(), sync)

    assert depths_and_total(registry) == ({"P001": 3}, 3)
    sync.queues["P002"] = 5
    sync.queues["P001"] = 0
    assert depths_and_total(registry) == ({"P002": 5}, 5)
    sync.queues["P001"] = 2
    assert depths_and_total(registry) == ({"P001": 2, "P002": 5}, 7)
    sync.queues.clear()
    assert depths_and_total(registry) == ({}, 0)
    text = generate_latest(registry).decode("utf-8")
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["cpmi_sync_queue_depth"] == types["cpmi_sync_queued_entries"] == "gauge"


def test_no_sync_queue_depth_without_a_sync() -> None:
    """The three-argument form keeps working and shows no queue depth nor queued entries."""
    registry = CollectorRegistry()
    register(registry, FakeDownlinks(lots=[FakeState(True)]), FakeJournal())
    assert not any(name.startswith("cpmi_sync_") for name in scrape(registry))


def lots_and_queue(count: int) -> tuple[LotRouter, SyncQueue]:
    """A router over `count` configured standard lots, none connected, and an empty sync queue for them."""
    settings = parse({"lot": [lot_entry(park_code=f"P{i:05}", username=f"lot{i:05}") for i in range(count)]})
    router = LotRouter(settings)
    clock = Clock()
    return router, SyncQueue(lots=router, journal=MemoryJournal(clock), clock=clock)


def scraped_lines(router: LotRouter, queue: SyncQueue) -> list[str]:
    """The lines of one scrape of the gateway's metrics over `router` and `queue`."""
    registry = CollectorRegistry()
    register(registry, router, FakeJournal(), queue)
    return generate_latest(registry).decode("utf-8").splitlines()


def test_a_scrape_does_not_grow_with_the_configured_lots() -> None:
    """With nothing queued a scrape has as many lines for 5,000 configured lots as for 10: no series per lot
    (one each held the reactor 0.1-0.3 s a scrape at 10,000 lots)."""
    few, many = lots_and_queue(10), lots_and_queue(5000)
    few_lines, many_lines = scraped_lines(*few), scraped_lines(*many)
    assert len(few_lines) == len(many_lines)
    assert "cpmi_lots_configured 5000.0" in many_lines
    assert "cpmi_sync_queued_entries 0.0" in many_lines

    router, queue = many
    for park, entries in (("P00007", 2), ("P04321", 1)):
        for _ in range(entries):
            seq = result_of(queue.enqueue(park, "blacklist", {"carNum": "京A12345"}, "cloud"))
            assert isinstance(seq, int)
    lines = scraped_lines(router, queue)
    assert len(lines) == len(few_lines) + 2
    assert 'cpmi_sync_queue_depth{park="P00007"} 2.0' in lines
    assert 'cpmi_sync_queue_depth{park="P04321"} 1.0' in lines
    assert "cpmi_sync_queued_entries 3.0" in lines


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

"""The worker process pools' metrics (`cpmi_workers_*{pool}`): read from fakes, from the lots' wiring,
and from a real password worker killed with SIGKILL."""

from __future__ import annotations

import os
import signal

import pytest_twisted
from attrs import define, field
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cloud.metrics import WORKER_COUNTERS, WorkersCollector, register_workers
from gateway.dialects.service import LotsService
from gateway.lots.workers import WorkerPool
from tests.cloud.test_metrics import FakeJournal
from tests.lots.test_passwords import HASH, ready_worker, real_checker, settings_with, until
from tests.lots.test_workers import Processes


@define
class FakePool:
    workers: int
    alive: int = 0
    counters: dict[str, int] = field(factory=dict)


def samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    """Every `cpmi_workers_*` sample of the text exposition, by (sample name, pool label)."""
    text = generate_latest(registry).decode("utf-8")
    return {
        (sample.name, sample.labels["pool"]): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name.startswith("cpmi_workers_")
    }


def test_each_pool_is_exposed_with_its_label_and_values() -> None:
    """A scrape shows, for each pool by its label, the workers alive and configured (gauges) and the
    restarts, start failures, jobs lost and jobs late (counters, exposed with `_total`)."""
    password = FakePool(
        workers=2, alive=1, counters={"restarts": 3, "start_failures": 4, "lost": 5, "late": 6, "done": 99}
    )
    body = FakePool(workers=4, alive=4, counters={"restarts": 7, "start_failures": 0, "lost": 8, "late": 9})
    registry = CollectorRegistry()
    assert isinstance(register_workers(registry, {"password": password, "body": body}), WorkersCollector)

    assert samples(registry) == {
        ("cpmi_workers_alive", "password"): 1,
        ("cpmi_workers_alive", "body"): 4,
        ("cpmi_workers_configured", "password"): 2,
        ("cpmi_workers_configured", "body"): 4,
        ("cpmi_workers_restarts_total", "password"): 3,
        ("cpmi_workers_restarts_total", "body"): 7,
        ("cpmi_workers_start_failures_total", "password"): 4,
        ("cpmi_workers_start_failures_total", "body"): 0,
        ("cpmi_workers_jobs_lost_total", "password"): 5,
        ("cpmi_workers_jobs_lost_total", "body"): 8,
        ("cpmi_workers_jobs_late_total", "password"): 6,
        ("cpmi_workers_jobs_late_total", "body"): 9,
    }
    text = generate_latest(registry).decode("utf-8")
    types = {family.name: family.type for family in text_string_to_metric_families(text)}
    assert types["cpmi_workers_alive"] == types["cpmi_workers_configured"] == "gauge"
    for name, _, _ in WORKER_COUNTERS:
        assert types[name] == "counter", name


def test_values_are_read_at_each_scrape() -> None:
    """What a pool counts after one scrape shows in the next, without registering again."""
    pool = FakePool(workers=1, alive=1, counters={"restarts": 0})
    registry = CollectorRegistry()
    register_workers(registry, {"password": pool})
    first = samples(registry)
    pool.alive = 0
    pool.counters["restarts"] = 1
    second = samples(registry)
    assert (first[("cpmi_workers_alive", "password")], second[("cpmi_workers_alive", "password")]) == (1, 0)
    key = ("cpmi_workers_restarts_total", "password")
    assert (first[key], second[key]) == (0, 1)


def test_describe_names_the_metrics_without_reading_the_pools() -> None:
    """describe() yields every family with no sample, and registering (which calls it) reads no pool."""

    class Untouchable:
        @property
        def workers(self) -> int:
            raise AssertionError("read at registration")

        @property
        def alive(self) -> int:
            raise AssertionError("read at registration")

        @property
        def counters(self) -> dict[str, int]:
            raise AssertionError("read at registration")

    collector = register_workers(CollectorRegistry(auto_describe=True), {"password": Untouchable()})
    described = list(collector.describe())
    assert [family.name for family in described] == [
        "cpmi_workers_alive",
        "cpmi_workers_configured",
        *(name for name, _, _ in WORKER_COUNTERS),
    ]
    assert all(family.samples == [] for family in described)


def test_a_pool_that_is_none_has_no_series() -> None:
    """A pool whose work is not done in processes here (None) is left out, not shown as zeros."""
    registry = CollectorRegistry()
    register_workers(registry, {"password": None, "body": FakePool(workers=2)})
    assert {pool for _, pool in samples(registry)} == {"body"}


def test_every_worker_counter_key_exists_in_the_pool() -> None:
    """Each exposed counter reads a key a real WorkerPool's counters hold (a typo would read 0 forever)."""
    pool = WorkerPool(Processes(), name="x", args=("x",), workers=1, max_pending=1)
    assert {key for _, key, _ in WORKER_COUNTERS} <= set(pool.counters)


def test_the_lots_register_the_password_and_body_pools() -> None:
    """The lots' metrics include both pools, labelled, configured as the settings say."""
    service = LotsService(settings_with(HASH), reactor=Processes(), journal=FakeJournal())  # type: ignore[arg-type]
    service.serve(None)
    registry = CollectorRegistry()
    service.register_metrics(registry)
    found = samples(registry)
    uplink = settings_with(HASH).uplink
    assert found[("cpmi_workers_configured", "password")] == uplink.login_workers
    assert uplink.body_workers > 0 and found[("cpmi_workers_configured", "body")] == uplink.body_workers
    assert found[("cpmi_workers_alive", "password")] == found[("cpmi_workers_alive", "body")] == 0


@pytest_twisted.ensureDeferred
async def test_a_real_password_worker_killed_mid_check_shows_in_the_metrics() -> None:
    """kill -9 of a real password worker during a check: the registry's output shows it gone (alive 0),
    one restart and one job lost; once its replacement is ready, alive is 1 again."""
    checker = real_checker(max_pending=8)
    pool = checker.pool
    assert pool is not None
    registry = CollectorRegistry()
    register_workers(registry, {"password": pool})
    try:
        _, pid = await ready_worker(checker)
        before = samples(registry)
        assert before[("cpmi_workers_alive", "password")] == 1
        assert before[("cpmi_workers_configured", "password")] == 1
        assert before[("cpmi_workers_restarts_total", "password")] == 0
        assert before[("cpmi_workers_jobs_lost_total", "password")] == 0
        under_way = checker.check(None, "a")
        under_way.addErrback(lambda _: None)  # answered busy: test_passwords shows how
        os.kill(pid, signal.SIGKILL)
        await until(lambda: pool.counters["restarts"] == 1)
        ended = samples(registry)
        assert ended[("cpmi_workers_alive", "password")] == 0
        assert ended[("cpmi_workers_restarts_total", "password")] == 1
        assert ended[("cpmi_workers_jobs_lost_total", "password")] == 1
        await until(lambda: pool._idle_workers)
        assert pool.pids != [pid]
        again = samples(registry)
        assert again[("cpmi_workers_alive", "password")] == 1
        assert again[("cpmi_workers_restarts_total", "password")] == 1
        assert again[("cpmi_workers_start_failures_total", "password")] == 0
    finally:
        await checker.stop()

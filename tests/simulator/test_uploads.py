"""The upload queue: retries after the standard's 10 minutes (scaled), backfills newest first."""

from __future__ import annotations

import random

from gateway.simulator.fees import Fee
from gateway.simulator.run import MIN_HEARTBEAT, Settings
from gateway.simulator.traffic import Exit, Layout, Traffic
from gateway.simulator.uploads import RETRY_INTERVAL, Upload, UploadQueue
from tests.simulator.helpers import START, ZONE


def exit_at(out_time: float) -> Exit:
    rng = random.Random(1)
    traffic = Traffic(Layout.generate("P001", rng), rng, ZONE)
    car = traffic.new_car(out_time - 3600)
    return traffic.leave(car, out_time, Fee(60, 5.0))


def backfill(opr: str, out_time: float) -> Upload:
    return Upload("backfill", {}, opr, exit=exit_at(out_time))


def test_retry_interval_is_ten_minutes_divided_by_the_time_scale() -> None:
    """The standard's 10 minutes between retries, divided by --time-scale; heartbeats too, with a floor."""
    assert RETRY_INTERVAL == 600.0
    assert Settings().retry_interval == 600.0
    assert Settings(time_scale=60).retry_interval == 10.0
    assert Settings(time_scale=60).heartbeat_interval == 0.5
    assert Settings(time_scale=2).heartbeat_interval == 15.0
    assert Settings(time_scale=10_000).heartbeat_interval == MIN_HEARTBEAT


def test_a_failed_upload_is_due_again_after_the_interval_with_its_opr() -> None:
    """A failed upload comes back, the same upload (same oprNum), exactly retry_interval later."""
    queue = UploadQueue(retry_interval=10.0)
    upload = Upload("carIn", {}, "o-1")
    queue.push(upload)
    assert queue.take(100.0, online=True) is upload
    queue.failed(upload, 100.0)
    assert queue.next_due(online=True) == 110.0
    assert queue.take(109.9, online=True) is None
    again = queue.take(110.0, online=True)
    assert again is upload and again.opr == "o-1"


def test_retries_go_in_the_order_they_failed_and_before_new_messages() -> None:
    """Due retries go first, oldest failure first; then new messages in order."""
    queue = UploadQueue(retry_interval=10.0)
    first, second, fresh = Upload("carIn", {}, "a"), Upload("freeSpace", {}, "b"), Upload("carIn", {}, "c")
    queue.failed(first, 0.0)
    queue.failed(second, 1.0)
    queue.push(fresh)
    assert queue.take(5.0, online=True) is fresh
    queue.push(fresh)
    assert [queue.take(20.0, online=True) for _ in range(4)] == [first, second, fresh, None]


def test_backfills_go_newest_first_and_only_online() -> None:
    """Backfills wait while the platform is unreachable, then go by outTime, newest first (§5.2.6)."""
    queue = UploadQueue(retry_interval=10.0)
    for opr, out_time in (("b1", START), ("b3", START + 120), ("b2", START + 60)):
        queue.push_backfill(backfill(opr, out_time), START + 200)
    fresh = Upload("carIn", {}, "c")
    queue.push(fresh)
    assert queue.take(START + 300, online=False) is fresh
    assert queue.take(START + 300, online=False) is None
    assert queue.next_due(online=False) is None
    taken = [queue.take(START + 300, online=True) for _ in range(3)]
    assert [upload.opr for upload in taken if upload is not None] == ["b3", "b2", "b1"]


def test_a_failed_backfill_waits_while_older_ones_go() -> None:
    """The newest backfill fails: the older ones go on; it comes back after the interval."""
    queue = UploadQueue(retry_interval=10.0)
    newest, older = backfill("new", START + 60), backfill("old", START)
    queue.push_backfill(newest, START + 100)
    queue.push_backfill(older, START + 100)
    assert queue.take(START + 100, online=True) is newest
    queue.failed(newest, START + 100)
    assert queue.take(START + 101, online=True) is older
    assert queue.take(START + 102, online=True) is None
    assert queue.next_due(online=True) == START + 110
    assert queue.take(START + 110, online=True) is newest


def test_a_failed_entry_can_be_taken_back() -> None:
    """drop_failed takes out a car's failed carIn (the backfill carries the entry), nothing else."""
    queue = UploadQueue(retry_interval=10.0)
    entry, image = Upload("carIn", {}, "i", record="R1"), Upload("carImage", {}, "m", record="R1")
    queue.failed(entry, 0.0)
    queue.failed(image, 0.0)
    assert queue.drop_failed("R1", "carIn") == [entry]
    assert queue.drop_failed("R1", "carIn") == []
    assert len(queue) == 1 and queue.retries == 1

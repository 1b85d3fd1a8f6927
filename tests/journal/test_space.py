"""The free-space watermark on a Clock with a fake statvfs: low, hysteresis, logs, the journal and the lot."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any
from urllib.parse import urlencode

import pytest
from attrs import frozen
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel
from twisted.python.failure import Failure

from gateway.journal.reader import read_records
from gateway.journal.space import SpaceWatch, format_bytes, resume_threshold
from gateway.journal.writer import JournalWriteError
from gateway.lots.http import UplinkEndpoint
from gateway.lots.uplink import UplinkHandler
from tests.journal.helpers import Harness, logs_of, results
from tests.lots.harness import SyncPasswords, Uplink, result_of
from tests.protocol.samples import SAMPLES

MIB = 2**20
WATERMARK = 64 * MIB
FRAGMENT = 2  # a fragment size that divides every size the tests use


@frozen
class Stats:
    """The two fields of an ``os.statvfs_result`` the watch reads."""

    f_bavail: int
    f_frsize: int


class FakeFileSystem:
    """A statvfs whose free space (and failure) the test sets; it records the paths asked."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.error: OSError | None = None
        self.paths: list[str] = []

    def __call__(self, path: str) -> Stats:
        self.paths.append(path)
        if self.error is not None:
            raise self.error
        return Stats(self.free // FRAGMENT, FRAGMENT)


def watch_on(
    fs: FakeFileSystem, clock: Clock | None = None, min_free_bytes: int = WATERMARK, path: str = "/j"
) -> tuple[SpaceWatch, Clock]:
    clock = clock or Clock()
    watch = SpaceWatch(path=path, min_free_bytes=min_free_bytes, clock=clock, statvfs=fs, interval=1.0)
    return watch, clock


def space_logs() -> AbstractContextManager[list[LogEvent]]:
    """The events the watch logs while the block runs."""
    return logs_of("gateway.journal.space")


def levels(events: Sequence[LogEvent]) -> list[LogLevel]:
    return [e["log_level"] for e in events]


def test_low_below_the_watermark_with_a_reason_naming_the_numbers_and_the_key() -> None:
    """Below min_free_bytes the guard gives a reason with the free space, the watermark and the key."""
    fs = FakeFileSystem(12 * MIB)
    watch, _ = watch_on(fs)
    watch.start()
    assert fs.paths == ["/j"]  # checked at once
    assert watch.low and watch.free_bytes == 12 * MIB
    expected = "free space on the journal's file system is 12 MiB, below journal.min_free_bytes (64 MiB)"
    assert watch.guard() == watch.problem == expected
    watch.stop()


def test_not_low_at_or_above_the_watermark() -> None:
    """Free space equal to min_free_bytes or more is not low: the guard says nothing."""
    fs = FakeFileSystem(WATERMARK)
    watch, _ = watch_on(fs)
    watch.start()
    assert not watch.low and watch.guard() is None and watch.problem is None
    assert watch.free_bytes == WATERMARK
    watch.stop()


def test_checks_every_interval_and_guard_only_reads_the_last_check() -> None:
    """The watch measures once a second; guard() answers from the last check without measuring."""
    fs = FakeFileSystem(WATERMARK * 2)
    watch, clock = watch_on(fs)
    watch.start()
    fs.free = 1 * MIB
    for _ in range(100):
        assert watch.guard() is None
    assert len(fs.paths) == 1
    clock.advance(1)
    assert len(fs.paths) == 2 and watch.guard() is not None
    clock.pump([1, 1, 1])
    assert len(fs.paths) == 5
    watch.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(10)
    assert len(fs.paths) == 5


def test_recovers_only_above_the_hysteresis_band() -> None:
    """Once low, it stays low until free space reaches min_free_bytes plus a tenth of it."""
    fs = FakeFileSystem(10 * MIB)
    watch, clock = watch_on(fs)
    watch.start()
    assert watch.low
    assert resume_threshold(WATERMARK) == WATERMARK + WATERMARK // 10
    fs.free = WATERMARK  # back at the watermark: not enough
    clock.advance(1)
    assert watch.low
    fs.free = resume_threshold(WATERMARK) - FRAGMENT  # just short of the band's top
    clock.advance(1)
    assert watch.low and watch.free_bytes == fs.free
    fs.free = resume_threshold(WATERMARK)
    clock.advance(1)
    assert not watch.low and watch.guard() is None
    fs.free = WATERMARK  # inside the band again, from above: not low
    clock.advance(1)
    assert not watch.low
    fs.free = WATERMARK - FRAGMENT
    clock.advance(1)
    assert watch.low
    watch.stop()


def test_the_band_is_at_least_one_mib() -> None:
    """For a small watermark the margin is 1 MiB, not a tenth."""
    assert resume_threshold(2 * MIB) == 3 * MIB
    fs = FakeFileSystem(MIB)
    watch, clock = watch_on(fs, min_free_bytes=2 * MIB)
    watch.start()
    fs.free = 3 * MIB - FRAGMENT
    clock.advance(1)
    assert watch.low
    fs.free = 3 * MIB
    clock.advance(1)
    assert not watch.low
    watch.stop()


def test_stays_low_between_and_says_so_with_the_current_numbers() -> None:
    """Between the watermark and the band's top the reason still holds, with this check's free space."""
    fs = FakeFileSystem(10 * MIB)
    watch, clock = watch_on(fs)
    watch.start()
    fs.free = 20 * MIB
    clock.advance(1)
    assert watch.guard() == (
        "free space on the journal's file system is 20 MiB, below journal.min_free_bytes (64 MiB)"
    )
    fs.free = 66 * MIB
    clock.advance(1)
    reason = watch.guard()
    assert reason is not None and "is 66 MiB, below journal.min_free_bytes (64 MiB)" in reason
    assert "6.4 MiB" in reason  # the margin it must regain
    watch.stop()


def test_one_log_line_per_transition() -> None:
    """Going low logs one critical line and recovering one info line, however many checks between."""
    fs = FakeFileSystem(WATERMARK * 2)
    with space_logs() as events:
        watch, clock = watch_on(fs)
        watch.start()
        clock.pump([1] * 3)
        fs.free = 10 * MIB
        clock.pump([1] * 5)
        fs.free = 100 * MIB
        clock.pump([1] * 5)
        fs.free = 10 * MIB
        clock.pump([1] * 2)
        watch.stop()
    assert levels(events) == [LogLevel.critical, LogLevel.info, LogLevel.critical]
    assert "below journal.min_free_bytes" in events[0]["problem"]
    assert events[1]["free"] == "100 MiB"


def test_a_failing_statvfs_logs_once_and_keeps_the_last_state() -> None:
    """statvfs errors leave low (or not low) as it was, logged once; measuring again is logged too."""
    fs = FakeFileSystem(10 * MIB)
    with space_logs() as events:
        watch, clock = watch_on(fs)
        watch.start()
        reason = watch.guard()
        fs.error = OSError(errno.EIO, "Input/output error")
        clock.pump([1] * 4)
        assert watch.low and watch.guard() == reason and watch.free_bytes == 10 * MIB
        assert watch.measure_error == "Input/output error"
        fs.error = None
        fs.free = 100 * MIB
        clock.advance(1)
        assert not watch.low and watch.measure_error is None
        fs.error = OSError(errno.ESTALE, "Stale file handle")
        fs.free = 1 * MIB  # not seen: the check fails
        clock.pump([1] * 3)
        assert not watch.low and watch.guard() is None
        watch.stop()
    assert levels(events) == [
        LogLevel.critical,  # low
        LogLevel.error,  # cannot measure
        LogLevel.info,  # measuring again
        LogLevel.info,  # recovered
        LogLevel.error,  # cannot measure
    ]
    assert events[1]["error"] == "Input/output error" and events[1]["path"] == "/j"


def test_an_unexpected_error_stops_the_watch_and_is_logged() -> None:
    """A check that raises something other than OSError stops the timer, logged as a failure."""

    def broken(path: str) -> Stats:
        raise RuntimeError("bug")

    with space_logs() as events:
        watch = SpaceWatch(path="/j", min_free_bytes=WATERMARK, clock=Clock(), statvfs=broken)
        watch.start()
    assert levels(events) == [LogLevel.critical]
    assert events[0]["log_failure"].check(RuntimeError)
    assert not watch.low


def test_zero_disables_the_watch() -> None:
    """min_free_bytes 0: never low, no statvfs, no timer."""
    fs = FakeFileSystem(0)
    watch, clock = watch_on(fs, min_free_bytes=0)
    watch.start()
    watch.check()
    clock.advance(10)
    assert fs.paths == [] and clock.getDelayedCalls() == []
    assert not watch.low and watch.guard() is None and watch.free_bytes is None
    watch.stop()


def test_start_twice_runs_one_timer_and_stop_without_start_is_harmless() -> None:
    """start() while started does nothing; stop() before start() does nothing."""
    fs = FakeFileSystem(WATERMARK * 2)
    watch, clock = watch_on(fs)
    watch.stop()
    watch.start()
    watch.start()
    assert len(clock.getDelayedCalls()) == 1 and len(fs.paths) == 1
    watch.stop()


def test_a_negative_watermark_or_interval_is_refused() -> None:
    """min_free_bytes below 0, or an interval of 0 or less, is a ValueError."""
    with pytest.raises(ValueError, match="min_free_bytes"):
        SpaceWatch(path="/j", min_free_bytes=-1, clock=Clock())
    with pytest.raises(ValueError, match="interval"):
        SpaceWatch(path="/j", min_free_bytes=WATERMARK, clock=Clock(), interval=0)


@pytest.mark.parametrize(
    ("n", "text"),
    [(64 * MIB, "64 MiB"), (12 * MIB + MIB // 2, "12.5 MiB"), (300 * 1024, "300 KiB"), (512, "512 bytes")],
)
def test_format_bytes(n: int, text: str) -> None:
    """Sizes read as MiB (one decimal when not whole), KiB or bytes."""
    assert format_bytes(n) == text


def test_measures_the_journal_directory_with_os_statvfs_by_default(h: Harness) -> None:
    """Without a statvfs given, the watch measures the real journal directory (f_bavail * f_frsize)."""
    watch = SpaceWatch(path=str(h.path), min_free_bytes=1, clock=h.clock)
    watch.start()
    assert watch.free_bytes is not None and watch.free_bytes > 0
    watch.stop()


# with the journal


def test_a_low_watch_makes_appends_fail_with_enospc_until_space_returns(h: Harness) -> None:
    """Set as Journal.guard: low, appends fail at once with ENOSPC and use no seq; then they succeed."""
    fs = FakeFileSystem(WATERMARK * 2)
    watch, _ = watch_on(fs, clock=h.clock, path=str(h.path))
    h.journal.guard = watch.guard
    watch.start()
    h.append_many(2)
    h.settle()
    assert h.journal.committed_seq == 2
    fs.free = 5 * MIB
    h.clock.advance(1)
    [refused] = results([h.journal.append("uplink", "P001", "carIn", "o-3", {})])
    assert isinstance(refused, Failure) and refused.check(JournalWriteError)
    assert refused.value.errno == errno.ENOSPC
    assert "below journal.min_free_bytes (64 MiB)" in str(refused.value)
    assert h.journal.last_seq == 2 and not h.runner.jobs
    fs.free = resume_threshold(WATERMARK)
    h.clock.advance(1)
    d = h.journal.append("uplink", "P001", "carIn", "o-3", {})
    h.settle()
    [record] = results([d])
    assert record.seq == 3
    assert [r.opr for r in read_records(h.path)] == ["opr-0", "opr-1", "o-3"]
    watch.stop()


# through the lot side


def test_a_lot_is_answered_9999_while_low_and_its_retry_is_stored_once_space_returns(
    harness: Callable[..., Harness],
) -> None:
    """A carIn on a nearly full disk gets 9999 naming the watermark; the same oprNum later gets 0000."""
    gw = Uplink()
    token = gw.login()  # on the harness's in-memory journal
    h = harness()
    fs = FakeFileSystem(3 * MIB)
    watch, _ = watch_on(fs, clock=h.clock, path=str(h.path))
    h.journal.guard = watch.guard
    watch.start()
    # The same sessions and repeats, now storing in a real journal.
    gw.handler = UplinkHandler(
        config=gw.settings,
        journal=h.journal,
        sessions=gw.sessions,
        repeats=gw.repeats,
        totals=gw.totals,
        passwords=SyncPasswords(),
        clock=gw.clock,
    )
    gw.treq = gw.serve(UplinkEndpoint(gw.handler, max_body_bytes=1_000_000))

    answer = gw.send("carIn", SAMPLES["carIn"], token=token, opr="S-1")
    assert answer["resultCode"] == "9999"
    message = answer["resultMessage"]
    assert "the journal cannot store this message now" in message and "retry" in message
    assert "below journal.min_free_bytes (64 MiB)" in message
    assert h.journal.last_seq == 0

    fs.free = 1024 * MIB
    h.clock.advance(1)
    envelope = gw.envelope("carIn", SAMPLES["carIn"], token=token, opr="S-1")
    sent = gw.treq.request(
        "POST",
        "http://gw/uplink",
        data=urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode(),
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
    )
    gw.treq.flush()
    h.settle()  # the record's write and fsync
    gw.treq.flush()
    response = result_of(sent)
    content = gw.treq.content(response)
    gw.treq.flush()
    retried: dict[str, Any] = json.loads(result_of(content))
    assert retried["resultCode"] == "0000"
    assert [(r.kind, r.opr) for r in read_records(h.path)] == [("uplink", "S-1")]
    watch.stop()

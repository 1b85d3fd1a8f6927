"""Retention: the plan's rules one by one and as properties; passes on a real journal on a Clock."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, LogLevel

from gateway.journal import retention as retention_module
from gateway.journal.kinds import RETENTION_RECORD
from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record
from gateway.journal.retention import Removal, Retention, SegmentInfo, plan, record_seconds
from gateway.journal.segments import list_segments, read_last_line
from tests.journal.helpers import Harness, ManualRunner, enospc, logs_of

_T = TypeVar("_T")

NOW = 1_800_000_000.0
HOUR = 3600.0
SEGMENT_BYTES = 1000  # five of the harness's records per segment


# -- the plan


def seg(first_seq: int, size: int = 100, last_ts: float | None = None) -> SegmentInfo:
    name = f"{first_seq:020d}.jsonl"
    return SegmentInfo(name, f"/j/{name}", first_seq, size, last_ts)


def run(segments: list[SegmentInfo], **options: Any) -> Removal | None:
    settings: dict[str, Any] = {"max_bytes": 0, "max_age": 0, "now": NOW, "floor_seq": 10**9}
    settings.update(options)
    return plan(segments, **settings)


def removed_seqs(removal: Removal | None) -> list[int]:
    return [] if removal is None else [s.first_seq for s in removal.segments]


def test_no_limits_never_remove() -> None:
    """With max_bytes and max_age both 0, nothing is removed, however big or old the journal."""
    segments = [seg(1, 10**9, 0.0), seg(11, 10**9, 0.0), seg(21, 10**9, 0.0)]
    assert run(segments) is None


def test_size_removes_the_oldest_until_the_rest_fits() -> None:
    """Over max_bytes, the oldest go while what is left exceeds it; the result says what and why."""
    segments = [seg(1, 100), seg(11, 200), seg(21, 300), seg(31, 50)]
    removal = run(segments, max_bytes=400)
    assert removal is not None
    assert removal.names == ["00000000000000000001.jsonl", "00000000000000000011.jsonl"]
    assert (removal.total_bytes, removal.first_seq, removal.last_seq, removal.reason) == (300, 1, 20, "size")
    assert run(segments, max_bytes=650) is None  # exactly at the limit: nothing exceeds it
    assert removed_seqs(run(segments, max_bytes=649)) == [1]


def test_age_removes_segments_whose_last_record_is_older_than_max_age() -> None:
    """The oldest go while their last record is older than now - max_age; one exactly that old stays."""
    segments = [seg(1, last_ts=NOW - 3 * HOUR), seg(11, last_ts=NOW - 2 * HOUR), seg(21, last_ts=NOW)]
    removal = run(segments, max_age=2 * HOUR)
    assert removed_seqs(removal) == [1]
    assert removal is not None and removal.reason == "age" and removal.last_seq == 10
    assert removed_seqs(run(segments, max_age=2 * HOUR - 1)) == [1, 11]


def test_the_last_segment_is_never_removed() -> None:
    """The segment being written stays even when it alone is over max_bytes and older than max_age."""
    old = NOW - 100 * HOUR
    assert run([seg(1, 10**6, old)], max_bytes=1, max_age=1) is None
    assert removed_seqs(run([seg(1, 10**6, old), seg(2, 10**6, old)], max_bytes=1, max_age=1)) == [1]
    assert run([], max_bytes=1, max_age=1) is None


def test_floor_protects_segments_holding_records_at_or_above_it() -> None:
    """A segment goes only if the next one starts at or below floor_seq (all its records are below it)."""
    segments = [seg(1), seg(11), seg(21), seg(31)]
    assert removed_seqs(run(segments, max_bytes=1, floor_seq=21)) == [1, 11]
    assert removed_seqs(run(segments, max_bytes=1, floor_seq=20)) == [1]  # 11-20 holds seq 20
    assert run(segments, max_bytes=1, floor_seq=10) is None  # the first segment holds seq 10
    assert removed_seqs(run(segments, max_bytes=1, floor_seq=10**9)) == [1, 11, 21]


def test_only_the_oldest_go_never_leaving_a_hole() -> None:
    """A young (or unknown-age) oldest segment keeps the old segments after it: no hole in the seqs."""
    young_first = [seg(1, last_ts=NOW), seg(11, last_ts=NOW - 9 * HOUR), seg(21, last_ts=NOW)]
    assert run(young_first, max_age=HOUR) is None
    unknown_first = [seg(1, last_ts=None), seg(11, last_ts=NOW - 9 * HOUR), seg(21, last_ts=NOW)]
    assert run(unknown_first, max_age=HOUR) is None


def test_unknown_time_goes_for_size_but_not_for_age() -> None:
    """A segment whose last record's time is unknown is not removed for age, but is for size."""
    segments = [seg(1, 100, None), seg(11, 100, NOW - 9 * HOUR), seg(21, 100, NOW)]
    assert run(segments, max_age=HOUR) is None
    removal = run(segments, max_age=HOUR, max_bytes=250)
    assert removed_seqs(removal) == [1, 11]
    assert removal is not None and removal.reason == "size and age"


def test_size_and_age_together() -> None:
    """Each limit removes what it would alone; together, the longer prefix goes and the reason names both."""
    segments = [
        seg(1, 100, NOW - 9 * HOUR),
        seg(11, 100, NOW - 8 * HOUR),
        seg(21, 100, NOW),
        seg(31, 100, NOW),
    ]
    assert removed_seqs(run(segments, max_age=HOUR)) == [1, 11]
    assert removed_seqs(run(segments, max_bytes=300)) == [1]
    removal = run(segments, max_age=HOUR, max_bytes=300)
    assert removed_seqs(removal) == [1, 11]
    assert removal is not None and removal.reason == "size and age"
    by_size = run(segments, max_age=HOUR, max_bytes=100)  # age alone would stop at 21
    assert removed_seqs(by_size) == [1, 11, 21]
    assert by_size is not None and by_size.reason == "size and age" and by_size.last_seq == 30


def test_negative_limits_are_refused() -> None:
    """A negative max_bytes or max_age is a mistake, not "no limit"."""
    with pytest.raises(ValueError):
        run([seg(1), seg(2)], max_bytes=-1)
    with pytest.raises(ValueError):
        run([seg(1), seg(2)], max_age=-1)


def test_a_removal_cut_short_says_what_it_held() -> None:
    """Removal.first(n) keeps the n oldest, their bytes and the seqs they held, and the reason."""
    removal = run([seg(1, 10), seg(11, 20), seg(21, 30), seg(31, 40)], max_bytes=1)
    assert removal is not None
    short = removal.first(2)
    assert (short.names, short.total_bytes, short.first_seq, short.last_seq, short.reason) == (
        [seg(1).name, seg(11).name],
        30,
        1,
        20,
        "size",
    )
    assert removal.first(3) is removal
    with pytest.raises(ValueError):
        removal.first(0)


def test_record_seconds_reads_a_record_ts() -> None:
    """A record's RFC 3339 ts reads back as the seconds it was written at, microseconds included."""
    assert record_seconds("2026-11-18T11:06:40.250000Z") == 1_795_000_000.25


@st.composite
def segment_lists(draw: st.DrawFn) -> list[SegmentInfo]:
    gaps = draw(st.lists(st.integers(1, 50), min_size=0, max_size=12))
    segments = []
    first = draw(st.integers(1, 100))
    for gap in gaps:
        size = draw(st.integers(0, 1000))
        last_ts = draw(st.none() | st.floats(NOW - 10 * HOUR, NOW))
        segments.append(seg(first, size, last_ts))
        first += gap
    return segments


@given(
    segment_lists(),
    st.integers(0, 5000),
    st.sampled_from([0.0, 1.0, HOUR, 5 * HOUR]),
    st.integers(0, 800),
)
def test_plan_properties(segments: list[SegmentInfo], max_bytes: int, max_age: float, floor: int) -> None:
    """Whatever the input, the plan removes a prefix, never the last segment, never a record >= floor,
    and stops only where the next segment may not or need not go."""
    removal = plan(segments, max_bytes=max_bytes, max_age=max_age, now=NOW, floor_seq=floor)
    count = 0 if removal is None else len(removal.segments)
    if removal is not None:
        assert list(removal.segments) == segments[:count]  # a prefix, oldest first
        assert count < len(segments)  # never the last
        assert segments[count].first_seq <= floor  # every record removed is below the floor
        assert removal.last_seq == segments[count].first_seq - 1 < floor
        assert removal.first_seq == segments[0].first_seq
        assert removal.total_bytes == sum(s.size for s in removal.segments)
        assert removal.reason in ("size", "age", "size and age")
    if count + 1 < len(segments) and segments[count + 1].first_seq <= floor:
        left = sum(s.size for s in segments[count:])
        oldest = segments[count]
        over_size = max_bytes > 0 and left > max_bytes
        too_old = max_age > 0 and oldest.last_ts is not None and oldest.last_ts < NOW - max_age
        assert not (over_size or too_old)  # it stopped where it had to


# -- passes on a real journal


def run_now(job: Callable[[], _T]) -> Deferred[_T]:
    """A run_blocking that runs the job at once, in the calling thread."""
    try:
        return succeed(job())
    except BaseException:
        return fail()


def retention_logs() -> AbstractContextManager[list[LogEvent]]:
    """The events retention logs while the block runs."""
    return logs_of("gateway.journal.retention")


def filled(harness: Callable[..., Harness], records: int = 40) -> Harness:
    """A journal of `records` records, five to a segment, all on disk."""
    h = harness(segment_bytes=SEGMENT_BYTES)
    h.append_many(records)
    h.settle()
    return h


def retention_records(h: Harness) -> list[Record]:
    return [r for r in read_records(h.path) if r.kind == RETENTION_RECORD]


def body(record: Record) -> dict[str, Any]:
    assert isinstance(record.body, dict)
    return record.body


def first_seqs(h: Harness) -> list[int]:
    return [s.first_seq for s in list_segments(h.path)]


def sizes(h: Harness) -> dict[int, int]:
    return {s.first_seq: os.stat(s.path).st_size for s in list_segments(h.path)}


class Unlinks:
    """os.unlink that records paths and fails the ones the test names, once each."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.fail_once: set[str] = set()

    def __call__(self, path: str) -> None:
        name = os.path.basename(path)
        if name in self.fail_once:
            self.fail_once.discard(name)
            raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
        self.paths.append(name)
        os.unlink(path)


def test_a_pass_removes_old_segments_journals_it_and_the_rest_still_reads_and_verifies(
    harness: Callable[..., Harness],
) -> None:
    """Over max_bytes, the oldest segments go soon after start, a retention record says what went,
    and the journal left reads from its first record on and verifies with it as the anchor."""
    h = filled(harness)
    assert first_seqs(h) == [1, 6, 11, 16, 21, 26, 31, 36]
    before = sizes(h)
    (Path(h.path) / "00000000000000000001.jsonl.cut-925.1").write_bytes(b"cut")
    (Path(h.path) / "00000000000000000006.jsonl.quarantined-0.1").write_bytes(b"bad")
    fsyncs: list[int] = []
    retention = Retention(
        h.journal,
        h.clock,
        max_bytes=4 * SEGMENT_BYTES,
        max_age=0,
        floor=lambda: h.journal.last_seq + 1,
        run_blocking=run_now,
        fsync=fsyncs.append,
    )
    with retention_logs() as logs:
        retention.start()
        assert first_seqs(h)[0] == 1  # not during start: at the next turn
        h.settle()
    assert first_seqs(h) == [21, 26, 31, 36, 41]  # 41: the retention record, in a segment of its own
    assert len(fsyncs) == 1  # the directory, once for the pass
    [record] = retention_records(h)
    removed_bytes = sum(before[s] for s in (1, 6, 11, 16))
    assert body(record) == {
        "removed": [f"{s:020d}.jsonl" for s in (1, 6, 11, 16)],
        "first_seq": 1,
        "last_seq": 20,
        "bytes": removed_bytes,
        "reason": "size",
        "floor": 41,
        "max_bytes": 4 * SEGMENT_BYTES,
        "max_age": 0,
    }
    assert (record.park, record.code, record.opr, record.seq) == ("", "", "", 41)
    assert [r.seq for r in read_records(h.path)] == list(range(21, 42))
    assert verify(h.path) == 21
    assert (retention.removed_segments_total, retention.removed_bytes_total) == (4, removed_bytes)
    assert retention.last_error is None
    assert [e["log_level"] for e in logs] == [LogLevel.info]
    assert logs[0]["removed"] == body(record)["removed"]
    # side files are not segments, and stay
    assert sorted(p.name for p in Path(h.path).iterdir() if ".jsonl." in p.name) == [
        "00000000000000000001.jsonl.cut-925.1",
        "00000000000000000006.jsonl.quarantined-0.1",
    ]
    d = retention.stop()
    assert d.called


def test_passes_run_every_interval_and_a_quiet_pass_journals_nothing(harness: Callable[..., Harness]) -> None:
    """After the first pass, one runs every interval; a pass with nothing to remove writes no record
    and syncs nothing, and segments that grow past the limit later go at the next pass."""
    h = filled(harness, 10)
    fsyncs: list[int] = []
    retention = Retention(
        h.journal,
        h.clock,
        max_bytes=4 * SEGMENT_BYTES,
        max_age=0,
        floor=lambda: h.journal.last_seq + 1,
        interval=60,
        run_blocking=run_now,
        fsync=fsyncs.append,
    )
    retention.start()
    h.settle()
    assert first_seqs(h) == [1, 6] and fsyncs == [] and retention_records(h) == []
    h.append_many(20)
    h.settle()
    h.clock.advance(59)
    h.settle()
    assert first_seqs(h)[0] == 1
    h.clock.advance(1)
    h.settle()
    assert first_seqs(h) == [11, 16, 21, 26, 31] and len(fsyncs) == 1
    assert [body(r)["removed"] for r in retention_records(h)] == [[f"{s:020d}.jsonl" for s in (1, 6)]]
    retention.stop()
    assert h.clock.getDelayedCalls() == []


def test_age_removes_segments_whose_last_record_is_old(harness: Callable[..., Harness]) -> None:
    """With max_age, the segments whose last record is older than that go; the reason says "age"."""
    h = harness(segment_bytes=SEGMENT_BYTES)
    h.append_many(12)  # 1-5, 6-10, 11-12 (and on)
    h.settle()
    h.clock.advance(2 * HOUR)
    h.append_many(8)  # 13-15 join 11-12; 16-20
    h.settle()
    retention = Retention(
        h.journal, h.clock, max_bytes=0, max_age=HOUR, floor=lambda: 10**9, run_blocking=run_now
    )
    retention.start()
    h.settle()
    assert first_seqs(h) == [11, 16, 21]  # 11-15 ends two hours later than 6-10; 21: the record
    [record] = retention_records(h)
    assert (body(record)["reason"], body(record)["last_seq"], body(record)["max_age"]) == (
        "age",
        10,
        HOUR,
    )
    assert verify(h.path) == 11
    retention.stop()


def test_floor_protects_unforwarded_segments(harness: Callable[..., Harness]) -> None:
    """Records at or above the floor stay, with the segment that holds them, however far over the limit."""
    h = filled(harness)
    floor = [13]
    retention = Retention(
        h.journal, h.clock, max_bytes=1, max_age=0, floor=lambda: floor[0], run_blocking=run_now
    )
    retention.start()
    h.settle()
    assert first_seqs(h) == [11, 16, 21, 26, 31, 36, 41]
    assert [r.seq for r in read_records(h.path)][:3] == [11, 12, 13]
    [record] = retention_records(h)
    assert (body(record)["floor"], body(record)["last_seq"]) == (13, 10)
    floor[0] = 16  # the forwarder moved on: 11-15 may go now
    h.clock.advance(60)
    h.settle()
    assert first_seqs(h) == [16, 21, 26, 31, 36, 41]
    assert verify(h.path) == h.journal.last_seq - 15
    retention.stop()


def test_stop_waits_for_a_pass_in_flight_and_ticks_never_overlap(harness: Callable[..., Harness]) -> None:
    """A tick while a pass runs is skipped; stop fires only once the pass in flight journaled its removal."""
    h = filled(harness)
    runner = ManualRunner()
    floors: list[int] = []

    def floor() -> int:
        floors.append(h.journal.last_seq + 1)
        return floors[-1]

    retention = Retention(
        h.journal, h.clock, max_bytes=4 * SEGMENT_BYTES, max_age=0, floor=floor, run_blocking=runner
    )
    retention.start()
    h.settle()
    assert len(runner.jobs) == 1 and floors == [41]
    h.clock.advance(60)  # the pass is still running: this tick is skipped
    h.clock.advance(60)
    assert len(runner.jobs) == 1 and floors == [41]
    stopped = retention.stop()
    assert not stopped.called
    runner.run_next()  # the segments go; the record is appended but not yet on disk
    assert first_seqs(h)[0] == 21 and not stopped.called
    h.settle()
    assert stopped.called and len(retention_records(h)) == 1
    h.clock.advance(600)
    assert runner.jobs == [] and floors == [41]


def test_a_failed_unlink_stops_the_pass_reports_what_went_and_the_next_pass_goes_on(
    harness: Callable[..., Harness],
) -> None:
    """An unlink that fails ends the pass: what went before is journaled and counted, the error is
    logged and kept; the next pass removes the rest."""
    h = filled(harness)
    unlinks = Unlinks()
    unlinks.fail_once.add(f"{11:020d}.jsonl")
    retention = Retention(
        h.journal,
        h.clock,
        max_bytes=4 * SEGMENT_BYTES,
        max_age=0,
        floor=lambda: 10**9,
        run_blocking=run_now,
        unlink=unlinks,
    )
    with retention_logs() as logs:
        retention.start()
        h.settle()
    assert first_seqs(h) == [11, 16, 21, 26, 31, 36, 41]
    [record] = retention_records(h)
    assert (body(record)["removed"], body(record)["last_seq"]) == (
        [f"{1:020d}.jsonl", f"{6:020d}.jsonl"],
        10,
    )
    assert retention.removed_segments_total == 2
    assert retention.last_error is not None and "00000000000000000011.jsonl" in retention.last_error
    assert "Permission denied" in retention.last_error
    assert [e["log_level"] for e in logs] == [LogLevel.error, LogLevel.info]
    h.clock.advance(60)
    h.settle()
    assert retention.last_error is None
    second = body(retention_records(h)[1])
    assert second["first_seq"] == 11 and first_seqs(h)[0] == second["last_seq"] + 1 > 11
    assert retention.removed_segments_total == 2 + len(second["removed"])
    assert verify(h.path) == h.journal.last_seq - second["last_seq"]
    retention.stop()


def test_a_refused_append_is_logged_and_the_loop_goes_on(harness: Callable[..., Harness]) -> None:
    """If the journal refuses the retention record (disk nearly full), the removal is logged and counted,
    the error kept, and the next pass still runs."""
    h = filled(harness)
    h.journal.guard = lambda: "free space is low"
    retention = Retention(
        h.journal, h.clock, max_bytes=4 * SEGMENT_BYTES, max_age=0, floor=lambda: 10**9, run_blocking=run_now
    )
    with retention_logs() as logs:
        retention.start()
        h.settle()
    assert first_seqs(h) == [21, 26, 31, 36] and retention_records(h) == []
    assert retention.removed_segments_total == 4
    assert retention.last_error is not None and "free space is low" in retention.last_error
    assert LogLevel.error in [e["log_level"] for e in logs]
    h.journal.guard = None
    h.append_many(20)
    h.settle()
    h.clock.advance(60)
    h.settle()
    assert first_seqs(h)[0] == 41 and retention.last_error is None
    assert len(retention_records(h)) == 1
    retention.stop()


def test_an_os_error_reading_the_directory_is_logged_and_the_next_pass_tries_again(tmp_path: Path) -> None:
    """A pass that cannot list the segments logs the error and keeps it; the next tick tries again."""

    class Stub:
        def __init__(self) -> None:
            self.path = str(tmp_path / "later")
            self.appended: list[object] = []

        def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
            self.appended.append(body)
            return fail(enospc())

    clock = Clock()
    stub = Stub()
    retention = Retention(stub, clock, max_bytes=1, max_age=0, floor=lambda: 10**9, run_blocking=run_now)
    with retention_logs() as logs:
        retention.start()
        clock.advance(0)
    assert retention.last_error is not None and "No such file or directory" in retention.last_error
    assert [e["log_level"] for e in logs] == [LogLevel.error]
    os.mkdir(tmp_path / "later")
    clock.advance(60)
    assert retention.last_error is None and stub.appended == []
    retention.stop()


def test_the_time_of_a_closed_segment_is_read_once(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Age reads the last line of each closed segment that may go, once: closed segments never change."""
    h = filled(harness, 20)
    read: list[str] = []

    def counting(path: str) -> bytes | None:
        read.append(os.path.basename(path))
        return read_last_line(path)

    monkeypatch.setattr(retention_module, "read_last_line", counting)
    retention = Retention(
        h.journal, h.clock, max_bytes=0, max_age=HOUR, floor=lambda: 11, run_blocking=run_now
    )
    retention.start()
    h.settle()
    h.clock.advance(60)
    h.settle()
    below_floor = [f"{1:020d}.jsonl", f"{6:020d}.jsonl"]  # 11-15 holds the floor; 16 is being written
    assert read == below_floor
    assert first_seqs(h) == [1, 6, 11, 16]  # nothing is an hour old yet
    h.clock.advance(HOUR)
    h.settle()
    assert first_seqs(h)[0] == 11 and read == below_floor
    retention.stop()


def test_no_limits_no_passes(harness: Callable[..., Harness]) -> None:
    """With neither limit, retention is off: start schedules nothing and stop fires at once."""
    h = filled(harness, 10)
    retention = Retention(h.journal, h.clock, max_bytes=0, max_age=0, floor=lambda: 10**9)
    assert not retention.enabled
    retention.start()
    assert h.clock.getDelayedCalls() == []
    assert retention.stop().called

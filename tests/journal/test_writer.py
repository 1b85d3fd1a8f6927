"""The journal writer on a Clock with a hand-cranked fsync thread: group commit, modes, failures."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record, format_ts
from gateway.journal.segments import list_segments, segment_name
from gateway.journal.writer import Journal, JournalWriteError
from tests.journal.helpers import Harness, enospc, results
from tests.journal.test_record import json_values


def test_open_creates_first_segment(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Opening an absent directory creates it with an empty first segment."""
    h = harness(tmp_path / "a" / "b")
    assert [s.name for s in list_segments(h.path)] == [segment_name(1)]
    assert h.journal.last_seq == 0
    assert (h.path / segment_name(1)).read_bytes() == b""


def test_append_returns_record_after_fsync(h: Harness) -> None:
    """append assigns seq, ts and chain and fires with the record once fsynced."""
    d = h.journal.append("uplink", "P001", "carIn", "o-1", {"plate": "粤B12345"})
    assert not d.called
    assert h.journal.last_seq == 1 and h.journal.committed_seq == 0
    h.turn()
    assert h.disk.writes and not d.called  # written, not yet synced
    assert len(h.runner.jobs) == 1
    h.runner.run_all()
    [record] = results([d])
    assert record == Record(
        1,
        format_ts(h.clock.seconds()),
        "uplink",
        "P001",
        "carIn",
        "o-1",
        {"plate": "粤B12345"},
        record.chain,
    )
    assert h.journal.committed_seq == 1
    assert list(read_records(h.path)) == [record]


def test_hundred_appends_in_one_turn_share_one_write_and_fsync(h: Harness) -> None:
    """All records appended in one reactor turn go out in one write and one fsync."""
    ds = h.append_many(100)
    h.turn()
    assert len(h.disk.writes) == 1
    h.runner.run_all()
    assert len(h.disk.fsyncs) == 1
    assert [r.seq for r in results(ds)] == list(range(1, 101))
    assert verify(h.path) == 100


def test_appends_during_fsync_form_the_next_batch(h: Harness) -> None:
    """Records appended while an fsync is in flight wait, then share the next batch."""
    first = h.append_many(10)
    h.turn()
    assert len(h.runner.jobs) == 1  # fsync of batch 1 in flight
    second = []
    for _ in range(5):  # five more turns while the fsync runs
        second += h.append_many(4)
        h.turn()
    assert len(h.disk.writes) == 1 and len(h.runner.jobs) == 1
    assert not any(d.called for d in first + second)
    h.runner.run_next()  # fsync 1 done
    assert all(d.called for d in first) and not any(d.called for d in second)
    h.turn()
    assert len(h.disk.writes) == 2 and h.disk.writes[1] > 0
    assert len(h.runner.jobs) == 1  # one fsync for all 20
    h.runner.run_next()
    assert [r.seq for r in results(first + second)] == list(range(1, 31))
    assert len(h.disk.fsyncs) == 2


def test_deferreds_fire_in_seq_order(h: Harness) -> None:
    """Callbacks run in seq order, across batches."""
    fired: list[int] = []
    for _ in range(3):
        for d in h.append_many(5):
            d.addCallback(lambda r: fired.append(r.seq))
        h.turn()
    h.settle()
    assert fired == list(range(1, 16))


def test_append_from_a_callback_goes_into_a_later_batch(h: Harness) -> None:
    """An append made by a callback is flushed without anyone else appending."""
    later = []
    h.journal.append("a", "", "", "", 1).addCallback(
        lambda _: later.append(h.journal.append("b", "", "", "", 2))
    )
    h.settle()
    [record] = results(later)
    assert record.seq == 2
    assert len(h.disk.fsyncs) == 2


def test_chain_continues_over_batches(h: Harness) -> None:
    """Records read back equal the appended ones and the chain verifies."""
    appended = []
    for n in (1, 7, 3):
        appended += h.append_many(n)
        h.settle()
    assert list(read_records(h.path)) == results(appended)
    assert verify(h.path) == 11


def test_never_mode_fires_after_write_without_fsync(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """fsync="never" acknowledges once written and never fsyncs a batch."""
    h = harness(tmp_path, fsync="never")
    ds = h.append_many(10)
    h.turn()
    assert [r.seq for r in results(ds)] == list(range(1, 11))
    assert h.disk.fsyncs == [] and h.runner.jobs == []
    h.clock.advance(60)
    assert h.disk.fsyncs == []


def test_interval_mode_fsyncs_on_a_timer(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """fsync="interval" acknowledges once written and fsyncs every interval seconds."""
    h = harness(tmp_path, fsync="interval", interval=0.5)
    ds = h.append_many(3)
    h.turn()
    assert all(d.called for d in ds)
    assert h.runner.jobs == []
    h.clock.advance(0.4)
    assert h.runner.jobs == []
    h.clock.advance(0.1)
    assert len(h.runner.jobs) == 1
    h.append_many(2)  # written while that fsync runs
    h.turn()
    h.runner.run_all()
    assert len(h.disk.fsyncs) == 1
    h.clock.advance(0.5)
    h.runner.run_all()
    assert len(h.disk.fsyncs) == 2
    h.clock.advance(5)  # nothing new written: no fsync
    assert h.runner.jobs == [] and len(h.disk.fsyncs) == 2


def test_interval_fsync_failure_breaks_the_journal(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A failed interval fsync (acknowledged records may be lost) makes appends fail."""
    h = harness(tmp_path, fsync="interval", interval=0.5)
    ds = h.append_many(3)
    h.turn()
    results(ds)  # acknowledged
    h.disk.fsync_fault = OSError(errno.EIO, "I/O error")
    h.clock.advance(0.5)
    h.runner.run_all()
    [failure] = results([h.journal.append("x", "", "", "", None)])
    assert isinstance(failure, Failure)
    assert failure.value.errno == errno.EIO
    assert "may be lost" in str(failure.value)


def test_rotation_at_segment_bytes(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Segments hold at most segment_bytes, are named by their first seq, and chain on."""
    h = harness(tmp_path, segment_bytes=1000)
    ds = []
    for _ in range(6):
        ds += h.append_many(7)
        h.turn()
    h.settle()
    records = results(ds)
    segments = list_segments(tmp_path)
    assert len(segments) > 5
    for segment in segments:
        size = os.path.getsize(segment.path)
        assert 0 < size <= 1000
        first = next(read_records(tmp_path, segment.first_seq))
        assert first.seq == segment.first_seq
    assert list(read_records(tmp_path)) == records
    assert verify(tmp_path) == 42
    # a directory fsync for each new segment
    assert h.disk.fsyncs.count(h.journal._directory_fd) == len(segments) - 1


@pytest.mark.parametrize("mode", ["interval", "never"])
def test_rotation_syncs_the_full_segment_first(
    harness: Callable[..., Harness], tmp_path: Path, mode: str
) -> None:
    """Without per-batch fsync, a full segment is still synced before the next starts."""
    h = harness(tmp_path, segment_bytes=300, fsync=mode)
    h.append_many(3)
    h.settle()
    assert len(list_segments(tmp_path)) >= 2
    assert h.disk.fsyncs  # the old segment's fd and the directory
    assert verify(tmp_path) == 3


def test_record_larger_than_a_segment_gets_its_own(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A record bigger than segment_bytes is written alone in a segment."""
    h = harness(tmp_path, segment_bytes=400)
    h.journal.append("a", "", "", "", "x")
    h.journal.append("big", "", "", "", "y" * 1000)
    h.journal.append("c", "", "", "", "z")
    h.settle()
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 2, 3]
    assert verify(tmp_path) == 3


def test_replay_since(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """replay(since_seq) yields the records from that seq on, across segments."""
    h = harness(tmp_path, segment_bytes=500)
    h.append_many(30)
    h.settle()
    assert [r.seq for r in h.journal.replay(17)] == list(range(17, 31))
    assert [r.seq for r in h.journal.replay()] == list(range(1, 31))
    assert list(h.journal.replay(31)) == []


def test_restart_continues_seq_and_chain(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Reopening a journal continues its seq and chain (across segments)."""
    h = harness(tmp_path, segment_bytes=700)
    h.append_many(10)
    h.settle()
    journal = h.reopen()
    assert journal.last_seq == 10
    d = journal.append("after", "", "", "", {"restart": True})
    h.settle()
    assert results([d])[0].seq == 11
    assert verify(tmp_path) == 11
    assert [r.kind for r in read_records(tmp_path)][-2:] == ["uplink", "after"]


def test_open_twice_is_refused(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A journal directory can be open in one place only."""
    harness(tmp_path)
    with pytest.raises(JournalWriteError, match="another process"):
        Journal.open(tmp_path, reactor=Clock())


def test_unserializable_body_raises_without_using_a_seq(h: Harness) -> None:
    """A body that is not JSON-like raises at once and uses no seq."""
    with pytest.raises(TypeError):
        h.journal.append("x", "", "", "", {"x": object()})
    with pytest.raises(TypeError):
        h.journal.append("x", None, "", "", 1)  # type: ignore[arg-type]
    assert h.journal.last_seq == 0
    d = h.journal.append("x", "", "", "", 1)
    h.settle()
    assert results([d])[0].seq == 1


@settings(max_examples=30, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(json_values, min_size=1, max_size=8))
def test_any_json_bodies_round_trip_through_the_journal(
    harness: Callable[..., Harness], tmp_path: Path, bodies: list[object]
) -> None:
    """Bodies appended in one batch are read back equal, one line each, and verify."""
    directory = tmp_path / os.urandom(8).hex()
    h = harness(directory)
    ds = [h.journal.append("k", "p", "c", "o", body) for body in bodies]
    h.settle()
    assert [r.body for r in read_records(directory)] == bodies
    assert [r.body for r in results(ds)] == bodies
    assert h.data().count(b"\n") == len(bodies)
    assert verify(directory) == len(bodies)
    h.close()


# -- failures


def test_fsync_enospc_fails_the_batch_and_cuts_it(h: Harness) -> None:
    """ENOSPC on fsync fails the batch, leaves no byte of it, and the journal goes on."""
    good = h.append_many(3)
    h.settle()
    size = len(h.data())
    bad = h.append_many(4)
    h.turn()
    h.disk.fsync_fault = enospc()
    h.runner.run_next()  # the fsync fails
    assert not any(d.called for d in bad)  # not before the cut is synced
    h.disk.fsync_fault = None
    h.runner.run_all()  # truncate + fsync
    for failure in results(bad):
        assert isinstance(failure, Failure) and failure.check(JournalWriteError)
        assert failure.value.errno == errno.ENOSPC
    assert len(h.data()) == size
    assert h.journal.last_seq == 3
    d = h.journal.append("after", "", "", "", "ok")
    h.settle()
    assert results([d])[0].seq == 4
    assert [r.seq for r in read_records(h.path)] == [1, 2, 3, 4]
    assert verify(h.path) == 4
    assert [r.seq for r in results(good)] == [1, 2, 3]


def test_write_enospc_midway_fails_the_batch_and_cuts_it(h: Harness) -> None:
    """A write that stops part-way with ENOSPC is cut off; the next append chains on disk."""
    h.append_many(2)
    h.settle()
    size = len(h.data())
    h.disk.write_fault = enospc()
    h.disk.write_fault_after = 50  # 50 bytes reach the file first
    bad = h.append_many(3)
    h.turn()
    assert len(h.data()) == size + 50
    h.disk.write_fault = None
    h.runner.run_all()
    assert all(isinstance(f, Failure) and f.value.errno == errno.ENOSPC for f in results(bad))
    assert len(h.data()) == size
    d = h.journal.append("after", "", "", "", "ok")
    h.settle()
    assert results([d])[0].seq == 3
    assert verify(h.path) == 3


def test_records_chained_on_a_failed_batch_fail_too(h: Harness) -> None:
    """Records appended while a failing batch was in flight fail; later ones succeed."""
    bad = h.append_many(2)
    h.turn()
    chained = h.append_many(2)  # appended while the fsync runs
    h.turn()
    h.disk.fsync_fault = enospc()
    h.runner.run_next()
    h.disk.fsync_fault = None
    fresh = h.append_many(1)  # appended after the failure is known
    h.settle()
    failed = results(bad + chained)
    assert all(isinstance(f, Failure) and f.check(JournalWriteError) for f in failed)
    assert "earlier record in flight failed" in str(failed[-1].value)
    assert [r.seq for r in results(fresh)] == [1]
    assert [r.seq for r in read_records(h.path)] == [1]
    assert verify(h.path) == 1


def test_failures_fire_in_seq_order(h: Harness) -> None:
    """Errbacks, like callbacks, run in seq order."""
    order: list[int] = []

    def failed(failure: Failure, i: int) -> None:
        order.append(i)

    for i, d in enumerate(h.append_many(5)):
        d.addErrback(failed, i)
    h.turn()
    h.disk.fsync_fault = enospc()
    h.runner.run_next()
    h.disk.fsync_fault = None
    h.settle()
    assert order == [0, 1, 2, 3, 4]


def test_failed_truncation_breaks_the_journal(h: Harness) -> None:
    """If a failed batch cannot be cut off, every later append fails at once."""
    bad = h.append_many(2)
    h.turn()
    h.disk.fsync_fault = enospc()
    h.disk.ftruncate_fault = OSError(errno.EIO, "I/O error")
    h.settle()
    assert all(isinstance(f, Failure) for f in results(bad))
    [failure] = results([h.journal.append("x", "", "", "", 1)])
    assert isinstance(failure, Failure) and failure.check(JournalWriteError)
    assert "broken" in str(failure.value)
    assert h.journal.problem is not None and "broken" in h.journal.problem


def test_problem_is_none_while_the_journal_can_write(h: Harness) -> None:
    """A journal that failed one batch but could cut it off has no standing problem."""
    assert h.journal.problem is None
    [bad] = h.append_many(1)
    h.turn()
    h.disk.fsync_fault = enospc()
    h.runner.run_next()  # the batch's fsync fails; the cut that follows succeeds
    h.disk.fsync_fault = None
    h.settle()
    assert isinstance(results([bad])[0], Failure)
    assert h.journal.problem is None


def test_rotation_failure_fails_pending_and_retries(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """If the next segment cannot be created, its records fail; the next try rotates."""
    h = harness(tmp_path, segment_bytes=300)
    h.append_many(1)
    h.settle()
    h.disk.fsync_fault = enospc()  # the directory fsync of the new segment
    bad = h.append_many(2)
    h.settle()
    assert all(isinstance(f, Failure) for f in results(bad))
    h.disk.fsync_fault = None
    ok = h.append_many(2)
    h.settle()
    assert [r.seq for r in results(ok)] == [2, 3]
    assert verify(tmp_path) == 3


# -- closing


def test_close_flushes_pending_and_refuses_later_appends(h: Harness) -> None:
    """close() writes what is pending, fsyncs, closes; appends after it fail."""
    ds = h.append_many(5)
    closed = h.journal.close()
    [failure] = results([h.journal.append("late", "", "", "", 1)])
    assert isinstance(failure, Failure) and "closed" in str(failure.value)
    assert h.journal.problem is not None and "closed" in h.journal.problem
    h.settle()
    assert [r.seq for r in results(ds)] == [1, 2, 3, 4, 5]
    assert results([closed]) == [None]
    assert verify(h.path) == 5
    assert h.journal.close().called


def test_close_in_never_mode_fsyncs(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Closing syncs the segment even in "never" mode."""
    h = harness(tmp_path, fsync="never")
    h.append_many(2)
    h.turn()
    assert h.disk.fsyncs == []
    h.close()
    assert len(h.disk.fsyncs) == 1


def test_failed_first_batch_of_a_segment_reuses_it(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A failed write into a new segment empties it; the next record (same seq) goes there."""
    h = harness(tmp_path, segment_bytes=300)  # one record a segment
    h.append_many(1)
    h.settle()
    h.disk.next_write_faults.append(enospc())
    [failure] = h.append_many(1)
    h.settle()
    assert isinstance(results([failure])[0], Failure)
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 2]
    assert os.path.getsize(list_segments(tmp_path)[1].path) == 0
    d = h.journal.append("again", "", "", "", None)
    h.settle()
    assert results([d])[0].seq == 2
    assert [s.first_seq for s in list_segments(tmp_path)] == [1, 2]
    assert verify(tmp_path) == 2


def test_never_mode_write_failure_is_cut_without_fsync(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """In "never" mode a failed write is cut off too; nothing is fsynced."""
    h = harness(tmp_path, fsync="never")
    h.append_many(2)
    h.turn()
    h.disk.write_fault, h.disk.write_fault_after = enospc(), 30
    bad = h.append_many(2)
    h.turn()
    h.disk.write_fault = None
    h.settle()
    assert all(isinstance(f, Failure) for f in results(bad))
    assert h.disk.fsyncs == []
    assert verify(tmp_path) == 2


def test_rotation_during_an_interval_fsync_keeps_the_old_fd_open(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """A segment retired while an interval fsync runs on it is closed only after that fsync."""
    h = harness(tmp_path, fsync="interval", interval=0.5, segment_bytes=300)
    h.append_many(1)
    h.turn()
    old_fd = h.journal._fd
    h.clock.advance(0.5)  # interval fsync of old_fd queued, not yet run
    h.append_many(1)
    h.turn()  # rotation queued behind it
    assert len(h.runner.jobs) == 2
    h.runner.run_next(1)  # the rotation finishes first
    assert h.journal._fd != old_fd
    os.fstat(old_fd)  # still open
    h.runner.run_next()  # the interval fsync
    with pytest.raises(OSError):
        os.fstat(old_fd)
    h.settle()
    assert verify(tmp_path) == 2


def test_close_from_a_callback_in_interval_mode(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Closing from an append's callback leaves no interval fsync behind."""
    h = harness(tmp_path, fsync="interval", interval=0.5)
    closed = []
    h.journal.append("a", "", "", "", 1).addCallback(lambda _: closed.append(h.journal.close()))
    h.settle()
    h.clock.advance(5)
    h.runner.run_all()
    assert results(closed) == [None]
    assert len(h.disk.fsyncs) == 1  # the close's
    assert h.clock.getDelayedCalls() == []


steps = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.integers(1, 6)),
        st.tuples(
            st.sampled_from(["turn", "run", "turn", "run", "fail_write", "fail_fsync", "tick"]), st.just(0)
        ),
    ),
    max_size=60,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    mode=st.sampled_from(["always", "interval", "never"]),
    segment_bytes=st.sampled_from([250, 600, 64 * 2**20]),
    script=steps,
)
def test_any_interleaving_keeps_file_and_acknowledgements_in_step(
    harness: Callable[..., Harness],
    tmp_path: Path,
    mode: str,
    segment_bytes: int,
    script: list[tuple[str, int]],
) -> None:
    """
    Whatever the order of appends, turns, fsync completions and write/fsync
    faults, every append is answered once, and the journal on disk holds exactly
    the records whose appends succeeded, in the order they were acknowledged,
    chained.
    """
    h = harness(tmp_path / os.urandom(8).hex(), fsync=mode, segment_bytes=segment_bytes, interval=1.0)
    outcomes: list[object] = []
    ds = []
    for step, n in script:
        if step == "append":
            for d in h.append_many(n):
                d.addBoth(outcomes.append)
                ds.append(d)
        elif step == "turn":
            h.turn()
        elif step == "run" and h.runner.jobs:
            h.runner.run_next()
        elif step == "fail_write":
            h.disk.next_write_faults.append(enospc())
        elif step == "fail_fsync":
            h.disk.next_fsync_faults.append(OSError(errno.EIO, "I/O error"))
        elif step == "tick":
            h.clock.advance(1.0)
    h.disk.next_write_faults.clear()
    h.disk.next_fsync_faults.clear()
    h.settle()
    assert all(d.called for d in ds) and len(outcomes) == len(ds)
    acknowledged = [o for o in outcomes if isinstance(o, Record)]
    event(f"some failed: {len(acknowledged) < len(outcomes)}")
    event(f"broken: {h.journal._broken is not None}")
    event(f"segments > 1: {len(list_segments(h.path)) > 1}")
    for o in outcomes:
        assert isinstance(o, Record) or (isinstance(o, Failure) and o.check(JournalWriteError))
    assert list(read_records(h.path)) == acknowledged
    assert [r.seq for r in acknowledged] == list(range(1, len(acknowledged) + 1))
    assert verify(h.path) == len(acknowledged)
    h.close()


def test_fsync_observers_get_one_duration_per_fsync(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """Each batch fsync and each interval fsync reports its duration; a raising observer is ignored."""
    h = harness(tmp_path / "always")
    seen: list[float] = []

    def broken(seconds: float) -> None:
        raise RuntimeError("observer bug")

    h.journal.fsync_observers += [broken, seen.append]
    first = h.append_many(3)
    h.turn()
    assert seen == []  # not before the fsync is done
    h.runner.run_next()
    second = h.append_many(2)
    h.settle()
    assert [r.seq for r in results(first + second)] == [1, 2, 3, 4, 5]
    assert len(seen) == len(h.disk.fsyncs) == 2
    assert all(isinstance(s, float) and s >= 0 for s in seen)
    h.disk.next_fsync_faults.append(enospc())  # a failed fsync reports nothing
    failed = h.append_many(1)
    h.settle()
    [failure] = results(failed)
    assert isinstance(failure, Failure) and len(seen) == 2

    i = harness(tmp_path / "interval", fsync="interval", interval=0.5)
    interval_seen: list[float] = []
    i.journal.fsync_observers.append(interval_seen.append)
    i.append_many(3)
    i.turn()
    assert interval_seen == []  # acknowledged after the write, no fsync yet
    i.clock.advance(0.5)
    i.runner.run_all()
    assert len(interval_seen) == len(i.disk.fsyncs) == 1


def test_commit_observers_see_each_durable_batch_in_order(h: Harness) -> None:
    """Commit observers get each batch once it is durable, after its appenders; failed batches never."""
    batches: list[list[int]] = []
    order: list[str] = []

    def broken(records: list[Record]) -> None:
        raise RuntimeError("observer bug")

    def observe(records: list[Record]) -> None:
        order.append("observer")
        batches.append([r.seq for r in records])

    h.journal.commit_observers += [broken, observe]
    first = h.append_many(3)
    first[-1].addCallback(lambda _: order.append("appender"))
    h.turn()
    assert batches == []  # written, not yet synced
    h.runner.run_next()
    assert batches == [[1, 2, 3]] and order == ["appender", "observer"]
    h.disk.next_fsync_faults.append(enospc())
    failed = h.append_many(2)
    h.settle()
    assert isinstance(results(failed)[0], Failure)
    h.append_many(1)
    h.settle()
    assert batches == [[1, 2, 3], [4]]  # seq 4 reused after the failed batch


def test_a_guard_refuses_appends_without_using_a_seq(h: Harness) -> None:
    """While the guard gives a reason, appends fail at once with ENOSPC and it; then they go on."""
    reasons: list[str | None] = ["free space 10 MiB is below journal.min_free_bytes 64 MiB"]
    h.journal.guard = lambda: reasons[0]
    [refused] = results([h.journal.append("uplink", "P001", "carIn", "o-1", {})])
    assert isinstance(refused, Failure) and refused.check(JournalWriteError)
    assert refused.value.errno == errno.ENOSPC and "below journal.min_free_bytes" in str(refused.value)
    assert h.journal.last_seq == 0 and h.journal.head == (0, "0" * 32)
    reasons[0] = None
    d = h.journal.append("uplink", "P001", "carIn", "o-1", {})
    h.settle()
    [record] = results([d])
    assert record.seq == 1 and h.journal.head == (1, record.chain)

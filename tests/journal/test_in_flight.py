"""Group commit with more than one batch in flight (`batches_in_flight`): each new interleaving.

The rule they all check: a record is acknowledged only after an fsync that
began after it was written succeeded, and after every record before it was
acknowledged; a batch that fails takes every batch written after it down
with it, and the file is cut back to where it began.
"""

from __future__ import annotations

import errno
import os
import random
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from twisted.python.failure import Failure

from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record
from gateway.journal.segments import list_segments
from gateway.journal.writer import Journal, JournalWriteError
from tests.journal.helpers import Harness, enospc, results


def two(harness: Callable[..., Harness], tmp_path: Path, **options: object) -> Harness:
    return harness(tmp_path / "journal", batches_in_flight=2, **options)


def test_batches_in_flight_must_be_at_least_one(tmp_path: Path) -> None:
    """Zero batches in flight is refused at open."""
    with pytest.raises(ValueError, match="batches_in_flight"):
        Journal.open(tmp_path, reactor=None, batches_in_flight=0)  # type: ignore[arg-type]


def test_the_next_batch_is_written_and_synced_while_the_first_fsync_runs(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """With two in flight, appends during an fsync go out at once in a second batch; a third waits."""
    h = two(harness, tmp_path)
    first = h.append_many(3)
    h.turn()
    second = h.append_many(2)
    h.turn()
    assert len(h.disk.writes) == 2 and len(h.runner.jobs) == 2  # both written, both fsyncs queued
    third = h.append_many(4)
    h.turn()
    assert len(h.disk.writes) == 2  # the pipeline is full: the third waits
    h.runner.run_next()  # the first fsync
    assert all(d.called for d in first) and not any(d.called for d in second + third)
    h.turn()
    assert len(h.disk.writes) == 3  # room again: the third goes
    h.settle()
    assert [r.seq for r in results(first + second + third)] == list(range(1, 10))
    assert verify(h.path) == 9


def test_a_later_fsync_done_first_acknowledges_nothing_before_the_earlier(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """The second batch's fsync returning first acknowledges nothing; both go, in order, with the first's."""
    h = two(harness, tmp_path)
    fired: list[int] = []
    for n in (2, 3):
        for d in h.append_many(n):
            d.addCallback(lambda r: fired.append(r.seq))
        h.turn()
    h.runner.run_next(1)  # the second batch's fsync
    assert fired == []
    h.runner.run_next()
    assert fired == [1, 2, 3, 4, 5]


def test_the_first_fsync_failing_fails_the_second_batch_whatever_its_own_fsync_said(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """EIO on the first batch's fsync: both batches fail, in seq order, and neither byte stays on disk.

    The second batch's fsync may well succeed (the kernel reports a writeback
    error once per file): it is not believed, since the first batch's pages,
    which its records chain onto, may be lost.
    """
    h = two(harness, tmp_path)
    h.append_many(1)
    h.settle()
    size = len(h.data())
    order: list[tuple[int, str]] = []
    first, second = h.append_many(2), []
    h.turn()
    second = h.append_many(3)
    h.turn()
    for d in first + second:
        d.addErrback(lambda f: order.append((f.value.errno, str(f.value))))
    h.disk.next_fsync_faults.append(OSError(errno.EIO, "I/O error"))
    h.runner.run_next()  # the first fsync fails
    h.runner.run_next()  # the second succeeds
    assert not any(d.called for d in first + second)  # not before the cut is synced
    h.runner.run_all()  # truncate and fsync
    assert len(order) == 5 and all(code == errno.EIO for code, _ in order)
    assert ["earlier record in flight failed" in message for _, message in order] == [False] * 2 + [True] * 3
    assert len(h.data()) == size and h.journal.last_seq == 1 == h.journal.committed_seq
    again = h.append_many(1)
    h.settle()
    assert [r.seq for r in results(again)] == [2]
    assert verify(h.path) == 2


def test_the_second_fsync_failing_keeps_the_first_batch(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """ENOSPC on the second batch's fsync: the first is acknowledged, the second fails and is cut."""
    h = two(harness, tmp_path)
    first = h.append_many(2)
    h.turn()
    second = h.append_many(2)
    h.turn()
    h.runner.run_next()
    size = len(h.data()) - sum(h.disk.writes[1:])  # the first batch's bytes
    h.disk.next_fsync_faults.append(enospc())
    h.settle()
    assert [r.seq for r in results(first)] == [1, 2]
    assert all(isinstance(f, Failure) and f.value.errno == errno.ENOSPC for f in results(second))
    assert len(h.data()) == size
    assert [r.seq for r in read_records(h.path)] == [1, 2] and verify(h.path) == 2


def test_a_full_disk_on_the_second_write_waits_for_the_first_then_cuts_the_second(
    harness: Callable[..., Harness], tmp_path: Path
) -> None:
    """ENOSPC part-way through the second batch's write: nothing more is written after its partial bytes;
    the first is acknowledged after its fsync, then the second fails and its bytes are cut."""
    h = harness(tmp_path / "journal", batches_in_flight=3)  # room for a third: it still waits
    first = h.append_many(2)
    h.turn()
    size = len(h.data())
    h.disk.write_fault = enospc()
    h.disk.write_fault_after = 40
    second = h.append_many(3)
    h.turn()
    h.disk.write_fault = None
    assert len(h.data()) == size + 40
    third = h.append_many(1)  # chains onto the failed second batch
    h.turn()
    assert len(h.data()) == size + 40  # not written after the partial bytes
    assert not any(d.called for d in first + second + third)
    h.settle()
    assert [r.seq for r in results(first)] == [1, 2]
    failed = results(second + third)
    assert all(isinstance(f, Failure) and f.value.errno == errno.ENOSPC for f in failed)
    assert "earlier record in flight failed" in str(failed[-1].value)
    assert len(h.data()) == size
    after = h.append_many(1)
    h.settle()
    assert [r.seq for r in results(after)] == [3] and verify(h.path) == 3


def test_a_crash_between_the_writes_and_their_fsyncs_acknowledges_nothing(tmp_path: Path) -> None:
    """Killed with two batches written and neither fsync done: no Deferred fired; a restart keeps whole lines.

    What the restart finds is what a crash leaves in any mode: records written
    and never acknowledged (the lot, unanswered, sends them again).
    """
    h = Harness(tmp_path / "journal", batches_in_flight=2)  # not closed after: it "crashes"
    acknowledged = h.append_many(1)
    h.settle()
    written = h.append_many(2)
    h.turn()
    written += h.append_many(2)
    h.turn()
    assert len(h.runner.jobs) == 2 and not any(d.called for d in written)
    # The process dies: its fds go, no job ever runs, nothing more is called.
    journal = h.journal
    os.close(journal._fd)
    os.close(journal._directory_fd)
    h.runner.jobs.clear()
    reopened = Journal.open(h.path, reactor=h.clock, run_blocking=h.runner, batches_in_flight=2)
    assert not any(d.called for d in written)
    assert [r.seq for r in results(acknowledged)] == [1]
    assert reopened.last_seq == 5 and verify(h.path) == 5
    reopened.close()
    h.runner.run_all()


def test_rotation_waits_for_the_batches_in_flight(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A record that needs a new segment waits until every batch in flight is settled, then rotates."""
    h = two(harness, tmp_path, segment_bytes=400)
    first = h.append_many(2)  # about 150 bytes each
    h.turn()
    second = h.append_many(1)  # past 400 bytes: a rotation first
    h.turn()
    assert len(h.disk.writes) == 1 and len(h.runner.jobs) == 1  # no rotation job while the fsync runs
    h.runner.run_next()
    h.settle()
    assert [r.seq for r in results(first + second)] == [1, 2, 3]
    assert len(list_segments(h.path)) == 2 and verify(h.path) == 3


def test_close_waits_for_the_batches_in_flight(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """close() with two batches in flight acknowledges both before it closes."""
    h = two(harness, tmp_path)
    ds = h.append_many(1)
    h.turn()
    ds += h.append_many(1)
    h.turn()
    closed = h.journal.close()
    assert not closed.called
    h.settle()
    assert closed.called and [r.seq for r in results(ds)] == [1, 2]


# Appending and turning at once is the most common step, so that batches pile up in flight.
steps = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["append", "append_turn", "append_turn", "append_turn"]), st.integers(1, 6)
        ),
        st.tuples(
            st.sampled_from(["turn", "run", "run", "run_any", "fail_write", "fail_fsync", "tick"]),
            st.just(0),
        ),
    ),
    max_size=60,
)


@settings(max_examples=400, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    in_flight=st.sampled_from([2, 3]),
    segment_bytes=st.sampled_from([250, 600, 64 * 2**20]),
    script=steps,
    seed=st.integers(0, 2**16),
)
def test_any_interleaving_with_batches_in_flight_keeps_file_and_acknowledgements_in_step(
    harness: Callable[..., Harness],
    tmp_path: Path,
    in_flight: int,
    segment_bytes: int,
    script: list[tuple[str, int]],
    seed: int,
) -> None:
    """
    With several batches in flight, whatever the order of appends, turns,
    fsync completions (in order, or any job first) and write/fsync faults,
    every append is answered once, acknowledgements come in seq order, and
    the journal on disk holds exactly the acknowledged records, chained.
    """
    pick = random.Random(seed)
    h = harness(
        tmp_path / os.urandom(8).hex(),
        fsync="always",
        segment_bytes=segment_bytes,
        batches_in_flight=in_flight,
    )
    outcomes: list[object] = []
    ds = []
    most = 0
    for step, n in script:
        if step.startswith("append"):
            for d in h.append_many(n):
                d.addBoth(outcomes.append)
                ds.append(d)
            if step == "append_turn":
                h.turn()
        elif step == "turn":
            h.turn()
        elif step == "run" and h.runner.jobs:
            h.runner.run_next()
        elif step == "run_any" and h.runner.jobs:
            h.runner.run_next(pick.randrange(len(h.runner.jobs)))
        elif step == "fail_write":
            h.disk.next_write_faults.append(enospc())
        elif step == "fail_fsync":
            h.disk.next_fsync_faults.append(OSError(errno.EIO, "I/O error"))
        elif step == "tick":
            h.clock.advance(1.0)
        most = max(most, len(h.journal._in_flight))
    event(f"most batches in flight at once: {most} (of {in_flight})")
    h.disk.next_write_faults.clear()
    h.disk.next_fsync_faults.clear()
    h.settle()
    assert all(d.called for d in ds) and len(outcomes) == len(ds)
    acknowledged = [o for o in outcomes if isinstance(o, Record)]
    event(f"some failed: {len(acknowledged) < len(outcomes)}")
    for o in outcomes:
        assert isinstance(o, Record) or (isinstance(o, Failure) and o.check(JournalWriteError))
    assert list(read_records(h.path)) == acknowledged
    assert [r.seq for r in acknowledged] == list(range(1, len(acknowledged) + 1))
    assert verify(h.path) == len(acknowledged)
    h.close()

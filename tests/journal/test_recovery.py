"""Recovery at open: a torn tail is cut at the last whole record, and the cut recorded."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from twisted.internet.task import Clock

from gateway.journal.reader import ChainError, Damage, read_records, read_records_skipping, verify
from gateway.journal.record import encode_line
from gateway.journal.segments import list_segments
from gateway.journal.writer import Journal
from tests.journal.helpers import Harness, ManualRunner, results


def five(harness: Callable[..., Harness], **options: object) -> Harness:
    """A journal with 5 records, closed."""
    h = harness(**options)
    h.append_many(5)
    h.settle()
    h.close()
    return h


def last_segment(h: Harness) -> Path:
    return Path(list_segments(h.path)[-1].path)


def append_bytes(path: Path, data: bytes) -> int:
    size = path.stat().st_size
    with path.open("ab") as f:
        f.write(data)
    return size


def reopen_and_check(h: Harness, offset: int, dropped: bytes, reason: str) -> None:
    """Reopen; the tail is gone, a recovery record says so, appends chain on."""
    journal = h.open()
    records = list(read_records(h.path))
    assert [r.seq for r in records] == [1, 2, 3, 4, 5, 6]
    recovery = records[-1]
    assert isinstance(recovery.body, dict)
    assert recovery.kind == "recovery"
    segment = list_segments(h.path)[-1]
    assert recovery.body == {
        "segment": segment.name,
        "offset": offset,
        "dropped_bytes": len(dropped),
        "reason": recovery.body["reason"],
        "last_good_seq": 5,
        "saved_as": f"{segment.name}.cut-{offset}",
    }
    assert reason in recovery.body["reason"]
    assert (h.path / f"{segment.name}.cut-{offset}").read_bytes() == dropped
    assert journal.last_seq == 6
    d = journal.append("after", "P001", "carIn", "o-after", {"ok": True})
    h.settle()
    assert results([d])[0].seq == 7
    assert verify(h.path) == 7


def test_partial_last_line_is_cut(harness: Callable[..., Harness]) -> None:
    """A last line without its newline is cut off and the cut recorded."""
    h = five(harness)
    torn = b'{"seq":6,"ts":"2026-11-18T11:06:40.250000Z","kind":"upl'
    offset = append_bytes(last_segment(h), torn)
    reopen_and_check(h, offset, torn, "partial")


def test_garbage_last_line_is_cut(harness: Callable[..., Harness]) -> None:
    """A whole last line of garbage is cut off."""
    h = five(harness)
    garbage = b"\x00\x00\x00\x00garbage\xff\n"
    offset = append_bytes(last_segment(h), garbage)
    reopen_and_check(h, offset, garbage, "chain")


def test_wrong_chain_last_line_is_cut(harness: Callable[..., Harness]) -> None:
    """A well-formed last line that does not chain onto the one before is cut off."""
    h = five(harness)
    line, _ = encode_line(6, "2026-11-18T11:06:40.250000Z", "x", "", "", "", {}, b"1" * 32)
    offset = append_bytes(last_segment(h), line)
    reopen_and_check(h, offset, line, "chain does not match")


def test_torn_batch_with_zeros_is_cut_at_the_first_bad_line(harness: Callable[..., Harness]) -> None:
    """A batch torn in the middle (zeros, then whole-looking lines) is cut at its start."""
    h = five(harness)
    lines = last_segment(h).read_bytes().splitlines(keepends=True)
    # what a half-written page of a batch looks like: zeros, then lines that were written
    whole = b"".join(lines[:2])
    path = last_segment(h)
    path.write_bytes(whole + b"\x00" * len(lines[2]) + b"".join(lines[3:]))
    journal = h.open()
    assert [r.seq for r in read_records(h.path)] == [1, 2, 3]
    assert journal.last_seq == 3
    assert verify(h.path) == 3


def test_whole_journal_needs_no_recovery(harness: Callable[..., Harness]) -> None:
    """Reopening a whole journal appends nothing and continues the seq."""
    h = five(harness)
    before = h.data()
    journal = h.open()
    assert h.data() == before
    assert journal.last_seq == 5
    assert not [p for p in os.listdir(h.path) if ".cut-" in p]


def test_torn_first_line_of_a_new_segment(harness: Callable[..., Harness]) -> None:
    """A segment whose only line is torn is emptied; the recovery record goes in it."""
    h = harness(segment_bytes=300)  # one record a segment
    h.append_many(4)
    h.settle()
    h.close()
    path = last_segment(h)
    first_seq = list_segments(h.path)[-1].first_seq
    path.write_bytes(path.read_bytes()[:-10])
    journal = h.open()
    assert journal.last_seq == first_seq
    assert list(read_records(h.path))[-1].kind == "recovery"
    assert list_segments(h.path)[-1].first_seq == first_seq
    assert verify(h.path) == first_seq


def test_cutting_twice_at_one_offset_keeps_both_cuts(harness: Callable[..., Harness]) -> None:
    """A second cut at the same offset is saved beside the first, not over it."""
    h = five(harness)
    path = last_segment(h)
    size = path.stat().st_size
    h.open()
    h.close()  # nothing to cut
    journal_size = path.stat().st_size
    assert journal_size == size
    append_bytes(path, b"first")
    h.open()
    h.close()
    path.write_bytes(path.read_bytes() + b"second")
    h.open()
    cut_files = sorted(p for p in os.listdir(h.path) if ".cut-" in p)
    assert len(cut_files) == 2


def test_a_broken_earlier_segment_is_quarantined_not_fatal(harness: Callable[..., Harness]) -> None:
    """Damage in an earlier segment never stops open: a skipping read passes it, set_aside journals it."""
    h = harness(segment_bytes=400)
    h.append_many(6)
    h.settle()
    h.close()
    segments = list_segments(h.path)
    assert len(segments) >= 3
    before_last = Path(segments[-2].path)
    before_last.write_bytes(before_last.read_bytes()[:-5])
    journal = h.open()
    found: list[Damage] = []
    replayed = [r.seq for r in read_records_skipping(h.path, found.append)]
    journal.set_aside(found)
    [damage] = journal.quarantined
    assert damage.segment == segments[-2].name and damage.reason == "partial line"
    assert damage.seq not in replayed and len(replayed) == 5
    [record] = [r for r in read_records_skipping(h.path, lambda damage: None) if r.kind == "quarantine"]
    assert record.body["segment"] == segments[-2].name
    d = journal.append("uplink", "P001", "carIn", "after", {})
    h.settle()
    assert results([d])[0].seq == record.seq + 1  # the journal goes on
    with pytest.raises(ChainError):
        verify(h.path)  # the damage stays visible to verify


def test_gap_before_the_last_segment_opens_with_an_anchor(harness: Callable[..., Harness]) -> None:
    """A missing segment before the last does not stop open; verify still reports the gap."""
    h = harness(segment_bytes=300)  # one record a segment
    h.append_many(4)
    h.settle()
    h.close()
    os.remove(list_segments(h.path)[-2].path)
    journal = Journal.open(h.path, reactor=Clock(), run_blocking=ManualRunner())
    assert journal.last_seq == 4
    with pytest.raises(ChainError, match="expected"):
        verify(h.path)


def test_whole_records_no_chain_proves_are_moved_aside_not_cut(harness: Callable[..., Harness]) -> None:
    """A bad line, then whole records that chain onto nothing there: all moved aside; seqs never reused."""
    h = five(harness)
    path = last_segment(h)
    lines = path.read_bytes().splitlines(keepends=True)
    offset = len(lines[0]) + len(lines[1])
    # records 3-5 as written onto another chain: whole, in seq, but proven by nothing here
    stray = b"".join(
        encode_line(seq, "2026-11-18T11:06:40.250000Z", "x", "", "", "", {}, b"1" * 32)[0]
        for seq in (3, 4, 5)
    )
    path.write_bytes(b"".join(lines[:2]) + stray)
    journal = h.open()
    [damage] = journal.quarantined
    assert (damage.seq, damage.last_seq, damage.offset) == (3, 5, offset)
    assert (h.path / damage.saved_as).read_bytes() == stray
    assert journal.last_seq == 6  # the quarantine record, after the highest seq set aside
    assert [r.seq for r in read_records(h.path)] == [1, 2, 6]
    assert [r.kind for r in read_records(h.path)][-1] == "quarantine"
    reopened = h.reopen()
    assert reopened.quarantined == [] and reopened.last_seq == 6

"""Reading and verifying a journal directory: every altered byte or line is found."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.journal.reader import ChainError, Cursor, read_records, verify
from gateway.journal.segments import iter_lines, list_segments
from tests.journal.helpers import Harness


@pytest.fixture
def journal_dir(harness: Callable[..., Harness], tmp_path: Path) -> Path:
    """A closed journal of 8 records over several segments."""
    h = harness(tmp_path / "j", segment_bytes=600)
    for i in range(8):
        h.journal.append("uplink", "P001", "carIn", f"o-{i}", {"i": i, "text": "停车场 \u2028"})
        h.turn()
    h.close()
    assert len(list_segments(h.path)) >= 3
    return h.path


def line_map(directory: Path) -> list[tuple[Path, int, int, bytes]]:
    """(segment path, offset, seq, line) for every line."""
    out = []
    for segment in list_segments(directory):
        for offset, line in iter_lines(segment.path):
            out.append((Path(segment.path), offset, int(line[7 : line.index(b",")]), line))
    return out


def test_verify_counts_records(journal_dir: Path) -> None:
    """verify returns the number of records of a whole journal."""
    assert verify(journal_dir) == 8
    assert [r.seq for r in read_records(journal_dir)] == list(range(1, 9))


def test_every_flipped_byte_is_found(journal_dir: Path) -> None:
    """Flipping any byte of any segment makes verify fail at that byte's record."""
    lines = line_map(journal_dir)
    checked = 0
    for path, offset, seq, line in lines:
        original = path.read_bytes()
        for i in range(len(line)):
            data = bytearray(original)
            data[offset + i] ^= 0x01
            path.write_bytes(bytes(data))
            with pytest.raises(ChainError) as info:
                verify(journal_dir)
            assert info.value.seq == seq, (path.name, offset + i, info.value)
            checked += 1
        path.write_bytes(original)
    assert checked == sum(len(line) for *_, line in lines)
    assert verify(journal_dir) == 8


@settings(max_examples=200, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.data())
def test_any_replaced_byte_is_found(journal_dir: Path, data: st.DataObject) -> None:
    """Replacing any byte with any other value makes verify fail at that record."""
    path, offset, seq, line = data.draw(st.sampled_from(line_map(journal_dir)))
    i = data.draw(st.integers(0, len(line) - 1))
    new = data.draw(st.integers(0, 255).filter(lambda b: b != line[i]))
    original = path.read_bytes()
    altered = bytearray(original)
    altered[offset + i] = new
    path.write_bytes(bytes(altered))
    try:
        with pytest.raises(ChainError) as info:
            verify(journal_dir)
        assert info.value.seq == seq
    finally:
        path.write_bytes(original)


def rewrite(path: Path, change: Callable[[list[bytes]], list[bytes]]) -> None:
    path.write_bytes(b"".join(change(path.read_bytes().splitlines(keepends=True))))


def test_deleted_line_is_found(journal_dir: Path) -> None:
    """Removing a line inside a segment breaks the chain at the removed seq."""
    path, _, seq, _ = next(x for x in line_map(journal_dir)[1:] if x[1] > 0)
    rewrite(path, lambda lines: [line for line in lines if int(line[7 : line.index(b",")]) != seq])
    with pytest.raises(ChainError, match="where") as info:
        verify(journal_dir)
    assert info.value.seq == seq


def test_swapped_lines_are_found(journal_dir: Path) -> None:
    """Swapping two lines breaks the chain at the first of them."""
    path = Path(list_segments(journal_dir)[0].path)
    first_seq = int(list_segments(journal_dir)[0].first_seq)
    rewrite(path, lambda lines: [lines[1], lines[0], *lines[2:]])
    with pytest.raises(ChainError) as info:
        verify(journal_dir)
    assert info.value.seq == first_seq


def test_inserted_line_is_found(journal_dir: Path) -> None:
    """A line copied in from elsewhere breaks the chain where it stands."""
    path = Path(list_segments(journal_dir)[1].path)
    rewrite(path, lambda lines: [lines[0], lines[0], *lines[1:]])
    with pytest.raises(ChainError) as info:
        verify(journal_dir)
    assert info.value.seq == list_segments(journal_dir)[1].first_seq + 1


def test_missing_segment_is_found(journal_dir: Path) -> None:
    """A segment removed from the middle is a break at its first seq."""
    middle = list_segments(journal_dir)[1]
    os.remove(middle.path)
    with pytest.raises(ChainError, match="segment starts at") as info:
        verify(journal_dir)
    assert info.value.seq == middle.first_seq


def test_partial_tail(journal_dir: Path) -> None:
    """A partial last line fails verify, unless allowed; read_records leaves it out."""
    last = Path(list_segments(journal_dir)[-1].path)
    with last.open("ab") as f:
        f.write(b'{"seq":9,"ts":"20')
    with pytest.raises(ChainError, match="partial") as info:
        verify(journal_dir)
    assert info.value.seq == 9
    assert verify(journal_dir, allow_partial_tail=True) == 8
    assert [r.seq for r in read_records(journal_dir)][-1] == 8


def test_read_records_raises_on_garbage(journal_dir: Path) -> None:
    """A whole line that is not a record stops read_records with ChainError."""
    path = Path(list_segments(journal_dir)[0].path)
    rewrite(path, lambda lines: [lines[0], b"not json\n", *lines[1:]])
    with pytest.raises(ChainError) as info:
        list(read_records(journal_dir))
    assert info.value.seq == 2


def test_cut_off_end_is_not_seen_by_the_chain(journal_dir: Path) -> None:
    """Whole records removed from the very end leave a valid chain (seals cover that)."""
    path = Path(list_segments(journal_dir)[-1].path)
    rewrite(path, lambda lines: lines[:-1])
    assert verify(journal_dir) == 7


def test_removed_old_segments_leave_an_anchor(harness: Callable[..., Harness], journal_dir: Path) -> None:
    """With the first segments removed, the first record left anchors the chain."""
    segments = list_segments(journal_dir)
    for segment in segments[:2]:
        os.remove(segment.path)
    first = segments[2].first_seq
    assert verify(journal_dir) == 8 - first + 1
    assert [r.seq for r in read_records(journal_dir)] == list(range(first, 9))
    h = harness(journal_dir)
    h.journal.append("after", "", "", "", None)
    h.settle()
    assert verify(journal_dir) == 8 - first + 2


def test_chain_error_text() -> None:
    """ChainError carries seq, reason and place, and says them."""
    e = ChainError(5, "chain does not match", "00000000000000000001.jsonl", 120)
    assert (e.seq, e.reason, e.segment, e.offset) == (5, "chain does not match", e.segment, 120)
    assert str(e) == "seq 5: chain does not match (segment 00000000000000000001.jsonl, offset 120)"


def test_cursor_reads_in_chunks_across_segments_from_any_seq(journal_dir: Path) -> None:
    """A cursor goes on where its last read stopped, crosses segments, and can start mid-journal."""
    cursor = Cursor(journal_dir)
    seqs = []
    while chunk := cursor.read(8, max_records=3, max_bytes=10**6):
        assert len(chunk) <= 3
        seqs.append([r.seq for r in chunk])
    assert seqs == [[1, 2, 3], [4, 5, 6], [7, 8]]
    assert cursor.read(8, 3, 10**6) == []
    cursor.close()
    for start in range(1, 9):
        middle = Cursor(journal_dir, start)
        assert [r.seq for r in middle.read(8, 100, 10**6)] == list(range(start, 9))
        middle.close()


def test_cursor_stops_at_through_and_at_max_bytes(journal_dir: Path) -> None:
    """Nothing past through_seq is read; max_bytes ends a chunk after at least one record."""
    cursor = Cursor(journal_dir)
    assert [r.seq for r in cursor.read(2, 100, 10**6)] == [1, 2]
    assert [r.seq for r in cursor.read(8, 100, 1)] == [3]
    assert [r.seq for r in cursor.read(8, 100, 10**6)] == list(range(4, 9))
    cursor.close()


def test_cursor_follows_a_journal_being_written(harness: Callable[..., Harness], tmp_path: Path) -> None:
    """A cursor at the end picks up records appended later, also into a new segment; a partial line waits."""
    h = harness(tmp_path / "live", segment_bytes=600)
    h.append_many(2)
    h.settle()
    cursor = Cursor(h.path)
    assert [r.seq for r in cursor.read(h.journal.committed_seq, 100, 10**6)] == [1, 2]
    for _ in range(6):
        h.append_many(1)
        h.settle()
    assert len(list_segments(h.path)) >= 2
    assert [r.seq for r in cursor.read(h.journal.committed_seq, 100, 10**6)] == list(range(3, 9))
    last = list_segments(h.path)[-1].path
    with open(last, "ab") as f:
        f.write(b'{"seq":9,"ts":"x"')  # a write in progress
    with pytest.raises(ChainError) as info:
        cursor.read(9, 100, 10**6)  # told seq 9 is durable, but it is not whole
    assert info.value.seq == 9
    assert cursor.read(8, 100, 10**6) == []
    cursor.close()


def test_cursor_skips_damage_and_notes_it(journal_dir: Path) -> None:
    """A line that is not a record is skipped and noted; so are seqs missing with a removed segment."""
    path, offset, seq, line = line_map(journal_dir)[4]
    data = bytearray(path.read_bytes())
    data[offset + len(line) - 3] = ord("x")  # break the JSON closing the line
    path.write_bytes(bytes(data))
    cursor = Cursor(journal_dir)
    assert [r.seq for r in cursor.read(8, 100, 10**6)] == [s for s in range(1, 9) if s != seq]
    [damage] = cursor.damage
    assert damage.seq == seq and damage.segment == path.name
    cursor.close()
    segments = list_segments(journal_dir)
    os.remove(segments[1].path)
    gap = Cursor(journal_dir)
    got = [r.seq for r in gap.read(8, 100, 10**6)]
    assert got[0] == 1 and got[-1] == 8 and segments[1].first_seq not in got
    assert any("missing" in d.reason for d in gap.damage)
    gap.close()
    os.remove(segments[0].path)
    late = Cursor(journal_dir, 1)
    assert late.read(8, 100, 10**6)[0].seq == segments[2].first_seq
    late.close()

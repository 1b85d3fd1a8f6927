"""Reading and verifying a journal directory: every altered byte or line is found."""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey, VerifyKey

from gateway.journal import integrity
from gateway.journal.integrity import Verdict, verify_journal
from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.reader import ChainError, Cursor, read_records, verify
from gateway.journal.record import (
    GENESIS_CHAIN,
    BadLine,
    Record,
    chain_digest,
    check_line,
    decode_line,
    encode_line,
)
from gateway.journal.seals import check_seal, seal_body
from gateway.journal.segments import iter_lines, list_segments
from gateway.keys import parse_public_key_b64
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


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
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


# -- the whole-journal check: one pass, segments in parallel


Lines = list[tuple[str, list[bytes]]]
"""A journal as data: (segment name, its lines), in order."""

SEAL_KEY = SigningKey(bytes(range(32)))
OTHER_KEY = SigningKey(bytes(range(1, 33)))


@pytest.fixture
def sealed_dir(harness: Callable[..., Harness], tmp_path: Path) -> Path:
    """A closed journal of 40 records and 8 seals over about 10 segments, seals in most of them."""
    h = harness(tmp_path / "sealed", segment_bytes=700)
    for i in range(40):
        h.journal.append("uplink", "P001", "carIn", f"o-{i}", {"i": i, "plate": "粤B12345"})
        if i % 5 == 4:
            seq, chain = h.journal.head
            h.journal.append(SEAL_RECORD, "", "", "", seal_body(SEAL_KEY, "gw-test", seq, chain))
        h.settle()
    h.close()
    assert len(list_segments(h.path)) >= 8
    return h.path


def read_journal(directory: Path) -> Lines:
    return [(s.name, Path(s.path).read_bytes().splitlines(keepends=True)) for s in list_segments(directory)]


def write_journal(directory: Path, journal: Lines) -> Path:
    directory.mkdir()
    for name, lines in journal:
        (directory / name).write_bytes(b"".join(lines))
    return directory


def rechain(journal: Lines, change: Callable[[Record], Record]) -> Lines:
    """The journal re-encoded with every record passed through ``change`` and a chain that holds
    (a line that is not a record is kept as it is)."""
    chain = GENESIS_CHAIN
    out: Lines = []
    for name, lines in journal:
        new = []
        for line in lines:
            try:
                r = change(decode_line(line))
            except BadLine:
                new.append(line)
                continue
            encoded, chain = encode_line(r.seq, r.ts, r.kind, r.park, r.code, r.opr, r.body, chain)
            new.append(encoded)
        out.append((name, new))
    return out


def reference(directory: Path, *, key: VerifyKey | None = None, allow_partial_tail: bool = False) -> object:
    """
    What verify_journal(seals=True) must say, by definition: one plain pass, line by line.

    ``("whole", records, seals, key, last seal)`` or ``("break", seq, reason, segment, offset)``.
    """
    segments = list_segments(directory)
    prev_seq: int | None = None
    prev_chain: bytes | None = None
    if segments[0].first_seq == 1:
        prev_seq, prev_chain = 0, GENESIS_CHAIN
    journal_key = None if key is None else bytes(key)
    records = seals = 0
    last_seal = None
    for index, segment in enumerate(segments):
        expected = segment.first_seq if prev_seq is None else prev_seq + 1
        if segment.first_seq != expected:
            reason = f"segment starts at seq {segment.first_seq} where {expected} was expected"
            return ("break", expected, reason, segment.name, 0)
        prev_seq = segment.first_seq - 1 if prev_seq is None else prev_seq
        for offset, line in iter_lines(segment.path):
            if allow_partial_tail and index == len(segments) - 1 and not line.endswith(b"\n"):
                break
            try:
                seq, chain = check_line(line, prev_seq, prev_chain)
                record = decode_line(line)
                if record.seq != seq or record.chain != chain.decode():
                    raise BadLine("decoded record does not match its line")
            except BadLine as e:
                return ("break", prev_seq + 1, e.args[0], segment.name, offset)
            if record.kind == SEAL_RECORD:
                signed = None if prev_chain is None else (prev_seq, prev_chain.decode())
                problem, journal_key = seal_problem(record.body, signed, journal_key)
                if problem is not None:
                    return ("break", seq, problem, segment.name, offset)
                seals += 1
                last_seal = seq
            prev_seq, prev_chain = seq, chain
            records += 1
    return ("whole", records, seals, journal_key, last_seal)


def seal_problem(
    body: Any, signed: tuple[int, str] | None, key: bytes | None
) -> tuple[str | None, bytes | None]:
    """Why a seal fails (checked in this order), and the journal's key from then on."""
    if not isinstance(body, dict):
        return "seal body is not an object", key
    says = (body.get("seq"), body.get("chain"))
    if signed is not None and says != signed:
        return (
            f"seal signs #{says[0]} with chain {says[1]}, but the record before it is "
            f"#{signed[0]} with chain {signed[1]}"
        ), key
    text = body.get("key")
    try:
        recorded = bytes(parse_public_key_b64(text if isinstance(text, str) else ""))
    except ValueError:
        return "seal does not record a base64 Ed25519 public key", key
    if key is not None and recorded != key:
        ours, theirs = base64.b64encode(key).decode(), base64.b64encode(recorded).decode()
        return f"sealed with another key ({theirs}) than the one checked against ({ours})", key
    return check_seal(body, VerifyKey(recorded)), recorded


def outcome(run: Callable[[], Verdict]) -> object:
    """verify_journal's answer in the form :func:`reference` gives."""
    try:
        v = run()
    except ChainError as e:
        return ("break", e.seq, e.reason, e.segment, e.offset)
    return ("whole", v.records, v.seals, v.key, v.last_seal)


def test_verify_journal_checks_seals_across_segments(sealed_dir: Path) -> None:
    """A whole sealed journal: the same verdict sequentially and in parallel processes, seals counted."""
    expected = ("whole", 48, 8, bytes(SEAL_KEY.verify_key), 48)
    assert reference(sealed_dir) == expected
    assert outcome(lambda: verify_journal(sealed_dir, seals=True, workers=1)) == expected
    assert outcome(lambda: verify_journal(sealed_dir, seals=True, workers=2)) == expected
    assert verify(sealed_dir, workers=2) == 48


def alter(directory: Path, segment_index: int, line_index: int) -> tuple[int, str, int]:
    """Change one byte inside a line's body; the seq, segment name and offset of that line."""
    segment = list_segments(directory)[segment_index]
    path = Path(segment.path)
    lines = path.read_bytes().splitlines(keepends=True)
    line = lines[line_index]
    at = line.index(b'"body":') + 8
    lines[line_index] = line[:at] + bytes([line[at] ^ 0x01]) + line[at + 1 :]
    path.write_bytes(b"".join(lines))
    return int(line[7 : line.index(b",")]), segment.name, sum(len(x) for x in lines[:line_index])


@pytest.mark.parametrize("where", ["middle", "last"])
def test_parallel_finds_an_altered_byte(sealed_dir: Path, where: str) -> None:
    """An altered byte in a middle or the last segment: worker processes report it as one pass does."""
    index = len(list_segments(sealed_dir)) // 2 if where == "middle" else -1
    seq, name, offset = alter(sealed_dir, index, 1)
    with pytest.raises(ChainError) as info:
        verify_journal(sealed_dir, seals=True, workers=2)
    e = info.value
    assert (e.seq, e.reason, e.segment, e.offset) == (
        seq,
        "chain does not match (the line or one before it was altered)",
        name,
        offset,
    )
    assert outcome(lambda: verify_journal(sealed_dir, seals=True, workers=2)) == reference(sealed_dir)


def test_parallel_finds_a_deleted_middle_segment(sealed_dir: Path) -> None:
    """A segment removed from the middle: a break at its first seq, in parallel as sequentially."""
    middle = list_segments(sealed_dir)[4]
    os.remove(middle.path)
    with pytest.raises(ChainError, match="segment starts at") as info:
        verify_journal(sealed_dir, seals=True, workers=2)
    assert (info.value.seq, info.value.offset) == (middle.first_seq, 0)
    assert outcome(lambda: verify_journal(sealed_dir, seals=True, workers=2)) == reference(sealed_dir)


def reseal(journal: Lines, key_of: Callable[[str], SigningKey]) -> Lines:
    """The journal with every seal signed again, by ``key_of(its segment's name)``, and chained again."""
    chain = GENESIS_CHAIN
    before = (0, "")
    out: Lines = []
    for name, lines in journal:
        new = []
        for line in lines:
            r = decode_line(line)
            body = seal_body(key_of(name), "gw-test", *before) if r.kind == SEAL_RECORD else r.body
            encoded, chain = encode_line(r.seq, r.ts, r.kind, r.park, r.code, r.opr, body, chain)
            before = (r.seq, chain.decode())
            new.append(encoded)
        out.append((name, new))
    return out


def test_the_first_break_in_journal_order_wins(sealed_dir: Path, tmp_path: Path) -> None:
    """A seal broken in a later segment and damage in an earlier one: the earlier is reported; and
    a seal broken early with damage later: the seal."""
    journal = read_journal(sealed_dir)
    last_seal = max(r.seq for _, lines in journal for r in map(decode_line, lines) if r.kind == SEAL_RECORD)

    def forge_last_seal(record: Record) -> Record:
        if record.seq != last_seal:
            return record
        assert isinstance(record.body, dict)
        return evolve(record, body={**record.body, "signature": base64.b64encode(bytes(64)).decode()})

    late = write_journal(tmp_path / "late", rechain(journal, forge_last_seal))
    with pytest.raises(ChainError, match="does not verify") as info:
        verify_journal(late, seals=True, workers=2)
    assert info.value.seq == last_seal
    seq, name, _ = alter(late, 1, 0)
    with pytest.raises(ChainError, match="chain does not match") as info:
        verify_journal(late, seals=True, workers=2)
    assert (info.value.seq, info.value.segment) == (seq, name)
    assert outcome(lambda: verify_journal(late, seals=True, workers=2)) == reference(late)

    # record 5 rewritten with a chain that holds: the seal over it (#6) no longer signs it
    early = write_journal(
        tmp_path / "early", rechain(journal, lambda r: evolve(r, body={"forged": 1}) if r.seq == 5 else r)
    )
    alter(early, -1, 0)
    with pytest.raises(ChainError, match="seal signs #5") as info:
        verify_journal(early, seals=True, workers=2)
    assert info.value.seq == 6
    assert outcome(lambda: verify_journal(early, seals=True, workers=2)) == reference(early)


def test_a_journal_rewritten_under_another_key(sealed_dir: Path, tmp_path: Path) -> None:
    """A journal rewritten and sealed with another key holds together, but not against the gateway's key."""
    rewritten = write_journal(tmp_path / "rewritten", reseal(read_journal(sealed_dir), lambda _: OTHER_KEY))
    assert verify_journal(rewritten, seals=True, workers=2).key == bytes(OTHER_KEY.verify_key)
    with pytest.raises(ChainError, match="sealed with another key") as info:
        verify_journal(rewritten, seals=True, key=SEAL_KEY.verify_key, workers=2)
    assert info.value.seq == 6


def test_a_later_segment_sealed_with_another_key(sealed_dir: Path, tmp_path: Path) -> None:
    """Without a given key, a segment sealed with another key than the first seal fails at its first seal."""
    journal = read_journal(sealed_dir)
    switch = journal[len(journal) // 2][0]
    directory = write_journal(
        tmp_path / "two-keys", reseal(journal, lambda name: OTHER_KEY if name >= switch else SEAL_KEY)
    )
    first_other = min(
        decode_line(line).seq
        for name, lines in journal
        for line in lines
        if name >= switch and decode_line(line).kind == SEAL_RECORD
    )
    with pytest.raises(ChainError, match="sealed with another key") as info:
        verify_journal(directory, seals=True, workers=2)
    assert info.value.seq == first_other
    assert outcome(lambda: verify_journal(directory, seals=True, workers=2)) == reference(directory)


CRAFTED = {
    # head after {"seq":4, and before the tail -> the verdict of check_line and decode_line
    "same seq twice": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":{},"seq":4', "whole"),
    "another seq after the body": (
        b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":{},"seq":9',
        "break",
    ),
    "a chain in the head": (
        b'"chain":"x","ts":"t","kind":"k","park":"","code":"","opr":"","body":1',
        "whole",
    ),
    "a ts that is a number": (b'"ts":5,"kind":"k","park":"","code":"","opr":"","body":{}', "break"),
    "a kind replaced after the body": (
        b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":0,"kind":0',
        "break",
    ),
    "no body": (b'"ts":"t","kind":"k","park":"","code":"","opr":""', "break"),
    "a seq of true": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":0,"seq":true', "break"),
    "a number only json reads": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":1e999', "whole"),
    "a lone surrogate": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":"\\ud800"', "whole"),
    "a 25-digit integer": (
        b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":[1234567890123456789012345]',
        "whole",
    ),
    "a trailing comma": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":{"a":1,}', "break"),
    "not utf-8": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":"\xff"', "break"),
    "an extra field": (b'"ts":"t","kind":"k","park":"","code":"","opr":"","body":0,"more":1', "whole"),
    "an escaped seal kind": (b'"ts":"t","kind":"se\\u0061l","park":"","code":"","opr":"","body":0', "break"),
}


@pytest.mark.parametrize("case", sorted(CRAFTED))
def test_crafted_lines_are_judged_as_the_definitions_judge_them(tmp_path: Path, case: str) -> None:
    """A line with a chain that holds but odd JSON gets the verdict check_line and decode_line give it."""
    rest, verdict = CRAFTED[case]
    chain = GENESIS_CHAIN
    lines = []
    for seq in range(1, 4):
        line, chain = encode_line(seq, "t", "k", "", "", "", {"n": seq}, chain)
        lines.append(line)
    head = b'{"seq":4,' + rest
    chain = chain_digest(chain, head)
    lines.append(head + b',"chain":"' + chain + b'"}\n')
    lines.append(encode_line(5, "t", "k", "", "", "", None, chain)[0])
    directory = write_journal(tmp_path / "j", [("00000000000000000001.jsonl", lines)])
    expected = reference(directory)
    assert expected[0] == verdict
    assert outcome(lambda: verify_journal(directory, seals=True)) == expected


def test_a_line_whose_head_says_seal_is_checked_as_a_seal(tmp_path: Path) -> None:
    """A seal's kind given again after its body (a duplicate key) does not keep it from being checked."""
    line, chain = encode_line(1, "t", "k", "", "", "", None, GENESIS_CHAIN)
    head = b'{"seq":2,"ts":"t","kind":"seal","park":"","code":"","opr":"","body":{},"kind":"k"'
    forged = head + b',"chain":"' + chain_digest(chain, head) + b'"}\n'
    directory = write_journal(tmp_path / "j", [("00000000000000000001.jsonl", [line, forged])])
    assert verify_journal(directory).records == 2
    with pytest.raises(ChainError, match="seal signs #None") as info:
        verify_journal(directory, seals=True)
    assert info.value.seq == 2


class CuttingExecutor(ThreadPoolExecutor):
    """Cuts the last line off the first segment once the segments' starting points were read."""

    def __init__(self, directory: Path) -> None:
        super().__init__(2)
        self.directory = directory
        self.cut = False

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future[Any]:
        if not self.cut:
            path = Path(list_segments(self.directory)[0].path)
            path.write_bytes(b"".join(path.read_bytes().splitlines(keepends=True)[:-1]))
            self.cut = True
        return super().submit(fn, *args, **kwargs)


def test_a_segment_changed_while_checked_is_judged_as_read(sealed_dir: Path) -> None:
    """A segment cut after the next one's starting point was read: the next one is checked again from
    where the cut one really ends, so the gap is found."""
    with CuttingExecutor(sealed_dir) as executor:
        with pytest.raises(ChainError, match="segment starts at") as info:
            verify_journal(sealed_dir, seals=True, executor=executor)
    assert outcome(lambda: verify_journal(sealed_dir, seals=True)) == (
        "break",
        info.value.seq,
        info.value.reason,
        info.value.segment,
        0,
    )


def test_a_small_journal_is_checked_without_processes(
    sealed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under PARALLEL_FROM_BYTES and unless told the workers, no process pool is started."""

    def no_pool(*args: object) -> None:
        raise AssertionError("a process pool was started")

    monkeypatch.setattr(integrity, "ProcessPoolExecutor", no_pool)
    assert verify_journal(sealed_dir, seals=True).records == 48


Damage = tuple[str, int, int, int]


def damage(journal: Lines, what: Damage) -> Lines:
    """The journal with one kind of damage done at a place drawn by hypothesis."""
    kind, a, b, c = what
    segments = [(name, list(lines)) for name, lines in journal]
    lines = segments[a % len(segments)][1]
    if kind == "segment":
        del segments[a % len(segments)]
        return segments or journal
    if not lines:
        return segments
    i = b % len(lines)
    if kind == "byte":
        line = lines[i]
        at = c % len(line)
        lines[i] = line[:at] + bytes([(line[at] + 1 + c // 7 % 255) % 256]) + line[at + 1 :]
    elif kind == "drop":
        del lines[i]
    elif kind == "copy":
        lines.insert(i, lines[i])
    elif kind == "swap" and i + 1 < len(lines):
        lines[i], lines[i + 1] = lines[i + 1], lines[i]
    elif kind == "cut":
        data = b"".join(lines)
        lines[:] = data[: c % (len(data) + 1)].splitlines(keepends=True)
    elif kind == "body":  # a rewrite with a chain that holds: only seals can tell
        try:
            seq = decode_line(lines[i]).seq
        except BadLine:
            return segments
        return rechain(segments, lambda r: r if r.seq != seq else evolve(r, body={"rewritten": c}))
    return segments


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.data(),
    st.lists(
        st.tuples(
            st.sampled_from(["byte", "drop", "copy", "swap", "cut", "segment", "body"]),
            st.integers(0, 50),
            st.integers(0, 50),
            st.integers(0, 10_000),
        ),
        min_size=0,
        max_size=2,
    ),
)
def test_parallel_equals_one_pass_on_random_damage(
    sealed_dir: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, damages: list[Damage]
) -> None:
    """Whatever the damage, sequential and parallel verify_journal say what one plain pass says."""
    journal = read_journal(sealed_dir)
    for each in damages:
        journal = damage(journal, each)
    directory = write_journal(tmp_path_factory.mktemp("damaged") / "j", journal)
    key = data.draw(st.sampled_from([None, SEAL_KEY.verify_key, OTHER_KEY.verify_key]))
    partial = data.draw(st.booleans())
    expected = reference(directory, key=key, allow_partial_tail=partial)
    one = outcome(
        lambda: verify_journal(directory, seals=True, key=key, allow_partial_tail=partial, workers=1)
    )
    assert one == expected
    with ThreadPoolExecutor(3) as executor:
        run = lambda: verify_journal(  # noqa: E731
            directory, seals=True, key=key, allow_partial_tail=partial, executor=executor
        )
        assert outcome(run) == expected


def test_a_segment_removed_after_listing_is_read_as_empty(
    harness: Callable[..., Harness], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention may remove the oldest segment between a reader's listing and its opening it."""
    h = harness(segment_bytes=300)
    h.append_many(6)
    h.settle()
    listed = list_segments(h.path)
    assert len(listed) > 2
    os.unlink(listed[0].path)
    assert list(iter_lines(listed[0].path)) == []
    monkeypatch.setattr("gateway.journal.reader.list_segments", lambda path: listed)
    kept = [r.seq for r in read_records(h.path)]
    assert kept == list(range(listed[1].first_seq, 7))


# -- a rotated signing key: seals by the old key, then by the new one

THIRD_KEY = SigningKey(bytes(range(2, 34)))


@pytest.fixture
def rotated_dir(harness: Callable[..., Harness], tmp_path: Path) -> Path:
    """A closed journal of 48 records over about 10 segments: seals #6-#24 by SEAL_KEY, #30-#48 by
    OTHER_KEY, as the sealer leaves it when ``signing_key`` is pointed at a new key file."""
    h = harness(tmp_path / "rotated", segment_bytes=700)
    for i in range(40):
        h.journal.append("uplink", "P001", "carIn", f"o-{i}", {"i": i, "plate": "粤B12345"})
        if i % 5 == 4:
            seq, chain = h.journal.head
            key = SEAL_KEY if i < 20 else OTHER_KEY
            h.journal.append(SEAL_RECORD, "", "", "", seal_body(key, "gw-test", seq, chain))
        h.settle()
    h.close()
    assert len(list_segments(h.path)) >= 8
    return h.path


def one_segment(directory: Path, tmp_path: Path) -> Path:
    """The same journal as a single segment, so that every seal is checked in one segment's pass."""
    journal = read_journal(directory)
    lines = [line for _, segment_lines in journal for line in segment_lines]
    return write_journal(tmp_path / "one", [(journal[0][0], lines)])


A, B, C = (bytes(key.verify_key) for key in (SEAL_KEY, OTHER_KEY, THIRD_KEY))
ROTATED_RUNS = (integrity.KeyRun(A, 6, 24, 4), integrity.KeyRun(B, 30, 48, 4))


def reference_keys(
    directory: Path, keys: tuple[VerifyKey, ...], *, allow_partial_tail: bool = False
) -> object:
    """
    What verify_journal(seals=True, keys=keys) must say, by definition: one plain pass, a seal holding
    when one of ``keys`` made it (none given: the first seal's key), and which key made which seals.

    ``("whole", records, seals, key, last seal, runs)`` or ``("break", seq, reason, segment, offset)``.
    """
    given = [bytes(key) for key in keys]
    if len(given) < 2:
        # one key or none: :func:`reference` says where it breaks; the pass below, which seals made it
        verdict = reference(directory, key=keys[0] if keys else None, allow_partial_tail=allow_partial_tail)
        if isinstance(verdict, tuple) and verdict[0] == "break":
            return verdict
    segments = list_segments(directory)
    prev_seq, prev_chain = (0, GENESIS_CHAIN) if segments[0].first_seq == 1 else (None, None)
    records = 0
    runs: list[tuple[bytes, int, int, int]] = []
    for index, segment in enumerate(segments):
        expected = segment.first_seq if prev_seq is None else prev_seq + 1
        if segment.first_seq != expected:
            reason = f"segment starts at seq {segment.first_seq} where {expected} was expected"
            return ("break", expected, reason, segment.name, 0)
        prev_seq = segment.first_seq - 1 if prev_seq is None else prev_seq
        for offset, line in iter_lines(segment.path):
            if allow_partial_tail and index == len(segments) - 1 and not line.endswith(b"\n"):
                break
            try:
                seq, chain = check_line(line, prev_seq, prev_chain)
                record = decode_line(line)
                if record.seq != seq or record.chain != chain.decode():
                    raise BadLine("decoded record does not match its line")
            except BadLine as e:
                return ("break", prev_seq + 1, e.args[0], segment.name, offset)
            if record.kind == SEAL_RECORD:
                signed = None if prev_chain is None else (prev_seq, prev_chain.decode())
                # held against no key first, for the checks before the key's, then against the given ones
                problem, recorded = seal_problem(record.body, signed, None)
                if recorded is not None and len(given) >= 2 and recorded not in given:
                    theirs = base64.b64encode(recorded).decode()
                    ours = ", ".join(base64.b64encode(key).decode() for key in given)
                    problem = f"sealed with another key ({theirs}) than the ones checked against ({ours})"
                if problem is not None:
                    return ("break", seq, problem, segment.name, offset)
                assert recorded is not None
                if runs and runs[-1][0] == recorded:
                    runs[-1] = (recorded, runs[-1][1], seq, runs[-1][3] + 1)
                else:
                    runs.append((recorded, seq, seq, 1))
            prev_seq, prev_chain = seq, chain
            records += 1
    seals = sum(run[3] for run in runs)
    key = given[0] if len(given) == 1 else runs[0][0] if runs else None
    kept = tuple(integrity.KeyRun(*run) for run in runs)
    return ("whole", records, seals, key, runs[-1][2] if runs else None, kept)


def outcome_keys(run: Callable[[], Verdict]) -> object:
    """verify_journal's answer in the form :func:`reference_keys` gives."""
    try:
        v = run()
    except ChainError as e:
        return ("break", e.seq, e.reason, e.segment, e.offset)
    return ("whole", v.records, v.seals, v.key, v.last_seal, v.sealed_by)


@pytest.mark.parametrize("layout", ["segments", "one segment"])
def test_a_rotated_journal_verifies_with_both_keys(rotated_dir: Path, tmp_path: Path, layout: str) -> None:
    """Given the old and the new key, in either order, every seal holds, and the verdict says which key
    made which seals, sequentially and in parallel."""
    directory = rotated_dir if layout == "segments" else one_segment(rotated_dir, tmp_path)
    expected = ("whole", 48, 8, A, 48, ROTATED_RUNS)
    both = (SEAL_KEY.verify_key, OTHER_KEY.verify_key)
    assert reference_keys(directory, both) == expected
    for workers in (1, 2):
        v = verify_journal(directory, seals=True, keys=both, workers=workers)
        assert ("whole", v.records, v.seals, v.key, v.last_seal, v.sealed_by) == expected
        backwards = verify_journal(directory, seals=True, keys=both[::-1], workers=workers)
        assert (backwards.key, backwards.sealed_by) == (A, ROTATED_RUNS)
        # key= and keys= together, and a key given twice, are the same two keys
        twice = verify_journal(directory, seals=True, key=both[1], keys=[*both, both[1]], workers=workers)
        assert twice.sealed_by == ROTATED_RUNS


@pytest.mark.parametrize("layout", ["segments", "one segment"])
def test_a_rotation_without_the_new_key_is_a_key_change(
    rotated_dir: Path, tmp_path: Path, layout: str
) -> None:
    """Without keys, or with the old key only, the first seal by the new key is a KeyChangeError that
    names the new key and the key it was held against, whether or not it starts a segment's seals."""
    directory = rotated_dir if layout == "segments" else one_segment(rotated_dir, tmp_path)
    b64 = {key: base64.b64encode(key).decode() for key in (A, B)}
    for keys in ((), (SEAL_KEY.verify_key,)):
        for workers in (1, 2):
            with pytest.raises(integrity.KeyChangeError) as info:
                verify_journal(directory, seals=True, keys=keys, workers=workers)
            e = info.value
            assert (e.seq, e.recorded, e.checked) == (30, B, (A,))
            assert e.reason == f"sealed with another key ({b64[B]}) than the one checked against ({b64[A]})"
        with pytest.raises(ChainError) as broken:
            verify_journal(directory, seals=True, keys=keys)
        where = (broken.value.seq, broken.value.reason, broken.value.segment, broken.value.offset)
        assert ("break", *where) == reference_keys(directory, keys)


def test_an_unrelated_key_fails_at_the_first_seal(rotated_dir: Path) -> None:
    """A key that made no seal fails at the first seal; given with the old key, at the first new seal."""
    with pytest.raises(integrity.KeyChangeError) as info:
        verify_journal(rotated_dir, seals=True, keys=[THIRD_KEY.verify_key], workers=2)
    assert (info.value.seq, info.value.recorded, info.value.checked) == (6, A, (C,))
    old_and_unrelated = (SEAL_KEY.verify_key, THIRD_KEY.verify_key)
    with pytest.raises(integrity.KeyChangeError, match="than the ones checked against") as info:
        verify_journal(rotated_dir, seals=True, keys=old_and_unrelated, workers=2)
    assert (info.value.seq, info.value.recorded, info.value.checked) == (30, B, (A, C))
    assert outcome_keys(
        lambda: verify_journal(rotated_dir, seals=True, keys=old_and_unrelated, workers=2)
    ) == reference_keys(rotated_dir, old_and_unrelated)


def test_damage_after_the_rotation_is_found_with_both_keys(rotated_dir: Path, tmp_path: Path) -> None:
    """Both keys given: an altered byte after the rotation breaks the chain there, and a record rewritten
    with a chain that holds is found by the new key's next seal."""
    both = (SEAL_KEY.verify_key, OTHER_KEY.verify_key)
    journal = read_journal(rotated_dir)
    forged = rechain(journal, lambda r: evolve(r, body={"forged": 1}) if r.seq == 33 else r)
    rewritten = write_journal(tmp_path / "rewritten", forged)
    with pytest.raises(ChainError, match="seal signs #35") as info:
        verify_journal(rewritten, seals=True, keys=both, workers=2)
    assert info.value.seq == 36
    assert not isinstance(info.value, integrity.KeyChangeError)

    seq, name, offset = alter(rotated_dir, -1, 1)
    assert seq > 30
    with pytest.raises(ChainError, match="chain does not match") as info:
        verify_journal(rotated_dir, seals=True, keys=both, workers=2)
    assert (info.value.seq, info.value.segment, info.value.offset) == (seq, name, offset)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    st.data(),
    st.lists(
        st.tuples(
            st.sampled_from(["byte", "drop", "copy", "swap", "cut", "segment", "body"]),
            st.integers(0, 50),
            st.integers(0, 50),
            st.integers(0, 10_000),
        ),
        min_size=0,
        max_size=2,
    ),
)
def test_parallel_equals_one_pass_on_a_damaged_rotated_journal(
    rotated_dir: Path, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject, damages: list[Damage]
) -> None:
    """Whatever the damage and the keys given, sequential and parallel verify_journal say what one plain
    pass says, down to which key made which seals."""
    journal = read_journal(rotated_dir)
    for each in damages:
        journal = damage(journal, each)
    directory = write_journal(tmp_path_factory.mktemp("damaged") / "j", journal)
    old, new, unrelated = SEAL_KEY.verify_key, OTHER_KEY.verify_key, THIRD_KEY.verify_key
    keys = data.draw(st.sampled_from([(), (old,), (new,), (old, new), (new, old), (old, unrelated)]))
    partial = data.draw(st.booleans())
    expected = reference_keys(directory, keys, allow_partial_tail=partial)
    one = outcome_keys(
        lambda: verify_journal(directory, seals=True, keys=keys, allow_partial_tail=partial, workers=1)
    )
    assert one == expected
    with ThreadPoolExecutor(3) as executor:
        run = lambda: verify_journal(  # noqa: E731
            directory, seals=True, keys=keys, allow_partial_tail=partial, executor=executor
        )
        assert outcome_keys(run) == expected

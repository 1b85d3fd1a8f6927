"""Damage inside a segment: set aside alone at start-up, under a signed recovery record verify accepts."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gateway.cloud.progress import Progress
from gateway.journal.integrity import KeyChangeError, Verdict, verify_journal
from gateway.journal.kinds import FORWARDED_RECORD, RECOVERY_RECORD, SEAL_RECORD
from gateway.journal.reader import ChainError, Cursor, Damage, read_records, read_records_skipping
from gateway.journal.record import decode_line
from gateway.journal.recovery import DAMAGED, check_recovery, is_hole
from gateway.journal.seals import seal_body
from gateway.journal.segments import list_segments
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.state import restore_at_start
from tests.journal.helpers import Harness
from tests.lots.harness import ZONE

KEY = SigningKey(b"k" * 32)
OTHER_KEY = SigningKey(b"o" * 32)


def signed(harness: Callable[..., Harness], n: int, **options: Any) -> Harness:
    """A journal of ``n`` records, opened with the gateway key, closed."""
    h = harness(signing_key=KEY, gateway_id="gw-test", **options)
    h.append_many(n)
    h.settle()
    h.close()
    return h


def segment_lines(path: Path) -> list[bytes]:
    return path.read_bytes().splitlines(keepends=True)


def line_offset(path: Path, index: int) -> int:
    """The offset of line ``index`` (0-based) of a segment."""
    return sum(len(line) for line in segment_lines(path)[:index])


def flip(path: Path, offset: int) -> None:
    """Alter one byte of a file."""
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


def last_segment(h: Harness) -> Path:
    return Path(list_segments(h.path)[-1].path)


def recoveries(h: Harness) -> list[dict[str, Any]]:
    """The bodies of the signed recovery records (damage set aside), in order."""
    return [
        r.body
        for r in read_records(h.path)
        if r.kind == RECOVERY_RECORD and isinstance(r.body, dict) and r.body.get("reason") == DAMAGED
    ]


def whole(h: Harness) -> Verdict:
    """verify with seals against the gateway key; fails the test on a break."""
    return verify_journal(h.path, seals=True, key=KEY.verify_key)


def test_one_altered_byte_mid_segment_sets_aside_that_record_alone(harness: Callable[..., Harness]) -> None:
    """A flipped byte in record 3 of 5: only 3 is lost; 4 and 5 stay; a signed record names the damage."""
    h = signed(harness, 5)
    path = last_segment(h)
    original = path.read_bytes()
    offset = line_offset(path, 2)
    damaged_line = segment_lines(path)[2]
    flip(path, offset + 30)
    with pytest.raises(ChainError) as before_repair:
        whole(h)
    assert before_repair.value.seq == 3 and before_repair.value.offset == offset
    altered = segment_lines(path)[2]

    journal = h.open()

    assert [(r.seq, r.kind) for r in read_records(h.path)] == [
        (1, "uplink"),
        (2, "uplink"),
        (4, "uplink"),
        (5, "uplink"),
        (6, RECOVERY_RECORD),
    ]
    [body] = recoveries(h)
    lines = segment_lines(path)
    assert is_hole(lines[2]) and len(lines[2]) == len(damaged_line)
    assert b"".join(lines[:2] + lines[3:5]) == b"".join(
        segment_lines_of(original)[:2] + segment_lines_of(original)[3:]
    )
    saved = h.path / body["saved_as"]
    assert saved.read_bytes() == altered
    chain = [decode_line(line).chain for line in segment_lines_of(original)]
    assert body["segment"] == path.name and body["offset"] == offset and body["bytes"] == len(altered)
    assert body["lost"] == {"first": 3, "last": 3} and body["lines"] == 1
    assert body["before"] == {"seq": 2, "chain": chain[1]}
    assert body["after"] == {"seq": 4, "prev_chain": chain[2], "chain": chain[3]}
    assert "chain does not match" in body["detail"]
    assert body["gateway"] == "gw-test"
    assert check_recovery(body) == (bytes(KEY.verify_key), None)
    verdict = whole(h)
    assert verdict.records == 5
    [recovery] = verdict.recoveries
    assert (recovery.seq, recovery.lost, recovery.offset) == (6, (3, 3), offset)
    assert [q.seq for q in journal.quarantined] == [3]  # shown in /readyz until the next start
    d = journal.append("uplink", "P001", "carIn", "after", {})
    h.settle()
    assert d.called and journal.last_seq == 7
    assert whole(h).records == 6


def segment_lines_of(data: bytes) -> list[bytes]:
    return data.splitlines(keepends=True)


def test_a_restart_after_the_recovery_record_adds_no_other(harness: Callable[..., Harness]) -> None:
    """The hole is known by its recovery record: reopening twice journals nothing more."""
    h = signed(harness, 5)
    flip(last_segment(h), line_offset(last_segment(h), 2) + 30)
    h.open()
    h.close()
    before = h.data()
    journal = h.open()
    h.close()
    journal = h.open()
    assert h.data() == before
    assert journal.last_seq == 6 and journal.quarantined == []
    assert len(recoveries(h)) == 1
    whole(h)


def test_a_crash_before_the_hole_is_made_journals_no_second_record(harness: Callable[..., Harness]) -> None:
    """Damage whose recovery record is journaled but whose bytes are still there is only made a hole."""
    h = signed(harness, 5)
    path = last_segment(h)
    offset = line_offset(path, 2)
    flip(path, offset + 30)
    altered = segment_lines(path)[2]
    h.open()
    h.close()
    data = bytearray(path.read_bytes())  # as if the hole had not been written
    data[offset : offset + len(altered)] = altered
    path.write_bytes(bytes(data))
    whole(h)  # verify accepts the damaged bytes the record took the digest of, too
    journal = h.open()
    assert journal.last_seq == 6 and len(recoveries(h)) == 1
    assert is_hole(segment_lines(path)[2])
    whole(h)


def test_an_altered_chain_digit_loses_only_its_record(harness: Callable[..., Harness]) -> None:
    """A byte altered in a record's chain: the next record is proven by that record's chain computed anew."""
    h = signed(harness, 5)
    path = last_segment(h)
    line = segment_lines(path)[2]
    flip(path, line_offset(path, 2) + len(line) - 10)  # inside its chain digits
    h.open()
    [body] = recoveries(h)
    assert body["lost"] == {"first": 3, "last": 3}
    assert [r.seq for r in read_records(h.path)] == [1, 2, 4, 5, 6]
    whole(h)


def test_two_separate_bad_lines_each_get_a_recovery_record(harness: Callable[..., Harness]) -> None:
    """Damage in records 2 and 5 of 7: two records lost, two recovery records, the rest live."""
    h = signed(harness, 7)
    path = last_segment(h)
    flip(path, line_offset(path, 1) + 30)
    flip(path, line_offset(path, 4) + 30)
    h.open()
    assert [b["lost"] for b in recoveries(h)] == [{"first": 2, "last": 2}, {"first": 5, "last": 5}]
    assert [r.seq for r in read_records(h.path)] == [1, 3, 4, 6, 7, 8, 9]
    assert [r.lost for r in whole(h).recoveries] == [(2, 2), (5, 5)]


def test_two_adjacent_bad_lines_are_set_aside_together(harness: Callable[..., Harness]) -> None:
    """Records 3 and 4 both altered: one recovery record names both; 5 stays."""
    h = signed(harness, 6)
    path = last_segment(h)
    flip(path, line_offset(path, 2) + 30)
    flip(path, line_offset(path, 3) + 30)
    h.open()
    [body] = recoveries(h)
    assert body["lost"] == {"first": 3, "last": 4} and body["lines"] == 2
    assert [r.seq for r in read_records(h.path)] == [1, 2, 5, 6, 7]
    whole(h)


def test_a_byte_that_makes_a_line_unparsable_loses_only_its_record(harness: Callable[..., Harness]) -> None:
    """An altered quote makes record 3 no JSON: it alone is set aside, its chain still proves record 4."""
    h = signed(harness, 5)
    path = last_segment(h)
    offset = line_offset(path, 2)
    data = bytearray(path.read_bytes())
    data[offset + 1] = ord("x")  # {"seq" becomes {xseq"
    path.write_bytes(bytes(data))
    h.open()
    [body] = recoveries(h)
    assert body["lost"] == {"first": 3, "last": 3}
    assert [r.seq for r in read_records(h.path)] == [1, 2, 4, 5, 6]
    whole(h)


def test_a_line_overwritten_whole_takes_the_unprovable_next_record_with_it(
    harness: Callable[..., Harness],
) -> None:
    """
    Record 3 overwritten, chain and all: record 4 cannot be told from a forgery, so it is set aside too.

    Nothing is left to compute record 4's chain from; keeping it would let
    whoever wiped record 3 alter record 4 unseen. Record 5 is proven by 4's chain.
    """
    h = signed(harness, 5)
    path = last_segment(h)
    offset = line_offset(path, 2)
    length = len(segment_lines(path)[2])
    data = bytearray(path.read_bytes())
    data[offset : offset + length] = b"x" * (length - 1) + b"\n"
    path.write_bytes(bytes(data))
    h.open()
    [body] = recoveries(h)
    assert body["lost"] == {"first": 3, "last": 4} and body["lines"] == 2
    assert [r.seq for r in read_records(h.path)] == [1, 2, 5, 6]
    whole(h)


def test_an_inserted_line_loses_no_record(harness: Callable[..., Harness]) -> None:
    """A line inserted between two records is set aside; no seq is lost and the recovery record says so."""
    h = signed(harness, 4)
    path = last_segment(h)
    offset = line_offset(path, 2)
    data = path.read_bytes()
    path.write_bytes(data[:offset] + b"not a record\n" + data[offset:])
    h.open()
    [body] = recoveries(h)
    assert body["lost"] is None and body["bytes"] == len(b"not a record\n")
    assert [r.seq for r in read_records(h.path)] == [1, 2, 3, 4, 5]
    [recovery] = whole(h).recoveries
    assert recovery.lost is None


def test_a_bad_first_line_of_the_last_segment(harness: Callable[..., Harness]) -> None:
    """Damage at a segment's start resumes from the last record of the segment before."""
    h = signed(harness, 6, segment_bytes=400)  # two records a segment
    segments = list_segments(h.path)
    assert len(segments) >= 3
    path = Path(segments[-1].path)
    first_seq = segments[-1].first_seq
    assert len(segment_lines(path)) == 2
    flip(path, 30)
    h.open()
    [body] = recoveries(h)
    assert body["lost"] == {"first": first_seq, "last": first_seq}
    assert body["offset"] == 0 and body["segment"] == path.name
    seqs = [r.seq for r in read_records(h.path)]
    assert first_seq not in seqs and first_seq + 1 in seqs
    whole(h)


def test_damage_in_a_sealed_region_keeps_the_seals_whole(harness: Callable[..., Harness]) -> None:
    """A record under a seal, and a seal itself, altered: both set aside; the other seals still verify."""
    h = harness(signing_key=KEY, gateway_id="gw-test")
    for _ in range(3):
        h.append_many(2)
        h.settle()
        seq, chain = h.journal.head
        h.journal.append(SEAL_RECORD, "", "", "", seal_body(KEY, "gw-test", seq, chain))
        h.settle()
    h.close()  # 1 2 seal(3) 4 5 seal(6) 7 8 seal(9)
    path = last_segment(h)
    flip(path, line_offset(path, 3) + 30)  # record 4, under seal 6
    flip(path, line_offset(path, 5) + 30)  # seal 6 itself
    h.open()
    assert [b["lost"] for b in recoveries(h)] == [{"first": 4, "last": 4}, {"first": 6, "last": 6}]
    verdict = whole(h)
    assert verdict.seals == 2 and verdict.last_seal == 9
    assert [r.lost for r in verdict.recoveries] == [(4, 4), (6, 6)]


def test_a_damaged_last_line_is_still_a_torn_tail(harness: Callable[..., Harness]) -> None:
    """With nothing intact after it, a bad last line is cut as a torn tail, not set aside."""
    h = signed(harness, 5)
    path = last_segment(h)
    flip(path, line_offset(path, 4) + 30)
    journal = h.open()
    assert recoveries(h) == []
    [cut] = [r.body for r in read_records(h.path) if r.kind == RECOVERY_RECORD]
    assert isinstance(cut, dict) and cut["last_good_seq"] == 4 and ".cut-" in cut["saved_as"]
    assert journal.last_seq == 5
    whole(h)


def test_damage_in_an_older_segment_found_at_start_up_is_set_aside(harness: Callable[..., Harness]) -> None:
    """A line the start-up read cannot parse, in an older segment, gets a signed recovery record too."""
    h = signed(harness, 8, segment_bytes=400)
    segments = list_segments(h.path)
    older = Path(segments[1].path)
    data = bytearray(older.read_bytes())
    data[5] = ord("x")  # the first record of that segment no longer parses
    older.write_bytes(bytes(data))
    journal = h.open()
    found: list[Damage] = []
    list(read_records_skipping(h.path, found.append))
    assert len(found) == 1
    [record] = journal.set_aside(found)
    assert record.kind == RECOVERY_RECORD
    assert record.body["lost"] == {"first": segments[1].first_seq, "last": segments[1].first_seq}
    assert is_hole(segment_lines(older)[0])
    whole(h)
    found = []
    list(read_records_skipping(h.path, found.append))
    assert found == []  # the hole is skipped silently from then on


def test_without_a_key_the_damage_is_set_aside_but_verify_refuses_it(harness: Callable[..., Harness]) -> None:
    """An unsigned recovery record vouches for nothing: the records stay live, verify still fails there."""
    h = harness()
    h.append_many(5)
    h.settle()
    h.close()
    flip(last_segment(h), line_offset(last_segment(h), 2) + 30)
    h.open()
    assert [r.seq for r in read_records(h.path)] == [1, 2, 4, 5, 6]
    with pytest.raises(ChainError, match="does not record a base64"):
        verify_journal(h.path, seals=True)


def test_a_recovery_record_cannot_hide_later_tampering(harness: Callable[..., Harness]) -> None:
    """Altering the hole, an intact record, or the recovery record itself breaks verify again."""
    h = signed(harness, 5)
    path = last_segment(h)
    offset = line_offset(path, 2)
    flip(path, offset + 30)
    h.open()
    h.close()
    clean = path.read_bytes()
    for where, what in [
        (offset + 5, "were changed since"),
        (line_offset(path, 3) + 30, "chain does not match"),
    ]:
        flip(path, where)
        with pytest.raises(ChainError, match=what):
            whole(h)
        path.write_bytes(clean)
    recovery_line = segment_lines(path)[5]
    forged = recovery_line.replace(b'"lines":1', b'"lines":2')
    path.write_bytes(clean.replace(recovery_line, forged))
    with pytest.raises(ChainError):
        whole(h)  # the chain breaks at the recovery record (and its signature no longer holds)
    path.write_bytes(clean)
    whole(h)


def test_a_recovery_record_signed_by_another_key_is_refused(harness: Callable[..., Harness]) -> None:
    """Only the gateway's key vouches for damage: a record signed by another is named and refused."""
    h = harness(signing_key=OTHER_KEY, gateway_id="gw-test")
    h.append_many(5)
    h.settle()
    h.close()
    flip(last_segment(h), line_offset(last_segment(h), 2) + 30)
    journal = h.open()
    verify_journal(h.path, seals=True)  # whole by the key it records
    with pytest.raises(ChainError, match="another key"):
        whole(h)
    journal.append(SEAL_RECORD, "", "", "", seal_body(KEY, "gw-test", *journal.head))
    h.settle()
    h.close()
    with pytest.raises(KeyChangeError) as e:
        verify_journal(h.path, seals=True)  # without keys: the seals' key and the recovery record's differ
    assert e.value.recorded == bytes(OTHER_KEY.verify_key)
    assert "recovery record" in e.value.reason


def test_a_torn_batch_of_zeros_is_cut_not_set_aside(harness: Callable[..., Harness]) -> None:
    """Zeros running into whole lines are what a crash leaves: cut as a torn tail, as before."""
    h = signed(harness, 5)
    path = last_segment(h)
    lines = segment_lines(path)
    path.write_bytes(b"".join(lines[:2]) + b"\x00" * len(lines[2]) + b"".join(lines[3:]))
    journal = h.open()
    assert recoveries(h) == [] and journal.last_seq == 3
    assert any(".cut-" in name for name in os.listdir(h.path))


def test_records_after_the_damage_stay_live_after_a_restart(harness: Callable[..., Harness]) -> None:
    """A token, acknowledged uplinks and forwarding progress after an altered record all come back."""
    h = harness(signing_key=KEY, gateway_id="gw-test")
    clock_sessions = Sessions(h.clock, ZONE)
    token, token_record = clock_sessions.mint("lot001", "P001")
    h.journal.append("uplink", "P001", "carIn", "before", {"i": 0})
    h.journal.append("uplink", "P001", "carIn", "damaged", {"i": 1})  # seq 2: to be altered
    h.journal.append("token", "P001", "login", "login-1", token_record)  # seq 3
    for i in range(38):
        h.journal.append("uplink", "P001", "carIn", f"after-{i}", {"i": i})  # seqs 4-41
    h.journal.append(
        FORWARDED_RECORD, "", "", "", {"first": 1, "last": 20, "events": 19, "status": 200, "through": 20}
    )
    h.settle()
    h.close()
    path = last_segment(h)
    flip(path, line_offset(path, 1) + 40)

    journal = h.open()
    sessions = Sessions(h.clock, ZONE)
    repeats = Repeats(h.clock, window=3600)
    progress = Progress()
    restore_at_start(
        journal,
        now=h.clock.seconds(),
        sessions=sessions,
        repeats=repeats,
        totals=ParkTotals(),
        progress=progress,
    )
    assert sessions.lookup(token) is not None  # the token still works
    assert repeats.seen("P001", "after-37") is not None  # acknowledged: a retry is a repeat
    assert repeats.seen("P001", "damaged") is None  # lost: a retry is stored again
    assert progress.through == 20
    cursor = Cursor(h.path, progress.through + 1)
    forwarded = cursor.read(journal.committed_seq, 1000, 1 << 20)
    assert [r.opr for r in forwarded if r.kind == "uplink"] == [f"after-{i}" for i in range(17, 38)]
    assert len(recoveries(h)) == 1
    verdict = whole(h)
    assert [r.lost for r in verdict.recoveries] == [(2, 2)]
    cursor = Cursor(h.path, 1)
    early = cursor.read(5, 10, 1 << 20)
    assert [r.seq for r in early] == [1, 3, 4, 5]  # the lost seq is stepped over
    assert [d.reason for d in cursor.damage] == ["seqs 2-2 missing"]
    cursor.close()


def test_a_bad_last_line_of_an_older_segment_resumes_in_the_next(harness: Callable[..., Harness]) -> None:
    """Damage ending a segment before the last: the next segment's first record is where the chain resumes."""
    h = signed(harness, 8, segment_bytes=400)
    segments = list_segments(h.path)
    older = Path(segments[1].path)
    lines = segment_lines(older)
    data = bytearray(older.read_bytes())
    data[line_offset(older, len(lines) - 1) + 1] = ord("x")  # its last record no longer parses
    older.write_bytes(bytes(data))
    journal = h.open()
    found: list[Damage] = []
    list(read_records_skipping(h.path, found.append))
    [record] = journal.set_aside(found)
    lost = segments[2].first_seq - 1
    assert record.body["lost"] == {"first": lost, "last": lost}
    assert record.body["after"]["seq"] == segments[2].first_seq
    verdict = whole(h)
    assert [r.lost for r in verdict.recoveries] == [(lost, lost)]
    h.close()
    assert h.open().last_seq == record.seq  # reopening adds nothing
    whole(h)

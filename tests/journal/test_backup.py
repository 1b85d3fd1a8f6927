"""Incremental backup of a journal, and restore from it above a seq floor (gateway.journal.backup)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from gateway.journal import backup as journal_backup
from gateway.journal.backup import BackupRefused, JournalBusy, backup, restore
from gateway.journal.integrity import verify_journal
from gateway.journal.kinds import RESTORE_RECORD
from gateway.journal.reader import ChainError, Cursor, read_records
from gateway.journal.record import decode_line, encode_line
from gateway.journal.restore import RESTORE, seq_floor
from gateway.journal.segments import list_segments, segment_name
from gateway.journal.writer import JournalWriteError
from tests.journal.helpers import Harness

KEY = SigningKey(b"k" * 32)
OTHER_KEY = SigningKey(b"o" * 32)
NOW = 1_796_000_000.5  # 2026-11-30T00:53:20.5Z, after every Harness record


def records(h: Harness, n: int, start: int = 0) -> int:
    """Append ``n`` carIns with the real writer, durable; return the last seq."""
    for i in range(start, start + n):
        h.journal.append("uplink", "P001", "carIn", f"o{i}", {"recordCode": f"R{i}"})
        h.settle()
    return h.journal.last_seq


def lines_of(path: Path) -> list[bytes]:
    """Every line of a journal directory, in order."""
    return [line for s in list_segments(path) for line in Path(s.path).read_bytes().splitlines(keepends=True)]


def names(path: Path) -> list[str]:
    return [s.name for s in list_segments(path)]


@pytest.fixture
def journal(tmp_path: Path) -> Harness:
    """A journal of small segments (about two records each), open."""
    return Harness(tmp_path / "journal", segment_bytes=400, signing_key=KEY, gateway_id="gw-test")


# -- backup


def test_first_backup_copies_whole_lines_and_verifies_alone(journal: Harness, tmp_path: Path) -> None:
    """A first backup copies every segment, leaves a line being written out, and verifies on its own."""
    last = records(journal, 5)
    with open(list_segments(journal.path)[-1].path, "ab") as f:
        f.write(b'{"seq":6,"ts":"2026-11-18T11:0')
    dest = tmp_path / "backup"
    result = backup(str(journal.path), str(dest))
    assert (result.first_new, result.last_seq, result.records, result.left_out) == (1, last, 5, 30)
    assert result.new_segments == len(list_segments(journal.path))
    assert lines_of(dest) == lines_of(journal.path)[:-1]
    assert verify_journal(dest).records == last


def test_a_second_run_copies_only_new_lines_and_new_segments(journal: Harness, tmp_path: Path) -> None:
    """Run again, a backup appends what the last segment grew by and the segments begun since, no more."""
    records(journal, 3)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    last_before = list_segments(dest)[-1]
    old_bytes = {s.name: Path(s.path).read_bytes() for s in list_segments(dest)}
    journal_size = sum(os.stat(s.path).st_size for s in list_segments(journal.path))

    last = records(journal, 4, start=3)
    result = backup(str(journal.path), str(dest))
    grown = sum(os.stat(s.path).st_size for s in list_segments(journal.path)) - journal_size
    assert result.bytes == grown  # only the new bytes were copied
    assert (result.first_new, result.last_seq, result.records) == (4, last, 4)
    assert result.new_segments == len(list_segments(journal.path)) - len(old_bytes)
    assert lines_of(dest) == lines_of(journal.path)
    for name, data in old_bytes.items():
        assert (dest / name).read_bytes().startswith(data)
    assert (dest / last_before.name).read_bytes() == Path(journal.path / last_before.name).read_bytes()
    assert verify_journal(dest).records == last

    nothing = backup(str(journal.path), str(dest))
    assert (nothing.bytes, nothing.records, nothing.first_new, nothing.last_seq) == (0, 0, None, last)


def test_a_segment_that_grew_is_appended_to(tmp_path: Path) -> None:
    """With one large segment, each run appends the lines written since to the same DEST file."""
    h = Harness(tmp_path / "journal")
    dest = tmp_path / "backup"
    records(h, 2)
    backup(str(h.path), str(dest))
    for round_ in range(3):
        last = records(h, 2, start=10 * (round_ + 1))
        result = backup(str(h.path), str(dest))
        assert (result.new_segments, result.records, result.last_seq) == (0, 2, last)
    assert names(dest) == names(h.path) == [segment_name(1)]
    assert lines_of(dest) == lines_of(h.path)
    assert verify_journal(dest).records == 8


def test_a_dest_of_another_journal_is_refused_untouched(journal: Harness, tmp_path: Path) -> None:
    """A DEST holding a backup of another journal (same segment names) is refused; nothing is written."""
    records(journal, 3)
    other = Harness(tmp_path / "other", segment_bytes=400)
    records(other, 3, start=100)
    other.close()
    dest = tmp_path / "backup"
    backup(str(other.path), str(dest))
    before = lines_of(dest)
    with pytest.raises(BackupRefused, match=f"^{dest} is not a backup of {journal.path}: its record #3 "):
        backup(str(journal.path), str(dest))
    assert lines_of(dest) == before


def test_a_dest_ahead_of_a_shorter_journal_is_refused(journal: Harness, tmp_path: Path) -> None:
    """A DEST whose last segment is newer than anything in DIR is refused: it is not DIR's backup."""
    records(journal, 6)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    small = Harness(tmp_path / "small", segment_bytes=400)
    records(small, 1)
    small.close()
    with pytest.raises(BackupRefused, match="the journal holds nothing at or after DEST's last segment"):
        backup(str(small.path), str(dest))


def test_the_seam_is_checked_when_dests_last_segment_is_gone_from_dir(tmp_path: Path) -> None:
    """DEST's last segment gone from DIR: the next one must chain on DEST's last record, else refused."""
    h = Harness(tmp_path / "journal", segment_bytes=400)
    records(h, 4)
    dest = tmp_path / "backup"
    backup(str(h.path), str(dest))
    last = records(h, 4, start=4)
    h.close()
    kept = names(dest)
    for segment in list_segments(h.path):
        if segment.name in kept:
            os.unlink(segment.path)  # retention, after the backup took them
    result = backup(str(h.path), str(dest))
    assert result.last_seq == last
    assert verify_journal(dest).records == last

    # The same names, but another journal's records: the seam does not hold.
    forged = tmp_path / "forged"
    forged.mkdir()
    for segment in list_segments(h.path):
        lines = Path(segment.path).read_bytes().splitlines(keepends=True)
        first = decode_line(lines[0])
        line, _ = encode_line(first.seq, first.ts, "uplink", "P666", "carIn", "x", {}, b"f" * 32)
        (forged / segment.name).write_bytes(line)
    dest2 = tmp_path / "backup2"
    dest2.mkdir()
    for name in kept:
        (dest2 / name).write_bytes((dest / name).read_bytes())
    with pytest.raises(
        BackupRefused, match=r"does not go on from DEST's last record #4 \(chain does not match"
    ):
        backup(str(forged), str(dest2))
    assert names(dest2) == kept


def test_retention_removing_what_dest_holds_is_fine(journal: Harness, tmp_path: Path) -> None:
    """Segments retention removed from DIR after a backup stay in DEST, which goes on verifying from #1."""
    records(journal, 4)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    last = records(journal, 6, start=4)
    for segment in list_segments(journal.path)[:2]:
        os.unlink(segment.path)
    result = backup(str(journal.path), str(dest))
    assert result.last_seq == last
    assert list_segments(dest)[0].first_seq == 1
    assert verify_journal(dest).records == last


def test_a_backup_that_fell_behind_retention_is_refused(journal: Harness, tmp_path: Path) -> None:
    """Records removed from DIR before DEST got them: refused, naming the seqs; DEST is untouched."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    before = lines_of(dest)
    records(journal, 8, start=2)
    segments = list_segments(journal.path)
    for segment in segments[:-2]:
        os.unlink(segment.path)
    first_left = segments[-2].first_seq
    with pytest.raises(BackupRefused, match=f"records #3 to #{first_left - 1} were removed from"):
        backup(str(journal.path), str(dest))
    assert lines_of(dest) == before


def test_an_interrupted_backup_is_completed(journal: Harness, tmp_path: Path) -> None:
    """A partial line left in DEST by a run killed mid-append is cut, and the next run goes on."""
    records(journal, 3)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    last = records(journal, 3, start=3)
    tail = lines_of(journal.path)[3]
    with open(list_segments(dest)[-1].path, "ab") as f:
        f.write(tail[:20])  # what a killed run may leave
    result = backup(str(journal.path), str(dest))
    assert result.last_seq == last
    assert lines_of(dest) == lines_of(journal.path)
    assert verify_journal(dest).records == last


def test_a_damaged_line_stops_the_copy_just_before_it(tmp_path: Path) -> None:
    """A line that does not check is not copied: DEST holds every record before it; the error says where."""
    h = Harness(tmp_path / "journal")
    records(h, 5)
    h.close()
    path = Path(list_segments(h.path)[0].path)
    lines = path.read_bytes().splitlines(keepends=True)
    lines[3] = lines[3].replace(b"R3", b"R9")
    path.write_bytes(b"".join(lines))
    dest = tmp_path / "backup"
    with pytest.raises(BackupRefused, match=r"does not check in .* holds everything up to #3; run cpmictl"):
        backup(str(h.path), str(dest))
    assert lines_of(dest) == lines[:3]
    assert verify_journal(dest).records == 3


def test_damage_set_aside_is_backed_up_and_verified_whole(tmp_path: Path) -> None:
    """A hole and its signed recovery record are copied as they are; the backup verifies by the same rules."""
    h = Harness(tmp_path / "journal", signing_key=KEY, gateway_id="gw-test")
    records(h, 5)
    dest = tmp_path / "backup"
    backup(str(h.path), str(dest))
    h.close()
    path = Path(list_segments(h.path)[0].path)
    data = bytearray(path.read_bytes())
    data[data.index(b"R2") + 1] ^= 1  # one altered byte in record 3
    path.write_bytes(bytes(data))
    h.open()  # sets the damage aside, appends a signed recovery record
    records(h, 1, start=9)
    h.close()
    # DEST held the undamaged record 3; a fresh backup takes the hole.
    fresh = tmp_path / "fresh"
    result = backup(str(h.path), str(fresh))
    assert result.verified
    verdict = verify_journal(fresh, seals=True, key=KEY.verify_key)
    assert [r.lost for r in verdict.recoveries] == [(3, 3)]


def test_two_backups_into_one_dest_do_not_interleave(journal: Harness, tmp_path: Path) -> None:
    """While one backup holds DEST's lock, another into it is refused at once."""
    records(journal, 1)
    dest = tmp_path / "backup"
    dest.mkdir()
    with journal_backup._locked(str(dest), "held"):
        with pytest.raises(JournalBusy, match="another backup into it is running"):
            backup(str(journal.path), str(dest))


def test_dest_that_is_a_file_or_the_journal_is_refused(journal: Harness, tmp_path: Path) -> None:
    """DEST that is a file, or the journal itself, or a DIR that is no directory: one clear refusal each."""
    records(journal, 1)
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(BackupRefused, match="not a directory"):
        backup(str(journal.path), str(a_file))
    with pytest.raises(BackupRefused, match="DEST is the journal itself"):
        backup(str(journal.path), str(journal.path))
    with pytest.raises(BackupRefused, match="not a journal directory"):
        backup(str(tmp_path / "absent"), str(tmp_path / "d"))


# -- restore


def restored(dest: Path, directory: Path, **options: Any) -> journal_backup.RestoreResult:
    return restore(
        str(dest), str(directory), signing_key=KEY, gateway_id="gw-test", now=lambda: NOW, **options
    )


def test_seq_floor_is_the_time_in_microseconds() -> None:
    """The floor is the restore's time in microseconds, or one past the backup if that is higher."""
    assert seq_floor(42, NOW) == 1_796_000_000_500_000
    assert seq_floor(5_000_000_000_000_000, NOW) == 5_000_000_000_000_001
    assert seq_floor(0, 0.0000015) == 1


def test_restore_goes_on_above_the_floor_and_verifies(journal: Harness, tmp_path: Path) -> None:
    """A restored journal: the backup, a signed restore record at the floor, the writer going on after it."""
    records(journal, 4)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    journal.close()
    target = tmp_path / "restored"
    result = restored(dest, target)
    floor = seq_floor(4, NOW)
    assert (result.last_seq, result.floor) == (4, floor)
    assert names(target) == [*names(dest), segment_name(floor)]
    restore_line = lines_of(target)[-1]
    record = decode_line(restore_line)
    assert (record.seq, record.kind) == (floor, RESTORE_RECORD)
    assert record.body["reason"] == RESTORE
    assert record.body["lost"] == {"first": 5, "last": floor - 1}
    assert record.body["before"]["seq"] == 4

    again = Harness(target, signing_key=KEY, gateway_id="gw-test")
    assert again.journal.last_seq == floor
    last = records(again, 2, start=50)
    again.close()
    assert last == floor + 2
    verdict = verify_journal(target, seals=True, key=KEY.verify_key)
    assert verdict.records == 4 + 1 + 2
    [jump] = verdict.recoveries
    assert (jump.reason, jump.seq, jump.lost) == (RESTORE, floor, (5, floor - 1))
    # A backup of the restored journal, into the same DEST, takes the jump.
    result2 = backup(str(target), str(dest))
    assert result2.verified and result2.last_seq == last


def test_no_second_restore_record_on_restart(journal: Harness, tmp_path: Path) -> None:
    """Restarting a restored journal writes no second restore record; restoring into it again is refused."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    journal.close()
    target = tmp_path / "restored"
    restored(dest, target)
    again = Harness(target, signing_key=KEY, gateway_id="gw-test")
    again.reopen()
    records(again, 1)
    again.reopen()
    again.close()
    kinds = [r.kind for r in read_records(target)]
    assert kinds.count(RESTORE_RECORD) == 1
    with pytest.raises(BackupRefused, match="already holds a journal"):
        restored(dest, target)
    assert [r.kind for r in read_records(target)].count(RESTORE_RECORD) == 1


def test_restore_refuses_a_journal_a_gateway_holds(journal: Harness, tmp_path: Path) -> None:
    """A journal open in a writer (its flock) is not restored over: JournalBusy, nothing changed."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    before = lines_of(journal.path)
    with pytest.raises(JournalBusy, match="held by a running gateway; stop it first"):
        restored(dest, journal.path, replace=True)
    assert lines_of(journal.path) == before


def test_a_gateway_cannot_open_a_journal_being_restored(
    journal: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While restore copies, the journal's lock is held: a gateway starting then fails to open it."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    target = tmp_path / "restored"
    copy = journal_backup._copy_whole
    refused: list[JournalWriteError] = []

    def copy_and_try(source: str, path: str) -> None:
        copy(source, path)
        with pytest.raises(JournalWriteError) as caught:
            Harness(target)
        refused.append(caught.value)

    monkeypatch.setattr(journal_backup, "_copy_whole", copy_and_try)
    restored(dest, target)
    assert refused and refused[0].errno == errno.EBUSY


def test_restore_replace_keeps_the_old_journal_beside(journal: Harness, tmp_path: Path) -> None:
    """With replace, the segments DIR held are renamed aside (never deleted), and readers ignore them."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    records(journal, 3, start=2)
    journal.close()
    old = names(journal.path)
    result = restored(dest, journal.path, replace=True)
    assert sorted(result.replaced) == sorted(f"{name}.replaced-20261130T005320Z" for name in old)
    assert all((journal.path / name).exists() for name in result.replaced)
    assert verify_journal(journal.path, seals=True).records == 3


def test_restore_refuses_a_clock_behind_the_backup(journal: Harness, tmp_path: Path) -> None:
    """A clock behind the backup's last record would give a floor too low: refused, DIR untouched."""
    records(journal, 2)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    target = tmp_path / "restored"
    with pytest.raises(BackupRefused, match=r"the clock \(.*\) is behind the backup's last record"):
        restore(str(dest), str(target), signing_key=KEY, gateway_id="gw", now=lambda: 1_700_000_000.0)
    assert names(target) == []


def test_restore_refuses_a_backup_that_does_not_verify(journal: Harness, tmp_path: Path) -> None:
    """A damaged backup is not restored; nor an empty one; nor without a key to sign with."""
    records(journal, 3)
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    first = Path(list_segments(dest)[0].path)
    first.write_bytes(first.read_bytes().replace(b"R0", b"R7"))
    with pytest.raises(BackupRefused, match="the backup does not verify"):
        restored(dest, tmp_path / "r1")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackupRefused, match="holds no journal segments"):
        restored(tmp_path / "empty", tmp_path / "r2")
    with pytest.raises(BackupRefused, match="must be signed"):
        restore(str(dest), str(tmp_path / "r3"), signing_key=None, gateway_id="gw")


def test_a_forged_or_moved_restore_record_does_not_verify(journal: Harness, tmp_path: Path) -> None:
    """A seq jump passes only under a restore record signed by the journal's key, naming the record before."""
    records(journal, 2)
    journal.close()
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    target = tmp_path / "restored"
    floor = restored(dest, target).floor
    path = target / segment_name(floor)
    good = path.read_bytes()

    # Signed by another key than the journal's seals (given) and recovery records.
    with pytest.raises(ChainError, match=f"restore record #{floor}: signed with another key"):
        verify_journal(target, seals=True, key=OTHER_KEY.verify_key)
    # An altered body: the chain still checks only if recomputed, and then the signature fails.
    record = decode_line(good)
    body = dict(record.body)
    body["gateway"] = "gw-evil"
    prev = str(record.body["before"]["chain"]).encode()
    line, _ = encode_line(record.seq, record.ts, record.kind, "", "", "", body, prev)
    path.write_bytes(line)
    with pytest.raises(ChainError, match="signature does not verify"):
        verify_journal(target)
    # A plain record jumping seqs without a restore record.
    line, _ = encode_line(record.seq, record.ts, "uplink", "P001", "carIn", "x", {}, prev)
    path.write_bytes(line)
    with pytest.raises(ChainError, match=f"segment starts at seq {floor} where 3 was expected"):
        verify_journal(target)


def test_the_cursor_steps_over_a_restore_jump_without_noting_damage(journal: Harness, tmp_path: Path) -> None:
    """A forwarder reading across the restore jump sees the records on both sides, and no damage."""
    records(journal, 3)
    journal.close()
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    target = tmp_path / "restored"
    floor = restored(dest, target).floor
    again = Harness(target)
    last = records(again, 2)
    again.close()
    cursor = Cursor(target, 2)
    read = cursor.read(last, 100, 1 << 20)
    cursor.close()
    assert [r.seq for r in read] == [2, 3, floor, floor + 1, floor + 2]
    assert cursor.damage == []


def test_a_dest_without_locks_is_backed_up_all_the_same(
    journal: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a file system without flock (some remote ones), backup goes on unlocked; restore does not."""
    records(journal, 2)
    journal.close()

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(journal_backup.fcntl, "flock", no_locks)
    assert backup(str(journal.path), str(tmp_path / "backup")).last_seq == 2
    with pytest.raises(OSError, match="No locks available"):
        restored(tmp_path / "backup", tmp_path / "restored")


def test_a_restore_cut_short_never_goes_on_below_the_floor(
    journal: Harness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cut short after its first rename, a restore leaves the floor in place; run again, it completes."""
    records(journal, 4)
    journal.close()
    dest = tmp_path / "backup"
    backup(str(journal.path), str(dest))
    target = tmp_path / "restored"
    rename = os.rename
    calls: list[str] = []

    def power_cut(source: str, destination: str) -> None:
        if calls:
            raise OSError(errno.EIO, "power cut")
        calls.append(destination)
        rename(source, destination)

    monkeypatch.setattr(journal_backup.os, "rename", power_cut)
    with pytest.raises(OSError, match="power cut"):
        restored(dest, target)
    monkeypatch.setattr(journal_backup.os, "rename", rename)
    floor = seq_floor(4, NOW)
    assert names(target) == [segment_name(floor)]
    opened = Harness(target)
    assert opened.journal.last_seq == floor  # a gateway started now goes on above the floor
    opened.close()
    result = restored(dest, target, replace=True)
    assert result.replaced == (f"{segment_name(floor)}.replaced-20261130T005320Z",)
    assert verify_journal(target).records == 5

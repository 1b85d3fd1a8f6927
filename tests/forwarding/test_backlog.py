"""The engine's backlog counts records, not seqs: a restore's seq jump is not a backlog."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred

from gateway import config
from gateway.forwarding import ForwardingEngine
from gateway.interfaces import Entry, Outcome, Split
from gateway.journal.backup import backup, restore
from gateway.journal.jumps import SeqJumps, read_jumps
from gateway.journal.record import Record
from gateway.journal.restore import seq_floor
from tests.journal.helpers import Harness

KEY = SigningKey(b"k" * 32)
NOW = 1_796_000_000.5


class NoSink:
    """A sink the backlog tests never reach: the engines are not started."""

    target = "nowhere"

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        raise AssertionError("not started")

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        raise AssertionError("not started")


def _append(h: Harness, n: int, start: int = 0) -> int:
    for i in range(start, start + n):
        h.journal.append("uplink", "P001", "carIn", f"o{i}", {"recordCode": f"R{i}"})
        h.settle()
    return h.journal.last_seq


def _restored_journal(tmp_path: Path) -> tuple[Harness, int]:
    """A journal of 4 records, backed up and restored, then 2 more records: the restore's floor."""
    h = Harness(tmp_path / "journal", segment_bytes=400, signing_key=KEY, gateway_id="gw-test")
    _append(h, 4)
    backup(str(h.path), str(tmp_path / "backup"))
    h.close()
    target = tmp_path / "restored"
    restore(str(tmp_path / "backup"), str(target), signing_key=KEY, gateway_id="gw-test", now=lambda: NOW)
    again = Harness(target, signing_key=KEY, gateway_id="gw-test")
    _append(again, 2, start=10)
    return again, seq_floor(4, NOW)


def _engine(h: Harness, resume_after: int, jumps: SeqJumps | None) -> ForwardingEngine:
    return ForwardingEngine(
        journal=h.journal,
        clock=h.clock,
        settings=config.parse({"cloud": {"url": "http://cloud.example/events"}}).cloud,
        sink=NoSink(),
        resume_after=resume_after,
        skipped=jumps.skipped if jumps is not None else None,
    )


def test_the_backlog_after_a_restore_counts_the_records_not_the_jump(tmp_path: Path) -> None:
    """Behind a restore's seq jump, the backlog is the records waiting, not ~10^15 seqs no record has."""
    h, floor = _restored_journal(tmp_path)
    assert h.journal.committed_seq == floor + 2
    jumps = read_jumps(h.path)
    assert jumps == SeqJumps(((4, floor),))
    # Forwarded through the backup's end: the restore record and the 2 after it wait.
    assert _engine(h, 4, jumps).backlog == 3
    # Forwarded through seq 2: seqs 3 and 4 as well.
    assert _engine(h, 2, jumps).backlog == 5
    # Past the jump, nothing is skipped any more.
    assert _engine(h, floor, jumps).backlog == 2
    assert _engine(h, floor + 2, jumps).backlog == 0
    # Without the jumps it was the seq distance (what the metric used to show).
    assert _engine(h, 4, None).backlog == floor + 2 - 4
    h.close()


def test_a_journal_never_restored_has_no_jumps(tmp_path: Path) -> None:
    """A journal that was never restored skips nothing: the backlog is last seq minus done seq."""
    h = Harness(tmp_path / "journal", segment_bytes=400, signing_key=KEY, gateway_id="gw-test")
    _append(h, 5)
    jumps = read_jumps(h.path)
    assert jumps == SeqJumps()
    assert _engine(h, 1, jumps).backlog == 4
    h.close()


def test_skipped_counts_only_the_seqs_inside_the_range() -> None:
    """`skipped(after, through)` counts the skipped seqs in (after, through], over several jumps."""
    jumps = SeqJumps(((4, 100), (150, 1000)))
    assert jumps.skipped(0, 4) == 0
    assert jumps.skipped(0, 100) == 95  # 5..99
    assert jumps.skipped(10, 50) == 40  # 11..50
    assert jumps.skipped(99, 200) == 50  # 151..200
    assert jumps.skipped(0, 2000) == 95 + 849
    assert jumps.skipped(1000, 2000) == 0

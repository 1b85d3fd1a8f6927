"""
Damage found when the journal opens, or by the start-up read: set aside alone, or quarantined.

Damage that an intact record follows, where the chain resumes, is set aside
alone: the lines are saved, a ``recovery`` record signed with the gateway's
key says what was lost, and the lines become a hole. Other damage gets a
``quarantine`` record and stays for ``verify`` to report. Both are journaled
through the writer's blocking start-up append, before the reactor runs.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from attrs import evolve
from nacl.signing import SigningKey
from twisted.logger import Logger

from gateway.journal.damage import Damage
from gateway.journal.kinds import QUARANTINE_RECORD, RECOVERY_RECORD
from gateway.journal.record import GENESIS_CHAIN, BadLine, Record, check_line
from gateway.journal.recovery import (
    Quarantine,
    SetAside,
    fill_hole,
    find_recovery,
    is_hole,
    locate_damage,
    save_damaged,
)
from gateway.journal.segments import Segment, iter_lines, list_segments, read_last_line

__all__ = ["AppendNow", "StartupDamage", "state_before"]

# Logged under the writer's name, as before this part moved out of it: operators filter on it.
_log = Logger(namespace="gateway.journal.writer")

AppendNow = Callable[[str, str, str, str, object], Record]
"""The writer's blocking append (kind, park, code, opr, body), synced before it returns."""


def state_before(segments: list[Segment], index: int, offset: int) -> tuple[int, bytes | None] | None:
    """
    The (seq, chain) of the record just before ``offset`` of ``segments[index]``, as its line says.

    For damage found in an older segment: the chain resumes after it from
    there (``verify`` checks that line in its turn). None when the line before
    is damage itself.
    """
    segment = segments[index]
    line: bytes | None = None
    if offset == 0:
        if index == 0:
            return (0, GENESIS_CHAIN) if segment.first_seq == 1 else (segment.first_seq - 1, None)
        line = read_last_line(segments[index - 1].path)
    else:
        for line_offset, each in iter_lines(segment.path):
            if line_offset >= offset:
                break
            line = each
    if line is None or is_hole(line):
        return None
    try:
        return check_line(line, None, None)
    except BadLine:
        return None


class StartupDamage:
    """
    The damage a journal found since it was opened, and the records that set it aside.

    Owned by :class:`gateway.journal.writer.Journal`, which hands it its
    directory, its fsync and its blocking append.
    """

    def __init__(
        self,
        *,
        directory: str,
        directory_fd: int,
        os_fsync: Callable[[int], None],
        append_now: AppendNow,
        signing_key: SigningKey | None = None,
        gateway_id: str = "",
    ) -> None:
        self._directory = directory
        self._directory_fd = directory_fd
        self._os_fsync = os_fsync
        self._append_now = append_now
        self._signing_key = signing_key
        self._gateway_id = gateway_id
        self.quarantined: list[Quarantine] = []
        """Damage found since the journal was opened, in the order found."""

    def set_aside(self, found: list[Damage]) -> list[Record]:
        """
        Set aside each damaged line found at start-up; returns the records that say so.

        For a start-up read that skips damage (``read_records_skipping``,
        ``scan_headers``), so the gateway starts and serves instead of failing
        on every start. Damage followed by an intact record the chain resumes
        at is set aside alone, with a signed ``recovery`` record (as recovery
        does in the last segment); other damage gets a ``quarantine`` record
        and stays for ``verify`` to report. Each is also listed in
        :attr:`quarantined` and logged as critical. Blocks (appends and syncs
        at once): call it before the reactor runs.
        """
        records: list[Record] = []
        done: list[tuple[str, int, int]] = []  # (segment, start, end) set aside here
        for damage in found:
            if any(name == damage.segment and start <= damage.offset < end for name, start, end in done):
                continue  # a further line of damage set aside with the one before it
            located = self._locate(damage)
            if located is not None:
                record = self.set_aside_damage(located)
                done.append((located.segment, located.offset, located.offset + located.length))
                if record is not None:
                    records.append(record)
                continue
            quarantine = Quarantine(damage.segment, damage.offset, damage.seq, damage.reason, None, "")
            records.append(self.quarantine(quarantine))
        return records

    def _locate(self, damage: Damage) -> SetAside | None:
        """The damage a start-up read found, as lines to set aside, when the chain resumes after them."""
        segments = list_segments(self._directory)
        index = next((i for i, s in enumerate(segments) if s.name == damage.segment), None)
        if index is None:
            return None
        before = state_before(segments, index, damage.offset)
        if before is None:
            return None
        return locate_damage(segments, index, damage.offset, before, damage.reason)

    def set_aside_damage(self, damage: SetAside) -> Record | None:
        """
        Set aside damaged lines: save them, journal a signed ``recovery`` record, then make them a hole.

        In that order, each step synced: a crash before the hole is made
        leaves the record, which the next start finds (:func:`find_recovery`),
        so no second record is journaled for the same damage. Returns the
        record, or None when it was journaled before.
        """
        path = os.path.join(self._directory, damage.segment)
        record: Record | None = None
        existing = find_recovery(self._directory, damage.segment, damage.offset)
        if (
            existing is None
            or not isinstance(existing.body, dict)
            or existing.body.get("digest") != damage.digest
        ):
            saved_as = save_damaged(
                Segment(0, damage.segment, path), damage, self._os_fsync, self._directory_fd
            )
            damage = evolve(damage, saved_as=saved_as)
            lost = damage.lost
            _log.critical(
                "journal: damaged record in segment {segment} at offset {offset} ({lost}): {reason}; "
                "set aside alone ({length} bytes, kept in {saved_as}); the records after it stay live",
                segment=damage.segment,
                offset=damage.offset,
                lost=f"seqs {lost[0]}-{lost[1]} lost" if lost else "no seq lost",
                reason=damage.detail,
                length=damage.length,
                saved_as=saved_as,
            )
            if self._signing_key is None:
                _log.warn("journal: no signing key: the recovery record is not signed, verify will refuse it")
            record = self._append_now(
                RECOVERY_RECORD, "", "", "", damage.body(self._gateway_id, self._signing_key)
            )
        fill_hole(path, damage.offset, damage.length, self._os_fsync)
        lost = damage.lost
        self.quarantined.append(
            Quarantine(
                damage.segment,
                damage.offset,
                lost[0] if lost else None,
                f"set aside alone: {damage.detail}",
                lost[1] if lost else None,
                damage.saved_as,
            )
        )
        return record

    def note_quarantined(self, quarantine: Quarantine) -> None:
        """List in :attr:`quarantined` damage journaled before (read back at start-up)."""
        self.quarantined.append(quarantine)

    def quarantine(self, quarantine: Quarantine) -> Record:
        """Journal a ``quarantine`` record for damage that stays in place (``verify`` reports it)."""
        _log.critical(
            "journal: damaged record in segment {segment} at offset {offset} (seq {seq}): {reason}; "
            "set aside as quarantined, the gateway goes on (cpmictl log verify; restore from a backup)",
            segment=quarantine.segment,
            offset=quarantine.offset,
            seq=quarantine.seq,
            reason=quarantine.reason,
        )
        self.quarantined.append(quarantine)
        return self._append_now(QUARANTINE_RECORD, "", "", "", quarantine.as_body())

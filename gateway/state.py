"""
What the gateway rebuilds from its journal at start-up, and the checkpoints that make that fast.

The journal is the only storage (CONTRACT §7), so a starting gateway reads back:
the tokens in force (`token` records, less those of `token-revoked` ones), each park's total spaces (its last
`parkEnv`), the sync entries not yet done (`sync` without a later
`sync-done`), how far forwarding got (`forwarded` and `rejected`), the damage
set aside (`quarantine`), and the last hour's stored requests and their answers
for the repeat rule (B.2.3.6).

All but the last fit in a small :class:`StartState`. A :class:`Checkpointer`
keeps one up to date from the records as they become durable and journals it
as a `checkpoint` record every so many records and when the gateway stops. At
start-up (:func:`restore_at_start`) the last checkpoint is found by reading the
journal from its end, and only what follows it, and the last hour for repeats,
is read; the headers of records are enough for most of them, so bodies such as
images are not decoded. A journal without a checkpoint is read whole, the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from attrs import frozen
from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.forwarding.progress import Progress
from gateway.interfaces import JournalAppend
from gateway.journal.kinds import (
    ANSWER_RECORD,
    CHECKPOINT_RECORD,
    FORWARDED_RECORD,
    LEGACY_RECORD,
    QUARANTINE_RECORD,
    REJECTED_RECORD,
    SYNC_DONE_RECORD,
    SYNC_RECORD,
    TOKEN_RECORD,
    TOKEN_REVOKED_RECORD,
    UPLINK_RECORD,
)
from gateway.journal.reader import Damage
from gateway.journal.record import BadLine, Record, format_ts
from gateway.journal.recovery import Quarantine
from gateway.journal.scan import find_last, first_seq_since, scan_headers
from gateway.journal.writer import Journal
from gateway.lots.answers import OK, Answer
from gateway.lots.parks import ParkTotals, park_total
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.protocol.results import Result
from gateway.protocol.times import rfc3339_seconds

__all__ = [
    "Checkpointer",
    "Restored",
    "StartState",
    "SyncRestorer",
    "rebuild",
    "restore_at_start",
]

CHECKPOINT_VERSION = 1

log = Logger()

# The kinds whose bodies the state needs; `uplink` only for parkEnv.
_STATE_KINDS = frozenset(
    (
        TOKEN_RECORD,
        TOKEN_REVOKED_RECORD,
        SYNC_RECORD,
        SYNC_DONE_RECORD,
        FORWARDED_RECORD,
        REJECTED_RECORD,
        QUARANTINE_RECORD,
    )
)


class SyncRestorer(Protocol):
    """The sync queue's start-up side (`gateway.lots.sync.SyncQueue.restore`)."""

    def restore(self, record: Any) -> None:
        """Replay one `sync` or `sync-done` record."""


def _needs_body(kind: str, code: str) -> bool:
    return kind in _STATE_KINDS or (kind == UPLINK_RECORD and code == "parkEnv")


class StartState:
    """
    Everything start-up rebuilds but repeats, as of the record ``through``.

    Fed records in seq order with :meth:`observe`; written into and read from
    a checkpoint's body with :meth:`body` and :meth:`from_body`.
    """

    def __init__(self) -> None:
        self.through = 0
        self.tokens: dict[str, dict[str, Any]] = {}
        """The body of the `token` record in force, by account."""
        self.totals: dict[str, int] = {}
        self.sync: dict[int, dict[str, Any]] = {}
        """The `sync` records not done yet, by seq: ts, park, code, opr, body."""
        self.forwarded = 0
        self.forwarded_by: dict[str, int] = {}
        """How far each [[forward]] got, by its progress name (the main sink's is `forwarded`)."""
        self.quarantined: list[dict[str, Any]] = []
        """The bodies of the `quarantine` records."""

    def observe(self, record: Record) -> None:
        """Take one record (the next in seq order) into the state."""
        self.through = record.seq
        kind = record.kind
        body = record.body
        if kind == UPLINK_RECORD:
            if record.code == "parkEnv":
                total = park_total(body)
                if total is not None:
                    self.totals[record.park] = total
        elif kind == TOKEN_RECORD:
            if isinstance(body, dict):
                self.tokens[str(body.get("user"))] = body
        elif kind == TOKEN_REVOKED_RECORD:
            if isinstance(body, dict):
                self.tokens.pop(str(body.get("user")), None)
        elif kind == SYNC_RECORD:
            self.sync[record.seq] = {
                "ts": record.ts,
                "park": record.park,
                "code": record.code,
                "opr": record.opr,
                "body": body,
            }
        elif kind == SYNC_DONE_RECORD:
            done = body.get("seq") if isinstance(body, dict) else None
            if isinstance(done, int):
                self.sync.pop(done, None)
        elif kind == FORWARDED_RECORD or kind == REJECTED_RECORD:
            # The main sink's progress: another engine's records name their sink.
            through = body.get("through") if isinstance(body, dict) else None
            if type(through) is int:
                sink = body.get("sink") if isinstance(body, dict) else None
                if sink is None:
                    if through > self.forwarded:
                        self.forwarded = through
                elif isinstance(sink, str) and through > self.forwarded_by.get(sink, 0):
                    self.forwarded_by[sink] = through
        elif kind == QUARANTINE_RECORD:
            if isinstance(body, dict):
                self.quarantined.append(body)

    def body(self, now: float) -> dict[str, Any]:
        """The body of a checkpoint record; tokens that expired by ``now`` are left out."""
        tokens = []
        for body in self.tokens.values():
            try:
                expired = rfc3339_seconds(str(body["expires"])) <= now
            except (KeyError, ValueError):
                expired = True
            if not expired:
                tokens.append(body)
        return {
            "version": CHECKPOINT_VERSION,
            "through": self.through,
            "tokens": tokens,
            "totals": dict(self.totals),
            "sync": [{"seq": seq, **entry} for seq, entry in self.sync.items()],
            "forwarded": self.forwarded,
            "forwardedBy": dict(self.forwarded_by),
            "quarantined": list(self.quarantined),
        }

    @classmethod
    def from_body(cls, body: object) -> StartState:
        """The state a checkpoint's body holds; ``ValueError`` names what is wrong with it."""
        if not isinstance(body, dict) or body.get("version") != CHECKPOINT_VERSION:
            raise ValueError(f"not a version {CHECKPOINT_VERSION} checkpoint")
        state = cls()
        try:
            state.through = _int(body["through"], "through")
            state.forwarded = _int(body["forwarded"], "forwarded")
            # Written since [[forward]]: an older checkpoint has none.
            for sink, through in body.get("forwardedBy", {}).items():
                state.forwarded_by[str(sink)] = _int(through, f"forwardedBy.{sink}")
            for token in body["tokens"]:
                if not isinstance(token, dict) or not isinstance(token.get("user"), str):
                    raise ValueError("tokens: an entry without user")
                state.tokens[token["user"]] = token
            for park, total in body["totals"].items():
                state.totals[str(park)] = _int(total, f"totals.{park}")
            for entry in body["sync"]:
                seq = _int(entry["seq"], "sync.seq")
                state.sync[seq] = {key: entry[key] for key in ("ts", "park", "code", "opr", "body")}
            state.quarantined = [q for q in body["quarantined"] if isinstance(q, dict)]
        except (KeyError, TypeError, AttributeError) as e:
            raise ValueError(f"malformed checkpoint: {e!r}") from None
        return state

    def apply(
        self,
        *,
        sessions: Sessions,
        totals: ParkTotals,
        sync: SyncRestorer | None,
        progress: Progress | None,
        forwards: Iterable[Progress] = (),
    ) -> None:
        """Put the state into the gateway's parts (``forwards``: the [[forward]] engines' progress)."""
        for token in self.tokens.values():
            try:
                sessions.install(token)
            except (KeyError, ValueError) as e:
                log.warn("token record of {user} not usable: {error}", user=token.get("user"), error=e)
        for park, total in self.totals.items():
            totals.set(park, total)
        if sync is not None:
            for seq, entry in sorted(self.sync.items()):
                sync.restore(
                    Record(
                        seq,
                        entry["ts"],
                        SYNC_RECORD,
                        entry["park"],
                        entry["code"],
                        entry["opr"],
                        entry["body"],
                        "",
                    )
                )
        if progress is not None and self.forwarded > progress.through:
            progress.through = self.forwarded
        for each in forwards:
            through = self.forwarded_by.get(each.sink, 0)
            if through > each.through:
                each.through = through


def _int(value: object, name: str) -> int:
    if type(value) is not int:
        raise ValueError(f"{name} is not an integer")
    return value


def _note_repeat(repeats: Repeats, record: Record | None, kind: str, park: str, opr: str, ts: str) -> None:
    """Remember a stored request, or the answer it got, for the repeat rule."""
    if kind == UPLINK_RECORD or kind == LEGACY_RECORD:
        repeats.restore(park, opr, rfc3339_seconds(ts), OK)
    elif kind == ANSWER_RECORD and record is not None:
        body = record.body if isinstance(record.body, dict) else {}
        result = Result.from_code(str(body.get("resultCode", ""))) or Result.FAILED
        if result is not Result.FAILED:  # failures are not kept for repeats: see uplink.py
            answer = Answer(result, str(body.get("resultMessage", "")), body.get("data", {}))
            repeats.restore(park, opr, rfc3339_seconds(ts), answer)


def rebuild(
    records: Iterable[Record],
    sessions: Sessions,
    repeats: Repeats,
    totals: ParkTotals,
    sync: SyncRestorer | None = None,
    progress: Progress | None = None,
) -> int:
    """Replay ``records`` (a whole journal) into the parts; returns how many were read."""
    state = StartState()
    count = 0
    for record in records:
        count += 1
        state.observe(record)
        _note_repeat(repeats, record, record.kind, record.park, record.opr, record.ts)
    state.apply(sessions=sessions, totals=totals, sync=sync, progress=progress)
    return count


@frozen
class Restored:
    """What :func:`restore_at_start` did: the state, the checkpoint it began from, what it read."""

    state: StartState
    checkpoint: int | None
    """The seq of the checkpoint record used, or None (the journal was read whole)."""
    from_seq: int
    records: int


def restore_at_start(
    journal: Journal,
    *,
    now: float,
    sessions: Sessions,
    repeats: Repeats,
    totals: ParkTotals,
    sync: SyncRestorer | None = None,
    progress: Progress | None = None,
    forwards: Iterable[Progress] = (),
    repeat_window: float = 3600.0,
) -> Restored:
    """
    Rebuild the parts from the last checkpoint and the records after it (blocks; before the reactor runs).

    Damage found on the way is set aside as by :meth:`Journal.set_aside` (once:
    damage a checkpoint already names is not journaled again), and the
    quarantines the state knows are shown again in :attr:`Journal.quarantined`.
    """
    path = journal.path
    state = StartState()
    checkpoint = find_last(path, CHECKPOINT_RECORD)
    used: int | None = None
    if checkpoint is not None:
        try:
            state = StartState.from_body(checkpoint.body)
            used = checkpoint.seq
        except ValueError as e:
            log.warn(
                "journal: checkpoint {seq} not usable ({error}); reading the whole journal",
                seq=checkpoint.seq,
                error=e,
            )
    window_ts = format_ts(now - repeat_window)
    from_seq = min(state.through + 1, first_seq_since(path, window_ts))
    found: list[Damage] = []
    count = 0
    for header in scan_headers(path, found.append, from_seq):
        count += 1
        kind = header.kind
        record: Record | None = None
        newer = header.seq > state.through
        if (newer and _needs_body(kind, header.code)) or (kind == ANSWER_RECORD and header.ts >= window_ts):
            try:
                record = header.record()
            except BadLine as e:
                found.append(Damage(header.segment, header.offset, header.seq, e.args[0]))
                continue
        if newer:
            if record is not None:
                state.observe(record)
            else:
                state.through = header.seq
        if header.ts >= window_ts:
            _note_repeat(repeats, record, kind, header.park, header.opr, header.ts)
    # Recovery may have journaled (and listed) one already, which the scan read back.
    known = {(q.segment, q.offset) for q in journal.quarantined}
    for body in state.quarantined:
        quarantine = Quarantine.from_body(body)
        if (quarantine.segment, quarantine.offset) not in known:
            known.add((quarantine.segment, quarantine.offset))
            journal.note_quarantined(quarantine)
    for set_aside in journal.set_aside([d for d in found if (d.segment, d.offset) not in known]):
        state.observe(set_aside)
    state.apply(sessions=sessions, totals=totals, sync=sync, progress=progress, forwards=forwards)
    return Restored(state, used, from_seq, count)


class CheckpointJournal(JournalAppend, Protocol):
    """What the checkpointer needs of :class:`gateway.journal.writer.Journal`."""

    @property
    def commit_observers(self) -> list[Callable[[list[Record]], None]]: ...


class Checkpointer(Service):
    """
    Keeps a :class:`StartState` up to date from durable records and journals it now and then.

    A checkpoint is appended after every ``records`` records and when the
    gateway stops (if anything happened since the last). :attr:`floor` is the
    first seq that start-up needs to read, which retention must keep.
    """

    def __init__(
        self, *, journal: CheckpointJournal, state: StartState, clock: IReactorTime, records: int
    ) -> None:
        self._journal = journal
        self._state = state
        self._clock = clock
        self._records = records
        self._since = 0
        self._writing = False
        self._running = False
        self._checkpointed = state.through

    @property
    def floor(self) -> int:
        """The first seq start-up reads after the last checkpoint journaled (or the state given)."""
        return self._checkpointed + 1

    def start(self) -> None:
        """Follow the journal's commits."""
        if not self._running:
            self._running = True
            self._journal.commit_observers.append(self._committed)

    def stop(self) -> Deferred[None] | None:
        """Stop following and checkpoint what happened since the last checkpoint."""
        if not self._running:
            return None
        self._running = False
        self._journal.commit_observers.remove(self._committed)
        if self._state.through == self._checkpointed:
            return None
        return self.checkpoint()

    def checkpoint(self) -> Deferred[None]:
        """Append a checkpoint of the state now; fires once it is durable (or failed, logged)."""
        self._writing = True
        self._since = 0
        body = self._state.body(self._clock.seconds())
        through = body["through"]
        d = self._journal.append(CHECKPOINT_RECORD, "", "", "", body)

        def written(record: Record) -> None:
            self._checkpointed = through

        def not_written(failure: Failure) -> None:
            log.warn("journal: could not append a checkpoint: {error}", error=failure.getErrorMessage())

        def done(_: object) -> None:
            self._writing = False

        return d.addCallbacks(written, not_written).addBoth(done)

    def startService(self) -> None:
        super().startService()
        self.start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self.stop()

    def _committed(self, records: list[Record]) -> None:
        state = self._state
        for record in records:
            if record.kind != CHECKPOINT_RECORD:
                state.observe(record)
                self._since += 1
        if self._since >= self._records and not self._writing:
            self.checkpoint()

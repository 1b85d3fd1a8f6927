"""Rebuilding the lot side's state from the journal at start-up (CONTRACT §1).

Tokens come from `token` records, repeat answers from the last hour's stored
requests, each park's total spaces from its last `parkEnv`, and the sync entries not yet
done from `sync` and `sync-done` records.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from gateway.lots.answers import OK, Answer
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import TOKEN_RECORD, Sessions
from gateway.lots.sync import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.lots.uplink import ANSWER_RECORD, UPLINK_RECORD
from gateway.protocol.results import Result
from gateway.protocol.times import rfc3339_seconds


class SyncRestorer(Protocol):
    """The sync queue's start-up side (`gateway.lots.sync.SyncQueue.restore`)."""

    def restore(self, record: Any) -> None:
        """Replay one `sync` or `sync-done` record."""


def rebuild(
    records: Iterable[Any],
    sessions: Sessions,
    repeats: Repeats,
    totals: ParkTotals,
    sync: SyncRestorer | None = None,
    others: Mapping[str, Callable[[Any], None]] | None = None,
) -> int:
    """Replay `records` into the state; returns how many were read.

    `others` maps further record kinds to what replays them (the forwarder's
    progress), so the journal is read once for every part.
    """
    others = others or {}
    count = 0
    for record in records:
        count += 1
        kind = record.kind
        if kind == UPLINK_RECORD:
            repeats.restore(record.park, record.opr, rfc3339_seconds(record.ts), OK)
            if record.code == "parkEnv":
                totals.observe(record.park, record.body)
        elif kind == ANSWER_RECORD:
            body = record.body if isinstance(record.body, dict) else {}
            result = Result.from_code(str(body.get("resultCode", ""))) or Result.FAILED
            if result is not Result.FAILED:  # failures are not kept for repeats: see uplink.py
                answer = Answer(result, str(body.get("resultMessage", "")), body.get("data", {}))
                repeats.restore(record.park, record.opr, rfc3339_seconds(record.ts), answer)
        elif kind == TOKEN_RECORD:
            sessions.install(record.body)
        elif sync is not None and (kind == SYNC_RECORD or kind == SYNC_DONE_RECORD):
            sync.restore(record)
        elif kind in others:
            others[kind](record)
    return count

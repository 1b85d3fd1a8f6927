"""ClusterSync in memory (no nats-server): what it tells the metrics of the entries it holds."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock

from gateway.cluster.sync import ClusterSync
from gateway.interfaces import LotReply, NotConnected, Record
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from tests.lots.harness import MemoryJournal


class Unconnected:
    """A NATS connection that never comes up: nothing is published."""

    def __init__(self) -> None:
        self.state = "connecting"
        self.state_observers: list[Callable[[str], None]] = []


class NoLots:
    """No lot is connected here."""

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        return fail(NotConnected(park))


def sync_record(seq: int, park: str) -> Record:
    body = {"client": "cloud", "data": {"carNum": f"京A{seq}"}, "expires": "2030-01-01T00:00:00Z"}
    return Record(seq, "2026-01-01T00:00:00Z", SYNC_RECORD, park, "blacklist", f"opr-{seq}", body, "")


def done_record(seq: int, of: Record) -> Record:
    body = {"seq": of.seq, "outcome": "published"}
    return Record(seq, "2026-01-01T00:00:00Z", SYNC_DONE_RECORD, of.park, of.code, of.opr, body, "")


def unconnected_sync() -> ClusterSync:
    """A ClusterSync whose NATS connection never comes up: it holds what it restores, publishing nothing."""
    clock = Clock()
    connection: Any = Unconnected()
    return ClusterSync(
        connection=connection,
        lots=NoLots(),
        journal=MemoryJournal(clock),
        clock=clock,
        prefix="cpmi",
        gateway_id="gw-test",
    )


def test_depths_count_the_outbox_per_lot_in_one_pass() -> None:
    """depths() gives pending() of each lot with entries not yet published from here; lots with none
    (all published, or never any) are left out."""
    sync = unconnected_sync()
    assert sync.depths() == {}
    first, second, third = sync_record(1, "P001"), sync_record(2, "P001"), sync_record(3, "P003")
    for record in (
        first,
        second,
        third,
        sync_record(4, "P002"),
        done_record(5, first),
        done_record(6, third),
    ):
        sync.restore(record)
    assert sync.depths() == {"P001": 1, "P002": 1}
    assert {park: sync.pending(park) for park in ("P001", "P002", "P003")} == {
        "P001": 1,
        "P002": 1,
        "P003": 0,
    }
    assert sum(sync.depths().values()) == sync.pending_total()


class Unwalkable(dict[int, Any]):
    """An outbox that refuses to be walked: what is asked of every lot must not walk it."""

    def __iter__(self) -> Any:
        raise AssertionError("the outbox was walked")

    def values(self) -> Any:
        raise AssertionError("the outbox was walked")

    def items(self) -> Any:
        raise AssertionError("the outbox was walked")


def test_pending_and_depths_are_counted_not_walked_and_a_record_seen_twice_counts_once() -> None:
    """pending(park), asked of every lot by /v1/parks and the status page, and depths() read counts
    kept as the outbox changes: with 3,000 entries and 1,000 lots, no lot's answer walks the outbox."""
    sync = unconnected_sync()
    records = [sync_record(seq, f"P{seq % 1000:04d}") for seq in range(1, 3001)]
    for record in records:
        sync.restore(record)
    sync.restore(records[0])  # the same record again: still one entry
    for k, record in enumerate(records[:500], start=3001):
        sync.restore(done_record(k, record))
    sync.restore(done_record(4000, sync_record(99_999, "P0001")))  # a done for no entry held
    expected: dict[str, int] = {}
    for record in records[500:]:
        expected[record.park] = expected.get(record.park, 0) + 1
    sync._outbox = Unwalkable(sync._outbox)  # type: ignore[assignment]
    assert {f"P{k:04d}": sync.pending(f"P{k:04d}") for k in range(1000)} == {
        f"P{k:04d}": expected.get(f"P{k:04d}", 0) for k in range(1000)
    }
    assert sync.depths() == expected and sum(expected.values()) == 2500 == sync.pending_total()

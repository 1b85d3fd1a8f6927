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


def test_depths_count_the_outbox_per_lot_in_one_pass() -> None:
    """depths() gives pending() of each lot with entries not yet published from here; lots with none
    (all published, or never any) are left out."""
    clock = Clock()
    connection: Any = Unconnected()
    sync = ClusterSync(
        connection=connection,
        lots=NoLots(),
        journal=MemoryJournal(clock),
        clock=clock,
        prefix="cpmi",
        gateway_id="gw-test",
    )
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

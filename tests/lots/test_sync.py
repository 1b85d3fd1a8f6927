"""Sync delivery: journaled entries delivered per lot in order, retried, expired, restored."""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.sync import SyncQueue
from gateway.state import rebuild
from tests.lots.harness import ZONE, MemoryJournal, fired, lot_entry, result_of

START = 1_795_000_000.0
OK = LotReply("0000", "操作成功", {})


class FakeLots:
    """The downlink side: each command waits until the test answers it."""

    def __init__(self) -> None:
        self.connected: set[str] = set()
        self.asked: list[tuple[str, str, object, Deferred[LotReply]]] = []
        self.oprs: list[str] = []

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        self.oprs.append(opr)
        if park not in self.connected:
            raise NotConnected(park)
        waiting: Deferred[LotReply] = Deferred()
        self.asked.append((park, code, data, waiting))
        return waiting

    def state(self, park: str) -> LotState:
        connected = park in self.connected
        return LotState(park, connected, None, None, "")

    def answer(self, reply: LotReply | Exception = OK) -> object:
        """Answer the oldest unanswered command; return its data."""
        for _, _, data, waiting in self.asked:
            if not waiting.called:
                if isinstance(reply, Exception):
                    waiting.errback(reply)
                else:
                    waiting.callback(reply)
                return data
        raise AssertionError("no command waits for an answer")

    def waiting(self) -> list[object]:
        """The data of the commands not answered yet."""
        return [data for _, _, data, waiting in self.asked if not waiting.called]


class World:
    """A SyncQueue on a Clock, a MemoryJournal and FakeLots."""

    def __init__(self, ttl: float = 3600.0, retry: float = 30.0) -> None:
        self.clock = Clock()
        self.clock.advance(START)
        self.journal = MemoryJournal(self.clock)
        self.lots = FakeLots()
        self.ttl = ttl
        self.retry = retry
        self.queue = self.new_queue()

    def new_queue(self) -> SyncQueue:
        return SyncQueue(
            lots=self.lots, journal=self.journal, clock=self.clock, ttl=self.ttl, retry=self.retry
        )

    def enqueue(self, n: int, park: str = "P001") -> int:
        return result_of(self.queue.enqueue(park, "blacklist", {"carNum": f"京A{n}"}, "cloud"))

    def bind(self, park: str = "P001") -> None:
        self.lots.connected.add(park)
        self.queue.lot_bound(park)
        self.clock.advance(0)

    def done(self) -> list[dict[str, Any]]:
        return [r.body for r in self.journal.records if r.kind == SYNC_DONE_RECORD]

    def restart(self) -> None:
        """A new process on the same journal: nothing connected, the queue rebuilt."""
        self.queue.stop()
        self.lots = FakeLots()
        self.queue = self.new_queue()
        rebuild(
            self.journal.replay(), Sessions(self.clock, ZONE), Repeats(self.clock), ParkTotals(), self.queue
        )


def car(n: int) -> dict[str, str]:
    return {"carNum": f"京A{n}"}


def test_enqueue_fires_with_seq_once_durable() -> None:
    """enqueue journals a `sync` record and fires with its seq only once it is durable."""
    w = World()
    w.journal.hold = True
    queued = w.queue.enqueue("P001", "blacklist", car(1), "syncer")
    assert not fired(queued)
    assert w.queue.pending("P001") == 0
    w.journal.release()
    [record] = w.journal.records
    assert result_of(queued) == record.seq
    assert record.kind == SYNC_RECORD and record.park == "P001" and record.code == "blacklist"
    assert record.body["client"] == "syncer" and record.body["data"] == car(1)
    assert record.body["expires"] == "2026-11-18T12:06:40.000Z"  # START + 3600 s, UTC
    assert w.queue.pending("P001") == 1


def test_enqueue_fails_when_not_journaled() -> None:
    """A journal failure fails enqueue; nothing is queued or sent."""
    w = World()
    w.lots.connected.add("P001")
    w.journal.broken = OSError(28, "No space left on device")
    failure = w.queue.enqueue("P001", "blacklist", car(1), "cloud")
    results: list[Any] = []
    failure.addErrback(results.append)
    assert results and results[0].check(OSError)
    assert w.queue.pending("P001") == 0 and w.lots.asked == []


def test_enqueue_refuses_non_sync_codes() -> None:
    """A command-class code is not queued."""
    w = World()
    results: list[Any] = []
    w.queue.enqueue("P001", "gateOpen", {"barCode": "B1"}, "cloud").addErrback(results.append)
    assert results[0].check(ValueError)
    assert w.journal.records == []


def test_delivered_in_order_one_at_a_time_when_connected() -> None:
    """With the lot connected, entries go at once, in seq order, the next only after 0000."""
    w = World()
    w.lots.connected.add("P001")
    seqs = [w.enqueue(n) for n in (1, 2, 3)]
    assert w.lots.waiting() == [car(1)]
    assert w.lots.answer() == car(1)
    assert w.lots.waiting() == [car(2)]
    w.lots.answer()
    w.lots.answer()
    assert [(d["seq"], d["outcome"]) for d in w.done()] == [(s, "delivered") for s in seqs]
    assert w.done()[0]["resultCode"] == "0000" and w.done()[0]["attempts"] == 1
    done = [r for r in w.journal.records if r.kind == SYNC_DONE_RECORD]
    assert done[0].code == "blacklist" and done[0].park == "P001"
    assert w.queue.pending("P001") == 0


def test_first_pending_seq_is_the_oldest_entry_not_done_over_all_lots() -> None:
    """Retention keeps from the oldest pending entry on: it moves once that entry is done."""
    w = World()
    assert w.queue.first_pending_seq() is None
    first, second = w.enqueue(1, "P002"), w.enqueue(2, "P001")
    assert w.queue.first_pending_seq() == first
    w.bind("P002")
    w.lots.answer()
    assert w.queue.first_pending_seq() == second
    w.restart()
    assert w.queue.first_pending_seq() == second


def test_lots_are_independent() -> None:
    """One lot waiting on a reply does not hold another lot's entries."""
    w = World()
    w.lots.connected.update({"P001", "P002"})
    w.enqueue(1, "P001")
    w.enqueue(2, "P002")
    assert w.lots.waiting() == [car(1), car(2)]


def test_queued_while_offline_and_delivered_on_bind() -> None:
    """Entries for a lot without a connection wait; lot_bound delivers them in order."""
    w = World()
    w.enqueue(1)
    w.enqueue(2)
    assert w.lots.asked == [] and w.queue.pending("P001") == 2
    w.lots.connected.add("P001")
    w.queue.lot_bound("P001")
    assert w.lots.asked == []  # not inside the bind itself: in the next turn
    w.clock.advance(0)
    assert w.lots.waiting() == [car(1)]
    w.lots.answer()
    w.lots.answer()
    assert [d["outcome"] for d in w.done()] == ["delivered", "delivered"]


def test_non_0000_is_retried_after_retry() -> None:
    """A reply other than 0000 sends the same entry again after `retry` seconds, not before."""
    w = World(retry=30.0)
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.enqueue(2)
    w.lots.answer(LotReply("9999", "busy", {}))
    assert w.lots.waiting() == []
    w.clock.advance(29)
    assert w.lots.waiting() == []
    w.clock.advance(1)
    assert w.lots.waiting() == [car(1)]
    w.lots.answer()
    assert w.lots.waiting() == [car(2)]
    assert w.done()[0]["attempts"] == 2


def test_deadline_passed_is_retried() -> None:
    """No reply in time is retried like a refusal."""
    w = World(retry=10.0)
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.lots.answer(DeadlinePassed("P001", "blacklist", 300.0))
    w.clock.advance(10)
    assert w.lots.waiting() == [car(1)]


def test_retry_waits_for_the_lot_when_it_left() -> None:
    """A retry falling due while the lot is away sends nothing; the next bind does."""
    w = World(retry=10.0)
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.lots.answer(LotReply("9999", "busy", {}))
    w.lots.connected.discard("P001")
    w.clock.advance(10)
    assert w.lots.waiting() == []
    w.bind()
    assert w.lots.waiting() == [car(1)]


def test_not_connected_stops_until_bind() -> None:
    """A lot lost while an entry is in flight: no retry timer; resumed on the next bind."""
    w = World(retry=10.0)
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.lots.connected.discard("P001")
    w.lots.answer(NotConnected("P001"))
    w.clock.advance(100)
    assert w.lots.waiting() == [] and w.queue.pending("P001") == 1
    w.bind()
    assert w.lots.waiting() == [car(1)]
    w.lots.answer()
    assert w.queue.pending("P001") == 0


def test_expired_entry_is_journaled_and_skipped_when_about_to_be_sent() -> None:
    """An entry whose TTL passed while its lot was away is journaled `expired`, the next sent."""
    w = World(ttl=100.0)
    first = w.enqueue(1)
    w.clock.advance(50)
    w.enqueue(2)
    w.clock.advance(60)  # the first one's TTL has passed, not the second's
    assert [(d["seq"], d["outcome"]) for d in w.done()] == [(first, "expired")]
    w.bind()
    assert w.lots.waiting() == [car(2)]


def test_expiry_while_waiting_for_a_retry() -> None:
    """An entry that expires while waiting for its retry is journaled `expired` then, and the next goes."""
    w = World(ttl=100.0, retry=1000.0)
    w.lots.connected.add("P001")
    first = w.enqueue(1)
    w.clock.advance(10)
    w.enqueue(2)
    w.lots.answer(LotReply("9999", "busy", {}))
    w.clock.advance(90)
    assert [(d["seq"], d["outcome"], d["attempts"]) for d in w.done()] == [(first, "expired", 1)]
    assert w.lots.waiting() == [car(2)]


def test_entry_in_flight_is_not_expired_under_the_lot() -> None:
    """A reply that comes after the TTL still counts as delivered."""
    w = World(ttl=100.0)
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.clock.advance(150)
    assert w.done() == []
    w.lots.answer()
    assert [d["outcome"] for d in w.done()] == ["delivered"]


def test_sync_done_not_stored_is_logged_and_delivery_goes_on() -> None:
    """A `sync-done` the journal cannot store does not stop the lane (redelivered after a restart)."""
    w = World()
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.enqueue(2)
    w.journal.broken = OSError(5, "EIO")
    w.lots.answer()
    assert w.lots.waiting() == [car(2)]
    w.journal.broken = None
    w.restart()
    assert w.queue.pending("P001") == 2


def test_restored_across_a_restart() -> None:
    """After a restart the entries not done are pending again, done ones skipped, sent on bind."""
    w = World()
    w.lots.connected.add("P001")
    w.enqueue(1)
    w.enqueue(2)
    w.enqueue(3)
    w.enqueue(4, "P002")
    w.lots.answer()  # 1 delivered, 2 in flight when the process stops
    w.restart()
    assert w.queue.pending("P001") == 2 and w.queue.pending("P002") == 1
    assert w.lots.asked == []
    w.bind()
    assert w.lots.waiting() == [car(2)]
    w.lots.answer()
    w.lots.answer()
    assert [d["outcome"] for d in w.done()] == ["delivered"] * 3
    assert w.queue.pending("P001") == 0


def test_depths_name_only_the_lots_with_entries_not_done() -> None:
    """depths() gives pending() of each lot with entries not done, the one in flight included, after a
    restart too; a lot whose entries are all done (delivered, or done before the restart) is left out."""
    w = World()
    assert w.queue.depths() == {}
    w.lots.connected.update({"P001", "P003"})
    w.enqueue(1)
    w.enqueue(2)
    w.enqueue(3, "P002")
    w.enqueue(4, "P003")
    assert w.queue.depths() == {"P001": 2, "P002": 1, "P003": 1}
    w.lots.answer()  # P001's first delivered, its second in flight
    assert w.queue.depths() == {"P001": 1, "P002": 1, "P003": 1}
    w.lots.answer()  # P003's delivered
    assert w.queue.depths() == {"P001": 1, "P002": 1}
    w.restart()
    assert w.queue.depths() == {"P001": 1, "P002": 1}
    assert sum(w.queue.depths().values()) == w.queue.pending_total()
    w.bind()
    w.lots.answer()
    assert w.queue.depths() == {"P002": 1}


def test_restored_entries_keep_their_expiry() -> None:
    """A restored entry expires at the time journaled with it, not one TTL after the restart."""
    w = World(ttl=100.0)
    seq = w.enqueue(1)
    w.clock.advance(60)
    w.restart()
    w.clock.advance(40)
    assert [(d["seq"], d["outcome"]) for d in w.done()] == [(seq, "expired")]
    assert w.queue.pending("P001") == 0


def test_many_entries_answered_at_once_do_not_recurse() -> None:
    """A lot object that answers synchronously drains a long backlog without deep recursion."""

    class Instant(FakeLots):
        def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
            super().command(park, code, data, opr)
            self.answer()
            return self.asked[-1][3]

    w = World()
    w.lots = Instant()
    w.queue = w.new_queue()
    for n in range(3000):
        w.enqueue(n)
    w.bind()
    assert len(w.done()) == 3000 and w.queue.pending("P001") == 0


# --- through the real downlink -------------------------------------------------


def test_through_the_downlink_after_a_restart() -> None:
    """A restored entry goes to the lot as an ACK once it logs in; its 0000 REPLY completes it."""
    from tests.lots.test_downlink import Gateway

    gateway = Gateway(lots=[lot_entry()])
    queue = SyncQueue(lots=gateway.downlinks, journal=gateway.journal, clock=gateway.clock)
    gateway.downlinks.bound_listeners.append(queue.lot_bound)
    seq = result_of(queue.enqueue("P001", "blacklist", car(1), "cloud"))
    # A new queue on the same journal, as after a restart.
    queue = SyncQueue(lots=gateway.downlinks, journal=gateway.journal, clock=gateway.clock)
    gateway.downlinks.bound_listeners[:] = [queue.lot_bound]
    for record in gateway.journal.replay():
        queue.restore(record)
    assert queue.pending("P001") == 1
    lot = gateway.connect()
    token = lot.login()
    gateway.clock.advance(0)
    [ack] = lot.received()
    assert ack["code"] == "blacklist" and ack["data"] == car(1)
    lot.reply(ack["oprNum"], {}, token, code="blacklist")
    done = [r for r in gateway.journal.records if r.kind == SYNC_DONE_RECORD]
    assert [(r.body["seq"], r.body["outcome"]) for r in done] == [(seq, "delivered")]
    assert queue.pending("P001") == 0


def test_every_attempt_carries_the_oprnum_the_entry_was_journaled_under() -> None:
    """Through the real downlink, the first attempt and its retry both go as the `sync` record's
    oprNum, and the `sync-done` record names it too: the lot can tell a delivery it already applied."""
    from tests.lots.test_downlink import Gateway

    gateway = Gateway(lots=[lot_entry()])
    queue = SyncQueue(lots=gateway.downlinks, journal=gateway.journal, clock=gateway.clock, retry=5)
    gateway.downlinks.bound_listeners.append(queue.lot_bound)
    lot = gateway.connect()
    token = lot.login()
    result_of(queue.enqueue("P001", "blacklist", car(1), "cloud"))
    [record] = [r for r in gateway.journal.records if r.kind == SYNC_RECORD]
    [first] = lot.received()
    lot.reply(first["oprNum"], {}, token, code="blacklist", result="9999")
    gateway.clock.advance(5)
    [second] = lot.received()
    lot.reply(second["oprNum"], {}, token, code="blacklist")
    assert first["oprNum"] == second["oprNum"] == record.opr
    [done] = [r for r in gateway.journal.records if r.kind == SYNC_DONE_RECORD]
    assert done.opr == record.opr and done.body["outcome"] == "delivered"

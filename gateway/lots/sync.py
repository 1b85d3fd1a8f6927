"""Sync delivery (CONTRACT §3): journaled entries delivered to each lot in order.

A sync-class downlink (a blacklist, a price table, a member list) is not sent at
once like a command: the API journals it as a `sync` record and answers with its
seq, and `SyncQueue` delivers it whenever the lot is connected. Per lot the
entries go strictly in seq order, one in flight at a time. An entry is done when
the lot replies `0000` (outcome `delivered`) or when its TTL passes first
(`expired`); either way a `sync-done` record is journaled, which is the event the
cloud is told of. Any other reply, or no reply in time, is retried after `retry`
seconds while the lot stays connected; a lot that goes away is resumed when it
binds again (`lot_bound`).

Delivery is at least once. Every attempt is an ACK with the oprNum the entry
was journaled under, so a reply always names its record (CONTRACT §7) and a
lot can tell a delivery it has already applied (B.2.3.6 from its side); an
entry whose `sync-done` was not stored is delivered again after a restart: a
lot must apply a sync entry's data idempotently (a blacklist entry set twice
is one entry).

At start-up the queue is rebuilt from the journal (`restore`, fed by
`gateway.state`): every `sync` record without a later `sync-done` is
pending again, with the expiry it was journaled with.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from typing import Any, Protocol

from attrs import frozen
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import DeadlinePassed, JournalAppend, LotReply, LotState, NotConnected
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.protocol.catalog import DeliveryClass, lookup
from gateway.protocol.results import Result
from gateway.protocol.times import rfc3339_seconds, utc_rfc3339

__all__ = [
    "DEFAULT_RETRY",
    "DEFAULT_TTL",
    "Journaled",
    "SyncLots",
    "SyncQueue",
    "entry_fields",
    "journal_entry",
]

log = Logger()

DEFAULT_TTL = 86400.0
DEFAULT_RETRY = 30.0


@frozen
class Journaled:
    """A sync entry as the journal holds it: its seq, the interface's code as the catalog spells it,
    and the oprNum it will go to the lot under."""

    seq: int
    code: str
    opr: str


def journal_entry(
    journal: JournalAppend, park: str, code: str, data: object, client: str, expires: float
) -> Deferred[Journaled]:
    """Journal a sync entry for `park`, expiring at `expires` (seconds); fire once it is durable.

    The one way an entry enters either queue (this one and, with [cluster], JetStream's). Fails
    (and nothing is journaled) with ValueError if `code` is not a sync-class downlink, or as the
    journal's append fails.
    """
    interface = lookup(code)
    if interface is None or interface.downlink is not DeliveryClass.SYNC:
        return fail(ValueError(f"{code!r} is not a sync-class downlink"))
    code = interface.code
    opr = uuid.uuid4().hex
    body = {"client": client, "data": data, "expires": utc_rfc3339(expires)}
    durable: Deferred[Any] = maybeDeferred(journal.append, SYNC_RECORD, park, code, opr, body)
    return durable.addCallback(lambda record: Journaled(int(record.seq), code, opr))


def entry_fields(record: Any, body: Mapping[str, Any]) -> tuple[int, str, str, str, object, str]:
    """What a `sync` record holds of its entry, as `journal_entry` wrote it (`body`: the record's body):
    seq, park, code, oprNum, data and client; the expiry is each queue's to read."""
    return (
        int(record.seq),
        record.park,
        record.code,
        record.opr,
        body.get("data"),
        str(body.get("client", "")),
    )


class SyncLots(Protocol):
    """What the queue needs of the downlink side (`gateway.lots.downlink.Downlinks`)."""

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Send to the lot now as oprNum `opr`; fires with its REPLY, or fails NotConnected/DeadlinePassed."""

    def state(self, park: str) -> LotState:
        """Whether the lot is connected now."""


class _Entry:
    """One journaled sync entry not yet done."""

    __slots__ = ("attempts", "client", "code", "data", "expires", "opr", "park", "seq")

    def __init__(
        self, seq: int, park: str, code: str, opr: str, data: object, client: str, expires: float
    ) -> None:
        self.seq = seq
        self.park = park
        self.code = code
        self.opr = opr
        self.data = data
        self.client = client
        self.expires = expires
        self.attempts = 0


class _Lane:
    """One lot's pending entries (in seq order) and what it is waiting on."""

    __slots__ = ("entries", "expiry", "expiry_at", "pumping", "retry", "sending")

    def __init__(self) -> None:
        self.entries: list[_Entry] = []
        self.sending: _Entry | None = None
        self.retry: IDelayedCall | None = None
        self.expiry: IDelayedCall | None = None
        self.expiry_at = 0.0
        self.pumping = False

    def add(self, entry: _Entry) -> None:
        # Durable records arrive in seq order, so this is an append but for races.
        index = len(self.entries)
        while index and self.entries[index - 1].seq > entry.seq:
            index -= 1
        self.entries.insert(index, entry)


class SyncQueue:
    """The sync entries waiting for their lots, and their delivery."""

    def __init__(
        self,
        *,
        lots: SyncLots,
        journal: JournalAppend,
        clock: IReactorTime,
        ttl: float = DEFAULT_TTL,
        retry: float = DEFAULT_RETRY,
    ) -> None:
        if ttl <= 0 or retry <= 0:
            raise ValueError("ttl and retry must be positive")
        self._lots = lots
        self._journal = journal
        self._clock = clock
        self._ttl = ttl
        self._retry = retry
        self._lanes: dict[str, _Lane] = {}
        self._where: dict[int, str] = {}  # seq -> park, for sync-done records at restore

    # --- entering entries ----------------------------------------------

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]:
        """Journal a sync entry for `park`; fire with its seq once durable, then deliver.

        Fails (and nothing is queued) if the journal cannot store it, or with
        ValueError if `code` is not a sync-class downlink.
        """
        expires = self._clock.seconds() + self._ttl

        def stored(entry: Journaled) -> int:
            self._add(_Entry(entry.seq, park, entry.code, entry.opr, data, client, expires))
            self._pump(park)
            return entry.seq

        return journal_entry(self._journal, park, code, data, client, expires).addCallback(stored)

    def restore(self, record: Any) -> None:
        """Replay one journal record at start-up: `sync` adds an entry, `sync-done` removes it.

        Other kinds are ignored. Delivery waits for the lot to bind.
        """
        body = record.body if isinstance(record.body, dict) else {}
        if record.kind == SYNC_RECORD:
            try:
                expires = rfc3339_seconds(str(body["expires"]))
            except (KeyError, ValueError):
                log.warn("sync record {seq} has no valid expires; kept for one TTL", seq=record.seq)
                expires = rfc3339_seconds(record.ts) + self._ttl
            self._add(_Entry(*entry_fields(record, body), expires))
        elif record.kind == SYNC_DONE_RECORD:
            seq = body.get("seq")
            park = self._where.pop(seq, None) if isinstance(seq, int) else None
            lane = self._lanes.get(park) if park is not None else None
            if lane is not None:
                # Done entries are mostly the oldest: found near the front.
                for index, entry in enumerate(lane.entries):
                    if entry.seq == seq:
                        del lane.entries[index]
                        break

    def _add(self, entry: _Entry) -> None:
        lane = self._lanes.get(entry.park)
        if lane is None:
            lane = self._lanes[entry.park] = _Lane()
        lane.add(entry)
        self._where[entry.seq] = entry.park
        # Expiries grow with seq, so the timer is moved only for the first entry of a lane.
        if lane.expiry is None or entry.expires < lane.expiry_at:
            self._arm_expiry(entry.park, lane)

    # --- the lots ------------------------------------------------------

    def lot_bound(self, park: str) -> None:
        """The lot has bound a downlink connection: deliver its pending entries.

        Delivery starts in the next reactor turn, after the downlink has answered
        the login or heartbeat that bound the lot.
        """
        if park in self._lanes:
            self._clock.callLater(0, self._pump, park)

    def pending(self, park: str) -> int:
        """How many entries of `park` are not done yet (the one in flight included)."""
        lane = self._lanes.get(park)
        return len(lane.entries) if lane is not None else 0

    def first_pending_seq(self) -> int | None:
        """The seq of the oldest entry not done yet, over all lots (None: nothing pending)."""
        return min(self._where, default=None)

    def depths(self) -> dict[str, int]:
        """`pending` of each lot that has entries not done yet; lots with none are left out."""
        return {park: len(lane.entries) for park, lane in self._lanes.items() if lane.entries}

    def pending_total(self) -> int:
        """How many entries are not done yet, over all lots."""
        return sum(len(lane.entries) for lane in self._lanes.values())

    def stop(self) -> None:
        """Cancel the retry and expiry timers, as the gateway stops (before the journal closes)."""
        for lane in self._lanes.values():
            for timer in (lane.retry, lane.expiry):
                if timer is not None and timer.active():
                    timer.cancel()
            lane.retry = lane.expiry = None

    # --- delivery ------------------------------------------------------

    def _pump(self, park: str) -> None:
        """Send the lane's next entry if nothing holds it back.

        A loop, not recursion: a lot object that answers at once (a test double,
        a NotConnected) must not take one stack frame per entry.
        """
        lane = self._lanes.get(park)
        if lane is None or lane.pumping:
            return
        lane.pumping = True
        try:
            while lane.entries and lane.sending is None and lane.retry is None:
                if not self._lots.state(park).connected:
                    break
                entry = lane.entries[0]
                if entry.expires <= self._clock.seconds():
                    self._done(lane, entry, {"outcome": "expired", "attempts": entry.attempts})
                    continue
                self._send(lane, entry)
        finally:
            lane.pumping = False
        if not lane.entries and lane.retry is None and lane.sending is None:
            self._drop(park, lane)

    def _send(self, lane: _Lane, entry: _Entry) -> None:
        lane.sending = entry
        entry.attempts += 1

        def replied(reply: LotReply) -> None:
            lane.sending = None
            if reply.result_code == Result.OK.code:
                self._done(
                    lane,
                    entry,
                    {
                        "outcome": "delivered",
                        "attempts": entry.attempts,
                        "resultCode": reply.result_code,
                        "resultMessage": reply.result_message,
                    },
                )
            else:
                log.info(
                    "lot {park} answered sync {seq} ({code}) with {result}; retrying in {retry:g} s",
                    park=entry.park,
                    seq=entry.seq,
                    code=entry.code,
                    result=reply.result_code,
                    retry=self._retry,
                )
                self._retry_later(lane, entry)

        def failed(failure: Failure) -> None:
            lane.sending = None
            if failure.check(NotConnected):
                return  # resumed by lot_bound
            if not failure.check(DeadlinePassed):
                log.failure("sync {seq} to {park} failed; retrying", failure, seq=entry.seq, park=entry.park)
            self._retry_later(lane, entry)

        sent: Deferred[LotReply] = maybeDeferred(
            self._lots.command, entry.park, entry.code, entry.data, entry.opr
        )
        sent.addCallbacks(replied, failed)
        sent.addBoth(self._sent, lane, entry)

    def _sent(self, _: object, lane: _Lane, entry: _Entry) -> None:
        # The expiry timer skipped the entry while it was in flight: watch it again.
        if entry in lane.entries and (lane.expiry is None or entry.expires < lane.expiry_at):
            self._arm_expiry(entry.park, lane)
        self._pump(entry.park)

    def _retry_later(self, lane: _Lane, entry: _Entry) -> None:
        if entry in lane.entries and lane.retry is None:
            lane.retry = self._clock.callLater(self._retry, self._retry_due, entry.park)

    def _retry_due(self, park: str) -> None:
        lane = self._lanes.get(park)
        if lane is not None:
            lane.retry = None
            self._pump(park)

    def _done(self, lane: _Lane, entry: _Entry, outcome: dict[str, object]) -> None:
        """Take `entry` out of its lane and journal its `sync-done` record."""
        if entry in lane.entries:
            lane.entries.remove(entry)
        self._where.pop(entry.seq, None)
        body = {"seq": entry.seq, "client": entry.client, **outcome}
        log.info(
            "sync {seq} ({code}) to {park}: {outcome}",
            seq=entry.seq,
            code=entry.code,
            park=entry.park,
            outcome=outcome["outcome"],
        )

        def not_stored(failure: Failure) -> None:
            # Delivered again after a restart: at least once, see the module docstring.
            log.failure(
                "sync-done for {seq} to {park} not journaled", failure, seq=entry.seq, park=entry.park
            )

        maybeDeferred(
            self._journal.append, SYNC_DONE_RECORD, entry.park, entry.code, entry.opr, body
        ).addErrback(not_stored)

    # --- expiry --------------------------------------------------------

    def _arm_expiry(self, park: str, lane: _Lane) -> None:
        if lane.expiry is not None and lane.expiry.active():
            lane.expiry.cancel()
        lane.expiry = None
        waiting = [entry.expires for entry in lane.entries if entry is not lane.sending]
        if waiting:
            lane.expiry_at = min(waiting)
            delay = max(0.0, lane.expiry_at - self._clock.seconds())
            lane.expiry = self._clock.callLater(delay, self._expire_due, park)

    def _expire_due(self, park: str) -> None:
        """Journal the entries whose TTL passed while they waited (for a lot, or a retry)."""
        lane = self._lanes.get(park)
        if lane is None:
            return
        lane.expiry = None
        now = self._clock.seconds()
        for entry in [e for e in lane.entries if e.expires <= now and e is not lane.sending]:
            was_next = lane.entries[0] is entry
            self._done(lane, entry, {"outcome": "expired", "attempts": entry.attempts})
            if was_next and lane.retry is not None:
                # The entry waiting for its retry is gone: the next one need not wait.
                if lane.retry.active():
                    lane.retry.cancel()
                lane.retry = None
        self._arm_expiry(park, lane)
        self._pump(park)

    def _drop(self, park: str, lane: _Lane) -> None:
        if lane.expiry is not None and lane.expiry.active():
            lane.expiry.cancel()
        if self._lanes.get(park) is lane:
            del self._lanes[park]

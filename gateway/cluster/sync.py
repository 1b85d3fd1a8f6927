"""Sync delivery over JetStream (CONTRACT §9): entries in stream `CPMI_SYNC`, delivered by the lot's holder.

With `[cluster]` on, `ClusterSync` takes the place of the journal-only queue
(`gateway.lots.sync.SyncQueue`) and keeps its promises -- per lot in order, one
entry in flight, done on the lot's `0000` or on its TTL, a `sync-done` record
(the outcome event) either way -- across gateways:

- **In**: the API journals the entry as a `sync` record and answers 202 with its
  seq, as alone; the entry is then published to `{prefix}.sync.{park}.{code}`
  (payload the `data`, headers its oprNum, client, expiry, and `Nats-Msg-Id`
  `{gateway id}-{seq}` so a publish repeated after a crash is stored once). The
  PubAck is journaled as a `sync-done` record with outcome `published` (no event:
  the entry's outcome comes from the gateway that delivers it). Entries not yet
  published wait in an outbox, published in seq order as soon as NATS allows,
  also after a restart (`restore`), and the journal keeps them until then.
- **Out**: each lot has a durable push consumer `sync_{park}` on the stream
  (filter `{prefix}.sync.{park}.>`, explicit ack, one unacknowledged message at
  a time), delivering to `{prefix}.sync-deliver.{park}`. Whichever gateway holds
  the lot subscribes to that subject when it binds and unsubscribes when it
  leaves: the consumer belongs to the lot, not to a gateway, so a lot that moves
  takes its pending entries with it. The stream is a work queue: an entry
  acknowledged is gone.
- Each entry received is sent to the lot as an ACK with its oprNum; on `0000` its
  `sync-done` (`delivered`) is journaled and, once durable, the message
  acknowledged. An entry past its expiry is journaled `expired` and deleted
  without being sent (see below). An entry that is no valid downlink (only the
  cloud's own publishes can be) is journaled `refused`, with the
  `downlink-refused` event, and terminated. Any other reply, or none, is retried after `retry` seconds
  (a delayed NAK); a lot that leaves hands its entry back at once (NAK). While a
  lot takes its time to answer, the message is kept ours with progress acks.

Why a durable consumer per lot rather than one filtered consumer per gateway:
measured in `bench/nats_sync_consumers.py` (docs/nats.md has the figures). One
consumer cannot keep one entry in flight per lot, nor move with a lot.

Delivery is at least once, as alone: a `sync-done` durable but its ack lost
delivers the entry again (its event too).

**Expiry on time**: an entry found past its expiry, by the lot's holder when it
comes up or by the *sweep* for a lot bound nowhere, is claimed by deleting it
from the stream (`STREAM.MSG.DELETE`): the server deletes a message once, and
only the gateway whose delete succeeded journals its `sync-done` "expired" (the
event). So two gateways sweeping the same lot, or a sweep racing a lot that
binds, never journal one expiry twice. (The event cannot dedupe instead: its id
is `{gateway id}-{seq}` of each journal, CONTRACT §6.) The price: a gateway that
dies between the delete and the journal's write loses that one expiry event.

Every `sweep_interval` seconds each gateway takes the next `sweep_lots`
configured lots in turn and, for those whose consumer has no gateway delivering
(not push-bound, nothing in flight) or none yet, looks at up to `sweep_entries`
of their entries: bounded work per sweep, every lot visited once per
`ceil(lots / sweep_lots)` sweeps. The same round finds the lots held here whose
consumer is gone (deleted by hand) and makes it again. At start and after a
reload changes the lots, the consumers of lots no longer configured and not
push-bound are deleted (their entries stay in the stream: a lot configured
again finds them).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, gatherResults, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.runner import StreamRunner
from gateway.cluster.subjects import CLIENT_HEADER, GATEWAY_HEADER, OPR_HEADER, OPR_VALUE, stream_name
from gateway.interfaces import DeadlinePassed, JournalAppend, LotReply, NotConnected
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.lots.sync import Journaled, entry_fields, journal_entry
from gateway.protocol.catalog import DeliveryClass, lookup
from gateway.protocol.jsontext import JSONRefused, loads
from gateway.protocol.results import Result
from gateway.protocol.times import rfc3339_seconds, utc_rfc3339
from gateway.protocol.validation import FieldError, validate

__all__ = [
    "ACK_WAIT",
    "ClusterSync",
    "consumer_name",
    "deliver_subject",
    "sync_subject",
]

log = Logger()


DEFAULT_TTL = 86400.0
DEFAULT_RETRY = 30.0
ACK_WAIT = 60.0
"""Seconds the server waits for an entry's ack before it gives it again (to the lot's next holder)."""
DUPLICATE_WINDOW = 120.0
MAX_CONSUMERS = 1_000_000
"""The stream's consumer limit: one per lot. Left unset, nats-server refuses the 1001st (10026)."""
PUBLISH_BACKOFF_MAX = 30.0
SWEEP_INTERVAL = 15.0
"""Seconds between two sweeps for the expired entries of lots bound nowhere."""
SWEEP_LOTS = 128
"""Lots looked at per sweep (a consumer look-up each)."""
SWEEP_ENTRIES = 16
"""Entries read per lot and sweep, at most."""
_NO_MESSAGE = 10057
"""JetStream's error code for deleting a message that is not (any more) in the stream."""

MSG_ID_HEADER = "Nats-Msg-Id"
EXPIRES_HEADER = "Cpmi-Expires"
SEQ_HEADER = "Cpmi-Seq"

_NAME_SAFE = re.compile(r"[A-Za-z0-9_-]{1,64}")


class SyncLots(Protocol):
    """What delivery needs of the lots (`gateway.dialects.host.LotRouter`)."""

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Send to the lot now as oprNum `opr`; fires with its REPLY, or fails NotConnected/DeadlinePassed."""


def sync_subject(prefix: str, park: str, code: str) -> str:
    """Where a sync entry for `park` is published."""
    return f"{prefix}.sync.{park}.{code}"


def deliver_subject(prefix: str, park: str) -> str:
    """Where the lot's consumer pushes its entries (outside the stream's subjects)."""
    return f"{prefix}.sync-deliver.{park}"


def consumer_name(park: str) -> str:
    """The lot's durable consumer: `sync_{park}`, or a digest when the park code holds other characters."""
    if _NAME_SAFE.fullmatch(park):
        return f"sync_{park}"
    return "sync_" + hashlib.sha256(park.encode("utf-8")).hexdigest()[:32]


def sync_stream(prefix: str) -> str:
    """`CPMI_SYNC` for the prefix `cpmi`."""
    return stream_name(prefix, "SYNC")


class _Outgoing:
    """A journaled entry not yet in the stream."""

    __slots__ = ("client", "code", "data", "expires", "opr", "park", "seq")

    def __init__(
        self, seq: int, park: str, code: str, opr: str, data: object, client: str, expires: str
    ) -> None:
        self.seq = seq
        self.park = park
        self.code = code
        self.opr = opr
        self.data = data
        self.client = client
        self.expires = expires


class _Lot:
    """A lot held here: its subscription and the entry in flight."""

    __slots__ = (
        "attached",
        "attaching",
        "failures",
        "in_flight",
        "next",
        "progress",
        "retry",
        "subscription",
    )

    def __init__(self) -> None:
        self.subscription: Any = None
        # An entry the server gave while one was in flight (it does after an expired one is deleted).
        self.next: Any = None
        self.attaching = False
        self.attached = False
        self.in_flight: Any = None
        self.progress: IDelayedCall | None = None
        self.retry: IDelayedCall | None = None
        self.failures = 0


class ClusterSync:
    """Sync entries through JetStream: published from any gateway, delivered by the lot's holder."""

    def __init__(
        self,
        *,
        connection: StreamRunner,
        lots: SyncLots,
        journal: JournalAppend,
        clock: IReactorTime,
        prefix: str,
        gateway_id: str,
        ttl: float = DEFAULT_TTL,
        retry: float = DEFAULT_RETRY,
        ack_wait: float = ACK_WAIT,
        parks: Callable[[], Iterable[str]] | None = None,
        sweep_interval: float = SWEEP_INTERVAL,
        sweep_lots: int = SWEEP_LOTS,
        sweep_entries: int = SWEEP_ENTRIES,
    ) -> None:
        """`parks()` names the lots configured now (a reload changes them): those the sweep visits.

        Without it the sweep only looks after the consumers of the lots held here.
        """
        if ttl <= 0 or retry <= 0 or ack_wait <= 0 or sweep_interval <= 0:
            raise ValueError("ttl, retry, ack_wait and sweep_interval must be positive")
        if sweep_lots < 1 or sweep_entries < 1:
            raise ValueError("sweep_lots and sweep_entries must be at least 1")
        self._connection = connection
        self._lots = lots
        self._journal = journal
        self._clock = clock
        self._prefix = prefix
        self._gateway_id = gateway_id
        self._ttl = ttl
        self._retry = retry
        self._ack_wait = ack_wait
        self.stream = sync_stream(prefix)
        self._outbox: dict[int, _Outgoing] = {}  # seq -> entry, in seq order
        self._outbox_by_park: dict[str, int] = {}  # park -> its entries in the outbox (pending(), O(1))
        self._publishing = False
        self._publish_failures = 0
        self._publish_timer: IDelayedCall | None = None
        self._stream_ready = False
        self._ensuring = False
        self._lots_held: dict[str, _Lot] = {}
        self._pending: dict[str, int] = {}  # park -> entries in the stream, as last seen
        self._stopped = False
        self._parks = parks
        self._sweep_interval = sweep_interval
        self.sweep_lots = sweep_lots
        self.sweep_entries = sweep_entries
        self._sweep_timer: IDelayedCall | None = None
        self._sweeping = False
        self._sweep_cursor = 0
        self._cleaned: frozenset[str] | None = None  # the lots whose stale consumers were last cleaned
        self.counters = {
            "published": 0,
            "delivered": 0,
            "expired": 0,
            "refused": 0,
            "retried": 0,
            "swept": 0,
            "consumers_deleted": 0,
            "consumers_recreated": 0,
        }
        connection.state_observers.append(self._state_changed)

    # --- the queue's face (gateway.cloud.api.SyncEntries) ----------------

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]:
        """Journal a sync entry; fire with its seq once durable; publish it to the stream.

        Fails (and nothing is queued) if the journal cannot store it, or with
        ValueError if `code` is not a sync-class downlink.
        """
        expires = self._clock.seconds() + self._ttl

        def stored(entry: Journaled) -> int:
            self._hold(_Outgoing(entry.seq, park, entry.code, entry.opr, data, client, utc_rfc3339(expires)))
            self._publish()
            return entry.seq

        return journal_entry(self._journal, park, code, data, client, expires).addCallback(stored)

    def restore(self, record: Any) -> None:
        """At start-up: a `sync` record without its `sync-done` is published (again: JetStream drops
        a duplicate by its `Nats-Msg-Id`)."""
        body = record.body if isinstance(record.body, dict) else {}
        if record.kind == SYNC_RECORD:
            expires = body.get("expires")
            if not isinstance(expires, str):
                expires = utc_rfc3339(rfc3339_seconds(record.ts) + self._ttl)
            self._hold(_Outgoing(*entry_fields(record, body), expires))
        elif record.kind == SYNC_DONE_RECORD:
            done = body.get("seq")
            if isinstance(done, int):
                self._release(done)

    def _hold(self, entry: _Outgoing) -> None:
        """Put `entry` in the outbox (in place of one of its seq, if any) and count it for its lot."""
        replaced = self._outbox.pop(entry.seq, None)
        if replaced is not None:
            self._uncount(replaced.park)
        self._outbox[entry.seq] = entry
        self._outbox_by_park[entry.park] = self._outbox_by_park.get(entry.park, 0) + 1

    def _release(self, seq: int) -> _Outgoing | None:
        """Take the entry of `seq` out of the outbox, uncounted; None if it was not there."""
        entry = self._outbox.pop(seq, None)
        if entry is not None:
            self._uncount(entry.park)
        return entry

    def _uncount(self, park: str) -> None:
        left = self._outbox_by_park[park] - 1
        if left:
            self._outbox_by_park[park] = left
        else:
            del self._outbox_by_park[park]

    def pending(self, park: str) -> int:
        """Entries for `park` not yet delivered: in the outbox here, and in the stream as last seen.

        Counted as the outbox changes: `GET /v1/parks` and the status page ask it of every lot,
        so a walk of the outbox here cost lots x outbox while NATS was down.
        """
        return self._outbox_by_park.get(park, 0) + self._pending.get(park, 0)

    def pending_total(self) -> int:
        """Entries not yet published from here, and those last seen in the stream for the lots held."""
        return len(self._outbox) + sum(self._pending.values())

    def depths(self) -> dict[str, int]:
        """`pending` of each lot that has entries not yet delivered; lots with none are left out.

        From the counts kept per lot, never a walk of the outbox.
        """
        depths = dict(self._outbox_by_park)
        for park, count in self._pending.items():
            if count > 0:
                depths[park] = depths.get(park, 0) + count
        return depths

    def first_pending_seq(self) -> int | None:
        """The oldest entry journaled here and not yet published (the journal keeps it)."""
        return min(self._outbox, default=None)

    def stop(self) -> None:
        """Cancel the timers, as the gateway stops."""
        self._stopped = True
        timers = [self._publish_timer, self._sweep_timer]
        for lot in self._lots_held.values():
            timers += [lot.progress, lot.retry]
        for timer in timers:
            if timer is not None and timer.active():
                timer.cancel()

    # --- the stream -----------------------------------------------------

    def _state_changed(self, state: str) -> None:
        if state == "connecting":
            # nats-py gave its client up: the subscriptions went with it, and the entries in flight
            # can no longer be acked (given again after ack_wait). Attached again once connected.
            for lot in self._lots_held.values():
                self._stop_progress(lot)
                lot.subscription = None
                lot.attached = False
                lot.in_flight = lot.next = None
            return
        if state != "connected" or self._stopped:
            return
        self._stream_ready = False
        self._ensure_stream()

    def _ensure_stream(self) -> None:
        if self._ensuring or self._stopped:
            return
        self._ensuring = True
        from nats.js.api import RetentionPolicy, StorageType

        def ready(_: object) -> None:
            self._ensuring = False
            self._stream_ready = True
            self._publish_failures = 0
            self._publish()
            for park, lot in list(self._lots_held.items()):
                if not lot.attached:
                    self._attach(park)
            if self._sweep_timer is None:
                self._sweep_timer = self._clock.callLater(0, self.sweep)

        def failed(failure: Failure) -> None:
            self._ensuring = False
            log.warn(
                "sync stream {stream} not ready: {error}", stream=self.stream, error=failure.getErrorMessage()
            )
            self._publish_later()

        self._connection.ensure_stream(
            self.stream,
            [f"{self._prefix}.sync.>"],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=DUPLICATE_WINDOW,
            max_consumers=MAX_CONSUMERS,
        ).addCallbacks(ready, failed)

    # --- publishing (the outbox) ---------------------------------------

    def _publish(self) -> None:
        """Publish the oldest unpublished entry, then the next, one at a time, in seq order."""
        if self._publishing or not self._outbox or self._stopped or self._publish_timer is not None:
            return
        if not self._stream_ready:
            if self._connection.state == "connected":
                self._ensure_stream()
            return
        entry = self._outbox[min(self._outbox)]
        self._publishing = True
        subject = sync_subject(self._prefix, entry.park, entry.code)
        payload = json.dumps(entry.data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        headers = {
            MSG_ID_HEADER: f"{self._gateway_id}-{entry.seq}",
            OPR_HEADER: entry.opr,
            CLIENT_HEADER: entry.client,
            EXPIRES_HEADER: entry.expires,
            GATEWAY_HEADER: self._gateway_id,
            SEQ_HEADER: str(entry.seq),
        }

        async def publish(nc: Any, js: Any) -> Any:
            return await js.publish(subject, payload, stream=self.stream, headers=headers)

        def published(ack: Any) -> None:
            self._publishing = False
            self._publish_failures = 0
            if self._release(entry.seq) is None:
                return
            self.counters["published"] += 1
            if entry.park in self._lots_held:
                self._pending[entry.park] = self._pending.get(entry.park, 0) + 1
            body: dict[str, object] = {
                "seq": entry.seq,
                "client": entry.client,
                "outcome": "published",
                "stream": self.stream,
                "streamSeq": getattr(ack, "seq", None),
            }
            self._append_done(entry.park, entry.code, entry.opr, body)
            self._publish()

        def failed(failure: Failure) -> None:
            self._publishing = False
            log.warn(
                "sync {seq} for {park} not published yet: {error}",
                seq=entry.seq,
                park=entry.park,
                error=failure.getErrorMessage(),
            )
            self._publish_later()

        self._connection.run(publish).addCallbacks(published, failed)

    def _publish_later(self) -> None:
        if self._publish_timer is not None or self._stopped:
            return
        self._publish_failures += 1
        delay = min(PUBLISH_BACKOFF_MAX, 0.25 * 2**self._publish_failures)

        def again() -> None:
            self._publish_timer = None
            self._publish()

        self._publish_timer = self._clock.callLater(delay, again)

    def _append_done(self, park: str, code: str, opr: str, body: dict[str, object]) -> Deferred[Any]:
        appended: Deferred[Any] = maybeDeferred(self._journal.append, SYNC_DONE_RECORD, park, code, opr, body)
        return appended

    # --- the lots held here --------------------------------------------

    def held(self) -> frozenset[str]:
        """The lots whose entries this gateway takes now."""
        return frozenset(self._lots_held)

    def lot_bound(self, park: str) -> None:
        """The lot bound its downlink here: take its entries from the stream."""
        if park in self._lots_held:
            return
        self._lots_held[park] = _Lot()
        self._attach(park)

    def lot_unbound(self, park: str) -> None:
        """The lot left: give its entry in flight back, stop taking its entries."""
        lot = self._lots_held.pop(park, None)
        self._pending.pop(park, None)
        if lot is None:
            return
        for timer in (lot.progress, lot.retry):
            if timer is not None and timer.active():
                timer.cancel()
        in_flight, lot.in_flight = lot.in_flight, None
        following, lot.next = lot.next, None
        subscription = lot.subscription

        async def release(nc: Any, js: Any) -> None:
            # Unsubscribed (and the server told so) before the NAK: else the server would give the
            # entry straight back to this gateway, whose client drops it, and it would wait ack_wait.
            if subscription is not None:
                await subscription.unsubscribe()
                await nc.flush()
            for given in (in_flight, following):
                if given is not None:
                    await given.nak()

        self._connection.run(release).addErrback(self._warn, "releasing the sync entries of", park)

    def _attach(self, park: str) -> None:
        """Make sure the lot's consumer exists, then subscribe to what it delivers."""
        lot = self._lots_held.get(park)
        if lot is None or lot.attaching or lot.attached:
            return
        if not self._stream_ready:
            if self._connection.state == "connected":
                self._ensure_stream()
            return  # attached once the stream is ready
        lot.attaching = True
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
        from nats.js.errors import NotFoundError

        config = ConsumerConfig(
            durable_name=consumer_name(park),
            filter_subject=f"{self._prefix}.sync.{park}.>",
            deliver_subject=deliver_subject(self._prefix, park),
            deliver_policy=DeliverPolicy.ALL,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self._ack_wait,
            max_ack_pending=1,
            max_deliver=-1,
        )
        to_reactor = self._connection.to_reactor
        received = self._received
        stream = self.stream
        subject = config.deliver_subject

        async def attach(nc: Any, js: Any) -> tuple[Any, int]:
            # A lookup, and a create only when missing: a create-or-update of thousands of existing
            # consumers at once (a gateway's lots coming back) writes each one's state again.
            try:
                info = await js.consumer_info(stream, config.durable_name)
            except NotFoundError:
                info = await js.add_consumer(stream, config)

            async def handler(msg: Any) -> None:
                to_reactor(received, park, msg)

            subscription = await nc.subscribe(subject, cb=handler)
            return subscription, int(getattr(info, "num_pending", 0) or 0) + int(
                getattr(info, "num_ack_pending", 0) or 0
            )

        def attached(result: tuple[Any, int]) -> None:
            subscription, pending = result
            lot.attaching = False
            if self._lots_held.get(park) is not lot:
                self._connection.run(lambda nc, js: subscription.unsubscribe())
                return
            lot.attached = True
            lot.failures = 0
            lot.subscription = subscription
            self._pending[park] = pending

        def failed(failure: Failure) -> None:
            lot.attaching = False
            if self._lots_held.get(park) is not lot or self._stopped:
                return
            lot.failures += 1
            delay = min(PUBLISH_BACKOFF_MAX, 0.5 * 2**lot.failures)
            log.warn(
                "cannot take the sync entries of lot {park} ({error}); again in {delay:g} s",
                park=park,
                error=failure.getErrorMessage(),
                delay=delay,
            )
            lot.retry = self._clock.callLater(delay, self._reattach, park)

        self._connection.run(attach).addCallbacks(attached, failed)

    def _reattach(self, park: str) -> None:
        lot = self._lots_held.get(park)
        if lot is not None:
            lot.retry = None
            self._attach(park)

    # --- delivering -----------------------------------------------------

    def _received(self, park: str, msg: Any) -> None:
        """An entry of `park` pushed by its consumer (on the reactor thread)."""
        lot = self._lots_held.get(park)
        if lot is None or self._stopped:
            self._nak(msg)  # the lot left meanwhile: its next holder takes it
            return
        if lot.in_flight is not None:
            # One at a time by the consumer's max_ack_pending; a redelivery of the one in flight is ignored.
            if _stream_seq(msg) == _stream_seq(lot.in_flight):
                return
            # The next one, given as soon as an expired entry is deleted: taken once that one is settled.
            if lot.next is not None and _stream_seq(lot.next) != _stream_seq(msg):
                self._nak(lot.next)
            lot.next = msg
            return
        lot.in_flight = msg
        try:
            remaining = int(msg.metadata.num_pending)
        except Exception:
            remaining = 0
        self._pending[park] = remaining + 1
        headers: Mapping[str, str] = msg.headers or {}
        code, opr, base, expires = self._facts(headers, msg.subject, _stream_seq(msg), _published_at(msg))
        entry = base["entry"]
        attempts = _attempts(msg)
        try:
            data = self._checked(code, msg.data)
        except ValueError as error:
            self.counters["refused"] += 1
            log.warn(
                "sync entry {entry} for {park} refused: {error}", entry=entry, park=park, error=str(error)
            )
            body = {**base, "outcome": "refused", "reason": str(error), "attempts": attempts - 1}
            self._settle(park, lot, msg, code, opr, body, ack="term")
            return
        if expires <= self._clock.seconds():
            self._expire_held(
                park, lot, msg, code, opr, {**base, "outcome": "expired", "attempts": attempts - 1}
            )
            return
        self._keep_in_progress(lot, msg)

        def replied(reply: LotReply) -> None:
            if lot.in_flight is not msg:
                return
            if reply.result_code == Result.OK.code:
                self.counters["delivered"] += 1
                body = {
                    **base,
                    "outcome": "delivered",
                    "attempts": attempts,
                    "resultCode": reply.result_code,
                    "resultMessage": reply.result_message,
                }
                self._settle(park, lot, msg, code, opr, body)
                return
            log.info(
                "lot {park} answered sync {entry} ({code}) with {result}; retrying in {retry:g} s",
                park=park,
                entry=entry,
                code=code,
                result=reply.result_code,
                retry=self._retry,
            )
            self._again(lot, msg)

        def failed(failure: Failure) -> None:
            if lot.in_flight is not msg:
                return
            if failure.check(NotConnected):
                self._stop_progress(lot)
                lot.in_flight = None
                if lot.next is not None:
                    following, lot.next = lot.next, None
                    self._nak(following)
                self._nak(msg)  # the lot left: its next bind, here or elsewhere, takes it again
                return
            if not failure.check(DeadlinePassed):
                log.failure("sync {entry} to {park} failed; retrying", failure, entry=entry, park=park)
            self._again(lot, msg)

        sent: Deferred[LotReply] = maybeDeferred(self._lots.command, park, code, data, opr)
        sent.addCallbacks(replied, failed)

    def _facts(
        self, headers: Mapping[str, str], subject: str, seq: int, published_at: float
    ) -> tuple[str, str, dict[str, object], float]:
        """An entry's code, oprNum, the `sync-done` body's common part and its expiry, from its message."""
        code = subject.rsplit(".", 1)[-1][:64]  # a longer one is no interface code: refused, named cut
        opr = str(headers.get(OPR_HEADER, ""))
        if not OPR_VALUE.fullmatch(opr):
            opr = hashlib.md5(f"{self.stream}:{seq}".encode()).hexdigest()
        given = headers.get(MSG_ID_HEADER)
        entry = given[:128] if isinstance(given, str) and given else f"stream:{seq}"
        base: dict[str, object] = {"entry": entry, "client": str(headers.get(CLIENT_HEADER, "nats"))[:128]}
        origin = headers.get(GATEWAY_HEADER)
        if origin:
            base["gateway"] = str(origin)[:128]
        try:
            expires = rfc3339_seconds(str(headers[EXPIRES_HEADER]))
        except (KeyError, ValueError):
            expires = published_at + self._ttl
        return code, opr, base, expires

    # --- the sweep: expiry on time for the lots bound nowhere; the consumers kept right --------

    def sweep(self) -> Deferred[None]:
        """One sweep (the timer calls it every `sweep_interval` s); fires when its work is done."""
        if self._sweep_timer is not None and self._sweep_timer.active():
            self._sweep_timer.cancel()
        self._sweep_timer = None
        if self._stopped:
            return succeed(None)
        done: Deferred[None] = succeed(None)
        if not self._sweeping and self._stream_ready and self._connection.state == "connected":
            self._sweeping = True
            done = self._sweep_once()

            def over(result: object) -> None:
                self._sweeping = False
                if isinstance(result, Failure):
                    log.warn("sync sweep failed: {error}", error=result.getErrorMessage())

            done.addBoth(over)
        if not self._stopped:
            self._sweep_timer = self._clock.callLater(self._sweep_interval, self.sweep)
        return done

    def _sweep_once(self) -> Deferred[None]:
        configured = frozenset(self._parks()) if self._parks is not None else frozenset(self._lots_held)
        parks = sorted(configured)
        clean = self._parks is not None and self._cleaned != configured
        if parks:
            start = self._sweep_cursor % len(parks)
            batch = (parks + parks)[start : start + min(self.sweep_lots, len(parks))]
            self._sweep_cursor = (start + len(batch)) % len(parks)
        else:
            batch = []
        held = frozenset(park for park, lot in self._lots_held.items() if lot.attached)
        # Only what was past its expiry before anything was looked at: a lot binding meanwhile sees it
        # expired too, and claims it by the same delete.
        now = self._clock.seconds()
        stream, prefix, per_lot = self.stream, self._prefix, self.sweep_entries

        async def sweep(nc: Any, js: Any) -> tuple[list[str], list[str], list[tuple[str, Any]]]:
            from nats.js.errors import NotFoundError

            deleted = await _clean_consumers(js, stream, prefix, configured) if clean else []
            missing: list[str] = []
            claimed: list[tuple[str, Any]] = []
            for park in batch:
                try:
                    info = await js.consumer_info(stream, consumer_name(park))
                except NotFoundError:
                    info = None
                if park in held:
                    if info is None:
                        missing.append(park)
                    continue
                if info is not None and (info.push_bound or info.num_ack_pending or not info.num_pending):
                    continue  # a gateway delivers its entries (and expires them), or it has none
                subject, seq = f"{prefix}.sync.{park}.>", 0
                for _ in range(per_lot):
                    try:
                        msg = await js.get_msg(stream, seq=seq, subject=subject, next=True)
                    except NotFoundError:
                        break
                    seq = int(msg.seq) + 1
                    published = msg.time.timestamp() if msg.time is not None else 0.0
                    _, _, _, expires = self._facts(msg.headers or {}, msg.subject, int(msg.seq), published)
                    if expires <= now and await _claim(js, stream, int(msg.seq)):
                        claimed.append((park, msg))
            return deleted, missing, claimed

        def swept(result: tuple[list[str], list[str], list[tuple[str, Any]]]) -> Deferred[None]:
            deleted, missing, claimed = result
            if clean:
                self._cleaned = configured
                self.counters["consumers_deleted"] += len(deleted)
                for name in deleted:
                    log.info("sync consumer {name} deleted: its lot is no longer configured", name=name)
            for park in missing:
                self._recreate(park)
            stored = [self._expired_by_sweep(park, msg) for park, msg in claimed]
            return gatherResults(stored, consumeErrors=True).addCallback(lambda _: None)

        return self._connection.run(sweep).addCallback(swept)

    def _expired_by_sweep(self, park: str, msg: Any) -> Deferred[Any]:
        """Journal the expiry of an entry this gateway's sweep deleted from the stream."""
        published = msg.time.timestamp() if msg.time is not None else 0.0
        code, opr, base, _ = self._facts(msg.headers or {}, msg.subject, int(msg.seq), published)
        self.counters["expired"] += 1
        self.counters["swept"] += 1
        log.info(
            "sync {entry} ({code}) to {park}: expired, its lot bound nowhere",
            entry=base["entry"],
            code=code,
            park=park,
        )
        body = {**base, "outcome": "expired", "swept": True}
        return self._append_done(park, code, opr, body).addErrback(
            lambda failure: log.failure("sync-done for {entry} not journaled", failure, entry=base["entry"])
        )

    def _recreate(self, park: str) -> None:
        """The consumer of a lot held here is gone (deleted by hand): make it again and take its entries."""
        lot = self._lots_held.get(park)
        if lot is None or not lot.attached:
            return
        log.warn("the sync consumer of lot {park} was gone; made again", park=park)
        self.counters["consumers_recreated"] += 1
        self._stop_progress(lot)
        subscription, lot.subscription = lot.subscription, None
        lot.attached = False
        lot.in_flight = lot.next = None  # the deleted consumer's deliveries: nothing to ack any more
        if subscription is not None:
            self._connection.run(lambda nc, js: subscription.unsubscribe()).addErrback(lambda failure: None)
        self._attach(park)

    def _checked(self, code: str, raw: bytes) -> object:
        interface = lookup(code)
        if interface is None or interface.downlink is not DeliveryClass.SYNC or interface.code != code:
            raise ValueError(f"{code!r} is not a sync-class downlink")
        try:
            data = loads(raw, root="data")
        except JSONRefused as error:
            raise ValueError(f"the entry is not JSON: {error.detail}") from None
        if not isinstance(data, dict | list):
            raise ValueError("the entry must be a JSON object or a list of objects")
        try:
            return validate(interface.request, data)
        except FieldError as error:
            raise ValueError(error.message()) from None

    def _settle(
        self, park: str, lot: _Lot, msg: Any, code: str, opr: str, body: dict[str, object], ack: str = "ack"
    ) -> None:
        """Journal the entry's outcome; once durable, acknowledge it so the stream lets it go."""
        self._stop_progress(lot)
        log.info(
            "sync {entry} ({code}) to {park}: {outcome}",
            entry=body["entry"],
            code=code,
            park=park,
            outcome=body["outcome"],
        )

        def stored(_: object) -> None:
            async def acknowledge(nc: Any, js: Any) -> None:
                if ack == "term":
                    await msg.term()
                else:
                    await msg.ack_sync()

            # Done with it here: the server gives the next entry only once it has the ack, and a
            # lot leaving meanwhile must not hand back an entry whose outcome is journaled.
            self._finished(park, lot, msg)

            def not_acked(failure: Failure) -> None:
                # Given again after ack_wait: at least once (its outcome may be journaled twice).
                log.warn(
                    "sync {entry} for {park} not acknowledged: {error}",
                    entry=body["entry"],
                    park=park,
                    error=failure.getErrorMessage(),
                )

            self._connection.run(acknowledge).addErrback(not_acked)

        def not_stored(failure: Failure) -> None:
            # Not acknowledged: the entry comes again and its outcome is tried again.
            log.failure(
                "sync-done for {entry} to {park} not journaled", failure, entry=body["entry"], park=park
            )
            self._again(lot, msg)

        self._append_done(park, code, opr, body).addCallbacks(stored, not_stored)

    def _finished(self, park: str, lot: _Lot, msg: Any) -> None:
        """The entry in flight is settled: the lot takes its next one, if the server gave it already."""
        if lot.in_flight is not msg:
            return
        lot.in_flight = None
        if park in self._pending:
            self._pending[park] = max(0, self._pending[park] - 1)
        following, lot.next = lot.next, None
        if following is not None:
            self._received(park, following)

    def _expire_held(
        self, park: str, lot: _Lot, msg: Any, code: str, opr: str, body: dict[str, object]
    ) -> None:
        """Claim the expired entry in flight by deleting it from the stream; journal it if the claim holds."""
        self._stop_progress(lot)
        seq = _stream_seq(msg)
        stream = self.stream

        async def claim(nc: Any, js: Any) -> bool:
            return await _claim(js, stream, seq)

        def claimed(won: bool) -> None:
            if not won:
                # Another gateway's sweep took it and journaled its expiry: nothing to say here.
                self._finished(park, lot, msg)
                return
            self.counters["expired"] += 1
            log.info("sync {entry} ({code}) to {park}: expired", entry=body["entry"], code=code, park=park)

            def stored(_: object) -> None:
                self._finished(park, lot, msg)  # deleted: the server holds no ack pending for it

            def not_stored(failure: Failure) -> None:
                log.failure(
                    "sync-done for {entry} to {park} not journaled", failure, entry=body["entry"], park=park
                )
                self._finished(park, lot, msg)

            self._append_done(park, code, opr, body).addCallbacks(stored, not_stored)

        def failed(failure: Failure) -> None:
            if lot.in_flight is msg:
                self._again(lot, msg)

        self._connection.run(claim).addCallbacks(claimed, failed)

    def _again(self, lot: _Lot, msg: Any) -> None:
        """Have the entry given again after `retry` seconds (the lot's next ones wait behind it)."""
        self._stop_progress(lot)
        self.counters["retried"] += 1
        if lot.in_flight is msg:
            lot.in_flight = None
        if lot.next is not None:
            following, lot.next = lot.next, None
            self._nak(following)
        self._nak(msg, self._retry)

    def _keep_in_progress(self, lot: _Lot, msg: Any) -> None:
        """While the lot takes its time, tell the server the entry is still ours."""

        def tick() -> None:
            lot.progress = None
            if lot.in_flight is not msg or self._stopped:
                return

            async def progress(nc: Any, js: Any) -> None:
                await msg.in_progress()

            self._connection.run(progress).addErrback(lambda failure: None)
            lot.progress = self._clock.callLater(self._ack_wait / 2, tick)

        lot.progress = self._clock.callLater(self._ack_wait / 2, tick)

    def _stop_progress(self, lot: _Lot) -> None:
        if lot.progress is not None and lot.progress.active():
            lot.progress.cancel()
        lot.progress = None

    def _nak(self, msg: Any, delay: float | None = None) -> None:
        async def nak(nc: Any, js: Any) -> None:
            await msg.nak(delay=delay)

        self._connection.run(nak).addErrback(lambda failure: None)  # given again after ack_wait anyway

    def _warn(self, failure: Failure, what: str, park: str) -> None:
        log.warn("{what} lot {park} failed: {error}", what=what, park=park, error=failure.getErrorMessage())


async def _claim(js: Any, stream: str, seq: int) -> bool:
    """Delete message `seq` from `stream`: True if this call deleted it, False if it was gone already."""
    from nats.js.errors import APIError

    try:
        return bool(await js.delete_msg(stream, seq))
    except APIError as error:
        if getattr(error, "err_code", None) == _NO_MESSAGE:
            return False
        raise


async def _clean_consumers(js: Any, stream: str, prefix: str, configured: frozenset[str]) -> list[str]:
    """Delete the consumers on `stream` of lots not in `configured` that no gateway delivers from."""
    head, tail = f"{prefix}.sync.", ".>"
    stale: list[str] = []
    offset = 0
    while True:
        page = await js.consumers_info(stream, offset)
        if not page:
            break
        offset += len(page)
        for info in page:
            name = info.name or ""
            filtered = info.config.filter_subject or ""
            if not (name.startswith("sync_") and filtered.startswith(head) and filtered.endswith(tail)):
                continue  # not one of the lots' consumers: someone else's
            if filtered[len(head) : -len(tail)] not in configured and not info.push_bound:
                stale.append(name)
    for name in stale:
        await js.delete_consumer(stream, name)
    return stale


def _stream_seq(msg: Any) -> int:
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return -1


def _attempts(msg: Any) -> int:
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


def _published_at(msg: Any) -> float:
    try:
        return float(msg.metadata.timestamp.timestamp())
    except Exception:
        return 0.0

"""
A JetStream key-value bucket as the reactor sees it: watched, and written key by key, retried.

Placement (`cpmi_lots`) and tokens (`cpmi_tokens`) share it (CONTRACT §9). The
bucket is created if missing (one value a key, ``[cluster] replicas``). Its
entries reach ``on_entry(key, value, revision)`` on the reactor thread, first
the last value of every key, then each change (a deletion as ``None``): an
ordered push consumer on the bucket's stream, which nats-py resets by itself
when it misses a heartbeat or a message (a nats-server lost, a reconnection).

Writes never wait on NATS: :meth:`Bucket.put` and :meth:`Bucket.delete_if`
queue the key's latest wish and return. The wishes ready in one turn of the
reactor go to the NATS loop together (one hop each way for a wave of binds).
One write a key is in flight at a time, so a key's writes land in the order
they were asked; a write that fails
(NATS down, a timeout) is tried again after ``retry`` seconds and as soon as
the connection is back, unless a newer wish for the key replaced it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import nats.js.errors
from attrs import frozen
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy, KeyValueConfig
from nats.js.kv import KeyValue
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.connection import CONNECTED, NatsConnection

__all__ = ["Bucket", "Value"]

log = Logger()

Value = dict[str, Any]

# What a JSON value may weigh: a bucket anyone could write to is not read beyond this.
_MAX_VALUE = 4096


@frozen
class _Put:
    value: Value
    written: Callable[[int], None] | None


@frozen
class _DeleteIf:
    # Whether the key's current value is still the one to delete (runs on the NATS thread: pure).
    still: Callable[[Value], bool]


class Bucket:
    """One KV bucket: its entries to ``on_entry``, and the writes asked of it, in order per key."""

    def __init__(
        self,
        connection: NatsConnection,
        name: str,
        *,
        clock: Any,
        on_entry: Callable[[str, Value | None, int], None],
        retry: float = 1.0,
    ) -> None:
        self.name = name
        self._connection = connection
        self._clock = clock
        self._on_entry = on_entry
        self._retry = retry
        self._pending: dict[str, _Put | _DeleteIf] = {}
        self._busy: set[str] = set()
        self._retrying: IDelayedCall | None = None
        self._sending: IDelayedCall | None = None
        self._ready: dict[str, None] = {}  # in the order asked
        self._reopening: IDelayedCall | None = None
        self._running = False
        self.watching = False
        """Whether the watch is in place (its first entries may still be on their way)."""
        self._opening = False
        # The NATS loop's: the bucket's handle and the watch's subscription.
        self._handle: KeyValue | None = None
        self._subscription: Any = None

    # -- the service's

    def start(self) -> None:
        """Watch the bucket (creating it if missing), and write what is asked."""
        self._running = True
        self._connection.state_observers.append(self._state)
        self._open()

    def stop(self) -> None:
        """Stop watching and writing (the connection's close ends the subscription)."""
        self._running = False
        if self._state in self._connection.state_observers:
            self._connection.state_observers.remove(self._state)
        for call in (self._retrying, self._reopening, self._sending):
            if call is not None and call.active():
                call.cancel()
        self._retrying = self._reopening = self._sending = None

    @property
    def backlog(self) -> int:
        """Writes waiting for NATS (queued, not in flight)."""
        return len(self._pending)

    # -- writes

    def put(self, key: str, value: Value, written: Callable[[int], None] | None = None) -> None:
        """Set ``key`` to ``value`` (JSON), now or once NATS is there; ``written(revision)`` when done."""
        self._pending[key] = _Put(value, written)
        self._flush(key)

    def delete_if(self, key: str, still: Callable[[Value], bool]) -> None:
        """Delete ``key`` if its value at the time of writing satisfies ``still`` (nothing if missing)."""
        self._pending[key] = _DeleteIf(still)
        self._flush(key)

    def _flush(self, key: str) -> None:
        """Send ``key``'s wish with the next batch (at once if none is waiting to go)."""
        if not self._running or key in self._busy or key not in self._pending:
            return
        self._ready[key] = None
        if self._sending is None or not self._sending.active():
            self._sending = self._clock.callLater(0, self._send)

    def _send(self) -> None:
        """One run on the NATS loop for every wish ready: a wave of binds costs one hop each way."""
        self._sending = None
        batch: list[tuple[str, _Put | _DeleteIf, bytes]] = []
        for key in self._ready:
            wish = self._pending.pop(key, None)
            if wish is None or key in self._busy:
                continue
            self._busy.add(key)
            data = json.dumps(wish.value, separators=(",", ":")).encode() if isinstance(wish, _Put) else b""
            batch.append((key, wish, data))
        self._ready.clear()
        if not batch or not self._running:
            for key, wish, _ in batch:
                self._busy.discard(key)
                self._pending.setdefault(key, wish)
            return

        async def write(nc: Client, js: JetStreamContext) -> list[int | BaseException | None]:
            handle = await self._bucket(js)
            done: list[int | BaseException | None] = await asyncio.gather(
                *(_write(handle, key, wish, data) for key, wish, data in batch), return_exceptions=True
            )
            return done

        sent = self._connection.run(write)
        sent.addCallbacks(self._written, self._failed_all, callbackArgs=(batch,), errbackArgs=(batch,))

    def _written(
        self, outcomes: list[int | BaseException | None], batch: list[tuple[str, _Put | _DeleteIf, bytes]]
    ) -> None:
        for (key, wish, _), outcome in zip(batch, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                self._failed(Failure(outcome), key, wish)
                continue
            self._busy.discard(key)
            if isinstance(wish, _Put) and wish.written is not None and outcome is not None:
                wish.written(outcome)
            self._flush(key)

    def _failed_all(self, failure: Failure, batch: list[tuple[str, _Put | _DeleteIf, bytes]]) -> None:
        for key, wish, _ in batch:
            self._failed(failure, key, wish)

    def _failed(self, failure: Failure, key: str, wish: _Put | _DeleteIf) -> None:
        self._busy.discard(key)
        # Unless a newer wish replaced it, try it again.
        self._pending.setdefault(key, wish)
        if self._running and (self._retrying is None or not self._retrying.active()):
            log.warn(
                "nats: bucket {bucket}: writing {key} failed ({error}); trying again",
                bucket=self.name,
                key=key,
                error=failure.getErrorMessage() or failure.type.__name__,
            )
            self._retrying = self._clock.callLater(self._retry, self._flush_all)

    def _flush_all(self) -> None:
        self._retrying = None
        for key in list(self._pending):
            self._flush(key)

    # -- the watch

    def _state(self, state: str) -> None:
        if state == CONNECTED:
            self._open()
            self._flush_all()

    def _open(self) -> None:
        if not self._running or self.watching or self._opening:
            return
        self._opening = True
        prefix = f"$KV.{self.name}."
        connection = self._connection

        async def watch(nc: Client, js: JetStreamContext) -> None:
            await self._bucket(js)

            async def entry(msg: Msg) -> None:
                key = msg.subject[len(prefix) :]
                operation = msg.headers.get("KV-Operation") if msg.headers else None
                value = None if operation in ("DEL", "PURGE") else _decoded(msg.data)
                if value is None and operation not in ("DEL", "PURGE"):
                    return  # not a JSON object: nobody's value
                connection.to_reactor(self._entry, key, value, msg.metadata.sequence.stream)

            self._subscription = await js.subscribe(
                f"{prefix}>",
                stream=f"KV_{self.name}",
                cb=entry,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.LAST_PER_SUBJECT,
            )

        opened: Deferred[None] = connection.run(watch)
        opened.addCallbacks(self._watching, self._not_watching)

    def _watching(self, _: object) -> None:
        self._opening = False
        self.watching = True

    def _not_watching(self, failure: Failure) -> None:
        self._opening = False
        if not self._running:
            return
        log.warn(
            "nats: bucket {bucket}: cannot watch it yet ({error}); trying again",
            bucket=self.name,
            error=failure.getErrorMessage() or failure.type.__name__,
        )
        self._reopening = self._clock.callLater(self._retry, self._open)

    def _entry(self, key: str, value: Value | None, revision: int) -> None:
        if self._running:
            self._on_entry(key, value, revision)

    async def _bucket(self, js: JetStreamContext) -> KeyValue:
        """On the NATS loop: the bucket, created if missing."""
        if self._handle is None:
            try:
                self._handle = await js.key_value(self.name)
            except nats.js.errors.BucketNotFoundError:
                config = KeyValueConfig(
                    bucket=self.name, history=1, replicas=self._connection.settings.replicas
                )
                try:
                    self._handle = await js.create_key_value(config)
                except nats.js.errors.BadRequestError:  # another gateway created it meanwhile
                    self._handle = await js.key_value(self.name)
        return self._handle


async def _write(handle: KeyValue, key: str, wish: _Put | _DeleteIf, data: bytes) -> int | None:
    """On the NATS loop: one key's wish; the revision written (or deleted), None when nothing was."""
    if isinstance(wish, _Put):
        revision: int = await handle.put(key, data)
        return revision
    try:
        entry = await handle.get(key)
    except nats.js.errors.KeyNotFoundError:
        return None
    value = _decoded(entry.value)
    if value is None or not wish.still(value) or entry.revision is None:
        return None
    try:
        await handle.delete(key, last=entry.revision)
    except nats.js.errors.KeyWrongLastSequenceError:
        return None  # written meanwhile: no longer ours to delete
    return entry.revision


def _decoded(data: bytes | None) -> Value | None:
    """A value as JSON object, or None when it is not one."""
    if not data or len(data) > _MAX_VALUE:
        return None
    try:
        value = json.loads(data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None

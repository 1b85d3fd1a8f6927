"""
The ``nats`` sink: each event a structured CloudEvent in the JetStream stream ``CPMI_EVENTS`` (CONTRACT §9).

It only delivers: the forwarding engine (:mod:`gateway.forwarding`) reads the
journal, orders, batches, retries and journals the progress, as for the other
sinks. A batch is published at once, pipelined on the gateway's one NATS
connection (:class:`gateway.cluster.connection.NatsConnection`), each message to
``{prefix}.events.{park}.{suffix}`` with the headers

- ``Nats-Msg-Id``: ``{park}:{oprNum}`` for a lot's uplink (a lot's retry
  through another gateway is stored once), the event's ``id`` otherwise;
- ``Content-Type``: ``application/cloudevents+json`` (the CloudEvents NATS
  binding's structured mode).

A PubAck, duplicate or not, is delivery. What the server answers with an error
of the 4xx kind (a message the stream will never take), and a stream that is
missing and cannot be created (no right to, or refused), is a rejection
(journaled as ``rejected``, replayable by hand); anything else -- no answer,
the connection down, the stream unavailable -- is tried again after the
engine's backoff.

Order: one connection keeps the batch's order on the wire, so the stream
stores a prefix of it; once an event of a lot is not acknowledged, that lot's
later events of the batch are sent again too (the stream drops them as
duplicates if it had them), so a lot's events reach the stream in journal order.

The publishes use neither nats-py's ``publish_async``, whose error answers
never reach their futures (nats-py 2.16), nor a ``publish`` per message: the
batch is one write of ``HPUB`` commands the sink builds (:meth:`NatsSink._publish`),
and the sink keeps its own reply subscription and reads each answer itself
(:class:`_Acks`). It costs the gateway's one core a few µs an event; how it
was measured is in docs/benchmarks.md (NATS) and docs/nats.md.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo

import nats.errors
import nats.js.errors
import nats.protocol.parser
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from gateway.cloud.events import EVENT_CONTENT_TYPE, event_entries
from gateway.cluster.connection import NatsConnection, NatsUnavailable, StreamNotPermitted
from gateway.cluster.subjects import (
    EVENTS_DUPLICATE_WINDOW,
    event_suffix,
    events_stream,
    events_subject,
    events_subjects,
)
from gateway.interfaces import Entry, Outcome, Split
from gateway.journal.record import Record
from gateway.settings import CloudConfig

__all__ = ["TAKE_IN_DELAY", "NatsSink", "msg_id"]

TAKE_IN_DELAY = 0.005
"""The nats sink's engine takes committed records in this long after their commit: after the
journal's next write has started, several commits (~8 records each under load) in one call
(``ForwardingEngine``'s ``take_in_delay``; docs/nats.md). 5 ms against 0.5: the reactor's
CPU an event about 4 µs less, nats/durable 0.88-0.91 in 8 rounds of 9 (docs/benchmarks.md)."""

_INTERFACE_TYPE = "org.cpmi.t002."
# A status header of this value answers a request no one subscribes to: no stream takes the subject.
_NO_RESPONDERS = "503"
_STATUS_503 = b"NATS/1.0 503"
# Subjects remembered at most (then forgotten at once): lots x codes, bounded.
_SUBJECTS_CACHED = 100_000
# What a PubAck counts as in the engine's records (JetStream's API speaks HTTP's codes).
_DELIVERED = Outcome.delivered(200)
# Each event's headers: its Nats-Msg-Id between these (the CloudEvents NATS binding's structured mode).
_HEADERS_HEAD = b"NATS/1.0\r\nNats-Msg-Id: "
_HEADERS_TAIL = f"\r\nContent-Type: {EVENT_CONTENT_TYPE}\r\n\r\n".encode()
# What a subject on the wire cannot hold (it would end the HPUB line early).
_NOT_IN_SUBJECT = re.compile(r"[\s]")
# nats-py's parser state between two operations (None: a client without it, whose parser is left alone).
_AWAITING_CONTROL_LINE = getattr(nats.protocol.parser, "AWAITING_CONTROL_LINE", None)

# A message of a batch: its subject ("": it has no valid one), headers block, body, and lot.
_Message = tuple[str, bytes, bytes, str]


def _subject(subject: str) -> str:
    """``subject`` if it can go on an HPUB line, else "" (the event is refused)."""
    return "" if _NOT_IN_SUBJECT.search(subject) else subject


def _headers(msg_id: str) -> bytes:
    """The headers block of an event with this Nats-Msg-Id (CR and LF turned into spaces, as nats-py does)."""
    if "\r" in msg_id or "\n" in msg_id:
        msg_id = msg_id.replace("\r", " ").replace("\n", " ")
    return _HEADERS_HEAD + msg_id.strip().encode() + _HEADERS_TAIL


def msg_id(entry: Entry) -> str:
    """The ``Nats-Msg-Id`` of an event: ``{park}:{oprNum}`` for a lot's uplink, else its event id."""
    if entry.opr and entry.park and entry.type.startswith(_INTERFACE_TYPE):
        return f"{entry.park}:{entry.opr}"
    return entry.id


class _Refused(Exception):
    """The server refused a message for good (a JetStream error of the 4xx kind)."""

    def __init__(self, status: int, answer: bytes) -> None:
        super().__init__(answer.decode("utf-8", "replace"))
        self.status = status
        self.answer = answer


class _NoStream(Exception):
    """No stream takes the subject (no responders)."""


class _Batch:
    """One batch's publishes on the NATS loop: a result per message, and a future done once all are in."""

    __slots__ = ("done", "failed", "remaining", "results")

    def __init__(self, count: int, loop: asyncio.AbstractEventLoop) -> None:
        self.results: list[object] = [None] * count
        self.remaining = 0
        self.failed = 0  # answers that are no PubAck
        self.done: asyncio.Future[None] = loop.create_future()

    def settle(self, index: int, result: object) -> None:
        if self.results[index] is not None:
            return
        self.results[index] = result
        if not isinstance(result, bytes | dict):
            self.failed += 1
        self.remaining -= 1
        if self.remaining <= 0 and not self.done.done():
            self.done.set_result(None)


class _Acks:
    """The sink's reply subscription on one client: each published message's answer, by its inbox token.

    The answers come to a subscription on ``{inbox}.*``. nats-py would make
    each a ``Msg``, queue it and hand it to a callback task: a few µs per
    PubAck, on the gateway's one core. Where the client has the hook its
    parser calls for every message (``_process_msg``, nats-py 2.x), the
    answers to this subscription are taken there, before any of that; others
    go on to nats-py as before, and without the hook the callback does the same.
    """

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        self.prefix = f"{nc.new_inbox()}."
        self._prefix_len = len(self.prefix)
        self.waiting: dict[int, tuple[_Batch, int]] = {}
        self.counter = 0

    async def subscribe(self) -> None:
        subscription = await self.nc.subscribe(self.prefix + "*", cb=self._answered)
        sid = getattr(subscription, "_id", None)
        process_msg = getattr(self.nc, "_process_msg", None)
        if not isinstance(sid, int) or process_msg is None:
            return
        self._read_runs(sid)
        taken = self._taken

        async def process(
            msg_sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if msg_sid == sid:
                taken(subject, data, headers)
            else:
                await process_msg(msg_sid, subject, reply, data, headers)

        self.nc._process_msg = process  # type: ignore[method-assign,assignment]

    def _read_runs(self, sid: int) -> None:
        """Where the client's parser has the shape of nats-py 2.x's: each run of PubAcks at the
        start of what the socket gave read in one loop here, before the parser's per-message work.

        Only a ``MSG`` to this subscription without a reply whose payload is all there is taken;
        anything else (and whatever follows it in that read) goes to the parser as before, and a
        partial message waits in the parser's buffer until the next read, which starts with it.
        """
        ps = getattr(self.nc, "_ps", None)
        parse = getattr(ps, "parse", None)
        if _AWAITING_CONTROL_LINE is None or ps is None or parse is None:
            return
        if not isinstance(getattr(ps, "buf", None), bytearray):
            return
        if not all(isinstance(getattr(ps, name, None), int) for name in ("state", "needed")):
            return
        match = re.compile(
            b"MSG " + re.escape(self.prefix.encode()) + rb"(\d+) " + str(sid).encode() + rb" (\d+)\r\n"
        ).match
        waiting = self.waiting

        def take(data: bytes) -> bytes:
            at, end = 0, len(data)
            while True:
                found = match(data, at)
                if found is None:
                    break
                start = found.end()
                stop = start + int(found[2])
                if stop + 2 > end or data[stop : stop + 2] != b"\r\n":
                    break  # not all there yet (or not well formed: the parser says so)
                at = stop + 2
                waiter = waiting.pop(int(found[1]), None)
                if waiter is not None:
                    waiter[0].settle(waiter[1], _answer(data[start:stop], ""))
            return data[at:] if at else data

        async def read(data: bytes = b"") -> None:
            if ps.state != _AWAITING_CONTROL_LINE:
                # In a message's payload: the parser finishes it with what it lacks.
                missing = max(0, ps.needed + 2 - len(ps.buf))
                if missing >= len(data) or missing == 0:
                    await parse(data)
                    return
                await parse(data[:missing])
                data = data[missing:]
                if ps.state != _AWAITING_CONTROL_LINE:
                    await parse(data)
                    return
            if ps.buf:
                data = bytes(ps.buf) + data
                del ps.buf[:]
            rest = take(data)
            if rest:
                await parse(rest)

        ps.parse = read

    def forget(self, first: int, last: int) -> None:
        """No answer to the tokens ``first``..``last`` is awaited any more."""
        waiting = self.waiting
        for token in range(first, last + 1):
            waiting.pop(token, None)

    def _taken(self, subject: bytes, data: bytes, headers: bytes | None) -> None:
        """An answer, as the client's parser read it."""
        try:
            waiter = self.waiting.pop(int(subject[self._prefix_len :]), None)
        except ValueError:
            return
        if waiter is not None:
            batch, index = waiter
            status = _NO_RESPONDERS if headers is not None and headers.startswith(_STATUS_503) else ""
            batch.settle(index, _answer(data, status))

    async def _answered(self, msg: Msg) -> None:
        """An answer through nats-py's subscription (a client without the hook)."""
        try:
            waiter = self.waiting.pop(int(msg.subject[self._prefix_len :]), None)
        except ValueError:
            return
        if waiter is not None:
            batch, index = waiter
            batch.settle(index, _answer(msg.data, (msg.headers or {}).get("Status", "")))


def _answer(data: bytes, status: str) -> object:
    """What the server answered to one publish: the PubAck (bytes or dict), or the exception it means."""
    if data.startswith(b'{"stream":') and b'"error"' not in data:
        return data  # a PubAck: nothing more of it is needed
    if status == _NO_RESPONDERS:
        return _NoStream()
    try:
        answer = json.loads(data)
    except ValueError:
        return ValueError(f"not a JetStream answer: {data[:200]!r}")
    error = answer.get("error") if isinstance(answer, dict) else None
    if isinstance(error, dict):
        code = error.get("code")
        error_code = code if isinstance(code, int) else 0
        description = str(error.get("description", ""))
        if 400 <= error_code < 500 and error_code not in (408, 429):
            return _Refused(error_code, json.dumps(error).encode())
        return RuntimeError(f"JetStream error {error_code}: {description}")
    if not isinstance(answer, dict):
        return ValueError(f"not a JetStream answer: {data[:200]!r}")
    return answer


class NatsSink:
    """Events into JetStream on the gateway's NATS connection: the ``nats`` sink (CONTRACT §9)."""

    def __init__(
        self,
        *,
        connection: NatsConnection,
        settings: CloudConfig,
        gateway_id: str,
        zone: ZoneInfo,
    ) -> None:
        self._connection = connection
        self._settings = settings
        self._gateway_id = gateway_id
        self._zone = zone
        self._prefix = connection.settings.prefix
        self.stream = events_stream(self._prefix)
        """The events' stream: CPMI_EVENTS."""
        self._stream_ready = False
        self._acks: _Acks | None = None
        # By (park, type, code): the subject, and whether the Nats-Msg-Id is {park}:{oprNum}.
        # A few per lot, worked out once.
        self._subjects: dict[tuple[str, str, str], tuple[str, bool]] = {}
        self._timeout = min(settings.request_timeout, connection.settings.request_timeout)

    @property
    def target(self) -> str:
        return f"NATS stream {self.stream} ({', '.join(self._connection.settings.servers)})"

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        """The events among ``records`` as structured CloudEvents (the records that are no event left out)."""
        return event_entries(records, self._gateway_id, self._zone, at)

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        """Publish the batch pipelined; an Outcome per event, in order (see the module docstring)."""
        subjects = self._subjects
        if len(subjects) > _SUBJECTS_CACHED:
            subjects.clear()
        messages: list[_Message] = []
        append = messages.append
        for entry in batch:
            park, type_ = entry.park, entry.type
            key = (park, type_, entry.code)
            known = subjects.get(key)
            if known is None:
                known = subjects[key] = (
                    _subject(events_subject(self._prefix, park, event_suffix(type_, entry.code))),
                    bool(park) and type_.startswith(_INTERFACE_TYPE),
                )
            subject, by_opr = known
            opr = entry.opr
            # msg_id(entry), with what it asks of the type worked out once per lot and type.
            append((subject, _headers(f"{park}:{opr}" if by_opr and opr else entry.id), entry.body, park))
        if self._stream_ready:
            sent = self._connection.run(lambda nc, js: self._publish(nc, js, messages))
        else:
            sent = self._ensure_stream().addCallback(
                lambda _: self._connection.run(lambda nc, js: self._publish(nc, js, messages))
            )
        return sent.addCallbacks(self._outcomes, lambda failure: self._not_sent(failure, len(batch)))

    def _ensure_stream(self) -> Deferred[object]:
        window = max(EVENTS_DUPLICATE_WINDOW, 2 * self._settings.retry_max_delay)

        def ready(info: object) -> object:
            self._stream_ready = True
            return info

        return self._connection.ensure_stream(
            self.stream, events_subjects(self._prefix), duplicate_window=window
        ).addCallback(ready)

    async def _publish(
        self, nc: Client, js: JetStreamContext, messages: list[_Message]
    ) -> list[object] | int:
        """On the NATS loop: the batch as one write of HPUB commands, then each answer (a PubAck or an error);
        only their number when every message has its PubAck.

        One write, made without awaiting anything between the check of the
        connection and the write: the whole batch goes on the wire of one
        connection, or none of it (``NatsConnection._disconnected`` drops what
        waits to be written), so the stream stores a prefix of it, in order.
        """
        if nc.is_closed or not nc.is_connected or nc.is_draining_pubs:
            raise NatsUnavailable(f"NATS is {'closed' if nc.is_closed else 'reconnecting'}")
        acks = self._acks
        if acks is None or acks.nc is not nc:
            acks = _Acks(nc)
            await acks.subscribe()
            self._acks = acks
            if not nc.is_connected:
                raise NatsUnavailable("NATS is reconnecting")
        batch = _Batch(len(messages), asyncio.get_running_loop())
        results = batch.results
        prefix, waiting, max_payload = acks.prefix, acks.waiting, nc.max_payload
        first = acks.counter + 1
        token = acks.counter
        wire: list[bytes] = []
        for index, (subject, headers, body, _) in enumerate(messages):
            size = len(headers) + len(body)
            if not subject:
                results[index] = _Refused(400, b"no valid NATS subject for this event")
                continue
            if size > max_payload:
                results[index] = nats.errors.MaxPayloadError(
                    f"{size} bytes is more than the server's max_payload of {max_payload}"
                )
                continue
            token += 1
            waiting[token] = (batch, index)
            wire.append(f"HPUB {subject} {prefix}{token} {len(headers)} {size}\r\n".encode())
            wire += (headers, body, b"\r\n")
        acks.counter = token
        batch.remaining = token - first + 1
        try:
            if wire:
                await nc._send_command(b"".join(wire))
                await nc._flush_pending()
                await asyncio.wait((batch.done,), timeout=self._timeout)
        finally:
            if batch.remaining > 0:
                acks.forget(first, token)  # whatever comes later for this batch is not waited for
        if batch.remaining <= 0 and not batch.failed and token - first + 1 == len(messages):
            return len(messages)  # all acknowledged (the common case): no result to look at
        for index, result in enumerate(results):
            if result is None:
                results[index] = self._timed_out(messages[index][0])
        # Per lot, nothing after an event not acknowledged counts: it goes again, in order.
        stalled: set[str] = set()
        for index, (_, _, _, park) in enumerate(messages):
            result = results[index]
            acked = isinstance(result, dict | bytes)
            if park in stalled and acked:
                results[index] = RuntimeError("sent again after an earlier event of its lot")
            elif not acked and not isinstance(result, _Refused | nats.errors.MaxPayloadError):
                stalled.add(park)
        return results

    def _timed_out(self, subject: str) -> Exception:
        if self._connection.denied(subject):
            return _Refused(403, f"permissions violation for publish to {subject}".encode())
        return TimeoutError(f"no PubAck within {self._timeout:g} s")

    def _outcomes(self, results: list[object] | int) -> Sequence[Outcome]:
        if isinstance(results, int):
            return [_DELIVERED] * results
        outcomes = []
        for result in results:
            if isinstance(result, dict | bytes):
                outcomes.append(_DELIVERED)
            elif isinstance(result, _Refused):
                outcomes.append(Outcome.refusal(result.status, result.answer))
            elif isinstance(result, _NoStream):
                # Deleted, or never made: make it before the next try.
                self._stream_ready = False
                outcomes.append(Outcome.not_yet(f"no stream takes the subjects of {self.stream}"))
            elif isinstance(result, nats.errors.MaxPayloadError):
                outcomes.append(Outcome.refusal(413, str(result).encode()))
            else:
                outcomes.append(Outcome.not_yet(_reason(result)))
        return outcomes

    def _not_sent(self, failure: Failure, count: int) -> Sequence[Outcome]:
        """Nothing of the batch went: the stream could not be made or found, or NATS is not there."""
        error = failure.value
        if isinstance(error, StreamNotPermitted):
            return [Outcome.refusal(403, str(error).encode())] * count
        if isinstance(error, nats.js.errors.APIError) and isinstance(error.code, int):
            if 400 <= error.code < 500 and error.code not in (408, 429):
                answer = f"cannot create stream {self.stream}: {error.description}".encode()
                return [Outcome.refusal(error.code, answer)] * count
        if isinstance(error, NatsUnavailable):
            return [Outcome.not_yet(str(error))] * count
        return [Outcome.not_yet(_reason(error))] * count


def _reason(error: object) -> str:
    if isinstance(error, BaseException):
        text = str(error)
        return f"{type(error).__name__}: {text}" if text else type(error).__name__
    return str(error)

"""The nats sink's publishing in memory: the wire it writes, and what each kind of answer becomes."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from gateway.cluster.sink import NatsSink
from gateway.forwarding import ForwardingEngine
from gateway.interfaces import Entry, Outcome, Record, Split
from gateway.journal.kinds import UPLINK_RECORD
from gateway.settings import CloudConfig, ClusterSettings
from tests.cluster.rig import FAST

PUBACK = b'{"stream":"CPMI_EVENTS","seq":1}'
HPUB = re.compile(rb"HPUB (\S+) (\S+) (\d+) (\d+)\r\n")


class Answer:
    """A message on the sink's reply subscription, as nats-py hands it over."""

    def __init__(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.subject = subject
        self.data = data
        self.headers = headers


Published = tuple[str, str, bytes, bytes]
"""A message as written: subject, reply inbox, headers block, payload."""


class FakeClient:
    """What the sink uses of a nats-py client: it parses each write and answers through ``answer``."""

    def __init__(self, answer: Callable[[Published], bytes | Answer | None]) -> None:
        self.answer = answer
        self.is_closed = False
        self.is_connected = True
        self.is_draining_pubs = False
        self.max_payload = 1024
        self.writes: list[bytes] = []
        self.published: list[Published] = []
        self.callback: Callable[[Any], Awaitable[None]] | None = None

    def new_inbox(self) -> str:
        return "_INBOX.test"

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]]) -> None:
        assert subject == "_INBOX.test.*"
        self.callback = cb

    async def _send_command(self, command: bytes) -> None:
        self.writes.append(command)
        at = 0
        while at < len(command):
            found = HPUB.match(command, at)
            assert found is not None, command[at : at + 80]
            header_len, total = int(found[3]), int(found[4])
            start = found.end()
            message = (
                found[1].decode(),
                found[2].decode(),
                command[start : start + header_len],
                command[start + header_len : start + total],
            )
            assert command[start + total : start + total + 2] == b"\r\n"
            at = start + total + 2
            self.published.append(message)
            reply = self.answer(message)
            if reply is not None:
                answer = reply if isinstance(reply, Answer) else Answer(message[1], reply)
                assert self.callback is not None
                asyncio.get_running_loop().call_soon(
                    lambda answer=answer: asyncio.ensure_future(self.callback(answer))  # type: ignore[misc]
                )

    async def _flush_pending(self) -> None:
        pass


class FakeConnection:
    """The NatsConnection the sink sees: ``run`` runs the coroutine to its end on a loop of its own."""

    def __init__(self, client: FakeClient) -> None:
        self.client = client
        self.settings = ClusterSettings(servers=("nats://127.0.0.1:4222",), request_timeout=0.2)
        self.generation = 0

    def run(self, fn: Callable[[Any, Any], Awaitable[Any]]) -> Deferred[Any]:
        async def call() -> Any:
            return await fn(self.client, None)

        try:
            return succeed(asyncio.run(call()))
        except Exception as error:
            return fail(error)

    def ensure_stream(self, name: str, subjects: Iterable[str], **config: Any) -> Deferred[object]:
        return succeed({"stream": name})

    def denied(self, subject: str) -> bool:
        return False


def entry(seq: int, park: str = "P001", opr: str | None = None, size: int = 10) -> Entry:
    opr = f"o-{seq}" if opr is None else opr
    body = b'{"n":"' + b"x" * size + b'"}'
    return Entry(seq, park, "carIn", opr, f"gw-{seq}", "org.cpmi.t002.carIn.v1", body, 0.0, "")


def sink_with(answer: Callable[[Published], bytes | Answer | None]) -> tuple[NatsSink, FakeClient]:
    client = FakeClient(answer)
    connection: Any = FakeConnection(client)
    sink = NatsSink(connection=connection, settings=FAST, gateway_id="gw", zone=ZoneInfo("Asia/Shanghai"))
    return sink, client


def outcomes_of(d: Deferred[Sequence[Outcome] | Split]) -> list[Outcome]:
    results: list[Any] = []
    d.addBoth(results.append)
    assert results and isinstance(results[0], list), results
    return results[0]


def test_a_batch_is_one_write_of_hpub_commands_with_the_contracts_headers() -> None:
    """The whole batch goes in one write: each event on its subject with Nats-Msg-Id and Content-Type,
    a reply inbox of its own, the CloudEvent as payload; each PubAck is a delivery."""
    sink, client = sink_with(lambda message: PUBACK)
    outcomes = outcomes_of(sink.deliver([entry(1), entry(2, park="P002")]))
    assert [o.done and not o.refused for o in outcomes] == [True, True]
    assert len(client.writes) == 1
    subjects = [m[0] for m in client.published]
    assert subjects == ["cpmi.events.P001.carIn", "cpmi.events.P002.carIn"]
    assert len({m[1] for m in client.published}) == 2
    assert client.published[0][2] == (
        b"NATS/1.0\r\nNats-Msg-Id: P001:o-1\r\nContent-Type: application/cloudevents+json\r\n\r\n"
    )
    assert client.published[1][3] == entry(2).body


def test_no_puback_in_time_is_not_yet_for_it_and_its_lots_later_events() -> None:
    """An event with no PubAck within the timeout is retried, and so are its lot's later events even if
    acknowledged (they go again, in order); another lot's events are delivered. A late answer is ignored."""
    sink, _ = sink_with(lambda message: None if message[2].find(b"P001:o-1\r") > 0 else PUBACK)
    outcomes = outcomes_of(sink.deliver([entry(1), entry(2), entry(3, park="P002")]))
    assert [o.done for o in outcomes] == [False, False, True]
    assert "no PubAck" in outcomes[0].reason
    assert "earlier event of its lot" in outcomes[1].reason
    assert sink._acks is not None and not sink._acks.waiting  # nothing is waited for any more


def test_a_jetstream_4xx_is_a_rejection_and_other_errors_are_retried() -> None:
    """A JetStream error of the 4xx kind refuses the event for good (its lot's next events still go);
    a 5xx or a 408 is retried."""
    errors = {
        "P001:o-1": b'{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum"}}',
        "P002:o-3": b'{"error":{"code":503,"description":"jetstream unavailable"}}',
        "P003:o-4": b'{"error":{"code":408,"description":"timeout"}}',
    }

    def answer(message: Published) -> bytes:
        msg_id = message[2].split(b"Nats-Msg-Id: ")[1].split(b"\r\n")[0].decode()
        return errors.get(msg_id, PUBACK)

    sink, _ = sink_with(answer)
    outcomes = outcomes_of(sink.deliver([entry(1), entry(2), entry(3, "P002"), entry(4, "P003")]))
    assert outcomes[0].refused and outcomes[0].status == 400
    assert b"maximum" in outcomes[0].answer
    assert outcomes[1].done and not outcomes[1].refused
    assert not outcomes[2].done and "503" in outcomes[2].reason
    assert not outcomes[3].done and "408" in outcomes[3].reason


def test_no_responders_is_retried_after_making_the_stream_again() -> None:
    """A 503 status (no stream takes the subject) is not yet; the stream is ensured before the next try."""
    sink, _ = sink_with(lambda message: Answer(message[1], b"", {"Status": "503"}))
    sink._stream_ready = True
    outcomes = outcomes_of(sink.deliver([entry(1)]))
    assert not outcomes[0].done and "no stream" in outcomes[0].reason
    assert sink._stream_ready is False


def test_an_event_larger_than_max_payload_is_refused_without_being_written() -> None:
    """The server would close the connection on a message over its max_payload: the sink refuses it
    (413) without writing it, and the events around it go."""
    sink, client = sink_with(lambda message: PUBACK)
    outcomes = outcomes_of(sink.deliver([entry(1), entry(2, size=2000), entry(3)]))
    assert [o.done for o in outcomes] == [True, True, True]
    assert outcomes[1].refused and outcomes[1].status == 413
    assert [m[3] for m in client.published] == [entry(1).body, entry(3).body]


def test_while_reconnecting_nothing_is_written_and_the_batch_waits() -> None:
    """With the connection down (nats-py reconnecting) the batch is not buffered for later: nothing is
    written, every event is not yet, and the engine sends it again after its backoff."""
    sink, client = sink_with(lambda message: PUBACK)
    client.is_connected = False
    outcomes = outcomes_of(sink.deliver([entry(1), entry(2)]))
    assert [o.done for o in outcomes] == [False, False]
    assert "reconnecting" in outcomes[0].reason
    assert client.writes == []


def test_a_line_break_in_an_oprnum_cannot_add_a_header() -> None:
    """CR and LF in a Nats-Msg-Id (from a lot's oprNum) become spaces: no header is injected."""
    sink, client = sink_with(lambda message: PUBACK)
    outcomes_of(sink.deliver([entry(1, opr="o-1\r\nNats-Expected-Stream: X")]))
    assert client.published[0][2] == (
        b"NATS/1.0\r\nNats-Msg-Id: P001:o-1  Nats-Expected-Stream: X\r\n"
        b"Content-Type: application/cloudevents+json\r\n\r\n"
    )


def test_a_closed_client_fails_the_batch_as_unavailable() -> None:
    """A client nats-py gave up: the batch is not yet (NATS unavailable), nothing written."""
    sink, client = sink_with(lambda message: PUBACK)
    client.is_closed = True
    outcomes = outcomes_of(sink.deliver([entry(1)]))
    assert not outcomes[0].done and outcomes[0].reason == "NATS is closed"
    assert client.writes == []


# -- the engine's take_in_delay, which the nats sink's engines use


class FakeJournal:
    path = "/nonexistent"
    committed_seq = 0

    def __init__(self) -> None:
        self.commit_observers: list[Callable[[list[Record]], None]] = []

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        return Deferred()


class CountingSink:
    target = "nowhere"

    def __init__(self) -> None:
        self.mapped: list[list[int]] = []

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        records = list(records)
        self.mapped.append([r.seq for r in records])
        return [entry(r.seq) for r in records]

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        return Deferred()


def record(seq: int) -> Record:
    return Record(seq, "2026-12-05T10:00:00.000000Z", UPLINK_RECORD, "P001", "carIn", f"o-{seq}", {}, "")


def test_with_a_take_in_delay_commits_are_mapped_a_moment_later_together() -> None:
    """With take_in_delay, the engine does not map records inside the journal's commit callback (the
    journal's next write goes first): the commits of that moment are mapped together once it passed."""
    clock, journal, sink = Clock(), FakeJournal(), CountingSink()
    settings = CloudConfig(sink="nats", url="", downlink="", query_url="", api_token="")
    engine = ForwardingEngine(
        journal=journal, clock=clock, settings=settings, sink=sink, take_in_delay=0.0005
    )
    engine.start()
    journal.commit_observers[0]([record(1), record(2)])
    journal.commit_observers[0]([record(3)])
    assert sink.mapped == []
    clock.advance(0.0005)
    assert sink.mapped == [[1, 2, 3]]
    journal.commit_observers[0]([record(4)])
    engine.stop()
    clock.advance(1)
    assert sink.mapped == [[1, 2, 3]]  # stopped: record 4 is read from the journal after a start
    assert not clock.getDelayedCalls()


class EveryOtherSink:
    """Odd seqs are events, even ones are records that are no event; each batch is delivered at once."""

    target = "nowhere"

    def __init__(self, outcome: Outcome) -> None:
        self.outcome = outcome
        self.batches: list[list[int]] = []

    def entries(self, records: Iterable[Record], at: float) -> list[Entry]:
        return [entry(r.seq) for r in records if r.seq % 2]

    def deliver(self, batch: Sequence[Entry]) -> Deferred[Sequence[Outcome] | Split]:
        self.batches.append([e.seq for e in batch])
        return succeed([self.outcome] * len(batch))


class RecordingJournal(FakeJournal):
    def __init__(self) -> None:
        super().__init__()
        self.appended: list[tuple[str, object]] = []

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        self.appended.append((kind, body))
        return Deferred()


def test_a_delivered_batch_is_progress_through_the_records_before_the_next_event() -> None:
    """A batch delivered whole (the engine's common case) is a `forwarded` record whose `through`
    reaches the record before the next event waiting, or the last record read when none waits."""
    clock, journal = Clock(), RecordingJournal()
    sink = EveryOtherSink(Outcome.delivered(200))
    settings = CloudConfig(sink="nats", url="", downlink="", query_url="", api_token="", batch_max_events=2)
    engine = ForwardingEngine(journal=journal, clock=clock, settings=settings, sink=sink)
    engine.start()
    journal.committed_seq = 6
    journal.commit_observers[0]([record(n) for n in range(1, 7)])  # events 1, 3, 5
    clock.advance(settings.batch_max_delay)
    assert sink.batches == [[1, 3], [5]]
    assert [body for kind, body in journal.appended] == [
        {"first": 1, "last": 3, "events": 2, "status": 200, "through": 4},
        {"first": 5, "last": 5, "events": 1, "status": 200, "through": 6},
    ]
    assert engine.done_through == 6 and engine.counters["events"] == 3 and engine.backlog == 0
    assert engine.lag(clock.seconds()) is None
    engine.stop()

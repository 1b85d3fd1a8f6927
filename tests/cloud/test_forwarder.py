"""The forwarder: signed batches in journal order, acks and rejections journaled, retries, restarts."""

from __future__ import annotations

import base64
import hashlib
import json
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import attrs
import pytest
from nacl.signing import SigningKey
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionRefusedError
from twisted.logger import LogLevel
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway import config
from gateway.cloud import events
from gateway.cloud.forwarder import CloudEventsSink
from gateway.cloud.httpsig import parse_signature_input, verify_request
from gateway.forwarding import ForwardingEngine, Progress
from gateway.journal.kinds import FORWARDED_RECORD, REJECTED_RECORD
from gateway.journal.reader import read_records
from gateway.journal.record import Record
from tests.journal.helpers import Harness
from tests.test_logs import captured

URL = "https://cloud.example/v1/events"
ZONE = ZoneInfo("Asia/Shanghai")
KEY = SigningKey(bytes(range(32)))


class Cloud(Resource):
    """The cloud's events endpoint: keeps every request; answers by `answer(events)`, or holds."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.accepted: list[dict[str, Any]] = []
        self.answer: Callable[[list[dict[str, Any]]], tuple[int, bytes]] = lambda batch: (204, b"")
        self.hold = False
        self.held: list[Request] = []
        self.keep = True  # keep requests and accepted events (off when counting memory)

    def render_POST(self, request: Request) -> bytes | int:
        body = request.content.read()
        headers = {k.decode().lower(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()}
        if self.keep:
            self.requests.append((headers, body))
        if self.hold:
            self.held.append(request)
            return NOT_DONE_YET
        batch = json.loads(body)
        status, text = self.answer(batch)
        if 200 <= status < 300 and self.keep:
            self.accepted += batch
        request.setResponseCode(status)
        return text

    def batches(self) -> list[list[dict[str, Any]]]:
        return [json.loads(body) for _, body in self.requests]


def sync_run(job: Callable[[], Any]) -> Deferred[Any]:
    return maybeDeferred(job)


class Rig:
    """A real journal on a Clock (hand-cranked fsync), a forwarder, and a StubTreq cloud."""

    def __init__(self, path: Path, *, start: bool = True, resume_after: int = 0, **cloud: Any) -> None:
        self.h = Harness(path)
        self.cloud = Cloud()
        self.http: Any = StubTreq(self.cloud)
        self.settings = attrs.evolve(config.parse({"cloud": {"url": URL, **cloud}}).cloud)
        self.jitter = 1.0
        self.run_blocking: Callable[[Callable[[], Any]], Deferred[Any]] = sync_run
        self.forwarder = self.make(resume_after)
        if start:
            self.forwarder.start()

    def make(self, resume_after: int = 0, progress: str = "") -> ForwardingEngine:
        sink = CloudEventsSink(
            http=self,
            clock=self.h.clock,
            settings=self.settings,
            gateway_id="gw-01",
            zone=ZONE,
            signing_key=KEY,
        )
        return ForwardingEngine(
            journal=self.h.journal,
            sink=sink,
            progress=progress,
            clock=self.h.clock,
            settings=self.settings,
            run_blocking=lambda job: self.run_blocking(job),
            random=lambda: self.jitter,
            resume_after=resume_after,
        )

    def request(self, method: str, url: str, **kwargs: Any) -> Deferred[Any]:
        return self.http.request(method, url, **kwargs)  # type: ignore[no-any-return]

    def uplinks(self, n: int, park: str = "P001", start: int = 0) -> None:
        for i in range(start, start + n):
            self.h.journal.append(
                "uplink",
                park,
                "carIn",
                f"{park}-{i}",
                {"recordCode": f"{park}-{i}", "inTime": "2026-11-24 08:30:00"},
            )

    def settle(self) -> None:
        self.h.settle()

    def records(self, kind: str) -> list[Record]:
        return [r for r in read_records(self.h.path) if r.kind == kind]

    def close(self) -> None:
        self.forwarder.stop()
        self.h.close()


@pytest.fixture
def rigs(tmp_path: Path) -> Iterator[Callable[..., Rig]]:
    made: list[Rig] = []

    def make(**options: Any) -> Rig:
        made.append(Rig(tmp_path / f"j{len(made)}", **options))
        return made[-1]

    yield make
    for rig in made:
        if not rig.h.journal._closed:
            rig.close()


def ids(batch: list[dict[str, Any]]) -> list[str]:
    return [str(e["id"]) for e in batch]


def test_events_go_as_a_signed_cloudevents_batch(rigs: Callable[..., Rig]) -> None:
    """A batch is a CloudEvents JSON array with Content-Digest and an Ed25519 RFC 9421 signature."""
    rig = rigs(batch_max_delay=0)
    rig.uplinks(3)
    rig.settle()
    [(headers, body)] = rig.cloud.requests
    assert headers["content-type"] == events.BATCH_CONTENT_TYPE
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert headers["content-digest"] == f"sha-256=:{digest}:"
    assert verify_request("POST", URL, body, headers, KEY.verify_key)
    assert not verify_request("POST", URL, body + b" ", headers, KEY.verify_key)
    params = parse_signature_input(headers["signature-input"])
    assert params is not None and params.keyid == "gw-01"
    assert params.created == int(rig.h.clock.seconds())
    batch = json.loads(body)
    assert ids(batch) == ["gw-01-1", "gw-01-2", "gw-01-3"]
    assert batch[0]["type"] == "org.cpmi.t002.carIn.v1" and batch[0]["source"] == "urn:cpmi:park:P001"
    assert batch[0]["data"]["inTime"] == "2026-11-24T08:30:00+08:00"


def test_a_2xx_is_journaled_as_forwarded(rigs: Callable[..., Rig]) -> None:
    """Each acknowledged batch gets a forwarded record saying what it covered and up to where all is done."""
    rig = rigs(batch_max_delay=0)
    rig.uplinks(2)
    rig.settle()
    [ack] = rig.records(FORWARDED_RECORD)
    assert ack.body == {"first": 1, "last": 2, "events": 2, "status": 204, "through": 2}
    assert rig.forwarder.done_through == 2 and rig.forwarder.counters["events"] == 2
    rig.uplinks(1)
    rig.settle()
    # The ack record (seq 3) is no event: the next batch holds only seq 4, and is done through 4.
    assert [r.body["through"] for r in rig.records(FORWARDED_RECORD)] == [2, 4]
    assert rig.forwarder.backlog == 1  # the last ack record itself


def test_a_named_engine_names_its_sink_in_its_progress_records(rigs: Callable[..., Rig]) -> None:
    """An engine with a progress name journals it as `sink`; the main sink's form stays without it."""
    rig = rigs(batch_max_delay=0, start=False)
    rig.forwarder = rig.make(progress="second")
    rig.forwarder.start()
    rig.uplinks(2)
    rig.settle()
    [ack] = rig.records(FORWARDED_RECORD)
    assert ack.body == {"first": 1, "last": 2, "events": 2, "status": 204, "through": 2, "sink": "second"}
    main, second = Progress(), Progress("second")
    for record in rig.records(FORWARDED_RECORD):
        main.restore(record)
        second.restore(record)
    assert (main.through, second.through) == (0, 2)


def test_batches_are_bounded_by_events_and_bytes(rigs: Callable[..., Rig]) -> None:
    """No batch holds more than batch_max_events events or (beyond its first event) batch_max_bytes."""
    rig = rigs(batch_max_events=10, batch_max_delay=0)
    rig.forwarder.stop()  # let 25 records pile up first
    rig.uplinks(25)
    rig.settle()
    rig.forwarder.start()
    rig.settle()
    assert [len(b) for b in rig.cloud.batches()] == [10, 10, 5]
    small = rigs(batch_max_bytes=1024, batch_max_delay=0, start=False)
    small.uplinks(12)
    small.settle()
    small.forwarder.start()
    small.settle()
    sizes = [len(body) for _, body in small.cloud.requests]
    assert len(sizes) > 1 and all(size <= 1024 for size in sizes)
    assert sum(len(b) for b in small.cloud.batches()) == 12


def test_a_lone_event_waits_at_most_the_batch_delay(rigs: Callable[..., Rig]) -> None:
    """A batch that is not full goes batch_max_delay after its first event committed."""
    rig = rigs(batch_max_delay=0.25)
    rig.uplinks(1)
    rig.settle()
    assert rig.cloud.requests == []
    rig.h.clock.advance(0.1)
    rig.uplinks(1)
    rig.settle()
    assert rig.cloud.requests == []
    rig.h.clock.advance(0.15)
    rig.settle()
    assert [ids(b) for b in rig.cloud.batches()] == [["gw-01-1", "gw-01-2"]]


@pytest.mark.parametrize("status", [500, 502, 503, 408, 429])
def test_retryable_statuses_back_off_and_resend_the_same_ids(rigs: Callable[..., Rig], status: int) -> None:
    """5xx, 408 and 429 resend the same events after a capped exponential backoff."""
    rig = rigs(batch_max_delay=0, retry_min_delay=1, retry_max_delay=4)
    answers = [(status, b"busy")] * 4 + [(200, b"")]
    rig.cloud.answer = lambda batch: answers.pop(0)
    rig.uplinks(2)
    rig.settle()
    waits = []
    while len(rig.cloud.requests) < 5:
        before = len(rig.cloud.requests)
        waited = 0.0
        while len(rig.cloud.requests) == before:
            rig.h.clock.advance(0.25)
            waited += 0.25
            rig.settle()
        waits.append(waited)
    assert waits == [1.0, 2.0, 4.0, 4.0]  # jitter 1.0 gives the ceiling: doubling, capped
    assert all(ids(b) == ["gw-01-1", "gw-01-2"] for b in rig.cloud.batches())
    assert rig.forwarder.counters["retries"] == 4
    assert [r.body["through"] for r in rig.records(FORWARDED_RECORD)] == [2]


def test_jitter_spreads_the_wait_over_the_upper_half(rigs: Callable[..., Rig]) -> None:
    """The wait before a retry is between half the ceiling and the ceiling, as the jitter draws."""
    rig = rigs(batch_max_delay=0, retry_min_delay=2)
    rig.jitter = 0.0
    rig.cloud.answer = lambda batch: (503, b"")
    rig.uplinks(1)
    rig.settle()
    rig.h.clock.advance(0.999)
    rig.settle()
    assert len(rig.cloud.requests) == 1
    rig.h.clock.advance(0.001)
    rig.settle()
    assert len(rig.cloud.requests) == 2


def test_network_errors_and_timeouts_are_retried(rigs: Callable[..., Rig]) -> None:
    """A refused connection and a cloud that does not answer within request_timeout are retried."""
    rig = rigs(batch_max_delay=0, retry_min_delay=1, request_timeout=5)
    real = rig.http
    rig.http = type("Down", (), {"request": lambda self, *a, **k: fail(ConnectionRefusedError())})()
    rig.uplinks(1)
    rig.settle()
    assert "Connection was refused" in rig.forwarder.last_error
    rig.http = real
    rig.cloud.hold = True
    rig.h.clock.advance(1)
    rig.settle()
    assert len(rig.cloud.requests) == 1  # held: no answer
    rig.h.clock.advance(5)
    rig.settle()
    assert rig.forwarder.last_error == "no answer within 5 s"
    rig.cloud.hold = False
    rig.h.clock.advance(2)
    rig.settle()
    assert len(rig.cloud.requests) == 2
    assert [ids(json.loads(body)) for _, body in rig.cloud.requests] == [["gw-01-1"]] * 2
    assert rig.forwarder.done_through == 1


def test_a_refused_event_is_narrowed_down_and_alone_rejected(rigs: Callable[..., Rig]) -> None:
    """A 4xx halves the batch until the refused event is alone; the rest, of every lot, gets through."""
    rig = rigs(batch_max_delay=0, start=False)
    for i in range(4):
        rig.uplinks(1, "P001", i)
        rig.uplinks(1, "P002", i)
    rig.settle()
    bad = "gw-01-6"  # P002's third record

    def answer(batch: list[dict[str, Any]]) -> tuple[int, bytes]:
        return (422, b'{"error":"recordCode unknown"}') if bad in ids(batch) else (200, b"")

    rig.cloud.answer = answer
    rig.forwarder.start()
    rig.settle()
    delivered = ids(rig.cloud.accepted)
    assert bad not in delivered
    assert sorted(delivered, key=lambda i: int(i.rsplit("-", 1)[1])) == delivered  # journal order
    assert set(delivered) >= {f"gw-01-{s}" for s in range(1, 9) if s != 6}
    [rejected] = rig.records(REJECTED_RECORD)
    assert (rejected.park, rejected.code, rejected.opr) == ("P002", "carIn", "P002-2")
    assert rejected.body["seq"] == 6 and rejected.body["id"] == bad and rejected.body["status"] == 422
    assert rejected.body["answer"] == '{"error":"recordCode unknown"}'
    assert rig.forwarder.counters["rejected"] == 1
    # The rejection itself reaches the cloud as a gateway event.
    gateway_events = [e for e in rig.cloud.accepted if e["type"] == "org.cpmi.gateway.rejected.v1"]
    assert [e["data"]["id"] for e in gateway_events] == [bad]
    assert len(rig.cloud.requests) <= 12  # a few halvings, not one request per event


def test_a_cloud_refusing_everything_makes_no_loop(rigs: Callable[..., Rig]) -> None:
    """When even rejection events are refused, each is rejected once and nothing more is sent."""
    rig = rigs(batch_max_delay=0)
    rig.cloud.answer = lambda batch: (400, b"no")
    rig.uplinks(3)
    rig.settle()
    rejected = rig.records(REJECTED_RECORD)
    # three uplinks, then their three rejection events; the refusals of those are not sent again
    assert len(rejected) == 6
    assert rig.forwarder.backlog <= 3 and rig.h.clock.getDelayedCalls() == []
    count = len(rig.cloud.requests)
    rig.h.clock.advance(3600)
    rig.settle()
    assert len(rig.cloud.requests) == count


def test_outage_loses_nothing_and_keeps_per_lot_order(rigs: Callable[..., Rig]) -> None:
    """Cloud down through 1,000 uplinks of three lots; once up, each arrives once, in per-lot order."""
    rig = rigs(batch_max_events=50, batch_max_delay=0, retry_min_delay=1, retry_max_delay=30)
    up = False
    rig.cloud.answer = lambda batch: (200, b"") if up else (503, b"down")
    for i in range(1000):
        rig.uplinks(1, f"P00{i % 3}", i)
        if i % 100 == 0:
            rig.settle()
            rig.h.clock.advance(7)
    rig.settle()
    assert len(rig.forwarder._queue) <= 4 * 50  # the rest waits on disk
    up = True
    for _ in range(200):
        rig.h.clock.advance(30)
        rig.settle()
        if rig.forwarder.backlog <= 1:
            break
    accepted = ids(rig.cloud.accepted)
    assert len(accepted) == len(set(accepted)) == 1000
    for park in ("P000", "P001", "P002"):
        oprs = [e["cpmioprnum"] for e in rig.cloud.accepted if e["source"] == f"urn:cpmi:park:{park}"]
        assert [int(o.split("-")[1]) for o in oprs] == sorted(int(o.split("-")[1]) for o in oprs)
    # every retried batch resent the same ids it had
    first_tries: dict[str, int] = {}
    for batch in rig.cloud.batches():
        for event in batch:
            first_tries.setdefault(event["id"], event["cpmiseq"])
            assert event["id"] == f"gw-01-{event['cpmiseq']}"


def test_a_restart_resumes_after_the_last_acknowledged_record(rigs: Callable[..., Rig]) -> None:
    """After a restart, acknowledged events are not sent again; the others are, with the same ids."""
    rig = rigs(batch_max_events=5, batch_max_delay=0)
    rig.uplinks(5)
    rig.settle()
    assert ids(rig.cloud.accepted) == [f"gw-01-{s}" for s in range(1, 6)]
    rig.cloud.hold = True  # the next batch is sent, never answered
    rig.uplinks(3)
    rig.settle()
    assert ids(json.loads(rig.cloud.requests[-1][1])) == ["gw-01-7", "gw-01-8", "gw-01-9"]
    rig.forwarder.stop()
    rig.h.reopen()
    progress = Progress()
    for record in rig.h.journal.replay():
        if record.kind in (FORWARDED_RECORD, REJECTED_RECORD):
            progress.restore(record)
    assert progress.through == 5
    rig.cloud.hold = False
    rig.cloud.requests.clear()
    restarted = rig.make(progress.through)
    rig.forwarder = restarted
    restarted.start()
    rig.settle()
    assert [ids(b) for b in rig.cloud.batches()] == [["gw-01-7", "gw-01-8", "gw-01-9"]]


def test_progress_takes_the_highest_through() -> None:
    """Progress keeps the highest through of the records it replays and ignores malformed bodies."""
    progress = Progress()
    for body in ({"through": 7}, {"through": 3}, {"through": "9"}, ["x"], {"through": True}):
        progress.restore(Record(1, "", FORWARDED_RECORD, "", "", "", body, "0" * 32))
    assert progress.through == 7


def test_stop_abandons_the_batch_in_flight_and_all_timers(rigs: Callable[..., Rig]) -> None:
    """Stopping cancels the request in flight and every timer; nothing is sent afterwards."""
    rig = rigs(batch_max_delay=0)
    rig.cloud.hold = True
    rig.uplinks(1)
    rig.settle()
    rig.forwarder.stop()
    assert rig.h.clock.getDelayedCalls() == []
    rig.cloud.hold = False
    rig.uplinks(1)
    rig.settle()
    rig.h.clock.advance(100)
    assert len(rig.cloud.requests) == 1 and rig.records(FORWARDED_RECORD) == []


def test_a_failed_journal_read_is_tried_again(rigs: Callable[..., Rig]) -> None:
    """If reading the backlog fails, the forwarder says why and reads again a little later."""
    rig = rigs(batch_max_delay=0, start=False)
    rig.uplinks(3)
    rig.settle()
    calls: list[int] = []

    def flaky(job: Callable[[], Any]) -> Deferred[Any]:
        calls.append(1)
        return fail(OSError(5, "Input/output error")) if len(calls) == 1 else maybeDeferred(job)

    rig.run_blocking = flaky
    rig.forwarder.start()
    rig.settle()
    assert rig.cloud.requests == [] and "Input/output error" in rig.forwarder.last_error
    rig.h.clock.advance(5)
    rig.settle()
    assert ids(rig.cloud.accepted) == ["gw-01-1", "gw-01-2", "gw-01-3"]


def test_memory_stays_flat_through_a_100k_backlog(tmp_path: Path) -> None:
    """Forwarding a backlog of 100,000 records peaks well below what holding them would take."""
    rig = Rig(tmp_path / "big", start=False, batch_max_delay=0)
    journal = rig.h.journal
    for i in range(100_000):
        journal.append(
            "uplink", "P001", "carOut", f"o-{i}", {"recordCode": f"R{i}", "outTime": "2026-11-24 09:00:00"}
        )
        if i % 5000 == 4999:
            rig.settle()
    rig.settle()
    delivered = 0
    sent_bytes = 0

    def count(batch: list[dict[str, Any]]) -> tuple[int, bytes]:
        nonlocal delivered, sent_bytes
        delivered += len(batch)
        sent_bytes += len(json.dumps(batch, ensure_ascii=False, separators=(",", ":")).encode())
        return 204, b""

    rig.cloud.answer = count
    rig.cloud.keep = False
    tracemalloc.start()
    try:
        rig.forwarder.start()
        rig.settle()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert delivered == 100_000
    # The forwarder holds at most four batches of 500 events, and one chunk read from disk;
    # the 100k events' serialized bytes alone, without any Python objects, are far more.
    assert peak < 24 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert peak < sent_bytes / 2, f"peak {peak / 2**20:.1f} MiB for {sent_bytes / 2**20:.1f} MiB of events"
    rig.close()


# the log: cloud.retrying, cloud.recovered, cloud.rejected


def named(events: list[Any], *names: str) -> list[Any]:
    return [event for event in events if event.get("event") in names]


def test_a_run_of_failures_logs_one_retrying_and_its_end_one_recovered(rigs: Callable[..., Rig]) -> None:
    """N failed attempts in a row log one cloud.retrying as they begin; the success one cloud.recovered."""
    rig = rigs(batch_max_delay=0, retry_min_delay=1, retry_max_delay=4)
    answers = [(503, b"busy")] * 6 + [(200, b"")]
    rig.cloud.answer = lambda batch: answers.pop(0)
    with captured() as events:
        rig.uplinks(2)
        rig.settle()
        start = rig.h.clock.seconds()
        while answers:
            rig.h.clock.advance(0.5)
            rig.settle()
        took = rig.h.clock.seconds() - start
    burst = named(events, "cloud.retrying", "cloud.recovered")
    assert [event["event"] for event in burst] == ["cloud.retrying", "cloud.recovered"]
    retrying, recovered = burst
    assert retrying["log_level"] is LogLevel.warn and retrying["reason"] == "HTTP 503"
    assert retrying["status"] == 503 and retrying["backlog"] == 2 and retrying["url"] == URL
    assert (retrying["count"], retrying["first"], retrying["last"]) == (2, 1, 2)
    assert recovered["log_level"] is LogLevel.info and recovered["attempts"] == 6
    assert recovered["seconds"] == took and recovered["status"] == 200
    debug = [e for e in events if e["log_level"] is LogLevel.debug and "try {attempt}" in e["log_format"]]
    assert len(debug) == 6 and not any("event" in e for e in debug)
    # A later outage is a new run: one more of each.
    answers[:] = [(200, b"")]
    rig.http = type("Down", (), {"request": lambda self, *a, **k: fail(ConnectionRefusedError())})()
    with captured() as later:
        rig.uplinks(1)
        rig.settle()
        rig.http = StubTreq(rig.cloud)
        rig.h.clock.advance(1)
        rig.settle()
    retrying, recovered = named(later, "cloud.retrying", "cloud.recovered")
    assert retrying["status"] is None and "refused" in retrying["reason"]
    assert recovered["attempts"] == 1


def test_success_without_a_failure_logs_no_burst(rigs: Callable[..., Rig]) -> None:
    """Batches delivered at the first try log neither cloud.retrying nor cloud.recovered."""
    rig = rigs(batch_max_delay=0)
    with captured() as events:
        rig.uplinks(3)
        rig.settle()
    assert rig.forwarder.done_through == 3
    assert named(events, "cloud.retrying", "cloud.recovered", "cloud.rejected") == []


def test_each_refused_batch_logs_one_cloud_rejected(rigs: Callable[..., Rig]) -> None:
    """Every 4xx for a batch logs one cloud.rejected: status, count, first and last seq, the answer."""
    rig = rigs(batch_max_delay=0, start=False)
    rig.uplinks(4)
    rig.settle()
    bad = "gw-01-3"
    answer = b'{"error":\n  "recordCode unknown"}' + b"x" * 500

    rig.cloud.answer = lambda batch: (422, answer) if bad in ids(batch) else (200, b"")
    with captured("cloud.rejected") as events:
        rig.forwarder.start()
        rig.settle()
    refusals = len([batch for batch in rig.cloud.batches() if bad in ids(batch)])
    assert len(events) == refusals >= 2
    assert [(e["count"], e["first"], e["last"]) for e in events][-1] == (1, 3, 3)
    assert events[0]["count"] > 1 and events[0]["first"] <= 3 <= events[0]["last"]
    for event in events:
        assert event["status"] == 422
        assert event["reason"].startswith('{"error": "recordCode unknown"}') and len(event["reason"]) <= 200
    last = events[-1]
    assert (last["park"], last["code"], last["id"]) == ("P001", "carIn", bad)
    assert last["log_level"] is LogLevel.error and events[0]["log_level"] is LogLevel.warn


def test_lag_is_the_age_of_the_oldest_event_waiting(rigs: Callable[..., Rig]) -> None:
    """lag(now) is how long the first unforwarded event has waited since journaled; None when caught up."""
    rig = rigs(batch_max_delay=0, retry_min_delay=10, retry_max_delay=10)
    assert rig.forwarder.lag(rig.h.clock.seconds()) is None
    answers = [(503, b"down")] * 2 + [(204, b"")]
    rig.cloud.answer = lambda batch: answers.pop(0)
    rig.uplinks(1)
    rig.settle()
    journaled = rig.h.clock.seconds()
    rig.h.clock.advance(5)
    rig.settle()
    rig.uplinks(1, start=1)
    rig.settle()
    lag = rig.forwarder.lag(journaled + 7.5)
    assert lag is not None and abs(lag - 7.5) < 0.01, "the first event's age, not the second's"
    while answers:
        rig.h.clock.advance(1)
        rig.settle()
    assert len(rig.cloud.accepted) == 2
    assert rig.forwarder.lag(rig.h.clock.seconds()) is None


def test_a_batch_not_taken_keeps_the_clouds_answer_for_whoever_shows_it(rigs: Callable[..., Rig]) -> None:
    """A 5xx is retried (not done), its outcomes carrying the status and the cloud's answer."""
    rig = rigs(start=False)
    rig.cloud.answer = lambda batch: (503, b"busy, later")
    sink = CloudEventsSink(
        http=rig.http,
        clock=rig.h.clock,
        settings=rig.settings,
        gateway_id="gw-01",
        zone=ZONE,
        signing_key=KEY,
    )
    rig.uplinks(2)
    rig.settle()
    entries = sink.entries(read_records(rig.h.path), at=0.0)
    outcomes: list[Any] = []
    sink.deliver(entries).addCallback(outcomes.append)
    rig.http.flush()
    [answered] = outcomes
    assert [(o.done, o.status, o.answer, o.reason) for o in answered] == [
        (False, 503, b"busy, later", "HTTP 503")
    ] * 2

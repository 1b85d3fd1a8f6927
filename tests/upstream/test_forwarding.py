"""Uplinks to an upstream T/CPMI 002 platform: the forwarder's t002 sink, and autoPay asked at once.

The upstream is the gateway's own uplink in memory behind a recording
requester (:class:`tests.upstream.test_session.Platform`), so it really checks
logins, tokens, signatures and repeats; the forwarder runs on a Clock over an
in-memory journal double that commits on the next turn of the clock, as the
group commit does.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from gateway import config
from gateway.forwarding import ForwardingEngine
from gateway.interfaces import Outcome, Split
from gateway.journal.kinds import FORWARDED_RECORD, HELD_RECORD, REJECTED_RECORD
from gateway.journal.record import Record, format_ts
from gateway.lotclient.uplink import UplinkError, parse_response
from gateway.protocol.results import Result
from gateway.protocol.signing import compact
from gateway.upstream.forwarding import QueryOutcome, UpstreamQueries, UpstreamSink, judge
from gateway.upstream.session import Exchange, UpstreamSession
from tests.journal.helpers import Harness
from tests.lots.harness import fired, lot_entry, result_of
from tests.protocol.samples import SAMPLES
from tests.test_logs import captured
from tests.upstream.test_session import URL, Platform, answering, refused

GATEWAY_ID = "gw-01"
SETTINGS = config.parse({}).cloud
# A platform's 9999 to a1: nothing against the message; it goes again (and counts as a repeat).
BUSY_A1 = b'{"code":"carIn","oprNum":"a1","resultCode":"9999","resultMessage":"busy"}'


def lot(park: str) -> dict[str, Any]:
    """The platform's configuration of a lot: park P00n logs in as lot00n."""
    return lot_entry(park_code=park, username=f"lot{park[1:]}")


def car_in(record_code: str, **changes: Any) -> dict[str, Any]:
    """A carIn's data (the standard's sample) about `record_code`."""
    data = dict(SAMPLES["carIn"])  # type: ignore[arg-type]
    data["recordCode"] = record_code
    data.update(changes)
    return data


def invalid_car_in() -> dict[str, Any]:
    """A carIn the platform refuses (9010): it names no record."""
    data = car_in("")
    del data["recordCode"]
    return data


def record(seq: int, kind: str, park: str, opr: str, body: object = None, code: str = "carIn") -> Record:
    return Record(seq, format_ts(1_795_000_000 + seq), kind, park, code, opr, body, "0" * 32)


def sessions_for(platform: Platform, parks: Sequence[str], journal: Any = None) -> dict[str, UpstreamSession]:
    """One upstream session per park, as the gateway keeps them (P00n logs in as lot00n)."""
    return {park: platform.session(park=park, username=f"lot{park[1:]}", journal=journal) for park in parks}


def outcomes_of(sink: UpstreamSink, records: list[Record]) -> Sequence[Outcome]:
    delivered = result_of(sink.deliver(sink.entries(records, 0.0)))
    assert not isinstance(delivered, Split), "the t002 sink never splits"
    return delivered


# judge: what an answer makes of an uplink


def exchange(status: int, text: str) -> Exchange:
    """What the session makes of an answer with `status` and body `text`."""
    try:
        response = parse_response(text)
    except UplinkError:
        response = None
    return Exchange(status, response if status == 200 else None, text)


def envelope(result_code: str, message: str = "") -> str:
    return compact(
        {
            "code": "carIn",
            "oprNum": "R1",
            "resultCode": result_code,
            "resultMessage": message,
            "signature": "",
            "data": {},
        }
    )


@pytest.mark.parametrize(
    ("status", "text", "done", "is_refused"),
    [
        (200, envelope("0000"), True, False),
        (200, envelope("9000", "token"), False, False),
        (200, envelope("9007", "too many"), False, False),
        (200, envelope("9010", "field"), True, True),
        (200, envelope("9104", "no such park"), True, True),
        (200, envelope("1234", "not in the standard"), True, True),
        (200, "<html>busy</html>", False, False),
        (503, "busy", False, False),
        (500, "oops", False, False),
        (408, "slow", False, False),
        (429, "calm down", False, False),
        (400, "bad", True, True),
        (404, "no such path", True, True),
    ],
)
def test_judge_sorts_answers_into_delivered_refused_and_not_yet(
    status: int, text: str, done: bool, is_refused: bool
) -> None:
    """0000 delivers; 9000, 9007, 5xx, 408, 429 and garbage go again; other codes and 4xx are refused."""
    outcome = judge(exchange(status, text))
    assert (outcome.done, outcome.refused, outcome.status) == (done, is_refused, status)
    if is_refused:
        assert outcome.answer == text.encode()
    if not done:
        assert outcome.reason


# the sink: entries


def test_entries_are_the_lots_uplinks_only() -> None:
    """Only `uplink` records of a park become entries, each with its data as compact JSON."""
    sink = UpstreamSink(
        url=URL, gateway_id=GATEWAY_ID, session_of=lambda park: None, clock=Clock(), settings=SETTINGS
    )
    records = [
        record(1, "token", "P001", "L1", {"user": "lot001"}, code="login"),
        record(2, "uplink", "P001", "R1", car_in("R1")),
        record(3, "query", "P001", "Q1", {"recordCode": "R1"}, code="autoPay"),
        record(4, "uplink", "", "R2", car_in("R2")),
        record(5, "forwarded", "", "", {"through": 4}, code=""),
        record(6, "online", "P002", "", {}, code=""),
        record(7, "uplink", "P002", "R3", car_in("R3")),
        record(8, HELD_RECORD, "P001", "R1", {"attempts": 6}),
        record(9, "rejected", "P001", "R1", {"seq": 2}),
    ]
    entries = sink.entries(records, 123.5)
    assert [(e.seq, e.park, e.code, e.opr) for e in entries] == [
        (2, "P001", "carIn", "R1"),
        (7, "P002", "carIn", "R3"),
    ]
    first = entries[0]
    assert first.id == "gw-01-2" and first.type == "org.cpmi.t002.carIn.v1"
    assert first.body == compact(car_in("R1")).encode() and json.loads(first.body) == car_in("R1")
    assert first.at == 123.5 and first.ts == records[1].ts
    assert sink.target == URL


# the sink: delivering


@pytest.fixture
def platform() -> Platform:
    return Platform([lot("P001"), lot("P002")])


def sink_for(
    platform: Platform, parks: Sequence[str] = ("P001", "P002"), concurrency: int = 16
) -> UpstreamSink:
    sessions = sessions_for(platform, parks)
    return UpstreamSink(
        url=URL,
        gateway_id=GATEWAY_ID,
        session_of=sessions.get,
        clock=platform.clock,
        settings=SETTINGS,
        concurrency=concurrency,
    )


def test_an_uplink_answered_0000_is_delivered(platform: Platform) -> None:
    """An uplink answered 0000 is delivered; it went as the standard's request with the lot's oprNum."""
    sink = sink_for(platform)
    [outcome] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert outcome == Outcome.delivered(200)
    assert platform.codes() == ["login", "carIn"] and platform.requests[-1].opr == "R1"
    assert json.loads(platform.requests[-1].data_text) == car_in("R1")
    assert platform.accepted() == [("P001", "R1")]


def test_a_9xxx_answer_is_refused_with_the_platforms_text(platform: Platform) -> None:
    """An uplink answered 9010 (or another 9xxx) is refused for good, with the platform's answer as text."""
    sink = sink_for(platform)
    [outcome] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", invalid_car_in())])
    assert outcome.done and outcome.refused and outcome.status == 200
    answer = json.loads(outcome.answer)
    assert answer["resultCode"] == "9010" and answer["oprNum"] == "R1"
    assert "recordCode" in answer["resultMessage"]
    assert platform.accepted() == []


def test_a_9007_is_not_done(platform: Platform) -> None:
    """An uplink the platform answers 9007 (its own repeat limit) is not done: it goes again later."""
    token = platform.uplink.login("lot001")
    for _ in range(6):  # the first request and its five repeats, sent by the lot itself
        answer = platform.uplink.send("carIn", car_in("R1"), token=token, opr="R1")
        assert answer["resultCode"] == "0000"
    sink = sink_for(platform)
    [outcome] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert not outcome.done and "9007" in outcome.reason


@pytest.mark.parametrize(
    ("status", "done"), [(503, False), (502, False), (408, False), (429, False), (400, True)]
)
def test_http_errors_are_not_done_or_refused_by_status(platform: Platform, status: int, done: bool) -> None:
    """HTTP 5xx, 408 and 429 are not done (sent again); another 4xx refuses the uplink with its body."""
    platform.fault = answering(status, b"the platform says no", code="carIn")
    [outcome] = outcomes_of(sink_for(platform), [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert (outcome.done, outcome.refused, outcome.status) == (done, done, status)
    if done:
        assert outcome.answer == b"the platform says no"
    else:
        assert outcome.reason == f"HTTP {status}"


def test_garbage_and_network_errors_are_not_done(platform: Platform) -> None:
    """An answer that is no envelope, a refused connection or no answer at all leaves the uplink not done."""
    sink = sink_for(platform)
    platform.fault = answering(200, b"<html>maintenance</html>", code="carIn")
    [garbage] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert not garbage.done and "maintenance" in garbage.reason
    platform.fault = refused()
    [unreachable] = outcomes_of(sink, [record(2, "uplink", "P001", "R2", car_in("R2"))])
    assert not unreachable.done and "refused" in unreachable.reason.lower()
    platform.fault = lambda sent: Deferred()
    waiting = sink.deliver(sink.entries([record(3, "uplink", "P001", "R3", car_in("R3"))], 0.0))
    platform.clock.advance(30)
    [silent] = result_of(waiting)  # type: ignore[misc]
    assert not silent.done and silent.reason


def test_a_refused_login_or_a_hold_is_not_done(platform: Platform) -> None:
    """A lot whose login is refused, or whose uplink the repeat rule holds, is not done (nor failed)."""
    wrong = platform.session(password="wrong-password")
    sink = UpstreamSink(
        url=URL, gateway_id=GATEWAY_ID, session_of=lambda park: wrong, clock=platform.clock, settings=SETTINGS
    )
    [outcome] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert not outcome.done and "9003" in outcome.reason
    failed = b'{"code":"carIn","oprNum":"R2","resultCode":"9999","resultMessage":"fail","data":{}}'
    platform.fault = answering(200, failed, code="carIn")
    sink = sink_for(platform)
    for _ in range(6):
        [busy] = outcomes_of(sink, [record(2, "uplink", "P001", "R2", car_in("R2"))])
        assert busy.reason == "upstream 9999 fail" and busy.retry_at is not None
    [held] = outcomes_of(sink, [record(2, "uplink", "P001", "R2", car_in("R2"))])
    assert not held.done and "B.2.3.6" in held.reason
    assert platform.sent("R2") == 6


def test_a_9999_failure_of_the_platform_is_not_done(platform: Platform) -> None:
    """A 9999 (the platform could not take the request now and says retry) leaves the uplink not done."""
    sink = sink_for(platform)
    [first] = outcomes_of(sink, [record(1, "uplink", "P001", "R1", car_in("R1"))])
    assert first.done
    platform.uplink.journal.broken = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    [outcome] = outcomes_of(sink, [record(2, "uplink", "P001", "R2", car_in("R2"))])
    assert json.loads(platform.requests[-1].param)["oprNum"] == "R2"
    assert not outcome.done, outcome


def test_a_failing_uplink_stops_its_lot_but_not_the_others(platform: Platform) -> None:
    """A lot's entries after its first not-done one are not sent; another lot's entries are delivered."""
    platform.fault = answering(503, b"busy", opr="A1")
    sink = sink_for(platform)
    records = [
        record(1, "uplink", "P001", "A1", car_in("A1")),
        record(2, "uplink", "P002", "B1", car_in("B1")),
        record(3, "uplink", "P001", "A2", car_in("A2")),
        record(4, "uplink", "P002", "B2", car_in("B2")),
    ]
    a1, b1, a2, b2 = outcomes_of(sink, records)
    assert not a1.done and a1.reason == "HTTP 503"
    assert not a2.done and "earlier uplink of lot P001" in a2.reason
    assert b1 == b2 == Outcome.delivered(200)
    assert platform.sent("A2") == 0
    assert platform.accepted() == [("P002", "B1"), ("P002", "B2")]


def test_an_unknown_park_is_refused(platform: Platform) -> None:
    """Uplinks of a park without an upstream account are refused, naming the park, and nothing is sent."""
    sink = sink_for(platform, parks=("P001",))
    outcomes = outcomes_of(
        sink, [record(1, "uplink", "P009", "X1", car_in("X1")), record(2, "uplink", "P009", "X2")]
    )
    assert [(o.done, o.refused, o.status) for o in outcomes] == [(True, True, 0), (True, True, 0)]
    assert b"P009" in outcomes[0].answer
    assert platform.requests == []


def test_lots_go_side_by_side_up_to_the_concurrency() -> None:
    """At most `concurrency` lots have a request in flight at once; each lot has at most one."""
    parks = ["P001", "P002", "P003", "P004"]
    platform = Platform([lot(park) for park in parks])
    sink = sink_for(platform, parks, concurrency=2)
    platform.hold = True
    records = [
        record(seq, "uplink", park, f"{park}-{n}", car_in(f"{park}-{n}"))
        for seq, (n, park) in enumerate(((n, park) for n in range(3) for park in parks), start=1)
    ]
    delivering = sink.deliver(sink.entries(records, 0.0))
    while platform.held:
        assert platform.in_flight <= 2 and len(platform.held) <= 2
        platform.release()
    assert platform.most_in_flight == 2
    outcomes = result_of(delivering)
    assert outcomes == [Outcome.delivered(200)] * len(records)
    for park in parks:
        assert [opr for p, opr in platform.accepted() if p == park] == [f"{park}-{n}" for n in range(3)]


# the forwarder with the sink


class MemoryJournal:
    """The journal as the forwarder and sessions see it, in memory; appends commit on the next clock turn."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.path = "/nonexistent/journal"  # never read: the forwarder keeps up from the live feed
        self.records: list[Record] = []
        self.committed_seq = 0
        self.commit_observers: list[Callable[[list[Record]], None]] = []
        self._pending: list[tuple[Record, Deferred[Record]]] = []

    @property
    def next_seq(self) -> int:
        """The seq the next record appended gets."""
        return self.committed_seq + len(self._pending) + 1

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Record]:
        body = json.loads(json.dumps(body))
        stored = Record(self.next_seq, format_ts(self.clock.seconds()), kind, park, code, opr, body, "")
        waiting: Deferred[Record] = Deferred()
        if not self._pending:
            self.clock.callLater(0, self._commit)
        self._pending.append((stored, waiting))
        return waiting

    def _commit(self) -> None:
        pending, self._pending = self._pending, []
        records = [stored for stored, _ in pending]
        self.records += records
        self.committed_seq = records[-1].seq
        for observer in list(self.commit_observers):
            observer(records)
        for stored, waiting in pending:
            waiting.callback(stored)

    def of(self, kind: str) -> list[Record]:
        return [r for r in self.records if r.kind == kind]


class Rig:
    """A forwarder with the t002 sink on a journal double, the platform's Clock, and sessions per lot."""

    def __init__(self, parks: Sequence[str] = ("P001", "P002"), **cloud: Any) -> None:
        self.platform = Platform([lot(park) for park in parks])
        self.clock = self.platform.clock
        self.journal = MemoryJournal(self.clock)
        self.sessions = sessions_for(self.platform, parks, journal=self.journal)
        self.settings = config.parse({"cloud": {"url": URL, "batch_max_delay": 0, **cloud}}).cloud
        self.sink = UpstreamSink(
            url=URL,
            gateway_id=GATEWAY_ID,
            session_of=self.sessions.get,
            clock=self.clock,
            settings=self.settings,
            # Each backoff drawn in the middle of its range, so that a test's attempt times do not
            # depend on the draw: with the shortest draws, six attempts fit in 7.75 s.
            random=lambda: 0.5,
        )
        self.reads: list[object] = []
        self.forwarder = ForwardingEngine(
            journal=self.journal,
            clock=self.clock,
            settings=self.settings,
            sink=self.sink,
            run_blocking=self.read,
            random=lambda: 1.0,
        )
        self.forwarder.start()

    def read(self, job: Callable[[], Any]) -> Deferred[Any]:
        self.reads.append(job)
        return fail(AssertionError("the journal double has no disk to read"))

    def uplink(self, park: str, opr: str, data: object = None) -> int:
        """Journal a lot's uplink; its seq."""
        seq = self.journal.next_seq
        self.journal.append("uplink", park, "carIn", opr, car_in(opr) if data is None else data)
        return seq

    def run(self, seconds: float, step: float = 0.5) -> None:
        """Let `seconds` pass on the clock, a step at a time."""
        self.clock.advance(0)
        for _ in range(round(seconds / step)):
            self.clock.advance(step)

    def accepted(self, park: str) -> list[str]:
        return [opr for p, opr in self.platform.accepted() if p == park]

    def throughs(self) -> list[int]:
        """The `through` of every forwarded and rejected record, in journal order."""
        return [
            int(r.body["through"])  # type: ignore[index]
            for r in self.journal.records
            if r.kind in (FORWARDED_RECORD, REJECTED_RECORD)
        ]

    def check(self) -> None:
        """What holds after every run: progress only grows, and the journal was never read from disk."""
        throughs = self.throughs()
        assert throughs == sorted(throughs) and len(set(throughs)) == len(throughs), throughs
        assert self.reads == []


def test_an_outage_then_recovery_delivers_everything_in_order_once() -> None:
    """Through an outage (connections refused) nothing is lost: each uplink is then taken once, in order."""
    rig = Rig()
    rig.uplink("P001", "a0")
    rig.uplink("P002", "b0")
    rig.run(1)
    assert rig.platform.accepted() == [("P001", "a0"), ("P002", "b0")]  # both lots are logged in
    rig.platform.fault = refused()
    for n in range(1, 4):
        rig.uplink("P001", f"a{n}")
        rig.journal.append("online", "P001", "", "", {"via": "http"})  # no uplink: stays in the journal
        rig.uplink("P002", f"b{n}")
    last = rig.journal.next_seq - 1
    rig.run(600)  # ten minutes: many more attempts than the six an hour, none of them reaching the platform
    assert rig.platform.accepted() == [("P001", "a0"), ("P002", "b0")]
    assert rig.platform.sent("a1") > 6 and rig.platform.sent("a2") == 0
    assert rig.forwarder.done_through < last
    rig.platform.fault = lambda sent: None
    rig.run(61)
    assert rig.accepted("P001") == ["a0", "a1", "a2", "a3"]
    assert rig.accepted("P002") == ["b0", "b1", "b2", "b3"]
    assert len(rig.platform.accepted()) == len(set(rig.platform.accepted()))
    assert rig.journal.of(HELD_RECORD) == []  # refused connections are no repeats
    assert rig.forwarder.done_through >= last
    rig.check()


def test_an_outage_before_the_first_login_delivers_after_the_login_backoff() -> None:
    """When even the logins fail, the sessions back off; once the platform is back all goes, once each."""
    rig = Rig()
    rig.platform.fault = refused()
    for n in range(3):
        rig.uplink("P001", f"a{n}")
        rig.uplink("P002", f"b{n}")
    rig.run(300)
    assert set(rig.platform.codes()) == {"login"} and rig.platform.accepted() == []
    assert rig.sessions["P001"].counters["login_failures"] > 1
    rig.platform.fault = lambda sent: None
    rig.run(400)  # the login backoff reaches 5 minutes at most
    assert rig.accepted("P001") == ["a0", "a1", "a2"] and rig.accepted("P002") == ["b0", "b1", "b2"]
    assert all(rig.platform.sent(opr) == 1 for opr in ("a0", "a1", "a2", "b0", "b1", "b2"))
    assert rig.forwarder.done_through == rig.journal.of(FORWARDED_RECORD)[-1].body["through"]  # type: ignore[index]
    rig.check()


def test_a_failing_lot_does_not_make_other_lots_be_sent_again() -> None:
    """While a lot's first uplink keeps failing, other lots' uplinks are sent once; progress waits for it."""
    rig = Rig()
    busy = answering(200, BUSY_A1, opr="a1")
    rig.platform.fault = lambda sent: busy(sent) if rig.platform.sent("a1") <= 4 else None
    a1 = rig.uplink("P001", "a1")
    rig.uplink("P002", "b1")
    rig.uplink("P001", "a2")
    rig.uplink("P002", "b2")
    rig.run(2)
    rig.uplink("P002", "b3")
    rig.run(1.5)
    assert rig.platform.sent("a1") == 4 and rig.platform.sent("a2") == 0
    assert rig.accepted("P002") == ["b1", "b2", "b3"] and rig.accepted("P001") == []
    assert rig.forwarder.done_through == a1 - 1
    assert rig.journal.of(FORWARDED_RECORD) == []
    rig.run(10)
    assert rig.accepted("P001") == ["a1", "a2"]
    assert [rig.platform.sent(opr) for opr in ("a1", "a2", "b1", "b2", "b3")] == [5, 1, 1, 1, 1]
    uplinks = [r.seq for r in rig.journal.of("uplink")]
    assert rig.forwarder.done_through >= max(uplinks)
    assert rig.forwarder.counters["events"] == 5
    [forwarded] = rig.journal.of(FORWARDED_RECORD)
    assert forwarded.body == {
        "first": a1,
        "last": max(uplinks),
        "events": 5,
        "status": 200,
        "through": max(uplinks),
    }
    rig.check()


def test_other_lots_deliveries_do_not_reset_a_failing_lots_backoff() -> None:
    """A failing uplink backs off while other lots deliver, so a 10 s failure does not get it held an hour."""
    rig = Rig()
    failing = True
    busy = answering(200, BUSY_A1, opr="a1")
    rig.platform.fault = lambda sent: busy(sent) if failing else None
    rig.uplink("P001", "a1")
    for n in range(10):
        rig.uplink("P002", f"b{n}")  # another lot's traffic, one uplink a second
        rig.run(1)
    failing = False
    rig.run(60)
    assert rig.journal.of(HELD_RECORD) == []
    assert rig.accepted("P001") == ["a1"]


def test_a_short_503_outage_does_not_hold_uplinks_for_an_hour() -> None:
    """After the platform answered 503 for 30 s, the lots' uplinks go within minutes, not an hour."""
    rig = Rig()
    rig.uplink("P001", "a0")
    rig.run(1)  # logged in
    rig.platform.fault = answering(503, b"maintenance", code="carIn")
    rig.uplink("P001", "a1")
    rig.uplink("P002", "b1")
    rig.run(30)
    rig.platform.fault = lambda sent: None
    rig.run(600, step=5)
    assert rig.accepted("P001") == ["a0", "a1"] and rig.accepted("P002") == ["b1"]


def test_a_refused_uplink_becomes_a_rejected_record_and_its_lot_goes_on() -> None:
    """A refused uplink is journaled `rejected` with the platform's answer; the lot's next one follows."""
    rig = Rig()
    a1 = rig.uplink("P001", "a1", invalid_car_in())
    rig.uplink("P002", "b1")
    rig.uplink("P001", "a2")
    rig.run(1)
    [rejected] = rig.journal.of(REJECTED_RECORD)
    assert (rejected.park, rejected.code, rejected.opr) == ("P001", "carIn", "a1")
    body = rejected.body
    assert isinstance(body, dict)
    assert body["seq"] == a1 and body["id"] == f"{GATEWAY_ID}-{a1}" and body["status"] == 200
    assert json.loads(body["answer"])["resultCode"] == "9010" and body["through"] == a1
    assert rig.platform.sent("a1") == 1  # refused for good: not sent again
    rig.run(120)
    assert rig.platform.sent("a1") == 1
    assert rig.accepted("P001") == ["a2"] and rig.accepted("P002") == ["b1"]
    assert rig.forwarder.counters["rejected"] == 1
    rig.check()


def test_an_uplink_held_by_the_repeat_rule_goes_once_the_hour_allows() -> None:
    """After six answered attempts in an hour an uplink is held (one upstream-held record), then goes."""
    rig = Rig()
    busy = answering(200, BUSY_A1, opr="a1")
    rig.platform.fault = lambda sent: busy(sent) if rig.platform.sent("a1") <= 6 else None
    rig.uplink("P001", "a1")
    rig.uplink("P001", "a2")
    rig.uplink("P002", "b1")
    rig.run(60, step=1)
    assert rig.platform.sent("a1") == 6 and rig.accepted("P002") == ["b1"]
    [held] = rig.journal.of(HELD_RECORD)
    assert held.park == "P001" and held.opr == "a1"
    rig.run(3500, step=5)
    assert rig.accepted("P001") == [] and rig.platform.sent("a1") == 6
    rig.run(120, step=5)
    assert rig.accepted("P001") == ["a1", "a2"] and rig.platform.sent("a1") == 7
    assert len(rig.journal.of(HELD_RECORD)) == 1
    rig.check()


def test_another_lots_new_uplink_does_not_wait_out_a_failing_lots_backoff() -> None:
    """A new uplink of a healthy lot goes within seconds even while another lot's uplink is backing off."""
    rig = Rig()
    rig.sessions["P001"] = rig.platform.session(park="P001", username="lot001", password="wrong-password")
    rig.uplink("P001", "a1")
    rig.run(300)  # lot P001 cannot log in upstream: its uplink backs off to a minute
    retries = rig.forwarder.counters["retries"]
    while rig.forwarder.counters["retries"] == retries:
        rig.run(0.5)
    rig.uplink("P002", "b1")  # just after a failed attempt
    rig.run(5)
    assert rig.accepted("P002") == ["b1"]


def test_a_refused_and_a_delivered_uplink_keep_the_progress_increasing() -> None:
    """`forwarded` and `rejected` records come in journal order, each `through` beyond the one before."""
    rig = Rig()
    for n in range(4):
        rig.uplink("P001", f"a{n}", invalid_car_in() if n % 2 else None)
        rig.uplink("P002", f"b{n}", invalid_car_in() if n == 2 else None)
        rig.run(0.5)
    rig.run(2)
    assert len(rig.journal.of(REJECTED_RECORD)) == 3
    assert rig.accepted("P001") == ["a0", "a2"] and rig.accepted("P002") == ["b0", "b1", "b3"]
    assert rig.throughs()[-1] == rig.forwarder.done_through
    rig.check()


def test_a_stuck_lot_does_not_stop_the_others_once_the_buffer_is_full(tmp_path: Path) -> None:
    """However long a lot's uplink fails, other lots' uplinks keep going (a real journal, a small buffer)."""
    h = Harness(tmp_path / "journal")
    platform = Platform([lot("P001"), lot("P002")])
    sessions = sessions_for(platform, ("P001", "P002"), journal=h.journal)
    sessions["P001"] = platform.session(park="P001", username="lot001", password="wrong-password")
    settings = config.parse({"cloud": {"url": URL, "batch_max_delay": 0, "batch_max_events": 2}}).cloud
    sink = UpstreamSink(
        url=URL, gateway_id=GATEWAY_ID, session_of=sessions.get, clock=platform.clock, settings=settings
    )
    forwarder = ForwardingEngine(
        journal=h.journal,
        clock=h.clock,
        settings=settings,
        sink=sink,
        run_blocking=lambda job: succeed(None).addCallback(lambda _: job()),
        random=lambda: 1.0,
    )
    forwarder.start()

    def run(seconds: float) -> None:
        for _ in range(round(seconds / 0.5)):
            h.clock.advance(0.5)
            platform.clock.advance(0.5)
            h.settle()

    try:
        h.journal.append("uplink", "P001", "carIn", "a1", car_in("a1"))
        for n in range(20):
            h.journal.append("uplink", "P002", "carIn", f"b{n}", car_in(f"b{n}"))
            run(1)
        run(120)
        assert [opr for park, opr in platform.accepted() if park == "P002"] == [f"b{n}" for n in range(20)]
    finally:
        forwarder.stop()
        h.close()


# queries (autoPay)


class Answers:
    """The platform's own answers to autoPay: one outcome for every query it is asked."""

    def __init__(self, outcome: QueryOutcome) -> None:
        self.outcome = outcome
        self.asked: list[Record] = []

    def ask(self, query: Record) -> Deferred[Any]:
        self.asked.append(query)
        return succeed(self.outcome)


AUTO_PAY = {"recordCode": "R1", "carNum": "京A12345", "payMoney": 10.0}
PAID = {"payStatus": 1, "orderCode": "O-1", "actualPay": 10.0, "failReason": 0}


def query(park: str = "P001", opr: str = "Q1", body: object = None) -> Record:
    return record(40, "query", park, opr, AUTO_PAY if body is None else body, code="autoPay")


def queries_for(
    platform: Platform, deadlines: dict[str, float] | None = None
) -> tuple[UpstreamQueries, dict[str, UpstreamSession]]:
    sessions = sessions_for(platform, ("P001",))
    return UpstreamQueries(session_of=sessions.get, clock=platform.clock, deadlines=deadlines), sessions


def test_a_query_gets_the_platforms_answer_and_data() -> None:
    """autoPay goes at once with the lot's oprNum; the platform's 0000, message and data are the answer."""
    answers = Answers(QueryOutcome("0000", "paid by the platform", PAID))
    platform = Platform([lot("P001")], queries=answers)
    queries, _ = queries_for(platform)
    outcome = result_of(queries.ask(query()))
    # What the platform answered, as it journaled it.
    [answered] = [r for r in platform.uplink.journal.records if r.kind == "answer"]
    assert answered.body["resultCode"] == "0000" and "paid by the platform" in answered.body["resultMessage"]
    assert outcome.result_code == "0000" and outcome.data == PAID
    # The lot side writes the standard's text before the message: the lot reads what the platform wrote.
    assert Result.OK.message(outcome.message) == answered.body["resultMessage"]
    assert platform.codes() == ["login", "autoPay"] and platform.requests[-1].opr == "Q1"
    [asked] = answers.asked
    assert asked.code == "autoPay" and asked.body == AUTO_PAY


def test_a_query_passes_the_platforms_9xxx_through() -> None:
    """A 9xxx of the platform reaches the lot as it is: its code and message."""
    answers = Answers(QueryOutcome("9501", "not registered for online payment", None))
    platform = Platform([lot("P001")], queries=answers)
    queries, _ = queries_for(platform)
    outcome = result_of(queries.ask(query()))
    assert outcome.result_code == "9501" and "not registered" in outcome.message
    invalid = result_of(queries.ask(query(opr="Q2", body={"carNum": "京A12345"})))
    assert invalid.result_code == "9010" and "recordCode" in invalid.message


def test_a_query_unanswered_before_its_deadline_is_9999() -> None:
    """No answer within the query's deadline (1 s for autoPay, or [deadlines]) gives the lot 9999 then."""
    platform = Platform([lot("P001")])
    queries, sessions = queries_for(platform, deadlines={"autoPay": 3.0})
    assert result_of(sessions["P001"].send("carIn", compact(car_in("R0")), "R0")).result_code == "0000"
    platform.fault = lambda sent: Deferred()
    waiting = queries.ask(query())
    platform.clock.advance(2.999)
    assert not fired(waiting)
    platform.clock.advance(0.001)
    outcome = result_of(waiting)
    assert outcome.result_code == "9999" and outcome.data is None


def test_a_query_unanswered_before_its_deadline_says_so() -> None:
    """The 9999 of a passed deadline names the deadline; it is no warning that the upstream is unreachable."""
    platform = Platform([lot("P001")])
    queries, sessions = queries_for(platform)
    assert result_of(sessions["P001"].send("carIn", compact(car_in("R0")), "R0")).result_code == "0000"
    platform.fault = lambda sent: Deferred()
    with captured() as events:
        waiting = queries.ask(query())
        platform.clock.advance(1.0)
    outcome = result_of(waiting)
    assert outcome.result_code == "9999"
    assert outcome.message == "no answer from the upstream within 1 s"
    assert not [event for event in events if "cannot be asked" in str(event.get("log_format"))]


def test_a_query_whose_deadline_passes_during_the_login_leaves_the_login_going() -> None:
    """A deadline that passes while the session logs in gives the lot 9999; the login goes on for the rest."""
    platform = Platform([lot("P001")])
    queries, sessions = queries_for(platform)
    session = sessions["P001"]
    platform.hold = True
    waiting = queries.ask(query())  # starts the login
    forwarded = session.send("carIn", compact(car_in("R1")), "R1")  # waits for the same login
    platform.clock.advance(1.0)
    assert result_of(waiting).result_code == "9999"
    platform.release()  # the login's answer
    platform.release()  # the carIn's
    assert result_of(forwarded).result_code == "0000"
    assert session.counters["login_failures"] == 0 and session.counters["logins"] == 1
    assert platform.codes() == ["login", "carIn"]


def test_a_query_of_a_lot_without_an_account_is_9999() -> None:
    """A query of a park without an upstream session is answered 9999 at once, naming the lot."""
    platform = Platform([lot("P001")])
    queries = UpstreamQueries(session_of=lambda park: None, clock=platform.clock)
    outcome = result_of(queries.ask(query(park="P009")))
    assert outcome.result_code == "9999" and "P009" in outcome.message
    assert platform.requests == []


def test_a_query_of_a_lot_whose_login_is_refused_is_9999() -> None:
    """A query of a lot the platform does not let in is answered 9999 saying why."""
    platform = Platform([lot("P001")])
    wrong = platform.session(password="wrong-password")
    queries = UpstreamQueries(session_of=lambda park: wrong, clock=platform.clock)
    outcome = result_of(queries.ask(query()))
    assert outcome.result_code == "9999" and "9003" in outcome.message

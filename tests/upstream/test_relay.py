"""The relay: what a lot answers, through the gateway, to the ACKs of an upstream T/CPMI 002 platform."""

from __future__ import annotations

import json
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent

from gateway.dialects.interface import Unsupported
from gateway.interfaces import DeadlinePassed, LotReply, NotConnected
from gateway.journal.kinds import UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import Backoff, DownlinkClient, DownlinkReply
from gateway.protocol.envelope import Request, ack_frame
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from gateway.upstream.relay import Relay
from tests.journal.helpers import logs_of
from tests.simulator.helpers import PumpEndpoint

PARK = "P001"
NAMESPACE = "gateway.upstream.relay"
GATE = {"barCode": "G1", "isOpen": 1}
OPENED = LotReply("0000", "操作成功", {"barCode": "G1", "status": 1})


class FakeLots:
    """Lots that answer each command with `reply`, fail with `error`, or leave it pending (both None)."""

    def __init__(self, reply: LotReply | None = OPENED, error: Exception | None = None) -> None:
        self.reply = reply
        self.error = error
        self.supported = True
        self.sent: list[tuple[str, str, object]] = []
        self.pending: list[Deferred[LotReply]] = []
        self.cancelled = 0
        self.on_command: Any = None

    def supports(self, park: str, code: str) -> bool:
        return self.supported

    def command(self, park: str, code: str, data: object) -> Deferred[LotReply]:
        self.sent.append((park, code, data))
        if self.on_command is not None:
            self.on_command()
        if self.error is not None:
            return fail(self.error)
        if self.reply is not None:
            return succeed(self.reply)

        def cancel(_: Deferred[LotReply]) -> None:
            self.cancelled += 1

        waiting: Deferred[LotReply] = Deferred(cancel)
        self.pending.append(waiting)
        return waiting


class FakeSync:
    """A sync queue that records entries and gives them seqs from 100, or fails when `broken`."""

    def __init__(self) -> None:
        self.entries: list[tuple[str, str, object, str]] = []
        self.broken = False

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]:
        if self.broken:
            return fail(OSError("no space left on device"))
        self.entries.append((park, code, data, client))
        return succeed(99 + len(self.entries))


class FakeJournal:
    """A journal that keeps records in a list, and fails the appends of the kinds in `failing`."""

    def __init__(self) -> None:
        self.records: list[tuple[str, str, str, str, object]] = []
        self.failing: set[str] = set()

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Any]:
        if kind in self.failing:
            return fail(OSError("no space left on device"))
        self.records.append((kind, park, code, opr, body))
        return succeed(len(self.records))

    def kinds(self) -> list[str]:
        return [record[0] for record in self.records]


def relay(
    lots: FakeLots | None = None,
    sync: FakeSync | None = None,
    journal: FakeJournal | None = None,
    clock: Clock | None = None,
    deadlines: dict[str, float] | None = None,
) -> Relay:
    return Relay(
        park=PARK,
        lots=lots or FakeLots(),
        sync=sync,
        journal=journal or FakeJournal(),
        clock=clock or Clock(),
        deadlines=deadlines or {},
    )


def ack(code: str = "gateOpen", data: object = GATE, opr: str = "up-1") -> Request:
    """An upstream ACK as the DownlinkClient hands it over (signature already checked)."""
    return Request("U" * 32, code, opr, "", data, compact(data))


def answered(deferred: Deferred[DownlinkReply]) -> DownlinkReply:
    """The reply a Deferred fired with; it must have fired, and not failed."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert len(results) == 1, "not answered"
    assert isinstance(results[0], DownlinkReply), results[0]
    return results[0]


def failures(events: list[LogEvent]) -> list[Any]:
    return [event["log_failure"] for event in events if "log_failure" in event]


# --- commands -------------------------------------------------------------------------


def test_a_command_is_journaled_sent_to_the_lot_and_its_reply_returned_and_journaled() -> None:
    """A gateOpen ACK is journaled before the lot gets it (data normalized); the lot's REPLY is journaled."""
    lots, journal = FakeLots(), FakeJournal()
    seen: list[list[str]] = []
    lots.on_command = lambda: seen.append(journal.kinds())
    subject = relay(lots=lots, journal=journal)
    reply = answered(subject.answer(ack()))
    assert reply == DownlinkReply("0000", "操作成功", {"barCode": "G1", "status": 1})
    assert seen == [[UPSTREAM_ACK_RECORD]]
    assert lots.sent == [(PARK, "gateOpen", {"barCode": "G1", "isOpen": True})]
    assert journal.records == [
        (UPSTREAM_ACK_RECORD, PARK, "gateOpen", "up-1", {"data": GATE}),
        (
            UPSTREAM_REPLY_RECORD,
            PARK,
            "gateOpen",
            "up-1",
            {"resultCode": "0000", "resultMessage": "操作成功", "data": {"barCode": "G1", "status": 1}},
        ),
    ]
    assert subject.counters == {
        "acks": 1,
        "replied": 1,
        "not_connected": 0,
        "deadline": 0,
        "refused": 0,
        "failed": 0,
    }


def test_the_record_kinds_are_the_contracts() -> None:
    """The journal kinds are upstream-ack and upstream-reply."""
    assert (UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD) == ("upstream-ack", "upstream-reply")


def test_a_table_one_number_is_sent_and_journaled_as_the_mnemonic() -> None:
    """An ACK naming gateOpen by its Table-1 number "21" reaches the lot and the journal as gateOpen."""
    lots, journal = FakeLots(), FakeJournal()
    answered(relay(lots=lots, journal=journal).answer(ack(code="21")))
    assert [code for _, code, _ in lots.sent] == ["gateOpen"]
    assert [record[2] for record in journal.records] == ["gateOpen", "gateOpen"]


def test_a_lot_reply_without_data_is_answered_with_an_empty_object() -> None:
    """A LotReply whose data is None becomes a REPLY with data {}."""
    lots = FakeLots(reply=LotReply("9999", "操作失败: jammed", None))
    reply = answered(relay(lots=lots).answer(ack()))
    assert reply == DownlinkReply("9999", "操作失败: jammed", {})


def test_a_lot_that_is_not_connected_is_answered_9008_at_once() -> None:
    """NotConnected from the lots is a 9008 REPLY naming the park, without waiting."""
    subject = relay(lots=FakeLots(error=NotConnected(PARK)))
    reply = answered(subject.answer(ack()))
    assert reply.result_code == "9008" and "park P001 has no downlink connection" in reply.result_message
    assert subject.counters["not_connected"] == 1


def test_a_lot_past_its_deadline_is_answered_9009() -> None:
    """DeadlinePassed from the lots is a 9009 REPLY."""
    subject = relay(lots=FakeLots(error=DeadlinePassed(PARK, "gateOpen", 2.0)))
    reply = answered(subject.answer(ack()))
    assert reply.result_code == "9009" and subject.counters["deadline"] == 1


def test_a_lot_that_never_replies_is_answered_9009_at_the_deadline() -> None:
    """A command still pending at its deadline (from `deadlines`) is cancelled and answered 9009."""
    clock, lots, journal = Clock(), FakeLots(reply=None), FakeJournal()
    subject = relay(lots=lots, journal=journal, clock=clock, deadlines={"gateOpen": 5.0})
    results: list[Any] = []
    subject.answer(ack()).addBoth(results.append)
    clock.advance(4.9)
    assert results == [] and journal.kinds() == [UPSTREAM_ACK_RECORD]
    clock.advance(0.1)
    [reply] = results
    assert isinstance(reply, DownlinkReply) and reply.result_code == "9009"
    assert lots.cancelled == 1 and journal.kinds() == [UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD]
    assert subject.counters["deadline"] == 1


def test_the_catalog_deadline_applies_without_an_override() -> None:
    """Without an override, gateOpen's deadline is the catalog's 2 s."""
    clock = Clock()
    subject = relay(lots=FakeLots(reply=None), clock=clock)
    results: list[Any] = []
    subject.answer(ack()).addBoth(results.append)
    clock.advance(1.9)
    assert results == []
    clock.advance(0.1)
    assert [reply.result_code for reply in results] == ["9009"]


def test_a_dialect_without_the_downlink_is_answered_9001() -> None:
    """Unsupported from the lots (the dialect has no counterpart) is a 9001 REPLY."""
    subject = relay(lots=FakeLots(error=Unsupported("bolink", "gateOpen")))
    reply = answered(subject.answer(ack()))
    assert reply.result_code == "9001" and "gateOpen" in reply.result_message
    assert subject.counters["refused"] == 1


def test_an_unexpected_error_of_the_lots_is_answered_9999_and_logged() -> None:
    """Any other failure of the command is a 9999 REPLY and a logged failure."""
    subject = relay(lots=FakeLots(error=RuntimeError("boom")))
    with logs_of(NAMESPACE) as events:
        reply = answered(subject.answer(ack()))
    assert reply.result_code == "9999" and subject.counters["failed"] == 1
    assert [failure.check(RuntimeError) for failure in failures(events)] == [RuntimeError]


def test_lots_that_raise_do_not_make_the_answer_fail() -> None:
    """Even a supports() that raises gives a 9999 REPLY, journaled, never a failed Deferred."""

    class Broken(FakeLots):
        def supports(self, park: str, code: str) -> bool:
            raise RuntimeError("boom")

    journal = FakeJournal()
    with logs_of(NAMESPACE):
        reply = answered(relay(lots=Broken(), journal=journal).answer(ack()))
    assert reply.result_code == "9999"
    assert journal.kinds() == [UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD]


# --- refusals -------------------------------------------------------------------------


def test_an_unknown_code_is_answered_9001_naming_it() -> None:
    """An ACK with a code the catalog does not know is journaled and answered 9001 naming the code."""
    lots, journal = FakeLots(), FakeJournal()
    subject = relay(lots=lots, journal=journal)
    reply = answered(subject.answer(ack(code="openSesame")))
    assert reply.result_code == "9001" and "openSesame" in reply.result_message
    assert lots.sent == [] and journal.kinds() == [UPSTREAM_ACK_RECORD, UPSTREAM_REPLY_RECORD]
    assert journal.records[0][2] == "openSesame" and subject.counters["refused"] == 1


def test_an_interface_that_is_not_a_downlink_is_answered_9001() -> None:
    """An uplink-only code (carIn) sent down is answered 9001 naming it, and not passed to the lot."""
    lots = FakeLots()
    reply = answered(relay(lots=lots).answer(ack(code="carIn", data={"recordCode": "R1"})))
    assert reply.result_code == "9001" and "carIn" in reply.result_message and lots.sent == []


def test_an_invalid_field_is_answered_9010_naming_it() -> None:
    """Data the catalog refuses is answered 9010 with the field and why, and not passed to the lot."""
    lots = FakeLots()
    subject = relay(lots=lots)
    reply = answered(subject.answer(ack(data={"isOpen": 1})))
    assert reply.result_code == "9010" and "data.barCode: required" in reply.result_message
    assert lots.sent == [] and subject.counters["refused"] == 1


def test_a_code_the_lots_dialect_lacks_is_answered_9001() -> None:
    """When the lot's dialect cannot carry the code, the REPLY is 9001 naming park and code."""
    lots = FakeLots()
    lots.supported = False
    reply = answered(relay(lots=lots).answer(ack()))
    assert reply.result_code == "9001" and "park P001's dialect has no gateOpen" in reply.result_message
    assert lots.sent == []


# --- sync downlinks -------------------------------------------------------------------


def test_a_sync_downlink_is_queued_and_answered_0000_with_its_seq() -> None:
    """A blacklist ACK is queued (client "upstream", data normalized); the REPLY says so, with its seq."""
    lots, sync, journal = FakeLots(), FakeSync(), FakeJournal()
    subject = relay(lots=lots, sync=sync, journal=journal)
    reply = answered(subject.answer(ack(code="blacklist", data={"carNum": "粤B12345", "paymentStatus": "1"})))
    assert sync.entries == [(PARK, "blacklist", {"carNum": "粤B12345", "paymentStatus": 1}, "upstream")]
    assert reply.result_code == "0000" and reply.data == {}
    assert "queued" in reply.result_message and "100" in reply.result_message
    assert lots.sent == [] and subject.counters["replied"] == 1
    assert journal.records[1] == (
        UPSTREAM_REPLY_RECORD,
        PARK,
        "blacklist",
        "up-1",
        {"resultCode": "0000", "resultMessage": reply.result_message, "data": {}},
    )


def test_a_sync_downlink_that_cannot_be_queued_is_answered_9999() -> None:
    """When the sync queue fails to store the entry, the REPLY is 9999 and the failure logged."""
    sync = FakeSync()
    sync.broken = True
    subject = relay(sync=sync)
    with logs_of(NAMESPACE) as events:
        reply = answered(subject.answer(ack(code="blacklist", data={"carNum": "粤B12345"})))
    assert reply.result_code == "9999" and subject.counters["failed"] == 1
    assert len(failures(events)) == 1


def test_a_sync_downlink_without_a_sync_queue_is_answered_9999() -> None:
    """Without a sync queue, a sync-class ACK is answered 9999 "sync delivery not available"."""
    reply = answered(relay(sync=None).answer(ack(code="blacklist", data={"carNum": "粤B12345"})))
    assert reply.result_code == "9999" and "sync delivery not available" in reply.result_message


# --- the journal failing --------------------------------------------------------------


def test_an_ack_that_cannot_be_journaled_is_answered_9999_and_not_relayed() -> None:
    """An ACK that cannot be stored is answered 9999 "not stored" and logged; the lot never sees it."""
    lots, journal = FakeLots(), FakeJournal()
    journal.failing = {UPSTREAM_ACK_RECORD}
    subject = relay(lots=lots, journal=journal)
    with logs_of(NAMESPACE) as events:
        reply = answered(subject.answer(ack()))
    assert reply.result_code == "9999" and "not stored" in reply.result_message
    assert lots.sent == [] and subject.counters["failed"] == 1
    assert [failure.check(OSError) for failure in failures(events)] == [OSError]
    assert journal.kinds() == [UPSTREAM_REPLY_RECORD]


def test_a_reply_that_cannot_be_journaled_is_logged_and_still_sent() -> None:
    """If the REPLY cannot be stored, it is logged and the lot's REPLY still returned."""
    lots, journal = FakeLots(), FakeJournal()
    journal.failing = {UPSTREAM_REPLY_RECORD}
    subject = relay(lots=lots, journal=journal)
    with logs_of(NAMESPACE) as events:
        reply = answered(subject.answer(ack()))
    assert reply.result_code == "0000" and reply.data == {"barCode": "G1", "status": 1}
    assert [failure.check(OSError) for failure in failures(events)] == [OSError]
    assert journal.kinds() == [UPSTREAM_ACK_RECORD] and subject.counters["replied"] == 1


# --- through a DownlinkClient ---------------------------------------------------------

UPSTREAM_TOKEN = "A" * 32
UPSTREAM_SECRET = "upstream-secret"


class ScriptedUpstream(Protocol):
    """An upstream platform's downlink port: answers heartbeats 0000, keeps every other frame it gets."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.heartbeat_tokens: list[str] = []
        self._decoder = FrameDecoder(2**20)

    def dataReceived(self, data: bytes) -> None:
        for payload in self._decoder.feed(data):
            assert isinstance(payload, bytes)
            message = json.loads(payload)
            if message.get("code") == "heartbeat" and "resultCode" not in message:
                self.heartbeat_tokens.append(message["token"])
                self.transport.write(  # type: ignore[union-attr]
                    encode_frame(
                        {
                            "code": "heartbeat",
                            "oprNum": message["oprNum"],
                            "resultCode": "0000",
                            "resultMessage": "",
                            "signature": sign("{}", UPSTREAM_TOKEN, UPSTREAM_SECRET),
                            "data": {},
                        }
                    )
                )
            else:
                self.received.append(message)


class UpstreamFactory(Factory):
    def __init__(self) -> None:
        self.protocols: list[ScriptedUpstream] = []

    def buildProtocol(self, addr: IAddress | None) -> ScriptedUpstream:
        self.protocols.append(ScriptedUpstream())
        return self.protocols[-1]


def test_a_downlink_client_relays_an_upstream_gate_open_and_replies_signed() -> None:
    """As a DownlinkClient's answer, the relay gets the upstream's gateOpen; the REPLY goes back signed."""
    clock, upstream, journal = Clock(), UpstreamFactory(), FakeJournal()
    lots = FakeLots()
    subject = relay(lots=lots, journal=journal, clock=clock)
    endpoint = PumpEndpoint(upstream)
    client = DownlinkClient(
        endpoint=endpoint,
        clock=clock,
        credentials=LotCredentials(PARK, "up-user", "up-password", UPSTREAM_SECRET),
        answer=subject.answer,
        token=lambda: UPSTREAM_TOKEN,
        backoff=Backoff(initial=1.0),
    )
    client.start()
    assert endpoint.pump is not None
    endpoint.pump.flush()
    assert client.bound
    [server] = upstream.protocols
    assert server.heartbeat_tokens == [UPSTREAM_TOKEN]
    assert server.transport is not None
    server.transport.write(ack_frame("gateOpen", "up-77", UPSTREAM_TOKEN, UPSTREAM_SECRET, GATE))
    endpoint.pump.flush()
    [reply] = server.received
    assert reply["code"] == "gateOpen" and reply["oprNum"] == "up-77"
    assert reply["resultCode"] == "0000" and reply["data"] == {"barCode": "G1", "status": 1}
    assert reply["signature"] == sign(compact(reply["data"]), UPSTREAM_TOKEN, UPSTREAM_SECRET)
    assert lots.sent == [(PARK, "gateOpen", {"barCode": "G1", "isOpen": True})]
    assert [(kind, opr) for kind, _, _, opr, _ in journal.records] == [
        (UPSTREAM_ACK_RECORD, "up-77"),
        (UPSTREAM_REPLY_RECORD, "up-77"),
    ]
    client.stop()
    endpoint.pump.flush()
    assert subject.counters["acks"] == 1 and client.counters.replies == 1

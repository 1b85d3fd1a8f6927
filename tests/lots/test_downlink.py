"""The downlink's decisions: binds, heartbeats, commands and deadlines, the idle sweep."""

from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from gateway import config
from gateway.interfaces import DeadlinePassed, LotReply, LotState, NotConnected
from gateway.journal.kinds import OFFLINE_RECORD, ONLINE_RECORD
from gateway.lots.downlink import LOGINS_PER_TURN, Downlinks
from gateway.lots.sessions import Sessions
from gateway.lots.tcp import DownlinkProtocol
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD, ZONE, MemoryJournal, SyncPasswords, fired, lot_entry
from tests.test_logs import captured

START = "2026-11-24 10:00:00"


class Lot:
    """A lot's end of one in-memory downlink connection."""

    def __init__(self, gateway: Gateway, protocol: DownlinkProtocol, transport: StringTransport) -> None:
        self.gateway = gateway
        self.protocol = protocol
        self.transport = transport
        self.decoder = FrameDecoder(10_000_000)
        self.lost = False

    def send_bytes(self, data: bytes) -> None:
        """Write raw bytes to the gateway."""
        self.protocol.dataReceived(data)
        self.gateway.settle()

    def send(self, message: dict[str, Any]) -> None:
        """Write one message as a frame."""
        self.send_bytes(encode_frame(message))

    def request(
        self,
        code: str,
        data: Any = None,
        token: str = "",
        secret: str = "s3cret",
        opr: str | None = None,
        signature: str | None = None,
    ) -> str:
        """Send a signed request envelope; return its oprNum."""
        opr = opr if opr is not None else uuid.uuid4().hex
        text = compact(data) if data is not None else ""
        envelope: dict[str, Any] = {
            "token": token,
            "code": code,
            "oprNum": opr,
            "signature": sign(text, token, secret) if signature is None else signature,
        }
        if data is not None:
            envelope["data"] = data
        self.send(envelope)
        return opr

    def reply(
        self,
        opr: str,
        data: Any,
        token: str,
        secret: str = "s3cret",
        code: str = "gateOpen",
        result: str = "0000",
        signature: str | None = None,
    ) -> None:
        """Send a REPLY (a response envelope) to an ACK."""
        text = compact(data)
        self.send(
            {
                "code": code,
                "oprNum": opr,
                "resultCode": result,
                "resultMessage": "ok",
                "signature": sign(text, token, secret) if signature is None else signature,
                "data": data,
            }
        )

    def frames(self) -> list[bytes]:
        """The frame payloads the gateway wrote since the last call, still escaped."""
        data = self.transport.value()
        self.transport.clear()
        return [event for event in self.decoder.feed(data) if isinstance(event, bytes)]

    def received(self) -> list[dict[str, Any]]:
        """The messages the gateway wrote since the last call."""
        return [json.loads(payload) for payload in self.frames()]

    def login(self, username: str = "lot001", password: str = PASSWORD, secret: str = "s3cret") -> str:
        """Bind by login; return the token."""
        self.request("login", {"parkUserName": username, "parkUserPwd": password}, secret=secret)
        [answer] = self.received()
        assert answer["resultCode"] == "0000", answer
        token: str = answer["data"]["token"]
        return token

    @property
    def closed(self) -> bool:
        """Whether the gateway closed this connection."""
        return bool(self.transport.disconnecting)

    def disconnect(self) -> None:
        """The lot closes the connection."""
        self.lost = True
        self.protocol.connectionLost(Failure(ConnectionDone()))


class Gateway:
    """A Downlinks with its collaborators in memory, and lots connecting to it."""

    def __init__(
        self,
        lots: list[dict[str, Any]] | None = None,
        tcp: dict[str, Any] | None = None,
        deadlines: dict[str, float] | None = None,
        logins_per_turn: int = LOGINS_PER_TURN,
    ) -> None:
        self.clock = Clock()
        self.clock.advance(datetime.strptime(START, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE).timestamp())
        self.settings = config.parse({"lot": lots if lots is not None else [lot_entry()], "tcp": tcp or {}})
        self.journal = MemoryJournal(self.clock)
        self.sessions = Sessions(self.clock, ZONE)
        self.downlinks = Downlinks(
            config=self.settings,
            sessions=self.sessions,
            passwords=SyncPasswords(),
            journal=self.journal,
            clock=self.clock,
            deadlines=deadlines,
            logins_per_turn=logins_per_turn,
        )
        self.factory = self.downlinks.factory()
        self.lots: list[Lot] = []

    def connect(self, port: int = 40000) -> Lot:
        """A new connection from a lot."""
        protocol = self.factory.buildProtocol(IPv4Address("TCP", "10.0.0.7", port))
        assert isinstance(protocol, DownlinkProtocol)
        transport = StringTransport()
        protocol.makeConnection(transport)
        lot = Lot(self, protocol, transport)
        self.lots.append(lot)
        return lot

    def settle(self) -> None:
        """Deliver connectionLost to the connections the gateway closed."""
        for lot in self.lots:
            if lot.closed and not lot.lost:
                lot.lost = True
                lot.protocol.connectionLost(Failure(ConnectionDone()))

    def advance(self, seconds: float) -> None:
        """Let time pass, one second at a time, so the sweep runs as it would."""
        for _ in range(int(seconds)):
            self.clock.advance(1)
            self.settle()

    def token(self, username: str = "lot001", park: str = "P001") -> str:
        """A token put in force directly, as a restart would from the journal."""
        token, body = self.sessions.mint(username, park)
        self.sessions.install(body)
        return token

    def kinds(self) -> list[tuple[str, str]]:
        """The kinds and parks of the journal records, in order."""
        return [(record.kind, record.park) for record in self.journal.records]


def outcome(deferred: Deferred[Any]) -> Any:
    """The result (or Failure, then handled) a Deferred has fired with, or None; call it once."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    return results[0] if results else None


# binding


def test_login_binds_and_replies_with_the_token() -> None:
    """A right login binds the connection; its REPLY carries token and parkCode, signed with "" + secret."""
    gateway = Gateway()
    lot = gateway.connect()
    opr = lot.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    [answer] = lot.received()
    assert answer["code"] == "login" and answer["oprNum"] == opr
    assert answer["resultCode"] == "0000"
    assert answer["data"]["parkCode"] == "P001" and len(answer["data"]["token"]) == 32
    assert answer["signature"] == sign(compact(answer["data"]), "", "s3cret")
    assert gateway.sessions.lookup(answer["data"]["token"]) is not None
    assert [r.kind for r in gateway.journal.records] == ["token", ONLINE_RECORD]
    state = gateway.downlinks.state("P001")
    assert state == LotState("P001", True, gateway.clock.seconds(), gateway.clock.seconds(), "10.0.0.7:40000")
    assert not lot.closed and gateway.downlinks.counters["binds"] == 1


def test_login_token_installed_only_once_durable() -> None:
    """The token of a TCP login is not in force, and nothing is answered, until its record is durable."""
    gateway = Gateway()
    gateway.journal.hold = True
    lot = gateway.connect()
    lot.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    assert lot.received() == [] and len(gateway.sessions) == 0
    gateway.journal.release()
    [answer] = lot.received()
    assert answer["resultCode"] == "0000"
    assert gateway.sessions.lookup(answer["data"]["token"]) is not None


def test_frames_during_login_wait_for_it() -> None:
    """A heartbeat sent right behind the login is answered after the login, not refused."""
    gateway = Gateway()
    gateway.journal.hold = True
    lot = gateway.connect()
    lot.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    lot.request("heartbeat")
    gateway.journal.release()
    answers = lot.received()
    assert [(a["code"], a["resultCode"]) for a in answers] == [("login", "0000"), ("heartbeat", "0000")]
    assert not lot.closed


def test_login_with_a_wrong_password_is_refused_and_closed() -> None:
    """Wrong credentials answer 9003 and close the connection; no token is issued."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.request("login", {"parkUserName": "lot001", "parkUserPwd": "wrong"})
    [answer] = lot.received()
    assert answer["resultCode"] == "9003"
    assert lot.closed and len(gateway.sessions) == 0
    assert not gateway.downlinks.state("P001").connected


def test_login_with_an_unknown_user_is_refused() -> None:
    """An unknown account answers 9003 too."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.request("login", {"parkUserName": "nobody", "parkUserPwd": PASSWORD})
    assert lot.received()[0]["resultCode"] == "9003" and lot.closed


def test_heartbeat_with_a_valid_token_binds() -> None:
    """A first heartbeat carrying a token in force binds the lot and is answered with the gateway's time."""
    gateway = Gateway()
    token = gateway.token()
    lot = gateway.connect()
    opr = lot.request("heartbeat", token=token)
    [answer] = lot.received()
    assert answer["resultCode"] == "0000" and answer["oprNum"] == opr
    assert answer["data"] == {"time": START}
    assert answer["signature"] == sign(compact(answer["data"]), token, "s3cret")
    assert gateway.downlinks.state("P001").connected
    assert gateway.kinds() == [(ONLINE_RECORD, "P001")]
    assert gateway.journal.records[0].body == {"peer": "10.0.0.7:40000", "reason": "heartbeat"}


@pytest.mark.parametrize("kind", ["unknown", "expired", "replaced", "empty"])
def test_heartbeat_with_a_bad_token_is_refused(kind: str) -> None:
    """A first heartbeat with an unknown, expired, replaced or missing token answers 9000 and closes."""
    gateway = Gateway()
    token = gateway.token()
    if kind == "unknown":
        token = "0" * 32
    elif kind == "expired":
        gateway.clock.advance(40 * 86400)
    elif kind == "replaced":
        gateway.token()
    elif kind == "empty":
        token = ""
    lot = gateway.connect()
    lot.request("heartbeat", token=token)
    [answer] = lot.received()
    assert answer["resultCode"] == "9000"
    assert lot.closed and not gateway.downlinks.state("P001").connected


def test_heartbeat_bind_with_a_wrong_signature_is_refused() -> None:
    """A binding heartbeat whose signature is present but wrong answers 9006 and closes."""
    gateway = Gateway()
    token = gateway.token()
    lot = gateway.connect()
    lot.request("heartbeat", {}, token=token, signature="BAD")
    assert lot.received()[0]["resultCode"] == "9006" and lot.closed


def test_anything_else_first_is_refused() -> None:
    """A first frame that is neither login nor heartbeat answers 9000 ("bind first") and closes."""
    gateway = Gateway()
    token = gateway.token()
    lot = gateway.connect()
    lot.request("carIn", {"recordCode": "R1"}, token=token)
    [answer] = lot.received()
    assert answer["resultCode"] == "9000" and "bind first with login or heartbeat" in answer["resultMessage"]
    assert lot.closed


def test_a_reply_first_is_refused() -> None:
    """A REPLY before any bind is refused like any other first frame."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.reply("x1", {}, token="")
    assert lot.received()[0]["resultCode"] == "9000" and lot.closed


def test_nothing_sent_is_closed_after_bind_timeout() -> None:
    """A connection that binds within bind_timeout stays; one that sends nothing is closed at the timeout."""
    gateway = Gateway(tcp={"bind_timeout": 5})
    gateway.downlinks.start()
    quiet = gateway.connect()
    gateway.advance(4)
    assert not quiet.closed
    gateway.advance(1)
    assert quiet.closed and gateway.downlinks.counters["closed_unbound"] == 1
    bound = gateway.connect(40001)
    bound.request("heartbeat", token=gateway.token())
    gateway.advance(10)
    assert not bound.closed
    gateway.downlinks.stop()


def test_the_newest_bind_wins() -> None:
    """A second bind of the same lot replaces the first connection, which is closed and journaled offline."""
    gateway = Gateway()
    first = gateway.connect(40000)
    token = first.login()
    second = gateway.connect(40001)
    second.request("heartbeat", token=token)
    assert first.closed and not second.closed
    assert gateway.downlinks.state("P001").peer == "10.0.0.7:40001"
    assert gateway.kinds()[1:] == [
        (ONLINE_RECORD, "P001"),
        (OFFLINE_RECORD, "P001"),
        (ONLINE_RECORD, "P001"),
    ]
    assert "replaced" in gateway.journal.records[2].body["reason"]
    # The old connection's loss does not unbind the new one.
    assert gateway.downlinks.state("P001").connected
    assert gateway.downlinks.counters["replaced"] == 1


def test_online_and_offline_are_journaled_without_waiting() -> None:
    """Bind and unbind are journaled with peer and reason, and act before the records are durable."""
    gateway = Gateway()
    token = gateway.token()
    gateway.journal.hold = True
    lot = gateway.connect()
    lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "0000"
    lot.disconnect()
    assert not gateway.downlinks.state("P001").connected
    gateway.journal.release()
    assert gateway.kinds() == [(ONLINE_RECORD, "P001"), (OFFLINE_RECORD, "P001")]
    assert gateway.journal.records[1].body["peer"] == "10.0.0.7:40000"
    assert "closed by the lot" in gateway.journal.records[1].body["reason"]


def test_a_broken_journal_does_not_stop_binding() -> None:
    """A journal that fails online records is logged; the lot is bound all the same."""
    gateway = Gateway()
    token = gateway.token()
    gateway.journal.broken = OSError("disk full")
    lot = gateway.connect()
    lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "0000"
    assert gateway.downlinks.state("P001").connected
    assert len(gateway.journal.records) == 0


def test_states_lists_every_configured_lot() -> None:
    """states() has one entry per configured lot, connected or not, with the last seen time kept."""
    gateway = Gateway(lots=[lot_entry(), lot_entry(park_code="P002", username="lot002")])
    lot = gateway.connect()
    lot.request("heartbeat", token=gateway.token())
    gateway.clock.advance(7)
    lot.disconnect()
    states = gateway.downlinks.states()
    assert [s.park for s in states] == ["P001", "P002"]
    assert states[0].connected is False and states[0].last_seen == gateway.clock.seconds() - 7
    assert states[0].peer == "10.0.0.7:40000"
    assert states[1] == LotState("P002", False, None, None, "")


# frames from a bound lot


def test_heartbeat_is_answered_with_the_time() -> None:
    """A bound lot's heartbeat is answered 0000 with the gateway time in the configured zone."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    gateway.clock.advance(61)
    opr = lot.request("heartbeat", token=token)
    [answer] = lot.received()
    assert answer["oprNum"] == opr and answer["resultCode"] == "0000"
    assert answer["data"] == {"time": "2026-11-24 10:01:01"}


def test_heartbeat_with_a_new_token_updates_the_acks() -> None:
    """After a new login elsewhere, a heartbeat with the new token makes later ACKs carry it."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    newer = gateway.token()
    lot.request("heartbeat", token=newer)
    assert lot.received()[0]["resultCode"] == "0000"
    gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    assert ack["token"] == newer


def test_unknown_code_answers_9001() -> None:
    """A request with an unknown code from a bound lot answers 9001 and keeps the connection."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    lot.request("noSuchOne", {}, token=token)
    [answer] = lot.received()
    assert answer["resultCode"] == "9001" and "noSuchOne" in answer["resultMessage"]
    assert not lot.closed


def test_uplink_codes_on_tcp_answer_9001_pointing_to_http() -> None:
    """An uplink code sent on the downlink answers 9001 saying uplinks go over HTTP."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    lot.request("carIn", {"recordCode": "R1"}, token=token)
    [answer] = lot.received()
    assert answer["resultCode"] == "9001" and "HTTP" in answer["resultMessage"]
    assert not lot.closed


def test_invalid_json_with_an_opr_num_answers_9002() -> None:
    """A bound lot's frame that is not JSON but shows an oprNum is answered 9002 with that oprNum."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    lot.send_bytes(b'$${"oprNum":"abc-1","code":"heartbeat",##*')
    [answer] = lot.received()
    assert answer["resultCode"] == "9002" and answer["oprNum"] == "abc-1"
    assert gateway.downlinks.counters["bad_frames"] == 1 and not lot.closed


def test_invalid_json_without_an_opr_num_is_skipped() -> None:
    """A frame that is not JSON and has no readable oprNum is counted and skipped, nothing answered."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    lot.send_bytes(b"$$not json at all##*")
    assert lot.received() == []
    assert gateway.downlinks.counters["bad_frames"] == 1 and not lot.closed


def test_a_failing_frame_does_not_break_the_connection(monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while handling one frame is logged and counted; the next frame is handled."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    calls = []

    def boom(*args: object) -> None:
        calls.append(args)
        raise RuntimeError("boom")

    monkeypatch.setattr(gateway.downlinks, "_bound_heartbeat", boom)
    lot.request("heartbeat", token=token)
    monkeypatch.undo()
    lot.request("heartbeat", token=token)
    assert [a["resultCode"] for a in lot.received()] == ["0000"]
    assert gateway.downlinks.counters["errors"] == 1 and len(calls) == 1
    assert not lot.closed


def test_oversize_frame_closes() -> None:
    """A frame over max_frame_bytes closes the connection and unbinds the lot."""
    gateway = Gateway(tcp={"max_frame_bytes": 256})
    lot = gateway.connect()
    lot.login()
    lot.send_bytes(b"$$" + b"x" * 300)
    assert lot.closed and gateway.downlinks.counters["closed_oversize"] == 1
    assert not gateway.downlinks.state("P001").connected
    assert "max_frame_bytes" in gateway.journal.records[-1].body["reason"]


# commands


def test_command_sends_a_signed_escaped_ack_and_fires_with_the_reply() -> None:
    """A command is written at once as an ACK signed with the lot's token and secret over the unescaped
    compact data, escaped in the frame; the lot's REPLY fires the Deferred with a LotReply."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    data = {"barCode": "B$1#*", "note": "入口"}
    deferred = gateway.downlinks.command("P001", "gateOpen", data)
    [payload] = lot.frames()
    assert b"$" not in payload and b"#" not in payload and b"*" not in payload
    assert b"B\\u00241\\u0023\\u002a" in payload
    ack = json.loads(payload)
    assert list(ack) == ["code", "oprNum", "token", "signature", "data"]
    assert ack["code"] == "gateOpen" and ack["token"] == token and ack["data"] == data
    assert len(ack["oprNum"]) == 32
    assert ack["signature"] == sign('{"barCode":"B$1#*","note":"入口"}', token, "s3cret")
    assert not fired(deferred)
    lot.reply(ack["oprNum"], {"barCode": "B$1#*", "opened": 1}, token)
    assert outcome(deferred) == LotReply("0000", "ok", {"barCode": "B$1#*", "opened": 1})
    assert gateway.clock.getDelayedCalls() == []


def test_replies_are_matched_by_opr_num() -> None:
    """Several commands outstanding on one connection are each matched to their own reply."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    deferreds = [gateway.downlinks.command("P001", "gateState", {"barCode": f"B{i}"}) for i in range(3)]
    acks = lot.received()
    assert len({ack["oprNum"] for ack in acks}) == 3
    for index in (2, 0, 1):
        lot.reply(acks[index]["oprNum"], {"barCode": f"B{index}"}, token, code="gateState")
    assert [outcome(d).data for d in deferreds] == [{"barCode": "B0"}, {"barCode": "B1"}, {"barCode": "B2"}]


def test_reply_signatures_are_checked() -> None:
    """A REPLY with a wrong signature is dropped and counted; the command still waits."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    lot.reply(ack["oprNum"], {"ok": 1}, token, signature="0" * 32)
    assert not fired(deferred) and gateway.downlinks.counters["bad_signatures"] == 1
    assert lot.received() == []
    lot.reply(ack["oprNum"], {"ok": 1}, token)
    assert outcome(deferred).data == {"ok": 1}


def test_reply_signature_off_is_not_checked() -> None:
    """With signature = "off" a reply is accepted whatever its signature."""
    gateway = Gateway(lots=[lot_entry(signature="off")])
    lot = gateway.connect()
    token = lot.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    lot.reply(ack["oprNum"], {"ok": 1}, token, signature="")
    assert outcome(deferred).result_code == "0000"


def test_deadline_passes_and_a_late_reply_is_counted() -> None:
    """No reply within the code's deadline fails the command with DeadlinePassed; a later reply is dropped."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    gateway.clock.advance(1.9)
    assert not fired(deferred)
    gateway.clock.advance(0.1)
    failure = outcome(deferred)
    assert failure.check(DeadlinePassed)
    assert (failure.value.park, failure.value.code, failure.value.deadline) == ("P001", "gateOpen", 2.0)
    lot.reply(ack["oprNum"], {}, token)
    assert gateway.downlinks.counters["late_replies"] == 1


def test_deadline_overrides() -> None:
    """A per-code deadline given to Downlinks replaces the catalog's."""
    gateway = Gateway(deadlines={"feeQuery": 5.0})
    lot = gateway.connect()
    lot.login()
    deferred = gateway.downlinks.command("P001", "feeQuery", {"recordCode": "R1"})
    gateway.clock.advance(5)
    assert outcome(deferred).value.deadline == 5.0


def test_unknown_replies_are_counted() -> None:
    """A reply whose oprNum matches nothing is counted and dropped, not answered."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    lot.reply("nobody-asked", {}, token)
    assert gateway.downlinks.counters["unmatched_replies"] == 1 and lot.received() == []


def test_command_to_an_unbound_lot_fails_at_once() -> None:
    """A command for a lot without a bound connection fails with NotConnected at once, nothing scheduled."""
    gateway = Gateway()
    failure = outcome(gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"}))
    assert failure.check(NotConnected) and failure.value.park == "P001"
    assert gateway.clock.getDelayedCalls() == []


def test_command_with_a_non_downlink_code_fails() -> None:
    """An uplink-only or unknown code is not sent."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    assert outcome(gateway.downlinks.command("P001", "carIn", {})).check(ValueError)
    assert lot.received() == []


def test_disconnect_fails_outstanding_commands() -> None:
    """When the lot's connection drops, its outstanding commands fail with NotConnected and timers go."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    deferreds = [gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"}) for _ in range(2)]
    lot.disconnect()
    assert all(outcome(d).check(NotConnected) for d in deferreds)
    assert gateway.clock.getDelayedCalls() == []


def test_replacing_a_connection_fails_its_commands() -> None:
    """A command outstanding on a connection that a new bind replaces fails with NotConnected."""
    gateway = Gateway()
    first = gateway.connect()
    token = first.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    gateway.connect(40001).request("heartbeat", token=token)
    assert outcome(deferred).check(NotConnected)


def test_cancelling_a_command_forgets_it() -> None:
    """Cancelling a command's Deferred cancels its deadline."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    deferred = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    deferred.cancel()
    outcome(deferred)
    assert gateway.clock.getDelayedCalls() == []


# idle timers (B.3.4)


def bound(tcp: dict[str, int]) -> tuple[Gateway, Lot, str]:
    gateway = Gateway(tcp=tcp)
    gateway.downlinks.start()
    lot = gateway.connect()
    token = gateway.token()
    lot.request("heartbeat", token=token)
    lot.received()
    return gateway, lot, token


def test_read_idle_closes() -> None:
    """Nothing received for read_idle seconds closes the connection, even while the gateway writes."""
    gateway, lot, _ = bound({"read_idle": 10, "write_idle": 3, "all_idle": 0})
    gateway.advance(9)
    assert not lot.closed
    gateway.advance(1)
    assert lot.closed and gateway.downlinks.counters["closed_idle"] == 1
    assert "read_idle" in gateway.journal.records[-1].body["reason"]


def test_write_idle_sends_a_heartbeat() -> None:
    """Nothing sent for write_idle seconds makes the gateway send a heartbeat request with the lot's token."""
    gateway, lot, token = bound({"read_idle": 0, "write_idle": 5, "all_idle": 0})
    gateway.advance(4)
    assert lot.received() == []
    gateway.advance(1)
    [heartbeat] = lot.received()
    assert heartbeat["code"] == "heartbeat" and heartbeat["token"] == token
    assert heartbeat["signature"] == sign("{}", token, "s3cret") and heartbeat["data"] == {}
    gateway.advance(4)
    assert lot.received() == []
    gateway.advance(1)
    [again] = lot.received()
    assert again["oprNum"] != heartbeat["oprNum"]
    # The lot's answer to it is neither matched nor counted as unknown.
    lot.reply(again["oprNum"], {}, token, code="heartbeat")
    assert gateway.downlinks.counters["unmatched_replies"] == 0
    assert not lot.closed


def test_all_idle_closes() -> None:
    """Neither received nor sent for all_idle seconds closes; traffic either way keeps it open."""
    gateway, lot, _ = bound({"read_idle": 0, "write_idle": 0, "all_idle": 10})
    gateway.advance(6)
    gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})  # a write
    gateway.advance(9)
    assert not lot.closed
    gateway.advance(1)
    assert lot.closed


def test_zero_disables_the_idle_timers() -> None:
    """With all three timers 0 a silent bound connection is neither closed nor heartbeaten."""
    gateway, lot, _ = bound({"read_idle": 0, "write_idle": 0, "all_idle": 0})
    gateway.advance(1000)
    assert not lot.closed and lot.received() == []


def test_stop_stops_the_sweep() -> None:
    """stop() leaves no call scheduled; start() twice runs one sweep."""
    gateway = Gateway()
    gateway.downlinks.start()
    gateway.downlinks.start()
    assert len(gateway.clock.getDelayedCalls()) == 1
    gateway.downlinks.stop()
    gateway.downlinks.stop()
    assert gateway.clock.getDelayedCalls() == []


def test_a_thousand_lots_share_one_sweep() -> None:
    """1,000 bound lots are swept by one LoopingCall: no per-connection delayed calls, heartbeats for all."""
    count = 1000
    lots = [lot_entry(park_code=f"P{i:04}", username=f"lot{i:04}", password=HASH) for i in range(count)]
    gateway = Gateway(lots=lots, tcp={"read_idle": 0, "write_idle": 30, "all_idle": 0})
    gateway.downlinks.start()
    connections = []
    for i in range(count):
        lot = gateway.connect(10000 + i)
        lot.request("heartbeat", token=gateway.token(f"lot{i:04}", f"P{i:04}"))
        connections.append(lot)
    assert gateway.downlinks.counters["binds"] == count
    assert len(gateway.clock.getDelayedCalls()) == 1
    for lot in connections:
        lot.received()
    gateway.advance(30)
    assert len(gateway.clock.getDelayedCalls()) == 1
    assert gateway.downlinks.counters["heartbeats_out"] == count
    assert all(len(lot.received()) == 1 for lot in connections)
    assert sum(state.connected for state in gateway.downlinks.states()) == count
    gateway.downlinks.stop()


def test_disconnect_all_journals_bound_lots_offline_at_once() -> None:
    """Stopping closes every connection and appends each bound lot's offline record before returning."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    idle = gateway.connect(port=40001)
    before = len(gateway.journal.records)
    gateway.downlinks.disconnect_all("gateway stopping")
    offline = [r for r in gateway.journal.records[before:] if r.kind == OFFLINE_RECORD]
    assert [(r.park, r.body["reason"]) for r in offline] == [("P001", "gateway stopping")]
    assert lot.closed and idle.closed
    lot.disconnect()
    kinds = [r.kind for r in gateway.journal.records[before:]]
    assert kinds.count(OFFLINE_RECORD) == 1, "the final loss is not journaled twice"
    assert not gateway.downlinks.state("P001").connected


# reloads


def test_disconnect_closes_one_lot_and_journals_it_offline() -> None:
    """disconnect(park) closes that lot's connection, journals it offline once, fails its commands."""
    gateway = Gateway(lots=[lot_entry(), lot_entry(park_code="P002", username="lot002")])
    first, second = gateway.connect(), gateway.connect(port=40001)
    first.login()
    second.login(username="lot002")
    pending = outcome(gateway.downlinks.command("P002", "gateOpen", {"barCode": "G1", "isOpen": 1}))
    assert pending is None
    assert gateway.downlinks.disconnect("P002", "removed from the configuration")
    assert second.closed and not first.closed
    gateway.settle()
    offline = [r for r in gateway.journal.records if r.kind == OFFLINE_RECORD]
    assert [(r.park, r.body["reason"]) for r in offline] == [("P002", "removed from the configuration")]
    assert not gateway.downlinks.state("P002").connected and gateway.downlinks.state("P001").connected
    assert not gateway.downlinks.disconnect("P002", "again"), "a lot not connected has nothing to close"


def test_disconnect_fails_the_lots_outstanding_commands() -> None:
    """A command waiting on a lot that is disconnected fails NotConnected at once."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    results: list[Any] = []
    gateway.downlinks.command("P001", "gateOpen", {"barCode": "G1", "isOpen": 1}).addBoth(results.append)
    gateway.downlinks.disconnect("P001", "its credentials changed in the configuration")
    [failure] = results
    assert isinstance(failure, Failure) and failure.check(NotConnected)


def test_after_reconfigure_a_removed_lot_cannot_log_in_and_an_added_one_can() -> None:
    """Logins read the configuration given by reconfigure."""
    gateway = Gateway()
    gateway.downlinks.reconfigure(config.parse({"lot": [lot_entry(park_code="P002", username="lot002")]}))
    removed = gateway.connect()
    removed.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    assert removed.received()[-1]["resultCode"] == Result.BAD_CREDENTIALS.code and removed.closed
    added = gateway.connect(port=40001)
    added.login(username="lot002")
    assert gateway.downlinks.state("P002").connected


def test_a_reload_during_the_password_check_refuses_the_login() -> None:
    """A lot removed while its password is being checked gets no token (none is journaled either)."""
    gateway = Gateway()
    held: list[Deferred[bool]] = []

    class HeldPasswords:
        """Password checks that finish when the test says so."""

        def check(self, password_hash: str | None, password: str, gone: Any = None) -> Deferred[bool]:
            held.append(Deferred())
            return held[-1]

    gateway.downlinks._passwords = HeldPasswords()
    lot = gateway.connect()
    lot.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    gateway.downlinks.reconfigure(config.parse({"lot": []}))
    held[0].callback(True)
    answer = lot.received()[-1]
    assert answer["resultCode"] == Result.BAD_CREDENTIALS.code
    assert "changed during the login" in answer["resultMessage"]
    assert lot.closed
    assert len(gateway.sessions) == 0
    assert "token" not in [record.kind for record in gateway.journal.records]


# the log (lot.online, lot.offline, lot.rejected)


def rejections(events: list[Any]) -> list[tuple[str, str, str, str]]:
    """(park, code, result, peer) of each lot.rejected event, after checking the keys every one has."""
    for event in events:
        assert event["dialect"] == "standard" and event["via"] == "tcp" and event["reason"]
    return [(e["park"], e["code"], e["result"], e["peer"]) for e in events]


def test_a_bind_and_an_unbind_each_log_one_event_with_their_keys() -> None:
    """Binding logs one lot.online (park, peer, how, dialect); losing the connection one lot.offline."""
    gateway = Gateway()
    with captured() as events:
        lot = gateway.connect()
        lot.login()
        lot.protocol.connectionLost(Failure(ConnectionDone()))
    named = [e for e in events if e.get("event") in ("lot.online", "lot.offline")]
    assert [(e["event"], e["park"], e["peer"], e["dialect"]) for e in named] == [
        ("lot.online", "P001", "10.0.0.7:40000", "standard"),
        ("lot.offline", "P001", "10.0.0.7:40000", "standard"),
    ]
    online, offline = named
    assert online["how"] == "login" and online["log_format"] == "lot {park} bound from {peer} by {how}"
    assert offline["reason"].startswith("closed by the lot")
    assert not [e for e in events if e.get("event") == "lot.rejected"]


def test_every_refusal_on_the_downlink_logs_one_lot_rejected() -> None:
    """Refused logins, tokens, signatures, unbound and malformed frames each log one warn lot.rejected."""
    gateway = Gateway(tcp={"max_frame_bytes": 256})
    token = gateway.token()
    with captured("lot.rejected") as events:
        gateway.connect(1).request("login", {"parkUserName": "lot001", "parkUserPwd": "wrong"})
        gateway.connect(2).request("login", {"parkUserName": "nobody", "parkUserPwd": "wrong"})
        gateway.connect(3).request("heartbeat", token="0" * 32)
        gateway.connect(4).request("heartbeat", {}, token=token, signature="BAD")
        gateway.connect(5).request("carIn", {"recordCode": "R1"}, token=token)
        bound = gateway.connect(6)
        bound.login()
        bound.request("noSuchCode", {})
        bound.send_bytes(b'$${"oprNum":"abc-1","code":"heartbeat",##*')
        bound.send_bytes(b"$$not json at all##*")
        bound.send_bytes(b"$$" + b"x" * 300)
    assert rejections(events) == [
        ("P001", "login", "9003", "10.0.0.7:1"),
        ("", "login", "9003", "10.0.0.7:2"),
        ("", "heartbeat", "9000", "10.0.0.7:3"),
        ("P001", "heartbeat", "9006", "10.0.0.7:4"),
        ("", "carIn", "9000", "10.0.0.7:5"),
        ("P001", "noSuchCode", "9001", "10.0.0.7:6"),
        ("P001", "", "9002", "10.0.0.7:6"),
        ("P001", "", "9002", "10.0.0.7:6"),
        ("P001", "", "9002", "10.0.0.7:6"),
    ]
    assert {e["log_level"] for e in events} == {LogLevel.warn}
    assert "parkUserName or parkUserPwd is wrong" in events[0]["reason"]
    assert "max_frame_bytes" in events[-1]["reason"]


def test_answers_0000_log_no_rejection() -> None:
    """A login, heartbeats and a command's REPLY are not rejections: nothing is logged as one."""
    gateway = Gateway()
    with captured("lot.rejected") as events:
        lot = gateway.connect()
        token = lot.login()
        lot.request("heartbeat", token=token)
        lot.received()
        command = gateway.downlinks.command("P001", "gateOpen", {"barCode": "G1"})
        [ack] = lot.received()
        lot.reply(ack["oprNum"], {"barCode": "G1"}, token)
    assert outcome(command).result_code == "0000"
    assert events == []


# hostile and faulty clients (CONTRACT §4, §5)


def test_an_unsigned_heartbeat_does_not_bind_a_lot_whose_signature_is_required() -> None:
    """A heartbeat carrying a valid token but no signature answers 9006 and is closed; the lot's own
    connection stays bound and gets the next command (the token travels in clear, the secret never does)."""
    gateway = Gateway()
    lot = gateway.connect(1)
    token = lot.login()
    attacker = gateway.connect(2)
    with captured("lot.rejected") as events:
        attacker.request("heartbeat", token=token, signature="")
    [answer] = attacker.received()
    assert answer["resultCode"] == "9006" and attacker.closed
    assert "missing" in answer["resultMessage"]
    assert [(e["park"], e["result"], e["peer"]) for e in events] == [("P001", "9006", "10.0.0.7:2")]
    assert not lot.closed and gateway.downlinks.state("P001").peer == "10.0.0.7:1"
    assert gateway.downlinks.counters["replaced"] == 0
    assert gateway.downlinks.counters["bind_failures"] == gateway.downlinks.counters["bad_signatures"] == 1
    gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    assert [ack["code"] for ack in lot.received()] == ["gateOpen"]
    assert attacker.received() == []


def test_a_signed_heartbeat_binds_a_lot_whose_signature_is_required() -> None:
    """The lot itself, signing its heartbeat with the secret, still binds by token (and replaces its old
    connection)."""
    gateway = Gateway()
    old = gateway.connect(1)
    token = old.login()
    lot = gateway.connect(2)
    lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "0000"
    assert old.closed and gateway.downlinks.state("P001").peer == "10.0.0.7:2"


@pytest.mark.parametrize("mode", ["optional", "off"])
def test_an_unsigned_heartbeat_binds_a_lot_whose_signature_is_not_required(mode: str) -> None:
    """With `signature = "optional"` or "off", a heartbeat with a token and no signature binds, as before."""
    gateway = Gateway(lots=[lot_entry(signature=mode)])
    token = gateway.token()
    lot = gateway.connect()
    lot.request("heartbeat", token=token, signature="")
    assert lot.received()[0]["resultCode"] == "0000"
    assert gateway.downlinks.state("P001").connected


@pytest.mark.parametrize("frame", ["heartbeat", "other request", "reply", "malformed"])
def test_a_connection_whose_token_was_replaced_is_answered_9000_and_closed(frame: str) -> None:
    """After a newer login of the account (over HTTP, say), the connection bound with the old token
    answers its next frame, whatever it is, 9000 and is closed; its commands fail NotConnected."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    command = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"})
    [ack] = lot.received()
    gateway.token()  # the newer login
    if frame == "heartbeat":
        lot.request("heartbeat", token=token)
    elif frame == "other request":
        lot.request("noSuchCode", {}, token=token)
    elif frame == "reply":
        lot.reply(ack["oprNum"], {"barStatus": 1}, token)
    else:
        lot.send_bytes(b'$${"oprNum":"abc-1","code":"heartbeat",##*')
    [answer] = lot.received()
    assert answer["resultCode"] == "9000" and "replaced" in answer["resultMessage"]
    assert lot.closed and not gateway.downlinks.state("P001").connected
    assert outcome(command).check(NotConnected)
    assert gateway.downlinks.counters["closed_token"] == 1


def test_a_connection_whose_token_was_revoked_is_answered_9000_and_closed() -> None:
    """A token revoked (a reload changed the lot) or expired stops working on the bound connection too."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    gateway.sessions.revoke("lot001")
    lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "9000" and lot.closed
    expired = gateway.connect(2)
    token = expired.login()
    gateway.clock.advance(40 * 86400)
    expired.request("heartbeat", token=token)
    assert expired.received()[0]["resultCode"] == "9000" and expired.closed


def test_logins_beyond_the_cap_of_a_turn_wait_for_the_next_turns_in_order() -> None:
    """At most `logins_per_turn` logins begin in one turn of the reactor; the next are begun in the
    following turns, first come first served, and one whose connection closed while it waited is
    dropped (no token minted for it)."""
    lots = [lot_entry(park_code=f"P{k:03}", username=f"lot{k:03}") for k in range(1, 7)]
    gateway = Gateway(lots=lots, logins_per_turn=2)
    connections = [gateway.connect(40000 + k) for k in range(1, 7)]
    for k, lot in enumerate(connections, 1):
        lot.request("login", {"parkUserName": f"lot{k:03}", "parkUserPwd": PASSWORD})
    answered = [bool(lot.received()) for lot in connections]
    assert answered == [True, True, False, False, False, False]
    [turn] = [call for call in gateway.clock.getDelayedCalls() if call.getTime() == gateway.clock.seconds()]
    connections[3].disconnect()  # P004 leaves while its login waits
    gateway.clock.advance(0)  # the next turns (task.Clock runs them all)
    assert [lot.received()[0]["resultCode"] for lot in connections[2:] if lot is not connections[3]] == [
        "0000"
    ] * 3
    tokens = [record.park for record in gateway.journal.records if record.kind == "token"]
    assert tokens == ["P001", "P002", "P003", "P005", "P006"]
    assert not turn.active()


def test_frames_sent_while_a_login_waits_for_its_turn_are_handled_after_it() -> None:
    """A lot whose login waits for a later turn has its next frames queued, and answered once bound."""
    lots = [lot_entry(park_code=f"P{k:03}", username=f"lot{k:03}") for k in range(1, 3)]
    gateway = Gateway(lots=lots, logins_per_turn=1)
    first, second = gateway.connect(40001), gateway.connect(40002)
    first.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    second.request("login", {"parkUserName": "lot002", "parkUserPwd": PASSWORD})
    second.request("heartbeat", {})
    assert second.received() == []
    gateway.clock.advance(0)
    login, heartbeat = second.received()
    assert login["resultCode"] == "0000" and heartbeat["resultCode"] == "0000"
    assert gateway.downlinks.state("P002").connected


def test_a_token_expired_at_the_months_end_logs_one_line_not_a_rejection() -> None:
    """At the month's end the bound connection's next frame is answered 9000 and closed, and the log
    says it once: a lot.offline naming the expiry, no lot.rejected (every lot meets it together)."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    gateway.clock.advance(40 * 86400)
    with captured() as events:
        lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "9000" and lot.closed
    named = [e for e in events if e.get("event") in ("lot.offline", "lot.rejected")]
    assert [(e["event"], e["park"]) for e in named] == [("lot.offline", "P001")]
    assert "expired" in named[0]["reason"]
    assert gateway.downlinks.counters["closed_token"] == 1


def test_a_replaced_token_still_logs_a_rejection() -> None:
    """A token replaced by a newer login (not expired) is a refusal worth a lot.rejected, beside the
    lot.offline."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    gateway.token()  # the newer login
    with captured() as events:
        lot.request("heartbeat", token=token)
    named = [
        (e["event"], e.get("result")) for e in events if e.get("event") in ("lot.offline", "lot.rejected")
    ]
    assert named == [("lot.rejected", "9000"), ("lot.offline", None)]


def test_a_login_over_tcp_logs_one_line() -> None:
    """A login on the downlink logs one line, its lot.online ("by login"); login.py's own line is for HTTP."""
    gateway = Gateway()
    with captured() as events:
        gateway.connect().login()
    lines = [e for e in events if e.get("log_namespace", "").startswith("gateway.")]
    assert [e.get("event") for e in lines] == ["lot.online"]
    assert lines[0]["how"] == "login"


def test_a_heartbeat_with_the_newer_token_keeps_the_connection() -> None:
    """A lot that logged in again elsewhere and heartbeats with its new token is not cut off."""
    gateway = Gateway()
    lot = gateway.connect()
    lot.login()
    newer = gateway.token()
    lot.request("heartbeat", token=newer)
    lot.request("heartbeat", token=newer)
    assert [answer["resultCode"] for answer in lot.received()] == ["0000", "0000"]
    assert not lot.closed


def test_bytes_before_a_bind_are_capped_at_max_unbound_bytes() -> None:
    """An unbound connection streaming `$` is closed once it has sent more than max_unbound_bytes,
    without the excess being decoded; the closing is counted and logged once."""
    gateway = Gateway(tcp={"max_unbound_bytes": 4096})
    attacker = gateway.connect()
    with captured("lot.rejected") as events:
        for _ in range(4):
            attacker.send_bytes(b"$" * 1024)
        assert not attacker.closed
        attacker.send_bytes(b"$")
        assert attacker.closed
        attacker.send_bytes(b"$" * 1024)
    assert gateway.downlinks.counters["closed_unbound_bytes"] == 1
    [event] = events
    assert event["result"] == "9002" and "max_unbound_bytes (4096)" in event["reason"]
    assert attacker.received() == []


def test_the_cap_counts_unbound_bytes_only() -> None:
    """A lot that binds within the cap then sends more than the cap is not closed for it."""
    gateway = Gateway(tcp={"max_unbound_bytes": 1024})
    lot = gateway.connect()
    token = lot.login()
    for _ in range(4):
        lot.send_bytes(b" " * 1000)
    lot.request("heartbeat", token=token)
    assert lot.received()[0]["resultCode"] == "0000" and not lot.closed


def test_a_command_goes_out_with_the_opr_num_it_is_given() -> None:
    """command(..., opr) sends that oprNum, matches the reply by it, and refuses one still outstanding."""
    gateway = Gateway()
    lot = gateway.connect()
    token = lot.login()
    first = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"}, "journaled-opr")
    [ack] = lot.received()
    assert ack["oprNum"] == "journaled-opr"
    again = gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"}, "journaled-opr")
    assert outcome(again).check(ValueError) and lot.received() == []
    lot.reply("journaled-opr", {"barStatus": 1}, token)
    assert outcome(first).data == {"barStatus": 1}


def test_a_tcp_login_whose_connection_is_lost_is_dropped_before_its_check() -> None:
    """A login waiting for a password check on a connection the lot has closed is never checked; a
    login past max_pending is answered 9999 busy and closed at once."""
    from gateway.lots.passwords import PasswordChecker
    from tests.lots.test_passwords import HeldThreads

    gateway = Gateway()
    runner = HeldThreads()
    gateway.downlinks._passwords = PasswordChecker(gateway.clock, threads=1, max_pending=1, run=runner)  # type: ignore[arg-type]
    first, left, busy = gateway.connect(1), gateway.connect(2), gateway.connect(3)
    for lot in (first, left, busy):
        lot.request("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
    [answer] = busy.received()
    assert answer["resultCode"] == "9999" and "busy, retry" in answer["resultMessage"] and busy.closed
    left.disconnect()
    runner.answer(0, True)
    assert first.received()[0]["resultCode"] == "0000"
    assert runner.running == [] and left.received() == []


def test_the_refusal_of_an_unsigned_bind_signs_nothing_an_attacker_could_replay() -> None:
    """The 9006 answer to an unsigned binding heartbeat is not signed with the secret: its signature,
    sent back with the answer's data, does not bind either."""
    gateway = Gateway()
    token = gateway.token()
    probe = gateway.connect(1)
    probe.request("heartbeat", {}, token=token, signature="")
    [answer] = probe.received()
    assert answer["resultCode"] == "9006"
    assert answer["signature"] != sign(compact(answer["data"]), token, "s3cret")
    replay = gateway.connect(2)
    replay.request("heartbeat", answer["data"], token=token, signature=answer["signature"])
    assert replay.received()[0]["resultCode"] == "9006"
    assert not gateway.downlinks.state("P001").connected

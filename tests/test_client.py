"""The reusable lot-side client: credentials, signed HTTP uplinks, the TCP downlink and its reconnection."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway import config
from gateway.interfaces import LotReply
from gateway.lotclient.credentials import CredentialsError, LotCredentials, read_credentials
from gateway.lotclient.downlink import Backoff, DownlinkClient, DownlinkReply
from gateway.lotclient.uplink import UplinkClient, UplinkError, parse_response
from gateway.lots.downlink import Downlinks
from gateway.lots.sessions import Sessions
from gateway.protocol.catalog import INTERFACES, lookup
from gateway.protocol.envelope import Reply, ack_frame, request_text
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from gateway.protocol.validation import validate
from tests.lots.harness import PASSWORD, MemoryJournal, SyncPasswords, Uplink, lot_entry
from tests.protocol.samples import SAMPLES
from tests.simulator.helpers import ZONE, PumpEndpoint, ScriptedEndpoint, simulated_lot

SECRET = "s3cret"
LOT = LotCredentials("P001", "lot001", PASSWORD, SECRET)


def settle(stub: Any, deferred: Deferred[Any]) -> Any:
    """Flush a StubTreq until `deferred` has a result; the result."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    for _ in range(20):
        if results:
            break
        stub.flush()
    assert results, "no answer"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


# --- credentials and envelopes -------------------------------------------------


def test_credentials_file(tmp_path: Path) -> None:
    """The CSV gives park_code,username,password and an optional secret; a header and comments are skipped."""
    path = tmp_path / "lots.csv"
    path.write_text("park_code,username,password\n# test lots\nP001,lot001,pw1\n\nP002, lot002 ,pw2,k2\n")
    assert read_credentials(str(path)) == [
        LotCredentials("P001", "lot001", "pw1"),
        LotCredentials("P002", "lot002", "pw2", "k2"),
    ]


@pytest.mark.parametrize("text", ["", "park_code,username,password\n", "P001,lot001\n", "P001,,pw\n"])
def test_unusable_credentials_file(tmp_path: Path, text: str) -> None:
    """No lots, or a row without its three cells, is a CredentialsError naming the file."""
    path = tmp_path / "lots.csv"
    path.write_text(text)
    with pytest.raises(CredentialsError, match=r"lots\.csv"):
        read_credentials(str(path))


def test_request_text_signs_the_data_it_carries() -> None:
    """A request envelope's signature is MD5(compact data + token + secret), upper case (B.3.7)."""
    data = {"carNum": "京A$1#2*3", "n": 1}
    envelope = json.loads(request_text("carIn", "o-1", "tok", SECRET, data))
    assert envelope == {
        "token": "tok",
        "code": "carIn",
        "oprNum": "o-1",
        "signature": sign(compact(data), "tok", SECRET),
        "data": data,
    }


def test_parse_response() -> None:
    """A response envelope parses; anything else is an UplinkError."""
    text = '{"code":"carIn","oprNum":"o","resultCode":"0000","resultMessage":"ok","data":{}}'
    response = parse_response(text)
    assert response.ok and response.opr == "o" and response.data == {}
    for text in ("not json", "[]", '{"code":"carIn"}'):
        with pytest.raises(UplinkError):
            parse_response(text)


# --- the HTTP uplink, against the gateway's own uplink in memory ---------------


def uplink_client(gateway: Uplink, credentials: LotCredentials = LOT) -> UplinkClient:
    return UplinkClient(
        http=gateway.treq, url="http://gw/uplink", credentials=credentials, clock=gateway.clock
    )


def test_login_and_a_signed_upload_are_accepted() -> None:
    """The client logs in, then its signed carIn is stored; the answers are signed with the token."""
    gateway = Uplink()
    client = uplink_client(gateway)
    answer: Reply = settle(gateway.treq, client.send("carIn", SAMPLES["carIn"]))
    assert answer.ok, answer
    assert len(client.token) == 32 and client.park_code == "P001" and client.logins == 1
    assert answer.signed_by(client.token, SECRET)
    assert [r.opr for r in gateway.journal.records if r.kind == "uplink"] == [answer.opr]


def test_a_replaced_token_is_renewed_and_the_request_sent_again_with_its_opr() -> None:
    """After another login replaced the token (9000), the client logs in and resends the same oprNum, once."""
    gateway = Uplink()
    client = uplink_client(gateway)
    settle(gateway.treq, client.login())
    old = client.token
    settle(gateway.treq, uplink_client(gateway).login())  # a second login of the account (B.3.5)
    answer: Reply = settle(gateway.treq, client.send("carIn", SAMPLES["carIn"], opr="keep-me"))
    assert answer.ok and answer.opr == "keep-me"
    assert client.token != old and client.logins == 2
    assert [r.opr for r in gateway.journal.records if r.kind == "uplink"] == ["keep-me"]


def test_wrong_credentials_are_the_answer() -> None:
    """A refused login (9003) is what send returns; no token is kept."""
    gateway = Uplink()
    client = uplink_client(gateway, LotCredentials("P001", "lot001", "wrong", SECRET))
    answer: Reply = settle(gateway.treq, client.send("carIn", SAMPLES["carIn"]))
    assert answer.result_code == "9003" and answer.code == "login" and client.token == ""


def test_each_request_has_its_own_opr() -> None:
    """oprNums are unique per client and across clients, at most 36 characters."""
    clients = [uplink_client(Uplink()) for _ in range(3)]
    oprs = {client.new_opr() for client in clients for _ in range(1000)}
    assert len(oprs) == 3000 and max(len(opr) for opr in oprs) <= 36


# --- the TCP downlink ----------------------------------------------------------


def frames(transport: Any) -> list[dict[str, Any]]:
    """The messages written to a StringTransport since the last call."""
    data = transport.value()
    transport.clear()
    return [json.loads(payload) for payload in FrameDecoder(2**20).feed(data) if isinstance(payload, bytes)]


def answer_frame(protocol: Any, request: dict[str, Any], result: str = "0000", data: Any = None) -> None:
    """The gateway's answer to one of the lot's requests (bind or heartbeat)."""
    protocol.dataReceived(
        encode_frame(
            {
                "code": request["code"],
                "oprNum": request["oprNum"],
                "resultCode": result,
                "resultMessage": "",
                "signature": "",
                "data": data if data is not None else {},
            }
        )
    )


def downlink_client(
    endpoint: Any, clock: Clock, token: str = "T" * 32, invalid: list[bool] | None = None, **options: Any
) -> DownlinkClient:
    def on_invalid() -> None:
        if invalid is not None:
            invalid.append(True)

    return DownlinkClient(
        endpoint=endpoint,
        clock=clock,
        credentials=LOT,
        answer=lambda request: DownlinkReply(data={"barCode": "G1", "status": 1}),
        token=lambda: token,
        backoff=Backoff(initial=1.0, factor=2.0, maximum=8.0),
        on_token_invalid=on_invalid,
        **options,
    )


def test_backoff_doubles_up_to_its_maximum_with_jitter_below() -> None:
    """Delays: initial after a lost link, doubling per failure, capped; jitter only shortens them."""
    backoff = Backoff(initial=1.0, factor=2.0, maximum=60.0)
    assert [backoff.delay(n) for n in range(8)] == [1, 2, 4, 8, 16, 32, 60, 60]
    jittered = Backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.5)
    rng = random.Random(1)
    assert all(2.0 <= jittered.delay(2, rng) <= 4.0 for _ in range(100))
    with pytest.raises(ValueError):
        Backoff(initial=10.0, maximum=1.0)


def test_reconnects_with_backoff_then_binds_by_heartbeat() -> None:
    """Refused connections are retried after 2, 4, 8, 8 s; the connection that opens binds by heartbeat."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    endpoint.refuse = True
    client = downlink_client(endpoint, clock)
    client.start()
    waits = []
    for _ in range(4):
        [call] = clock.getDelayedCalls()
        waits.append(call.getTime() - clock.seconds())
        clock.advance(waits[-1])
    assert waits == [2.0, 4.0, 8.0, 8.0] and endpoint.attempts == 5
    endpoint.refuse = False
    clock.advance(8.0)
    [(protocol, transport)] = endpoint.connections
    [bind] = frames(transport)
    assert bind["code"] == "heartbeat" and bind["token"] == "T" * 32
    assert bind["signature"] == sign("{}", "T" * 32, SECRET)
    bound = client.when_bound()
    answer_frame(protocol, bind, data={"time": "2026-11-24 08:30:00"})
    assert client.bound and bound.called and client.counters.binds == 1


def test_connect_now_skips_the_backoff_and_starts_it_over() -> None:
    """connect_now connects at once while waiting out a backoff, and the backoff starts over."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    endpoint.refuse = True
    client = downlink_client(endpoint, clock)
    client.start()
    clock.advance(2.0)
    clock.advance(4.0)
    assert endpoint.attempts == 3
    client.connect_now()
    assert endpoint.attempts == 4
    [call] = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 2.0  # failures counted from 0 again
    endpoint.refuse = False
    client.connect_now()
    assert endpoint.attempts == 5 and len(endpoint.connections) == 1 and not clock.getDelayedCalls()[1:]
    client.connect_now()  # connected: nothing to do
    assert endpoint.attempts == 5
    client.stop()
    client.connect_now()  # stopped: nothing to do
    assert endpoint.attempts == 5


def test_heartbeats_then_a_lost_connection_is_reconnected_at_once() -> None:
    """Bound, the lot sends a heartbeat every interval; a lost link is reconnected after the initial delay."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    client = downlink_client(endpoint, clock, heartbeat_interval=20.0)
    client.start()
    protocol, transport = endpoint.connections[0]
    answer_frame(protocol, frames(transport)[0])
    for _ in range(3):
        clock.advance(20)
    beats = frames(transport)
    assert [frame["code"] for frame in beats] == ["heartbeat"] * 3
    assert client.counters.heartbeats_sent == 3
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not client.bound and client.counters.lost == 1
    clock.advance(1.0)
    protocol, transport = endpoint.connections[1]
    answer_frame(protocol, frames(transport)[0])
    assert client.bound and client.counters.reconnects == 1


def test_a_refused_bind_asks_for_a_new_token_and_backs_off() -> None:
    """A 9000 to the bind heartbeat calls on_token_invalid, closes, and retries after a longer wait."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    invalid: list[bool] = []
    client = downlink_client(endpoint, clock, invalid=invalid)
    client.start()
    protocol, transport = endpoint.connections[0]
    answer_frame(protocol, frames(transport)[0], result="9000")
    assert invalid == [True] and transport.disconnecting and not client.bound
    protocol.connectionLost(Failure(ConnectionDone()))
    [call] = clock.getDelayedCalls()
    assert call.getTime() - clock.seconds() == 2.0
    assert client.counters.bind_failures == 1


def test_acks_are_replied_to_with_the_acks_token() -> None:
    """ACKs get REPLYs signed with the ACK's token; the gateway's heartbeat too; a bad signature gets 9006."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    client = downlink_client(endpoint, clock)
    client.start()
    protocol, transport = endpoint.connections[0]
    answer_frame(protocol, frames(transport)[0])
    protocol.dataReceived(ack_frame("gateOpen", "a1", "N" * 32, SECRET, {"barCode": "G1", "isOpen": 1}))
    protocol.dataReceived(ack_frame("heartbeat", "h1", "N" * 32, SECRET, {}))
    protocol.dataReceived(ack_frame("gateOpen", "a2", "N" * 32, "wrong secret", {"barCode": "G1"}))
    replies = frames(transport)
    assert [(r["oprNum"], r["resultCode"]) for r in replies] == [
        ("a1", "0000"),
        ("h1", "0000"),
        ("a2", "9006"),
    ]
    for reply in replies:
        assert reply["signature"] == sign(compact(reply["data"]), "N" * 32, SECRET)
    assert replies[0]["data"] == {"barCode": "G1", "status": 1}
    counters = client.counters
    assert (counters.replies, counters.heartbeat_replies, counters.bad_signatures) == (2, 1, 1)


def test_stop_closes_and_does_not_reconnect() -> None:
    """stop closes the connection, fires once it is gone, and nothing reconnects."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    client = downlink_client(endpoint, clock)
    client.start()
    protocol, transport = endpoint.connections[0]
    stopped = client.stop()
    assert transport.disconnecting and not stopped.called
    protocol.connectionLost(Failure(ConnectionDone()))
    assert stopped.called
    clock.advance(100)
    assert endpoint.attempts == 1


def bound_client(clock: Clock, endpoint: ScriptedEndpoint, **options: Any) -> tuple[Any, Any, DownlinkClient]:
    """A started client whose first connection is bound; its protocol and transport."""
    client = downlink_client(endpoint, clock, **options)
    client.start()
    protocol, transport = endpoint.connections[-1]
    answer_frame(protocol, frames(transport)[0])
    assert client.bound
    return protocol, transport, client


def test_a_silent_server_is_closed_after_read_idle_and_reconnected() -> None:
    """A server that sends nothing is closed read_idle seconds after it last spoke, and reconnected."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    protocol, transport, client = bound_client(clock, endpoint, heartbeat_interval=20.0, read_idle=45.0)
    for step in (20.0, 20.0, 4.9):
        clock.advance(step)
    assert not transport.disconnecting
    assert [frame["code"] for frame in frames(transport)] == ["heartbeat", "heartbeat"]
    clock.advance(0.1)
    assert transport.disconnecting and client.counters.read_idle_closes == 1
    protocol.connectionLost(Failure(ConnectionDone()))
    assert not client.bound and client.counters.lost == 1
    clock.advance(1.0)
    assert len(endpoint.connections) == 2
    protocol, transport = endpoint.connections[1]
    answer_frame(protocol, frames(transport)[0])
    assert client.bound and client.counters.reconnects == 1


def test_a_server_that_never_answers_the_bind_is_closed_after_read_idle() -> None:
    """read_idle runs from the moment the connection opens, before any bind answer."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    client = downlink_client(endpoint, clock, read_idle=5.0, bind_timeout=60.0)
    client.start()
    _, transport = endpoint.connections[0]
    clock.advance(5.0)
    assert transport.disconnecting and client.counters.read_idle_closes == 1


def test_server_traffic_keeps_the_connection_open() -> None:
    """Every byte from the server starts read_idle again: answered heartbeats, or bytes outside any frame."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    protocol, transport, client = bound_client(clock, endpoint, heartbeat_interval=20.0, read_idle=30.0)
    for _ in range(10):
        clock.advance(20.0)
        [beat] = frames(transport)
        answer_frame(protocol, beat)
    for _ in range(10):
        clock.advance(29.0)
        protocol.dataReceived(b"*")
        frames(transport)
    assert not transport.disconnecting and client.counters.read_idle_closes == 0
    assert client.bound


def test_read_idle_zero_never_closes() -> None:
    """read_idle 0 (the default) sets no timer: a silent server stays connected."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    _, transport, client = bound_client(clock, endpoint, heartbeat_interval=20.0)
    assert len(clock.getDelayedCalls()) == 1  # the heartbeat loop only
    clock.advance(3600.0)
    assert not transport.disconnecting and client.counters.read_idle_closes == 0
    with pytest.raises(ValueError):
        downlink_client(endpoint, clock, read_idle=-1.0)


def test_stop_and_a_lost_connection_cancel_the_read_idle_timer() -> None:
    """stop cancels the read-idle timer, and so does a connection lost before it fires."""
    clock, endpoint = Clock(), ScriptedEndpoint()
    protocol, _, client = bound_client(clock, endpoint, read_idle=45.0)
    protocol.connectionLost(Failure(ConnectionDone()))
    assert [call.getTime() for call in clock.getDelayedCalls()] == [1.0]  # the reconnection only
    clock.advance(1.0)
    protocol, transport = endpoint.connections[1]
    answer_frame(protocol, frames(transport)[0])
    stopped = client.stop()
    assert clock.getDelayedCalls() == []
    protocol.connectionLost(Failure(ConnectionDone()))
    assert stopped.called
    clock.advance(100.0)
    assert client.counters.read_idle_closes == 0 and endpoint.attempts == 2


def test_every_downlink_code_is_answered_as_the_gateway_expects() -> None:
    """Through the gateway's own downlink over iosim, every downlink of the catalog gets a 0000 REPLY."""
    lot, _, clock, _ = simulated_lot()
    settings = config.parse({"lot": [lot_entry()]})
    downlinks = Downlinks(
        config=settings,
        sessions=Sessions(clock, ZONE),
        passwords=SyncPasswords(),  # type: ignore[arg-type]
        journal=MemoryJournal(clock),
        clock=clock,
    )
    endpoint = PumpEndpoint(downlinks.factory())
    client = DownlinkClient(endpoint=endpoint, clock=clock, credentials=LOT, answer=lot.answer, bind="login")
    client.start()
    assert endpoint.pump is not None
    endpoint.pump.flush()
    assert client.bound and downlinks.state("P001").connected
    record = lot.model.random_record()
    overrides: dict[str, dict[str, Any]] = {
        "feeQuery": {"recordCode": record, "couponList": []},
        "carFix": {"recordCode": record},
    }
    codes = [interface.code for interface in INTERFACES if interface.downlink is not None]
    assert len(codes) == 16
    for code in codes:
        data = {**SAMPLES[code], **overrides.get(code, {})}  # type: ignore[dict-item]
        results: list[Any] = []
        downlinks.command("P001", code, data).addBoth(results.append)
        endpoint.pump.flush()
        [reply] = results
        assert isinstance(reply, LotReply), (code, reply)
        assert reply.result_code == "0000", (code, reply)
        interface = lookup(code)
        assert interface is not None
        if interface.response:
            validate(interface.response, reply.data)
    assert client.counters.replies == 16
    assert downlinks.counters["bad_signatures"] == 0

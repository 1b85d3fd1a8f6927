"""The downlink protocol: bytes to envelopes for the handler, frames back to bytes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim

from gateway.lots.tcp import DownlinkFactory, DownlinkProtocol
from gateway.protocol.envelope import EnvelopeError, Reply, Request, parse_frame, parse_reply, seen_opr
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign
from tests.lots.test_downlink import Gateway


class Recorder:
    """A FrameHandler that records the events it is given."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def connection_made(self, connection: DownlinkProtocol) -> None:
        self.events.append(("made", None))

    def request_received(self, connection: DownlinkProtocol, request: Request) -> None:
        self.events.append(("request", request))

    def reply_received(self, connection: DownlinkProtocol, reply: Reply) -> None:
        self.events.append(("reply", reply))

    def malformed_received(self, connection: DownlinkProtocol, error: EnvelopeError) -> None:
        self.events.append(("malformed", error))

    def garbage_received(self, connection: DownlinkProtocol, count: int) -> None:
        self.events.append(("garbage", count))

    def too_large(self, connection: DownlinkProtocol, event: FrameTooLarge) -> None:
        self.events.append(("too_large", event))
        connection.close("too large")

    def frame_failed(self, connection: DownlinkProtocol, failure: Failure) -> None:
        self.events.append(("failed", failure))

    def connection_lost(self, connection: DownlinkProtocol, reason: Failure) -> None:
        self.events.append(("lost", None))


def connected(max_frame_bytes: int = 1000) -> tuple[DownlinkProtocol, StringTransport, Recorder, Clock]:
    recorder = Recorder()
    clock = Clock()
    factory = DownlinkFactory(recorder, clock, max_frame_bytes)
    protocol = factory.buildProtocol(IPv4Address("TCP", "192.0.2.1", 1234))
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport, recorder, clock


HEARTBEAT = {"token": "t", "code": "heartbeat", "oprNum": "o1", "signature": "", "data": {"a": "$#*"}}


def test_parse_frame_tells_requests_from_replies() -> None:
    """A payload with a top-level resultCode is a Reply, keeping data as written; others are Requests."""
    reply = parse_frame(
        b'{"code":"gateOpen","oprNum":"x","resultCode":"0000","resultMessage":"ok",'
        b'"signature":"S","data":{ "a" : 1 }}'
    )
    assert reply == Reply("gateOpen", "x", "0000", "ok", "S", {"a": 1}, '{ "a" : 1 }')
    request = parse_frame(b'{"code":"heartbeat","oprNum":"y","token":"t","data":{"resultCode":"1"}}')
    assert isinstance(request, Request) and request.opr == "y" and request.data == {"resultCode": "1"}


def test_parse_frame_unescapes_by_parsing() -> None:
    """The framing escapes are undone by the JSON parse; data_text keeps the escapes as written."""
    request = parse_frame(encode_frame(HEARTBEAT)[2:-3])
    assert isinstance(request, Request)
    assert request.data == {"a": "$#*"}
    assert request.data_text == '{"a":"\\u0024\\u0023\\u002a"}'


@pytest.mark.parametrize(
    ("payload", "opr"),
    [
        (b'{"oprNum":"abc","code":', "abc"),
        (b'{"oprNum" : "abc", "resultCode":"0000",', "abc"),
        (b"not json", ""),
        (b"", ""),
        (b'\xff{"oprNum":"u8"}', "u8"),
        (b'{"oprNum":"' + b"x" * 40 + b'"', ""),
    ],
)
def test_parse_frame_reads_the_opr_num_of_bad_frames(payload: bytes, opr: str) -> None:
    """A payload that does not parse raises EnvelopeError carrying the oprNum when one can be read."""
    with pytest.raises(EnvelopeError) as caught:
        parse_frame(payload)
    assert caught.value.opr == opr
    assert caught.value.result in (Result.MALFORMED, Result.EMPTY_MESSAGE)


def test_parse_reply_rejects_non_objects() -> None:
    """parse_reply raises a 9002 EnvelopeError for text that is not a JSON object."""
    with pytest.raises(EnvelopeError) as caught:
        parse_reply("[1]")
    assert caught.value.result is Result.MALFORMED
    assert seen_opr('{"oprNum": "q"}') == "q"


def test_frames_split_byte_by_byte() -> None:
    """Frames fed one byte at a time come out whole and in order."""
    protocol, _, recorder, _ = connected()
    data = encode_frame(HEARTBEAT) + encode_frame({**HEARTBEAT, "oprNum": "o2"})
    for byte in data:
        protocol.dataReceived(bytes([byte]))
    requests = [event for kind, event in recorder.events if kind == "request"]
    assert [r.opr for r in requests] == ["o1", "o2"]
    assert requests[0].data == {"a": "$#*"}


def test_garbage_between_frames_is_skipped_and_reported() -> None:
    """Bytes outside frames are skipped, reported as garbage, and the frames around them still parse."""
    protocol, _, recorder, _ = connected()
    protocol.dataReceived(b"junk" + encode_frame(HEARTBEAT) + b"\r\nmore junk" + encode_frame(HEARTBEAT))
    kinds = [kind for kind, _ in recorder.events]
    assert kinds.count("request") == 2
    assert sum(count for kind, count in recorder.events if kind == "garbage") == len(b"junk\r\nmore junk")


def test_invalid_json_is_reported_with_its_opr_num() -> None:
    """A frame that is not JSON reaches the handler as malformed, with the oprNum when readable."""
    protocol, _, recorder, _ = connected()
    protocol.dataReceived(b'$${"oprNum":"z9",##*$$nope##*')
    errors = [event for kind, event in recorder.events if kind == "malformed"]
    assert [e.opr for e in errors] == ["z9", ""]


def test_oversize_frame_is_reported_once() -> None:
    """A frame over max_frame_bytes is reported; nothing after it is parsed."""
    protocol, transport, recorder, _ = connected(max_frame_bytes=64)
    protocol.dataReceived(b"$$" + b"x" * 100 + b"##*" + encode_frame(HEARTBEAT))
    assert [kind for kind, _ in recorder.events] == ["made", "too_large"]
    assert transport.disconnecting


def test_handler_exceptions_are_contained() -> None:
    """A handler raising on one frame is reported as frame_failed and the next frame is still delivered."""
    protocol, _, recorder, _ = connected()
    calls: list[str] = []

    def request_received(connection: DownlinkProtocol, request: Request) -> None:
        calls.append(request.opr)
        if len(calls) == 1:
            raise RuntimeError("boom")

    recorder.request_received = request_received  # type: ignore[method-assign]
    protocol.dataReceived(encode_frame(HEARTBEAT) + encode_frame({**HEARTBEAT, "oprNum": "o2"}))
    assert calls == ["o1", "o2"]
    [failure] = [event for kind, event in recorder.events if kind == "failed"]
    assert failure.check(RuntimeError)


def test_timestamps_and_send() -> None:
    """Reading and writing update last_read and last_write from the clock; send writes the frame."""
    protocol, transport, _, clock = connected()
    clock.advance(5)
    protocol.dataReceived(b"x")
    assert protocol.last_read == 5 and protocol.last_write == 0
    clock.advance(2)
    protocol.send(b"$${}##*")
    assert protocol.last_write == 7 and transport.value() == b"$${}##*"
    protocol.close("done")
    protocol.send(b"$${}##*")
    assert transport.value() == b"$${}##*" and protocol.close_reason == "done"
    assert protocol.peer == "192.0.2.1:1234"


def test_connections_are_slotted() -> None:
    """The per-connection fields are slots, and a connection schedules nothing on the clock."""
    protocol, _, _, clock = connected()
    assert "park" in DownlinkProtocol.__slots__ and "last_read" not in vars(protocol)
    assert clock.getDelayedCalls() == []


class LotClient(Protocol):
    """A lot's side of a real connection: sends frames, collects what comes back."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(100_000)
        self.messages: list[dict[str, Any]] = []

    def dataReceived(self, data: bytes) -> None:
        for event in self.decoder.feed(data):
            assert isinstance(event, bytes)
            self.messages.append(json.loads(event))


def test_pair_over_iosim() -> None:
    """Over an iosim pair a lot logs in, gets a command, replies, and the command's Deferred fires."""
    gateway = Gateway()
    server = gateway.factory.buildProtocol(IPv4Address("TCP", "10.1.1.1", 5555))
    client = LotClient()
    server_transport = iosim.FakeTransport(server, isServer=True)
    client_transport = iosim.FakeTransport(client, isServer=False)
    pump = iosim.connect(server, server_transport, client, client_transport, greet=False)
    data = {"parkUserName": "lot001", "parkUserPwd": "lot-password"}
    login = {"code": "login", "oprNum": "L1", "token": "", "signature": sign(compact(data), "", "s3cret")}
    client_transport.write(encode_frame({**login, "data": data}))
    pump.flush()
    [answer] = client.messages
    assert answer["resultCode"] == "0000"
    token = answer["data"]["token"]
    results: list[Any] = []
    gateway.downlinks.command("P001", "gateOpen", {"barCode": "B1"}).addBoth(results.append)
    pump.flush()
    ack = client.messages[1]
    assert ack["code"] == "gateOpen" and ack["token"] == token
    reply = {"code": "gateOpen", "oprNum": ack["oprNum"], "resultCode": "0000", "resultMessage": "opened"}
    client_transport.write(encode_frame({**reply, "signature": sign("{}", token, "s3cret"), "data": {}}))
    pump.flush()
    assert results[0].result_message == "opened"
    client_transport.loseConnection()
    pump.flush()
    assert not gateway.downlinks.state("P001").connected

"""FrameProbe, the kit's scripted TCP connection, in memory."""

from __future__ import annotations

from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from gateway.conformance.wire import Frame, FrameProbe
from gateway.protocol.framing import encode_frame


def probe() -> tuple[FrameProbe, StringTransport, Clock]:
    clock = Clock()
    connection = FrameProbe(clock)
    transport = StringTransport()
    connection.makeConnection(transport)
    return connection, transport, clock


def test_request_writes_a_signed_escaped_frame() -> None:
    """`request` writes one `$$...##*` frame whose `$` is escaped."""
    connection, transport, _ = probe()
    frame = connection.request("heartbeat", "o1", "t" * 32, "k", {"x": "$"})
    assert transport.value() == frame
    assert frame.startswith(b"$$") and frame.endswith(b"##*") and b"\\u0024" in frame


def test_answer_to_finds_the_response_with_that_opr_in_pieces_or_already_received() -> None:
    """A response split over writes is found by its oprNum; one that came earlier is found at once."""
    connection, _, _ = probe()
    waited: list[Frame | None] = []
    connection.answer_to("o1", 5).addCallback(waited.append)
    frame = encode_frame({"code": "heartbeat", "oprNum": "o1", "resultCode": "0000"})
    connection.dataReceived(encode_frame({"code": "heartbeat", "oprNum": "other"}) + frame[:7])
    assert waited == []
    connection.dataReceived(frame[7:])
    assert waited == [{"code": "heartbeat", "oprNum": "o1", "resultCode": "0000"}]
    again: list[Frame | None] = []
    connection.answer_to("o1", 5).addCallback(again.append)
    assert again == waited


def test_expect_times_out_with_none_and_close_fires_the_waiters() -> None:
    """No matching frame by the timeout gives None; a lost connection ends every wait."""
    connection, _, clock = probe()
    timed: list[Frame | None] = []
    connection.answer_to("o1", 2).addCallback(timed.append)
    clock.advance(2)
    assert timed == [None]
    pending: list[Frame | None] = []
    closed: list[bool] = []
    connection.answer_to("o2", 5).addCallback(pending.append)
    connection.closed_within(5).addCallback(closed.append)
    connection.connectionLost(Failure(ConnectionError()))
    assert (pending, closed) == ([None], [True])
    assert clock.getDelayedCalls() == []


def test_closed_within_is_false_while_the_connection_stays_open() -> None:
    """`closed_within` says False once its time is up with the connection still open."""
    connection, _, clock = probe()
    closed: list[bool] = []
    connection.closed_within(3).addCallback(closed.append)
    clock.advance(3)
    assert closed == [False]


def test_payloads_are_kept_as_framed() -> None:
    """The raw payload (escapes included) is kept beside the parsed frame; a non-JSON one too."""
    connection, _, _ = probe()
    connection.dataReceived(b'$${"a":"\\u0024"}##*$$not json##*')
    assert connection.payloads == [b'{"a":"\\u0024"}', b"not json"]
    assert connection.frames == [{"a": "$"}, {"": "not json"}]

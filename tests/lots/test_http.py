"""The uplink's HTTP layer (llhttp): paths, methods, forms, HTTP/1.1's rules, and a lot that leaves early."""

from __future__ import annotations

import gc
import json
import re
import weakref
from urllib.parse import quote, unquote_to_bytes, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import parse_qs

from gateway.lots.http import (
    MAX_HEAD_BYTES,
    MAX_HEADERS,
    MAX_PIPELINED,
    MAX_URL_BYTES,
    PIPELINE_BUFFER,
    UplinkChannel,
    UplinkEndpoint,
    UplinkSite,
    form_unquote,
    parse_form,
)
from tests.lots.harness import Uplink
from tests.protocol.samples import SAMPLES

CAR_IN = SAMPLES["carIn"]


@pytest.fixture
def gw() -> Uplink:
    return Uplink()


FORM_BYTES = st.binary(max_size=40) | st.lists(
    st.sampled_from([b"%", b"%4", b"%4A", b"%e9", b"=", b"+", b"&", b"a", b"\r\n", b"%zz", b"\xff"])
).map(b"".join)


@given(FORM_BYTES)
def test_form_unquote_matches_the_standard_library(value: bytes) -> None:
    """Any bytes decode as urllib's unquote_to_bytes does, `+` being a space."""
    assert form_unquote(value) == unquote_to_bytes(value.replace(b"+", b" "))


@given(FORM_BYTES)
def test_parse_form_matches_twisted_without_semicolons(body: bytes) -> None:
    """A body without `;` gives the fields twisted.web's parser gives (blank values kept)."""
    body = body.replace(b";", b"")
    assert parse_form(body) == parse_qs(body, keep_blank_values=True)


def test_semicolon_stays_in_the_value() -> None:
    """`;` does not split fields: a lot's unencoded JSON keeps it."""
    assert parse_form(b'param={"a":"x;y=1"}&b=2') == {b"param": [b'{"a":"x;y=1"}'], b"b": [b"2"]}


def test_a_fully_escaped_envelope_arrives_whole(gw: Uplink) -> None:
    """An envelope whose every character is percent-encoded is read as sent."""
    token = gw.login()
    envelope = json.dumps(gw.envelope("carIn", CAR_IN, token=token), ensure_ascii=False)
    body = "param=" + "".join("%%%02X" % byte for byte in envelope.encode("utf-8"))
    status, _, answer = gw.post(body)
    assert status == 200 and json.loads(answer)["resultCode"] == "0000"
    assert gw.journal.records[-1].body == CAR_IN


def test_url_code_is_percent_decoded(gw: Uplink) -> None:
    """`/uplink/car%49n` is `/uplink/carIn`."""
    token = gw.login()
    envelope = gw.envelope("carIn", CAR_IN, token=token)
    status, _, answer = gw.post(urlencode({"param": json.dumps(envelope)}), "/uplink/car%49n")
    assert status == 200 and json.loads(answer)["resultCode"] == "0000"


def test_other_paths_are_404(gw: Uplink) -> None:
    """Only /uplink and /uplink/{code} exist; deeper or other paths are 404."""
    for path in ("/", "/uplinks", "/uplink/", "/uplink/carIn/x", "/v1/commands"):
        assert gw.post(b"param={}", path)[0] == 404, path


def test_other_methods_are_405_naming_post(gw: Uplink) -> None:
    """GET or PUT on the uplink is 405 with `Allow: POST`."""
    for method in ("GET", "PUT"):
        status, headers, _ = gw.post(b"", "/uplink/carIn", method=method)
        assert status == 405 and headers["allow"] == "POST"


class _LaterHandler:
    """An uplink handler whose answer the test gives; it keeps the request texts it was handed."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []
        self.texts: list[str] = []

    def handle(
        self, text: str, url_code: str | None = None, files: object = (), gone: object = None
    ) -> Deferred[bytes]:
        self.texts.append(text)
        answer: Deferred[bytes] = Deferred()
        self.pending.append(answer)
        return answer


FORM_POST = (
    b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
    b"Content-Length: %d\r\n\r\n%s"
    % (len(b"param=" + quote("{}").encode()), b"param=" + quote("{}").encode())
)


def _channel(handler: object, clock: Clock | None = None) -> tuple[UplinkChannel, StringTransport]:
    """A connection to an uplink site whose handler is `handler`."""
    site = UplinkSite(UplinkEndpoint(handler, 10**6), reactor=clock or Clock())  # type: ignore[arg-type]
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    assert protocol is not None
    transport = StringTransport()
    protocol.makeConnection(transport)
    return protocol, transport


def _connected(handler: _LaterHandler) -> tuple[UplinkChannel, StringTransport]:
    protocol, transport = _channel(handler)
    protocol.dataReceived(FORM_POST)
    return protocol, transport


def test_a_later_answer_is_sent_with_its_length() -> None:
    """An answer given after the request returns is sent with Content-Length, not chunked."""
    handler = _LaterHandler()
    _, transport = _connected(handler)
    assert transport.value() == b""
    handler.pending[0].callback(b'{"resultCode":"0000"}')
    response = transport.value()
    assert b"Content-Length: 21\r\n" in response and b"chunked" not in response.lower()
    assert response.endswith(b'\r\n\r\n{"resultCode":"0000"}')


def test_an_answer_after_the_lot_left_is_dropped() -> None:
    """A lot that closed its connection before the answer: nothing is written, nothing fails."""
    handler = _LaterHandler()
    protocol, transport = _connected(handler)
    protocol.connectionLost(Failure(ConnectionDone()))
    handler.pending[0].callback(b'{"resultCode":"0000"}')
    assert transport.value() == b""


# HTTP/1.1 on llhttp: what twisted.web's channel did, and the bounds llhttp leaves to its caller


def _answers(transport: StringTransport) -> list[bytes]:
    """The status lines the channel has written, in order."""
    return re.findall(rb"HTTP/1\.[01] \d{3} [A-Za-z -]+", transport.value())


def _post(
    path: bytes = b"/uplink", extra: bytes = b"", body: bytes = b"{}", version: bytes = b"1.1"
) -> bytes:
    return b"POST %s HTTP/%s\r\nHost: gw\r\n%sContent-Length: %d\r\n\r\n%s" % (
        path,
        version,
        extra,
        len(body),
        body,
    )


def test_more_header_fields_than_max_headers_are_431_and_closed() -> None:
    """MAX_HEADERS fields are read; one more is answered 431, the connection closed, the request dropped."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    fields = b"".join(b"X-%d: y\r\n" % n for n in range(MAX_HEADERS - 2))  # with Host and Content-Length
    protocol.dataReceived(_post(extra=fields))
    assert len(handler.pending) == 1 and transport.value() == b""
    handler.pending[0].callback(b"{}")
    assert _answers(transport) == [b"HTTP/1.1 200 OK"]

    protocol, transport = _channel(handler)
    protocol.dataReceived(_post(extra=fields + b"X-last: y\r\n"))
    assert _answers(transport) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert transport.disconnecting and len(handler.pending) == 1


def test_a_head_over_max_head_bytes_is_431_sent_whole_or_a_byte_at_a_time() -> None:
    """A header field past MAX_HEAD_BYTES is refused whether it comes in one read or dripped over many
    (httptools gathers a field across reads before it reports it: the reads are counted too)."""
    big = b"X-Big: " + b"a" * MAX_HEAD_BYTES + b"\r\n"
    protocol, transport = _channel(_LaterHandler())
    protocol.dataReceived(_post(extra=big))
    assert _answers(transport) == [b"HTTP/1.1 431 Request Header Fields Too Large"]

    protocol, transport = _channel(_LaterHandler())
    protocol.dataReceived(b"POST /uplink HTTP/1.1\r\nX-Big: ")
    sent = 0
    while not transport.disconnecting:
        protocol.dataReceived(b"a" * 1000)
        sent += 1000
    assert MAX_HEAD_BYTES - 1000 <= sent <= MAX_HEAD_BYTES + 1000
    assert _answers(transport) == [b"HTTP/1.1 431 Request Header Fields Too Large"]
    assert protocol.reading is None  # what it had gathered is dropped


def test_a_url_over_max_url_bytes_is_414() -> None:
    """A request line whose URL passes MAX_URL_BYTES is answered 414 and the connection closed."""
    protocol, transport = _channel(_LaterHandler())
    protocol.dataReceived(_post(path=b"/uplink/" + b"c" * MAX_URL_BYTES))
    assert _answers(transport) == [b"HTTP/1.1 414 URI Too Long"] and transport.disconnecting


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"POST /uplink HTTP/1.1\r\nContent-Length: 12x\r\n\r\n",
        b"POST /uplink HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
        # both framings: the request smuggling llhttp refuses
        b"POST /uplink HTTP/1.1\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n",
        b"POST /uplink HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST /uplink HTTP/1.1\r\nBad Header\r\n\r\n",
        b"POST /uplink HTTP/1.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS hello on the plain port
    ],
    ids=["garbage", "length", "two lengths", "length and chunked", "chunk size", "field", "upgrade", "tls"],
)
def test_a_malformed_request_is_400_and_closed(request_bytes: bytes) -> None:
    """What llhttp cannot parse (or an upgrade) is answered 400 once, closed, and never handled."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(request_bytes)
    protocol.dataReceived(_post())  # what follows is dropped
    assert _answers(transport) == [b"HTTP/1.1 400 Bad Request"]
    assert transport.disconnecting and handler.pending == []


def test_pipelined_requests_are_answered_in_order_one_at_a_time() -> None:
    """Three requests in one read: the second is handled only once the first is answered, the answers
    come in the order of the requests, and the connection stays open."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(_post(body=b'"1"') + _post(body=b'"2"') + _post(body=b'"3"'))
    assert len(handler.pending) == 1
    handler.pending[0].callback(b"first")
    assert len(handler.pending) == 2 and transport.value().endswith(b"first")
    handler.pending[1].callback(b"second")
    handler.pending[2].callback(b"third")
    value = transport.value()
    assert value.index(b"first") < value.index(b"second") < value.index(b"third")
    assert _answers(transport) == [b"HTTP/1.1 200 OK"] * 3 and not transport.disconnecting


def test_bytes_sent_ahead_of_an_answer_are_held_up_to_a_bound_then_reading_pauses() -> None:
    """While a request is handled, what follows is held, not parsed; past PIPELINE_BUFFER bytes the
    transport stops reading, and reading resumes once the answer has gone and the bytes are parsed."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(_post())
    following = _post(body=b" " * (PIPELINE_BUFFER + 100))
    protocol.dataReceived(following[:1000])
    assert transport.producerState == "producing" and protocol.reading is None
    protocol.dataReceived(following[1000:])
    assert transport.producerState == "paused" and len(handler.pending) == 1
    handler.pending[0].callback(b"first")
    assert transport.producerState == "producing" and len(handler.pending) == 2


def test_more_than_max_pipelined_requests_at_once_are_answered_and_the_connection_closed() -> None:
    """A read holding more requests than MAX_PIPELINED: the first MAX_PIPELINED are answered, the last
    with `Connection: close`, and nothing more is read."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(_post() * (MAX_PIPELINED + 5))
    for n in range(MAX_PIPELINED):
        handler.pending[n].callback(b"ok")
    assert len(handler.pending) == MAX_PIPELINED
    assert _answers(transport) == [b"HTTP/1.1 200 OK"] * MAX_PIPELINED
    assert transport.value().count(b"Connection: close") == 1 and transport.disconnecting


def test_http_1_0_is_answered_in_its_version_and_closed_unless_it_asks_to_keep_alive() -> None:
    """An HTTP/1.0 request is answered HTTP/1.0 and the connection closed; with `Connection:
    keep-alive` it stays open and the answer says so. HTTP/1.1 with `Connection: close` is closed."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(_post(version=b"1.0"))
    handler.pending[-1].callback(b"ok")
    assert _answers(transport) == [b"HTTP/1.0 200 OK"] and transport.disconnecting

    protocol, transport = _channel(handler)
    protocol.dataReceived(_post(version=b"1.0", extra=b"Connection: keep-alive\r\n"))
    handler.pending[-1].callback(b"ok")
    assert b"Connection: keep-alive\r\n" in transport.value() and not transport.disconnecting

    protocol, transport = _channel(handler)
    protocol.dataReceived(_post(extra=b"Connection: close\r\n"))
    handler.pending[-1].callback(b"ok")
    assert b"Connection: close\r\n" in transport.value() and transport.disconnecting


def test_expect_100_continue_is_answered_before_the_body() -> None:
    """A head with `Expect: 100-continue` gets `100 Continue` at once, and its answer once the body is in."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(
        b"POST /uplink HTTP/1.1\r\nHost: gw\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
    )
    assert transport.value() == b"HTTP/1.1 100 Continue\r\n\r\n"
    protocol.dataReceived(b"{}")
    handler.pending[0].callback(b"ok")
    assert _answers(transport) == [b"HTTP/1.1 100 Continue", b"HTTP/1.1 200 OK"]


def test_the_url_s_param_is_the_request_text_when_the_body_has_none() -> None:
    """`POST /uplink?param=...` with an empty body: the query string's `param` is the request text."""
    handler = _LaterHandler()
    protocol, _ = _channel(handler)
    protocol.dataReceived(_post(path=b"/uplink?x=1&param=%7B%22code%22%3A%22heartbeat%22%7D", body=b""))
    assert handler.texts == ['{"code":"heartbeat"}']


def test_a_peer_gone_before_its_answer_takes_its_pipelined_requests_with_it() -> None:
    """A lot that left with two requests unanswered: neither answer is written, the second is never
    handled, and both are told gone."""
    handler = _LaterHandler()
    protocol, transport = _channel(handler)
    protocol.dataReceived(_post() + _post())
    protocol.connectionLost(Failure(ConnectionDone()))
    handler.pending[0].callback(b"late")
    assert transport.value() == b"" and len(handler.pending) == 1


def test_a_peer_that_does_not_read_its_answers_is_not_read_either() -> None:
    """When the transport's buffer is full (its producer paused), the channel stops reading the peer."""
    protocol, transport = _channel(_LaterHandler())
    assert transport.producer is protocol
    protocol.pauseProducing()
    assert transport.producerState == "paused"
    protocol.resumeProducing()
    assert transport.producerState == "producing"


def test_a_head_request_gets_the_status_and_no_body() -> None:
    """HEAD on the uplink is 405 with its headers (Content-Length included) and no body."""
    protocol, transport = _channel(_LaterHandler())
    protocol.dataReceived(b"HEAD /uplink HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert _answers(transport) == [b"HTTP/1.1 405 Method Not Allowed"]
    assert transport.value().endswith(b"\r\n\r\n") and b"Allow: POST\r\n" in transport.value()


def test_a_chunked_body_s_trailer_is_bounded_and_not_taken_as_headers() -> None:
    """Trailer fields after the last chunk are dropped (a trailing Content-Type changes nothing), and
    one dripped past MAX_HEAD_BYTES is refused 431 like a head's."""
    handler = _LaterHandler()
    chunked = b"POST /uplink HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n"
    protocol, transport = _channel(handler)
    protocol.dataReceived(chunked + b"Content-Type: multipart/form-data\r\n\r\n")
    assert handler.texts == ["{}"] and protocol.reading is None

    protocol, transport = _channel(handler)
    protocol.dataReceived(chunked + b"X-Trailer: ")
    sent = 0
    while not transport.disconnecting:
        protocol.dataReceived(b"t" * 1000)
        sent += 1000
    assert sent <= MAX_HEAD_BYTES + 1000 and handler.texts == ["{}"]
    assert _answers(transport) == [b"HTTP/1.1 431 Request Header Fields Too Large"]


def test_a_pipelined_request_s_100_continue_waits_for_the_answers_before_it() -> None:
    """A head asking for 100 Continue behind a request not yet answered gets it only after that answer,
    so the answers stay in order; its body's time starts then too."""
    handler = _LaterHandler()
    clock = Clock()
    protocol, transport = _channel(handler, clock)
    protocol.dataReceived(_post() + _post(extra=b"Expect: 100-continue\r\n")[:-2])
    assert transport.value() == b""
    clock.advance(60)  # no deadline runs while the first is handled
    handler.pending[0].callback(b"first")
    assert _answers(transport) == [b"HTTP/1.1 200 OK", b"HTTP/1.1 100 Continue"]
    assert not transport.disconnecting
    protocol.dataReceived(b"{}")
    assert len(handler.pending) == 2


def test_a_closed_connection_is_freed_without_the_garbage_collector() -> None:
    """Once its connection is lost, a channel is freed by reference counting alone: its parser, which
    holds the channel's methods, is let go (thousands of hostile connections a minute would
    otherwise wait as cycles for a full collection)."""
    protocol, transport = _channel(_LaterHandler())
    protocol.dataReceived(_post() + _post(body=b"")[:-10])
    protocol.connectionLost(Failure(ConnectionDone()))
    transport.unregisterProducer()  # as a real transport lets go of its producer as it closes
    gone = weakref.ref(protocol)
    gc.disable()
    try:
        del protocol
        assert gone() is None
    finally:
        gc.enable()

"""The uplink's HTTP layer: paths, methods, form decoding, and a lot that leaves early."""

from __future__ import annotations

import json
from urllib.parse import quote, unquote_to_bytes, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.web.http import parse_qs

from gateway.lots.http import UplinkResource, UplinkSite, form_unquote, parse_form
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
    """An uplink handler whose answer the test gives."""

    def __init__(self) -> None:
        self.pending: list[Deferred[bytes]] = []

    def handle(
        self, text: str, url_code: str | None = None, files: object = (), gone: object = None
    ) -> Deferred[bytes]:
        answer: Deferred[bytes] = Deferred()
        self.pending.append(answer)
        return answer


def _connected(handler: _LaterHandler) -> tuple[object, StringTransport]:
    site = UplinkSite(UplinkResource(handler, 1000).resource())  # type: ignore[arg-type]
    protocol = site.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
    transport = StringTransport()
    protocol.makeConnection(transport)  # type: ignore[union-attr]
    body = b"param=" + quote("{}").encode()
    protocol.dataReceived(  # type: ignore[union-attr]
        b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
    )
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
    protocol.connectionLost(Failure(ConnectionDone()))  # type: ignore[union-attr]
    handler.pending[0].callback(b'{"resultCode":"0000"}')
    assert transport.value() == b""

"""Request envelopes are parsed with the span of `data`; responses are built signed."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.envelope import (
    EnvelopeError,
    ack_frame,
    build_response,
    parse_reply,
    parse_request,
    request_text,
    response_text,
    signed_request_text,
)
from gateway.protocol.framing import encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def test_data_span_is_the_text_as_written() -> None:
    """`data_text` is the `data` member exactly as the lot wrote it, spaces and all."""
    text = (
        '{ "token" : "t", "code":"carIn", "oprNum":"o1", "signature":"S",\n "data" :  {"b" : 1, "a":"中"}  }'
    )
    request = parse_request(text)
    assert request.data_text == '{"b" : 1, "a":"中"}'
    assert request.data == {"b": 1, "a": "中"}
    assert (request.token, request.code, request.opr, request.signature) == (
        "t",
        "carIn",
        "o1",
        "S",
    )


def test_missing_data_and_header_fields_are_empty() -> None:
    """Absent or null header fields read as "", and absent `data` as None with empty text."""
    request = parse_request('{"code":"heartbeat","token":null}')
    assert (request.token, request.opr, request.signature) == ("", "", "")
    assert request.data is None and request.data_text == ""


def test_numeric_opr_num_is_read_as_text() -> None:
    """An `oprNum` sent as a number is kept as its digits."""
    assert parse_request('{"oprNum": 1234, "data": {}}').opr == "1234"


def test_byte_order_mark_is_skipped() -> None:
    """A leading UTF-8 byte order mark does not make the message malformed."""
    assert parse_request('\ufeff{"code":"carIn"}').code == "carIn"


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
def test_empty_message_is_9005(text: str) -> None:
    """An empty or blank message is answered 9005."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request(text)
    assert caught.value.result is Result.EMPTY_MESSAGE


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[1]", "not a JSON object"),
        ("{", "member name"),
        ('{"a":1} trailing', "extra text"),
        ('{"code":["x"]}', "code: must be a string"),
        ('{"token":{}}', "token: must be a string"),
        ('{"oprNum":"' + "x" * 37 + '"}', "oprNum: longer than 36"),
        ('{"data":' + "[" * 100_000 + "]" * 100_000 + "}", "nested deeper than 32"),
        ('{"a" 1}', "':'"),
    ],
)
def test_malformed_message_is_9002_with_a_reason(text: str, detail: str) -> None:
    """Text that is not a request envelope is answered 9002, saying what is wrong."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request(text)
    assert caught.value.result is Result.MALFORMED
    assert detail in caught.value.detail


@given(st.text(max_size=200))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    """No text makes the parser raise anything but EnvelopeError."""
    try:
        parse_request(text)
    except EnvelopeError as error:
        assert error.result in (Result.MALFORMED, Result.EMPTY_MESSAGE)


@given(json_values, st.sampled_from([None, 0, 2]), st.text(max_size=36))
def test_data_span_round_trips(data: object, indent: int | None, opr: str) -> None:
    """Whatever the formatting, the span holds `data` and parses back to it."""
    envelope = {"token": "t", "code": "carIn", "oprNum": opr, "signature": "", "data": data}
    text = json.dumps(envelope, indent=indent, ensure_ascii=indent is None)
    request = parse_request(text)
    assert request.data == data
    assert json.loads(request.data_text) == data
    assert request.opr == opr


def test_response_is_signed_over_compact_data() -> None:
    """A response carries the header of B.3 and signs compact `data` with token and secret."""
    body = build_response("login", "o1", Result.OK, "操作成功", {"token": "T", "parkCode": "P1"}, "", "k")
    response = json.loads(body)
    assert list(response) == ["code", "oprNum", "resultCode", "resultMessage", "signature", "data"]
    assert response["resultCode"] == "0000" and response["oprNum"] == "o1"
    assert response["signature"] == sign(compact(response["data"]), "", "k")
    assert '"操作成功"' in body.decode("utf-8")


# Item 1: header members are bounded as in 表B.2 and a refused value is quoted, never echoed whole.

HEADER_LIMITS = {"token": 32, "code": 10, "oprNum": 36, "signature": 100}


@pytest.mark.parametrize(("name", "limit"), HEADER_LIMITS.items())
def test_header_member_at_its_limit_is_taken_and_one_longer_is_9002(name: str, limit: int) -> None:
    """Each header member may be as long as 表B.2 says; one character more is 9002 naming it."""
    header = {"token": "", "code": "carIn", "oprNum": "o1", "signature": ""}
    assert parse_request(json.dumps({**header, name: "x" * limit, "data": {}})) is not None
    with pytest.raises(EnvelopeError) as caught:
        parse_request(json.dumps({**header, name: "x" * (limit + 1), "data": {}}))
    assert caught.value.result is Result.MALFORMED
    assert caught.value.detail.startswith(f"{name}: longer than {limit} characters")


def test_huge_code_without_token_is_refused_and_quoted_by_36_characters() -> None:
    """A 5 MiB `code` (no token) is 9002; the answer and its detail hold at most 36 of its characters."""
    huge = "A" * (5 << 20)
    with pytest.raises(EnvelopeError) as caught:
        parse_request('{"code":"%s","oprNum":"o1","data":{}}' % huge)
    error = caught.value
    assert error.result is Result.MALFORMED
    assert "A" * 36 in error.detail and "A" * 37 not in error.detail
    assert error.code == "" and error.opr == "o1"
    answer = build_response(
        error.code, error.opr, error.result, error.result.message(error.detail), {}, "", ""
    )
    assert len(answer) < 400 and b"A" * 37 not in answer


def test_long_opr_num_is_not_echoed() -> None:
    """An oprNum over 36 characters is refused, and the answer's oprNum is left empty, the code kept."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request('{"code":"carIn","oprNum":"%s","data":{}}' % ("9" * 1000))
    assert (caught.value.code, caught.value.opr) == ("carIn", "")
    assert "9" * 37 not in caught.value.detail


def test_one_request_builder_for_acks_and_lots() -> None:
    """request_text, signed_request_text and ack_frame make the same signed envelope; ack_frame as a frame."""
    text = request_text("gateOpen", "o1", "T", "k", {"barCode": "G1"})
    assert text == signed_request_text("gateOpen", "o1", "T", "k", '{"barCode":"G1"}')
    assert ack_frame("gateOpen", "o1", "T", "k", {"barCode": "G1"}) == encode_json_frame(text)
    request = parse_request(text)
    assert (request.code, request.opr, request.token) == ("gateOpen", "o1", "T")
    assert request.signature == sign('{"barCode":"G1"}', "T", "k")


def test_a_lots_reply_and_the_gateways_response_share_one_builder() -> None:
    """response_text with a Result's code is build_response's text; any other result code is escaped."""
    built = build_response("carIn", "o1", Result.OK, "ok", {"a": 1}, "T", "k")
    assert response_text("carIn", "o1", "0000", "ok", {"a": 1}, "T", "k").encode() == built
    odd = parse_reply(response_text("gateOpen", "o2", 'x"y', "m", {}, "T", "k"))
    assert odd.result_code == 'x"y' and odd.signed_by("T", "k") and not odd.ok


def test_a_reply_without_a_result_code_is_refused() -> None:
    """parse_reply refuses a text without resultCode (9002), naming it."""
    with pytest.raises(EnvelopeError) as caught:
        parse_reply('{"code":"carIn","oprNum":"o"}')
    assert caught.value.result is Result.MALFORMED and "resultCode" in caught.value.detail

"""The one JSON parser's number and nesting rules (CONTRACT §4), shared by uplink, downlink and API."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.envelope import EnvelopeError, Reply, parse_frame, parse_request
from gateway.protocol.jsontext import _NOT_BRACKETS, ECHO_MAX, INT_LIMIT, MAX_DEPTH, JSONRefused, echo, loads
from gateway.protocol.results import Result


def _nest(depth: int, inner: str = "1") -> str:
    """`inner` inside `depth` levels, arrays and objects in turn."""
    text = inner
    for level in range(depth):
        text = "[" + text + "]" if level % 2 else '{"k":' + text + "}"
    return text


def _refused(text: str | bytes, root: str = "") -> JSONRefused:
    with pytest.raises(JSONRefused) as caught:
        loads(text, root)
    return caught.value


@pytest.mark.parametrize(
    ("literal", "why"),
    [
        ("1e999", "too large for a double"),
        ("-1e999", "too large for a double"),
        ("1.7976931348623159e308", "too large for a double"),
        ("NaN", "NaN is not JSON"),
        ("Infinity", "Infinity is not JSON"),
        ("-Infinity", "-Infinity is not JSON"),
        (str(INT_LIMIT + 1), "beyond ±2^63"),
        (str(-INT_LIMIT - 1), "beyond ±2^63"),
        ("1" * 5000, "beyond ±2^63"),
    ],
)
def test_refused_number_is_9010_naming_its_field(literal: str, why: str) -> None:
    """A non-finite or overflowing number, or an integer beyond ±2^63, is 9010 with the field's path."""
    error = _refused('{"a":[1,{"totalAmount":%s}]}' % literal, root="data")
    assert error.result is Result.FIELD_INVALID
    assert error.path == "data.a[1].totalAmount"
    assert error.detail.startswith("data.a[1].totalAmount: ") and why in error.detail
    assert len(error.detail) < 120  # the literal is quoted at most ECHO_MAX characters long


@pytest.mark.parametrize(
    "literal", [str(INT_LIMIT), str(-INT_LIMIT), "1.7976931348623157e308", "1e-999", "-0", "0.5e-5"]
)
def test_numbers_within_the_rules_are_taken(literal: str) -> None:
    """The limits themselves, the largest double and underflow to zero all parse as `json` does."""
    assert loads('{"x":%s}' % literal) == {"x": json.loads(literal)}


def test_nesting_is_bounded_at_32() -> None:
    """32 levels parse; 33 are 9002, however the brackets mix; brackets in strings do not count."""
    assert loads(_nest(MAX_DEPTH)) is not None
    assert loads(_nest(MAX_DEPTH, '"' + '[[[[{{{{\\"' * 50 + '"')) is not None
    error = _refused(_nest(MAX_DEPTH + 1))
    assert (error.result, error.detail) == (Result.MALFORMED, "nested deeper than 32 levels")
    # Many brackets in all, but never deep: the exact measure, not the cheap count, decides.
    assert loads("[" + ",".join(["[]"] * 1000) + "]") == [[]] * 1000


def test_very_deep_nesting_raises_no_recursion_error() -> None:
    """100,000 levels are refused 9002 like 33: nothing recurses that deep."""
    for text in ("[" * 100_000, '{"a":' * 100_000 + "1" + "}" * 100_000):
        assert _refused(text).result is Result.MALFORMED


def test_bytes_are_decoded_as_json_loads_does() -> None:
    """A body in bytes is read as UTF-8 (or UTF-16/32 by its first bytes); broken UTF-8 is 9002."""
    assert loads('{"车":"京A"}'.encode()) == {"车": "京A"}
    assert loads('{"a":1}'.encode("utf-16")) == {"a": 1}
    assert _refused(b'{"a":"\xff"}').result is Result.MALFORMED


def test_not_json_is_9002_with_a_position() -> None:
    """Broken JSON and trailing text are 9002, saying where."""
    assert "at character" in _refused('{"a":}').detail
    assert "extra text" in _refused('{"a":1} x').detail
    assert _refused("").result is Result.MALFORMED


def test_echo_quotes_at_most_36_characters() -> None:
    """A refused value is quoted by its first ECHO_MAX characters, marked when cut."""
    assert echo("x" * ECHO_MAX) == "x" * ECHO_MAX
    assert echo("x" * (ECHO_MAX + 1)) == "x" * ECHO_MAX + "…"


# Item 8 at the envelope: 1e999 was stored as null and answered 0000.


def test_envelope_refuses_1e999_in_data_naming_the_field() -> None:
    """An uplink whose data holds 1e999 is answered 9010 naming data.totalAmount, its code kept."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request('{"code":"carOut","oprNum":"o1","data":{"totalAmount":1e999}}')
    error = caught.value
    assert error.result is Result.FIELD_INVALID
    assert error.detail == "data.totalAmount: a number too large for a double (1e999)"


def test_envelope_refuses_a_big_integer_header() -> None:
    """An oprNum sent as an integer beyond 2^63 is 9010 naming oprNum, not a 5,000-digit echo."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request('{"code":"carIn","oprNum":%s,"data":{}}' % ("9" * 5000))
    assert caught.value.result is Result.FIELD_INVALID
    assert caught.value.detail.startswith("oprNum: an integer beyond ±2^63")
    assert len(caught.value.detail) < 100


def test_downlink_reply_and_request_follow_the_same_rules() -> None:
    """A TCP reply or request with 1e999 is 9010 naming the field; nested 33 deep, 9002."""
    for payload in (
        b'{"code":"gateOpen","oprNum":"o1","resultCode":"0000","data":{"x":1e999}}',
        b'{"code":"heartbeat","oprNum":"o1","data":{"x":1e999}}',
    ):
        with pytest.raises(EnvelopeError) as caught:
            parse_frame(payload)
        assert (caught.value.result, caught.value.detail.split(":")[0]) == (Result.FIELD_INVALID, "data.x")
        assert caught.value.opr == "o1"
    with pytest.raises(EnvelopeError) as caught:
        parse_frame(b'{"oprNum":"o2","resultCode":"0000","data":%s}' % _nest(MAX_DEPTH).encode())
    assert caught.value.result is Result.MALFORMED
    assert isinstance(parse_frame(b'{"oprNum":"o3","resultCode":"0000","data":{"x":1.5}}'), Reply)


def test_refused_number_in_broken_json_is_9002() -> None:
    """A refused number followed by text that is not JSON is 9002 (found by the fuzz suite)."""
    error = _refused("[-9223372036854775809")
    assert error.result is Result.MALFORMED and "at character" in error.detail


@given(st.text(alphabet='[]{}"\\ab:,\n', max_size=80) | st.text(max_size=40))
def test_depth_scan_never_fails_a_match_so_it_is_linear(text: str) -> None:
    """From any character but a bracket, the depth scan's pattern matches: no attempt fails after a
    long look (a failing string pattern rescanned the text per quote: 80 KB of `"\\` took 79 s)."""
    for index, char in enumerate(text):
        if char not in "[]{}":
            assert _NOT_BRACKETS.match(text, index) is not None, (text, index)


def test_open_strings_with_escapes_are_measured_in_one_pass() -> None:
    """An unterminated string of `"\\` pairs after 40 brackets is refused 9002 at once."""
    assert _refused("[" * 40 + '"\\' * 200_000).result is Result.MALFORMED

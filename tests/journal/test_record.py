"""The line format: serialization, the chain, checking and decoding lines."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.journal.record import (
    CHAIN_TAIL_LEN,
    GENESIS_CHAIN,
    BadLine,
    Record,
    check_line,
    decode_line,
    dumps_compact,
    encode_line,
    format_ts,
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # unbounded: beyond 64 bits too
    | st.integers(min_value=2**63, max_value=2**200)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
    | st.sampled_from(["\u2028", "\u2029", "\n", "\r\n", '"', "\\", "\x00", "\x7f", "😀", "\ufeff"]),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=8), children, max_size=5)
    ),
    max_leaves=25,
)


def line_of(body: object, seq: int = 1, prev: bytes = GENESIS_CHAIN) -> tuple[bytes, bytes]:
    return encode_line(seq, "2026-11-24T11:05:41.123456Z", "uplink", "P001", "carIn", "o-1", body, prev)


def test_line_layout() -> None:
    """A line holds the keys in order, compact, and ends with the chain and one newline."""
    line, chain = line_of({"plate": "粤B12345"})
    assert line == (
        b'{"seq":1,"ts":"2026-11-24T11:05:41.123456Z","kind":"uplink","park":"P001",'
        b'"code":"carIn","opr":"o-1","body":{"plate":"' + "粤B12345".encode() + b'"},'
        b'"chain":"' + chain + b'"}\n'
    )
    assert list(json.loads(line)) == ["seq", "ts", "kind", "park", "code", "opr", "body", "chain"]


def test_chain_covers_prev_and_the_line_before_the_chain() -> None:
    """The chain is BLAKE2b-128 over the previous chain and the line up to ',"chain":'."""
    prev = b"ab" * 16
    line, chain = line_of([1, 2], seq=7, prev=prev)
    head = line[: line.index(b',"chain":')]
    assert head == line[:-CHAIN_TAIL_LEN]
    assert chain == hashlib.blake2b(prev + head, digest_size=16).hexdigest().encode()
    assert check_line(line, 6, prev) == (7, chain)


def test_check_line_rejects_wrong_prev_and_seq() -> None:
    """A line checked against the wrong previous chain or seq is a BadLine."""
    line, _ = line_of(1, seq=2, prev=b"1" * 32)
    with pytest.raises(BadLine, match="chain"):
        check_line(line, 1, b"2" * 32)
    with pytest.raises(BadLine, match="seq 2 where 4"):
        check_line(line, 3, b"1" * 32)


@pytest.mark.parametrize(
    "line",
    [
        b"",
        b"garbage\n",
        b'{"seq":1,"ts":"2026',
        b"\x00" * 100 + b"\n",
        b'{"seq":01,"x":1,"chain":"' + b"0" * 32 + b'"}\n',
        b'{"seq":1,"x":1,"chain":"' + b"Z" * 32 + b'"}\n',
    ],
)
def test_check_line_rejects_malformed(line: bytes) -> None:
    """Partial, garbage or ill-shaped lines are BadLines, even as anchors."""
    with pytest.raises(BadLine):
        check_line(line, None, None)


def test_unicode_line_separators_stay_inside_the_line() -> None:
    """U+2028, U+2029 and newlines in a body never make a raw newline in the line."""
    body = {"a": "x\u2028y\u2029z\n\r", "b\n": ["\n"]}
    line, _ = line_of(body)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    assert decode_line(line).body == body


def test_big_integers_round_trip() -> None:
    """Integers beyond 64 bits (orjson refuses them) are written and read back exactly."""
    body = {"big": 2**64, "neg": -(2**70), "edge": 2**63, "list": [18446744073709551616]}
    line, chain = line_of(body)
    assert b"18446744073709551616" in line
    record = decode_line(line)
    assert record.body == body
    assert check_line(line, 0, GENESIS_CHAIN)[1] == chain


def test_lone_surrogates_are_escaped() -> None:
    """A lone surrogate (not UTF-8) is written as a JSON escape and read back."""
    line, _ = line_of({"s": "a\ud800b"})
    line.decode("utf-8")
    assert decode_line(line).body == {"s": "a\ud800b"}


def test_unserializable_body_raises() -> None:
    """A body that is not JSON-like raises TypeError; a non-finite float is null whichever encoder runs."""
    with pytest.raises(TypeError):
        dumps_compact({"x": object()})
    assert dumps_compact({"x": 2**64, "y": float("nan")}) == b'{"x":18446744073709551616,"y":null}'


@given(json_values)
def test_any_json_body_round_trips_on_one_line(body: object) -> None:
    """Any JSON-like body is one line, checks out, and decodes to an equal record."""
    line, chain = line_of(body, seq=3, prev=b"f" * 32)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")
    line.decode("utf-8")
    assert check_line(line, 2, b"f" * 32) == (3, chain)
    assert decode_line(line) == Record(
        3, "2026-11-24T11:05:41.123456Z", "uplink", "P001", "carIn", "o-1", body, chain.decode()
    )
    assert json.loads(line)["body"] == body


@given(st.text())
def test_any_header_text_stays_on_one_line(text: str) -> None:
    """kind, park, code and opr may hold any text; the line stays whole."""
    line, chain = encode_line(1, "t", text, text, text, text, text, GENESIS_CHAIN)
    assert line.count(b"\n") == 1
    record = decode_line(line)
    assert (record.kind, record.park, record.code, record.opr, record.body) == (text,) * 5
    assert check_line(line, 0, GENESIS_CHAIN) == (1, chain)


def test_decode_rejects_non_records() -> None:
    """decode_line raises BadLine for JSON that is not a record."""
    for line in (
        b"[1]\n",
        b'{"seq":1}\n',
        b"nope\n",
        b'{"seq":"1","ts":"","kind":"","park":"","code":"","opr":"","body":1,"chain":""}\n',
    ):
        with pytest.raises(BadLine):
            decode_line(line)


def test_format_ts() -> None:
    """Times are RFC 3339 UTC with microseconds."""
    assert format_ts(1795000000.25) == "2026-11-18T11:06:40.250000Z"
    assert format_ts(0) == "1970-01-01T00:00:00.000000Z"
    assert format_ts(1.9999999) == "1970-01-01T00:00:02.000000Z"

"""Fuzzing the uplink envelope parser: every text is a request or a protocol answer, in linear work."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.protocol import envelope, jsontext
from gateway.protocol.envelope import EnvelopeError, Request, build_response, parse_request
from gateway.protocol.results import Result
from tests.fuzz.ops import steps
from tests.fuzz.strategies import envelopes, hostile_text

ANSWERS = {Result.MALFORMED, Result.EMPTY_MESSAGE, Result.FIELD_INVALID}
# A refusal quotes at most 36 characters of a value, each at most 10 long in its repr
# (`\U0001f888`), inside a sentence, or a path of at most 120 characters.
_DETAIL_MAX = 36 * 10 + 150


def _answer(text: str) -> bytes:
    """What the gateway would answer before it looks at tokens: a request's fields, or the refusal."""
    try:
        request = parse_request(text)
    except EnvelopeError as error:
        assert error.result in ANSWERS
        assert len(error.code) <= 10 and len(error.opr) <= 36
        assert len(error.detail) <= _DETAIL_MAX, error.detail
        return build_response(
            error.code, error.opr, error.result, error.result.message(error.detail), {}, "", ""
        )
    assert isinstance(request, Request)
    assert len(request.token) <= 32 and len(request.code) <= 10
    assert len(request.opr) <= 36 and len(request.signature) <= 100
    return build_response(request.code, request.opr, Result.OK, "", request.data, "", "")


@given(hostile_text)
@settings(max_examples=400)
def test_hostile_text_gets_a_protocol_answer(text: str) -> None:
    """No text makes the parser raise anything but EnvelopeError, and every refusal is answerable."""
    body = json.loads(_answer(text))
    assert body["resultCode"] in {"0000", "9002", "9005", "9010"}


@given(envelopes())
@settings(max_examples=300)
def test_envelope_with_hostile_members_gets_a_protocol_answer(text: str) -> None:
    """Overlong headers, huge or non-finite numbers and deep data are refused, never let through."""
    answer = json.loads(_answer(text))
    if answer["resultCode"] == "0000":
        # What passed holds only finite numbers within ±2^63, nested at most 32 deep.
        jsontext.loads(json.dumps(answer["data"], allow_nan=False))


def _many_members(n: int) -> str:
    return "{" + ",".join(f'"m{i}":{i}' for i in range(n)) + "}"


def _many_arrays(n: int) -> str:
    return '{"data":[' + ",".join(["[]"] * n) + "]}"


def _escapes(n: int) -> str:
    return '{"data":"' + "\\u0024" * n + '"}'


def _big_numbers(n: int) -> str:
    return '{"data":[' + ",".join(["1"] * n) + ",1e999]}"


def _deep_then_bad(n: int) -> str:
    return '{"data":' + "[" * n + "]" * n + "}"


def _long_name(n: int) -> str:
    return '{"data":{"' + "k" * n + '":1e999}}'


@pytest.mark.parametrize(
    "family", [_many_members, _many_arrays, _escapes, _big_numbers, _deep_then_bad, _long_name]
)
def test_parsing_work_is_linear_in_the_text(family: object) -> None:
    """Four times the input costs at most about four times the Python steps of the parser."""
    assert callable(family)
    files = [envelope.__file__, jsontext.__file__]

    def work(n: int) -> int:
        text = family(n)
        return steps(files, lambda: parse_request(text))

    small, large = work(500), work(2000)
    assert large <= 4.3 * small + 100, (small, large)


@given(st.integers(33, 5000))
@settings(max_examples=25)
def test_any_depth_over_32_is_9002(depth: int) -> None:
    """However deep past 32, the answer is 9002, never a RecursionError or a 9999."""
    with pytest.raises(EnvelopeError) as caught:
        parse_request('{"data":%s}' % ("[" * depth + "]" * depth))
    assert caught.value.result is Result.MALFORMED

"""The record encoder takes every number a body may hold, whichever serializer writes it."""

from __future__ import annotations

import json

import pytest

from gateway.journal.record import GENESIS_CHAIN, decode_line, dumps_compact, encode_line


def test_non_finite_float_beside_a_huge_integer_encodes() -> None:
    """1e999 beside an integer over 2^64 (orjson refuses the one, json the other) is written as null."""
    body = {"a": float("inf"), "b": 2**70, "c": [float("-inf"), {"d": float("nan")}], "e": (1.5,)}
    line, _ = encode_line(
        1, "2026-11-24T11:05:41.123456Z", "uplink", "P001", "carIn", "o1", body, GENESIS_CHAIN
    )
    assert decode_line(line).body == {"a": None, "b": 2**70, "c": [None, {"d": None}], "e": [1.5]}


def test_non_finite_float_alone_is_null_as_before() -> None:
    """Without a huge integer orjson writes it, and the result is the same null."""
    assert json.loads(dumps_compact({"a": float("inf")})) == {"a": None}


def test_a_body_inside_itself_is_still_refused() -> None:
    """A container that holds itself is a ValueError, not an endless walk."""
    body: dict[str, object] = {"big": 2**70, "inf": float("inf")}
    body["self"] = [body]
    with pytest.raises(ValueError, match="Circular"):
        dumps_compact(body)

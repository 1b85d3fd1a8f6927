"""The command API's body follows the lots' JSON rules: 400 JSON for what breaks them, never 500."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings

from gateway.protocol.jsontext import JSONRefused, loads
from gateway.protocol.results import Result
from tests.cloud.test_api import Api
from tests.fuzz.strategies import hostile_text, json_values

GATE = "/v1/parks/P001/commands/gateOpen"


@pytest.fixture
def gw() -> Api:
    """A fresh command API in memory."""
    return Api()


def test_body_nested_5000_deep_is_400_json(gw: Api) -> None:
    """A body nested 5,000 deep is answered 400 with a JSON error (it was a 500 HTML page)."""
    status, headers, body = gw.call("POST", GATE, body=b'{"barCode":' + b"[" * 5000 + b"]" * 5000 + b"}")
    assert status == 400
    assert headers["content-type"].startswith("application/json")
    assert body["error"] == "the body is not JSON: nested deeper than 32 levels"
    assert gw.lots.asked == []


@pytest.mark.parametrize("literal", [b"1e999", b"-Infinity", b"NaN", b"99999999999999999999"])
def test_command_with_a_refused_number_is_400_naming_it_and_never_sent(gw: Api, literal: bytes) -> None:
    """1e999 (or NaN, Infinity, an integer past 2^63) anywhere in a command is 400 naming the field."""
    status, _, body = gw.call("POST", GATE, body=b'{"barCode":"B1","isOpen":1,"extra":' + literal + b"}")
    assert status == 400
    assert body["error"].startswith("data.extra: ")
    assert gw.lots.asked == [] and gw.journal.records == []


def test_sync_entry_with_1e999_is_400_and_not_queued(gw: Api) -> None:
    """A sync entry whose money is 1e999 is refused naming data.orderMoney; nothing is journaled."""
    body = b'{"carNum":"A1","orderMoney":1e999}'
    status, _, answer = gw.call("POST", "/v1/parks/P001/commands/prepay", body=body)
    assert status == 400
    assert answer["error"] == "data.orderMoney: a number too large for a double (1e999)"
    assert gw.journal.records == []


@given(hostile_text)
@settings(max_examples=500)
def test_any_body_parses_or_is_refused_with_a_code(text: str) -> None:
    """The API's body parse returns a value or a JSONRefused with 9002 or 9010; nothing else escapes."""
    try:
        loads(text.encode("utf-8", "surrogatepass"), root="data")
    except JSONRefused as error:
        assert error.result in (Result.MALFORMED, Result.FIELD_INVALID)
        assert len(error.detail) <= 200


@given(
    hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
    | json_values.map(lambda value: json.dumps({"barCode": "B1", "isOpen": 1, "extra": value}).encode())
)
@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
def test_any_body_through_the_api_is_json_never_500(body: bytes) -> None:
    """Through the whole API, any body is answered with JSON and a status below 500 (or sent)."""
    gw = Api()
    status, headers, answer = gw.call("POST", GATE, body=body)
    assert headers["content-type"].startswith("application/json")
    assert status in (200, 400), (status, answer)
    if status == 400:
        assert gw.lots.asked == []

"""The parse-side hardening items as a lot sees them: one HTTP uplink in memory, its answers and log."""

from __future__ import annotations

import json
from urllib.parse import quote, urlencode

from twisted.logger import LogEvent, globalLogPublisher

from tests.lots.harness import Uplink
from tests.protocol.samples import SAMPLES


def _post_param(uplink: Uplink, text: str, path: str = "/uplink") -> tuple[bytes, list[LogEvent]]:
    """POST `text` as `param`; the answer's bytes and the events logged meanwhile."""
    events: list[LogEvent] = []
    globalLogPublisher.addObserver(events.append)
    try:
        status, _, body = uplink.post(urlencode({"param": text}), path)
    finally:
        globalLogPublisher.removeObserver(events.append)
    assert status == 200
    return body, events


def test_huge_code_without_token_is_answered_and_logged_by_36_characters() -> None:
    """Item 1: a 900 KB `code` and no token is 9002; the answer and log hold at most 36 of its characters."""
    uplink = Uplink()
    body, events = _post_param(uplink, '{"code":"%s","oprNum":"o1","data":{}}' % ("C" * 900_000))
    answer = json.loads(body)
    assert answer["resultCode"] == "9002" and answer["code"] == ""
    assert len(body) < 500
    logged = repr(events)
    assert "C" * 36 in logged and "C" * 37 not in logged
    assert len(logged) < 20_000


def test_huge_code_in_the_url_is_cut_to_36_characters() -> None:
    """Item 1: a code in the URL longer than any interface is echoed by its first 36 characters only."""
    uplink = Uplink()
    body, events = _post_param(uplink, '{"oprNum":"o1","data":{}}', "/uplink/" + quote("U" * 8000))
    answer = json.loads(body)
    assert answer["resultCode"] == "9001" and answer["code"] == "U" * 36
    assert "U" * 37 not in body.decode() and "U" * 37 not in repr(events)


def test_1e999_in_an_uplink_is_9010_and_not_stored() -> None:
    """Item 8: a carIn with 1e999 in a field is answered 9010 naming it; nothing is journaled."""
    uplink = Uplink()
    token = uplink.login()
    stored = len(uplink.journal.records)
    envelope = uplink.envelope("carIn", SAMPLES["carIn"], token=token, opr="o-inf")
    text = json.dumps(envelope, ensure_ascii=False).replace('"inIdentity": 2', '"inIdentity": 1e999')
    body, _ = _post_param(uplink, text)
    answer = json.loads(body)
    assert answer["resultCode"] == "9010", answer
    assert answer["resultMessage"].endswith("data.inIdentity: a number too large for a double (1e999)")
    assert answer["oprNum"] == "o-inf"
    assert len(uplink.journal.records) == stored


def test_deep_lists_with_an_escape_are_9002_and_a_retry_is_answered_too() -> None:
    """Item 6: lists nested 600 deep with a \\u escape are refused 9002, and so is the retry, at once."""
    uplink = Uplink()
    token = uplink.login()
    data = '{"carNum":"\\u4eac","x":' + "[" * 600 + "]" * 600 + "}"
    text = '{"token":"%s","code":"carIn","oprNum":"o-deep","signature":"","data":%s}' % (token, data)
    for _ in range(2):
        answer = json.loads(_post_param(uplink, text)[0])
        assert (answer["resultCode"], answer["oprNum"]) == ("9002", "o-deep")
        assert "nested deeper than 32" in answer["resultMessage"]


def test_big_integer_beside_1e999_is_9010_not_9999() -> None:
    """Item 6: 1e999 beside an integer over 2^64 is refused 9010 at the parse, before the journal."""
    uplink = Uplink()
    token = uplink.login()
    data = '{"recordCode":"R1","a":1e999,"b":%d}' % (2**70)
    text = '{"token":"%s","code":"carIn","oprNum":"o-big","signature":"","data":%s}' % (token, data)
    answer = json.loads(_post_param(uplink, text)[0])
    assert answer["resultCode"] == "9010"
    assert "data.a" in answer["resultMessage"]

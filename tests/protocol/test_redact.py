"""Secrets never reach the journal: parkUserPwd and configured secrets are replaced."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.redact import REDACTED, may_hold_secrets, redact


def test_password_is_replaced_at_any_depth() -> None:
    """parkUserPwd is replaced in nested objects and lists; other fields stay."""
    value = {"a": 1, "list": [{"parkUserPwd": "p1"}, {"x": {"parkUserPwd": "p2"}}], "parkUserPwd": "p3"}
    out = redact(value)
    assert "p1" not in json.dumps(out) and "p2" not in json.dumps(out) and "p3" not in json.dumps(out)
    assert out["a"] == 1 and out["parkUserPwd"] == REDACTED  # type: ignore[index]
    assert value["parkUserPwd"] == "p3", "the original is not changed"


def test_nothing_to_redact_returns_the_same_object() -> None:
    """A value without secrets comes back as the very same object (no copy on the hot path)."""
    value = {"a": [1, {"b": 2}]}
    assert redact(value) is value


def test_empty_password_is_left_empty() -> None:
    """An empty password field stays empty: there is nothing to hide."""
    assert redact({"parkUserPwd": ""}) == {"parkUserPwd": ""}


def test_escaped_key_names_count_as_possible_secrets() -> None:
    """A key spelt with \\u escapes still makes the text a candidate for redaction."""
    text = '{"parkUser\\u0050wd":"x"}'
    assert may_hold_secrets(text)
    assert redact(json.loads(text)) == {"parkUserPwd": REDACTED}
    assert not may_hold_secrets('{"carNum":"京A1"}')


@given(st.recursive(st.text() | st.integers(), lambda c: st.lists(c) | st.dictionaries(st.text(), c)))
def test_redacted_text_never_holds_the_password(value: object) -> None:
    """Whatever surrounds it, a password put in any object is gone after redaction."""
    holder = {"wrapper": value, "parkUserPwd": "s3cr3t-pw"}
    assert "s3cr3t-pw" not in json.dumps(redact(holder), ensure_ascii=False)


def test_deep_nesting_is_walked_without_recursion() -> None:
    """Lists nested 100,000 deep are walked without RecursionError; a secret at the bottom is hidden."""
    deep: object = {"parkUserPwd": "p", "name": "n"}
    for _ in range(100_000):
        deep = [deep]
    hidden = redact(deep)
    for _ in range(100_000):
        assert isinstance(hidden, list)
        hidden = hidden[0]
    assert hidden == {"parkUserPwd": REDACTED, "name": "n"}
    plain: object = {"name": "n"}
    for _ in range(100_000):
        plain = [plain]
    assert redact(plain) is plain

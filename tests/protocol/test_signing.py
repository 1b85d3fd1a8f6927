"""The data signature of B.3.7, over `data` as written or compacted."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from gateway.protocol.signing import compact, sign, signature_matches


def test_signature_is_upper_case_md5_of_data_token_secret() -> None:
    """sign() is the upper-case hex MD5 of data text + token + secret, in UTF-8."""
    expected = hashlib.md5('{"a":"京A"}tokensecret'.encode()).hexdigest().upper()
    assert sign('{"a":"京A"}', "token", "secret") == expected


def test_raw_text_signature_matches() -> None:
    """A signature over `data` exactly as written matches, spaces included."""
    text = '{ "b": 1,  "a": 2 }'
    assert signature_matches(sign(text, "t", "s"), text, {"b": 1, "a": 2}, "t", "s")


def test_compact_signature_matches_in_original_key_order() -> None:
    """A signature over the compact form, keys in their original order, matches too."""
    text = '{ "b": 1,  "a": "中" }'
    data = {"b": 1, "a": "中"}
    assert signature_matches(sign('{"b":1,"a":"中"}', "t", "s"), text, data, "t", "s")
    assert not signature_matches(sign('{"a":"中","b":1}', "t", "s"), text, data, "t", "s")


def test_lower_case_hex_is_the_same_digest() -> None:
    """Hex case does not matter: a lower-case MD5 is accepted."""
    text = '{"a":1}'
    assert signature_matches(sign(text, "t", "").lower(), text, {"a": 1}, "t", "")


def test_wrong_token_secret_or_data_do_not_match() -> None:
    """Changing the token, the secret or the data breaks the signature."""
    text = '{"a":1}'
    good = sign(text, "t", "s")
    assert not signature_matches(good, text, {"a": 1}, "u", "s")
    assert not signature_matches(good, text, {"a": 1}, "t", "x")
    assert not signature_matches(good, '{"a":2}', {"a": 2}, "t", "s")
    assert not signature_matches("", text, {"a": 1}, "t", "s")
    assert not signature_matches("非十六进制", text, {"a": 1}, "t", "s")


def test_absent_data_signs_the_empty_text() -> None:
    """With no `data`, the signature covers the token and secret alone."""
    assert signature_matches(sign("", "t", "s"), "", None, "t", "s")


@given(
    st.dictionaries(st.text(max_size=10), st.text(max_size=10) | st.integers(), max_size=5),
    st.text(max_size=32),
    st.text(max_size=16),
)
def test_compact_signature_always_verifies(data: dict[str, object], token: str, secret: str) -> None:
    """What the gateway signs (compact data), any receiver checking the same way accepts."""
    text = compact(data)
    assert signature_matches(sign(text, token, secret), text, data, token, secret)

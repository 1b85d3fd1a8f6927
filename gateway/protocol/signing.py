"""The data signature of B.3.7: upper-case hex MD5 of `data` + token + secret."""

from __future__ import annotations

import hashlib
import hmac
import json

_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def compact(value: object) -> str:
    """The compact serialization the gateway signs and sends: no spaces, no ASCII escaping."""
    return _COMPACT.encode(value)


def sign(data_text: str, token: str, secret: str) -> str:
    """The signature of `data_text` for a lot holding `token` and sharing `secret`."""
    return hashlib.md5((data_text + token + secret).encode("utf-8")).hexdigest().upper()


def signature_matches(signature: str, data_text: str, data: object, token: str, secret: str) -> bool:
    """Whether `signature` signs `data` as written, or its compact re-serialization.

    Hex case is not significant: an MD5 digest in lower case is the same digest.
    """
    claimed = signature.strip().upper().encode("ascii", "replace")
    if hmac.compare_digest(claimed, sign(data_text, token, secret).encode("ascii")):
        return True
    compact_text = compact(data) if data is not None else ""
    if compact_text == data_text:
        return False
    return hmac.compare_digest(claimed, sign(compact_text, token, secret).encode("ascii"))


SIGNATURE_MODES = ("required", "optional", "off")
"""A lot's `signature` setting: how strictly its messages' signatures are checked."""


def signature_ok(
    mode: str, signature: str, data_text: str, data: object, token: str, secret: str, optional: bool = False
) -> bool:
    """Whether a message's signature passes the lot's `signature` mode (B.3.7).

    With `optional` (heartbeats, like HTTP), a missing signature passes in every mode.
    """
    if mode == "off" or ((mode == "optional" or optional) and not signature):
        return True
    return signature_matches(signature, data_text, data, token, secret)

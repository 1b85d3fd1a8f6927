"""Request and response envelopes (tables B.2 and B.3), parsed and built without I/O.

A request is parsed in one pass that also records where the `data` member stands
in the text, because the standard signs `data` exactly as the lot wrote it (B.3.7).
"""

from __future__ import annotations

import json
import re
from json.decoder import JSONDecodeError, scanstring  # type: ignore[attr-defined]  # not in typeshed

from attrs import frozen

from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign

OPR_NUM_MAX = 36
_WHITESPACE = " \t\n\r"


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


@frozen
class EnvelopeError(Exception):
    """The text is not a request of the protocol; `result` says how to answer it."""

    result: Result
    detail: str
    code: str = ""
    opr: str = ""


@frozen
class Request:
    """A request envelope (B.2): its header fields, `data` parsed, and `data` as written."""

    token: str
    code: str
    opr: str
    signature: str
    data: object
    data_text: str


_SPACE = re.compile(r"[ \t\n\r]*")


def _skip(text: str, index: int) -> int:
    # Lots mostly send compact JSON: look before asking the regex.
    if index < len(text) and text[index] in _WHITESPACE:
        return _SPACE.match(text, index).end()  # type: ignore[union-attr]  # * always matches
    return index


def members(text: str) -> dict[str, tuple[object, int, int]]:
    """The top-level members of a JSON object text: name -> (value, start, end) of the value."""
    size = len(text)
    index = _skip(text, 0)
    if index >= size or text[index] != "{":
        raise ValueError("the message is not a JSON object")
    found: dict[str, tuple[object, int, int]] = {}
    decode = _DECODER.raw_decode
    index = _skip(text, index + 1)
    if index < size and text[index] == "}":
        end = index + 1
    else:
        while True:
            if index >= size or text[index] != '"':
                raise ValueError(f"expected a member name at character {index}")
            name, index = scanstring(text, index + 1)
            if index >= size or text[index] != ":":
                index = _skip(text, index)
                if index >= size or text[index] != ":":
                    raise ValueError(f"expected ':' at character {index}")
            start = _skip(text, index + 1)
            value, index = decode(text, start)
            found[name] = (value, start, index)
            # Compact JSON first, without calling _skip: 2 us of a carIn's 7.
            if index < size and text[index] == ",":
                index = _skip(text, index + 1)
                continue
            index = _skip(text, index)
            if index < size and text[index] == ",":
                index = _skip(text, index + 1)
                continue
            if index < size and text[index] == "}":
                end = index + 1
                break
            raise ValueError(f"expected ',' or '}}' at character {index}")
    if _skip(text, end) != size:
        raise ValueError(f"extra text after the message at character {end}")
    return found


def _header(members: dict[str, tuple[object, int, int]], name: str) -> str:
    entry = members.get(name)
    if entry is None or entry[0] is None:
        return ""
    value = entry[0]
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise ValueError(f"{name}: must be a string")


def parse_request(text: str) -> Request:
    """Parse a request envelope, or raise EnvelopeError saying which result code answers it."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise EnvelopeError(Result.EMPTY_MESSAGE, "the message is empty")
    try:
        found = members(text)
    except (ValueError, RecursionError) as error:
        detail = error.msg if isinstance(error, JSONDecodeError) else str(error)
        if isinstance(error, RecursionError):
            detail = "nested too deeply"
        raise EnvelopeError(Result.MALFORMED, detail) from None
    try:
        code = _header(found, "code")
        opr = _header(found, "oprNum")
        token = _header(found, "token")
        signature = _header(found, "signature")
    except ValueError as error:
        raise EnvelopeError(Result.MALFORMED, str(error)) from None
    if len(opr) > OPR_NUM_MAX:
        raise EnvelopeError(Result.MALFORMED, f"oprNum: longer than {OPR_NUM_MAX} characters", code=code)
    if "data" in found:
        data, start, end = found["data"]
        data_text = text[start:end]
    else:
        data, data_text = None, ""
    return Request(token=token, code=code, opr=opr, signature=signature, data=data, data_text=data_text)


def build_response(
    code: str,
    opr: str,
    result: Result,
    message: str,
    data: object,
    token: str,
    secret: str,
) -> bytes:
    """A response envelope (B.3), signed over the compact form of `data` (B.3.7)."""
    data_text = compact(data)
    return (
        '{"code":%s,"oprNum":%s,"resultCode":"%s","resultMessage":%s,"signature":"%s","data":%s}'
        % (
            compact(code),
            compact(opr),
            result.code,
            compact(message),
            sign(data_text, token, secret),
            data_text,
        )
    ).encode("utf-8")

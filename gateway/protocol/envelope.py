"""Request and response envelopes (tables B.2 and B.3), parsed and built without I/O.

A request is parsed in one pass that also records where the `data` member stands
in the text, because the standard signs `data` exactly as the lot wrote it (B.3.7).
"""

from __future__ import annotations

import re
from json.decoder import JSONDecodeError, scanstring  # type: ignore[attr-defined]  # not in typeshed

from attrs import frozen

from gateway.protocol.jsontext import JSONRefused, decoder_for, echo
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign

OPR_NUM_MAX = 36
HEADER_MAX = {"token": 32, "code": 10, "oprNum": OPR_NUM_MAX, "signature": 100}
"""The longest value each header member of 表B.2 may hold; a longer one is refused (CONTRACT §4)."""
_WHITESPACE = " \t\n\r"


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
    """The top-level members of a JSON object text: name -> (value, start, end) of the value.

    Values are decoded under the rules of `gateway.protocol.jsontext` (numbers
    finite and in range, nesting at most 32 deep): a refusal raises its
    `JSONRefused`, naming the member (`data.totalAmount`). Anything else that
    is not a JSON object raises ValueError.
    """
    size = len(text)
    index = _skip(text, 0)
    if index >= size or text[index] != "{":
        raise ValueError("the message is not a JSON object")
    found: dict[str, tuple[object, int, int]] = {}
    decode = decoder_for(text)
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
            value, index = decode(text, start, name)
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


def refusal(error: ValueError, text: str = "") -> EnvelopeError:
    """The EnvelopeError answering a ValueError of `members`: 9010 or 9002 as the rules say.

    With the `text`, the answer echoes the `oprNum` it seems to carry (when
    within bounds), so the lot can tell which request was refused.
    """
    opr = seen_opr(text) if text else ""
    if isinstance(error, JSONRefused):
        return EnvelopeError(error.result, error.detail, opr=opr)
    detail = error.msg if isinstance(error, JSONDecodeError) else str(error)
    return EnvelopeError(Result.MALFORMED, detail, opr=opr)


_SEEN_OPR = re.compile(r'"oprNum"[ \t\n\r]*:[ \t\n\r]*"([^"\\]{0,%d})"' % OPR_NUM_MAX)


def seen_opr(text: str) -> str:
    """The `"oprNum": "..."` of a text that did not parse, when one within bounds is there, else ""."""
    match = _SEEN_OPR.search(text)
    return "" if match is None else match.group(1)


def _too_long(code: str, opr: str, token: str, signature: str) -> None:
    """Refuse the first header member longer than 表B.2 allows, quoting at most 36 of its characters.

    The answer echoes `code` and `oprNum` only when they are within bounds.
    """
    values = {"token": token, "code": code, "oprNum": opr, "signature": signature}
    code_echo = code if len(code) <= HEADER_MAX["code"] else ""
    opr_echo = opr if len(opr) <= OPR_NUM_MAX else ""
    for name, value in values.items():
        limit = HEADER_MAX[name]
        if len(value) > limit:
            detail = f"{name}: longer than {limit} characters ({echo(value)!r}, {len(value)} characters)"
            raise EnvelopeError(Result.MALFORMED, detail, code=code_echo, opr=opr_echo)


def parse_request(text: str) -> Request:
    """Parse a request envelope, or raise EnvelopeError saying which result code answers it."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if not text.strip():
        raise EnvelopeError(Result.EMPTY_MESSAGE, "the message is empty")
    try:
        found = members(text)
    except ValueError as error:
        raise refusal(error, text) from None
    try:
        code = _header(found, "code")
        opr = _header(found, "oprNum")
        token = _header(found, "token")
        signature = _header(found, "signature")
    except ValueError as error:
        raise EnvelopeError(Result.MALFORMED, str(error)) from None
    if len(code) > 10 or len(opr) > 36 or len(token) > 32 or len(signature) > 100:  # HEADER_MAX
        _too_long(code, opr, token, signature)
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

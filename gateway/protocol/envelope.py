"""Request and response envelopes (tables B.2 and B.3), parsed and built without I/O.

The one place envelopes are made and read, for every side: the gateway (the
HTTP uplink's answers, the TCP downlink's ACKs and the REPLYs it reads), the lot
client (`gateway.lotclient`), the simulator and the conformance kit.

- `parse_request` / `parse_reply` / `parse_frame` read a request, a response,
  or a TCP frame's payload that may be either;
- `request_text` (and `ack_frame`, the same as a TCP frame) and
  `response_text` (and `build_response`, its bytes) write them.

A message is parsed in one pass that also records where the `data` member stands
in the text, because the standard signs `data` exactly as it was written (B.3.7).
"""

from __future__ import annotations

import re
import uuid
from json.decoder import JSONDecodeError, scanstring  # type: ignore[attr-defined]  # not in typeshed

from attrs import frozen

from gateway.protocol.framing import encode_json_frame
from gateway.protocol.jsontext import JSONRefused, decoder_for, echo
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign, signature_matches

OPR_NUM_MAX = 36
HEADER_MAX = {"token": 32, "code": 10, "oprNum": OPR_NUM_MAX, "signature": 100}
"""The longest value each header member of 表B.2 may hold; a longer one is refused (CONTRACT §4)."""
_WHITESPACE = " \t\n\r"


def new_opr_prefix() -> str:
    """A random prefix for a sender's oprNums (12 hex digits): `{prefix}-{count}` stays within 36."""
    return uuid.uuid4().hex[:12]


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


def as_text(value: object) -> str:
    """A value of a parsed envelope as text, leniently: None is "", a string itself, anything else str()."""
    if value is None:
        return ""
    return value if isinstance(value, str) else str(value)


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


@frozen
class Reply:
    """A response envelope (B.3): a lot's REPLY to an ACK, or the gateway's answer to a request.

    `data_text` is `data` as written, which its signature signs (B.3.7).
    """

    code: str
    opr: str
    result_code: str
    result_message: str
    signature: str
    data: object
    data_text: str

    @property
    def ok(self) -> bool:
        """Whether the result code is 0000."""
        return self.result_code == _OK

    def signed_by(self, token: str, secret: str) -> bool:
        """Whether `signature` signs `data` with `token` and `secret` (B.3.7)."""
        return signature_matches(self.signature, self.data_text, self.data, token, secret)


_OK = Result.OK.code


def parse_reply(text: str) -> Reply:
    """Parse a response envelope, or raise EnvelopeError (9002) saying what is wrong.

    A response has a `resultCode` member; a text without one is refused.
    """
    if text.startswith("\ufeff"):
        text = text[1:]
    try:
        found = members(text)
        if "resultCode" not in found:
            raise ValueError("resultCode: required in a response")
        return _reply(text, found)
    except ValueError as error:
        raise refusal(error) from None


def _reply(text: str, found: dict[str, tuple[object, int, int]]) -> Reply:
    if "data" in found:
        data, start, end = found["data"]
        data_text = text[start:end]
    else:
        data, data_text = None, ""
    return Reply(
        code=_header(found, "code"),
        opr=_header(found, "oprNum"),
        result_code=_header(found, "resultCode"),
        result_message=_header(found, "resultMessage"),
        signature=_header(found, "signature"),
        data=data,
        data_text=data_text,
    )


def parse_frame(payload: bytes) -> Request | Reply:
    """A TCP frame's payload as a request (heartbeat, login, an ACK) or a reply (a REPLY to an ACK).

    A payload is a reply when its top-level object has a `resultCode` member.
    Raises EnvelopeError when it is neither; `error.opr` is set when an oprNum
    could still be read from the text, so the sender can be told.
    """
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise EnvelopeError(
            Result.MALFORMED, "not UTF-8", opr=seen_opr(payload.decode("utf-8", "replace"))
        ) from None
    try:
        if '"resultCode"' in text:
            if text.startswith("\ufeff"):
                text = text[1:]
            try:
                found = members(text)
            except ValueError as error:
                raise refusal(error) from None
            if "resultCode" in found:
                try:
                    reply = _reply(text, found)
                except ValueError as error:
                    raise EnvelopeError(Result.MALFORMED, str(error)) from None
                if len(reply.opr) > OPR_NUM_MAX:
                    raise EnvelopeError(Result.MALFORMED, f"oprNum: longer than {OPR_NUM_MAX} characters")
                return reply
        return parse_request(text)
    except EnvelopeError as error:
        if error.opr:
            raise
        raise EnvelopeError(error.result, error.detail, code=error.code, opr=seen_opr(text)) from None


# Each template is a literal in place, not a module constant: CPython builds a constant
# %-format's string directly, 0.2 us faster an envelope (the uplink's answers, the ACKs).


def signed_request_text(code: str, opr: str, token: str, secret: str, data_text: str) -> str:
    """A request envelope (B.2) carrying `data_text` as written, signed over it (B.3.7).

    The members come in the order the gateway's ACKs have always had (its tests pin it).
    """
    return '{"code":%s,"oprNum":%s,"token":%s,"signature":"%s","data":%s}' % (
        compact(code),
        compact(opr),
        compact(token),
        sign(data_text, token, secret),
        data_text,
    )


def request_text(code: str, opr: str, token: str, secret: str, data: object) -> str:
    """A request envelope (B.2), signed over the compact `data` it carries."""
    return signed_request_text(code, opr, token, secret, compact(data))


def ack_frame(code: str, opr: str, token: str, secret: str, data: object) -> bytes:
    """An ACK (a request envelope sent down the TCP downlink, B.3.2) as a frame, signed before the escapes."""
    return encode_json_frame(signed_request_text(code, opr, token, secret, compact(data)))


def _response_text(
    code: str, opr: str, result_text: str, message: str, data: object, token: str, secret: str
) -> str:
    """A response envelope; `result_text` is the result code as a JSON string's content."""
    data_text = compact(data)
    return '{"code":%s,"oprNum":%s,"resultCode":"%s","resultMessage":%s,"signature":"%s","data":%s}' % (
        compact(code),
        compact(opr),
        result_text,
        compact(message),
        sign(data_text, token, secret),
        data_text,
    )


def response_text(
    code: str, opr: str, result_code: str, message: str, data: object, token: str, secret: str
) -> str:
    """A response envelope (B.3) with any result code (a lot's REPLY), signed over the compact `data`."""
    return _response_text(code, opr, compact(result_code)[1:-1], message, data, token, secret)


def build_response(
    code: str,
    opr: str,
    result: Result,
    message: str,
    data: object,
    token: str,
    secret: str,
) -> bytes:
    """The gateway's response envelope (B.3) as bytes, signed over the compact form of `data` (B.3.7)."""
    return _response_text(code, opr, result.code, message, data, token, secret).encode("utf-8")

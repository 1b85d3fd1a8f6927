"""The one JSON parser for what lots and clients send: number and nesting rules (CONTRACT §4).

The uplink envelope, the downlink's frames and replies and the command API's
body all parse through here, so all three refuse the same things the same way:

- `NaN`, `Infinity`, `-Infinity`, and a number that overflows a double
  (`1e999`) -> 9010 naming the field (`data.totalAmount`);
- an integer beyond ±2⁶³ -> 9010 naming the field;
- nesting deeper than 32 levels -> 9002;
- anything else that is not JSON -> 9002.

The rules cost little on the hot path. Depth: a text with at most 32 `[` and
`{` in all cannot nest deeper, which two C-speed counts show for any real
request; only a text with more is measured, without recursion (strings cut
out by one regex, then a running sum in C). Numbers: the C scanner calls a
small hook per number, which raises on a refused one; only then is the text
decoded again, slowly, to name the field. The C scanner never nests deeper
than the depth check allows, so no RecursionError can come out of here.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from itertools import accumulate

from gateway.protocol.results import Result

__all__ = [
    "ECHO_MAX",
    "INT_LIMIT",
    "MAX_DEPTH",
    "JSONRefused",
    "check_depth",
    "decoder_for",
    "echo",
    "loads",
]

MAX_DEPTH = 32
"""The deepest nesting of arrays and objects taken (the outermost counts as 1)."""

INT_LIMIT = 2**63
"""Integers beyond ±INT_LIMIT are refused."""

ECHO_MAX = 36
"""At most this many characters of a refused value are quoted in an answer or a log line."""

_PATH_MAX = 120  # the longest path a refusal names (32 levels of 36-character names would be 1,200)
_INT_DIGITS = len(str(INT_LIMIT))  # 19: an integer with fewer digits is in range


def echo(value: str) -> str:
    """At most the first ECHO_MAX characters of `value`, marked with `…` when cut."""
    return value if len(value) <= ECHO_MAX else value[:ECHO_MAX] + "…"


class JSONRefused(ValueError):
    """The text breaks a rule; `result` answers it, `path` names the field (or is "")."""

    def __init__(self, result: Result, detail: str, path: str = "") -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail
        self.path = path


# Depth ------------------------------------------------------------------------

# A JSON string (escapes and all), or a run of characters that are no bracket.
# A string left open runs to the end of the text: from a `"` this never fails,
# so no attempt rescans the rest of the text (`"\"\"\"…` would make a failing
# pattern try once per quote, quadratic), and the text is not JSON anyway.
_NOT_BRACKETS = re.compile(r'"[^"\\]*(?:\\(?:.|\Z)[^"\\]*)*(?:"|\Z)|[^\[\]{}"]+', re.DOTALL)
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1, '"': 0}


def check_depth(text: str) -> None:
    """Raise JSONRefused (9002) when `text` nests arrays and objects deeper than MAX_DEPTH.

    Brackets inside strings do not count. Linear in the text, and no recursion.
    An unterminated string makes what follows it count as outside: such a
    text is not JSON and is refused either way.
    """
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    brackets = _NOT_BRACKETS.sub("", text)
    if max(accumulate(map(_STEP.__getitem__, brackets)), default=0) > MAX_DEPTH:
        raise JSONRefused(Result.MALFORMED, f"nested deeper than {MAX_DEPTH} levels")


# Numbers ----------------------------------------------------------------------


class _Broken(Exception):
    """Raised by a hook of the fast decoder: some number breaks a rule."""


# The hooks run once per number of every request: kept to a test and a conversion.


def _fast_int(literal: str, _int: type[int] = int) -> int:
    if len(literal) < 19:  # _INT_DIGITS: fewer digits than 2^63 has
        return _int(literal)
    value = _int(literal) if len(literal) <= _INT_DIGITS + 1 else INT_LIMIT + 1
    if -INT_LIMIT <= value <= INT_LIMIT:
        return value
    raise _Broken


def _fast_float(literal: str, _float: type[float] = float) -> float:
    value = _float(literal)
    if value - value:  # inf - inf is nan, which is true; a finite value gives 0.0
        raise _Broken
    return value


def _fast_constant(literal: str) -> object:
    raise _Broken


_FAST = json.JSONDecoder(parse_int=_fast_int, parse_float=_fast_float, parse_constant=_fast_constant)


class _Bad:
    """Stands where the slow decoder met a refused number, so the walk can name its field."""

    __slots__ = ("literal", "why")

    def __init__(self, literal: str, why: str) -> None:
        self.literal = literal
        self.why = why


def _slow_int(literal: str) -> object:
    try:
        return _fast_int(literal)
    except _Broken:
        return _Bad(literal, f"an integer beyond ±2^63 ({echo(literal)})")


def _slow_float(literal: str) -> object:
    try:
        return _fast_float(literal)
    except _Broken:
        return _Bad(literal, f"a number too large for a double ({echo(literal)})")


def _slow_constant(literal: str) -> object:
    return _Bad(literal, f"{literal} is not JSON")


_SLOW = json.JSONDecoder(parse_int=_slow_int, parse_float=_slow_float, parse_constant=_slow_constant)


def _path(parent: str, key: object) -> str:
    if isinstance(key, int):
        return f"{parent}[{key}]"
    name = echo(str(key))
    return f"{parent}.{name}" if parent else name


def _find_bad(value: object, path: str) -> tuple[str, _Bad] | None:
    """The first refused number in `value` (document order) and its path; a walk, not a recursion."""
    stack: list[tuple[object, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, _Bad):
            return where, item
        if isinstance(item, dict):
            entries = list(item.items())
        elif isinstance(item, list):
            entries = list(enumerate(item))
        else:
            continue
        stack.extend((child, _path(where, key)) for key, child in reversed(entries))
    return None


def _refuse_number(text: str, index: int, path: str) -> JSONRefused:
    try:
        value, _ = _SLOW.raw_decode(text, index)
    except json.JSONDecodeError as error:  # the number came before the text broke
        return JSONRefused(Result.MALFORMED, f"{error.msg} at character {error.pos}")
    found = _find_bad(value, path)
    if found is None:  # e.g. in a member a later duplicate name replaced
        return JSONRefused(Result.FIELD_INVALID, f"{path or 'the message'}: holds a refused number", path)
    where, bad = found
    if len(where) > _PATH_MAX:  # its names come from the sender: quoted short, like values
        where = where[: _PATH_MAX - 1] + "…"
    return JSONRefused(Result.FIELD_INVALID, f"{where or 'the message'}: {bad.why}", where)


def _decode(text: str, index: int, path: str = "") -> tuple[object, int]:
    """Decode the JSON value at `index` of `text` (already depth-checked); its value and end.

    Raises JSONRefused: 9010 naming the field for a refused number, 9002 for
    text that is not JSON.
    """
    try:
        return _FAST.raw_decode(text, index)
    except _Broken:
        raise _refuse_number(text, index, path) from None
    except json.JSONDecodeError as error:
        raise JSONRefused(Result.MALFORMED, f"{error.msg} at character {error.pos}") from None


def decoder_for(text: str) -> Callable[[str, int, str], tuple[object, int]]:
    """Check the depth of all of `text`, then return the decoder of its values.

    For parsers that walk a text's top level themselves (the envelope): the
    returned `decode(text, index, path)` decodes one value with the number
    rules, naming a refused field under `path`.
    """
    check_depth(text)
    return _decode


_SPACE = " \t\n\r"


def loads(content: str | bytes, root: str = "") -> object:
    """The JSON value of a whole text (bytes are decoded as `json.loads` does), under the rules.

    `root` prefixes the paths of refused fields (the command API's body is a
    request's `data`). Raises JSONRefused.
    """
    if isinstance(content, bytes | bytearray):
        try:
            text = bytes(content).decode(json.detect_encoding(content), "surrogatepass")
        except UnicodeDecodeError as error:
            raise JSONRefused(Result.MALFORMED, f"not UTF-8 text (byte {error.start})") from None
    else:
        text = content
    if text.startswith("\ufeff"):
        text = text[1:]
    check_depth(text)
    start = len(text) - len(text.lstrip(_SPACE))
    value, end = _decode(text, start, root)
    if text[end:].strip(_SPACE):
        raise JSONRefused(Result.MALFORMED, f"extra text after the value at character {end}")
    return value

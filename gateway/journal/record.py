"""
The journal's record and its line format (no I/O).

A record is one line of JSON, keys in this order::

    {"seq":N,"ts":"2026-11-24T11:05:41.123456Z","kind":"...","park":"...","code":"...",
     "opr":"...","body":<any JSON>,"chain":"<32 lowercase hex>"}\\n

The line is compact JSON in UTF-8 (no ASCII escaping, no whitespace) and ends
with the only raw ``\\n`` it holds: JSON escapes every control character in a
string, so no body can split a record across lines.

The chain
---------
``chain`` is the hex BLAKE2b digest (``digest_size=16``) of exactly these bytes::

    prev_chain + line[:-45]

where ``prev_chain`` is the previous record's ``chain`` as its 32 ASCII bytes
(``b"0" * 32`` before the first record) and ``line[:-45]`` is the line from its
opening ``{`` up to, and excluding, the ``,`` that starts ``,"chain":"`` -- that
is, the line minus its fixed 45-byte tail ``,"chain":"<32 hex>"}\\n``. Checking
a line needs no JSON parsing and no re-serialization: split off the tail,
hash, compare. Every byte of a line is covered: the head by the digest, the
tail by its fixed shape and the digest it carries; a removed, inserted or
reordered line breaks ``seq`` or the chain of the line after it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from typing import Any

import orjson

from gateway.interfaces import Record  # the journal's record, one of the shared words

__all__ = [
    "CHAIN_TAIL_LEN",
    "GENESIS_CHAIN",
    "BadLine",
    "Record",
    "chain_digest",
    "check_line",
    "decode_line",
    "dumps_compact",
    "encode_line",
    "format_ts",
]

GENESIS_CHAIN = b"0" * 32
"""The ``prev_chain`` of the first record of a journal."""

_CHAIN_OPEN = b',"chain":"'
_CHAIN_CLOSE = b'"}\n'
CHAIN_TAIL_LEN = len(_CHAIN_OPEN) + 32 + len(_CHAIN_CLOSE)
"""Length of ``,"chain":"<32 hex>"}\\n``, the fixed tail of every line (45)."""

_SEQ_OPEN = b'{"seq":'
_HEX32 = re.compile(rb"[0-9a-f]{32}")
# A JSON integer of 19 or more digits may lie outside the 64-bit range that
# orjson decodes exactly (it turns such integers into floats), so lines holding
# one are decoded with the json module. Our lines hold no whitespace, so a
# number always follows ':', '[' or ','. A match inside a string only costs speed.
_LONG_INT = re.compile(rb"[:\[,]-?[0-9]{19}")

_blake2b = hashlib.blake2b
_orjson_dumps = orjson.dumps
_orjson_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError


class BadLine(ValueError):
    """A line that is not a whole, well-formed, correctly chained record."""


def dumps_compact(value: object) -> bytes:
    """
    Serialize ``value`` as compact UTF-8 JSON.

    orjson does it when it can; integers beyond 64 bits, non-str dict keys and
    lone surrogates make it refuse, and the json module takes over (ASCII
    escaping only for lone surrogates, which UTF-8 cannot hold). Bodies are
    meant to be JSON values; what is not JSON does not come back the same:
    non-str keys become strings (json), non-finite floats become ``null``
    (either way: a body must not fault for the company it keeps), tuples
    become lists. What lots and clients send never holds one: the parser
    refuses NaN, Infinity and ``1e999`` (``gateway.protocol.jsontext``).
    """
    try:
        return _orjson_dumps(value)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        try:
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        except ValueError:
            # A non-finite float beside what orjson refused (an integer over
            # 64 bits, say): null, as orjson writes it, rather than a fault.
            value = _finite(value)
            text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        try:
            return text.encode("utf-8")
        except UnicodeEncodeError:
            return json.dumps(value, ensure_ascii=True, separators=(",", ":"), allow_nan=False).encode(
                "ascii"
            )


def _finite(value: object) -> object:
    """
    ``value`` with every non-finite float replaced by ``None``; dicts, lists and tuples copied.

    A walk with its own stack (no depth makes it raise RecursionError); a
    container inside itself raises ``ValueError``, as ``json.dumps`` does.
    """
    holder: list[object] = [value]
    on_path: set[int] = set()
    # (container, where its copy goes, under which key) to copy, or (None, None, id) to leave.
    stack: list[tuple[Any, Any, Any]] = [(value, holder, 0)]
    while stack:
        source, target, slot = stack.pop()
        if source is None:
            on_path.discard(slot)
            continue
        if isinstance(source, float):
            target[slot] = source if math.isfinite(source) else None
            continue
        if not isinstance(source, dict | list | tuple):
            continue
        if id(source) in on_path:
            raise ValueError("Circular reference detected")
        on_path.add(id(source))
        stack.append((None, None, id(source)))
        copy: Any = dict(source) if isinstance(source, dict) else list(source)
        target[slot] = copy
        stack.extend(
            (item, copy, key) for key, item in (copy.items() if isinstance(copy, dict) else enumerate(copy))
        )
    return holder[0]


def chain_digest(prev_chain: bytes, head: bytes) -> bytes:
    """The chain of a record: hex BLAKE2b-128 of ``prev_chain + head``, as ASCII bytes."""
    return _blake2b(prev_chain + head, digest_size=16).hexdigest().encode("ascii")


def encode_line(
    seq: int,
    ts: str,
    kind: str,
    park: str,
    code: str,
    opr: str,
    body: object,
    prev_chain: bytes,
) -> tuple[bytes, bytes]:
    """
    Serialize a record chained onto ``prev_chain``.

    Returns the whole line (``\\n``-terminated) and its chain (32 ASCII hex
    bytes). Raises ``TypeError``/``ValueError`` for a body that is not JSON-like.
    """
    head = dumps_compact(
        {"seq": seq, "ts": ts, "kind": kind, "park": park, "code": code, "opr": opr, "body": body}
    )[:-1]
    chain = _blake2b(prev_chain + head, digest_size=16).hexdigest().encode("ascii")
    return b"".join((head, _CHAIN_OPEN, chain, _CHAIN_CLOSE)), chain


def check_line(line: bytes, prev_seq: int | None, prev_chain: bytes | None) -> tuple[int, bytes]:
    """
    Check the shape and chain of one line; return its ``(seq, chain)``.

    ``prev_seq``/``prev_chain`` are those of the record before it; ``None``
    takes the line as an anchor whose own chain cannot be checked (the first
    line left after older segments were removed). Raises :class:`BadLine`.
    The body is not decoded: a line whose chain checks out is byte-for-byte
    what a writer produced.
    """
    if not line.endswith(b"\n"):
        raise BadLine("partial line (no newline at the end)")
    if (
        len(line) < CHAIN_TAIL_LEN + len(_SEQ_OPEN) + 2
        or line[-CHAIN_TAIL_LEN : -CHAIN_TAIL_LEN + len(_CHAIN_OPEN)] != _CHAIN_OPEN
        or not line.endswith(_CHAIN_CLOSE)
    ):
        raise BadLine('line does not end with ,"chain":"<32 hex>"}')
    head = line[:-CHAIN_TAIL_LEN]
    chain = line[-CHAIN_TAIL_LEN + len(_CHAIN_OPEN) : -len(_CHAIN_CLOSE)]
    if not head.startswith(_SEQ_OPEN):
        raise BadLine('line does not start with {"seq":')
    comma = head.find(b",", len(_SEQ_OPEN))
    digits = head[len(_SEQ_OPEN) : comma]
    if comma < 0 or not digits.isdigit() or (digits[:1] == b"0"):
        raise BadLine("seq is not a positive integer")
    seq = int(digits)
    if prev_seq is not None and seq != prev_seq + 1:
        raise BadLine(f"seq {seq} where {prev_seq + 1} was expected")
    if prev_chain is None:
        if _HEX32.fullmatch(chain) is None:
            raise BadLine("chain is not 32 lowercase hex digits")
    elif _blake2b(prev_chain + head, digest_size=16).hexdigest().encode("ascii") != chain:
        raise BadLine("chain does not match (the line or one before it was altered)")
    return seq, chain


def _loads(line: bytes) -> Any:
    if _LONG_INT.search(line) is None:
        try:
            return _orjson_loads(line)
        except _JSONDecodeError:
            pass  # e.g. an escaped lone surrogate; json decodes it
    return json.loads(line)


def decode_line(line: bytes) -> Record:
    """Decode one line into a :class:`Record` (no chain check). Raises :class:`BadLine`."""
    try:
        fields = _loads(line)
        record = Record(
            fields["seq"],
            fields["ts"],
            fields["kind"],
            fields["park"],
            fields["code"],
            fields["opr"],
            fields["body"],
            fields["chain"],
        )
    except (ValueError, KeyError, TypeError) as e:
        raise BadLine(f"not a record: {e}") from None
    if type(record.seq) is not int or not all(
        type(v) is str for v in (record.ts, record.kind, record.park, record.code, record.opr, record.chain)
    ):
        raise BadLine("not a record: a field has the wrong type")
    return record


def format_ts(seconds: float) -> str:
    """RFC 3339 UTC with microseconds, e.g. ``2026-11-24T11:05:41.123456Z``."""
    whole, micros = divmod(round(seconds * 1_000_000), 1_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S.", time.gmtime(whole)) + f"{micros:06d}Z"

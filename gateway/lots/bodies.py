"""An uplink body as the protocol's text, and a big one parsed in a worker process.

A body is a form with `param=`, a multipart form with a `param` field (and
image files), or raw JSON (B.2.1). `body_text` turns one into the request's
text and its file parts; `parse_body` goes on to parse the envelope, and
returns what it found as plain values (`marshal`-able), so that a worker
process can do the work for a big body and send the outcome back.

Why a process: the form decoding and the envelope's JSON parse of a body of
some MiB take tens of milliseconds to seconds (16 MiB of small JSON values:
about 1.5 s), and CPython holds its lock for each of those C calls, so a
thread would stall the reactor just the same. `python -m gateway.lots.bodies`
is the worker (`gateway.lots.bodypool` runs and feeds it): it reads jobs from
its stdin and writes outcomes to its stdout, one after the other
(`gateway.lots.workerloop`).

This module imports nothing of Twisted, so that a worker starts quickly.
"""

from __future__ import annotations

import binascii
import io
import marshal
import re
from typing import Any, BinaryIO
from urllib.parse import unquote_to_bytes

import multipart

from gateway.lots import workerloop
from gateway.lots.workerloop import JOB_HEAD, OUTCOME_HEAD
from gateway.protocol.envelope import EnvelopeError, parse_request
from gateway.protocol.results import Result

__all__ = [
    "JOB_HEAD",
    "OUTCOME_HEAD",
    "BodyError",
    "body_text",
    "content_type",
    "form_unquote",
    "parse_body",
    "parse_form",
]

WORKER_NICE = 10
"""A worker runs at this niceness: a big body waits, the reactor does not."""


ECHO_CHARS = 36
"""As `gateway.logs.ECHO_CHARS`: at most this much of what a peer sent is quoted back."""


def clip(text: str, limit: int = ECHO_CHARS) -> str:
    """`text` cut to `limit` characters and marked as `gateway.logs.clip` marks it (that module
    imports Twisted, which a worker does without)."""
    return text if len(text) <= limit else f"{text[:limit]}…(+{len(text) - limit})"


class BodyError(Exception):
    """The body is not one the protocol knows; `result` answers it."""

    def __init__(self, result: Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


def content_type(raw: bytes | None) -> tuple[str, dict[str, str]]:
    """A Content-Type header's media type (lower case) and its parameters."""
    mime, _, rest = (raw or b"").decode("latin-1").partition(";")
    params: dict[str, str] = {}
    for param in rest.split(";"):
        name, _, value = param.strip().partition("=")
        if value:
            params[name.lower()] = value.strip('"')
    return mime.strip().lower(), params


_BROKEN_ESCAPE = re.compile(rb"%(?![0-9A-Fa-f]{2})")


def form_unquote(value: bytes) -> bytes:
    """A form value's bytes: `+` is a space and `%XX` a byte, as `urllib.parse.unquote_to_bytes`.

    A lot's JSON arrives percent-encoded almost character by character, and
    the standard library decodes an escape at a time in Python (about 15 us
    for a carIn). With every `%` followed by two hex digits, the escapes are
    rewritten as quoted-printable's `=XX` (a literal `=` first becoming `=3D`)
    and decoded by `binascii` in C; a broken escape takes the standard library.
    """
    value = value.replace(b"+", b" ")
    if b"%" not in value:
        return value
    if _BROKEN_ESCAPE.search(value):
        return unquote_to_bytes(value)
    return binascii.a2b_qp(value.replace(b"=", b"=3D").replace(b"%", b"="))


def parse_form(body: bytes) -> dict[bytes, list[bytes]]:
    """The fields of an `application/x-www-form-urlencoded` body, blank values kept.

    Fields are split at `&` only, as WHATWG forms and `urllib.parse` since 3.10:
    a `;` in a JSON value the lot did not encode stays in the value.
    """
    fields: dict[bytes, list[bytes]] = {}
    for pair in body.split(b"&"):
        if not pair:
            continue
        name, equals, value = pair.partition(b"=")
        if not equals:
            continue  # as twisted.web's parser: a field needs its `=`
        fields.setdefault(form_unquote(name), []).append(form_unquote(value))
    return fields


def _form(body: bytes, mime: str, params: dict[str, str]) -> dict[bytes, list[bytes]] | None:
    """The fields of a form body, or None when the body is not a form."""
    if mime == "application/x-www-form-urlencoded":
        return parse_form(body)
    if mime != "multipart/form-data":
        return None
    boundary = params.get("boundary")
    if not boundary:
        raise BodyError(Result.MALFORMED, "multipart body without a boundary")
    fields: dict[bytes, list[bytes]] = {}
    try:
        for part in multipart.MultipartParser(io.BytesIO(body), boundary, content_length=len(body)):
            fields.setdefault(part.name.encode("utf-8"), []).append(part.raw)
    except multipart.MultipartError as error:
        detail = clip(str(error), 2 * ECHO_CHARS)
        raise BodyError(Result.MALFORMED, f"broken multipart body: {detail}") from None
    return fields


def body_text(
    body: bytes, raw_type: bytes | None, query_param: bytes | None
) -> tuple[str, list[tuple[str, bytes]]]:
    """The request's protocol text and its file parts (name, content), or BodyError.

    `raw_type` is the Content-Type header; `query_param` the URL's `param`
    (some lots put it there), or None.
    """
    mime, params = content_type(raw_type)
    charset = params.get("charset", "utf-8").lower()
    form = _form(body, mime, params)
    files: list[tuple[str, bytes]] = []
    if mime == "multipart/form-data" and form:
        for name, values in form.items():
            if name != b"param":
                files.extend((name.decode("utf-8", "replace"), value) for value in values)
    if form and b"param" in form:
        raw = form[b"param"][0]
    elif query_param is not None:
        raw = query_param
    elif form is not None and body:
        raise BodyError(Result.MALFORMED, "param: required in a form body")
    else:
        raw = body
    try:
        return raw.decode(charset), files
    except LookupError:
        raise BodyError(Result.MALFORMED, f"charset {clip(charset)!r} is unknown") from None
    except UnicodeDecodeError as error:
        raise BodyError(Result.MALFORMED, f"the body is not {charset} text (byte {error.start})") from None


# What `parse_body` returns, as plain values a worker can marshal:
#   ("body", result code, detail)                      the body is not a protocol text
#   ("envelope", result code, detail, code, oprNum)    the text is not a request envelope
#   ("request", token, code, oprNum, signature, data_text, marshalled data, [(name, content)])
#   ("fault", what went wrong)                         a fault of the gateway's own
Outcome = tuple[Any, ...]


def parse_body(body: bytes, raw_type: bytes | None, query_param: bytes | None) -> Outcome:
    """What the body holds: the request envelope parsed, or why it is refused (see Outcome above).

    The request's `data` is marshalled: its reader loads it only once the
    token has shown that it is needed (a refused request's data, perhaps
    millions of values, is never rebuilt by the gateway).
    """
    try:
        text, files = body_text(body, raw_type, query_param)
    except BodyError as error:
        return ("body", error.result.code, error.detail)
    try:
        request = parse_request(text)
    except EnvelopeError as error:
        return ("envelope", error.result.code, error.detail, error.code, error.opr)
    data = marshal.dumps(request.data)  # type: ignore[arg-type]  # JSON values all marshal
    return (
        "request",
        request.token,
        request.code,
        request.opr,
        request.signature,
        request.data_text,
        data,
        files,
    )


def _handle(meta: Any, body: bytes) -> Outcome:
    """One job: `meta` is (Content-Type, the URL's `param`); the body's outcome."""
    raw_type, query_param = meta
    try:
        return parse_body(body, raw_type, query_param)
    except MemoryError:
        return ("body", Result.MALFORMED.code, "the body holds too much to parse")


def serve(stdin: BinaryIO, stdout: BinaryIO) -> None:
    """The worker's loop: a job in, its outcome out, until stdin ends."""
    workerloop.serve(stdin, stdout, _handle)


def main() -> None:
    """Run as a worker: nice, ready, then serve stdin to stdout."""
    workerloop.run(_handle, WORKER_NICE)


if __name__ == "__main__":
    main()

"""Fuzzing the uplink's body paths: urlencoded forms, multipart and raw JSON, down to the envelope."""

from __future__ import annotations

import io
from typing import Any

import multipart
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.lots import bodies
from gateway.lots import http as uplink_http
from gateway.lots.http import BodyError, parse_form, request_text
from gateway.protocol.envelope import EnvelopeError, parse_request
from gateway.protocol.results import Result
from tests.fuzz.ops import steps
from tests.fuzz.strategies import hostile_text

MAX_BODY = 1 << 16


class _Request:
    """As much of an `UplinkRequest` as `request_text` reads."""

    def __init__(self, body: bytes, content_type: bytes | None, args: dict[bytes, list[bytes]]) -> None:
        self.content = io.BytesIO(body)
        self._type = content_type
        self._param = args.get(b"param", [None])[0]

    def header(self, name: bytes) -> bytes | None:
        return self._type if name == b"content-type" else None

    def param(self) -> bytes | None:
        return self._param


form_bytes = st.lists(
    st.sampled_from([b"param=", b"&", b"=", b"%", b"%2", b"%7B", b"%zz", b"+", b";", b"param", b"%22", b"a"])
    | st.binary(max_size=6),
    max_size=60,
).map(b"".join)


@st.composite
def multipart_bodies(draw: st.DrawFn) -> tuple[bytes, bytes]:
    """A multipart body (well-formed or not) and its content type."""
    boundary = draw(st.sampled_from([b"b", b"--x--", b"0123456789" * 8, b"a b"]))
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([b"param", b"image", b'"', b"", "名".encode()]))
        headers = b'Content-Disposition: form-data; name="' + name + b'"'
        if draw(st.booleans()):
            headers += b'; filename="f.jpg"\r\nContent-Type: image/jpeg'
        value = draw(
            st.binary(max_size=30) | hostile_text.map(lambda text: text.encode("utf-8", "surrogatepass"))
        )
        parts.append(b"--" + boundary + b"\r\n" + headers + b"\r\n\r\n" + value + b"\r\n")
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    if draw(st.booleans()):
        cut = draw(st.integers(0, len(body)))
        body = body[:cut] + draw(st.binary(max_size=10))
    content_type = b"multipart/form-data; boundary=" + draw(
        st.sampled_from([boundary, b'"' + boundary + b'"', b""])
    )
    return body, content_type


def _answer(body: bytes, content_type: bytes | None, args: dict[bytes, list[bytes]] | None = None) -> Result:
    """The result code the uplink would answer `body` with before tokens: parsed (OK) or refused."""
    try:
        read = request_text(_Request(body, content_type, args or {}), MAX_BODY)  # type: ignore[arg-type]
    except BodyError as error:
        assert error.result is Result.MALFORMED and len(error.detail) <= 300
        return error.result
    if read == 413:
        assert len(body) > MAX_BODY
        return Result.FAILED
    assert not isinstance(read, int)
    text, _files = read
    try:
        parse_request(text)
    except EnvelopeError as error:
        return error.result
    return Result.OK


@given(form_bytes)
@settings(max_examples=300)
def test_any_urlencoded_body_gets_an_answer(body: bytes) -> None:
    """Any form body is parsed into fields, then answered with a protocol result; nothing raises."""
    assert isinstance(parse_form(body), dict)
    assert _answer(body, b"application/x-www-form-urlencoded") in Result


@given(multipart_bodies())
@settings(max_examples=300)
def test_any_multipart_body_gets_an_answer(case: tuple[bytes, bytes]) -> None:
    """Well-formed, cut or garbled multipart bodies are answered with a protocol result; nothing raises."""
    body, content_type = case
    assert _answer(body, content_type) in Result


@given(
    hostile_text, st.sampled_from([None, b"application/json", b"text/plain; charset=gbk", b"x; charset=nope"])
)
@settings(max_examples=300)
def test_any_raw_body_gets_an_answer(text: str, content_type: bytes | None) -> None:
    """A raw body in any declared type or charset is answered with a protocol result; nothing raises."""
    assert _answer(text.encode("utf-8", "surrogatepass"), content_type) in Result


@given(form_bytes)
@settings(max_examples=100)
def test_param_in_the_query_string_gets_an_answer(value: bytes) -> None:
    """`param` in the URL's query string, with an empty body, is answered like one in the body."""
    assert _answer(b"", None, {b"param": [value]}) in Result


def _form_of(n: int) -> bytes:
    return b"param=" + b"%7B%22a%22%3A1%7D" * n + b"&" + b"x=%zz&" * n


def _broken_escapes(n: int) -> bytes:
    return b"param=" + b"%" * n + b"%2" * n


def _many_parts(n: int) -> bytes:
    part = b'--b\r\nContent-Disposition: form-data; name="f"\r\n\r\nv\r\n'
    return part * n + b'--b\r\nContent-Disposition: form-data; name="param"\r\n\r\n{}\r\n--b--\r\n'


def _long_part_header(n: int) -> bytes:
    disposition = b'Content-Disposition: form-data; name="param"; filename="' + b"a" * n + b'"'
    return b"--b\r\n" + disposition + b"\r\n\r\n{}\r\n--b--\r\n"


def _boundary_lookalikes(n: int) -> bytes:
    return b'--b\r\nContent-Disposition: form-data; name="param"\r\n\r\n' + b"\r\n--c" * n + b"\r\n--b--\r\n"


@pytest.mark.parametrize(
    ("family", "content_type", "n"),
    [
        (_form_of, b"application/x-www-form-urlencoded", 200),
        (_broken_escapes, b"application/x-www-form-urlencoded", 200),
        (_many_parts, b"multipart/form-data; boundary=b", 25),  # the parser allows 128 parts
        (_long_part_header, b"multipart/form-data; boundary=b", 800),  # and 4,224 header bytes
        (_boundary_lookalikes, b"multipart/form-data; boundary=b", 200),
    ],
)
def test_body_decoding_work_is_linear(family: Any, content_type: bytes, n: int) -> None:
    """Four times the body costs at most about four times the Python steps of the body parsers."""
    files = [uplink_http.__file__, bodies.__file__, multipart.__file__]

    def work(n: int) -> int:
        request = _Request(family(n), content_type, {})
        assert isinstance(request_text(request, 1 << 24), tuple)  # parsed, not cut short by an error
        request.content.seek(0)
        return steps(files, lambda: request_text(request, 1 << 24))  # type: ignore[arg-type]

    small, large = work(n), work(4 * n)
    assert large <= 4.3 * small + 200, (small, large)

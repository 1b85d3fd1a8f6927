"""The HTTP uplink (B.2.1): `POST /uplink` and `POST /uplink/{code}`.

This only turns an HTTP request into the request text and file parts, and the
handler's answer into an HTTP response. The body may be a form with `param=`,
a multipart form with a `param` field (and image files), or raw JSON.
"""

from __future__ import annotations

import binascii
import io
import re
from typing import Any
from urllib.parse import unquote, unquote_to_bytes

import multipart
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.iweb import IRequest
from twisted.web.pages import notFound
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from gateway.logs import lot_rejected
from gateway.lots.answers import Answer
from gateway.lots.login import STANDARD
from gateway.lots.tcp import describe
from gateway.lots.uplink import FilePart, UplinkHandler
from gateway.protocol.envelope import build_response
from gateway.protocol.results import Result

JSON_TYPE = b"application/json; charset=utf-8"
log = Logger()


class UnparsedBodyRequest(Request):
    """A request whose body twisted.web leaves alone: the uplink's `request_text` reads it, the API's JSON.

    Twisted parses form bodies itself, building an email.message.EmailMessage
    per POST to read the Content-Type; that alone costs about a tenth of the
    uplink's time (a twentieth of a gateOpen command's), and it drops the
    file names of multipart parts.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["parsePOSTFormSubmission"] = False
        super().__init__(*args, **kwargs)


class UplinkSite(Site):
    """The uplink's HTTP site: our requests, and no access log.

    The journal records every message a lot sends; an access line per request
    on top would fill the operator's log at thousands of requests a second.
    """

    requestFactory = UnparsedBodyRequest
    displayTracebacks = False

    def log(self, request: http.Request) -> None:
        """Write no access-log line."""


def _content_type(request: IRequest) -> tuple[str, dict[str, str]]:
    raw = request.getHeader(b"content-type") or b""
    mime, _, rest = raw.decode("latin-1").partition(";")
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
        raise BodyError(Result.MALFORMED, f"broken multipart body: {error}") from None
    return fields


class BodyError(Exception):
    """The body is not one the protocol knows; `result` answers it."""

    def __init__(self, result: Result, detail: str) -> None:
        super().__init__(detail)
        self.result = result
        self.detail = detail


def request_text(request: IRequest, max_body_bytes: int) -> tuple[str, list[FilePart]] | int:
    """The request's protocol text and file parts, or an HTTP status (413) to refuse it with."""
    content = request.content
    content.seek(0, 2)
    size = content.tell()
    if size > max_body_bytes:
        return 413
    content.seek(0)
    body = content.read()
    mime, params = _content_type(request)
    charset = params.get("charset", "utf-8").lower()
    form = _form(body, mime, params)
    files: list[FilePart] = []
    if mime == "multipart/form-data" and form:
        for name, values in form.items():
            if name != b"param":
                files.extend(FilePart(name.decode("utf-8", "replace"), value) for value in values)
    query = request.args or {}  # the URL's query string: some lots put param there
    if form and b"param" in form:
        raw = form[b"param"][0]
    elif b"param" in query:
        raw = query[b"param"][0]
    elif form is not None and size:
        raise BodyError(Result.MALFORMED, "param: required in a form body")
    else:
        raw = body
    try:
        return raw.decode(charset), files
    except LookupError:
        raise BodyError(Result.MALFORMED, f"charset {charset!r} is unknown") from None
    except UnicodeDecodeError as error:
        raise BodyError(Result.MALFORMED, f"the body is not {charset} text (byte {error.start})") from None


class UplinkResource(Resource):
    """The uplink endpoint: `POST /uplink` and `POST /uplink/{code}`; any other path is 404.

    A plain twisted.web resource rather than a klein app, unlike the gateway's
    other endpoints: this is the hot path, and klein's router cost about a
    fifth of each uplink's time and left some forty objects in reference
    cycles per request for the garbage collector, whose full passes were the
    uplink's p99 (docs/benchmarks.md).
    """

    isLeaf = True

    def __init__(self, handler: UplinkHandler, max_body_bytes: int) -> None:
        super().__init__()
        self._handler = handler
        self._max_body_bytes = max_body_bytes

    def resource(self) -> IResource:
        """The twisted.web resource to serve: this one."""
        return self

    def render(self, request: Request) -> bytes | int:
        path = request.path
        if path == b"/uplink":
            code = None
        elif path.startswith(b"/uplink/") and len(path) > 8 and b"/" not in path[8:]:
            # No interface code is longer than 10: whatever the answer and the log
            # echo of a longer one is cut to 36 characters (CONTRACT §4).
            code = unquote(path[8:].decode("latin-1"))[:36]
        else:
            page: bytes = notFound().render(request)
            return page
        if request.method != b"POST":
            request.setResponseCode(http.NOT_ALLOWED)
            request.setHeader(b"allow", b"POST")
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"the uplink takes POST\n"
        answered = self._answer(request, code)
        if isinstance(answered, bytes):
            return answered
        answered.addCallback(_respond, request)
        return NOT_DONE_YET

    def _answer(self, request: IRequest, url_code: str | None) -> Deferred[bytes] | bytes:
        try:
            body = request_text(request, self._max_body_bytes)
        except BodyError as error:
            request.setHeader(b"content-type", JSON_TYPE)
            answer = Answer.of(error.result, error.detail)
            _rejected(request, url_code, answer)
            return build_response(url_code or "", "", answer.result, answer.message, {}, "", "")
        if isinstance(body, int):
            request.setResponseCode(body)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"request body too large\n"
        text, files = body
        request.setHeader(b"content-type", JSON_TYPE)
        answered = maybeDeferred(self._handler.handle, text, url_code, files)
        return answered.addErrback(self._failed, url_code, request)

    def _failed(self, failure: Failure, url_code: str | None, request: IRequest) -> bytes:
        """A fault of the gateway's own is still answered in the protocol: 9999, and logged."""
        log.failure("uplink request failed inside the gateway", failure)
        answer = Answer.of(Result.FAILED, "internal error in the gateway; retry")
        _rejected(request, url_code, answer)
        return build_response(url_code or "", "", answer.result, answer.message, {}, "", "")


def _respond(body: bytes, request: Request) -> None:
    """Send a later answer, unless the lot has gone: it learns nothing from a closed socket."""
    if request.channel is None:
        return
    request.setHeader(b"content-length", b"%d" % len(body))
    request.write(body)
    request.finish()


def _rejected(request: IRequest, url_code: str | None, answer: Answer) -> None:
    """Log an answer given here, not by the handler (which logs its own): a body not understood, a fault."""
    lot_rejected(
        log,
        park="",
        peer=describe(request.getClientAddress()),
        code=url_code or "",
        result=answer.result.code,
        reason=answer.message,
        dialect=STANDARD,
        via="http",
    )

"""The HTTP uplink (B.2.1): `POST /uplink` and `POST /uplink/{code}`.

This only turns an HTTP request into the request text and file parts, and the
handler's answer into an HTTP response. The body may be a form with `param=`,
a multipart form with a `param` field (and image files), or raw JSON.
"""

from __future__ import annotations

from typing import Any

from klein import Klein
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from gateway.lots.answers import Answer
from gateway.lots.uplink import FilePart, UplinkHandler
from gateway.protocol.envelope import build_response
from gateway.protocol.results import Result

JSON_TYPE = b"application/json; charset=utf-8"


def _content_type(request: IRequest) -> tuple[str, str]:
    raw = request.getHeader(b"content-type") or b""
    mime, _, params = raw.decode("latin-1").partition(";")
    charset = "utf-8"
    for param in params.split(";"):
        name, _, value = param.strip().partition("=")
        if name.lower() == "charset" and value:
            charset = value.strip('"').lower()
    return mime.strip().lower(), charset


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
    mime, charset = _content_type(request)
    args: dict[bytes, list[bytes]] = request.args or {}
    files: list[FilePart] = []
    if mime == "multipart/form-data":
        for name, values in args.items():
            if name != b"param":
                files.extend(FilePart(name.decode("utf-8", "replace"), value) for value in values)
    if b"param" in args:
        raw = args[b"param"][0]
    elif mime in ("application/x-www-form-urlencoded", "multipart/form-data") and size:
        raise BodyError(Result.MALFORMED, "param: required in a form body")
    else:
        raw = content.read()
    try:
        return raw.decode(charset), files
    except LookupError:
        raise BodyError(Result.MALFORMED, f"charset {charset!r} is unknown") from None
    except UnicodeDecodeError as error:
        raise BodyError(Result.MALFORMED, f"the body is not {charset} text (byte {error.start})") from None


class UplinkResource:
    """The klein application of the uplink endpoint."""

    app = Klein()

    def __init__(self, handler: UplinkHandler, max_body_bytes: int) -> None:
        self._handler = handler
        self._max_body_bytes = max_body_bytes

    def resource(self) -> IResource:
        """The twisted.web resource to serve."""
        resource: IResource = self.app.resource()
        return resource

    @app.route("/uplink", methods=["POST"])
    def uplink(self, request: IRequest) -> Any:
        return self._answer(request, None)

    @app.route("/uplink/<string:code>", methods=["POST"])
    def uplink_code(self, request: IRequest, code: str) -> Any:
        return self._answer(request, code)

    def _answer(self, request: IRequest, url_code: str | None) -> Deferred[bytes] | bytes:
        try:
            body = request_text(request, self._max_body_bytes)
        except BodyError as error:
            request.setHeader(b"content-type", JSON_TYPE)
            answer = Answer.of(error.result, error.detail)
            return build_response(url_code or "", "", answer.result, answer.message, {}, "", "")
        if isinstance(body, int):
            request.setResponseCode(body)
            request.setHeader(b"content-type", b"text/plain; charset=utf-8")
            return b"request body too large\n"
        text, files = body
        request.setHeader(b"content-type", JSON_TYPE)
        return self._handler.handle(text, url_code, files)

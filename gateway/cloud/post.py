"""Signed POSTs to the cloud: what the forwarder and the query client both send."""

from __future__ import annotations

from typing import Any, Protocol

from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.web.http_headers import Headers

from gateway.cloud.httpsig import sign_request

__all__ = ["HTTPRequester", "post_signed"]


class HTTPRequester(Protocol):
    """The part of ``treq.client.HTTPClient`` (or ``treq.testing.StubTreq``) the cloud side uses."""

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        """Send a request; the Deferred fires with its ``IResponse`` once the headers are in."""


def post_signed(
    http: HTTPRequester,
    url: str,
    body: bytes,
    *,
    content_type: str,
    key: SigningKey,
    keyid: str,
    created: int,
) -> Deferred[Any]:
    """POST ``body`` to ``url`` with its Content-Type and RFC 9421 signature headers."""
    signed = sign_request("POST", url, body, key=key, keyid=keyid, created=created)
    headers = Headers({"Content-Type": [content_type]})
    for name, value in signed.as_dict().items():
        headers.setRawHeaders(name, [value])
    return http.request("POST", url, headers=headers, data=body)

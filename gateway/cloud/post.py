"""Signed POSTs to the cloud: what the forwarder and the query client both send."""

from __future__ import annotations

from typing import Any, Protocol

from nacl.signing import SigningKey
from treq.client import HTTPClient
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IConsumer
from twisted.python.failure import Failure
from twisted.web.client import (
    Agent,
    HTTPConnectionPool,
    RequestTransmissionFailed,
    ResponseFailed,
    ResponseNeverReceived,
)
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer
from zope.interface import implementer

from gateway.cloud.httpsig import sign_request

__all__ = ["CloudClient", "HTTPRequester", "failure_reason", "post_signed"]

_REASON = 100  # characters of a network error's text, in a lot's message or a log line


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


def failure_reason(failure: Failure) -> str:
    """A failed exchange in a few words: the first underlying reason's text, else its type.

    treq wraps the cause (a refused connection, a reset) in ResponseFailed and
    its kin; the cause is what an operator needs to read.
    """
    if failure.check(ResponseFailed, ResponseNeverReceived, RequestTransmissionFailed):
        reasons = getattr(failure.value, "reasons", None)
        if reasons and isinstance(reasons[0], Failure):
            failure = reasons[0]
    text = failure.getErrorMessage().strip() or failure.type.__name__
    return text if len(text) <= _REASON else text[: _REASON - 3] + "..."


@implementer(IBodyProducer)
class BytesBody:
    """A request body already in memory, written whole when the request asks for it.

    treq would wrap bytes in a ``FileBodyProducer``, which writes through the global
    reactor's cooperator whatever reactor the client was given; this one needs none.
    """

    def __init__(self, body: bytes) -> None:
        self._body = body
        self.length = len(body)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._body)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class CloudClient:
    """The treq client the cloud side sends with: keep-alive connections, no redirects.

    A redirect would carry a signature made for the configured URL to another
    one; the cloud's 3xx is shown as it is instead (and retried, or 9999 for a query).
    Not ``persistent``, each request has a connection of its own: a POST on a kept
    connection the server has just closed is lost, and only the forwarder retries.
    """

    def __init__(self, reactor: Any, connections: int = 4, *, persistent: bool = True) -> None:
        pool = HTTPConnectionPool(reactor, persistent=persistent)
        pool.maxPersistentPerHost = connections
        self._client = HTTPClient(Agent(reactor, pool=pool))

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        return self._client.request(method, url, headers=headers, data=BytesBody(data), allow_redirects=False)

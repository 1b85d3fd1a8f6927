"""A lot's HTTP uplink (B.2, B.4): login, signed requests, re-login on 9000.

`UplinkClient` logs in (B.4.1), signs each request over its compact `data` with
the token and the lot's secret (B.3.7), gives every request its own oprNum and
lets a caller keep one oprNum across the retries of one message (B.2.3.6). On
`9000` it logs in again and sends the same request once more. Envelopes are
`gateway.protocol.envelope`'s.
"""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlencode

import treq
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers

from gateway.lotclient.credentials import LotCredentials
from gateway.protocol.envelope import EnvelopeError, Reply, as_text, new_opr_prefix, parse_reply, request_text
from gateway.protocol.results import Result

__all__ = ["FORM_TYPE", "HTTPRequester", "UplinkClient", "UplinkError", "parse_response", "post_param"]

FORM_TYPE = "application/x-www-form-urlencoded"
TOKEN_INVALID = Result.TOKEN_INVALID.code


class UplinkError(Exception):
    """An exchange that failed below the protocol: not HTTP 200, not a response envelope."""


def parse_response(text: str) -> Reply:
    """A response envelope (`parse_reply`), or UplinkError saying why the text is none."""
    try:
        return parse_reply(text)
    except EnvelopeError as error:
        raise UplinkError(f"the answer is not a response envelope: {error.detail}") from None


class HTTPRequester(Protocol):
    """The part of `treq.client.HTTPClient` (or `treq.testing.StubTreq`) the uplink uses."""

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        """Send a request; fires with its `IReply` once the headers are in."""


def post_param(http: HTTPRequester, url: str, text: str) -> Deferred[Any]:
    """POST `text` to `url` as the `param` of a form (B.2); fires with the response, headers in."""
    body = urlencode({"param": text}).encode("ascii")
    return http.request("POST", url, headers=Headers({"Content-Type": [FORM_TYPE]}), data=body)


class UplinkClient:
    """One lot's HTTP uplink: login, signed requests, re-login on 9000.

    `url` is where requests are POSTed as `param={JSON}` (the gateway's `/uplink`).
    `send` fails with UplinkError, a network error or a TimeoutError (after
    `timeout` seconds on `clock`) when no response envelope came back.
    """

    def __init__(
        self,
        *,
        http: HTTPRequester,
        url: str,
        credentials: LotCredentials,
        clock: IReactorTime,
        timeout: float = 30.0,
        relogin: bool = True,
        opr_prefix: str | None = None,
    ) -> None:
        self.url = url
        self.credentials = credentials
        self.token = ""
        self.park_code = credentials.park_code
        self.logins = 0
        self._http = http
        self._clock = clock
        self._timeout = timeout
        self._relogin = relogin
        self._prefix = opr_prefix if opr_prefix is not None else new_opr_prefix()
        self._count = 0
        self._login_waiters: list[Deferred[Reply]] | None = None

    def new_opr(self) -> str:
        """A new oprNum, unique to this client (a random prefix and a counter, at most 36 characters)."""
        self._count += 1
        return f"{self._prefix}-{self._count}"

    def post(self, code: str, data: object, *, token: str, opr: str) -> Deferred[Reply]:
        """POST one request envelope as it is: no login, no retry."""
        return self.post_text(request_text(code, opr, token, self.credentials.secret, data))

    def post_text(self, text: str) -> Deferred[Reply]:
        """POST `text` as the `param` of a form, whatever it holds (a conformance kit sends broken ones)."""
        sent = post_param(self._http, self.url, text)
        sent.addCallback(self._read)
        sent.addTimeout(self._timeout, self._clock)
        return sent

    def _read(self, response: Any) -> Deferred[Reply]:
        status = int(response.code)

        def parsed(body: bytes) -> Reply:
            if status != 200:
                raise UplinkError(f"HTTP {status}: {body[:100]!r}")
            try:
                text = body.decode("utf-8")
            except UnicodeDecodeError:
                raise UplinkError("the answer is not UTF-8") from None
            return parse_response(text)

        content: Deferred[bytes] = treq.content(response)
        return content.addCallback(parsed)

    def login(self) -> Deferred[Reply]:
        """Log in (one login at a time: callers during one get its answer); keeps the token on 0000."""
        if self._login_waiters is not None:
            waiter: Deferred[Reply] = Deferred()
            self._login_waiters.append(waiter)
            return waiter
        self._login_waiters = []
        data = {"parkUserName": self.credentials.username, "parkUserPwd": self.credentials.password}
        answered = self.post("login", data, token="", opr=self.new_opr())

        def logged_in(response: Reply) -> Reply:
            if response.ok and isinstance(response.data, dict):
                self.token = as_text(response.data.get("token"))
                self.park_code = as_text(response.data.get("parkCode")) or self.park_code
                self.logins += 1
            return response

        def notify(result: Reply | Failure) -> Reply | Failure:
            waiters, self._login_waiters = self._login_waiters or [], None
            for waiter in waiters:
                if isinstance(result, Failure):
                    waiter.errback(result)
                else:
                    waiter.callback(result)
            return result

        return answered.addCallback(logged_in).addBoth(notify)

    def send(self, code: str, data: object, opr: str | None = None) -> Deferred[Reply]:
        """Send `data` as `code` with `opr` (a new oprNum if None), logging in first if need be.

        A `9000` answer (token replaced or expired) is followed by a login and the
        same request, same oprNum, once more. A refused login's answer is returned.
        """
        return Deferred.fromCoroutine(self._send(code, data, opr or self.new_opr()))

    async def _send(self, code: str, data: object, opr: str) -> Reply:
        if not self.token and self._relogin:
            login = await self.login()
            if not login.ok:
                return login
        token = self.token
        response = await self.post(code, data, token=token, opr=opr)
        if response.result_code == TOKEN_INVALID and self._relogin:
            if self.token == token:
                login = await self.login()
                if not login.ok:
                    return login
            response = await self.post(code, data, token=self.token, opr=opr)
        return response

    def heartbeat(self) -> Deferred[Reply]:
        """An HTTP heartbeat (B.4.8): its answer carries the gateway's time."""
        return self.send("heartbeat", {})

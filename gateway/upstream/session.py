"""
One lot's account at the upstream platform: login, its token, and the repeat rule (B.2.3.6).

With the ``t002`` sink the gateway stands in for each lot towards an upstream
platform that speaks the standard (CONTRACT §6). :class:`UpstreamSession` is
that lot's HTTP side: it logs in with the lot's ``upstream_username`` /
``upstream_password``, signs every request with the upstream token and
``upstream_secret`` (B.3.7), and sends each request as ``param={JSON}``.

Tokens
------
The upstream's token lasts to the end of the natural month (B.3.5). The
session logs in before the first request, again before the first request of
a new month (in the gateway's zone), and again when the upstream answers
``9000``, after which it sends the same request, with the same oprNum, once
more. A refused or failed login is not tried again for a while (doubling from
1 s to 5 min), so a lot with wrong upstream credentials does not hammer the
upstream; its requests fail at once with :class:`LoginRefused` meanwhile.

Repeats
-------
The lot's oprNum is kept on every attempt, so the upstream drops duplicates.
The standard allows no more than five repeats of one request an hour
(B.2.3.6): a request is sent at most six times in any hour. An attempt that
could not have reached the upstream (the connection was refused, the name did
not resolve), or was answered HTTP 5xx, 408 or 429 (the platform, or a proxy
before it, took nothing in), does not count. Past the limit, :meth:`UpstreamSession.send`
fails with :class:`RepeatLimit` naming when the next attempt is allowed, and
the hold is journaled once as an ``upstream-held`` record.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import treq
from attrs import frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cloud.post import failure_reason, shortened
from gateway.interfaces import JournalAppend
from gateway.journal.kinds import HELD_RECORD
from gateway.lotclient.uplink import HTTPRequester, UplinkError, parse_response, post_param
from gateway.protocol.envelope import Reply as Response
from gateway.protocol.envelope import signed_request_text as envelope_text
from gateway.protocol.results import Result
from gateway.protocol.signing import compact
from gateway.protocol.times import utc_rfc3339

__all__ = [
    "Exchange",
    "LoginRefused",
    "RepeatLimit",
    "UpstreamAccount",
    "UpstreamSession",
]


REPEAT_WINDOW = 3600.0
MAX_ATTEMPTS = 6
"""The first attempt and the five repeats B.2.3.6 allows within REPEAT_WINDOW."""

LOGIN_RETRY_MIN = 1.0
LOGIN_RETRY_MAX = 300.0

# How much of an answer an Exchange keeps as text (for rejection records and logs).
_TEXT_BYTES = 4096

_TOKEN_INVALID = Result.TOKEN_INVALID.code
_OK = Result.OK.code

log = Logger()


@frozen
class UpstreamAccount:
    """A lot's account at the upstream: its park, user name, password and key-pool secret."""

    park: str
    username: str
    password: str = ""
    secret: str = ""

    def __repr__(self) -> str:
        return f"UpstreamAccount(park={self.park!r}, username={self.username!r})"


@frozen
class Exchange:
    """What the upstream answered to one request: the HTTP status, the envelope, the text."""

    status: int
    response: Response | None
    text: str

    @property
    def result_code(self) -> str:
        """The envelope's resultCode ("" when there is no envelope)."""
        return self.response.result_code if self.response is not None else ""


class LoginRefused(Exception):
    """The upstream did not give this lot a token (refused, unreachable, or not tried again yet).

    `not_before` is when the next login may be tried (None: at once).
    """

    def __init__(self, message: str, not_before: float | None = None) -> None:
        super().__init__(message)
        self.not_before = not_before


class RepeatLimit(Exception):
    """The request was sent as often as B.2.3.6 allows within the hour; `until` is when it may go again."""

    def __init__(self, park: str, opr: str, until: float, attempts: int) -> None:
        super().__init__(
            f"request {opr} of lot {park} was sent {attempts} times within the hour (B.2.3.6); "
            f"held until {utc_rfc3339(until)}"
        )
        self.opr = opr
        self.until = until
        self.attempts = attempts


def _never_sent(failure: Failure) -> bool:
    """Whether a failed exchange certainly never reached the upstream (no connection was made)."""
    return failure.check(ConnectError, DNSLookupError) is not None


class UpstreamSession:
    """One lot's HTTP exchanges with the upstream; see the module docstring."""

    def __init__(
        self,
        *,
        account: UpstreamAccount,
        url: str,
        http: HTTPRequester,
        clock: IReactorTime,
        zone: ZoneInfo,
        timeout: float,
        journal: JournalAppend | None = None,
        opr_prefix: str = "",
    ) -> None:
        self.account = account
        self._url = url
        self._http = http
        self._clock = clock
        self._zone = zone
        self._timeout = timeout
        self._journal = journal
        self._prefix = opr_prefix or f"gw{account.park[:20]}"
        self._count = 0
        self._token = ""
        self._month: tuple[int, int] | None = None
        self._logging_in: list[Deferred[str]] | None = None
        self._login_failures = 0
        self._login_not_before = 0.0
        self._login_problem = ""
        self._attempts: dict[str, deque[float]] = {}
        self._held: dict[str, float] = {}
        self.listeners: list[Callable[[], object]] = []
        """Called after each new token (the TCP link binds with it)."""
        self.counters: dict[str, int] = {"logins": 0, "login_failures": 0, "requests": 0, "held": 0}

    @property
    def park(self) -> str:
        return self.account.park

    @property
    def token(self) -> str:
        """The token in force ("" before the first login, after a 9000, and in a new month)."""
        if self._token and self._month != self._month_now():
            self._token = ""
        return self._token

    @property
    def login_problem(self) -> str:
        """Why the last login failed ("" after a good one)."""
        return self._login_problem

    def _month_now(self) -> tuple[int, int]:
        now = datetime.fromtimestamp(self._clock.seconds(), self._zone)
        return now.year, now.month

    def _new_opr(self) -> str:
        self._count += 1
        return f"{self._prefix}-l{self._count}"

    # -- logging in

    def token_invalid(self, token: str) -> None:
        """The upstream refused `token` (a 9000 on TCP): forget it, and log in again unless waiting."""
        if token and token == self._token:
            self._token = ""
        if not self.token and self._clock.seconds() >= self._login_not_before:
            self.logged_in().addErrback(lambda _: None)

    def logged_in(self) -> Deferred[str]:
        """
        The token in force, logging in first if there is none; fails LoginRefused.

        Every caller gets a Deferred of its own: one that gives up (a query's
        deadline cancels it) leaves the login to go on for the others.
        """
        token = self.token
        if token:
            return succeed(token)
        waiter: Deferred[str] = Deferred()
        if self._logging_in is not None:
            self._logging_in.append(waiter)
            return waiter
        now = self._clock.seconds()
        if now < self._login_not_before:
            problem = f"{self._login_problem}; next login in {self._login_not_before - now:.0f} s"
            return fail(LoginRefused(problem, self._login_not_before))
        self._logging_in = [waiter]
        data = {"parkUserName": self.account.username, "parkUserPwd": self.account.password}
        exchange = self._post("login", compact(data), "", self._new_opr())
        # The waiters hear of the outcome (_notify); the LoginRefused raised for it ends here.
        exchange.addCallbacks(self._login_answered, self._login_failed).addErrback(
            lambda failure: None if failure.check(LoginRefused) else log.failure("login", failure)
        )
        return waiter

    def _login_answered(self, exchange: Exchange) -> str:
        response = exchange.response
        token = ""
        if response is not None and response.ok and isinstance(response.data, dict):
            token = str(response.data.get("token") or "")
        if not token:
            if response is None:
                problem = f"HTTP {exchange.status}: {shortened(exchange.text)}"
            else:
                problem = f"{response.result_code} {response.result_message}".strip()
            return self._login_refused(f"the upstream refused the login of lot {self.park}: {problem}")
        self._token = token
        self._month = self._month_now()
        self._login_failures = 0
        self._login_not_before = 0.0
        self._login_problem = ""
        self.counters["logins"] += 1
        log.info(
            "lot {park} logged in upstream as {username}",
            event="upstream.login",
            park=self.park,
            username=self.account.username,
        )
        self._notify(token)
        for listener in list(self.listeners):
            try:
                listener()
            except Exception:
                log.failure("a token listener of lot {park} failed", park=self.park)
        return token

    def _login_failed(self, failure: Failure) -> str:
        return self._login_refused(f"the login of lot {self.park} upstream failed: {failure_reason(failure)}")

    def _login_refused(self, problem: str) -> str:
        self._login_failures += 1
        self.counters["login_failures"] += 1
        delay = min(LOGIN_RETRY_MAX, LOGIN_RETRY_MIN * 2 ** min(self._login_failures - 1, 30))
        self._login_not_before = self._clock.seconds() + delay
        self._login_problem = problem
        log.warn(
            "{problem}; next login in {delay:g} s",
            event="upstream.login-refused",
            park=self.park,
            problem=problem,
            delay=delay,
        )
        error = LoginRefused(problem, self._login_not_before)
        self._notify(Failure(error))
        raise error

    def _notify(self, result: str | Failure) -> None:
        waiters, self._logging_in = self._logging_in or [], None
        for waiter in waiters:
            if isinstance(result, Failure):
                waiter.errback(result)
            else:
                waiter.callback(result)

    # -- requests

    def send(self, code: str, data_text: str, opr: str) -> Deferred[Exchange]:
        """
        Send `data_text` (JSON) as `code` with the lot's `opr`, logged in; once more after a 9000.

        The signature covers `data_text` as given, and the request carries it as it is.

        Fires with the upstream's :class:`Exchange` (whatever it answered), or
        fails: LoginRefused, RepeatLimit, a network error or TimeoutError.
        """
        return Deferred.fromCoroutine(self._send(code, data_text, opr))

    async def _send(self, code: str, data_text: str, opr: str) -> Exchange:
        self._check_repeats(code, opr)
        token = await self.logged_in()
        exchange = await self._attempt(code, data_text, token, opr)
        if exchange.result_code == _TOKEN_INVALID:
            if self._token == token:
                self._token = ""
            self._check_repeats(code, opr)
            token = await self.logged_in()
            exchange = await self._attempt(code, data_text, token, opr)
        return exchange

    def finished(self, opr: str) -> None:
        """`opr` will not be sent again: forget its attempts."""
        self._attempts.pop(opr, None)
        self._held.pop(opr, None)

    def _check_repeats(self, code: str, opr: str) -> None:
        times = self._attempts.get(opr)
        if not times:
            return
        now = self._clock.seconds()
        while times and times[0] <= now - REPEAT_WINDOW:
            times.popleft()
        if len(times) < MAX_ATTEMPTS:
            self._held.pop(opr, None)
            return
        until = times[0] + REPEAT_WINDOW
        if self._held.get(opr) != until:
            self._held[opr] = until
            self.counters["held"] += 1
            log.warn(
                "request {opr} ({code}) of lot {park} held until {until}: sent {attempts} times "
                "within the hour, the most the standard allows (B.2.3.6)",
                event="upstream.held",
                park=self.park,
                code=code,
                opr=opr,
                attempts=len(times),
                until=utc_rfc3339(until),
            )
            if self._journal is not None:
                body = {"attempts": len(times), "until": utc_rfc3339(until)}
                self._journal.append(HELD_RECORD, self.park, code, opr, body).addErrback(
                    lambda failure: log.error(
                        "could not journal the hold of {opr}: {error}",
                        opr=opr,
                        error=failure.getErrorMessage(),
                    )
                )
        raise RepeatLimit(self.park, opr, until, len(times))

    def _attempt(self, code: str, data_text: str, token: str, opr: str) -> Deferred[Exchange]:
        now = self._clock.seconds()
        times = self._attempts.setdefault(opr, deque())
        times.append(now)
        self.counters["requests"] += 1

        def uncount() -> None:
            if times and times[-1] == now:
                times.pop()

        def not_sent(failure: Failure) -> Failure:
            if _never_sent(failure):
                uncount()  # it never left: it is no repeat in the upstream's eyes
            return failure

        def unanswered(exchange: Exchange) -> Exchange:
            if exchange.status in (408, 429) or exchange.status >= 500:
                uncount()  # no answer of the protocol: the platform (or a proxy) took nothing in
            return exchange

        return self._post(code, data_text, token, opr).addCallbacks(unanswered, not_sent)

    def _post(self, code: str, data_text: str, token: str, opr: str) -> Deferred[Exchange]:
        text = envelope_text(code, opr, token, self.account.secret, data_text)
        sent = post_param(self._http, self._url, text)
        sent.addCallback(self._read)
        sent.addTimeout(self._timeout, self._clock)
        return sent

    def _read(self, response: Any) -> Deferred[Exchange]:
        status = int(response.code)

        def parsed(body: bytes) -> Exchange:
            text = body[:_TEXT_BYTES].decode("utf-8", "replace")
            envelope = None
            if status == 200:
                try:
                    envelope = parse_response(body.decode("utf-8"))
                except (UplinkError, UnicodeDecodeError):
                    envelope = None
            return Exchange(status, envelope, text)

        content: Deferred[bytes] = treq.content(response)
        return content.addCallback(parsed)

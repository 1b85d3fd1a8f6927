"""One lot's account at an upstream T/CPMI 002 platform: login, tokens, signatures and the repeat rule.

The upstream is a realistic platform in memory: the gateway's own uplink
(``tests.lots.harness.Uplink``: a real UplinkHandler behind ``StubTreq``), so
it really checks passwords, tokens (9000 once another login took the token),
signatures with token and secret (9006) and repeats (the first answer for the
same oprNum, 9007 past the limit). :class:`Platform` stands in front of it as
the session's HTTP client: it records every request and fails chosen ones on
purpose (HTTP errors, refused connections, answers that never come).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any
from urllib.parse import parse_qs

import nacl.pwhash
import pytest
from attrs import frozen
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.task import Clock
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import Request as WebRequest

from gateway import config
from gateway.journal.kinds import HELD_RECORD
from gateway.lotclient.uplink import FORM_TYPE
from gateway.lots.uplink import Queries
from gateway.protocol.envelope import parse_request
from gateway.protocol.signing import compact, sign
from gateway.protocol.times import utc_rfc3339
from gateway.upstream.session import Exchange, LoginRefused, RepeatLimit, UpstreamAccount, UpstreamSession
from tests.lots.harness import PASSWORD, ZONE, MemoryJournal, Uplink, fired, lot_entry, result_of
from tests.protocol.samples import SAMPLES
from tests.test_logs import captured

URL = "http://upstream.example/uplink"
SECRET = "s3cret"  # the upstream's key-pool secret of lot P001 (lot_entry's)
CAR_IN = compact(SAMPLES["carIn"])
TIMEOUT = 30.0


def at(text: str) -> float:
    """Epoch seconds of a `yyyy-MM-dd HH:mm:ss` time in the gateway's zone."""
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=ZONE).timestamp()


def cheap_hash(password: str) -> str:
    """An argon2id hash at minimum cost, for an upstream lot's configured password."""
    return nacl.pwhash.argon2id.str(
        password.encode(),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
    ).decode()


def settled(deferred: Deferred[Any]) -> Any:
    """What a Deferred that must already have fired fired with: its result or its Failure (now handled)."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, "the Deferred has not fired"
    return results[0]


def failure_of(deferred: Deferred[Any]) -> Failure:
    """The Failure a Deferred that must already have fired failed with."""
    result = settled(deferred)
    assert isinstance(result, Failure), f"the Deferred succeeded with {result!r}"
    return result


class Answering(Resource):
    """A web resource answering every POST with one status and body (an upstream in trouble)."""

    isLeaf = True

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__()
        self.status = status
        self.body = body

    def render_POST(self, request: WebRequest) -> bytes:
        request.setResponseCode(self.status)
        return self.body


@frozen
class Sent:
    """One request as it reached the platform: its headers, and its `param` envelope parsed."""

    content_type: str
    param: str
    code: str
    opr: str
    token: str
    signature: str
    data_text: str


Fault = Callable[[Sent], "Deferred[Any] | None"]
"""What the platform does to a request instead of answering it (None: answer it)."""


def refused() -> Fault:
    """Every request fails as a refused connection (it never reached the platform)."""
    return lambda sent: fail(ConnectionRefusedError("Connection refused"))


def answering(status: int, body: bytes = b"", code: str | None = None, opr: str | None = None) -> Fault:
    """Requests (of `code`, of `opr`, when given) are answered `status` with `body`."""
    web: Any = StubTreq(Answering(status, body))  # StubTreq's methods are made at run time

    def fault(sent: Sent) -> Deferred[Any] | None:
        if (code is not None and sent.code != code) or (opr is not None and sent.opr != opr):
            return None
        answer: Deferred[Any] = web.request("POST", URL, data=sent.param.encode())
        return answer

    return fault


class Platform:
    """
    The upstream as a session reaches it: the gateway's uplink in memory behind a recording requester.

    `fault` may fail a request on purpose; with `hold`, requests wait until
    `release` (to see what is in flight at once).
    """

    def __init__(
        self,
        lots: list[dict[str, Any]] | None = None,
        start: str = "2026-11-24 10:00:00",
        queries: Queries | None = None,
    ) -> None:
        self.uplink = Uplink(lots if lots is not None else [lot_entry()], start=start, queries=queries)
        self.clock: Clock = self.uplink.clock
        self.requests: list[Sent] = []
        self.fault: Fault = lambda sent: None
        self.hold = False
        self.held: list[tuple[Deferred[Any], Sent, bytes]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    # the HTTPRequester the sessions use

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        assert method == "POST" and url == URL
        [content_type] = headers.getRawHeaders("Content-Type") or [""]
        [param] = parse_qs(data.decode("ascii"), strict_parsing=True)["param"]
        envelope = parse_request(param)
        sent = Sent(
            content_type,
            param,
            envelope.code,
            envelope.opr,
            envelope.token,
            envelope.signature,
            envelope.data_text,
        )
        self.requests.append(sent)
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        answer = self.fault(sent)
        if answer is None:
            if self.hold:
                answer = Deferred()
                self.held.append((answer, sent, data))
            else:
                answer = self._answer(data)

        def done(result: object) -> object:
            self.in_flight -= 1
            return result

        return answer.addBoth(done)

    def _answer(self, data: bytes) -> Deferred[Any]:
        web: Any = self.uplink.treq
        answer: Deferred[Any] = web.request("POST", URL, headers={"Content-Type": [FORM_TYPE]}, data=data)
        return answer

    def release(self) -> None:
        """Answer the requests held so far (not those they lead to)."""
        held, self.held = self.held, []
        for waiting, _, data in held:
            if not waiting.called:
                self._answer(data).chainDeferred(waiting)

    # what happened

    def codes(self) -> list[str]:
        return [sent.code for sent in self.requests]

    def sent(self, opr: str) -> int:
        """How many requests carried `opr`."""
        return sum(1 for sent in self.requests if sent.opr == opr)

    def accepted(self) -> list[tuple[str, str]]:
        """The (park, oprNum) of every uplink the platform took, in the order it took them."""
        return [(r.park, r.opr) for r in self.uplink.journal.records if r.kind == "uplink"]

    def reconfigure(self, lots: list[dict[str, Any]]) -> None:
        """The platform's operator changes its lots (passwords, secrets)."""
        self.uplink.handler.reconfigure(config.parse({"lot": lots}))

    def session(
        self,
        park: str = "P001",
        username: str = "lot001",
        password: str = PASSWORD,
        secret: str = SECRET,
        journal: MemoryJournal | None = None,
    ) -> UpstreamSession:
        return UpstreamSession(
            account=UpstreamAccount(park, username, password, secret),
            url=URL,
            http=self,
            clock=self.clock,
            zone=ZONE,
            timeout=TIMEOUT,
            journal=journal,
        )


@pytest.fixture
def platform() -> Platform:
    return Platform()


def exchange_of(deferred: Deferred[Exchange]) -> Exchange:
    return result_of(deferred)


# login and sending


def test_the_first_send_logs_in_then_sends(platform: Platform) -> None:
    """The first send logs in with the lot's upstream account, then sends the request with the token."""
    session = platform.session()
    assert session.token == ""
    exchange = exchange_of(session.send("carIn", CAR_IN, "R1"))
    assert exchange.status == 200 and exchange.result_code == "0000"
    assert platform.codes() == ["login", "carIn"]
    login, car_in = platform.requests
    assert json.loads(login.data_text) == {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
    assert login.token == "" and len(session.token) == 32 and car_in.token == session.token
    assert platform.accepted() == [("P001", "R1")]
    assert session.counters["logins"] == 1 and session.counters["requests"] == 1


def test_a_request_is_a_signed_param_form_keeping_the_oprnum(platform: Platform) -> None:
    """A request is `param={JSON}` form data with the lot's oprNum, signed with token and upstream secret."""
    session = platform.session()
    exchange = exchange_of(session.send("carIn", CAR_IN, "lot-opr-77"))
    sent = platform.requests[-1]
    assert sent.content_type == FORM_TYPE
    assert sent.code == "carIn" and sent.opr == "lot-opr-77"
    assert sent.data_text == CAR_IN  # as given: the signature covers it as written
    assert sent.signature == sign(CAR_IN, session.token, SECRET)
    assert sent.signature != sign(CAR_IN, session.token, "")
    # The platform checked the signature with the token and its secret, and took the request.
    assert exchange.result_code == "0000" and exchange.response is not None
    assert exchange.response.opr == "lot-opr-77"
    assert exchange.response.signed_by(session.token, SECRET)
    assert platform.accepted() == [("P001", "lot-opr-77")]


def test_a_signature_the_platform_cannot_check_is_answered_9006(platform: Platform) -> None:
    """With a secret the platform does not share, the upstream answers 9006 (login and requests alike)."""
    wrong = platform.session(secret="not-the-secret")
    refusal = failure_of(wrong.send("carIn", CAR_IN, "R1"))
    assert refusal.check(LoginRefused) and "9006" in refusal.getErrorMessage()
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R2")).result_code == "0000"
    platform.reconfigure([lot_entry(secret="rotated")])  # the platform's secret changes under the session
    exchange = exchange_of(session.send("carIn", CAR_IN, "R3"))
    assert exchange.status == 200 and exchange.result_code == "9006"
    assert ("P001", "R3") not in platform.accepted()


def test_concurrent_sends_share_one_login(platform: Platform) -> None:
    """Sends made while a login is under way wait for it: one login request serves them all."""
    session = platform.session()
    tokens: list[None] = []
    session.listeners.append(lambda: tokens.append(None))
    platform.hold = True
    first = session.send("carIn", CAR_IN, "R1")
    second = session.send("carIn", CAR_IN, "R2")
    assert platform.codes() == ["login"]
    platform.release()
    assert sorted(platform.codes()) == ["carIn", "carIn", "login"]
    platform.release()
    assert exchange_of(first).result_code == "0000" and exchange_of(second).result_code == "0000"
    assert session.counters["logins"] == 1 and len(tokens) == 1
    assert {sent.token for sent in platform.requests[1:]} == {session.token}


def test_a_new_month_logs_in_again() -> None:
    """The token lasts to the end of the natural month in the gateway's zone; a new month logs in first."""
    platform = Platform(start="2026-11-30 23:59:00")
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    november = session.token
    platform.clock.advance(at("2026-11-30 23:59:59") - platform.clock.seconds())
    assert session.token == november
    assert exchange_of(session.send("carIn", CAR_IN, "R2")).result_code == "0000"
    assert platform.codes() == ["login", "carIn", "carIn"]
    platform.clock.advance(2)  # 2026-12-01 00:00:01 in Asia/Shanghai, still November in UTC
    assert session.token == ""
    assert exchange_of(session.send("carIn", CAR_IN, "R3")).result_code == "0000"
    # A login before the request, not a 9000 first.
    assert platform.codes() == ["login", "carIn", "carIn", "login", "carIn"]
    assert session.token not in ("", november) and session.counters["logins"] == 2


def test_a_9000_logs_in_again_and_sends_the_same_oprnum_once_more(platform: Platform) -> None:
    """When another login of the account took the token, the session logs in and sends the oprNum again."""
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    taken = session.token
    platform.uplink.login()  # the same account logs in elsewhere: the session's token answers 9000 now
    exchange = exchange_of(session.send("carIn", CAR_IN, "R2"))
    assert exchange.result_code == "0000"
    assert platform.codes()[2:] == ["carIn", "login", "carIn"]
    retry, _, again = platform.requests[2:]
    assert retry.opr == again.opr == "R2"
    assert retry.token == taken and again.token == session.token != taken
    assert platform.accepted() == [("P001", "R1"), ("P001", "R2")]
    assert session.counters["logins"] == 2


def test_a_refused_login_fails_fast_during_its_backoff(platform: Platform) -> None:
    """A login answered 9003 fails LoginRefused; for 1 s (then 2 s, ...) sends fail without a request."""
    session = platform.session(password="wrong-password")
    refusal = failure_of(session.send("carIn", CAR_IN, "R1"))
    assert refusal.check(LoginRefused) and "9003" in refusal.getErrorMessage()
    assert "9003" in session.login_problem
    assert platform.codes() == ["login"]
    platform.clock.advance(0.5)
    fast = failure_of(session.send("carIn", CAR_IN, "R1"))
    assert fast.check(LoginRefused) and "next login in" in fast.getErrorMessage()
    assert platform.codes() == ["login"]
    platform.clock.advance(0.5)  # the backoff is over: the session tries again, and is refused again
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(LoginRefused)
    assert platform.codes() == ["login", "login"]
    platform.clock.advance(1.5)  # the backoff doubled to 2 s
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(LoginRefused)
    assert platform.codes() == ["login", "login"]
    platform.reconfigure([lot_entry(password=cheap_hash("wrong-password"))])
    platform.clock.advance(0.5)
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    assert platform.codes() == ["login", "login", "login", "carIn"]
    assert session.login_problem == "" and session.counters["login_failures"] == 2


def test_an_unreachable_platform_is_a_refused_login_too(platform: Platform) -> None:
    """A login that cannot reach the platform fails LoginRefused naming why, and backs off like a refusal."""
    platform.fault = refused()
    session = platform.session()
    refusal = failure_of(session.send("carIn", CAR_IN, "R1"))
    assert refusal.check(LoginRefused) and "refused" in refusal.getErrorMessage().lower()
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(LoginRefused)
    assert platform.codes() == ["login"]


# the repeat rule (B.2.3.6)

# A protocol answer that says nothing against the request: it counts as an attempt.
BUSY = b'{"code":"carIn","oprNum":"","resultCode":"9999","resultMessage":"busy","data":{}}'


def test_the_repeat_rule_holds_the_seventh_attempt_within_an_hour(platform: Platform) -> None:
    """Six attempts of one oprNum an hour are allowed; the seventh fails RepeatLimit till the hour is over."""
    journal = MemoryJournal(platform.clock)
    session = platform.session(journal=journal)
    platform.fault = answering(200, BUSY, code="carIn")
    first = platform.clock.seconds()
    for _ in range(6):
        assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "9999"
        platform.clock.advance(60)
    held = failure_of(session.send("carIn", CAR_IN, "R1"))
    assert held.check(RepeatLimit)
    limit = held.value
    assert isinstance(limit, RepeatLimit)
    assert limit.until == first + 3600 and limit.attempts == 6 and limit.opr == "R1"
    assert utc_rfc3339(first + 3600) in str(limit)
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(RepeatLimit)
    assert platform.sent("R1") == 6
    [record] = journal.records  # one record per hold, however often it is asked
    assert record.kind == HELD_RECORD and record.park == "P001" and record.code == "carIn"
    assert record.opr == "R1" and record.body == {"attempts": 6, "until": utc_rfc3339(first + 3600)}
    assert session.counters["held"] == 1
    # Another oprNum is not held.
    assert exchange_of(session.send("carIn", CAR_IN, "R2")).result_code == "9999"
    platform.clock.advance(first + 3600 - platform.clock.seconds() - 0.001)
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(RepeatLimit)
    platform.clock.advance(0.001)  # the first attempt is an hour old: one more may go
    platform.fault = lambda sent: None
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    assert platform.sent("R1") == 7 and len(journal.records) == 1


def test_attempts_refused_a_connection_do_not_count(platform: Platform) -> None:
    """A request whose connection was refused never reached the platform: it is no repeat."""
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R0")).result_code == "0000"  # logged in
    platform.fault = refused()
    for _ in range(10):
        assert failure_of(session.send("carIn", CAR_IN, "R1")).check(ConnectionRefusedError)
    platform.fault = answering(200, BUSY)
    for _ in range(6):
        assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "9999"
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(RepeatLimit)
    assert platform.sent("R1") == 16


def test_http_5xx_408_and_429_answers_do_not_count(platform: Platform) -> None:
    """A request answered HTTP 503, 408 or 429 got no answer of the protocol: it is no repeat either."""
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R0")).result_code == "0000"
    for status in (503, 408, 429, 500, 502) * 3:
        platform.fault = answering(status, b"busy", code="carIn")
        assert exchange_of(session.send("carIn", CAR_IN, "R1")).status == status
    platform.fault = lambda sent: None
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    assert platform.sent("R1") == 16


def test_an_attempt_without_an_answer_times_out_and_counts(platform: Platform) -> None:
    """A request unanswered within the timeout fails (TimeoutError) and counts: it may have arrived."""
    session = platform.session()
    assert exchange_of(session.send("carIn", CAR_IN, "R0")).result_code == "0000"
    platform.fault = lambda sent: Deferred()
    for _ in range(6):
        waiting = session.send("carIn", CAR_IN, "R1")
        platform.clock.advance(TIMEOUT - 0.001)
        assert not fired(waiting)
        platform.clock.advance(0.001)
        assert failure_of(waiting).check(DeferredTimeout)
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(RepeatLimit)


def test_finished_forgets_the_attempts(platform: Platform) -> None:
    """After `finished(opr)` the oprNum's attempts are forgotten: it may be sent again at once."""
    session = platform.session()
    platform.fault = answering(200, BUSY, code="carIn")
    for _ in range(6):
        assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "9999"
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(RepeatLimit)
    session.finished("R1")
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "9999"
    assert platform.sent("R1") == 7


# tokens


def test_token_invalid_clears_the_token_and_logs_in_again(platform: Platform) -> None:
    """A 9000 on TCP for the token in force makes the session log in at once; listeners hear of each token."""
    session = platform.session()
    tokens: list[str] = []
    session.listeners.append(lambda: tokens.append(session.token))
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
    old = session.token
    session.token_invalid("f" * 32)  # not the token in force: nothing happens
    assert session.token == old and platform.codes() == ["login", "carIn"]
    session.token_invalid(old)
    assert platform.codes() == ["login", "carIn", "login"]
    assert session.token not in ("", old) and tokens == [old, session.token]
    # The new token is the platform's: the next request goes without a 9000.
    assert exchange_of(session.send("carIn", CAR_IN, "R2")).result_code == "0000"
    assert platform.codes()[3:] == ["carIn"]


def test_token_invalid_waits_out_a_login_backoff(platform: Platform) -> None:
    """A 9000 on TCP during a login backoff does not log in before the backoff is over."""
    session = platform.session(password="wrong-password")
    assert failure_of(session.send("carIn", CAR_IN, "R1")).check(LoginRefused)
    session.token_invalid("")
    assert platform.codes() == ["login"]
    platform.clock.advance(1)
    session.token_invalid("")
    assert platform.codes() == ["login", "login"]


def test_a_failing_listener_does_not_fail_the_login(platform: Platform) -> None:
    """A token listener that raises is logged; the login and the request still succeed."""
    session = platform.session()

    def broken() -> None:
        raise RuntimeError("listener broke")

    session.listeners.append(broken)
    assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"


def test_the_password_never_appears_in_the_journal_or_the_log(platform: Platform) -> None:
    """Neither the session's journal records nor its log events carry the upstream password."""
    journal = MemoryJournal(platform.clock)
    session = platform.session(journal=journal)
    assert PASSWORD not in repr(session.account)
    with captured() as events:
        assert exchange_of(session.send("carIn", CAR_IN, "R1")).result_code == "0000"
        platform.fault = answering(200, BUSY, code="carIn")
        for _ in range(7):
            session.send("carIn", CAR_IN, "R2").addErrback(lambda _: None)
        platform.reconfigure([lot_entry(password=cheap_hash("another"))])
        session.token_invalid(session.token)
        assert "9003" in session.login_problem
    assert [record.kind for record in journal.records] == [HELD_RECORD]
    assert PASSWORD not in json.dumps([record.body for record in journal.records], ensure_ascii=False)
    assert events and any(event.get("event") == "upstream.login-refused" for event in events)
    for event in events:
        assert PASSWORD not in repr(event)


def test_a_caller_giving_up_does_not_cancel_the_shared_login(platform: Platform) -> None:
    """A caller that stops waiting (a query's deadline) leaves the login going on for the others."""
    session = platform.session()
    platform.hold = True
    query = session.send("autoPay", compact({"recordCode": "R9"}), "Q1")  # starts the login
    forwarded = session.send("carIn", CAR_IN, "R1")  # waits for it
    query.cancel()
    settled(query)
    platform.release()  # the platform answers the login
    platform.release()  # and the request
    outcome = settled(forwarded)
    assert session.counters["login_failures"] == 0 and session.login_problem == ""
    assert isinstance(outcome, Exchange) and outcome.result_code == "0000"

"""Asking the cloud to answer autoPay queries (gateway.cloud.query), in memory with StubTreq and a Clock."""

from __future__ import annotations

import json
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from attrs import define
from nacl.signing import SigningKey
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail
from twisted.internet.task import Clock
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from gateway.cloud.events import EVENT_CONTENT_TYPE
from gateway.cloud.httpsig import parse_signature_input, verify_request
from gateway.cloud.query import QueryAnswer, QueryClient
from gateway.journal.record import Record

SHANGHAI = ZoneInfo("Asia/Shanghai")
GATEWAY = "gw-01"
URL = "https://cloud.example/v1/query"
KEY = SigningKey(bytes(range(32)))
NOW = 1_795_000_000.0
ANSWER = {"payStatus": 1, "orderCode": "O-1", "actualPay": 12.5, "failReason": 0}
ANSWER_BODY = json.dumps(ANSWER).encode()


def query_record(seq: int = 42, opr: str = "Q-1") -> Record:
    return Record(
        seq=seq,
        ts="2026-11-24T02:00:00.000001Z",
        kind="query",
        park="P001",
        code="autoPay",
        opr=opr,
        body={"recordCode": "R1", "inTime": "2026-11-24 08:30:00", "payMoney": 12.5},
        chain="0" * 32,
    )


@define
class Seen:
    """One request as the cloud received it."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class Cloud(Resource):
    """A cloud endpoint that records each request and answers `status` and `body`, or never (`hang`).

    With `partial`, a hanging answer writes those bytes first: the headers are out, the body never ends.
    """

    isLeaf = True

    def __init__(
        self,
        status: int = 200,
        body: bytes = json.dumps(ANSWER).encode(),
        hang: bool = False,
        partial: bytes = b"",
    ) -> None:
        super().__init__()
        self.status = status
        self.body = body
        self.hang = hang
        self.partial = partial
        self.seen: list[Seen] = []

    def render_POST(self, request: Request) -> bytes | int:
        host = (request.getHeader("host") or "").strip()
        scheme = "https" if request.isSecure() else "http"
        self.seen.append(
            Seen(
                method=request.method.decode(),
                url=f"{scheme}://{host}{request.uri.decode()}",
                headers={k.decode(): v[0].decode() for k, v in request.requestHeaders.getAllRawHeaders()},
                body=request.content.read(),
            )
        )
        request.setResponseCode(self.status)
        if self.hang:
            if self.partial:
                request.write(self.partial)
            return NOT_DONE_YET
        request.setHeader("content-type", "application/json")
        return self.body


class Asker:
    """A QueryClient on a StubTreq'd cloud and a Clock, with the answers it gave."""

    def __init__(self, cloud: Cloud | None = None, **options: Any) -> None:
        self.cloud = cloud if cloud is not None else Cloud()
        self.clock = Clock()
        self.clock.advance(NOW)
        self.http = StubTreq(self.cloud)
        self.client = QueryClient(
            http=self.http,
            clock=self.clock,
            url=URL,
            gateway_id=GATEWAY,
            zone=SHANGHAI,
            signing_key=KEY,
            **options,
        )

    def ask(self, record: Record | None = None) -> Deferred[QueryAnswer]:
        deferred = self.client.ask(record if record is not None else query_record())
        self.http.flush()
        return deferred


def answered(deferred: Deferred[QueryAnswer]) -> bool:
    """Whether `ask`'s Deferred has a result now (not merely waiting on another)."""
    results: list[object] = []
    deferred.addBoth(lambda result: results.append(result) or result)
    return bool(results)


def answer_of(deferred: Deferred[QueryAnswer]) -> QueryAnswer:
    """The answer a Deferred from `ask` has already fired with; failing if it errbacked or is pending."""
    results: list[object] = []
    deferred.addBoth(results.append)
    assert results, "ask has not answered yet"
    (result,) = results
    assert isinstance(result, QueryAnswer), result
    return result


def test_a_2xx_json_object_is_the_answer_data() -> None:
    """A 2xx answer with a JSON object gives 0000 with that object as data, and leaves no timer running."""
    asker = Asker()
    answer = answer_of(asker.ask())
    assert answer == QueryAnswer("0000", "", ANSWER)
    assert asker.clock.getDelayedCalls() == []


def test_the_request_is_the_structured_event_of_the_record() -> None:
    """One POST to query_url carries the record's CloudEvent (id gateway-seq), typed cloudevents+json."""
    asker = Asker()
    answer_of(asker.ask(query_record(seq=42, opr="Q-7")))
    (seen,) = asker.cloud.seen
    assert seen.method == "POST" and seen.url == URL
    assert seen.headers["Content-Type"] == EVENT_CONTENT_TYPE
    event = json.loads(seen.body)
    assert event["specversion"] == "1.0"
    assert event["id"] == "gw-01-42"
    assert event["type"] == "org.cpmi.t002.autoPay.v1"
    assert event["source"] == "urn:cpmi:park:P001"
    assert event["cpmioprnum"] == "Q-7"
    assert event["data"] == {"recordCode": "R1", "inTime": "2026-11-24T08:30:00+08:00", "payMoney": 12.5}


def test_the_request_is_signed_by_the_gateway_key() -> None:
    """The request's RFC 9421 signature verifies with the gateway's public key, created from the clock."""
    asker = Asker()
    answer_of(asker.ask())
    (seen,) = asker.cloud.seen
    assert verify_request(seen.method, seen.url, seen.body, seen.headers, KEY.verify_key)
    params = parse_signature_input(seen.headers["Signature-Input"])
    assert params is not None and params.keyid == GATEWAY and params.created == int(NOW)
    other = SigningKey(bytes(range(1, 33))).verify_key
    assert not verify_request(seen.method, seen.url, seen.body, seen.headers, other)
    assert not verify_request(seen.method, seen.url, seen.body + b" ", seen.headers, KEY.verify_key)


def test_an_answer_is_normalised_by_the_catalog() -> None:
    """Numbers the cloud writes as strings come back as numbers, as the lot's fields are typed."""
    asker = Asker(Cloud(body=b'{"payStatus":"1","balancePay":"5.5","extra":"kept"}'))
    answer = answer_of(asker.ask())
    assert answer == QueryAnswer("0000", "", {"payStatus": 1, "balancePay": 5.5, "extra": "kept"})


def test_no_answer_within_the_deadline_is_9999() -> None:
    """A cloud silent past autoPay's 1 s deadline gives 9999 "within 1 s", and no timer is left."""
    asker = Asker(Cloud(hang=True))
    deferred = asker.ask()
    asker.clock.advance(0.999)
    assert not answered(deferred)
    asker.clock.advance(0.001)
    answer = answer_of(deferred)
    assert answer.result_code == "9999"
    assert answer.message == "cloud did not answer within 1 s"
    assert answer.data is None
    assert asker.clock.getDelayedCalls() == []


def test_a_body_still_arriving_at_the_deadline_is_9999() -> None:
    """The deadline covers reading the body too: headers out, body unfinished, gives 9999 too."""
    asker = Asker(Cloud(hang=True, partial=b'{"payStatus":'))
    deferred = asker.ask()
    assert not answered(deferred)
    asker.clock.advance(1.0)
    assert answer_of(deferred).message == "cloud did not answer within 1 s"


def test_a_configured_deadline_overrides_the_catalog() -> None:
    """With deadlines {"autoPay": 2.5} the cloud has 2.5 s, and the message says so."""
    asker = Asker(Cloud(hang=True), deadlines={"autoPay": 2.5})
    assert asker.client.deadline("autoPay") == 2.5
    deferred = asker.ask()
    asker.clock.advance(2.4)
    assert not answered(deferred)
    asker.clock.advance(0.1)
    assert answer_of(deferred) == QueryAnswer("9999", "cloud did not answer within 2.5 s", None)


def test_a_deadline_must_be_positive() -> None:
    """A zero or negative deadline override is refused when the client is built."""
    with pytest.raises(ValueError, match="autoPay"):
        Asker(deadlines={"autoPay": 0})


def test_a_non_2xx_status_is_9999_naming_it() -> None:
    """An HTTP 503 from the cloud gives 9999 "cloud answered HTTP 503", whatever the body."""
    asker = Asker(Cloud(status=503, body=b'{"payStatus":1}'))
    assert answer_of(asker.ask()) == QueryAnswer("9999", "cloud answered HTTP 503", None)


def test_a_body_that_is_not_json_is_9999() -> None:
    """A 2xx answer whose body is not JSON gives 9999 "not a JSON object"."""
    asker = Asker(Cloud(body=b"<html>OK</html>"))
    assert answer_of(asker.ask()) == QueryAnswer("9999", "cloud answer is not a JSON object", None)


@pytest.mark.parametrize("body", [b'[{"payStatus":1}]', b'"paid"', b"", b'{"payStatus":NaN}', b"\xff{}"])
def test_a_json_value_other_than_an_object_is_9999(body: bytes) -> None:
    """A JSON array, a string, an empty body, NaN or bytes that are not UTF-8 are not an answer object."""
    asker = Asker(Cloud(body=body))
    assert answer_of(asker.ask()) == QueryAnswer("9999", "cloud answer is not a JSON object", None)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"payStatus": 7}, "cloud answer: data.payStatus: not one of 0, 1, 2: 7"),
        ({"payStatus": "paid"}, "cloud answer: data.payStatus: not an integer: 'paid'"),
        ({"discountDetail": "none"}, "cloud answer: data.discountDetail: must be a list, not a string"),
    ],
)
def test_an_answer_with_a_bad_field_is_9999_naming_it(body: dict[str, object], message: str) -> None:
    """An answer field outside autoPay's catalog type or enumeration gives 9999 naming the field."""
    asker = Asker(Cloud(body=json.dumps(body).encode()))
    assert answer_of(asker.ask()) == QueryAnswer("9999", message, None)


def test_an_answer_larger_than_the_cap_is_9999() -> None:
    """A body beyond max_answer_bytes is not read to the end: 9999 "larger than"."""
    big = json.dumps({"payStatus": 1, "padding": "x" * 200}).encode()
    asker = Asker(Cloud(body=big), max_answer_bytes=64)
    assert answer_of(asker.ask()) == QueryAnswer("9999", "cloud answer larger than 64 bytes", None)
    exact = Asker(Cloud(body=big), max_answer_bytes=len(big))
    assert answer_of(exact.ask()).result_code == "0000"


@define
class RefusingHTTP:
    """An HTTP client whose every request fails like a connection refused."""

    error: Exception
    requests: int = 0

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        self.requests += 1
        return fail(self.error)


@pytest.mark.parametrize(
    ("error", "message"),
    [
        (ConnectionRefusedError(), "cloud unreachable: ConnectionRefusedError"),
        (OSError("network is unreachable"), "cloud unreachable: network is unreachable"),
    ],
)
def test_a_network_error_is_9999_cloud_unreachable(error: Exception, message: str) -> None:
    """A request that fails before any answer gives 9999 "cloud unreachable: <reason>"; no timer is left."""
    clock = Clock()
    http = RefusingHTTP(error)
    client = QueryClient(http=http, clock=clock, url=URL, gateway_id=GATEWAY, zone=SHANGHAI, signing_key=KEY)
    assert answer_of(client.ask(query_record())) == QueryAnswer("9999", message, None)
    assert http.requests == 1
    assert clock.getDelayedCalls() == []


def test_a_record_that_cannot_be_sent_is_9999() -> None:
    """A record that is not a query (a bug upstream) is answered 9999 rather than raising; nothing is sent."""
    asker = Asker()
    record = Record(
        seq=1,
        ts="2026-11-24T02:00:00Z",
        kind="uplink",
        park="P001",
        code="autoPay",
        opr="Q",
        body={},
        chain="",
    )
    answer = answer_of(asker.ask(record))
    assert answer.result_code == "9999" and "cannot send" in answer.message
    assert asker.cloud.seen == []


@pytest.mark.parametrize(
    "cloud",
    [
        Cloud(),
        Cloud(status=500, body=b"oops"),
        Cloud(body=b"[]"),
        Cloud(body=b'{"payStatus":"x"}'),
    ],
)
def test_ask_never_errbacks(cloud: Cloud) -> None:
    """Whatever the cloud does, ask fires with a QueryAnswer (never a Failure), late or not."""
    for hang in (False, True):
        cloud.hang = hang
        asker = Asker(cloud)
        deferred = asker.ask()
        asker.clock.advance(5)
        assert isinstance(answer_of(deferred), QueryAnswer)

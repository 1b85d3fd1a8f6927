"""What the gateway decides for each uplink request (B.2, B.4-B.9 of the standard).

The HTTP resource turns a request into text and file parts; `UplinkHandler`
decides the answer: envelope, interface, token, signature, repeats, fields,
business rules, then the journal. Nothing is answered `0000` before its record
is durable.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from attrs import evolve, frozen
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.interfaces import JournalAppend
from gateway.journal.kinds import ANSWER_RECORD, QUERY_RECORD, UPLINK_RECORD
from gateway.journal.record import Record
from gateway.logs import lot_rejected
from gateway.lots.answers import OK, Answer
from gateway.lots.login import STANDARD, Checker, LoginOutcome, login, not_stored_answer
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import FAULT, TOO_MANY, Repeats
from gateway.lots.sessions import Sessions
from gateway.protocol.catalog import DeliveryClass, Interface, lookup
from gateway.protocol.envelope import EnvelopeError, Request, build_response, parse_request
from gateway.protocol.redact import may_hold_secrets, redact
from gateway.protocol.results import RESULT_OK, Result
from gateway.protocol.signing import signature_ok
from gateway.protocol.times import wire_time
from gateway.protocol.validation import FieldError, validate
from gateway.settings import Config, LotConfig

log = Logger()


@frozen
class FilePart:
    """A file sent beside `param` in a multipart request: an image for `carImage`."""

    name: str
    content: bytes


class Rejected(Exception):
    """A request answered with an error before anything was stored."""

    def __init__(self, answer: Answer) -> None:
        super().__init__(answer.message)
        self.answer = answer


def _reject(result: Result, detail: str = "") -> Rejected:
    return Rejected(Answer.of(result, detail))


class QueryOutcome(Protocol):
    """What answers a query: a `resultCode` ("0000" or "9999"), why, and the data (None: none)."""

    @property
    def result_code(self) -> str: ...

    @property
    def message(self) -> str: ...

    @property
    def data(self) -> object: ...


class Queries(Protocol):
    """Whoever answers `query` uplinks (autoPay): the cloud side's `QueryClient`."""

    # Deferred[Any], not Deferred[QueryOutcome]: Deferred is invariant, so a client
    # returning Deferred[its own answer class] would not match the protocol.
    def ask(self, record: Record) -> Deferred[Any]:
        """The answer (a QueryOutcome) to the durable `query` record `record`; never fails."""


@frozen
class _Unanswered:
    """The outcome of a query when no cloud is configured to answer it."""

    result_code: str
    message: str
    data: object = None


_NO_CLOUD = _Unanswered(Result.FAILED.code, "no cloud configured to answer this query")


class UplinkHandler:
    """Answers lots' uplink requests, storing what must be stored first."""

    def __init__(
        self,
        *,
        config: Config,
        journal: JournalAppend,
        sessions: Sessions,
        repeats: Repeats,
        totals: ParkTotals,
        passwords: Checker,
        clock: IReactorTime,
        queries: Queries | None = None,
        seen: Callable[[str], None] | None = None,
    ) -> None:
        self._config = config
        self.seen = seen
        """Told the park of each lot whose uplink proved it is the lot (a login, a signed request):
        the lot's "last seen" (`GET /v1/parks`) counts its HTTP uplinks too, not only its downlink."""
        self._journal = journal
        self._sessions = sessions
        self._repeats = repeats
        self._totals = totals
        self._passwords = passwords
        self._clock = clock
        self._queries = queries
        self._zone: ZoneInfo = config.gateway.timezone

    def reconfigure(self, config: Config) -> None:
        """Take the lots of a reloaded configuration: logins and requests from now on see `config`."""
        self._config = config

    def _lot_by_username(self, username: str) -> LotConfig | None:
        """The lot of the account in the running configuration (a reload may change it)."""
        return self._config.lot_by_username(username)

    def handle(
        self,
        text: str,
        url_code: str | None = None,
        files: Sequence[FilePart] = (),
        gone: Callable[[], bool] | None = None,
    ) -> Deferred[bytes]:
        """The response envelope, as bytes, for the request `text`.

        A fault inside the gateway is answered 9999 with the request's code and
        oprNum where they could be read (CONTRACT §4), never left to the HTTP layer.
        `gone` tells whether the client has left (a login's password check is
        then dropped before it runs).
        """
        try:
            request = parse_request(text)
        except EnvelopeError as error:
            return succeed(self.refused(error, url_code))
        except Exception:
            log.failure("parsing an uplink request failed inside the gateway")
            return succeed(self._render(url_code or "", "", FAULT))
        return self.handle_request(request, url_code, files, gone)

    def refused(self, error: EnvelopeError, url_code: str | None = None) -> bytes:
        """The answer to a text that is not a request envelope (`parse_request`'s error)."""
        return self._render(error.code or url_code or "", error.opr, Answer.of(error.result, error.detail))

    def handle_request(
        self,
        request: Request,
        url_code: str | None = None,
        files: Sequence[FilePart] = (),
        gone: Callable[[], bool] | None = None,
        data: Callable[[], object] | None = None,
    ) -> Deferred[bytes]:
        """`handle` for a request parsed already (by a worker process, for a big body).

        With `data`, `request.data` is a stand-in until `data()` gives it: it is
        called only once the request's interface and token show that the data
        is needed, so a refused request's data is never built.
        """
        try:
            answered = self._decide(request, url_code, files, gone, data)
        except Exception:
            answered = fail()
        return answered.addErrback(self._fault, request.code or url_code or "", request.opr)

    def _fault(self, failure: Failure, code: str, opr: str) -> bytes:
        log.failure("handling an uplink {code} request failed inside the gateway", failure, code=code)
        return self._render(code, opr, FAULT)

    def _decide(
        self,
        request: Request,
        url_code: str | None,
        files: Sequence[FilePart],
        gone: Callable[[], bool] | None,
        data: Callable[[], object] | None = None,
    ) -> Deferred[bytes]:
        try:
            interface = self._interface(request, url_code)
        except Rejected as rejected:
            return succeed(self._render(request.code or url_code or "", request.opr, rejected.answer))
        if interface.code == "login":
            return self._login(request if data is None else evolve(request, data=data()), gone)
        code = interface.code
        session = self._sessions.lookup(request.token)
        if session is None:
            answer = Answer.of(Result.TOKEN_INVALID, "token: unknown, replaced or expired")
            return succeed(self._render(code, request.opr, answer))
        lot = self._config.lot_by_username(session.username)
        if lot is None or lot.park_code != session.park:
            answer = Answer.of(Result.NO_SUCH_PARK, f"park {session.park!r} is no longer configured")
            return succeed(self._render(code, request.opr, answer, park=session.park))
        if data is not None:
            request = evolve(request, data=data())
        token, secret = request.token, lot.secret
        if not self._signature_ok(request, lot, heartbeat=code == "heartbeat"):
            # Not signed with the secret: whoever sent it proved nothing, and a signature over
            # the answer's data would sign a heartbeat that binds the lot's downlink.
            answer = Answer.of(Result.BAD_SIGNATURE, "signature: does not match data")
            return succeed(self._render(code, request.opr, answer, token, "", lot.park_code))
        if self.seen is not None:
            self.seen(lot.park_code)
        if code == "heartbeat":
            answer = Answer.of(Result.OK, data={"time": wire_time(self._clock.seconds(), self._zone)})
            return succeed(self._render(code, request.opr, answer, token, answer_secret(lot, request)))
        if not request.opr:
            answer = Answer.of(Result.MALFORMED, "oprNum: required")
            return succeed(self._render(code, request.opr, answer, token, secret, lot.park_code))
        park, opr = lot.park_code, request.opr
        repeated = self._repeats.seen(park, opr)
        if repeated is None:
            stored = self._repeats.attempt(park, opr, lambda: self._store(interface, lot, request, files))
            return stored.addCallback(lambda answer: self._render(code, opr, answer, token, secret, park))
        # The first answer was logged when it was given: only a refusal of the repeat itself is new.
        return repeated.addCallback(
            lambda answer: self._render(
                code, opr, answer, token, secret, park, log_refusal=answer is TOO_MANY
            )
        )

    def _interface(self, request: Request, url_code: str | None) -> Interface:
        code = request.code or url_code
        if not code:
            raise _reject(Result.MALFORMED, "code: required")
        interface = lookup(code)
        if url_code and request.code and lookup(url_code) is not interface:
            raise _reject(Result.MALFORMED, f"code: {request.code!r} differs from the URL's {url_code!r}")
        if interface is None or interface.uplink is None:
            raise _reject(Result.NO_SUCH_INTERFACE, f"code: {code!r} is not an uplink interface")
        return interface

    def _signature_ok(self, request: Request, lot: LotConfig, heartbeat: bool = False) -> bool:
        return signature_ok(
            lot.signature,
            request.signature,
            request.data_text,
            request.data,
            request.token,
            lot.secret,
            optional=heartbeat,
        )

    def _render(
        self,
        code: str,
        opr: str,
        answer: Answer,
        token: str = "",
        secret: str = "",
        park: str = "",
        log_refusal: bool = True,
    ) -> bytes:
        """The response envelope; an answer other than 0000 is logged here (lot.rejected), unless
        `log_refusal` is false: a repeat's answer was logged when it was first given."""
        if answer.result is not RESULT_OK and log_refusal:
            lot_rejected(
                log,
                park=park,
                code=code,
                result=answer.result.code,
                reason=answer.message,
                dialect=STANDARD,
                via="http",
            )
        return build_response(code, opr, answer.result, answer.message, answer.data, token, secret)

    # login (B.4.1)

    def _login(self, request: Request, gone: Callable[[], bool] | None) -> Deferred[bytes]:
        outcome = login(
            request,
            config=self._config,
            sessions=self._sessions,
            passwords=self._passwords,
            journal=self._journal,
            via="HTTP",
            configured=self._lot_by_username,
            gone=gone,
        )
        return outcome.addCallback(self._login_render, request)

    def _login_render(self, outcome: LoginOutcome, request: Request) -> bytes:
        # A client gone before its check is not answered, nor logged: a flood must not fill the log.
        lot, answer, logged = outcome.lot, outcome.answer, not outcome.gone
        if lot is None:
            return self._render("login", request.opr, answer, log_refusal=logged)
        if self.seen is not None and answer.result is Result.OK:
            self.seen(lot.park_code)
        return self._render("login", request.opr, answer, "", lot.secret, lot.park_code, logged)

    # reports and queries

    def _store(
        self, interface: Interface, lot: LotConfig, request: Request, files: Sequence[FilePart]
    ) -> Deferred[tuple[Answer, bool]]:
        """The answer to a request to store, and whether it was stored (for the repeat rule)."""
        park, opr, code = lot.park_code, request.opr, interface.code
        try:
            data = self._checked_data(interface, lot, request, files)
        except Rejected as rejected:
            return succeed((rejected.answer, False))
        if interface.uplink is DeliveryClass.QUERY:
            stored = self._query(interface, park, opr, data)
        else:
            stored = self._journal.append(UPLINK_RECORD, park, code, opr, data).addCallback(
                self._reported, code, park, data
            )

        def done(answer: Answer) -> tuple[Answer, bool]:
            return answer, answer.result is not Result.FAILED

        return stored.addErrback(not_stored_answer).addCallback(done)

    def _reported(self, _: object, code: str, park: str, data: object) -> Answer:
        if code == "parkEnv":
            self._totals.observe(park, data)
        return OK

    def _query(self, interface: Interface, park: str, opr: str, data: object) -> Deferred[Answer]:
        # A query is stored before the cloud is asked, so a failure to store it reaches
        # `_store`'s errback (the not-stored 9999) and the cloud never sees the query.
        code = interface.code
        stored = self._journal.append(QUERY_RECORD, park, code, opr, data)
        asked = stored.addCallback(self._ask)
        return asked.addCallback(self._answered, park, code, opr)

    def _ask(self, record: Record) -> Deferred[Any]:
        if self._queries is None:
            # No cloud is configured in the log-only sink, so a query cannot be answered.
            return succeed(_NO_CLOUD)
        return self._queries.ask(record)

    def _answered(self, outcome: QueryOutcome, park: str, code: str, opr: str) -> Deferred[Answer]:
        result = Result.from_code(outcome.result_code) or Result.FAILED
        has_data = outcome.data is not None and outcome.data != {}
        answer = Answer.of(result, outcome.message, outcome.data if has_data else None)
        body: dict[str, object] = {"resultCode": answer.result.code, "resultMessage": answer.message}
        if has_data:
            body["data"] = answer.data
        stored = self._journal.append(ANSWER_RECORD, park, code, opr, body)
        # An answer the journal cannot keep could not be given again to a repeat or after
        # a restart, so the lot is told the not-stored 9999, even when the cloud said 0000.
        return stored.addCallbacks(lambda _: answer, not_stored_answer)

    def _checked_data(
        self, interface: Interface, lot: LotConfig, request: Request, files: Sequence[FilePart]
    ) -> object:
        data = request.data
        if data is None or data == {} or data == [] or data == "":
            raise _reject(Result.EMPTY_BODY, "data: must not be empty")
        try:
            data = validate(interface.request, data)
        except FieldError as error:
            raise _reject(Result.FIELD_INVALID, error.message()) from None
        items = data if isinstance(data, list) else [data]
        for index, item in enumerate(items):
            where = f"data[{index}]" if isinstance(data, list) else "data"
            park_code = item.get("parkCode")
            if park_code not in (None, "", lot.park_code):
                raise _reject(
                    Result.NO_SUCH_PARK,
                    f"{where}.parkCode: {park_code!r} is not this account's park",
                )
            check_business_rules(interface.code, lot.park_code, item, where, self._totals)
        if interface.code == "carImage":
            data = attach_images(data, files)
        return redact(data) if may_hold_secrets(request.data_text) else data


def answer_secret(lot: LotConfig, request: Request) -> str:
    """The secret to sign the answer to an accepted `request` with.

    A lot whose signature is required sends a heartbeat unsigned (the standard's
    heartbeat has no signature, B.4.8) and it is answered, but not with the
    secret: the token travels in clear, and an answer signed over `{"time": ...}`
    would be a signed heartbeat anyone holding the token could bind the lot's
    downlink with (CONTRACT §5). Every other request accepted was signed.
    """
    if lot.signature == "required" and not request.signature:
        return ""
    return lot.secret


def check_business_rules(
    code: str,
    park: str,
    item: Mapping[str, Any],
    where: str,
    totals: ParkTotals,
    name: Callable[[str], str] = str,
) -> None:
    """Raise Rejected when one item of a report breaks a rule of B.4 (counts of parkEnv, freeSpace).

    `where` names the item in the message ("data", "data[2]"); `name` writes a
    field's name in the message (a dialect adds the legacy field it came from).
    """
    if code == "parkEnv":
        total = item.get("totalNum")
        if not isinstance(total, int) or total <= 0:
            raise _reject(Result.NO_SPACES, f"{where}.{name('totalNum')}: {total!r}")
    elif code == "freeSpace":
        empty = item.get("emptyNum")
        if isinstance(empty, int) and empty < 0:
            raise _reject(Result.FIELD_INVALID, f"{where}.{name('emptyNum')}: negative")
        total = totals.total(park)
        if isinstance(empty, int) and total is not None and empty > total:
            raise _reject(Result.TOO_MANY_FREE, f"{where}.{name('emptyNum')}: {empty} > totalNum {total}")


def attach_images(data: object, files: Sequence[FilePart]) -> object:
    """Put the images sent as file parts into their `carImage` entries, as base64.

    A part named like an entry's `imageCode` goes to that entry; the other parts
    go, in order, to the entries that carry no `imageBase64`. Every entry must
    end with exactly one image and every part must find an entry (9201).
    """
    entries = data if isinstance(data, list) else [data]
    items = [dict(item) for item in entries if isinstance(item, dict)]
    remaining = list(files)
    for item in items:
        code = item.get("imageCode")
        for part in remaining:
            if code and part.name == code:
                if item.get("imageBase64"):
                    raise _reject(Result.IMAGE_MISMATCH, f"imageCode {code!r}: two images")
                item["imageBase64"] = base64.b64encode(part.content).decode("ascii")
                remaining.remove(part)
                break
    for item in items:
        if not item.get("imageBase64"):
            if not remaining:
                raise _reject(
                    Result.IMAGE_MISMATCH,
                    f"{len(items)} image descriptions but fewer images",
                )
            item["imageBase64"] = base64.b64encode(remaining.pop(0).content).decode("ascii")
    if remaining:
        raise _reject(Result.IMAGE_MISMATCH, f"{len(items)} image descriptions but {len(files)} files")
    if not files and not isinstance(data, list):
        return data
    return items if isinstance(data, list) else items[0]

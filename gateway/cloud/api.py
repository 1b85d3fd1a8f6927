"""The command API (CONTRACT §6): the cloud's way down to the lots, plus health and metrics.

`POST /v1/parks/{parkCode}/commands/{code}` journals a `command` record, waits for
it to be durable, then asks the lot through `LotCommands`; the lot's REPLY is the
answer. A command is never queued: a lot that is not connected is refused at once
(409, 9008) and one that does not reply in time times out (504, 9009). Every outcome
is journaled as a `command-reply` record. A sync-class code is handed to the sync
queue (`gateway.lots.sync`): `202 {"seq": N}` once its `sync` record is durable.

Authentication is `Authorization: Bearer T`: `cloud.api_token` has every role; an
`[[api_client]]` is matched by the SHA-256 of T and has its own roles. `/healthz`,
`/readyz` and `/metrics` need no token: probes and Prometheus scrapers rarely send one.
A token they are sent must be valid all the same (401 otherwise, CONTRACT §6): a
scraper with a wrong or revoked token hears of it.
Nor does the status page (`GET /` and its script and style sheet): it holds no data and
fetches `GET /v1/status` (role `read`) with the token a person types in.
`POST /v1/admin/reload` (role `admin`) reloads the configuration.

`CommandPath` is the one way a command goes down, whoever asks: this API or a
NATS request (`gateway.cluster.commands`, CONTRACT §9). It checks the code and the
data, journals the command, asks the lot (or, for a lot this gateway does not hold
and with `[cluster]` on, the gateway that does, through `RemoteCommands`) and
journals the outcome; each asker only renders the `CommandAnswer` its own way.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import json
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol, TypeVar

from attrs import frozen
from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from twisted.internet.defer import CancelledError, Deferred, TimeoutError, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource

from gateway.cloud.openapi import openapi_document
from gateway.cloud.status import PageAsset, StatusReport, page_assets, rfc3339
from gateway.interfaces import (
    DeadlinePassed,
    JournalAppend,
    LotCommands,
    LotReply,
    LotState,
    NatsState,
    NotConnected,
)
from gateway.journal.kinds import COMMAND_RECORD, COMMAND_REPLY_RECORD
from gateway.protocol.catalog import DeliveryClass, Interface, deadline_of, lookup
from gateway.protocol.jsontext import JSONRefused, loads
from gateway.protocol.results import Result
from gateway.protocol.schema import interface_schema
from gateway.protocol.validation import FieldError, validate
from gateway.settings import Config

__all__ = [
    "ALL_ROLES",
    "CLOUD_CLIENT",
    "Caller",
    "CommandAnswer",
    "CommandApi",
    "CommandPath",
    "CommandRefused",
    "ReloadOutcome",
    "RemoteCommands",
    "SyncEntries",
]

log = Logger()

JSON_TYPE = b"application/json; charset=utf-8"
CLOUD_CLIENT = "cloud"
ALL_ROLES = frozenset({"read", "command", "sync", "admin"})
# How long past an interface's deadline the API waits on the downlink before it
# answers 504 itself: the downlink owns deadlines, this only stops a request
# from hanging if it never answers.
DEADLINE_GRACE = 5.0
COMMAND_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 600.0)
# The status page loads only its own script and style sheet, and talks only to this API.
PAGE_POLICY = (
    b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    b"base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)

_T = TypeVar("_T")


class SyncEntries(Protocol):
    """The sync queue as the API sees it (`gateway.lots.sync.SyncQueue`)."""

    def enqueue(self, park: str, code: str, data: object, client: str) -> Deferred[int]:
        """Journal a sync entry; fires with its seq once durable."""

    def pending(self, park: str) -> int:
        """How many entries are still to deliver to the lot."""


class ReloadOutcome(Protocol):
    """What a configuration reload tells the API: whether it took, and what to answer."""

    @property
    def ok(self) -> bool:
        """Whether the new configuration is in force."""

    def as_json(self) -> dict[str, object]:
        """The answer's body; a refused reload's has an `error` line."""


@frozen
class Caller:
    """Who sent a request: an `[[api_client]]` name (or "cloud") and the roles it holds."""

    name: str
    roles: frozenset[str]

    def may(self, role: str) -> bool:
        """Whether the caller holds `role` (`admin` holds them all)."""
        return role in self.roles or "admin" in self.roles


class CommandRefused(Exception):
    """A request refused before any work: the HTTP status and the JSON body to answer.

    `result` is the result code the refusal is, for an asker that answers with
    one (a NATS request): 9001 unknown code, 9002 not JSON, 9010 a bad field.
    """

    def __init__(
        self,
        status: int,
        body: dict[str, object],
        challenge: bytes | None = None,
        result: Result = Result.FAILED,
    ) -> None:
        super().__init__(status, body)
        self.status = status
        self.body = body
        self.challenge = challenge
        self.result = result

    def reply(self) -> dict[str, object]:
        """The refusal as a command reply: `{"resultCode","resultMessage","data"}`."""
        return {
            "resultCode": self.result.code,
            "resultMessage": self.result.message(str(self.body.get("error", ""))),
            "data": None,
        }


_Refusal = CommandRefused


def _error(status: int, message: str, result: Result = Result.FAILED) -> CommandRefused:
    return CommandRefused(status, {"error": message}, result=result)


@frozen
class CommandAnswer:
    """What became of a command: the HTTP status and body the API answers, and its outcome label."""

    status: int
    body: dict[str, object]
    outcome: str

    def reply(self) -> dict[str, object]:
        """The answer as a command reply (`{"resultCode","resultMessage","data"}`, CONTRACT §9)."""
        body = self.body
        if "resultCode" in body:
            return {
                "resultCode": body["resultCode"],
                "resultMessage": body.get("resultMessage", ""),
                "data": body.get("data"),
            }
        return {
            "resultCode": Result.FAILED.code,
            "resultMessage": Result.FAILED.message(str(body.get("error", ""))),
            "data": None,
        }


# The HTTP status a command reply from another gateway stands for, by its result code.
_REPLY_STATUS = {
    Result.NOT_CONNECTED.code: 409,
    Result.DEADLINE.code: 504,
}


def answer_of_reply(reply: Mapping[str, object], status: int | None = None) -> CommandAnswer:
    """A command reply another gateway gave (over NATS) as this API's answer.

    `status` is the HTTP status the answering gateway gave it, when it said; else
    9008 is 409, 9009 is 504 and any other is the lot's reply, 200.
    """
    code = str(reply.get("resultCode", ""))
    body = {
        "resultCode": code,
        "resultMessage": str(reply.get("resultMessage", "")),
        "data": reply.get("data"),
    }
    if status is None:
        status = _REPLY_STATUS.get(code, 200)
    if status != 200:
        del body["data"]
    outcome = {200: "ok", 409: "not_connected", 504: "deadline"}.get(status, "error")
    return CommandAnswer(status, body, outcome)


class RemoteCommands(Protocol):
    """The gateways of the cluster as the command path sees them (`gateway.cluster.commands`)."""

    def ask(
        self, park: str, code: str, data: object, opr: str, client: str
    ) -> Deferred[tuple[int, dict[str, object]]]:
        """Ask the gateway holding `park`, sending `opr` along; fires with (HTTP status, reply).

        Fails with NotConnected when no gateway holds the lot (NATS: no
        responders, or NATS itself unreachable) and with DeadlinePassed when
        none answered in time.
        """


class CommandPath:
    """The one path of a command down to a lot, for the HTTP API and NATS requests alike.

    The asker authenticates and renders; this checks the code (`interface`), the
    lot's dialect (`supported`) and the data (`data`), raising `CommandRefused`,
    and `send` journals the command, asks the lot and journals the outcome.
    """

    def __init__(
        self,
        *,
        lots: LotCommands,
        journal: JournalAppend,
        clock: IReactorTime,
        registry: CollectorRegistry,
        config: Callable[[], Config],
        deadlines: Mapping[str, float] | None = None,
        status: StatusReport | None = None,
    ) -> None:
        self._lots = lots
        self._journal = journal
        self._clock = clock
        self._config = config
        self._deadlines = dict(deadlines or {})
        self._status = status
        self.remote: RemoteCommands | None = None
        """The other gateways (`[cluster]`): a lot not bound here is asked through them."""
        self._seconds = Histogram(
            "cpmi_command_seconds",
            "Time from a command's arrival on the API to its answer, by code and outcome.",
            ["code", "outcome"],
            registry=registry,
            buckets=COMMAND_BUCKETS,
        )

    # --- checks ---------------------------------------------------------

    def interface(self, code: str) -> Interface:
        """The downlink interface `code` names; else refused 400 (9001)."""
        interface = lookup(code)
        if interface is None:
            raise _error(400, f"unknown interface code {code!r}", Result.NO_SUCH_INTERFACE)
        if interface.downlink is None:
            raise _error(400, f"{interface.code} is not sent down to lots", Result.NO_SUCH_INTERFACE)
        return interface

    def supported(self, park: str, interface: Interface) -> None:
        """Refuse (400, 9001) a code the lot's dialect cannot carry."""
        if not self._lots.supports(park, interface.code):
            lot = self._config().lot_by_park(park)
            dialect = lot.dialect if lot is not None else "?"
            raise _error(
                400,
                f"park {park!r} speaks the {dialect} dialect, which has no {interface.code}",
                Result.NO_SUCH_INTERFACE,
            )

    def data(self, raw: bytes, interface: Interface) -> object:
        """The interface's `data` in `raw` (JSON), checked and normalised; else refused 400.

        9002 when it is not JSON, 9004 when it is not an object or a list, 9010
        naming the field the catalog refuses.
        """
        try:
            data = loads(raw, root="data")  # the rules the lots' JSON follows (CONTRACT §4)
        except JSONRefused as error:
            detail = error.detail
            raise _error(
                400, f"the body is not JSON: {detail}" if error.path == "" else detail, Result.MALFORMED
            ) from None
        if not isinstance(data, dict | list):
            raise _error(400, "the body must be a JSON object or a list of objects", Result.EMPTY_BODY)
        try:
            return validate(interface.request, data)
        except FieldError as error:
            raise _error(400, error.message(), Result.FIELD_INVALID) from None

    def request(
        self, park: str, code: str, raw: bytes, *, client: str, opr: str = "", via: str = ""
    ) -> Deferred[tuple[int, dict[str, object]]]:
        """A command that came as a NATS request: (HTTP status, reply); never fails.

        The same checks as the API's, each refusal a reply with its result code
        (CommandRefused.reply); then `send`, never relayed again (the request
        reached the gateway holding the lot).
        """
        try:
            if self._config().lot_by_park(park) is None:
                raise _error(404, f"park {park!r} is not configured", Result.NO_SUCH_PARK)
            if len(raw) > self._config().uplink.api_max_body_bytes:
                raise _error(413, "the body is too large", Result.MALFORMED)
            interface = self.interface(code)
            if interface.downlink is not DeliveryClass.COMMAND:
                raise _error(
                    400,
                    f"{interface.code} is a sync downlink: publish it to the sync stream",
                    Result.NO_SUCH_INTERFACE,
                )
            self.supported(park, interface)
            data = self.data(raw, interface)
        except CommandRefused as refused:
            return succeed((refused.status, refused.reply()))
        sent = self.send(client, park, interface, data, opr=opr, via=via, relay=False)
        return sent.addCallback(lambda answer: (answer.status, answer.reply()))

    # --- sending --------------------------------------------------------

    def send(
        self,
        client: str,
        park: str,
        interface: Interface,
        data: object,
        *,
        opr: str = "",
        via: str = "",
        relay: bool = True,
    ) -> Deferred[CommandAnswer]:
        """Journal the command, ask the lot, journal and return the outcome; never fails.

        With `remote` set and `relay`, a lot not bound here is asked through the
        gateway holding it, which journals the command and its reply; this gateway
        journals them only when no gateway answered (409, 504), the outcome being
        its own. `opr` is the oprNum to send as (a new one if empty); `via` names
        the gateway that relayed the command here, journaled beside the client.
        """
        if relay and self.remote is not None and not self._lots.state(park).connected:
            return self._relay(client, park, interface, data)
        code = interface.code
        opr = opr or uuid.uuid4().hex
        started = self._clock.seconds()
        command: dict[str, object] = {"client": client, "data": data}
        if via:
            command["via"] = via

        def unjournaled(failure: Failure) -> CommandAnswer:
            log.failure("command {code} for {park} not journaled; not sent", failure, code=code, park=park)
            return CommandAnswer(
                503, {"error": "the command could not be journaled; not sent"}, "journal_failed"
            )

        def ask(_: object) -> Deferred[CommandAnswer]:
            # Sent with the oprNum it was journaled under, so a reply matches its record (CONTRACT §7).
            asked = maybeDeferred(self._lots.command, park, code, data, opr)
            asked.addTimeout(deadline_of(code, self._deadlines) + DEADLINE_GRACE, self._clock)
            return asked.addCallbacks(_replied, self._failed, errbackArgs=(park, code)).addCallback(
                self._journaled, client, park, code, opr
            )

        durable = maybeDeferred(self._journal.append, COMMAND_RECORD, park, code, opr, command)
        return durable.addCallbacks(ask, unjournaled).addCallback(
            lambda answer: self._finish(started, code, answer)
        )

    def _relay(self, client: str, park: str, interface: Interface, data: object) -> Deferred[CommandAnswer]:
        remote = self.remote
        assert remote is not None
        code = interface.code
        opr = uuid.uuid4().hex
        started = self._clock.seconds()

        def unanswered(failure: Failure) -> Deferred[CommandAnswer]:
            # No gateway took the command: the caller's answer is this gateway's, so is the record.
            answer = self._failed(failure, park, code)
            command = {"client": client, "data": data, "via": "nats"}
            stored = maybeDeferred(self._journal.append, COMMAND_RECORD, park, code, opr, command)
            stored.addErrback(self._reply_not_journaled, park, code, opr)
            return stored.addCallback(lambda _: self._journaled(answer, client, park, code, opr))

        asked: Deferred[Any] = maybeDeferred(remote.ask, park, code, data, opr, client)
        asked.addCallbacks(lambda answer: answer_of_reply(answer[1], answer[0] or None), unanswered)
        return asked.addCallback(lambda answer: self._finish(started, code, answer))

    def _failed(self, failure: Failure, park: str, code: str) -> CommandAnswer:
        if failure.check(NotConnected):
            result, status, outcome = Result.NOT_CONNECTED, 409, "not_connected"
            detail = f"park {park} has no downlink connection"
        elif failure.check(DeadlinePassed, TimeoutError, CancelledError):
            result, status, outcome = Result.DEADLINE, 504, "deadline"
            detail = f"no reply from park {park} to {code} in time"
        else:
            log.failure("command {code} for {park} failed", failure, code=code, park=park)
            result, status, outcome = Result.FAILED, 500, "error"
            detail = "the gateway failed to send the command"
        return CommandAnswer(
            status, {"resultCode": result.code, "resultMessage": result.message(detail)}, outcome
        )

    def _journaled(self, answer: CommandAnswer, client: str, park: str, code: str, opr: str) -> CommandAnswer:
        """Journal `answer` as the command's `command-reply` record (not waited for)."""
        record = {"client": client, "data": None, **answer.body}
        self._journal.append(COMMAND_REPLY_RECORD, park, code, opr, record).addErrback(
            self._reply_not_journaled, park, code, opr
        )
        return answer

    def _finish(self, started: float, code: str, answer: CommandAnswer) -> CommandAnswer:
        elapsed = max(0.0, self._clock.seconds() - started)
        self._seconds.labels(code=code, outcome=answer.outcome).observe(elapsed)
        if self._status is not None:
            self._status.latency.record(answer.outcome, elapsed)
        return answer

    def _reply_not_journaled(self, failure: Failure, park: str, code: str, opr: str) -> None:
        log.failure(
            "command-reply for {code} to {park} (opr {opr}) not journaled",
            failure,
            park=park,
            code=code,
            opr=opr,
        )


def _replied(reply: LotReply) -> CommandAnswer:
    body = {"resultCode": reply.result_code, "resultMessage": reply.result_message, "data": reply.data}
    return CommandAnswer(200, body, "ok")


def _park_json(state: LotState, backlog: int, gateway: str | bool | None) -> dict[str, object]:
    """A lot's state; with [cluster] (``gateway`` not False) the gateway holding it, or null."""
    shown: dict[str, object] = {
        "parkCode": state.park,
        "connected": state.connected,
        "since": rfc3339(state.since),
        "lastSeen": rfc3339(state.last_seen),
        "peer": state.peer,
        "backlog": backlog,
    }
    if gateway is not False:
        shown["gateway"] = gateway
    return shown


_Handler = Callable[..., Any]


def _counted(route: str) -> Callable[[_Handler], _Handler]:
    """Count each answer of a route in `cpmi_api_requests_total` by its status, and turn
    a `_Refusal` raised by the handler into its JSON answer."""

    def decorate(handler: _Handler) -> _Handler:
        @functools.wraps(handler)
        def counted(self: CommandApi, request: IRequest, *args: Any, **kwargs: Any) -> Deferred[Any]:
            answered = maybeDeferred(handler, self, request, *args, **kwargs)
            answered.addErrback(self._refused, request)

            def count(result: _T) -> _T:
                status = 500 if isinstance(result, Failure) else getattr(request, "code", 200)
                self._requests.labels(route=route, status=str(status)).inc()
                return result

            return answered.addBoth(count)

        return counted

    return decorate


class CommandApi:
    """The klein application of the `api` endpoint."""

    app = Klein()

    def __init__(
        self,
        *,
        config: Config,
        lots: LotCommands,
        journal: JournalAppend,
        clock: IReactorTime,
        registry: CollectorRegistry,
        ready: Callable[[], tuple[bool, str]],
        deadlines: Mapping[str, float] | None = None,
        sync: SyncEntries | None = None,
        status: StatusReport | None = None,
        reload: Callable[[str], Awaitable[ReloadOutcome]] | None = None,
        nats: NatsState | None = None,
    ) -> None:
        """`deadlines` overrides the catalog's per code, as given to the downlink side.

        Without `sync`, sync-class codes are answered 501; without `status`,
        `/v1/status` is; without `reload`, `/v1/admin/reload` is. `reload(reason)`
        (a Deferred, say) reloads the configuration file. Each command's duration
        goes to `status.latency` too, for the status page.
        """
        self._sync = sync
        self._status = status
        self._reload = reload
        self._page: dict[str, PageAsset] = page_assets()
        self._config = config
        self._lots = lots
        self._journal = journal
        self._clock = clock
        self._registry = registry
        self._ready = ready
        self._nats = nats
        self._deadlines = dict(deadlines or {})
        self._cloud_token = config.cloud.api_token.encode("utf-8")
        self._openapi = _json_bytes(openapi_document())
        self.commands = CommandPath(
            lots=lots,
            journal=journal,
            clock=clock,
            registry=registry,
            config=lambda: self._config,
            deadlines=deadlines,
            status=status,
        )
        """The command path, which NATS requests share (`gateway.cluster.commands`)."""
        self.placement: Callable[[str], str | None] | None = None
        """[cluster]: the gateway holding a lot not bound here (`gateway.cluster.placement`)."""
        self._requests = Counter(
            "cpmi_api_requests_total",
            "Requests answered by the command API, by route and HTTP status.",
            ["route", "status"],
            registry=registry,
        )

    def reconfigure(self, config: Config) -> None:
        """Take a reloaded configuration: its API token, `[[api_client]]` entries and lots."""
        self._config = config
        self._cloud_token = config.cloud.api_token.encode("utf-8")

    def _holder(self, park: str, state: LotState) -> str | bool | None:
        """With [cluster], the gateway holding the lot (this one when bound here, else placement's);
        False without (the listing then has no such field, as on a gateway alone)."""
        if self.placement is None:
            return False
        if state.connected:
            return self._config.gateway.id
        return self.placement(park)

    def _backlog(self, park: str) -> int:
        return self._sync.pending(park) if self._sync is not None else 0

    def resource(self) -> IResource:
        """The twisted.web resource to serve."""
        resource: IResource = self.app.resource()
        return resource

    # --- authentication -------------------------------------------------

    def _caller(self, request: IRequest) -> Caller:
        """The authenticated caller, or a 401 refusal."""
        header = (request.getHeader(b"authorization") or b"").strip()
        scheme, _, token = header.partition(b" ")
        token = token.strip()
        if scheme.lower() != b"bearer" or not token:
            raise _Refusal(401, {"error": "a bearer token is required"}, b"Bearer")
        if self._cloud_token and hmac.compare_digest(token, self._cloud_token):
            return Caller(CLOUD_CLIENT, ALL_ROLES)
        digest = hashlib.sha256(token).hexdigest()
        found: Caller | None = None
        for client in self._config.api_clients:
            if hmac.compare_digest(digest, client.token_sha256) and found is None:
                found = Caller(client.name, frozenset(client.roles))
        if found is None:
            raise _Refusal(401, {"error": "the bearer token is not valid"}, b'Bearer error="invalid_token"')
        return found

    def _probe_refused(self, request: IRequest) -> bytes | None:
        """A probe's refusal: None without a token (none is needed), or with a valid one; else 401."""
        if request.getHeader(b"authorization") is None:
            return None
        try:
            self._caller(request)
        except _Refusal:
            return self._refused(Failure(), request)
        return None

    def _authorized(self, request: IRequest, role: str) -> Caller:
        caller = self._caller(request)
        if not caller.may(role):
            raise _error(403, f"client {caller.name!r} lacks the {role!r} role")
        return caller

    def _refused(self, failure: Failure, request: IRequest) -> bytes:
        failure.trap(_Refusal)
        refusal: _Refusal = failure.value
        if refusal.challenge is not None:
            request.setHeader(b"www-authenticate", refusal.challenge)
        return _answer(request, refusal.status, refusal.body)

    def _park(self, park: str) -> None:
        if self._config.lot_by_park(park) is None:
            raise _error(404, f"park {park!r} is not configured")

    # --- commands -------------------------------------------------------

    @app.route("/v1/parks/<string:park>/commands/<string:code>", methods=["POST"])
    @_counted("/v1/parks/{parkCode}/commands/{code}")
    def post_command(self, request: IRequest, park: str, code: str) -> Any:
        caller = self._caller(request)
        if not (caller.may("command") or caller.may("sync")):
            raise _error(403, f"client {caller.name!r} has neither the 'command' nor the 'sync' role")
        self._park(park)
        interface = self.commands.interface(code)
        role = interface.downlink.value if interface.downlink is not None else "command"
        if not caller.may(role):
            raise _error(403, f"client {caller.name!r} lacks the {role!r} role")
        self.commands.supported(park, interface)
        data = self._body(request, interface)
        if interface.downlink is DeliveryClass.SYNC:
            if self._sync is None:
                raise _error(501, "sync delivery is not available in this version")
            return self._enqueue(request, caller, park, interface, data)
        return self._command(request, caller, park, interface, data)

    def _enqueue(
        self, request: IRequest, caller: Caller, park: str, interface: Interface, data: object
    ) -> Deferred[bytes]:
        assert self._sync is not None

        def journaled(seq: int) -> bytes:
            return _answer(request, 202, {"seq": seq})

        def unjournaled(failure: Failure) -> bytes:
            log.failure(
                "sync {code} for {park} not journaled; not queued", failure, code=interface.code, park=park
            )
            return _answer(request, 503, {"error": "the sync entry could not be journaled; not queued"})

        queued: Deferred[int] = maybeDeferred(self._sync.enqueue, park, interface.code, data, caller.name)
        return queued.addCallbacks(journaled, unjournaled)

    def _body(self, request: IRequest, interface: Interface) -> object:
        """The request's JSON body checked against the interface, normalised."""
        content = request.content
        content.seek(0, 2)
        # The channel refuses a larger body before reading it; this holds where there is none (tests).
        if content.tell() > self._config.uplink.api_max_body_bytes:
            raise _error(413, "the body is too large")
        content.seek(0)
        return self.commands.data(content.read(), interface)

    def _command(
        self, request: IRequest, caller: Caller, park: str, interface: Interface, data: object
    ) -> Deferred[bytes]:
        answered = self.commands.send(caller.name, park, interface, data)
        return answered.addCallback(lambda answer: _answer(request, answer.status, answer.body))

    # --- reading --------------------------------------------------------

    @app.route("/v1/parks", methods=["GET"])
    @_counted("/v1/parks")
    def get_parks(self, request: IRequest) -> bytes:
        self._authorized(request, "read")
        known = {state.park: state for state in self._lots.states()}
        states = [known.get(lot.park_code) or self._lots.state(lot.park_code) for lot in self._config.lots]
        parks = [
            _park_json(state, self._backlog(state.park), self._holder(state.park, state)) for state in states
        ]
        return _answer(request, 200, {"parks": parks})

    @app.route("/v1/parks/<string:park>", methods=["GET"])
    @_counted("/v1/parks/{parkCode}")
    def get_park(self, request: IRequest, park: str) -> bytes:
        self._authorized(request, "read")
        self._park(park)
        state = self._lots.state(park)
        return _answer(request, 200, _park_json(state, self._backlog(park), self._holder(park, state)))

    @app.route("/v1/schemas/<string:code>.json", methods=["GET"])
    @_counted("/v1/schemas/{code}.json")
    def get_schema(self, request: IRequest, code: str) -> bytes:
        self._authorized(request, "read")
        interface = lookup(code)
        if interface is None:
            raise _error(404, f"unknown interface code {code!r}")
        return _answer(request, 200, interface_schema(interface))

    @app.route("/v1/openapi.json", methods=["GET"])
    @_counted("/v1/openapi.json")
    def get_openapi(self, request: IRequest) -> bytes:
        self._authorized(request, "read")
        request.setHeader(b"content-type", JSON_TYPE)
        return self._openapi

    @app.route("/v1/status", methods=["GET"])
    @_counted("/v1/status")
    def get_status(self, request: IRequest) -> bytes:
        self._authorized(request, "read")
        if self._status is None:
            raise _error(501, "the status report is not available in this version")
        request.setHeader(b"cache-control", b"no-store")
        return _answer(request, 200, self._status.report())

    # --- administration -------------------------------------------------

    @app.route("/v1/admin/reload", methods=["POST"])
    @_counted("/v1/admin/reload")
    def post_reload(self, request: IRequest) -> Deferred[bytes]:
        caller = self._authorized(request, "admin")
        reload = self._reload
        if reload is None:
            raise _error(501, "reloading the configuration is not available in this version")

        async def reloading() -> bytes:
            try:
                outcome = await reload(f"api client {caller.name}")
            except Exception:
                log.failure("the reload asked by {client} failed", client=caller.name)
                return _answer(request, 500, {"error": "the reload failed; the gateway's log says why"})
            return _answer(request, 200 if outcome.ok else 400, outcome.as_json())

        return Deferred.fromCoroutine(reloading())

    # --- the status page (no token: it holds no data) ------------------

    @app.route("/", methods=["GET"])
    @_counted("/")
    def status_page(self, request: IRequest) -> bytes:
        return self._asset(request, "/")

    @app.route("/status.js", methods=["GET"])
    @_counted("/status.js")
    def status_script(self, request: IRequest) -> bytes:
        return self._asset(request, "/status.js")

    @app.route("/status.css", methods=["GET"])
    @_counted("/status.css")
    def status_style(self, request: IRequest) -> bytes:
        return self._asset(request, "/status.css")

    def _asset(self, request: IRequest, route: str) -> bytes:
        asset = self._page[route]
        request.setHeader(b"content-type", asset.content_type)
        request.setHeader(b"content-security-policy", PAGE_POLICY)
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-frame-options", b"DENY")
        request.setHeader(b"x-content-type-options", b"nosniff")
        request.setHeader(b"referrer-policy", b"no-referrer")
        return asset.body

    # --- operations (no token needed; one sent must be valid) ----------

    @app.route("/healthz", methods=["GET"])
    @_counted("/healthz")
    def healthz(self, request: IRequest) -> bytes:
        refused = self._probe_refused(request)
        if refused is not None:
            return refused
        return _answer(request, 200, {"status": "ok"})

    @app.route("/readyz", methods=["GET"])
    @_counted("/readyz")
    def readyz(self, request: IRequest) -> bytes:
        refused = self._probe_refused(request)
        if refused is not None:
            return refused
        ready, reason = self._ready()
        body: dict[str, object] = {"status": "ready" if ready else "not ready", "reason": reason}
        if self._nats is not None:
            # Shown beside, never deciding: NATS being down delays delivery, not a lot's 0000 (CONTRACT §9).
            body["nats"] = {"state": self._nats.state, "error": self._nats.last_error}
        return _answer(request, 200 if ready else 503, body)

    @app.route("/metrics", methods=["GET"])
    @_counted("/metrics")
    def metrics(self, request: IRequest) -> bytes:
        refused = self._probe_refused(request)
        if refused is not None:
            return refused
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        return generate_latest(self._registry)


def _json_bytes(body: object) -> bytes:
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _answer(request: IRequest, status: int, body: object) -> bytes:
    request.setResponseCode(status)
    request.setHeader(b"content-type", JSON_TYPE)
    return _json_bytes(body)

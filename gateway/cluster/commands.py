"""Commands over NATS (CONTRACT §9): request-reply on `{prefix}.commands.{park}.{code}`.

`NatsCommands` answers the requests for the lots this gateway holds, and only
those: it subscribes to `{prefix}.commands.{park}.>` when a lot binds here and
unsubscribes when it leaves, so a request for a lot no gateway holds finds no
subscriber and its asker gets NATS's "no responders" at once (9008), not a
timeout. (One wildcard subscription answering only for the lots held would turn
every "not connected" into a wait for the deadline.)

A request's payload is the interface's `data` as JSON; the reply is
`{"resultCode","resultMessage","data"}` with a `Cpmi-Status` header giving the
HTTP status the command API would have answered. Everything between is the
command API's own path (`gateway.cloud.api.CommandPath`): the same checks, the
same `command`/`command-reply` records, deadlines and result codes. Requests in
flight are capped (`max_in_flight`): past the cap a request is answered 9999 at
once rather than held.

`ask` is the other direction: the HTTP API of this gateway asking, through NATS,
the gateway that holds a lot bound elsewhere.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from twisted.internet.defer import Deferred, fail
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.runner import NatsRunner
from gateway.cluster.subjects import CLIENT_HEADER, GATEWAY_HEADER, OPR_HEADER, OPR_VALUE
from gateway.interfaces import DeadlinePassed, NotConnected
from gateway.protocol.results import Result

__all__ = [
    "CLIENT_HEADER",
    "GATEWAY_HEADER",
    "OPR_HEADER",
    "STATUS_HEADER",
    "CommandRequests",
    "NatsCommands",
    "NatsRunner",
    "command_subject",
]

log = Logger()

STATUS_HEADER = "Cpmi-Status"
"""On a reply: the HTTP status the answering gateway's command API would have given."""

MAX_IN_FLIGHT = 1024
# How long a failed subscribe waits before it is tried again, at most.
RESUBSCRIBE_MAX = 30.0
_HEADER_TEXT = 128


class CommandRequests(Protocol):
    """The command path as a NATS request takes it (`gateway.cloud.api.CommandPath.request`)."""

    def request(
        self, park: str, code: str, raw: bytes, *, client: str, opr: str, via: str
    ) -> Deferred[tuple[int, dict[str, object]]]:
        """Check, journal and send a command; fire with (HTTP status, reply); never fail."""


def command_subject(prefix: str, park: str, code: str) -> str:
    """The subject a command for `park` is asked on."""
    return f"{prefix}.commands.{park}.{code}"


def _reply_bytes(reply: Mapping[str, object]) -> bytes:
    return json.dumps(reply, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    """A header's value, cut to a sane length ('' when absent)."""
    if not headers:
        return ""
    value = headers.get(name, "")
    return value[:_HEADER_TEXT] if isinstance(value, str) else ""


class NatsCommands:
    """The lots held here, answering commands over NATS; and the asking of other gateways."""

    def __init__(
        self,
        *,
        connection: NatsRunner,
        commands: CommandRequests,
        clock: IReactorTime,
        prefix: str,
        gateway_id: str,
        deadline: Callable[[str], float],
        grace: float = 5.0,
        max_in_flight: int = MAX_IN_FLIGHT,
    ) -> None:
        """`deadline(code)` is a command's deadline on the downlink; an asker waits `grace` longer."""
        self._connection = connection
        self._commands = commands
        self._clock = clock
        self._prefix = prefix
        self._gateway_id = gateway_id
        self._deadline = deadline
        self._grace = grace
        self._max_in_flight = max_in_flight
        self._held: set[str] = set()
        self._subscriptions: dict[str, Any] = {}
        self._subscribing: set[str] = set()
        self._retries: dict[str, IDelayedCall] = {}
        self._failures: dict[str, int] = {}
        self.in_flight = 0
        self.counters = {"requests": 0, "refused_busy": 0, "ignored": 0, "asked": 0}
        # NATS requests answered here, by the reply's resultCode (the in-flight cap's 9999 too).
        self.answered: dict[str, int] = {}
        # This gateway's asking of others: "answered", "no_responders", "timeout" or "failed".
        self.asks = {"answered": 0, "no_responders": 0, "timeout": 0, "failed": 0}
        connection.state_observers.append(self._state_changed)

    # --- the lots held here --------------------------------------------

    def held(self) -> frozenset[str]:
        """The lots this gateway answers for now."""
        return frozenset(self._held)

    def subscribed(self) -> frozenset[str]:
        """The lots whose subscription the server has (for tests and the status)."""
        return frozenset(self._subscriptions)

    def lot_bound(self, park: str) -> None:
        """A lot bound its downlink here: answer its commands."""
        self._held.add(park)
        self._subscribe(park)

    def lot_unbound(self, park: str) -> None:
        """A lot left: stop answering for it, so that another gateway, or nobody, does."""
        self._held.discard(park)
        retry = self._retries.pop(park, None)
        if retry is not None and retry.active():
            retry.cancel()
        subscription = self._subscriptions.pop(park, None)
        if subscription is not None:
            self._unsubscribe(park, subscription)

    def stop(self) -> None:
        """Cancel the pending resubscriptions (the connection's close drops the subscriptions)."""
        for retry in self._retries.values():
            if retry.active():
                retry.cancel()
        self._retries.clear()

    def _state_changed(self, state: str) -> None:
        """A new state of the connection.

        "connecting" after the start means nats-py gave its client up: the subscriptions went with
        it, and the lots still held subscribe again on the new client once it is "connected".
        """
        if state == "connecting":
            self._subscriptions.clear()
        elif state == "connected":
            for park in sorted(self._held):
                self._subscribe(park)

    def _subscribe(self, park: str) -> None:
        if park in self._subscriptions or park in self._subscribing:
            return
        self._subscribing.add(park)
        subject = f"{self._prefix}.commands.{park}.>"
        to_reactor = self._connection.to_reactor
        received = self._received

        async def subscribe(nc: Any, js: Any) -> Any:
            async def handler(msg: Any) -> None:
                # On the NATS loop: copy what is needed and hand it to the reactor.
                to_reactor(received, park, msg.subject, msg.data, msg.reply, dict(msg.headers or {}))

            return await nc.subscribe(subject, cb=handler)

        def subscribed(subscription: Any) -> None:
            self._subscribing.discard(park)
            self._failures.pop(park, None)
            if park in self._held:
                self._subscriptions[park] = subscription
            else:
                self._unsubscribe(park, subscription)

        def failed(failure: Failure) -> None:
            self._subscribing.discard(park)
            if park not in self._held:
                return
            count = self._failures[park] = self._failures.get(park, 0) + 1
            delay = min(RESUBSCRIBE_MAX, 0.5 * 2**count)
            log.warn(
                "cannot subscribe to the commands of lot {park} ({error}); again in {delay:g} s",
                park=park,
                error=failure.getErrorMessage(),
                delay=delay,
            )
            self._retries[park] = self._clock.callLater(delay, self._resubscribe, park)

        self._connection.run(subscribe).addCallbacks(subscribed, failed)

    def _resubscribe(self, park: str) -> None:
        self._retries.pop(park, None)
        if park in self._held:
            self._subscribe(park)

    def _unsubscribe(self, park: str, subscription: Any) -> None:
        async def unsubscribe(nc: Any, js: Any) -> None:
            await subscription.unsubscribe()

        self._connection.run(unsubscribe).addErrback(
            lambda failure: log.warn(
                "unsubscribing from the commands of lot {park} failed: {error}",
                park=park,
                error=failure.getErrorMessage(),
            )
        )

    # --- answering ------------------------------------------------------

    def _received(self, park: str, subject: str, data: bytes, reply: str, headers: Mapping[str, str]) -> None:
        """A request for `park` (on the reactor thread): answer it through the command path."""
        if not reply:
            self.counters["ignored"] += 1
            return  # a publish, not a request: nobody to answer
        if park not in self._held:
            # Unbound while the unsubscribe was on its way: say nothing, as a gateway without it would.
            self.counters["ignored"] += 1
            return
        self.counters["requests"] += 1
        code = subject[len(f"{self._prefix}.commands.{park}.") :]
        if self.in_flight >= self._max_in_flight:
            self.counters["refused_busy"] += 1
            busy = Result.FAILED.message(f"more than {self._max_in_flight} commands in flight; try again")
            self._reply(reply, 503, {"resultCode": Result.FAILED.code, "resultMessage": busy, "data": None})
            return
        opr = _header(headers, OPR_HEADER)
        if not OPR_VALUE.fullmatch(opr):
            opr = ""
        client = _header(headers, CLIENT_HEADER) or "nats"
        via = _header(headers, GATEWAY_HEADER) or "nats"
        self.in_flight += 1

        def answered(outcome: tuple[int, dict[str, object]]) -> None:
            self._reply(reply, *outcome)

        def done(result: object) -> None:
            self.in_flight -= 1
            if isinstance(result, Failure):
                log.failure("a NATS command for {park} failed", result, park=park)

        asked = self._commands.request(park, code, data, client=client, opr=opr, via=via)
        asked.addCallback(answered).addBoth(done)

    def _reply(self, reply: str, status: int, body: Mapping[str, object]) -> None:
        code = str(body.get("resultCode", ""))[:8]
        self.answered[code] = self.answered.get(code, 0) + 1
        payload = _reply_bytes(body)

        async def publish(nc: Any, js: Any) -> None:
            await nc.publish(reply, payload, headers={STATUS_HEADER: str(status)})

        self._connection.run(publish).addErrback(
            lambda failure: log.warn("a command reply was not sent: {error}", error=failure.getErrorMessage())
        )

    # --- asking another gateway ----------------------------------------

    def ask(
        self, park: str, code: str, data: object, opr: str, client: str
    ) -> Deferred[tuple[int, dict[str, object]]]:
        """Ask the gateway holding `park` (see `gateway.cloud.api.RemoteCommands`).

        Fires with (HTTP status, reply); fails NotConnected when no gateway
        answers for the lot or NATS is not connected, DeadlinePassed when the
        answer does not come within the deadline and its grace.
        """
        if self._connection.state != "connected":
            self.asks["failed"] += 1
            return fail(NotConnected(park))
        self.counters["asked"] += 1
        subject = command_subject(self._prefix, park, code)
        payload = _reply_bytes(data)  # type: ignore[arg-type]
        timeout = self._deadline(code) + self._grace
        headers = {OPR_HEADER: opr, CLIENT_HEADER: client, GATEWAY_HEADER: self._gateway_id}

        def count(outcome: str) -> None:
            self.asks[outcome] += 1

        async def request(nc: Any, js: Any) -> tuple[int, bytes]:
            from nats.errors import NoRespondersError, TimeoutError

            try:
                msg = await nc.request(subject, payload, timeout=timeout, headers=headers)
            except NoRespondersError:
                raise NotConnected(park) from None
            except TimeoutError:
                raise DeadlinePassed(park, code, timeout) from None
            status = _header(msg.headers, STATUS_HEADER)
            return (int(status) if status.isdigit() else 0), msg.data

        def parsed(answer: tuple[int, bytes]) -> tuple[int, dict[str, object]]:
            count("answered")
            status, raw = answer
            try:
                reply = json.loads(raw)
            except ValueError:
                reply = None
            if not isinstance(reply, dict) or "resultCode" not in reply:
                log.warn("gateway holding lot {park} answered {code} with no reply", park=park, code=code)
                failed = Result.FAILED.message("the gateway holding the lot gave no valid reply")
                return 502, {"resultCode": Result.FAILED.code, "resultMessage": failed, "data": None}
            return status, reply

        def unreachable(failure: Failure) -> Failure:
            if failure.check(NotConnected):
                count("no_responders")  # raised only for NATS's "no responders"
            elif failure.check(DeadlinePassed):
                count("timeout")
            else:
                count("failed")
                log.warn(
                    "asking for lot {park} through NATS failed: {error}",
                    park=park,
                    error=failure.getErrorMessage(),
                )
                raise NotConnected(park)
            return failure

        return self._connection.run(request).addCallbacks(parsed, unreachable)

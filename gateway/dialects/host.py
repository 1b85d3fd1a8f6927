"""
The gateway's side of the dialect interface: what a dialect is given, and where its downlinks go.

`DialectHost` is the gateway as one dialect sees it (``IDialectHost``): its lots,
the clock, and `submit`, the one door to the journal, which applies the same
rules to a legacy message as the HTTP uplink applies to a standard request
(fields, business rules, repeats, nothing answered before it is durable).
`LotRouter` is every lot as the command API, the sync queue and the metrics see
them: it sends each downlink through the dialect of its lot.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterable, Mapping, Sequence

from attrs import define
from twisted.internet.defer import Deferred, FirstError, fail, gatherResults, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.dialects.interface import IDialectHost, IDialectServer, Message, Original, Unsupported
from gateway.interfaces import JournalAppend, LotReply, LotState, NotConnected
from gateway.journal.kinds import LEGACY_RECORD, OFFLINE_RECORD, ONLINE_RECORD, UPLINK_RECORD
from gateway.journal.record import dumps_compact
from gateway.logs import lot_rejected
from gateway.lots.answers import OK, Answer
from gateway.lots.downlink import record_connection
from gateway.lots.login import Checker, not_stored_answer
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import TOO_MANY, Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.uplink import Queries, Rejected, check_business_rules
from gateway.protocol.catalog import DeliveryClass, deadline_of, lookup
from gateway.protocol.redact import redact
from gateway.protocol.results import RESULT_OK, Result
from gateway.protocol.validation import FieldError, validate
from gateway.settings import Config, LotConfig, TcpConfig

__all__ = ["DialectHost", "GatewayParts", "LotRouter"]

log = Logger()


# "data.recordCode", "data[2].recordCode": the member of the message a FieldError is about.
_FIELD = re.compile(r"data(?:\[\d+\])?\.([^.\[]+)")


@define
class GatewayParts:
    """The gateway's own parts, which the built-in standard dialect is wired from.

    Vendor dialects use the host's methods instead: these are not a stable interface.
    `config` is the running configuration: a reload replaces it, and the hosts'
    lookups (`lots`, `lot`, `deadline`) read it on each call.
    """

    config: Config
    clock: IReactorTime
    journal: JournalAppend
    sessions: Sessions
    repeats: Repeats
    totals: ParkTotals
    passwords: Checker
    queries: Queries | None = None

    def reconfigure(self, config: Config) -> None:
        """Run with the lots of a reloaded configuration."""
        self.config = config


@implementer(IDialectHost)
class DialectHost:
    """The gateway as the dialect `name` sees it."""

    def __init__(
        self,
        name: str,
        parts: GatewayParts,
        bound: Callable[[str], None],
        unbound: Callable[[str], None] | None = None,
    ) -> None:
        """`bound(park)` is told of each bind (sync delivery resumes), `unbound(park)` of each unbind."""
        self.name = name
        self.parts = parts
        self.clock = parts.clock
        self.zone = parts.config.gateway.timezone
        self.tcp: TcpConfig = parts.config.tcp
        self._bound = bound
        self._unbound = unbound

    def resume(self, park: str) -> None:
        """Resume the lot's pending sync deliveries: it has just bound a connection."""
        try:
            self._bound(park)
        except Exception:
            log.failure("resuming the deliveries of lot {park} failed", park=park)

    def released(self, park: str) -> None:
        """The lot's connection is unbound: whoever answers for the lots while bound stops."""
        if self._unbound is None:
            return
        try:
            self._unbound(park)
        except Exception:
            log.failure("releasing lot {park} failed", park=park)

    def lots(self) -> tuple[LotConfig, ...]:
        return tuple(lot for lot in self.parts.config.lots if lot.dialect == self.name)

    def lot(self, park: str) -> LotConfig | None:
        lot = self.parts.config.lot_by_park(park)
        return lot if lot is not None and lot.dialect == self.name else None

    def deadline(self, code: str) -> float:
        return deadline_of(code, self.parts.config.deadlines)

    # uplinks

    def submit(self, park: str, original: Original, messages: Sequence[Message]) -> Deferred[Answer]:
        """Store `original` and `messages` (see ``IDialectHost.submit``); never fails."""
        if self.lot(park) is None:
            answer = Answer.of(Result.NO_SUCH_PARK, f"park {park!r} is not a {self.name} lot")
            return succeed(self._refused(park, original, answer))
        repeats, opr = self.parts.repeats, _repeat_key(original.opr)
        repeated = repeats.seen(park, opr)
        if repeated is not None:
            # The first answer was logged when it was given: only a refusal of the repeat itself is new.
            return repeated.addCallback(
                lambda answer: self._refused(park, original, answer) if answer is TOO_MANY else answer
            )

        def handle() -> Deferred[tuple[Answer, bool]]:
            try:
                checked = [self._checked(park, message) for message in messages]
            except Rejected as rejected:
                return succeed((rejected.answer, False))
            stored = self._store(park, original, opr, checked)
            return stored.addCallback(lambda answer: (answer, answer.result is Result.OK))

        def done(answer: Answer) -> Answer:
            if answer.result is not RESULT_OK:
                self._refused(park, original, answer)
            return answer

        # A fault inside (a message the redaction or the journal chokes on) answers 9999 and
        # frees the oprNum rather than leaving every retry of it waiting.
        return repeats.attempt(park, opr, handle).addCallback(done)

    def _refused(self, park: str, original: Original, answer: Answer) -> Answer:
        """Log the refusal `answer` of the lot's message (lot.rejected); return it."""
        lot_rejected(
            log,
            park=park,
            code=original.service,
            result=answer.result.code,
            reason=answer.message,
            dialect=self.name,
            via=self.name,
        )
        return answer

    def _checked(self, park: str, message: Message) -> tuple[str, object]:
        interface = lookup(message.code)
        if interface is None or interface.uplink is not DeliveryClass.REPORT:
            log.error(
                "the {dialect} dialect made a {code} message, which is not a report",
                dialect=self.name,
                code=message.code,
            )
            raise Rejected(Answer.of(Result.FAILED, f"the {self.name} dialect cannot carry {message.code}"))
        code = interface.code
        data = message.data
        if data is None or data == {} or data == []:
            raise Rejected(Answer.of(Result.EMPTY_BODY, f"{code}: no data"))
        sources = message.sources

        def whence(field: str) -> str:
            """Where the lot's vendor finds `field`: " (from data.order_id)", or nothing."""
            source = sources.get(field)
            return f" (from data.{source})" if source else ""

        try:
            data = validate(interface.request, data)
        except FieldError as error:
            match = _FIELD.match(error.path)
            legacy = whence(match.group(1)) if match else ""
            raise Rejected(
                Answer.of(Result.FIELD_INVALID, f"{code} {error.path}{legacy}: {error.reason}")
            ) from None
        items = data if isinstance(data, list) else [data]
        for index, item in enumerate(items):
            where = f"{code} data[{index}]" if isinstance(data, list) else f"{code} data"
            check_business_rules(code, park, item, where, self.parts.totals, lambda f: f + whence(f))
        return code, data

    def _store(
        self, park: str, original: Original, opr: str, checked: list[tuple[str, object]]
    ) -> Deferred[Answer]:
        journal = self.parts.journal
        body = {
            "dialect": self.name,
            "translated": [code for code, _ in checked],
            "message": redact(original.message),
        }
        try:
            # What the journal cannot write would fail part way through the appends below,
            # leaving some stored and the lot told to retry: refuse it before the first.
            for _, data in checked:
                dumps_compact(data)
            dumps_compact(body)
        except Exception as error:
            log.error(
                "the {dialect} dialect gave a message the journal cannot store: {error}",
                dialect=self.name,
                error=error,
            )
            return succeed(Answer.of(Result.FAILED, f"the {self.name} dialect made an unstorable message"))
        # Appended in one turn, so they share one write and one fsync. The original goes
        # last: once it is on disk, so is everything made of it, and a repeat is answered
        # from it (after a restart too) only when nothing made of it can be missing.
        appends = [
            journal.append(UPLINK_RECORD, park, code, f"{opr}-{index}", data)
            for index, (code, data) in enumerate(checked)
        ]
        appends.append(journal.append(LEGACY_RECORD, park, original.service, opr, body))

        def stored(_: object) -> Answer:
            for code, data in checked:
                if code == "parkEnv":
                    self.parts.totals.observe(park, data)
            return OK

        def not_stored(failure: Failure) -> Answer:
            if failure.check(FirstError):
                failure = failure.value.subFailure
            return not_stored_answer(failure)

        return gatherResults(appends, consumeErrors=True).addCallbacks(stored, not_stored)

    # connections

    def online(self, park: str, peer: str, how: str) -> None:
        log.info(
            "lot {park} bound from {peer} by {how}",
            event="lot.online",
            park=park,
            peer=peer,
            how=how,
            dialect=self.name,
        )
        record_connection(self.parts.journal, ONLINE_RECORD, park, peer, how)
        self.resume(park)

    def offline(self, park: str, peer: str, reason: str) -> None:
        log.info(
            "lot {park} unbound from {peer}: {reason}",
            event="lot.offline",
            park=park,
            peer=peer,
            reason=reason,
            dialect=self.name,
        )
        record_connection(self.parts.journal, OFFLINE_RECORD, park, peer, reason)
        self.released(park)


def _repeat_key(opr: str) -> str:
    """The legacy message's id as journaled: as given, or its MD5 when longer than 32 characters.

    32 leaves room for the "-n" of the standard messages within the standard's 36.
    """
    if len(opr) <= 32:
        return opr
    return hashlib.md5(opr.encode("utf-8", "replace")).hexdigest()


class LotRouter:
    """Every configured lot, whatever its dialect: downlinks go through the lot's dialect."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self.servers: dict[str, IDialectServer] = {}

    @property
    def counters(self) -> Mapping[str, int]:
        """The downlink counters of the running dialects that keep them (the standard one), for the metrics.

        A server keeps them as its optional ``counters`` mapping (`StandardServer.counters`).
        """
        for server in self.servers.values():
            counters: Mapping[str, int] | None = getattr(server, "counters", None)
            if counters is not None:
                return counters
        return {}

    def reconfigure(self, config: Config) -> None:
        """Route by the lots of a reloaded configuration.

        A lot whose dialect is not running (added by a reload, served only after
        a restart) is shown offline and refused commands as not connected.
        """
        self._config = config

    def disconnect(self, lot: LotConfig, reason: str) -> bool:
        """Close the connection of `lot` (as configured until now) through its dialect."""
        server = self.servers.get(lot.dialect)
        disconnect = getattr(server, "disconnect", None)
        if disconnect is None:
            log.warn(
                "the {dialect} dialect cannot close lot {park}'s connection: it lasts until it closes",
                dialect=lot.dialect,
                park=lot.park_code,
            )
            return False
        return bool(disconnect(lot.park_code, reason))

    def _server(self, park: str) -> tuple[str, IDialectServer | None]:
        lot = self._config.lot_by_park(park)
        if lot is None:
            return "", None
        return lot.dialect, self.servers.get(lot.dialect)

    def supports(self, park: str, code: str) -> bool:
        """Whether the lot's dialect can carry the downlink `code` (unknown lots: no)."""
        _, server = self._server(park)
        return server is not None and server.supports(code)

    def command(self, park: str, code: str, data: object, opr: str = "") -> Deferred[LotReply]:
        """Send a downlink to the lot now, through its dialect (see ``Downlinks.command``).

        `opr` is the oprNum the command was journaled under: a dialect that
        sends oprNums (``command_as``) sends this one.
        """
        dialect, server = self._server(park)
        if server is None:
            return fail(NotConnected(park))
        if not server.supports(code):
            return fail(Unsupported(dialect, code))
        command_as = getattr(server, "command_as", None) if opr else None
        if command_as is not None:
            sent: Deferred[LotReply] = command_as(park, code, data, opr)
            return sent
        return server.command(park, code, data)

    def state(self, park: str) -> LotState:
        _, server = self._server(park)
        if server is None:
            return LotState(park, False, None, None, "")
        return server.state(park)

    def states(self) -> list[LotState]:
        """The state of every configured lot, in configuration order."""
        return [self.state(lot.park_code) for lot in self._config.lots]

    def connected_count(self) -> int:
        """How many of `states()` are connected, without a LotState each (the metrics, at every scrape).

        A lot counts through its own dialect's server, as in `state`. A server that
        gives ``bound_parks()`` is asked for those, so the cost follows the bound lots;
        one without is asked the state of each of its lots.
        """
        lot_by_park = self._config.lot_by_park
        count = 0
        unlisted: dict[str, IDialectServer] = {}
        for dialect, server in self.servers.items():
            bound_parks: Callable[[], Iterable[str]] | None = getattr(server, "bound_parks", None)
            if bound_parks is None:
                unlisted[dialect] = server
                continue
            for park in bound_parks():
                lot = lot_by_park(park)
                if lot is not None and lot.dialect == dialect:
                    count += 1
        if unlisted:
            for lot in self._config.lots:
                asked = unlisted.get(lot.dialect)
                if asked is not None and asked.state(lot.park_code).connected:
                    count += 1
        return count

    def configured_count(self) -> int:
        """How many lots are configured: the length of `states()`."""
        return len(self._config.lots)

    def is_configured(self, park: str) -> bool:
        """Whether `park` is a configured lot's."""
        return self._config.lot_by_park(park) is not None

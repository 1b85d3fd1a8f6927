"""`cpmictl conformance lot`: the kit acts as a platform, for testing a lot system.

`ReferencePlatform` is cpmi-gateway's own lot side - the uplink handler
(login, tokens, signatures, repeats, catalog validation, business rules) and
the TCP downlink (binds, heartbeats, framing, idle timers, ACKs and REPLYs) -
with an in-memory journal, a plain-text password and a stand-in answer to
autoPay, recording everything the lot sends. `LotRun` listens for one lot,
sends it every downlink interface in turn once it is bound, and at the end
judges what it saw: one row per uplink interface (SKIP for those the lot never
sent), one per downlink, one per protocol rule.
"""

from __future__ import annotations

import hmac
import itertools
import json
import random
from collections.abc import Callable, Sequence
from typing import Any
from zoneinfo import ZoneInfo

from attrs import define, field, frozen
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater

from gateway.config import Config, parse
from gateway.conformance.checks import Check, downlink_interfaces, lot_checks
from gateway.conformance.report import Outcome, Report, Row
from gateway.conformance.samples import AUTO_PAY_ANSWER, Scene, downlink_sample
from gateway.interfaces import DeadlinePassed, LotReply, NotConnected
from gateway.lotclient.credentials import LotCredentials
from gateway.lots.downlink import Downlinks
from gateway.lots.http import UplinkEndpoint
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.tcp import DownlinkProtocol
from gateway.lots.uplink import FilePart, UplinkHandler
from gateway.protocol.catalog import Interface, lookup
from gateway.protocol.envelope import EnvelopeError, Reply, Request, parse_request
from gateway.protocol.framing import FrameTooLarge
from gateway.protocol.results import Result
from gateway.protocol.signing import signature_ok
from gateway.protocol.validation import FieldError, validate
from gateway.simulator.traffic import Layout, Traffic

__all__ = ["Exchange", "LotRun", "MemoryJournal", "MirrorSettings", "ReferencePlatform"]

HEARTBEAT_MAX = 60.0
"""5.1.8: a lot sends a heartbeat at least once a minute."""
HEARTBEAT_SLACK = 5.0
SETTLE = 1.0
"""Seconds between the lot's bind and the first downlink: time to report its set-up."""


@frozen
class MirrorSettings:
    """The platform the kit plays: the lot's account, its timers, how long the run lasts."""

    credentials: LotCredentials
    duration: float = 300.0
    deadline: float | None = None
    read_idle: int = 180
    write_idle: int = 60
    all_idle: int = 0
    bind_timeout: int = 10
    max_frame_bytes: int = 2**20
    signature: str = "required"
    zone: ZoneInfo = field(factory=lambda: ZoneInfo("Asia/Shanghai"))
    seed: int = 2018


@frozen
class MemoryRecord:
    """What the reference platform's journal returns for an append: the record, numbered."""

    seq: int
    kind: str
    park: str
    code: str
    opr: str
    body: object


class MemoryJournal:
    """A journal that keeps nothing: each append is durable at once and numbered."""

    def __init__(self) -> None:
        self.appended = 0

    def append(self, kind: str, park: str, code: str, opr: str, body: object) -> Deferred[Any]:
        """Number the record and fire with it."""
        self.appended += 1
        return succeed(MemoryRecord(self.appended, kind, park, code, opr, body))


class PlainPasswords:
    """The lot's one password, held in memory (the kit has no argon2 hash to check against)."""

    def __init__(self, password: str) -> None:
        self._password = password.encode("utf-8")

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        """Whether `password` is the lot's (for a known account)."""
        return succeed(
            password_hash is not None and hmac.compare_digest(password.encode("utf-8"), self._password)
        )


@frozen
class _QueryAnswer:
    result_code: str
    message: str
    data: object


class PaidQueries:
    """Answers every autoPay query: paid (a platform's answer, B.34)."""

    def ask(self, record: Any) -> Deferred[Any]:
        """0000 with the sample answer."""
        return succeed(_QueryAnswer(Result.OK.code, "", dict(AUTO_PAY_ANSWER)))


@frozen
class Exchange:
    """One request a lot sent and what the platform answered (TCP requests: no answer recorded)."""

    at: float
    via: str
    code: str
    opr: str
    data: object
    result_code: str = ""
    result_message: str = ""
    signature_ok: bool | None = None


def _code_of(code: str) -> str:
    interface = lookup(code)
    return interface.code if interface is not None else code


class RecordingUplinkHandler(UplinkHandler):
    """The gateway's uplink handler, keeping each request and its answer."""

    def __init__(self, *, recorder: list[Exchange], clock: IReactorTime, **parts: Any) -> None:
        super().__init__(clock=clock, **parts)
        self.recorder = recorder
        self._now = clock.seconds

    def handle(
        self,
        text: str,
        url_code: str | None = None,
        files: Sequence[FilePart] = (),
        gone: Callable[[], bool] | None = None,
    ) -> Deferred[bytes]:
        """Answer as the gateway does, then record the exchange."""
        at = self._now()

        def record(body: bytes) -> bytes:
            try:
                request = parse_request(text)
                code, opr, data = request.code or url_code or "", request.opr, request.data
            except EnvelopeError as error:
                code, opr, data = error.code or url_code or "", error.opr, None
            try:
                answer = json.loads(body)
            except ValueError:
                answer = {}
            self.recorder.append(
                Exchange(
                    at,
                    "HTTP",
                    _code_of(code),
                    opr,
                    data,
                    str(answer.get("resultCode", "")),
                    str(answer.get("resultMessage", "")),
                )
            )
            return body

        return super().handle(text, url_code, files, gone).addCallback(record)


class RecordingDownlinks(Downlinks):
    """The gateway's downlink side, keeping what the lot sends on TCP and the REPLY that settles
    each command (`last_reply` is set before the command's Deferred fires)."""

    def __init__(self, *, recorder: list[Exchange], **parts: Any) -> None:
        super().__init__(**parts)
        self.recorder = recorder
        self.last_reply: Reply | None = None
        self.bad_replies: list[tuple[str, str]] = []  # (code, why), replies dropped or refused
        self.heartbeat_replies = 0
        self.malformed: list[str] = []
        self.oversize = 0
        self._lot = self._config.lots[0]
        self._now = self._clock.seconds

    def request_received(self, connection: DownlinkProtocol, request: Request) -> None:
        code = _code_of(request.code)
        token = "" if code == "login" else request.token
        good = signature_ok(
            self._lot.signature,
            request.signature,
            request.data_text,
            request.data,
            token,
            self._lot.secret,
            optional=code == "heartbeat",
        )
        self.recorder.append(Exchange(self._now(), "TCP", code, request.opr, request.data, signature_ok=good))
        super().request_received(connection, request)

    def reply_received(self, connection: DownlinkProtocol, reply: Reply) -> None:
        # `_outstanding` is the parent's: the commands sent and not yet replied to, by oprNum.
        if reply.code == "heartbeat" and reply.opr not in self._outstanding:
            self.heartbeat_replies += 1
        elif reply.opr in self._outstanding:
            pending = self._outstanding[reply.opr]
            if not signature_ok(
                self._lot.signature,
                reply.signature,
                reply.data_text,
                reply.data,
                connection.token,
                self._lot.secret,
            ):
                self.bad_replies.append((pending.code, "its signature does not sign its data (B.3.7)"))
            self.last_reply = reply
        super().reply_received(connection, reply)

    def malformed_received(self, connection: DownlinkProtocol, error: EnvelopeError) -> None:
        self.malformed.append(error.detail)
        super().malformed_received(connection, error)

    def too_large(self, connection: DownlinkProtocol, event: FrameTooLarge) -> None:
        self.oversize += 1
        super().too_large(connection, event)


class ReferencePlatform:
    """cpmi-gateway's lot side for one lot, in memory, recording what the lot sends.

    `repeats` may be given (tests pass a broken one to make a broken platform).
    """

    def __init__(self, settings: MirrorSettings, clock: IReactorTime, repeats: Repeats | None = None) -> None:
        account = settings.credentials
        deadlines = {}
        if settings.deadline is not None:
            deadlines = {interface.code: settings.deadline for interface in downlink_interfaces()}
        self.config: Config = parse(
            {
                "gateway": {"id": "cpmi-conformance", "timezone": settings.zone.key, "signing_key": "-"},
                "journal": {"path": "-"},
                "tcp": {
                    "read_idle": settings.read_idle,
                    "write_idle": settings.write_idle,
                    "all_idle": settings.all_idle,
                    "bind_timeout": settings.bind_timeout,
                    "max_frame_bytes": settings.max_frame_bytes,
                },
                "lot": [
                    {
                        "park_code": account.park_code,
                        "username": account.username,
                        # Never checked: PlainPasswords holds the password itself.
                        "password": "$argon2id$held-in-memory-by-the-conformance-kit",
                        "signature": settings.signature,
                        "secret": account.secret,
                    }
                ],
                "deadlines": deadlines,
            }
        )
        self.settings = settings
        self.park = account.park_code
        self.clock = clock
        self.exchanges: list[Exchange] = []
        self.journal = MemoryJournal()
        self.sessions = Sessions(clock, settings.zone)
        self.repeats = repeats if repeats is not None else Repeats(clock)
        self.passwords = PlainPasswords(account.password)
        self.handler = RecordingUplinkHandler(
            recorder=self.exchanges,
            clock=clock,
            config=self.config,
            journal=self.journal,
            sessions=self.sessions,
            repeats=self.repeats,
            totals=ParkTotals(),
            passwords=self.passwords,
            queries=PaidQueries(),
        )
        self.downlinks = RecordingDownlinks(
            recorder=self.exchanges,
            config=self.config,
            sessions=self.sessions,
            passwords=self.passwords,
            journal=self.journal,
            clock=clock,
            deadlines=self.config.deadlines,
        )

    def uplink_endpoint(self) -> UplinkEndpoint:
        """The HTTP uplink (`POST /uplink`, `POST /uplink/{code}`) to serve, on an `UplinkSite`."""
        return UplinkEndpoint(self.handler, self.config.uplink.max_body_bytes)

    def start(self) -> None:
        """Start the downlink's idle sweep."""
        self.downlinks.start()

    def stop(self) -> None:
        """Stop the sweep and close the lot's connections."""
        self.downlinks.stop()
        self.downlinks.disconnect_all("the conformance run is over")


Verdict = tuple[Outcome, str]


@define
class _Tally:
    """The messages of one uplink interface: how many, and the refusals (oprNum -> answer)."""

    messages: int = 0
    refused: dict[str, str] = field(factory=dict)
    accepted: set[str] = field(factory=set)


class LotRun:
    """One run of `cpmictl conformance lot`: send downlinks once bound, judge at the end."""

    def __init__(
        self,
        *,
        platform: ReferencePlatform,
        clock: IReactorTime,
        report: Report,
        operator: Callable[[str], object] = print,
    ) -> None:
        self.platform = platform
        self.report = report
        self._clock = clock
        self._operator = operator
        self._checks = {check.name: check for check in lot_checks()}
        self._started = clock.seconds()
        self._bound_waiters: list[Deferred[None]] = []
        self._stopped = False
        self._end: Deferred[None] = Deferred()
        rng = random.Random(platform.settings.seed)
        self._traffic = Traffic(Layout.generate(platform.park, rng), rng, platform.settings.zone)
        platform.downlinks.bound_listeners.append(self._bound)

    def _now(self) -> float:
        return self._clock.seconds()

    def _add(self, name: str, verdict: Verdict, started: float | None = None) -> None:
        outcome, reason = verdict
        seconds = 0.0 if started is None else max(0.0, self._now() - started)
        self.report.add(Row(self._checks[name], outcome, reason, seconds))

    def _bound(self, park: str) -> None:
        waiters, self._bound_waiters = self._bound_waiters, []
        for waiter in waiters:
            waiter.callback(None)

    def _when_bound(self) -> Deferred[None]:
        if self.platform.downlinks.state(self.platform.park).connected:
            return succeed(None)
        waiter: Deferred[None] = Deferred()
        self._bound_waiters.append(waiter)
        return waiter

    def stop(self) -> None:
        """End the run now (Ctrl-C): what is not done is reported SKIP."""
        if not self._stopped:
            self._stopped = True
            self._end.callback(None)
            for waiter in self._bound_waiters:
                waiter.callback(None)
            self._bound_waiters = []

    async def run(self) -> Report:
        """Run for the duration (or until every downlink is done and every uplink seen)."""
        timer = self._clock.callLater(self.platform.settings.duration, self.stop)
        downlinks = Deferred.fromCoroutine(self._downlinks())
        downlinks.addErrback(lambda failure: self._operator(f"sending downlinks failed: {failure.value}"))
        await self._end
        if timer.active():
            timer.cancel()
        self._judge()
        self.report.finish("the run ended before this was checked (was the lot connected?)")
        return self.report

    def _all_seen(self) -> bool:
        seen = {exchange.code for exchange in self.platform.exchanges}
        return all(check.code in seen for check in self.report.planned if check.group == "uplink")

    # --- downlinks -------------------------------------------------------

    def _scene(self) -> Scene:
        for exchange in reversed(self.platform.exchanges):
            if exchange.code == "carIn" and exchange.result_code == Result.OK.code:
                data = exchange.data if isinstance(exchange.data, dict) else {}
                return Scene(record_code=str(data.get("recordCode", "")), plate=str(data.get("carNum", "")))
        return Scene()

    async def _downlinks(self) -> None:
        await self._when_bound()
        if self._stopped:
            return
        await deferLater(self._clock, SETTLE, lambda: None)
        for interface in downlink_interfaces():
            while not self._stopped:
                await self._when_bound()
                if self._stopped:
                    return
                started = self._now()
                verdict = await self._downlink(interface)
                if verdict is not None:
                    self._add(f"downlink.{interface.code}", verdict, started)
                    break
                await deferLater(self._clock, 0.2, lambda: None)  # the lot went away: again once bound
        while not self._stopped:  # every downlink done: end as soon as every uplink was seen too
            if self._all_seen():
                self.stop()
                return
            await deferLater(self._clock, 1.0, lambda: None)

    async def _downlink(self, interface: Interface) -> Verdict | None:
        """Send one downlink and judge the REPLY; None when the lot went away first (sent again)."""
        downlinks = self.platform.downlinks
        code = interface.code
        data = downlink_sample(self._traffic, code, self._now(), self._scene())
        downlinks.last_reply = None
        bad_before = len(downlinks.bad_replies)
        try:
            answered: LotReply = await downlinks.command(self.platform.park, code, data)
        except NotConnected:
            return None
        except DeadlinePassed as error:
            bad = downlinks.bad_replies[bad_before:]
            if bad:
                return Outcome.FAIL, f"its REPLY was dropped: {bad[0][1]}"
            return Outcome.FAIL, f"no REPLY within the deadline ({error.deadline:g} s)"
        reply = downlinks.last_reply
        problems = []
        if reply is not None and lookup(reply.code) is not interface:
            problems.append(f"the REPLY's code {reply.code!r} is not {code!r}")
        bad = downlinks.bad_replies[bad_before:]
        if bad:
            problems.append(bad[0][1])
        result = Result.from_code(answered.result_code)
        if result is None:
            problems.append(f"resultCode {answered.result_code!r} is not one of table B.4 or CONTRACT §4")
        if interface.response and isinstance(answered.data, dict | list) and answered.data:
            try:
                validate(interface.response, answered.data)
            except FieldError as error:
                problems.append(f"its data is not valid: {error.message()}")
        if problems:
            return Outcome.FAIL, "; ".join(problems)
        message = f" {answered.result_message}" if answered.result_message else ""
        return Outcome.PASS, f"REPLY {answered.result_code}{message}"

    # --- the rules and the uplinks, at the end ---------------------------

    def _judge(self) -> None:
        exchanges = self.platform.exchanges
        http = [exchange for exchange in exchanges if exchange.via == "HTTP"]
        self._add("login", self._login(exchanges))
        self._add("signature", self._signature(exchanges))
        self._add("oprnum", self._oprnum(exchanges))
        self._add("repeat.limit", self._repeat_limit(http))
        self._add("heartbeat.interval", self._heartbeat_interval(exchanges))
        tallies: dict[str, _Tally] = {}
        for exchange in exchanges:
            if exchange.via == "TCP" and exchange.code != "heartbeat":
                continue  # a TCP login is judged by the bind
            tally = tallies.setdefault(exchange.code, _Tally())
            tally.messages += 1
            if exchange.via == "TCP" and exchange.signature_ok is False:
                tally.refused[exchange.opr] = "over TCP, with a wrong signature"
            elif exchange.via == "TCP" or exchange.result_code == Result.OK.code:
                tally.accepted.add(exchange.opr)
                tally.refused.pop(exchange.opr, None)
            elif exchange.opr not in tally.accepted:
                tally.refused[exchange.opr] = f"{exchange.result_code} {exchange.result_message}".strip()
        for check in self.report.planned:
            if check.group == "uplink":
                self._add(check.name, self._uplink(check, tallies.get(check.code)))
        self._tcp()

    def _login(self, exchanges: list[Exchange]) -> Verdict:
        logins = [exchange for exchange in exchanges if exchange.code == "login"]
        if any(exchange.result_code == Result.OK.code for exchange in logins):
            return Outcome.PASS, "logged in over HTTP"
        counters = self.platform.downlinks.counters
        tcp = [exchange for exchange in logins if exchange.via == "TCP"]
        if tcp and counters["binds"]:
            return Outcome.PASS, "logged in over TCP"
        if logins:
            refused = [e for e in logins if e.via == "HTTP"]
            why = f": {refused[-1].result_code} {refused[-1].result_message}" if refused else ""
            return Outcome.FAIL, f"{len(logins)} login attempts, none accepted{why}"
        if counters["binds"]:
            return Outcome.PASS, "bound with a token issued earlier"
        return Outcome.FAIL, "the lot never logged in during the run (is it pointed at this kit?)"

    def _signature(self, exchanges: list[Exchange]) -> Verdict:
        bad = [
            exchange
            for exchange in exchanges
            if exchange.result_code == Result.BAD_SIGNATURE.code or exchange.signature_ok is False
        ]
        bad_replies = self.platform.downlinks.bad_replies
        if bad or bad_replies:
            first = (
                f"{bad[0].code} oprNum {bad[0].opr} over {bad[0].via}"
                if bad
                else f"the REPLY to {bad_replies[0][0]}"
            )
            return (
                Outcome.FAIL,
                f"{_messages(len(bad) + len(bad_replies))} with a wrong signature, first: {first}",
            )
        if not exchanges:
            return Outcome.SKIP, "the lot sent nothing"
        return Outcome.PASS, f"{len(exchanges)} requests, every signature matches"

    def _oprnum(self, exchanges: list[Exchange]) -> Verdict:
        first: dict[tuple[str, str], object] = {}
        for exchange in exchanges:
            if not exchange.opr or exchange.code == "heartbeat":
                continue
            key = (exchange.via, exchange.opr)
            if key not in first:
                first[key] = exchange.data
            elif first[key] != exchange.data:
                return (
                    Outcome.FAIL,
                    f"oprNum {exchange.opr} was used for two different messages ({exchange.code})",
                )
        if not first:
            return Outcome.SKIP, "the lot sent no message with an oprNum"
        return Outcome.PASS, f"{len(first)} oprNums, each for one message"

    def _repeat_limit(self, http: list[Exchange]) -> Verdict:
        refused = [exchange for exchange in http if exchange.result_code == Result.TOO_MANY_REPEATS.code]
        if refused:
            return (
                Outcome.FAIL,
                f"oprNum {refused[0].opr} ({refused[0].code}) was sent more than 6 times in an hour",
            )
        counts: dict[str, int] = {}
        for exchange in http:
            if exchange.opr:
                counts[exchange.opr] = counts.get(exchange.opr, 0) + 1
        if not counts:
            return Outcome.SKIP, "the lot sent nothing over HTTP"
        return Outcome.PASS, f"at most {max(counts.values()) - 1} repeats of one oprNum"

    def _heartbeat_interval(self, exchanges: list[Exchange]) -> Verdict:
        times = [exchange.at for exchange in exchanges if exchange.code == "heartbeat"]
        lasted = self._now() - self._started
        if len(times) >= 2:
            gap = max(later - earlier for earlier, later in itertools.pairwise(times))
            if gap > HEARTBEAT_MAX + HEARTBEAT_SLACK:
                return Outcome.FAIL, f"{gap:.0f} s between two heartbeats (at most 60 s, 5.1.8)"
        else:
            gap = 0.0
        if lasted < HEARTBEAT_MAX + HEARTBEAT_SLACK:
            return Outcome.SKIP, f"the run lasted {lasted:.0f} s: too short to judge a 60 s interval"
        if not times or self._now() - times[-1] > HEARTBEAT_MAX + HEARTBEAT_SLACK:
            return Outcome.FAIL, "no heartbeat in the last minute of the run"
        return Outcome.PASS, f"{len(times)} heartbeats, at most {gap:.0f} s apart"

    def _uplink(self, check: Check, tally: _Tally | None) -> Verdict:
        if tally is None:
            return Outcome.SKIP, f"the lot sent no {check.code} during the run"
        if tally.refused:
            opr, why = next(iter(tally.refused.items()))
            count = _messages(tally.messages)
            return Outcome.FAIL, f"{len(tally.refused)} of {count} refused; oprNum {opr}: {why}"
        return Outcome.PASS, f"{_messages(tally.messages)}, all accepted"

    def _tcp(self) -> None:
        downlinks = self.platform.downlinks
        counters = downlinks.counters
        if not counters["connections"]:
            for name in ("tcp.bind", "tcp.frames", "tcp.heartbeat-reply"):
                self._add(name, (Outcome.SKIP, "the lot never connected to the TCP downlink"))
            return
        if counters["binds"]:
            self._add(
                "tcp.bind",
                (Outcome.PASS, f"{counters['connections']} connections, {counters['binds']} binds"),
            )
        else:
            self._add("tcp.bind", (Outcome.FAIL, f"{counters['connections']} connections, none bound"))
        if downlinks.oversize:
            self._add("tcp.frames", (Outcome.FAIL, f"{downlinks.oversize} frames over max_frame_bytes"))
        elif downlinks.malformed:
            self._add(
                "tcp.frames",
                (Outcome.FAIL, f"{len(downlinks.malformed)} malformed: {downlinks.malformed[0]}"),
            )
        else:
            garbage = (
                f"; {counters['garbage_bytes']} bytes outside frames skipped"
                if counters["garbage_bytes"]
                else ""
            )
            self._add(
                "tcp.frames", (Outcome.PASS, f"{counters['frames_in']} frames, all well formed{garbage}")
            )
        sent = counters["heartbeats_out"]
        if not sent:
            reason = (
                f"the platform sent no heartbeat request (write_idle {self.platform.settings.write_idle} s)"
            )
            self._add("tcp.heartbeat-reply", (Outcome.SKIP, reason))
        elif downlinks.heartbeat_replies:
            self._add(
                "tcp.heartbeat-reply", (Outcome.PASS, f"{downlinks.heartbeat_replies} of {sent} replied")
            )
        else:
            self._add(
                "tcp.heartbeat-reply", (Outcome.FAIL, f"none of {sent} heartbeat requests was replied to")
            )


def _messages(count: int) -> str:
    return f"{count} message" if count == 1 else f"{count} messages"

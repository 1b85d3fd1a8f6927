"""`cpmictl conformance platform`: the kit acts as a lot against a T/CPMI 002 platform.

`PlatformRun` runs the checks of `checks.platform_checks()` in order, one row
each: login and tokens, signatures, every uplink (valid, then invalid), repeats,
then on the TCP downlink the binds, framing and escaping, the idle timers, and
every downlink interface, triggered through the command API (CONTRACT §6) when
one is given, otherwise by a human operator told what to trigger. The lot's
side of the protocol is the simulator's (`gateway.client`), its
answers to downlinks the simulator's `LotModel`.

The HTTP client, the clock and the TCP endpoint are passed in.
"""

from __future__ import annotations

import functools
import itertools
import json
import random
import secrets
from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

import treq
from attrs import define, field, frozen
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.http_headers import Headers

from gateway.conformance.checks import FIELD_ERRORS, Check, invalid_field, platform_checks
from gateway.conformance.report import Outcome, Report, Row
from gateway.conformance.samples import Scene, downlink_sample, invalid_variant, uplink_sample
from gateway.conformance.wire import Frame, FrameProbe, connect_probe
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkClient, DownlinkReply
from gateway.lotclient.uplink import HTTPRequester, UplinkClient
from gateway.protocol.catalog import DeliveryClass, Interface, lookup
from gateway.protocol.envelope import EnvelopeError, Request, parse_request, request_text
from gateway.protocol.envelope import Reply as Response
from gateway.protocol.framing import encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign, signature_matches
from gateway.protocol.validation import FieldError, validate
from gateway.simulator.lot import LotModel
from gateway.simulator.traffic import Layout, Traffic

__all__ = ["PlatformRun", "PlatformTarget", "plan"]

Verdict = tuple[Outcome, str]
OK = Result.OK.code
TOKEN_INVALID = Result.TOKEN_INVALID.code
BAD_SIGNATURE = Result.BAD_SIGNATURE.code
BAD_CREDENTIALS = Result.BAD_CREDENTIALS.code
TOO_MANY_REPEATS = Result.TOO_MANY_REPEATS.code
# What a platform may answer a valid autoPay with besides 0000: the standard's
# business refusals (B.4: no record, no online order, not registered, not a member).
QUERY_REFUSALS = frozenset({"9101", "9103", "9111", "9112", "9501"})
REPEATS_ALLOWED = 5
ESCAPED_VALUE = "G$1#2*3"
"""A gate code holding the three characters the framing escapes."""


def _pass(reason: str) -> Verdict:
    return Outcome.PASS, reason


def _fail(reason: str) -> Verdict:
    return Outcome.FAIL, reason


def _skip(reason: str) -> Verdict:
    return Outcome.SKIP, reason


def plan(only: tuple[str, ...] = ()) -> tuple[Check, ...]:
    """The checks a run makes: all, or those whose name starts with one of `only`."""
    checks = platform_checks()
    if not only:
        return checks
    return tuple(check for check in checks if any(check.name.startswith(prefix) for prefix in only))


@frozen
class PlatformTarget:
    """The platform under test and how far to go: its addresses, the lot's account, the waits.

    `read_idle`/`write_idle` are the platform's configured idle timers (B.3.4),
    checked when given and at most `idle_wait` seconds; `wait` is how long a
    downlink triggered by a human may take; `timeout` bounds every exchange.
    """

    uplink_url: str
    credentials: LotCredentials
    api_url: str = ""
    api_token: str = ""
    wait: float = 60.0
    timeout: float = 10.0
    read_idle: float | None = None
    write_idle: float | None = None
    idle_wait: float = 120.0
    max_frame_bytes: int = 2**20
    expired_token: str = ""
    only: tuple[str, ...] = ()
    seed: int = 2018
    zone: ZoneInfo = field(factory=lambda: ZoneInfo("Asia/Shanghai"))


@define
class _Ack:
    """A downlink ACK as the kit's lot saw it: the payload as framed, the parsed request, the reply."""

    payload: bytes
    request: Request | None = None
    error: str = ""
    reply: DownlinkReply | None = None


def _escapes_missing(payload: bytes) -> list[str]:
    return [char for char in ("$", "#", "*") if char.encode() in payload]


class PlatformRun:
    """One conformance run against a platform; `run` fills the report and returns it."""

    def __init__(
        self,
        *,
        target: PlatformTarget,
        http: HTTPRequester,
        clock: IReactorTime,
        report: Report,
        downlink: Callable[[], IStreamClientEndpoint] | None = None,
        operator: Callable[[str], object] = print,
    ) -> None:
        self.target = target
        self.report = report
        self._http = http
        self._clock = clock
        self._downlink = downlink
        self._operator = operator
        self._secret = target.credentials.secret
        self._wanted = {check.name for check in report.planned}
        self._checks = {check.name: check for check in platform_checks()}
        self.uplink = UplinkClient(
            http=http,
            url=target.uplink_url,
            credentials=target.credentials,
            clock=clock,
            timeout=target.timeout,
            relogin=False,
            opr_prefix=f"cpmi-{secrets.token_hex(4)}",
        )
        self.token = ""
        self.park = target.credentials.park_code
        self._rng = random.Random(target.seed)
        self._traffic: Traffic | None = None
        self._model: LotModel | None = None
        self._acks: dict[str, _Ack] = {}
        self._ack_waiters: dict[str, Deferred[_Ack | None]] = {}
        self._lot: DownlinkClient | None = None

    # --- running ---------------------------------------------------------

    def _now(self) -> float:
        return self._clock.seconds()

    def _any(self, prefix: str) -> bool:
        return any(name.startswith(prefix) for name in self._wanted)

    def _add(self, name: str, verdict: Verdict, started: float) -> None:
        if name in self._wanted:
            outcome, reason = verdict
            self.report.add(Row(self._checks[name], outcome, reason, max(0.0, self._now() - started)))

    async def _check(
        self, name: str, body: Callable[[], Awaitable[Verdict]], always: bool = False
    ) -> Verdict:
        """Run one check (only when planned, unless `always`), turning an error into its FAIL row."""
        if name not in self._wanted and not always:
            return _skip("not planned")
        started = self._now()
        try:
            verdict = await body()
        except Exception as error:
            verdict = _fail(f"no usable answer: {_describe(error)}")
        self._add(name, verdict, started)
        return verdict

    async def run(self) -> Report:
        """Run every planned check; the report's rows, with a SKIP for any check not reached."""
        try:
            await self._check("login.accepted", self._login_accepted, always=True)
            if not self.token:
                self.report.finish("skipped: the lot could not log in (see login.accepted)")
                return self.report
            self._world()
            await self._check("login.refused", self._login_refused)
            await self._check("token.unknown", self._token_unknown)
            await self._check("token.revoked", self._token_revoked)
            await self._check("token.expired", self._token_expired)
            await self._check("signature.missing", self._signature_missing)
            await self._check("signature.wrong", self._signature_wrong)
            await self._check("signature.as-written", self._signature_as_written)
            for check in platform_checks():
                if check.group == "uplink":
                    await self._check(check.name, functools.partial(self._uplink, check.code))
            for check in platform_checks():
                if check.group == "invalid":
                    await self._check(check.name, functools.partial(self._invalid, check.code))
            if self._any("repeat."):
                await self._guard(self._repeats, "repeat.")
            if self._downlink is None:
                self.report.finish("skipped: no --downlink given, so no TCP checks")
                return self.report
            if any(name.startswith("tcp.") and name != "tcp.escaped-out" for name in self._wanted):
                await self._guard(self._tcp, "tcp.")
            if self._any("idle."):
                await self._guard(self._idle, "idle.")
            if self._any("downlink.") or "tcp.escaped-out" in self._wanted:
                await self._guard(self._downlinks, "downlink.", "tcp.escaped-out")
        finally:
            if self._lot is not None:
                await self._lot.stop()
        self.report.finish()
        return self.report

    async def _guard(self, group: Callable[[], Awaitable[None]], *names: str) -> None:
        """Run a group of checks; if it breaks off (the platform went away), its checks still
        without a row FAIL with the error."""
        started = self._now()
        try:
            await group()
        except Exception as error:
            for check in self.report.planned:
                if check.name.startswith(names) and not self.report.done(check.name):
                    self._add(check.name, _fail(f"could not be run: {_describe(error)}"), started)

    def _world(self) -> None:
        """The lot the kit plays: its layout, traffic and (for the downlinks' answers) its cars."""
        zone = self.target.zone
        self._traffic = Traffic(Layout.generate(self.park, self._rng), self._rng, zone)
        self._model = LotModel(self._traffic, self._rng, zone)
        self._model.populate(self._now(), 0.05)

    @property
    def traffic(self) -> Traffic:
        """The lot's message writer."""
        assert self._traffic is not None
        return self._traffic

    # --- HTTP helpers ----------------------------------------------------

    def _problems(self, response: Response, code: str, opr: str, token: str) -> list[str]:
        """What is wrong with a response envelope's header: code, oprNum, signature (on 0000)."""
        problems = []
        if lookup(response.code) is not lookup(code):
            problems.append(f"its code {response.code!r} is not {code!r}")
        if response.opr != opr:
            problems.append(f"its oprNum {response.opr!r} does not echo {opr!r}")
        if response.ok and not response.signed_by(token, self._secret):
            problems.append(f"its signature {response.signature!r} does not sign its data (B.3.7)")
        return problems

    def _data_problem(self, interface: Interface, data: object) -> str:
        if not interface.response or not isinstance(data, dict | list) or not data:
            return ""
        try:
            validate(interface.response, data)
        except FieldError as error:
            return f"its data is not valid: {error.message()}"
        return ""

    async def _send(self, code: str, data: object, token: str | None = None) -> tuple[Response, str]:
        opr = self.uplink.new_opr()
        response = await self.uplink.post(code, data, token=self.token if token is None else token, opr=opr)
        return response, opr

    @staticmethod
    def _said(response: Response) -> str:
        message = f" {response.result_message}" if response.result_message else ""
        return f"{response.result_code}{message}"

    # --- login and tokens ------------------------------------------------

    def _credentials(self, password: str | None = None) -> dict[str, str]:
        account = self.target.credentials
        return {
            "parkUserName": account.username,
            "parkUserPwd": account.password if password is None else password,
        }

    async def _login(self) -> tuple[Response, str]:
        return await self._send("login", self._credentials(), token="")

    async def _login_accepted(self) -> Verdict:
        response, opr = await self._login()
        if not response.ok:
            return _fail(f"login answered {self._said(response)}")
        data = response.data if isinstance(response.data, dict) else {}
        token = str(data.get("token") or "")
        problems = self._problems(response, "login", opr, "")
        if len(token) != 32:
            problems.append(f"the token {token!r} is not 32 characters (B.2.3.2)")
        if data.get("parkCode"):
            self.park = str(data["parkCode"])
        elif not self.park:
            problems.append("no parkCode in the answer, and no --park given")
        if token:
            self.token = token
        if problems:
            return _fail("; ".join(problems))
        return _pass(f"token issued for park {self.park}")

    async def _login_refused(self) -> Verdict:
        response, _ = await self._send("login", self._credentials(f"{secrets.token_hex(6)}-wrong"), token="")
        if response.result_code == BAD_CREDENTIALS:
            return _pass(f"refused: {self._said(response)}")
        if response.ok:
            return _fail("a wrong password was accepted")
        return _fail(f"refused with {self._said(response)}, not 9003 (B.4)")

    async def _expect_token_refused(self, token: str, what: str) -> Verdict:
        response, _ = await self._send("heartbeat", {}, token=token)
        if response.result_code == TOKEN_INVALID:
            return _pass(f"{what}: {self._said(response)}")
        if response.ok:
            return _fail(f"{what} was accepted")
        return _fail(f"{what} was refused with {self._said(response)}, not 9000 (B.3.6)")

    async def _token_unknown(self) -> Verdict:
        return await self._expect_token_refused(secrets.token_hex(16), "an unknown token")

    async def _token_revoked(self) -> Verdict:
        first = self.token
        response, _ = await self._login()
        if not response.ok or not isinstance(response.data, dict):
            return _fail(f"the second login answered {self._said(response)}")
        self.token = str(response.data.get("token") or "")
        if self.token == first:
            return _fail("the second login returned the same token")
        verdict = await self._expect_token_refused(first, "the first token after a second login")
        if verdict[0] is not Outcome.PASS:
            return verdict
        fresh, _ = await self._send("heartbeat", {})
        if not fresh.ok:
            return _fail(f"the new token was refused: {self._said(fresh)}")
        return verdict

    async def _token_expired(self) -> Verdict:
        if not self.target.expired_token:
            return _skip(
                "tokens live until the end of the month; give --expired-token with a token the "
                "platform issued that has expired since"
            )
        return await self._expect_token_refused(self.target.expired_token, "the expired token")

    # --- signatures ------------------------------------------------------

    def _free_space(self) -> object:
        return uplink_sample(self.traffic, "freeSpace", self._now())

    async def _post_signed(self, data_text: str, signature: str) -> Response:
        opr = self.uplink.new_opr()
        text = '{"token":%s,"code":"freeSpace","oprNum":%s,"signature":%s,"data":%s}' % (
            compact(self.token),
            compact(opr),
            compact(signature),
            data_text,
        )
        return await self.uplink.post_text(text)

    async def _expect_bad_signature(self, signature: str, what: str) -> Verdict:
        response = await self._post_signed(compact(self._free_space()), signature)
        if response.result_code == BAD_SIGNATURE:
            return _pass(f"refused: {self._said(response)}")
        if response.ok:
            return _fail(f"a request {what} was accepted (is the lot's signature mode 'required'?)")
        return _fail(f"a request {what} was refused with {self._said(response)}, not 9006")

    async def _signature_missing(self) -> Verdict:
        return await self._expect_bad_signature("", "without a signature")

    async def _signature_wrong(self) -> Verdict:
        data_text = compact(self._free_space())
        return await self._expect_bad_signature(
            sign(data_text + " ", self.token, self._secret), "wrongly signed"
        )

    async def _signature_as_written(self) -> Verdict:
        data_text = json.dumps(self._free_space(), ensure_ascii=False, separators=(", ", ": "))
        response = await self._post_signed(data_text, sign(data_text, self.token, self._secret))
        if response.ok:
            return _pass("accepted")
        return _fail(f"refused with {self._said(response)}")

    # --- uplinks ---------------------------------------------------------

    async def _uplink(self, code: str) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        started = self._now()
        response, opr = await self._send(code, uplink_sample(self.traffic, code, started))
        took = self._now() - started
        problems = self._problems(response, code, opr, self.token)
        if response.ok:
            problem = self._data_problem(interface, response.data)
            if problem:
                problems.append(problem)
        elif interface.uplink is DeliveryClass.QUERY and response.result_code in QUERY_REFUSALS:
            pass
        else:
            problems.insert(0, f"a valid message was answered {self._said(response)}")
        if problems:
            return _fail("; ".join(problems))
        if interface.uplink is DeliveryClass.QUERY:
            return _pass(
                f"answered {self._said(response)} in {took:.2f} s (deadline {interface.deadline:g} s)"
            )
        if code == "heartbeat" and isinstance(response.data, dict) and response.data.get("time"):
            return _pass(f"0000, platform time {response.data['time']}")
        return _pass("0000, signed")

    async def _invalid(self, code: str) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        change = invalid_field(interface)
        assert change is not None
        data = invalid_variant(uplink_sample(self.traffic, code, self._now()), change)
        response, _ = await self._send(code, data)
        name = change.field.name
        if response.ok:
            return _fail(f"a message with {change.describe()} was accepted")
        if response.result_code not in FIELD_ERRORS:
            return _fail(f"{change.describe()}: refused with {self._said(response)}, not 9010 (or 9002)")
        if name not in response.result_message:
            return _fail(f"{change.describe()}: refused {response.result_code} without naming {name}")
        return _pass(f"{change.describe()}: {self._said(response)}")

    # --- repeats (B.2.3.6) ---------------------------------------------

    async def _repeats(self) -> None:
        started = self._now()
        opr = self.uplink.new_opr()
        data = self._free_space()
        first = await self.uplink.post("freeSpace", data, token=self.token, opr=opr)
        if not first.ok:
            verdict = _fail(f"the first message was answered {self._said(first)}")
            self._add("repeat.first-answer", verdict, started)
            self._add("repeat.limit", _skip("the first message was not accepted"), started)
            return
        # The first repeat carries a message the platform would refuse: answered 0000
        # only when the platform gives the first answer instead of processing it again.
        spoiled = (
            {key: value for key, value in data.items() if key != "emptyNum"} if isinstance(data, dict) else {}
        )
        verdict = _pass(f"{REPEATS_ALLOWED} repeats of oprNum {opr} got the first answer, unprocessed")
        for repeat in range(1, REPEATS_ALLOWED + 1):
            answer = await self.uplink.post(
                "freeSpace", spoiled if repeat == 1 else data, token=self.token, opr=opr
            )
            if answer.result_code != first.result_code or answer.result_message != first.result_message:
                what = "was processed again" if repeat == 1 else "did not get the first answer"
                verdict = _fail(
                    f"repeat {repeat} of oprNum {opr} {what}: answered {self._said(answer)}, "
                    f"the first answer was {self._said(first)}"
                )
                break
        self._add("repeat.first-answer", verdict, started)
        started = self._now()
        answer = await self.uplink.post("freeSpace", data, token=self.token, opr=opr)
        if answer.result_code == TOO_MANY_REPEATS:
            self._add("repeat.limit", _pass(f"repeat {REPEATS_ALLOWED + 1}: {self._said(answer)}"), started)
        else:
            reason = (
                f"repeat {REPEATS_ALLOWED + 1} within the hour was answered {self._said(answer)}, not 9007"
            )
            self._add("repeat.limit", _fail(reason), started)

    # --- TCP: binds and framing ------------------------------------------

    async def _probe(self) -> FrameProbe:
        assert self._downlink is not None
        return await connect_probe(self._downlink(), self._clock)

    def _frame_problems(self, frame: Frame | None, code: str, token: str) -> list[str]:
        """What is wrong with an answer frame: none, not 0000, not signed."""
        if frame is None:
            return ["no answer"]
        if frame.get("resultCode") != OK:
            return [f"answered {frame.get('resultCode')} {frame.get('resultMessage', '')}".rstrip()]
        problems = []
        if lookup(str(frame.get("code", ""))) is not lookup(code):
            problems.append(f"its code {frame.get('code')!r} is not {code!r}")
        data = frame.get("data")
        if not signature_matches(str(frame.get("signature", "")), compact(data), data, token, self._secret):
            problems.append("its signature does not sign its data (B.3.7)")
        return problems

    async def _heartbeat_on(
        self, probe: FrameProbe, data: object | None = None
    ) -> tuple[Frame | None, list[str]]:
        opr = self.uplink.new_opr()
        probe.request("heartbeat", opr, self.token, self._secret, {} if data is None else data)
        answer = await probe.answer_to(opr, self.target.timeout)
        return answer, self._frame_problems(answer, "heartbeat", self.token)

    async def _bind_login(self) -> tuple[Verdict, FrameProbe]:
        probe = await self._probe()
        opr = self.uplink.new_opr()
        probe.request("login", opr, "", self._secret, self._credentials())
        answer = await probe.answer_to(opr, self.target.timeout)
        problems = self._frame_problems(answer, "login", "")
        if answer is not None and answer.get("resultCode") == OK:
            data = answer.get("data") if isinstance(answer.get("data"), dict) else {}
            token = str(data.get("token") or "") if isinstance(data, dict) else ""
            if len(token) != 32:
                problems.append(f"the token {token!r} is not 32 characters")
            else:
                self.token = token  # the HTTP token is replaced now (B.3.5)
        if problems:
            closed = " (the connection was closed)" if probe.lost else ""
            return _fail("login frame: " + "; ".join(problems) + closed), probe
        return _pass("bound; a token was issued"), probe

    async def _tcp(self) -> None:
        started = self._now()
        verdict, first = await self._bind_login()
        self._add("tcp.bind-login", verdict, started)

        started = self._now()
        bound = await self._probe()
        _, problems = await self._heartbeat_on(bound)
        if problems:
            self._add("tcp.bind-heartbeat", _fail("heartbeat frame: " + "; ".join(problems)), started)
        else:
            self._add("tcp.bind-heartbeat", _pass("bound"), started)

        started = self._now()
        if verdict[0] is not Outcome.PASS:
            self._add("tcp.rebind", _skip("the login bind failed"), started)
        elif await first.closed_within(self.target.timeout):
            self._add("tcp.rebind", _pass("the connection bound by login was closed"), started)
        else:
            reason = f"the older connection was still open {self.target.timeout:g} s after a new bind"
            self._add("tcp.rebind", _fail(reason), started)
        first.close()

        await self._check("tcp.bind-required", self._bind_required)
        await self._check("tcp.bad-token", self._bad_token)
        if bound.lost:
            bound = await self._probe()
            await self._heartbeat_on(bound)
        await self._check("tcp.heartbeat", lambda: self._bound_heartbeat(bound))
        await self._check("tcp.escaped-in", lambda: self._escaped_in(bound))
        await self._check("tcp.split", lambda: self._split(bound))
        await self._check("tcp.batch", lambda: self._batch(bound))
        await self._check("tcp.garbage", lambda: self._garbage(bound))
        await self._check("tcp.oversize", lambda: self._oversize(bound))
        bound.close()

    async def _bind_required(self) -> Verdict:
        probe = await self._probe()
        opr = self.uplink.new_opr()
        probe.request("freeSpace", opr, self.token, self._secret, self._free_space())
        answer = await probe.answer_to(opr, self.target.timeout)
        closed = await probe.closed_within(self.target.timeout if answer is None else 1.0)
        probe.close()
        if answer is not None and answer.get("resultCode") == OK:
            return _fail("a freeSpace frame on an unbound connection was accepted")
        said = f"answered {answer.get('resultCode')}" if answer is not None else "no answer"
        if answer is None and not closed:
            return _fail(f"neither answered nor closed within {self.target.timeout:g} s")
        return _pass(f"{said}; {'closed' if closed else 'kept open, unbound'}")

    async def _bad_token(self) -> Verdict:
        probe = await self._probe()
        opr = self.uplink.new_opr()
        probe.request("heartbeat", opr, secrets.token_hex(16), self._secret, {})
        answer = await probe.answer_to(opr, self.target.timeout)
        probe.close()
        if answer is None:
            return _fail(f"no answer within {self.target.timeout:g} s")
        if answer.get("resultCode") != TOKEN_INVALID:
            return _fail(f"answered {answer.get('resultCode')}, not 9000")
        return _pass("answered 9000")

    async def _bound_heartbeat(self, probe: FrameProbe) -> Verdict:
        answer, problems = await self._heartbeat_on(probe)
        if problems:
            return _fail("; ".join(problems))
        data = answer.get("data") if answer is not None else None
        time = f", platform time {data['time']}" if isinstance(data, dict) and data.get("time") else ""
        return _pass(f"0000{time}")

    async def _escaped_in(self, probe: FrameProbe) -> Verdict:
        _, problems = await self._heartbeat_on(probe, {"remark": "$ # * $$ ## **"})
        if problems:
            return _fail("a heartbeat with escaped $ # * in its data: " + "; ".join(problems))
        return _pass("answered 0000: unescaped, signature checked over the JSON")

    async def _split(self, probe: FrameProbe) -> Verdict:
        opr = self.uplink.new_opr()
        frame = encode_json_frame(request_text("heartbeat", opr, self.token, self._secret, {}))
        cuts = (0, 1, len(frame) // 2, len(frame) - 1, len(frame))
        for start, end in itertools.pairwise(cuts):
            probe.write(frame[start:end])
            await deferLater(self._clock, 0.05, lambda: None)
        answer = await probe.answer_to(opr, self.target.timeout)
        problems = self._frame_problems(answer, "heartbeat", self.token)
        return _fail("; ".join(problems)) if problems else _pass("a frame in 4 pieces was answered")

    async def _answered_all(self, probe: FrameProbe, oprs: list[str]) -> list[str]:
        missing = []
        for opr in oprs:
            if self._frame_problems(await probe.answer_to(opr, self.target.timeout), "heartbeat", self.token):
                missing.append(opr)
        return missing

    async def _batch(self, probe: FrameProbe) -> Verdict:
        oprs = [self.uplink.new_opr() for _ in range(3)]
        probe.write(
            b"".join(
                encode_json_frame(request_text("heartbeat", opr, self.token, self._secret, {}))
                for opr in oprs
            )
        )
        missing = await self._answered_all(probe, oprs)
        if missing:
            return _fail(f"{len(missing)} of 3 frames sent in one write were not answered 0000")
        return _pass("3 frames in one write, 3 answers")

    async def _garbage(self, probe: FrameProbe) -> Verdict:
        oprs = [self.uplink.new_opr() for _ in range(2)]
        frames = [
            encode_json_frame(request_text("heartbeat", opr, self.token, self._secret, {})) for opr in oprs
        ]
        probe.write(b"\r\nnoise #" + frames[0] + b'{"not":"a frame"}\n' + frames[1])
        missing = await self._answered_all(probe, oprs)
        if missing:
            return _fail(f"{len(missing)} of 2 frames among garbage bytes were not answered 0000")
        return _pass("garbage skipped, both frames answered")

    async def _oversize(self, probe: FrameProbe) -> Verdict:
        limit = self.target.max_frame_bytes
        size = limit + 1024
        probe.write(b'$${"code":"heartbeat","data":{"x":"' + b"a" * size + b'"}}##*')
        if await probe.closed_within(self.target.timeout):
            return _pass(f"closed after a frame of more than {size} bytes (limit {limit})")
        return _fail(f"a frame of more than {size} bytes (max_frame_bytes {limit}) left the connection open")

    # --- TCP: idle timers (B.3.4) ----------------------------------------

    async def _idle(self) -> None:
        started = self._now()
        write_idle, read_idle = self.target.write_idle, self.target.read_idle
        wanted: dict[str, float] = {}
        for name, value, option in (
            ("idle.write", write_idle, "--write-idle"),
            ("idle.read", read_idle, "--read-idle"),
        ):
            if value is None or value <= 0:
                reason = (
                    f"give {option} with the platform's {name[5:]}_idle to check it (it may take minutes)"
                )
                self._add(name, _skip(reason), started)
            elif value > self.target.idle_wait:
                self._add(name, _skip(f"{name[5:]}_idle {value:g} s is longer than --idle-wait"), started)
            else:
                wanted[name] = value
        if not wanted:
            return
        probe = await self._probe()
        _, problems = await self._heartbeat_on(probe)
        if problems:
            for name in wanted:
                self._add(name, _fail("could not bind: " + "; ".join(problems)), started)
            probe.close()
            return
        quiet_since = self._now()
        longest = max(wanted.values())
        request = probe.expect(
            lambda frame: frame.get("code") == "heartbeat" and "resultCode" not in frame,
            _slack(wanted.get("idle.write", 0.0)),
            seen=False,
        )
        closed = probe.closed_within(_slack(longest))
        asked = await request
        asked_after = self._now() - quiet_since
        if "idle.write" in wanted:
            value = wanted["idle.write"]
            if asked is not None:
                verdict = _pass(
                    f"a heartbeat request came after {asked_after:.1f} s (write_idle {value:g} s)"
                )
            elif probe.lost:
                verdict = _fail(f"closed after {asked_after:.1f} s without a heartbeat request")
            else:
                verdict = _fail(f"no heartbeat request within {_slack(value):.1f} s (write_idle {value:g} s)")
            self._add("idle.write", verdict, quiet_since)
        if "idle.read" in wanted:
            value = wanted["idle.read"]
            lost = await closed
            after = self._now() - quiet_since
            if not lost:
                verdict = _fail(f"still open {after:.1f} s after the lot fell silent (read_idle {value:g} s)")
            elif after < value - 1.0:
                verdict = _fail(f"closed after {after:.1f} s, before read_idle ({value:g} s)")
            else:
                verdict = _pass(f"closed after {after:.1f} s of silence (read_idle {value:g} s)")
            self._add("idle.read", verdict, quiet_since)
        probe.close()

    # --- downlinks -------------------------------------------------------

    def _observe(self, payload: bytes) -> None:
        """Every frame the kit's lot receives: ACKs are kept (as framed) for their checks."""
        try:
            message = json.loads(payload.decode("utf-8"))
        except ValueError:
            return
        if not isinstance(message, dict) or "resultCode" in message or message.get("code") == "heartbeat":
            return
        interface = lookup(str(message.get("code", "")))
        code = interface.code if interface is not None else str(message.get("code", ""))
        ack = _Ack(payload)
        try:
            ack.request = parse_request(payload.decode("utf-8"))
        except EnvelopeError as error:
            ack.error = error.detail
        if ack.request is not None:
            self._acks[ack.request.opr] = ack
        waiter = self._ack_waiters.pop(code, None)
        if waiter is not None:
            waiter.callback(ack)

    def _answer(self, request: Request) -> DownlinkReply:
        """The lot's REPLY: the simulator's lot model decides it."""
        assert self._model is not None
        interface = lookup(request.code)
        code = interface.code if interface is not None else request.code
        reply = self._model.answer(code, request.data, self._now()).reply
        ack = self._acks.get(request.opr)
        if ack is not None:
            ack.reply = reply
        return reply

    def _await_ack(self, code: str, timeout: float) -> Deferred[_Ack | None]:
        waiter: Deferred[_Ack | None] = Deferred()
        self._ack_waiters[code] = waiter

        def expired() -> None:
            if self._ack_waiters.get(code) is waiter:
                del self._ack_waiters[code]
                waiter.callback(None)

        call = self._clock.callLater(timeout, expired)

        def arrived(result: _Ack | None) -> _Ack | None:
            if call.active():
                call.cancel()
            return result

        waiter.addCallback(arrived)
        return waiter

    def _ack_problems(self, interface: Interface, ack: _Ack, sent: object | None) -> list[str]:
        raw = _escapes_missing(ack.payload)
        problems = (
            [f"raw {', '.join(repr(c) for c in raw)} inside the frame (must be escaped \\u00xx)"]
            if raw
            else []
        )
        request = ack.request
        if request is None:
            return [*problems, f"not a request envelope: {ack.error}"]
        if lookup(request.code) is not interface:
            problems.append(f"its code {request.code!r} is not {interface.code!r}")
        if not request.opr:
            problems.append("it has no oprNum")
        lot_token = self._lot.token if self._lot is not None else self.token
        if request.token != lot_token:
            problems.append("its token is not the one the connection was bound with")
        if not signature_matches(
            request.signature, request.data_text, request.data, request.token, self._secret
        ):
            problems.append("its signature does not sign its data (B.3.7)")
        try:
            received = validate(interface.request, request.data)
        except FieldError as error:
            problems.append(f"its data is not valid: {error.message()}")
            return problems
        expected = validate(interface.request, sent) if sent is not None else None
        if isinstance(received, dict) and isinstance(expected, dict):
            changed = [key for key, value in expected.items() if received.get(key) != value]
            if changed:
                problems.append(f"its data differs from what the API was given in {', '.join(changed)}")
        return problems

    async def _api(self, method: str, path: str, body: object | None = None) -> tuple[int, Any]:
        headers = Headers({"Authorization": [f"Bearer {self.target.api_token}"]})
        if body is not None:
            headers.setRawHeaders("Content-Type", ["application/json"])
        data = json.dumps(body, ensure_ascii=False).encode("utf-8") if body is not None else b""
        sent: Deferred[Any] = self._http.request(
            method, self.target.api_url.rstrip("/") + path, headers=headers, data=data
        )
        sent.addTimeout(self.target.timeout + 35.0, self._clock)
        response = await sent
        content = await treq.content(response)
        try:
            return int(response.code), json.loads(content)
        except ValueError:
            return int(response.code), content.decode("utf-8", "replace")[:200]

    async def _downlinks(self) -> None:
        assert self._downlink is not None and self._model is not None
        started = self._now()
        lot = DownlinkClient(
            endpoint=self._downlink(),
            clock=self._clock,
            credentials=self.target.credentials,
            answer=self._answer,
            token=lambda: self.token,
            heartbeat_interval=max(0.5, min(30.0, (self.target.read_idle or 180.0) / 3)),
            bind_timeout=self.target.timeout,
            on_frame=self._observe,
        )
        self._lot = lot
        lot.start()
        bound = lot.when_bound()
        bound.addTimeout(self.target.timeout, self._clock)
        try:
            await bound
        except Exception:
            reason = f"the kit's lot could not bind its downlink in {self.target.timeout:g} s"
            for check in self.report.planned:
                if check.group == "downlink" or check.name == "tcp.escaped-out":
                    self._add(check.name, _fail(reason), started)
            return
        if not self.target.api_url and self.target.wait <= 0:
            # Nobody is there to trigger them: say so at once rather than wait for each.
            reason = "needs --api, or --wait S to trigger each downlink by hand on the platform"
            for check in self.report.planned:
                if check.group == "downlink":
                    self._add(check.name, _skip(reason), started)
            await self._check("tcp.escaped-out", self._escaped_out)
            return
        if not self.target.api_url:
            self._operator(
                f"No --api given: trigger each downlink for park {self.park} from the platform when asked "
                f"(waiting up to {self.target.wait:g} s for each)."
            )
        record = self._model.random_record() or ""
        parked = self._model.parked(record)
        scene = Scene(record_code=record, plate=parked.car.car_num if parked else "")
        for check in platform_checks():
            if check.group == "downlink":
                await self._check(check.name, functools.partial(self._downlink_check, check.code, scene))
        await self._check("tcp.escaped-out", self._escaped_out)

    async def _downlink_check(
        self, code: str, scene: Scene, data: object | None = None, hint: str = ""
    ) -> Verdict:
        interface = lookup(code)
        assert interface is not None
        if data is None:
            data = downlink_sample(self.traffic, code, self._now(), scene)
        if not self.target.api_url:
            waiter = self._await_ack(code, self.target.wait)
            self._operator(f"→ trigger {code} ({interface.title}) for park {self.park} now")
            ack = await waiter
            if ack is None:
                return _skip(f"no {code} ACK within --wait {self.target.wait:g} s (nobody triggered it)")
            problems = self._ack_problems(interface, ack, None)
            if problems:
                return _fail("the ACK: " + "; ".join(problems))
            return _pass("ACK valid (without --api the platform's handling of the REPLY is not observable)")
        deadline = interface.deadline or 30.0
        waiter = self._await_ack(code, self.target.timeout + deadline)
        called = Deferred.fromCoroutine(self._api("POST", f"/v1/parks/{self.park}/commands/{code}", data))
        ack = await waiter
        if ack is None:
            try:
                status, body = await called
            except Exception as error:
                return _fail(f"no {code} ACK arrived; the API call failed: {_describe(error)}")
            return _fail(f"no {code} ACK arrived{hint}; the API answered {status} {_short(body)}")
        problems = self._ack_problems(interface, ack, data)
        status, body = await called
        if interface.downlink is DeliveryClass.COMMAND:
            problems += self._command_answer_problems(status, body, ack)
            return (
                _fail("; ".join(problems))
                if problems
                else _pass("ACK valid; the API returned the lot's REPLY")
            )
        if status != 202 or not isinstance(body, dict) or not isinstance(body.get("seq"), int):
            problems.append(f'the API answered {status} {_short(body)}, not 202 {{"seq": N}}')
        if problems:
            return _fail("; ".join(problems))
        return await self._sync_delivered()

    def _command_answer_problems(self, status: int, body: Any, ack: _Ack) -> list[str]:
        if status != 200 or not isinstance(body, dict):
            return [f"the API answered {status} {_short(body)}, not 200 with the lot's REPLY"]
        reply = ack.reply
        if reply is None:
            return []  # the kit's lot refused the ACK (a bad signature): already a problem above
        problems = []
        if body.get("resultCode") != reply.result_code:
            problems.append(
                f"the API's resultCode {body.get('resultCode')!r} is not the REPLY's {reply.result_code!r}"
            )
        if body.get("data") != json.loads(compact(reply.data)):
            problems.append("the API's data is not the REPLY's")
        return problems

    async def _sync_delivered(self) -> Verdict:
        """After a 0000 REPLY the platform's backlog for the lot empties (when the API lets us read it)."""
        deadline = self._now() + self.target.timeout
        while True:
            status, body = await self._api("GET", f"/v1/parks/{self.park}")
            if status != 200 or not isinstance(body, dict) or "backlog" not in body:
                return _pass("ACK valid, REPLY 0000 sent (the backlog is not readable: no 'read' role)")
            if body["backlog"] == 0:
                return _pass("ACK valid; after the lot's 0000 the backlog is empty")
            if self._now() >= deadline:
                return _fail(f"the backlog still holds {body['backlog']} entries after the lot's 0000 REPLY")
            await deferLater(self._clock, 0.1, lambda: None)

    async def _escaped_out(self) -> Verdict:
        if not self.target.api_url:
            return _skip("needs --api to send a gateState holding $, # and *")
        data = {"parkCode": self.park, "barCode": ESCAPED_VALUE}
        hint = " (a raw # breaks a frame: was it escaped?)"
        verdict = await self._downlink_check("gateState", Scene(), data, hint)
        if verdict[0] is Outcome.PASS:
            return _pass(f"barCode {ESCAPED_VALUE!r} went down escaped and came back in the REPLY")
        return verdict


def _slack(seconds: float) -> float:
    """How long past a timer's value the kit waits for it: its sweep may run a little later."""
    return seconds + 2.0 + seconds / 4


def _short(body: object) -> str:
    text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)
    return text if len(text) <= 120 else text[:117] + "..."


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

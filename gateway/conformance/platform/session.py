"""The state a platform run's checks share: the target, the report, the kit's lot and its token.

Each group of checks (``uplink``, ``tcp``, ``downlink``) holds the session and
asks it to send, to judge an answer's header, and to add rows.
"""

from __future__ import annotations

import random
import secrets
from collections.abc import Awaitable, Callable
from zoneinfo import ZoneInfo

from attrs import field, frozen
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from gateway.conformance.checks import platform_checks
from gateway.conformance.report import Outcome, Report, Row
from gateway.conformance.samples import uplink_sample
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkClient
from gateway.lotclient.uplink import HTTPRequester, UplinkClient
from gateway.protocol.catalog import Interface, lookup
from gateway.protocol.envelope import Reply as Response
from gateway.protocol.results import Result
from gateway.protocol.validation import FieldError, validate
from gateway.simulator.lot import LotModel
from gateway.simulator.traffic import Layout, Traffic

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


def passed(reason: str) -> Verdict:
    """A PASS row's verdict."""
    return Outcome.PASS, reason


def failed(reason: str) -> Verdict:
    """A FAIL row's verdict."""
    return Outcome.FAIL, reason


def skipped(reason: str) -> Verdict:
    """A SKIP row's verdict."""
    return Outcome.SKIP, reason


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


class PlatformSession:
    """What every group of checks shares: the target, the report, the lot's account and token, its world."""

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
        self.http = http
        self.clock = clock
        self.downlink = downlink
        self.operator = operator
        self.secret = target.credentials.secret
        self.wanted = {check.name for check in report.planned}
        self.checks = {check.name: check for check in platform_checks()}
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
        self.rng = random.Random(target.seed)
        self._traffic: Traffic | None = None
        self.model: LotModel | None = None
        self.lot: DownlinkClient | None = None

    def now(self) -> float:
        """The clock's time."""
        return self.clock.seconds()

    def wants(self, prefix: str) -> bool:
        """Whether any planned check's name starts with `prefix`."""
        return any(name.startswith(prefix) for name in self.wanted)

    def add(self, name: str, verdict: Verdict, started: float) -> None:
        """Add the row of check `name` to the report, when it is planned."""
        if name in self.wanted:
            outcome, reason = verdict
            self.report.add(Row(self.checks[name], outcome, reason, max(0.0, self.now() - started)))

    async def check(self, name: str, body: Callable[[], Awaitable[Verdict]], always: bool = False) -> Verdict:
        """Run one check (only when planned, unless `always`), turning an error into its FAIL row."""
        if name not in self.wanted and not always:
            return skipped("not planned")
        started = self.now()
        try:
            verdict = await body()
        except Exception as error:
            verdict = failed(f"no usable answer: {describe(error)}")
        self.add(name, verdict, started)
        return verdict

    async def guard(self, group: Callable[[], Awaitable[None]], *names: str) -> None:
        """Run a group of checks; if it breaks off (the platform went away), its checks still
        without a row FAIL with the error."""
        started = self.now()
        try:
            await group()
        except Exception as error:
            for check in self.report.planned:
                if check.name.startswith(names) and not self.report.done(check.name):
                    self.add(check.name, failed(f"could not be run: {describe(error)}"), started)

    def world(self) -> None:
        """The lot the kit plays: its layout, traffic and (for the downlinks' answers) its cars."""
        zone = self.target.zone
        self._traffic = Traffic(Layout.generate(self.park, self.rng), self.rng, zone)
        self.model = LotModel(self._traffic, self.rng, zone)
        self.model.populate(self.now(), 0.05)

    @property
    def traffic(self) -> Traffic:
        """The lot's message writer."""
        assert self._traffic is not None
        return self._traffic

    def problems(self, response: Response, code: str, opr: str, token: str) -> list[str]:
        """What is wrong with a response envelope's header: code, oprNum, signature (on 0000)."""
        problems = []
        if lookup(response.code) is not lookup(code):
            problems.append(f"its code {response.code!r} is not {code!r}")
        if response.opr != opr:
            problems.append(f"its oprNum {response.opr!r} does not echo {opr!r}")
        if response.ok and not response.signed_by(token, self.secret):
            problems.append(f"its signature {response.signature!r} does not sign its data (B.3.7)")
        return problems

    def data_problem(self, interface: Interface, data: object) -> str:
        """What is wrong with an answer's data per the catalog, or "" when nothing is."""
        if not interface.response or not isinstance(data, dict | list) or not data:
            return ""
        try:
            validate(interface.response, data)
        except FieldError as error:
            return f"its data is not valid: {error.message()}"
        return ""

    async def send(self, code: str, data: object, token: str | None = None) -> tuple[Response, str]:
        """POST an uplink with a new oprNum (and the lot's token unless given); the answer and the oprNum."""
        opr = self.uplink.new_opr()
        response = await self.uplink.post(code, data, token=self.token if token is None else token, opr=opr)
        return response, opr

    @staticmethod
    def said(response: Response) -> str:
        """What an answer said: its result code and message."""
        message = f" {response.result_message}" if response.result_message else ""
        return f"{response.result_code}{message}"

    def credentials(self, password: str | None = None) -> dict[str, str]:
        """The login data of the lot's account (with another password when given)."""
        account = self.target.credentials
        return {
            "parkUserName": account.username,
            "parkUserPwd": account.password if password is None else password,
        }

    def free_space(self) -> object:
        """A valid freeSpace message: the plain uplink the checks vary."""
        return uplink_sample(self.traffic, "freeSpace", self.now())


def describe(error: BaseException) -> str:
    """An error in a few words, for a FAIL row."""
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__

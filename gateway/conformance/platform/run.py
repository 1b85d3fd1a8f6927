"""A platform run: the groups of checks in the order the standard's conversation goes."""

from __future__ import annotations

import functools
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint

from gateway.conformance.checks import Check, platform_checks
from gateway.conformance.platform.downlink import DownlinkChecks
from gateway.conformance.platform.session import PlatformSession, PlatformTarget
from gateway.conformance.platform.tcp import TcpChecks
from gateway.conformance.platform.uplink import UplinkChecks
from gateway.conformance.report import Report
from gateway.lotclient.uplink import HTTPRequester

__all__ = ["PlatformRun", "plan"]


def plan(only: tuple[str, ...] = ()) -> tuple[Check, ...]:
    """The checks a run makes: all, or those whose name starts with one of `only`."""
    checks = platform_checks()
    if not only:
        return checks
    return tuple(check for check in checks if any(check.name.startswith(prefix) for prefix in only))


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
        self.session = PlatformSession(
            target=target, http=http, clock=clock, report=report, downlink=downlink, operator=operator
        )
        self._uplink = UplinkChecks(self.session)
        self._tcp = TcpChecks(self.session)
        self._downlink = DownlinkChecks(self.session)

    @property
    def park(self) -> str:
        """The lot's park code: the one given, or the one the platform's login answered with."""
        return self.session.park

    async def run(self) -> Report:
        """Run every planned check; the report's rows, with a SKIP for any check not reached."""
        session = self.session
        try:
            await session.check("login.accepted", self._uplink.login_accepted, always=True)
            if not session.token:
                session.report.finish("skipped: the lot could not log in (see login.accepted)")
                return session.report
            session.world()
            await session.check("login.refused", self._uplink.login_refused)
            await session.check("token.unknown", self._uplink.token_unknown)
            await session.check("token.revoked", self._uplink.token_revoked)
            await session.check("token.expired", self._uplink.token_expired)
            await session.check("signature.missing", self._uplink.signature_missing)
            await session.check("signature.wrong", self._uplink.signature_wrong)
            await session.check("signature.as-written", self._uplink.signature_as_written)
            for check in platform_checks():
                if check.group == "uplink":
                    await session.check(check.name, functools.partial(self._uplink.valid, check.code))
            for check in platform_checks():
                if check.group == "invalid":
                    await session.check(check.name, functools.partial(self._uplink.invalid, check.code))
            if session.wants("repeat."):
                await session.guard(self._uplink.repeats, "repeat.")
            if session.downlink is None:
                session.report.finish("skipped: no --downlink given, so no TCP checks")
                return session.report
            if any(name.startswith("tcp.") and name != "tcp.escaped-out" for name in session.wanted):
                await session.guard(self._tcp.binds_and_framing, "tcp.")
            if session.wants("idle."):
                await session.guard(self._tcp.idle_timers, "idle.")
            if session.wants("downlink.") or "tcp.escaped-out" in session.wanted:
                await session.guard(self._downlink.downlinks, "downlink.", "tcp.escaped-out")
        finally:
            if session.lot is not None:
                await session.lot.stop()
        session.report.finish()
        return session.report

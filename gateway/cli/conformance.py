"""``cpmictl conformance platform|lot``: the T/CPMI 002-2018 conformance kit (docs/conformance.md).

``platform`` acts as a lot against a platform (cpmi-gateway or any other):
login and tokens, signatures, every uplink, repeats, TCP binds, framing and
idle timers, and every downlink (through the command API with ``--api``, or
triggered by an operator). ``lot`` acts as a platform for a lot system: it
listens, checks everything the lot sends, sends it every downlink and checks
the REPLYs.

Each check prints one row as it completes (PASS / FAIL / SKIP, name, reason);
``--junit`` and ``--markdown`` write the same rows. Exit codes: 0 no FAIL, 1 a
FAIL, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TextIO
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from treq.client import HTTPClient
from twisted.internet import endpoints
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.cli.arguments import at_least_one, parse_downlink, positive, uplink_url
from gateway.conformance.checks import lot_checks
from gateway.conformance.lot import LotRun, MirrorSettings, ReferencePlatform
from gateway.conformance.platform import PlatformRun, PlatformTarget, plan
from gateway.conformance.report import Report, Row, junit_xml, markdown, text_line
from gateway.logs import describe
from gateway.lotclient.credentials import LotCredentials
from gateway.lots.http import UplinkSite

if TYPE_CHECKING:
    from gateway.cli.command import Subparsers

__all__ = ["add_parser", "lot_main", "platform_main"]

PLATFORM_TITLE = "cpmictl conformance platform"
LOT_TITLE = "cpmictl conformance lot"


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl conformance platform`` and ``cpmictl conformance lot``."""
    conformance = subparsers.add_parser(
        "conformance",
        help="the T/CPMI 002-2018 conformance kit",
        description="Check a platform (acting as a lot) or a lot system (acting as a platform).",
    )
    verbs = conformance.add_subparsers(title="verbs", metavar="VERB", required=True)
    platform = verbs.add_parser(
        "platform",
        help="check a platform, acting as a lot",
        description=(
            "Act as a lot against a T/CPMI 002 platform: every interface and protocol rule, one row "
            "per check. Exit 0 when no check failed."
        ),
    )
    platform.add_argument("--uplink", required=True, metavar="URL", help="the platform's HTTP uplink")
    platform.add_argument(
        "--downlink", metavar="HOST:PORT", help="the platform's TCP downlink (else no TCP checks)"
    )
    platform.add_argument("--user", required=True, help="the lot account's user name (parkUserName)")
    platform.add_argument("--password", required=True, help="the lot account's password")
    platform.add_argument("--secret", default="", help="the account's key-pool secret (B.3.7), if any")
    platform.add_argument("--park", default="", help="the park code (default: the one login returns)")
    platform.add_argument("--api", metavar="URL", help="the command API (CONTRACT §6), to trigger downlinks")
    platform.add_argument(
        "--api-token", default="", metavar="T", help="bearer token with command and sync roles"
    )
    platform.add_argument(
        "--wait",
        type=positive,
        default=0.0,
        metavar="S",
        help=(
            "without --api: seconds to wait for each downlink, triggered by hand on the platform "
            "(default: none; without --api or --wait the downlink checks are skipped at once)"
        ),
    )
    platform.add_argument(
        "--timeout", type=positive, default=10.0, metavar="S", help="seconds any one exchange may take (10)"
    )
    platform.add_argument(
        "--read-idle", type=positive, metavar="S", help="the platform's read_idle, to check it"
    )
    platform.add_argument(
        "--write-idle", type=positive, metavar="S", help="the platform's write_idle, to check it"
    )
    platform.add_argument(
        "--idle-wait", type=positive, default=120.0, metavar="S", help="longest idle timer to wait for (120)"
    )
    platform.add_argument(
        "--max-frame-bytes",
        type=at_least_one,
        default=2**20,
        metavar="N",
        help="the platform's frame limit (1048576)",
    )
    platform.add_argument(
        "--expired-token", default="", metavar="T", help="a token of the account that has expired"
    )
    platform.add_argument(
        "--only", default="", metavar="PREFIXES", help="comma-separated check name prefixes"
    )
    platform.add_argument("--timezone", default="Asia/Shanghai", help="the zone of the times on the wire")
    platform.add_argument("--seed", type=int, default=2018, help="seed of the sample data")
    _outputs(platform)
    platform.set_defaults(handler=run_platform)

    lot = verbs.add_parser(
        "lot",
        help="check a lot system, acting as a platform",
        description=(
            "Act as a T/CPMI 002 platform for one lot: check what it sends, send it every downlink and "
            "check its REPLYs. Exit 0 when no check failed."
        ),
    )
    lot.add_argument("--uplink-listen", default="tcp:8080", metavar="ENDPOINT", help="HTTP uplink (tcp:8080)")
    lot.add_argument(
        "--downlink-listen", default="tcp:9000", metavar="ENDPOINT", help="TCP downlink (tcp:9000)"
    )
    lot.add_argument("--user", required=True, help="the user name the lot logs in with")
    lot.add_argument("--password", required=True, help="the password the lot logs in with")
    lot.add_argument("--secret", default="", help="the key-pool secret the lot signs with (B.3.7)")
    lot.add_argument("--park", default="P001", help="the lot's park code (P001)")
    lot.add_argument(
        "--duration", type=positive, default=300.0, metavar="S", help="seconds the run lasts (300)"
    )
    lot.add_argument(
        "--deadline", type=positive, metavar="S", help="every downlink's deadline (default: CONTRACT §3)"
    )
    lot.add_argument("--read-idle", type=at_least_one, default=180, metavar="S", help="read_idle (180)")
    lot.add_argument("--write-idle", type=at_least_one, default=60, metavar="S", help="write_idle (60)")
    lot.add_argument("--timezone", default="Asia/Shanghai", help="the zone of the times on the wire")
    _outputs(lot)
    lot.set_defaults(handler=run_lot)


def _outputs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--junit", metavar="FILE", help="write the rows as JUnit XML")
    parser.add_argument("--markdown", metavar="FILE", help="write the rows as a Markdown report")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"--timezone: unknown zone {name!r}") from None


# --- running on the reactor ---------------------------------------------


def _run(command: str, main: Callable[[Any], Deferred[int]], stop: Callable[[], None] | None = None) -> int:
    """Run `main(reactor)` on the global reactor; its exit code (1 if it failed)."""
    from twisted.internet import reactor

    outcome: list[int | Failure] = []
    waiters: list[Deferred[None]] = []

    def begin() -> None:
        main(reactor).addBoth(finished)

    def finished(result: int | Failure) -> None:
        outcome.append(result)
        for waiter in waiters:
            waiter.callback(None)
        if reactor.running and not waiters:
            reactor.stop()

    def interrupted() -> Deferred[None] | None:
        # Ctrl-C or SIGTERM: a run that can end early ends now and reports, before the reactor stops.
        if outcome or stop is None:
            return None
        waiter: Deferred[None] = Deferred()
        waiters.append(waiter)
        stop()
        return waiter

    reactor.callWhenRunning(begin)
    reactor.addSystemEventTrigger("before", "shutdown", interrupted)
    reactor.run()
    if not outcome:
        print(f"cpmictl conformance {command}: stopped before the run ended", file=sys.stderr)
        return 1
    result = outcome[0]
    if isinstance(result, Failure):
        print(
            f"cpmictl conformance {command}: {result.getErrorMessage() or result.type.__name__}",
            file=sys.stderr,
        )
        return 1
    return result


def _write(report: Report, args: argparse.Namespace, suite: str, preface: list[str], out: TextIO) -> None:
    if args.junit:
        with open(args.junit, "wb") as stream:
            stream.write(junit_xml(report, suite))
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as stream:
            stream.write(markdown(report, report.title, preface))
    print(report.summary(), file=out, flush=True)


def _printer(out: TextIO) -> Callable[[Row], None]:
    def show(row: Row) -> None:
        print(text_line(row), file=out, flush=True)

    return show


# --- platform -----------------------------------------------------------


def _target(args: argparse.Namespace) -> PlatformTarget:
    """The run's target from the options; ValueError names a bad one."""
    if bool(args.api) != bool(args.api_token):
        raise ValueError("--api and --api-token go together")
    if args.api and not args.api.startswith(("http://", "https://")):
        raise ValueError(f"--api: not an http(s) URL: {args.api!r}")
    if args.downlink:
        parse_downlink(args.downlink)
    only = tuple(prefix.strip() for prefix in args.only.split(",") if prefix.strip())
    if not plan(only):
        raise ValueError(f"--only {args.only!r} selects no check")
    return PlatformTarget(
        uplink_url=uplink_url(args.uplink),
        credentials=LotCredentials(args.park, args.user, args.password, args.secret),
        api_url=args.api or "",
        api_token=args.api_token,
        wait=args.wait,
        timeout=args.timeout,
        read_idle=args.read_idle,
        write_idle=args.write_idle,
        idle_wait=args.idle_wait,
        max_frame_bytes=args.max_frame_bytes,
        expired_token=args.expired_token,
        only=only,
        seed=args.seed,
        zone=_zone(args.timezone),
    )


async def platform_main(args: argparse.Namespace, reactor: Any, out: TextIO) -> int:
    """Run `cpmictl conformance platform` on `reactor`, rows to `out`; the exit code."""
    target = _target(args)
    report = Report(PLATFORM_TITLE, plan(target.only))
    report.listeners.append(_printer(out))
    http = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    downlink: Callable[[], IStreamClientEndpoint] | None = None
    if args.downlink:
        host, port = parse_downlink(args.downlink)

        def downlink() -> IStreamClientEndpoint:
            return HostnameEndpoint(reactor, host, port, timeout=target.timeout)

    def operator(message: str) -> None:
        print(message, file=out, flush=True)

    run = PlatformRun(
        target=target, http=http, clock=reactor, report=report, downlink=downlink, operator=operator
    )
    await run.run()
    preface = [
        f"- uplink: `{target.uplink_url}`",
        f"- downlink: `{args.downlink or '(none)'}`",
        f"- command API: `{target.api_url or '(none: downlinks triggered by an operator)'}`",
        f"- account: `{target.credentials.username}`, park `{run.park or '?'}`",
    ]
    _write(report, args, "cpmi.platform", preface, out)
    return 0 if report.passed else 1


def run_platform(args: argparse.Namespace) -> int:
    """`cpmictl conformance platform`."""
    try:
        _target(args)
    except ValueError as error:
        print(f"cpmictl conformance platform: {error}", file=sys.stderr)
        return 2
    return _run("platform", lambda reactor: Deferred.fromCoroutine(platform_main(args, reactor, sys.stdout)))


# --- lot ----------------------------------------------------------------


def _mirror_settings(args: argparse.Namespace) -> MirrorSettings:
    for name in ("uplink_listen", "downlink_listen"):
        try:
            endpoints.serverFromString(None, getattr(args, name))  # built, never listened on
        except Exception as error:
            raise ValueError(f"--{name.replace('_', '-')}: not a usable endpoint: {error}") from None
    return MirrorSettings(
        credentials=LotCredentials(args.park, args.user, args.password, args.secret),
        duration=args.duration,
        deadline=args.deadline,
        read_idle=args.read_idle,
        write_idle=args.write_idle,
        zone=_zone(args.timezone),
    )


async def lot_main(
    args: argparse.Namespace, reactor: Any, out: TextIO, started: Callable[[LotRun], object] | None = None
) -> int:
    """Run `cpmictl conformance lot` on `reactor`, rows to `out`; `started` gets the run (to stop it)."""
    settings = _mirror_settings(args)
    platform = ReferencePlatform(settings, reactor)
    site = UplinkSite(platform.uplink_endpoint(), reactor=reactor)
    uplink = await endpoints.serverFromString(reactor, args.uplink_listen).listen(site)
    try:
        downlink = await endpoints.serverFromString(reactor, args.downlink_listen).listen(
            platform.downlinks.factory()
        )
    except Exception:
        await uplink.stopListening()
        raise
    platform.start()
    print(
        f"listening: uplink http://{describe(uplink.getHost())}/uplink, "
        f"downlink {describe(downlink.getHost())}; "
        f"park {settings.credentials.park_code}, user {settings.credentials.username}; "
        f"{settings.duration:g} s",
        file=out,
        flush=True,
    )
    report = Report(LOT_TITLE, lot_checks())
    report.listeners.append(_printer(out))
    run = LotRun(platform=platform, clock=reactor, report=report, operator=lambda line: print(line, file=out))
    if started is not None:
        started(run)
    try:
        await run.run()
    finally:
        platform.stop()
        await uplink.stopListening()
        await downlink.stopListening()
    preface = [
        f"- park `{settings.credentials.park_code}`, account `{settings.credentials.username}`",
        f"- run of {settings.duration:g} s",
        f"- read_idle {settings.read_idle} s, write_idle {settings.write_idle} s",
    ]
    _write(report, args, "cpmi.lot", preface, out)
    return 0 if report.passed else 1


def run_lot(args: argparse.Namespace) -> int:
    """`cpmictl conformance lot`."""
    try:
        _mirror_settings(args)
    except ValueError as error:
        print(f"cpmictl conformance lot: {error}", file=sys.stderr)
        return 2
    runs: list[LotRun] = []

    def stop() -> None:
        for run in runs:
            run.stop()

    return _run(
        "lot", lambda reactor: Deferred.fromCoroutine(lot_main(args, reactor, sys.stdout, runs.append)), stop
    )

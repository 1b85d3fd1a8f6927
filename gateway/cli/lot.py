"""``cpmictl lot simulate``: simulated lot systems that drive a gateway (docs/simulator.md).

The lots log in over HTTP, bind the TCP downlink, report their set-up, then
send realistic traffic at ``--rate`` events a second in total for
``--duration`` seconds, answering every downlink, retrying failed uploads and
backfilling exits as the standard asks. On a terminal a progress line is drawn
on standard error. At the end one JSON line goes to standard output::

    {"lots":..,"sent":..,"acked":..,"retried":..,"errors":..,"p50_ms":..,"p99_ms":..,"downlinks_replied":..}

``--soak`` runs until interrupted (Ctrl-C, SIGTERM), writing a JSON line of the
last minute's throughput, latencies, errors and reconnections every minute,
then the same final line.

Exit codes: 0 no errors, 1 errors (or the run failed: an unreadable credentials
file), 2 usage.
"""

from __future__ import annotations

import argparse
import resource
import sys
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from treq.client import HTTPClient
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import HostnameEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.cli import progress
from gateway.lotclient.credentials import CredentialsError, LotCredentials, read_credentials
from gateway.simulator.run import Settings, Simulation
from gateway.simulator.stats import Summary

if TYPE_CHECKING:
    from gateway.cli.main import Subparsers

__all__ = ["add_parser", "parse_downlink", "run_simulate", "uplink_url"]

MAX_HEARTBEAT = 60.0
"""B.4.8 / 5.1.8: a lot calls heartbeat at most a minute apart."""
REASONS_SHOWN = 5


def add_parser(subparsers: Subparsers) -> None:
    """Add ``cpmictl lot simulate``."""
    lot = subparsers.add_parser(
        "lot",
        help="simulated lot systems",
        description="Tools that act as lot systems toward a gateway.",
    )
    verbs = lot.add_subparsers(title="verbs", metavar="VERB", required=True)
    simulate = verbs.add_parser(
        "simulate",
        help="drive a gateway with simulated lots",
        description=(
            "Simulate lot systems: login, TCP bind with reconnection, heartbeats, entries and exits "
            "with fees, pictures, free spaces, device states, replies to every downlink, retries "
            "and backfills. Ends with one JSON line on standard output; exit 0 when no errors."
        ),
    )
    simulate.add_argument(
        "--uplink",
        required=True,
        metavar="URL",
        help="the gateway's uplink, e.g. http://127.0.0.1:8080/uplink",
    )
    simulate.add_argument(
        "--downlink", metavar="HOST:PORT", help="the gateway's TCP downlink (without it: HTTP only)"
    )
    simulate.add_argument(
        "--credentials", required=True, metavar="FILE", help="CSV of park_code,username,password[,secret]"
    )
    simulate.add_argument("--lots", type=_count, metavar="N", help="only the first N lots of FILE")
    simulate.add_argument(
        "--duration", type=_positive, default=60.0, metavar="S", help="seconds of traffic (default 60)"
    )
    simulate.add_argument(
        "--rate",
        type=_not_negative,
        default=10.0,
        metavar="R",
        help="events a second, all lots together (default 10)",
    )
    simulate.add_argument(
        "--time-scale",
        type=_positive,
        default=1.0,
        metavar="X",
        help="divide the standard's periods by X (10 min retries, heartbeats); for tests (default 1)",
    )
    simulate.add_argument(
        "--soak", action="store_true", help="run until stopped, a summary line every minute"
    )
    simulate.add_argument(
        "--summary-every",
        type=_positive,
        default=60.0,
        metavar="S",
        help="soak: seconds between summaries (default 60)",
    )
    simulate.add_argument(
        "--drain",
        type=_not_negative,
        default=30.0,
        metavar="S",
        help="at the end, wait up to S seconds for uploads still unacknowledged (default 30)",
    )
    simulate.add_argument(
        "--heartbeat",
        type=_positive,
        default=30.0,
        metavar="S",
        help="seconds between heartbeats, at most 60 (default 30)",
    )
    simulate.add_argument("--seed", type=int, help="seed of the traffic's random (default: a new one)")
    simulate.add_argument(
        "--timezone",
        default="Asia/Shanghai",
        help="the lots' zone for times on the wire (default Asia/Shanghai)",
    )
    progress.add_option(simulate)
    simulate.set_defaults(handler=run_simulate)


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def _positive(text: str) -> float:
    value = _number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def _not_negative(text: str) -> float:
    value = _number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def uplink_url(text: str) -> str:
    """The URL to POST to: `text`, with `/uplink` as its path when it has none."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--uplink: not an http(s) URL: {text!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/uplink")
    return urlunsplit(parts)


def parse_downlink(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as a host and a port."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--downlink: expected HOST:PORT, got {text!r}")
    return host, int(port)


def _fail(message: str, code: int) -> int:
    print(f"cpmictl lot simulate: {message}", file=sys.stderr)
    return code


def _raise_file_limit(wanted: int) -> None:
    """Allow enough open files for every lot's connections, as far as the hard limit lets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            pass


def run_simulate(args: argparse.Namespace) -> int:
    """Run the simulation on the reactor; print the summary; 0 when it counted no errors."""
    try:
        url = uplink_url(args.uplink)
        downlink = parse_downlink(args.downlink) if args.downlink else None
        zone = ZoneInfo(args.timezone)
    except (ValueError, ZoneInfoNotFoundError) as error:
        return _fail(str(error) if isinstance(error, ValueError) else f"unknown zone {args.timezone!r}", 2)
    if args.heartbeat > MAX_HEARTBEAT:
        return _fail(f"--heartbeat: the standard asks for at most {MAX_HEARTBEAT:g} s", 2)
    try:
        lots = read_credentials(args.credentials)
    except OSError as error:
        return _fail(f"{args.credentials}: {error.strerror or error}", 1)
    except CredentialsError as error:
        return _fail(str(error), 1)
    if args.lots is not None:
        if args.lots > len(lots):
            return _fail(f"--lots {args.lots}: {args.credentials} has only {len(lots)} lots", 2)
        lots = lots[: args.lots]
    settings = Settings(
        rate=args.rate,
        duration=None if args.soak else args.duration,
        time_scale=args.time_scale,
        seed=args.seed,
        heartbeat=args.heartbeat,
        drain=args.drain,
        summary_interval=args.summary_every,
        zone=zone,
    )
    _raise_file_limit(2 * len(lots) + 256)
    from twisted.internet import reactor

    outcome: list[Summary | Failure] = []
    simulation = _simulation(reactor, lots, url, downlink, settings, progress.shown(args))
    shutting_down: list[bool] = []

    def begin() -> None:
        running = Deferred.fromCoroutine(simulation.run())
        running.addBoth(finished)

    def finished(result: Summary | Failure) -> None:
        outcome.append(result)
        if not shutting_down:
            reactor.stop()

    def before_shutdown() -> Deferred[None] | None:
        # Ctrl-C or SIGTERM: end the run properly, summary included, before the reactor stops.
        shutting_down.append(True)
        if outcome:
            return None
        simulation.stop()
        waiter: Deferred[None] = Deferred()

        def poll() -> None:
            if outcome:
                waiter.callback(None)
            else:
                reactor.callLater(0.05, poll)

        poll()
        return waiter

    reactor.callWhenRunning(begin)
    reactor.addSystemEventTrigger("before", "shutdown", before_shutdown)
    reactor.run()
    if not outcome:
        return _fail("stopped before the run ended", 1)
    result = outcome[0]
    if isinstance(result, Failure):
        return _fail(f"the run failed: {result.getErrorMessage() or result.type.__name__}", 1)
    sys.stdout.write(result.line() + "\n")
    sys.stdout.flush()
    for reason, count in simulation.stats.reasons.most_common(REASONS_SHOWN):
        print(f"cpmictl lot simulate: {count} x {reason}", file=sys.stderr)
    return 0 if result.errors == 0 else 1


def _simulation(
    reactor: Any,
    lots: list[LotCredentials],
    url: str,
    downlink: tuple[str, int] | None,
    settings: Settings,
    show_progress: bool = False,
) -> Simulation:
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = max(4, min(len(lots), 256))
    http = HTTPClient(Agent(reactor, pool=pool))

    def endpoint(lot: LotCredentials) -> IStreamClientEndpoint:
        assert downlink is not None
        return HostnameEndpoint(reactor, downlink[0], downlink[1], timeout=10)

    return Simulation(
        lots=lots,
        http=http,
        uplink_url=url,
        clock=reactor,
        settings=settings,
        downlink=endpoint if downlink is not None else None,
        progress=sys.stderr if show_progress else None,
        summaries=sys.stdout,
    )

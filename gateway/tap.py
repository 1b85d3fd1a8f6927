"""The twistd plugin's options and service: `twistd -n cpmi-gateway --config FILE`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

from attrs import evolve
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry
from treq.client import HTTPClient
from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import IService, MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.error import CannotListenError
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LoggingFile, globalLogPublisher
from twisted.python import usage
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers

from gateway import __version__
from gateway.cloud.api import CommandApi
from gateway.cloud.forwarder import Forwarder
from gateway.cloud.metrics import (
    observe_fsync,
    register_forwarder,
    register_logins,
    register_space,
    register_upstream,
)
from gateway.cloud.metrics import register as register_metrics
from gateway.cloud.progress import Progress
from gateway.cloud.query import QueryClient
from gateway.cloud.status import StatusReport
from gateway.config import CONFIG_SEARCH, Config, ConfigError, find_config, load
from gateway.dialects import installed
from gateway.dialects.host import DialectHost, GatewayParts, LotRouter
from gateway.dialects.interface import IDialectServer
from gateway.dialects.standard import StandardServer
from gateway.firststart import Fresh, create_token_file
from gateway.heap import BindSettler, settle_heap
from gateway.journal import ChainError, Journal, JournalWriteError
from gateway.journal.retention import Retention
from gateway.journal.sealer import Sealer
from gateway.journal.space import SpaceWatch
from gateway.keys import KeyFileError, load_or_create_signing_key, public_key_b64
from gateway.limits import ConnectionGuard, FdLimit, GuardedFactory, proxied, raise_fd_limit, register_guards
from gateway.logs import RecentRejections, WithLogObserver, check_log_format, json_observer, log_stream
from gateway.lots.http import GuardedSite, HttpLimits
from gateway.lots.parks import ParkTotals
from gateway.lots.passwords import PasswordChecker
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.lots.sync import SyncQueue
from gateway.reload import Reloader, Sighup
from gateway.state import Checkpointer, restore_at_start
from gateway.upstream.forwarding import UpstreamQueries, UpstreamSink
from gateway.upstream.lots import UpstreamLots
from twisted import version as twisted_version

log = Logger()

UPSTREAM_CONCURRENCY = 16
"""With the t002 sink, how many lots' uplinks go upstream at once (and keep-alive connections)."""


class Options(usage.Options):
    """Command-line options of the cpmi-gateway plugin."""

    synopsis = "--config FILE"
    longdesc = (
        "Run cpmi-gateway, a T/CPMI 002-2018 gateway between parking-lot systems and an "
        "operator cloud. Everything it receives is stored in its replay journal before it "
        "is acknowledged. The configuration (TOML) names the listeners, the journal, the "
        "cloud and the lots; see conf/gateway.toml. Without --config it reads " + CONFIG_SEARCH + "."
    )
    optParameters = [
        ["config", "c", None, f"The configuration file (TOML). [default: {CONFIG_SEARCH}]"],
        [
            "log-format",
            None,
            "text",
            "text (twistd's) or json: one JSON object a line, where twistd writes its log "
            "(standard output with -n, else --logfile). twistd's own --logger "
            "gateway.logs.stdout_json_observer writes the same lines to standard output.",
        ],
    ]

    def opt_version(self) -> NoReturn:
        """Print the gateway's version (and Twisted's) and exit."""
        print(f"cpmi-gateway {__version__} (Twisted {twisted_version.short()})")
        raise SystemExit(0)

    def postOptions(self) -> None:
        """Find the configuration; refuse a --log-format other than text or json, or json where
        twistd cannot write it."""
        self["config"] = find_config(self["config"])
        parent = getattr(self, "parent", None)
        check_log_format(self["log-format"], parent if isinstance(parent, usage.Options) else None)


class _Part(Service):
    """One part of the gateway in the service tree: `start` as it starts, `stop` as it stops.

    Services stop in the reverse order of their start, so a part added before
    another outlives it: the journal, added first, closes last.
    """

    def __init__(
        self,
        stop: Callable[[], Deferred[None] | None],
        start: Callable[[], None] | None = None,
    ) -> None:
        self._start = start
        self._stop = stop

    def startService(self) -> None:
        super().startService()
        if self._start is not None:
            self._start()

    def stopService(self) -> Deferred[None] | None:
        super().stopService()
        return self._stop()


class _Gateway(MultiService):
    """
    The gateway's parts, stopped as a ``MultiService`` stops them, but the journal last.

    Parts append as they stop (offline records, a checkpoint, a seal) and some
    only once what they wait for is done (a retention pass, an fsync), so the
    journal, the first part, is closed only after every other part's stop has
    finished; ``MultiService`` alone would close it at once with the others.
    """

    cannot_listen: Callable[[str, BaseException], NoReturn] | None = None
    """Called with a listener's name and error when it cannot bind its port (see makeService)."""

    def privilegedStartService(self) -> None:
        Service.privilegedStartService(self)
        for part in self:
            self._starting(part, part.privilegedStartService)

    def startService(self) -> None:
        Service.startService(self)
        for part in self:
            self._starting(part, part.startService)

    def _starting(self, part: IService, start: Callable[[], None]) -> None:
        try:
            start()
        except CannotListenError as error:
            if self.cannot_listen is None or not isinstance(part, StreamServerEndpointService):
                raise
            self.cannot_listen(part.name or "?", error)

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        journal, *others = list(self)
        stopping = DeferredList([maybeDeferred(part.stopService) for part in reversed(others)])
        return stopping.addCallback(lambda results: DeferredList([maybeDeferred(journal.stopService)]))


def _fail(error: str) -> SystemExit:
    # Once twistd logs, sys.stderr feeds its log: the operator's terminal is the original.
    stream = sys.__stderr__ if isinstance(sys.stderr, LoggingFile) and sys.__stderr__ else sys.stderr
    stream.write(f"cpmi-gateway: {error}\n")
    stream.flush()
    return SystemExit(1)


def _cause(error: BaseException) -> str:
    """The operating system's words for why `error` happened, without Twisted's wrapping."""
    reason = getattr(error, "socketError", None) or error
    if isinstance(reason, OSError) and reason.strerror:
        return reason.strerror
    return str(reason)


def makeService(config: Options, reactor: Any = None) -> MultiService:
    """Build the gateway from the configuration file; one line and exit 1 on a bad one.

    A start that fails, here or while binding its ports, takes back what it
    created (the key, the journal, the API token file) before it exits.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
    try:
        settings = load(config["config"])
    except ConfigError as error:
        raise _fail(str(error)) from None
    cloud = settings.cloud
    fresh = Fresh.before([settings.gateway.signing_key, settings.journal.path, cloud.api_token_file])
    where = "gateway.signing_key"
    try:
        key, created = load_or_create_signing_key(settings.gateway.signing_key)
        where = "journal.path"
        journal = Journal.open(
            settings.journal.path,
            reactor=reactor,
            fsync=settings.journal.fsync,
            segment_bytes=settings.journal.segment_bytes,
            interval=settings.journal.interval,
            # The service tree closes it, last: the parts stopping before it still append.
            close_at_shutdown=False,
            # Damage set aside at start-up is named by a recovery record signed like the seals.
            signing_key=key,
            gateway_id=settings.gateway.id,
        )
        where = "cloud.api_token_file"
        token_created = bool(cloud.api_token_file) and not cloud.api_token
        if token_created:
            settings = evolve(
                settings, cloud=evolve(cloud, api_token=create_token_file(cloud.api_token_file))
            )
        where = "journal.path"
        service = build_service(settings, reactor, journal, key, config_path=config["config"])
    except ConfigError as error:
        fresh.undo()
        raise _fail(str(error)) from None
    except KeyFileError as error:
        fresh.undo()
        raise _fail(f"gateway.signing_key: {error}") from None
    except OSError as error:
        fresh.undo()
        raise _fail(f"{where}: {error.filename or settings.journal.path}: {_cause(error)}") from None
    except (JournalWriteError, ChainError) as error:
        fresh.undo()
        raise _fail(f"journal.path: {settings.journal.path}: {error}") from None

    def cannot_listen(name: str, error: BaseException) -> NoReturn:
        """A port that cannot be bound: one line naming its key, nothing left behind, exit 1."""
        fresh.undo()
        endpoint = settings.listen.endpoint(name)
        raise _fail(f"listen.{name}: cannot listen on {endpoint}: {_cause(error)}")

    service.cannot_listen = cannot_listen
    # Said once the ports are bound: a start that fails before takes them back (Fresh).
    reactor.callWhenRunning(_log_keys, settings, key, created, token_created)
    log.info("cpmi-gateway {version}, configuration {path}", version=__version__, path=config["config"])
    _log_fd_limit(raise_fd_limit())
    reactor.callWhenRunning(settle_heap)
    if config["log-format"] != "json":
        return service
    # twistd's options (--logfile, -n) are the parent of the plugin's when twistd runs it.
    parent = getattr(config, "parent", None)
    server_options = parent if isinstance(parent, usage.Options) else None
    return WithLogObserver(service, lambda: json_observer(log_stream(server_options, reactor)))


def _log_keys(settings: Config, key: SigningKey, created: bool, token_created: bool) -> None:
    """Log the signing key's public key, and which of the key and the API token file this start made."""
    if created:
        log.info(
            "created the signing key {path}; its public key is {public_key}",
            path=settings.gateway.signing_key,
            public_key=public_key_b64(key),
        )
    else:
        log.info("signing key public key: {public_key}", public_key=public_key_b64(key))
    if token_created:
        log.info(
            "created the API token file {path}: its content is a bearer token with every role",
            path=settings.cloud.api_token_file,
        )


def _log_fd_limit(limit: FdLimit) -> None:
    """Say how many lot connections the process can hold, and whether the limit could be raised."""
    if limit.problem:
        log.warn(
            "cannot raise the file-descriptor limit from {before} to {hard}: {problem}; room for about "
            "{lots} lot connections",
            before=limit.before,
            hard=limit.hard,
            problem=limit.problem,
            lots=limit.lots,
        )
    elif limit.after != limit.before:
        log.info(
            "file-descriptor limit raised from {before} to {after}: room for about {lots} lot connections",
            before=limit.before,
            after=limit.after,
            lots=limit.lots,
        )
    else:
        log.info(
            "file-descriptor limit {after}: room for about {lots} lot connections",
            after=limit.after,
            lots=limit.lots,
        )


class _CloudClient:
    """The treq client the cloud side sends with: keep-alive connections, no redirects.

    A redirect would carry a signature made for the configured URL to another
    one; the cloud's 3xx is shown as it is instead (and retried, or 9999 for a query).
    """

    def __init__(self, reactor: Any, connections: int = 4) -> None:
        pool = HTTPConnectionPool(reactor, persistent=True)
        pool.maxPersistentPerHost = connections
        self._client = HTTPClient(Agent(reactor, pool=pool))

    def request(self, method: str, url: str, *, headers: Headers, data: bytes) -> Deferred[Any]:
        return self._client.request(method, url, headers=headers, data=data, allow_redirects=False)


def build_service(
    settings: Config, reactor: Any, journal: Journal, key: SigningKey, config_path: str | None = None
) -> _Gateway:
    """Wire the parts of the gateway around an open journal and the gateway's signing key.

    With `config_path`, the file `settings` were read from, the gateway reloads
    it on SIGHUP and on ``POST /v1/admin/reload``.
    """
    service = _Gateway()
    _Part(stop=journal.close).setServiceParent(service)
    space = SpaceWatch(
        path=settings.journal.path, min_free_bytes=settings.journal.min_free_bytes, clock=reactor
    )
    journal.guard = space.guard
    _Part(start=space.start, stop=space.stop).setServiceParent(service)
    # Next to the journal: it stops (sealing the end) just before the journal closes.
    sealer = Sealer(
        journal=journal,
        key=key,
        gateway_id=settings.gateway.id,
        clock=reactor,
        interval=settings.journal.seal_interval,
        records=settings.journal.seal_records,
    )
    _Part(start=sealer.start, stop=sealer.stop).setServiceParent(service)
    forwarder: Forwarder | None = None
    progress = Progress()
    queries: QueryClient | UpstreamQueries | None = None
    if settings.cloud.sink == "cloudevents":
        http = _CloudClient(reactor)
        if settings.cloud.query_url:
            queries = QueryClient(
                http=http,
                clock=reactor,
                url=settings.cloud.query_url,
                gateway_id=settings.gateway.id,
                zone=settings.gateway.timezone,
                signing_key=key,
                deadlines=settings.deadlines,
            )
        # Added right after the journal, so it stops just before the journal closes.
        events = Forwarder(
            journal=journal,
            http=http,
            clock=reactor,
            settings=settings.cloud,
            gateway_id=settings.gateway.id,
            zone=settings.gateway.timezone,
            signing_key=key,
        )
        forwarder = events
        _Part(start=lambda: events.start(progress.through), stop=events.stop).setServiceParent(service)

    sessions = Sessions(reactor, settings.gateway.timezone)
    repeats = Repeats(reactor)
    totals = ParkTotals()
    if settings.journal.fsync != "always":
        log.warn(
            "journal.fsync is {mode}: lots may be acknowledged before their records are on disk",
            mode=settings.journal.fsync,
        )

    passwords = PasswordChecker(reactor, max_pending=settings.uplink.max_pending_logins)
    _Part(start=passwords.start, stop=passwords.stop).setServiceParent(service)
    lots = LotRouter(settings)
    sync = SyncQueue(lots=lots, journal=journal, clock=reactor)
    _Part(stop=sync.stop).setServiceParent(service)  # its timers, before the journal closes
    upstream: UpstreamLots | None = None
    if settings.cloud.sink == "t002":
        upstream, queries, t002 = _upstream(settings, reactor, journal, lots, sync)
        forwarder = t002
        _Part(start=lambda: t002.start(progress.through), stop=t002.stop).setServiceParent(service)
        # Stops before the sync queue and the journal: its relays journal what they pass on.
        _Part(start=upstream.start, stop=upstream.stop).setServiceParent(service)
    parts = GatewayParts(
        config=settings,
        clock=reactor,
        journal=journal,
        sessions=sessions,
        repeats=repeats,
        totals=totals,
        passwords=passwords,
        queries=queries,
    )
    served = _serve_dialects(settings, parts, lots, sync)
    # Nothing runs before the reactor does, so the parts above may be built before the replay.
    restored = restore_at_start(
        journal,
        now=reactor.seconds(),
        sessions=sessions,
        repeats=repeats,
        totals=totals,
        sync=sync,
        progress=progress,
    )
    log.info(
        "journal {path}: read {count} records from seq {first} ({whence}); {tokens} tokens in force, "
        "{sync} sync entries pending",
        path=settings.journal.path,
        count=restored.records,
        first=restored.from_seq,
        whence=f"checkpoint {restored.checkpoint}" if restored.checkpoint else "no checkpoint",
        tokens=len(sessions),
        sync=sync.pending_total(),
    )
    checkpointer = Checkpointer(
        journal=journal, state=restored.state, clock=reactor, records=settings.journal.checkpoint_records
    )
    # Stops before the sealer does, so the last seal covers the last checkpoint.
    _Part(start=checkpointer.start, stop=checkpointer.stop).setServiceParent(service)

    def floor() -> int:
        """The first seq retention must keep: start-up, forwarding and sync still need it."""
        keep = [checkpointer.floor]
        if forwarder is not None:
            keep.append(forwarder.done_through + 1)
        pending = sync.first_pending_seq()
        if pending is not None:
            keep.append(pending)
        return min(keep)

    retention = Retention(
        journal,
        reactor,
        max_bytes=settings.journal.retain_bytes,
        max_age=settings.journal.retain_days * 86400,
        floor=floor,
        run_blocking=lambda job: deferToThreadPool(reactor, reactor.getThreadPool(), job),
    )
    _Part(start=retention.start, stop=retention.stop).setServiceParent(service)
    settler = BindSettler(reactor)
    _Part(stop=settler.stop).setServiceParent(service)
    for server in served.values():
        if isinstance(server, StandardServer):
            server.downlinks.bound_listeners.append(settler.bound)
    guards: list[ConnectionGuard] = []
    for name, server in served.items():
        # Stopping closes the lots' connections, reporting them offline before the journal closes.
        _Part(start=server.start, stop=server.stop).setServiceParent(service)
        for listener in installed()[name].listeners:
            endpoint = settings.listen.endpoint(listener)
            assert endpoint is not None  # the configuration is refused otherwise
            factory = _guarded(settings, reactor, listener, endpoint, server.factory(listener), guards)
            _listen(reactor, listener, endpoint, factory).setServiceParent(service)

    def ready() -> tuple[bool, str]:
        problem = journal.problem or space.problem
        if problem:
            return False, f"journal cannot write: {problem}"
        # Damage set aside does not stop serving, but whoever looks must see it.
        damaged = "; ".join(
            f"segment {q.segment} quarantined at seq {q.seq}: {q.reason}" for q in journal.quarantined
        )
        return True, f"journal writable; {damaged}" if damaged else "journal writable"

    registry = CollectorRegistry()
    register_metrics(registry, lots, journal, sync)
    register_guards(registry, guards)
    register_space(registry, space)
    register_logins(registry, passwords)
    if forwarder is not None:
        register_forwarder(registry, forwarder)
        log.info(
            "forwarding events to {url}, from journal seq {seq} on",
            url=settings.cloud.url,
            seq=progress.through + 1,
        )
    if upstream is not None:
        register_upstream(registry, upstream)
    observe_fsync(registry, journal)
    reloader: Reloader | None = None
    if config_path is not None:
        reloader = Reloader(
            path=config_path,
            running=settings,
            read=lambda path: deferToThreadPool(reactor, reactor.getThreadPool(), load, path),
            parts=[
                parts,
                lots,
                *(s for s in served.values() if isinstance(s, StandardServer)),
                *([upstream] if upstream is not None else []),
            ],
            lots=lots,
            sessions=sessions,
            journal=journal,
            served=frozenset(served),
        )
        sighup = Sighup(reactor, reloader.reload)
        _Part(start=sighup.start, stop=sighup.stop).setServiceParent(service)

    def running() -> Config:
        """The configuration in force: a reload changes it."""
        return reloader.running if reloader is not None else settings

    # The status page's recent rejections are the log's `lot.rejected`/`cloud.rejected` events.
    rejections = RecentRejections()
    _Part(
        start=lambda: globalLogPublisher.addObserver(rejections),
        stop=lambda: globalLogPublisher.removeObserver(rejections),
    ).setServiceParent(service)
    status = StatusReport(
        config=running,
        clock=reactor,
        started=reactor.seconds(),
        lots=lots,
        backlog=sync.pending,
        journal=journal,
        ready=ready,
        forwarding=forwarder,
        rejections=rejections.recent,
    )
    api = CommandApi(
        config=settings,
        lots=lots,
        journal=journal,
        clock=reactor,
        registry=registry,
        ready=ready,
        sync=sync,
        deadlines=settings.deadlines,
        status=status,
        reload=reloader.reload if reloader is not None else None,
    )
    if reloader is not None:
        reloader.parts.append(api)
    # Its own cap and body limit: operators reach /healthz while the lots' ports are flooded.
    api_site = GuardedSite(
        api.resource(),
        reactor=reactor,
        limits=HttpLimits.api(settings.uplink),
        name="api",
        proxied=proxied(settings.listen.api),
    )
    guards.append(api_site.guard)
    _listen(reactor, "api", settings.listen.api, api_site).setServiceParent(service)
    log.info(
        "cpmi-gateway {id}: uplink on {uplink}, downlink on {downlink}, api on {api}, "
        "{lots} lots, sink {sink}",
        id=settings.gateway.id,
        uplink=settings.listen.uplink,
        downlink=settings.listen.downlink,
        api=settings.listen.api,
        lots=len(settings.lots),
        sink=settings.cloud.sink,
    )
    for name in served:
        if name != "standard":
            count = sum(1 for lot in settings.lots if lot.dialect == name)
            listeners = installed()[name].listeners
            where = ", ".join(f"{settings.listen.endpoint(k)}" for k in listeners) or "no listener"
            log.info("dialect {name}: {count} lots, on {where}", name=name, count=count, where=where)
    return service


def _upstream(
    settings: Config, reactor: Any, journal: Journal, lots: LotRouter, sync: SyncQueue
) -> tuple[UpstreamLots, UpstreamQueries, Forwarder]:
    """The t002 sink: each lot's upstream session and link, its queries, and the forwarder."""
    cloud = settings.cloud
    upstream = UpstreamLots(
        config=settings,
        http=_CloudClient(reactor, connections=UPSTREAM_CONCURRENCY),
        clock=reactor,
        endpoint=lambda: endpoints.clientFromString(reactor, cloud.downlink_endpoint),
        journal=journal,
        lots=lots,
        sync=sync,
        deadlines=settings.deadlines,
    )
    queries = UpstreamQueries(session_of=upstream.session, clock=reactor, deadlines=settings.deadlines)
    sink = UpstreamSink(
        url=cloud.url,
        gateway_id=settings.gateway.id,
        session_of=upstream.session,
        clock=reactor,
        settings=cloud,
        concurrency=UPSTREAM_CONCURRENCY,
    )
    forwarder = Forwarder(journal=journal, clock=reactor, settings=cloud, sink=sink)
    return upstream, queries, forwarder


def _serve_dialects(
    settings: Config, parts: GatewayParts, lots: LotRouter, sync: SyncQueue
) -> dict[str, IDialectServer]:
    """The running dialects: the standard one always, others when a lot speaks them or they listen."""
    dialects = installed()
    used = {"standard"} | {lot.dialect for lot in settings.lots}
    used |= {
        name
        for name, dialect in dialects.items()
        if any(settings.listen.endpoint(listener) for listener in dialect.listeners)
    }
    for name in sorted(used):
        host = DialectHost(name, parts, sync.lot_bound)
        lots.servers[name] = dialects[name].serve(host)
    standard = lots.servers["standard"]
    if isinstance(standard, StandardServer):
        lots.counters = standard.downlinks.counters
    return dict(lots.servers)


def _guarded(
    settings: Config, reactor: Any, name: str, description: str, factory: Any, guards: list[ConnectionGuard]
) -> Any:
    """A lot-facing listener's factory with its connections capped by peer and in all (CONTRACT §4).

    An HTTP site guards itself (`GuardedSite`); any other factory (the TCP
    downlink, a dialect's listener) is wrapped in a `GuardedFactory`.
    """
    if isinstance(factory, GuardedSite):
        guards.append(factory.guard)
        return factory
    guard = ConnectionGuard(
        name,
        clock=reactor,
        max_per_peer=settings.uplink.max_connections_per_peer,
        max_total=settings.uplink.max_connections,
        proxied=proxied(description),
    )
    guards.append(guard)
    return GuardedFactory(factory, guard)


def _listen(reactor: Any, name: str, description: str, factory: Any) -> StreamServerEndpointService:
    listener = StreamServerEndpointService(endpoints.serverFromString(reactor, description), factory)
    listener.setName(name)
    # A port that cannot be bound stops start-up instead of leaving a deaf gateway running.
    listener._raiseSynchronously = True
    return listener

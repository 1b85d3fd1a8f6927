"""The twistd plugin's options and service: `twistd -n cpmi-gateway --config FILE`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from functools import partial
from typing import Any, NoReturn

from attrs import evolve
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from gateway import __version__
from gateway.cloud.api import CommandApi
from gateway.cloud.metrics import (
    observe_fsync,
    register_bodies,
    register_forwarder,
    register_logins,
    register_space,
    register_upstream,
)
from gateway.cloud.metrics import register as register_metrics
from gateway.cloud.service import CloudService
from gateway.cloud.status import StatusReport
from gateway.config import CONFIG_SEARCH, Config, ConfigError, find_config, load
from gateway.dialects import installed
from gateway.dialects.host import GatewayParts
from gateway.dialects.service import LotsService
from gateway.dialects.standard import StandardServer
from gateway.firststart import Fresh, create_token_file
from gateway.heap import settle_heap
from gateway.journal import ChainError, Journal, JournalWriteError
from gateway.journal.jumps import read_jumps
from gateway.journal.service import JournalService
from gateway.keys import KeyFileError, load_or_create_signing_key, public_key_b64
from gateway.limits import (
    ConnectionGuard,
    FdLimit,
    Listener,
    ListenFailed,
    proxied,
    raise_fd_limit,
    register_guards,
)
from gateway.logs import (
    Observing,
    RecentRejections,
    WithLogObserver,
    check_log_format,
    json_observer,
    log_stream,
)
from gateway.lots.http import GuardedSite, HttpLimits
from gateway.reload import Reloader, Sighup
from gateway.state import Checkpointer, restore_at_start
from gateway.upstream.service import UpstreamService
from twisted import version as twisted_version

log = Logger()


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


class GatewayService(MultiService):
    """
    The gateway's service tree: the journal first, then the parts that use it.

    Its children stop one after the other, the last added first, each once the
    one after it has finished: the parts append as they stop (offline records,
    a checkpoint) and some only once what they wait for is done, so the
    journal, the first child, closes only after every other part has stopped.
    """

    cannot_listen: Callable[[str, BaseException], NoReturn] | None = None
    """Called with a listener's name and error when it cannot bind its port (see makeService)."""

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except ListenFailed as failed:
            self._failed(failed)

    def startService(self) -> None:
        try:
            super().startService()
        except ListenFailed as failed:
            self._failed(failed)

    def _failed(self, failed: ListenFailed) -> None:
        if self.cannot_listen is None:
            raise failed.error
        self.cannot_listen(failed.name, failed.error)

    def stopService(self) -> Deferred[Any]:
        Service.stopService(self)
        stopped: Deferred[Any] = succeed(None)
        for child in reversed(list(self)):
            stopped.addCallback(_stop_after, child)
        return stopped


def _stop_after(_: object, child: IService) -> Deferred[Any]:
    """Stop `child` once the one before has stopped; its failure is logged, the next still stops."""
    return DeferredList([maybeDeferred(child.stopService)])


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


def build_service(
    settings: Config, reactor: Any, journal: Journal, key: SigningKey, config_path: str | None = None
) -> GatewayService:
    """Wire the parts of the gateway around an open journal and the gateway's signing key.

    With `config_path`, the file `settings` were read from, the gateway reloads
    it on SIGHUP and on ``POST /v1/admin/reload``.
    """
    root = GatewayService()
    run_blocking = partial(deferToThreadPool, reactor, reactor.getThreadPool())
    store = JournalService(
        journal,
        clock=reactor,
        key=key,
        gateway_id=settings.gateway.id,
        min_free_bytes=settings.journal.min_free_bytes,
        seal_interval=settings.journal.seal_interval,
        seal_records=settings.journal.seal_records,
        retain_bytes=settings.journal.retain_bytes,
        retain_age=settings.journal.retain_days * 86400,
        run_blocking=run_blocking,
    )
    store.setServiceParent(root)
    parts = MultiService()
    parts.setName("parts")
    parts.setServiceParent(root)
    if settings.journal.fsync != "always":
        log.warn(
            "journal.fsync is {mode}: lots may be acknowledged before their records are on disk",
            mode=settings.journal.fsync,
        )
    lots = LotsService(settings, reactor=reactor, journal=journal)
    lots.setServiceParent(parts)
    sink: CloudService | UpstreamService | None = None
    skipped = read_jumps(journal.path).skipped  # a restore's seq jump is no backlog
    if settings.cloud.sink == "cloudevents":
        sink = CloudService(settings, reactor=reactor, journal=journal, key=key, skipped=skipped)
    elif settings.cloud.sink == "t002":
        sink = UpstreamService(
            settings, reactor=reactor, journal=journal, lots=lots.router, sync=lots.sync, skipped=skipped
        )
    if sink is not None:
        # After the lots, so it stops before them: the upstream's relays journal what they pass on.
        sink.setServiceParent(parts)
    gateway_parts = lots.serve(sink.queries if sink is not None else None)
    forwarding = sink.forwarding if sink is not None else None
    # Nothing runs before the reactor does, so the parts above may be built before the replay.
    restored = restore_at_start(
        journal,
        now=reactor.seconds(),
        sessions=lots.sessions,
        repeats=lots.repeats,
        totals=lots.totals,
        sync=lots.sync,
        progress=forwarding.progress if forwarding is not None else None,
    )
    log.info(
        "journal {path}: read {count} records from seq {first} ({whence}); {tokens} tokens in force, "
        "{sync} sync entries pending",
        path=settings.journal.path,
        count=restored.records,
        first=restored.from_seq,
        whence=f"checkpoint {restored.checkpoint}" if restored.checkpoint else "no checkpoint",
        tokens=len(lots.sessions),
        sync=lots.sync.pending_total(),
    )
    checkpointer = Checkpointer(
        journal=journal, state=restored.state, clock=reactor, records=settings.journal.checkpoint_records
    )
    checkpointer.setServiceParent(store)  # stops before the sealer: the last seal covers it
    # Retention keeps what start-up, forwarding and sync still need.
    store.keep(lambda: checkpointer.floor)
    store.keep(lots.sync.first_pending_seq)
    if forwarding is not None:
        store.keep(lambda: forwarding.engine.done_through + 1)

    registry = CollectorRegistry()
    register_metrics(registry, lots.router, journal, lots.sync)
    register_space(registry, store.space)
    register_logins(registry, lots.passwords)
    standard = lots.servers.get("standard")
    if isinstance(standard, StandardServer) and standard.bodies is not None:
        register_bodies(registry, standard.bodies)
    if forwarding is not None:
        register_forwarder(registry, forwarding.engine)
        log.info(
            "forwarding events to {url}, from journal seq {seq} on",
            url=settings.cloud.url,
            seq=forwarding.progress.through + 1,
        )
    if isinstance(sink, UpstreamService):
        register_upstream(registry, sink.links)
    observe_fsync(registry, journal)
    api = _api(settings, reactor, journal, store, lots, registry, gateway_parts, sink, config_path)
    api.setServiceParent(parts)
    register_guards(registry, lots.guards + api.guards)
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
    for name in lots.servers:
        if name != "standard":
            count = sum(1 for lot in settings.lots if lot.dialect == name)
            listeners = installed()[name].listeners
            where = ", ".join(f"{settings.listen.endpoint(k)}" for k in listeners) or "no listener"
            log.info("dialect {name}: {count} lots, on {where}", name=name, count=count, where=where)
    return root


class _ApiService(MultiService):
    """The command API's listener, the status page's rejections and SIGHUP; :attr:`guards` its cap."""

    guards: list[ConnectionGuard]


def _api(
    settings: Config,
    reactor: Any,
    journal: Journal,
    store: JournalService,
    lots: LotsService,
    registry: CollectorRegistry,
    gateway_parts: GatewayParts,
    sink: CloudService | UpstreamService | None,
    config_path: str | None,
) -> _ApiService:
    """The operators' side: the command API and status page, the reload (SIGHUP too)."""
    forwarding = sink.forwarding if sink is not None else None
    service = _ApiService()
    service.setName("api")
    reloader: Reloader | None = None
    if config_path is not None:
        reloader = Reloader(
            path=config_path,
            running=settings,
            read=lambda path: deferToThreadPool(reactor, reactor.getThreadPool(), load, path),
            parts=[
                gateway_parts,
                *lots.reconfigurable(),
                *([sink.links] if isinstance(sink, UpstreamService) else []),
            ],
            lots=lots.router,
            sessions=lots.sessions,
            journal=journal,
            served=frozenset(lots.servers),
        )
        Sighup(reactor, reloader.reload).setServiceParent(service)

    def running() -> Config:
        """The configuration in force: a reload changes it."""
        return reloader.running if reloader is not None else settings

    # The status page's recent rejections are the log's `lot.rejected`/`cloud.rejected` events.
    rejections = RecentRejections()
    Observing(rejections).setServiceParent(service)
    status = StatusReport(
        config=running,
        clock=reactor,
        started=reactor.seconds(),
        lots=lots.router,
        backlog=lots.sync.pending,
        journal=journal,
        ready=store.ready,
        forwarding=forwarding.engine if forwarding is not None else None,
        rejections=rejections.recent,
    )
    api = CommandApi(
        config=settings,
        lots=lots.router,
        journal=journal,
        clock=reactor,
        registry=registry,
        ready=store.ready,
        sync=lots.sync,
        deadlines=settings.deadlines,
        status=status,
        reload=reloader.reload if reloader is not None else None,
    )
    if reloader is not None:
        reloader.parts.append(api)
    # Its own cap and body limit: operators reach /healthz while the lots' ports are flooded.
    site = GuardedSite(
        api.resource(),
        reactor=reactor,
        limits=HttpLimits.api(settings.uplink),
        name="api",
        proxied=proxied(settings.listen.api),
    )
    service.guards = [site.guard]
    Listener("api", settings.listen.api, site, reactor).setServiceParent(service)
    return service

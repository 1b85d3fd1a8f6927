"""The twistd plugin's options and service: `twistd -n cpmi-gateway --config FILE`."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from functools import partial
from typing import Any, NoReturn

from attrs import evolve
from nacl.signing import SigningKey
from prometheus_client import CollectorRegistry
from twisted.application.service import MultiService
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger, LoggingFile
from twisted.python import usage

from gateway import __version__
from gateway.cloud.metrics import observe_fsync, register_forwards, register_space
from gateway.cloud.service import CloudService
from gateway.cluster.connection import NatsConnection
from gateway.cluster.forwards import NatsEventsService, forward_services
from gateway.cluster.service import cluster_service
from gateway.config import CONFIG_SEARCH, Config, ConfigError, find_config, load
from gateway.dialects.host import GatewayParts
from gateway.dialects.service import LotsService
from gateway.firststart import Fresh, create_token_file, log_keys
from gateway.forwarding import ForwardingEngine
from gateway.heap import settle_heap
from gateway.journal import ChainError, Journal, JournalWriteError
from gateway.journal.jumps import read_jumps
from gateway.journal.service import JournalService
from gateway.keys import KeyFileError, load_or_create_signing_key, public_key_b64
from gateway.limits import log_fd_limit, raise_fd_limit, register_guards
from gateway.logs import WithLogObserver, check_log_format, json_observer, log_stream
from gateway.operators import OperatorsService
from gateway.state import Checkpointer, restore_at_start
from gateway.tree import GatewayService
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
    reactor.callWhenRunning(
        log_keys,
        key_path=settings.gateway.signing_key,
        public_key=public_key_b64(key),
        created=created,
        token_path=settings.cloud.api_token_file,
        token_created=token_created,
    )
    log.info("cpmi-gateway {version}, configuration {path}", version=__version__, path=config["config"])
    log_fd_limit(raise_fd_limit())
    reactor.callWhenRunning(settle_heap)
    if config["log-format"] != "json":
        return service
    # twistd's options (--logfile, -n) are the parent of the plugin's when twistd runs it.
    parent = getattr(config, "parent", None)
    server_options = parent if isinstance(parent, usage.Options) else None
    return WithLogObserver(service, lambda: json_observer(log_stream(server_options, reactor)))


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
    # [cluster]: the NATS connection starts before the parts that use it and stops after them.
    cluster = cluster_service(settings, reactor=reactor)
    if cluster is not None:
        cluster.setServiceParent(root)
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
    if cluster is not None:
        cluster.join_lots(lots, journal=journal)  # sync entries over JetStream
    sink: CloudService | UpstreamService | NatsEventsService | None = None
    skipped = read_jumps(journal.path).skipped  # a restore's seq jump is no backlog
    connection = cluster.connection if cluster is not None else None
    if settings.cloud.sink == "cloudevents":
        sink = CloudService(settings, reactor=reactor, journal=journal, key=key, skipped=skipped)
    elif settings.cloud.sink == "t002":
        sink = UpstreamService(
            settings, reactor=reactor, journal=journal, lots=lots.router, sync=lots.sync, skipped=skipped
        )
    elif settings.cloud.sink == "nats" and connection is not None:
        sink = NatsEventsService(
            settings, reactor=reactor, journal=journal, key=key, connection=connection, skipped=skipped
        )
    if sink is not None:
        # After the lots, so it stops before them: the upstream's relays journal what they pass on.
        sink.setServiceParent(parts)
    # [[forward]]: further sinks over the same journal, each with its own progress and floor.
    forwards = forward_services(
        settings, reactor=reactor, journal=journal, key=key, connection=connection, skipped=skipped
    )
    for forward in forwards:
        forward.setServiceParent(parts)
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
        forwards=[forward.progress for forward in forwards],
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
    for forward in forwards:
        store.keep(partial(_floor, forward.engine))

    registry = CollectorRegistry()
    lots.register_metrics(registry)
    register_space(registry, store.space)
    if sink is not None:
        sink.register_metrics(registry)
        log.info(
            "forwarding events to {url}, from journal seq {seq} on",
            url=settings.cloud.url or settings.cloud.sink,
            seq=sink.forwarding.progress.through + 1,
        )
    if forwards:
        register_forwards(registry, {forward.engine.progress: forward.engine for forward in forwards})
    for forward, table in zip(forwards, settings.forwards, strict=True):
        log.info(
            "forward {name}: events to {url} ({sink}), from journal seq {seq} on",
            name=table.name,
            url=table.cloud.url or table.cloud.sink,
            sink=table.cloud.sink,
            seq=forward.progress.through + 1,
        )
    observe_fsync(registry, journal)
    api = _api(
        settings,
        reactor,
        journal,
        store,
        lots,
        registry,
        gateway_parts,
        sink,
        config_path,
        connection=connection,
        forwards=[
            (table.name, table.cloud.sink, f.engine)
            for f, table in zip(forwards, settings.forwards, strict=True)
        ],
    )
    api.setServiceParent(parts)
    if cluster is not None:
        # Commands over NATS, placement and tokens in NATS KV, and their metrics: after the replay.
        cluster.serve_lots(lots, api.api, status=api.status, journal=journal, registry=registry)
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
    return root


def _floor(engine: Any) -> int:
    """The first journal record a forwarding engine still needs (retention keeps it)."""
    return int(engine.done_through) + 1


def _api(
    settings: Config,
    reactor: Any,
    journal: Journal,
    store: JournalService,
    lots: LotsService,
    registry: CollectorRegistry,
    gateway_parts: GatewayParts,
    sink: CloudService | UpstreamService | NatsEventsService | None,
    config_path: str | None,
    *,
    connection: NatsConnection | None = None,
    forwards: Sequence[tuple[str, str, ForwardingEngine]] = (),
) -> OperatorsService:
    """The operators' side: the command API and status page, the reload (SIGHUP too)."""
    forwarding = sink.forwarding if sink is not None else None
    return OperatorsService(
        settings,
        reactor=reactor,
        journal=journal,
        ready=store.ready,
        lots=lots,
        registry=registry,
        forwarding=forwarding.engine if forwarding is not None else None,
        reconfigurable=[
            gateway_parts,
            *lots.reconfigurable(),
            *([sink.links] if isinstance(sink, UpstreamService) else []),
        ],
        config_path=config_path,
        connection=connection,
        forwards=forwards,
    )

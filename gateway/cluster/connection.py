"""
The gateway's one NATS connection (CONTRACT §9), on its own asyncio loop in its own thread.

nats-py is asyncio; the gateway runs on Twisted's default (epoll) reactor. The
connection lives on a dedicated event loop in a thread (``nats``), and the
reactor talks to it through two bridges:

- :meth:`NatsConnection.run` runs a coroutine on the NATS loop and fires a
  Deferred with its result on the reactor thread;
- :meth:`NatsConnection.to_reactor` hands work from the NATS loop (a
  subscription's handler) to the reactor thread.

Why a thread and not Twisted's asyncio reactor: measured (``bench/nats_bridge.py``,
docs/benchmarks.md), the asyncio reactor slows the uplink hot path for every
gateway -- also those without NATS -- while the thread costs one
``callFromThread`` per batch on the reactor, and the NATS client's parsing and
timers never run between two uplinks. See docs/nats.md.

The connection reconnects by itself, backing off from
``reconnect_min_delay`` doubling to ``reconnect_max_delay`` (with jitter) and
turning through the configured servers; :attr:`NatsConnection.state` says
where it stands. Publishes and requests made while it reconnects are not
buffered across the outage (see ``_disconnected``): they fail, and their
callers retry, so what a stream receives from one gateway stays in order.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import threading
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from concurrent.futures import Future as ConcurrentFuture
from typing import Any, TypeVar

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StreamConfig
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.settings import ClusterSettings

__all__ = [
    "CLOSED",
    "CONNECTED",
    "CONNECTING",
    "RECONNECTING",
    "NatsConnection",
    "NatsUnavailable",
    "StreamNotPermitted",
    "reconnect_delay",
    "ssl_context",
]

T = TypeVar("T")

CONNECTING = "connecting"
CONNECTED = "connected"
RECONNECTING = "reconnecting"
CLOSED = "closed"

# Seconds between attempts of the first connection (nats-py's own loop); reconnects back off.
_FIRST_CONNECT_WAIT = 2.0
# How long the connection's close may take at stop before the loop is stopped anyway.
_CLOSE_TIMEOUT = 5.0

_log = Logger()


class NatsUnavailable(Exception):
    """The NATS connection is not there (not yet connected, or closed): try again later."""


class StreamNotPermitted(Exception):
    """The stream is missing and the server does not let this gateway create it: it never will."""


def reconnect_delay(settings: ClusterSettings, attempts: int, random: Callable[[], float]) -> float:
    """The wait before reconnect attempt ``attempts + 1``: from reconnect_min_delay doubling up to
    reconnect_max_delay, drawn between half and all of it; none before the first."""
    if attempts <= 0:
        return 0.0
    ceiling = min(settings.reconnect_max_delay, settings.reconnect_min_delay * 2 ** min(attempts - 1, 62))
    return ceiling / 2 + random() * ceiling / 2


def ssl_context(settings: ClusterSettings) -> ssl.SSLContext | None:
    """[cluster.tls] as the ``ssl.SSLContext`` nats-py takes; None for plain TCP."""
    tls = settings.tls
    if tls is None:
        return None
    context = ssl.create_default_context(cafile=tls.ca_file or None)
    if tls.cert_file:
        context.load_cert_chain(tls.cert_file, tls.key_file)
    return context


class NatsConnection(Service):
    """
    One nats-py connection, on a loop thread of its own, while the service runs.

    ``state`` is ``connecting`` until the first connection, then ``connected``
    or ``reconnecting``, and ``closed`` before start and after stop.
    ``state_observers`` are called on the reactor thread with each new state.
    ``client_factory`` makes the nats-py client (tests pass their own).
    """

    def __init__(
        self,
        settings: ClusterSettings,
        *,
        reactor: Any,
        client_factory: Callable[[], Client] = Client,
        random: Callable[[], float] = random.random,
    ) -> None:
        self.settings = settings
        self._reactor = reactor
        self._client_factory = client_factory
        self._random = random
        self.state = CLOSED
        """connecting | connected | reconnecting | closed."""
        self.state_observers: list[Callable[[str], None]] = []
        """Called on the reactor thread with each new state."""
        self.last_error = ""
        """The last connection error, for the status page ("" once connected again)."""
        self.reconnects = 0
        """Reconnections since start."""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._connector: ConcurrentFuture[None] | None = None
        self._loop_ended: Deferred[None] = Deferred()
        # A new connection after nats-py gave one up: the timer, then the connect task.
        self._again: asyncio.TimerHandle | asyncio.Task[None] | None = None
        self._stopping = False
        self.generation = 0
        """Disconnections so far (counted on the NATS loop): a publisher that sees it change
        mid-batch stops, so nothing it sends after the loss reaches the server without what went before."""
        # The server's recent "Permissions Violation for Publish to ..." errors (the NATS loop's).
        self._denied: deque[str] = deque(maxlen=64)
        self.setName("nats")

    # -- the bridges

    def run(self, fn: Callable[[Client, JetStreamContext], Awaitable[T]]) -> Deferred[T]:
        """Run ``fn(nc, js)`` on the NATS loop; its result or failure fires on the reactor thread.

        Fails at once with :class:`NatsUnavailable` before the first connection
        and after stop; while reconnecting, ``fn`` runs (and its requests fail
        or time out as nats-py decides). Cancelling the Deferred cancels the coroutine.
        """
        loop, nc, js = self._loop, self._nc, self._js
        if loop is None or nc is None or js is None or self._stopping:
            return fail(NatsUnavailable(f"NATS is {self.state}"))
        future = asyncio.run_coroutine_threadsafe(_call(fn, nc, js), loop)
        return self._deferred(future)

    def to_reactor(self, f: Callable[..., object], *args: object) -> None:
        """From the NATS loop (a subscription's handler): call ``f(*args)`` on the reactor thread."""
        self._reactor.callFromThread(f, *args)

    def _deferred(self, future: ConcurrentFuture[T]) -> Deferred[T]:
        """A Deferred firing on the reactor thread with ``future``'s outcome; cancelling it cancels that."""

        def cancel(_: Deferred[T]) -> None:
            future.cancel()

        d: Deferred[T] = Deferred(cancel)

        def done(finished: ConcurrentFuture[T]) -> None:
            self._reactor.callFromThread(_settle, d, finished)

        future.add_done_callback(done)
        return d

    # -- streams

    def ensure_stream(self, name: str, subjects: Iterable[str], **config: Any) -> Deferred[object]:
        """The stream ``name``: looked up, and created if missing with ``[cluster] replicas``.

        ``config`` are further ``StreamConfig`` fields (``duplicate_window`` in
        seconds, ``max_age``, ...), used only when the stream is created: one
        that exists is taken as the operator set it up. Fires with its
        ``StreamInfo``; fails with nats-py's error (an ``APIError`` when the
        server refuses, e.g. no right to create it).
        """
        stream = StreamConfig(
            name=name, subjects=list(subjects), num_replicas=self.settings.replicas, **config
        )

        async def ensure(nc: Client, js: JetStreamContext) -> object:
            try:
                return await js.stream_info(name)
            except nats.js.errors.NotFoundError:
                pass
            try:
                return await js.add_stream(stream)
            except nats.errors.TimeoutError:
                if self.denied(f"$JS.API.STREAM.CREATE.{name}"):
                    raise StreamNotPermitted(
                        f"stream {name} is missing and this gateway may not create it"
                    ) from None
                raise
            except nats.js.errors.BadRequestError as error:
                if error.err_code == _STREAM_NAME_IN_USE:  # another gateway created it meanwhile
                    return await js.stream_info(name)
                raise

        return self.run(ensure)

    def denied(self, subject: str) -> bool:
        """On the NATS loop: whether the server said lately this gateway may not publish to ``subject``."""
        # nats-py lower-cases the server's words, the subject too.
        quoted = f'"{subject}"'.lower()
        return any(quoted in message.lower() for message in self._denied)

    # -- the service

    def startService(self) -> None:
        super().startService()
        self._stopping = False
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._loop_ended = Deferred()
        ended = self._loop_ended
        self._thread = threading.Thread(
            target=_run_loop,
            args=(loop, lambda: self._reactor.callFromThread(ended.callback, None)),
            name="nats",
            daemon=False,
        )
        self._thread.start()
        self._set_state(CONNECTING)
        self._connector = asyncio.run_coroutine_threadsafe(self._connect(), loop)

    def stopService(self) -> Deferred[None]:
        """Close the connection (published messages flushed), stop the loop and join its thread."""
        super().stopService()
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return succeed(None)
        self._stopping = True
        connector = self._connector

        async def close() -> None:
            if connector is not None:
                connector.cancel()
            if self._again is not None:
                self._again.cancel()
            nc = self._nc
            if nc is not None and not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.close(), _CLOSE_TIMEOUT)
                except Exception as error:  # closing is best effort: the loop stops anyway
                    _log.warn("nats: closing the connection: {error}", error=error)

        stopped = self._loop_ended
        self._deferred(asyncio.run_coroutine_threadsafe(close(), loop)).addBoth(
            lambda _: loop.call_soon_threadsafe(loop.stop)
        )

        def finished(result: object) -> object:
            # The thread said so as its last step: joining it does not wait.
            thread.join()
            self._loop = self._thread = None
            self._nc = self._js = None
            self._set_state(CLOSED)
            return result

        return stopped.addBoth(finished)

    # -- on the NATS loop

    async def _connect(self) -> None:
        """Connect once (nats-py tries again every few seconds until a server answers)."""
        nc = self._client_factory()
        settings = self.settings
        options: dict[str, Any] = {
            "servers": list(settings.servers),
            "allow_reconnect": True,
            "max_reconnect_attempts": -1,
            "connect_timeout": settings.connect_timeout,
            "reconnect_time_wait": min(_FIRST_CONNECT_WAIT, settings.reconnect_max_delay),
            "reconnect_to_server_handler": self._next_server,
            "error_cb": self._error,
            "disconnected_cb": self._disconnected,
            "reconnected_cb": self._reconnected,
            "closed_cb": self._closed,
        }
        if settings.name:
            options["name"] = settings.name
        if settings.creds:
            options["user_credentials"] = settings.creds
        if settings.token:
            options["token"] = settings.token
        context = ssl_context(settings)
        if context is not None:
            options["tls"] = context
            if settings.tls is not None and settings.tls.hostname:
                options["tls_hostname"] = settings.tls.hostname
        try:
            await nc.connect(**options)
        except asyncio.CancelledError:
            if not nc.is_closed:
                await nc.close()
            raise
        self._nc = nc
        self._js = nc.jetstream(timeout=settings.request_timeout)
        self.to_reactor(self._connected_first)

    def _next_server(self, servers: list[Any], info: dict[str, Any]) -> tuple[Any, float]:
        """nats-py's reconnect hook: the server tried least, after a backoff by its failed attempts."""
        server = min(servers, key=lambda each: each.reconnects)
        return server, reconnect_delay(self.settings, server.reconnects, self._random)

    async def _disconnected(self) -> None:
        # Drop what waits to be written: written after the reconnect, it would reach the
        # server without what was lost with the old socket, out of order. Its senders see
        # a timeout and send it again, in order.
        self.generation += 1
        nc = self._nc
        if nc is not None:
            nc._pending = []
            nc._pending_data_size = 0
        if not self._stopping and nc is not None and not nc.is_closed:
            self.to_reactor(self._set_state, RECONNECTING)

    async def _reconnected(self) -> None:
        self.to_reactor(self._reconnected_on_reactor)

    async def _closed(self) -> None:
        """nats-py gave the connection up (a protocol error, an authorization violation): start over
        with a new client after a while; its users see ``connecting`` and then ``connected`` again."""
        if self._stopping or self._nc is None:
            return
        self._nc = self._js = None
        self.to_reactor(self._set_state, CONNECTING)
        delay = reconnect_delay(self.settings, 3, self._random)
        self._again = asyncio.get_running_loop().call_later(delay, self._connect_again)

    def _connect_again(self) -> None:
        self._again = None
        if not self._stopping:
            self._again = asyncio.ensure_future(self._connect())

    async def _error(self, error: Exception) -> None:
        if _PERMISSIONS_VIOLATION in str(error).lower():
            self._denied.append(str(error))
        self.to_reactor(
            self._failed, f"{type(error).__name__}: {error}" if str(error) else type(error).__name__
        )

    # -- on the reactor

    def _connected_first(self) -> None:
        if self._stopping:
            return
        _log.info("nats: connected to {servers}", servers=", ".join(self.settings.servers))
        self.last_error = ""
        self._set_state(CONNECTED)

    def _reconnected_on_reactor(self) -> None:
        if self._stopping:
            return
        self.reconnects += 1
        _log.info("nats: connected again after: {error}", error=self.last_error or "a disconnection")
        self.last_error = ""
        self._set_state(CONNECTED)

    def _failed(self, reason: str) -> None:
        if reason != self.last_error:
            _log.warn("nats: {reason} (state {state})", reason=reason, state=self.state)
        self.last_error = reason

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        if state == RECONNECTING:
            _log.warn("nats: connection lost; reconnecting with backoff")
        self.state = state
        for observer in list(self.state_observers):
            observer(state)


# How the server words a subject this connection may not publish to (nats-py passes it to error_cb).
_PERMISSIONS_VIOLATION = "permissions violation"
# JetStream's error code for a stream created by someone else with another configuration.
_STREAM_NAME_IN_USE = 10058


async def _call(
    fn: Callable[[Client, JetStreamContext], Awaitable[T]], nc: Client, js: JetStreamContext
) -> T:
    return await fn(nc, js)


def _settle(d: Deferred[T], future: ConcurrentFuture[T]) -> None:
    """On the reactor thread: fire ``d`` with ``future``'s result or failure (once)."""
    if d.called:
        return
    if future.cancelled():
        d.errback(Failure(asyncio.CancelledError()))
        return
    error = future.exception()
    if error is not None:
        d.errback(Failure(error))
    else:
        d.callback(future.result())


def _run_loop(loop: asyncio.AbstractEventLoop, ended: Callable[[], None]) -> None:
    """The NATS thread: run the loop until stopped, close it, then say so (``ended``)."""
    asyncio.set_event_loop(loop)
    try:
        loop.run_forever()
    finally:
        try:
            pending = asyncio.all_tasks(loop)
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()
            ended()

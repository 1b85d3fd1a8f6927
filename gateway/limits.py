"""The process's file descriptors: its limit raised at start, and each listener's connections capped.

Every bound lot holds a TCP connection, and each connection is a file
descriptor. Many systems start services with a soft limit of 1024, which
would cap a gateway at about a thousand lots while the hard limit allows far
more; the soft limit is the process's own to raise up to the hard one.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

from attrs import frozen
from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from twisted.application import strports
from twisted.application.service import MultiService
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory, connectionDone
from twisted.logger import Logger
from twisted.protocols.haproxy._wrapper import HAProxyProtocolWrapper, HAProxyWrappingFactory
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import Attribute, Interface

from gateway.logs import ECHO_CHARS, clip, describe

__all__ = [
    "MAX_PROXY_HEADER",
    "REFUSALS",
    "RESERVED",
    "ConnectionGuard",
    "FdLimit",
    "GuardCollector",
    "GuardedFactory",
    "IGuardsItself",
    "ListenFailed",
    "Listener",
    "ProxyHeaderFactory",
    "peer_host",
    "proxied",
    "raise_fd_limit",
    "register_guards",
]

_log = Logger()

RESERVED = 64
"""Descriptors kept for what is not a lot: listeners, journal segments, the cloud, threads."""

# Linux refuses a soft limit above fs.nr_open even when the hard limit is unlimited.
_UNLIMITED_CAP = 1_048_576


class Limits(Protocol):
    """The part of the `resource` module used here (a test passes its own)."""

    RLIMIT_NOFILE: int
    RLIM_INFINITY: int

    def getrlimit(self, which: int, /) -> tuple[int, int]: ...

    def setrlimit(self, which: int, limits: tuple[int, int], /) -> None: ...


@frozen
class FdLimit:
    """The soft limit before and after, the hard limit, and why it could not be raised ("" if it was)."""

    before: int
    after: int
    hard: int
    problem: str = ""

    @property
    def lots(self) -> int:
        """About how many lots can hold a connection at once."""
        return max(0, self.after - RESERVED)


def log_fd_limit(limit: FdLimit) -> None:
    """Say how many lot connections the process can hold, and whether the limit could be raised."""
    if limit.problem:
        _log.warn(
            "cannot raise the file-descriptor limit from {before} to {hard}: {problem}; room for about "
            "{lots} lot connections",
            before=limit.before,
            hard=limit.hard,
            problem=limit.problem,
            lots=limit.lots,
        )
    elif limit.after != limit.before:
        _log.info(
            "file-descriptor limit raised from {before} to {after}: room for about {lots} lot connections",
            before=limit.before,
            after=limit.after,
            lots=limit.lots,
        )
    else:
        _log.info(
            "file-descriptor limit {after}: room for about {lots} lot connections",
            after=limit.after,
            lots=limit.lots,
        )


def raise_fd_limit(limits: Limits = resource) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped when unlimited); report what it is."""
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == limits.RLIM_INFINITY else hard
    if soft == limits.RLIM_INFINITY or soft >= target:
        return FdLimit(soft, soft, hard)
    try:
        limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        return FdLimit(soft, soft, hard, str(error))
    return FdLimit(soft, target, hard)


# Connections: how many one listener holds, by peer address and in all (CONTRACT §4).

REFUSAL_LOG_INTERVAL = 60.0
"""Seconds between two log lines of one kind of refusal on a listener: a flood is a line a minute."""

REFUSALS = ("per_peer", "total", "header_timeout", "body_rate", "body_size")
"""What a listener refuses: a connection over a cap, a head or a body too slow, a body too large."""

_REFUSAL_TEXT = {
    "per_peer": "connections from one peer over max_connections_per_peer ({limit})",
    "total": "connections over the listener's cap ({limit})",
    "header_timeout": "connections whose request head took over {limit} s",
    "body_rate": "connections whose body came slower than {limit} bytes/s",
    "body_size": "request bodies over {limit} bytes (413)",
}


def endpoint_fields(description: str) -> tuple[list[str], dict[str, str]]:
    """The positional and the ``name=value`` fields of an endpoint description, after its type.

    Split as Twisted's endpoint parser splits them (``:`` separates, a backslash
    escapes the next character), so that what a built endpoint was given can be
    read without its private attributes. Check the description with
    ``endpoints.serverFromString``/``clientFromString`` first.
    """
    fields: list[str] = []
    current: list[str] = []
    escaped = False
    for char in description:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ":":
            fields.append("".join(current))
            current = []
        else:
            current.append(char)
    fields.append("".join(current))
    positional = [field for field in fields[1:] if "=" not in field]
    named = dict(field.split("=", 1) for field in fields[1:] if "=" in field)
    return positional, named


_PROXY_PREFIX = "haproxy:"


def proxied(description: str) -> bool:
    """Whether a listener's endpoint description takes the PROXY protocol (`haproxy:...`, CONTRACT §9)."""
    return description.strip().lower().startswith(_PROXY_PREFIX)


BACKLOG = 1024
"""The listen backlog a listener gets when its description names none (``backlog=`` wins).

Twisted's default is 50: when thousands of lots reconnect at once (a restart,
the month's rollover) the kernel's accept queue overflows and the SYNs it drops
come back a second later. The kernel caps any backlog at ``net.core.somaxconn``.
"""

BACKLOG_MAX = 65535
"""The largest ``backlog=`` the configuration takes: more than any ``net.core.somaxconn`` lets through."""

_BACKLOG_TYPES = frozenset({"tcp", "tcp6", "ssl", "unix"})


def with_backlog(description: str, backlog: int = BACKLOG) -> str:
    """`description` with ``backlog=`` added when its type takes one (tcp, tcp6, ssl, unix) and it names none.

    A `haproxy:` description is read through to the endpoint it wraps. Other
    types (``systemd:``, plugins) are left as they are: they refuse the argument.
    """
    inner = description.strip()
    if proxied(inner):
        inner = inner[len(_PROXY_PREFIX) :]
    kind = inner.split(":", 1)[0].strip().lower()
    if kind not in _BACKLOG_TYPES or "backlog" in endpoint_fields(inner)[1]:
        return description
    return f"{description.rstrip()}:backlog={backlog}"


MAX_PROXY_HEADER = 4096
"""Bytes a PROXY header may take before it is complete: past them, the connection is closed.

HAProxy's own headers are 16 + 12 (IPv4) or + 36 (IPv6) bytes, plus a few
TLVs when asked; a version 2 header may declare up to 64 KiB, which
Twisted's parser gathers by copying its buffer on every read.
"""


class _ProxyHeaderProtocol(HAProxyProtocolWrapper):
    """Twisted's PROXY-protocol wrapper, bounded, telling the protocol it wraps when its peer is known.

    Until the header is read, `getPeer` is the balancer's address; once it is,
    the wrapped protocol's `peer_known()` (if it has one) is called, so a
    connection that sent its header and nothing else is counted under its
    peer at once. What bounds a connection that never sends a whole header
    is the wrapped protocol's own first deadline (the HTTP head's
    `header_timeout`, the downlink's `bind_timeout`), which starts as the
    connection opens, and `MAX_PROXY_HEADER`.
    """

    _header_bytes = 0

    def dataReceived(self, data: bytes) -> None:
        if self._proxyInfo is not None:
            self.wrappedProtocol.dataReceived(data)
            return
        self._header_bytes += len(data)
        super().dataReceived(data)
        if self._proxyInfo is None:
            if self._header_bytes > MAX_PROXY_HEADER:
                self.abortConnection()
            return
        known = getattr(self.wrappedProtocol, "peer_known", None)
        if known is not None:
            known()


class ProxyHeaderFactory(HAProxyWrappingFactory):
    """What a `haproxy:` listener wraps its factory in: Twisted's own, with `_ProxyHeaderProtocol`."""

    protocol = _ProxyHeaderProtocol  # type: ignore[assignment]  # a subclass: the same constructor


def peer_host(address: object) -> str:
    """The part of a peer's address connections are counted by: its IP address (a UNIX socket: "unix")."""
    host = getattr(address, "host", None)
    return host if isinstance(host, str) else type(address).__name__


class ConnectionGuard:
    """One listener's open connections against its caps, and what it refused.

    `admit` is asked as a connection is accepted and `release` told as it
    closes (`settle` takes one out of its peer's count early: a TCP lot that
    has bound); `refused` counts each kind of refusal (`REFUSALS`) for the
    metrics, and `note` logs them as a ``connection.refused`` event at most
    once a `REFUSAL_LOG_INTERVAL` per kind, so a flood cannot fill the log.

    Behind a PROXY-protocol balancer (`proxied`) the address a connection is
    accepted from is the balancer's: its peer is counted once known, by `place`.
    """

    def __init__(
        self,
        listener: str,
        *,
        clock: Any,
        max_per_peer: int,
        max_total: int,
        proxied: bool = False,
    ) -> None:
        self.listener = listener
        self.max_per_peer = max_per_peer
        self.max_total = max_total
        self.proxied = proxied
        self.open = 0
        self.by_peer: dict[str, int] = {}
        self.refused: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self.clock = clock
        self._unlogged: dict[str, int] = dict.fromkeys(REFUSALS, 0)
        self._logged_at: dict[str, float] = {}

    def admit(self, address: object) -> str | None:
        """Count a connection accepted from `address`: the host it is counted by ("" until placed), or None.

        None means a cap is reached: the caller closes the connection at once.
        """
        if self.open >= self.max_total:
            self.note("total", peer_host(address), self.max_total)
            return None
        host = ""
        if not self.proxied:
            host = peer_host(address)
            if not self._add_peer(host):
                return None
        self.open += 1
        return host

    def place(self, address: object) -> str | None:
        """Count a proxied connection under its peer, known now: the host, or None if over the cap."""
        host = peer_host(address)
        return host if self._add_peer(host) else None

    def release(self, host: str | None) -> None:
        """A connection `admit` counted (under `host`, "" if never placed) has closed."""
        if host is None:
            return
        self.open -= 1
        if host:
            self.settle(host)

    def settle(self, host: str) -> None:
        """A connection counted under `host` no longer counts there (it stays in the total)."""
        left = self.by_peer[host] - 1
        if left:
            self.by_peer[host] = left
        else:
            del self.by_peer[host]

    def _add_peer(self, host: str) -> bool:
        count = self.by_peer.get(host, 0)
        if count >= self.max_per_peer:
            self.note("per_peer", host, self.max_per_peer)
            return False
        self.by_peer[host] = count + 1
        return True

    def note(self, kind: str, peer: str, limit: float) -> None:
        """Count one refusal of `kind` (from `peer`); log them at most once a `REFUSAL_LOG_INTERVAL`."""
        self.refused[kind] += 1
        self._unlogged[kind] += 1
        now = self.clock.seconds()
        last = self._logged_at.get(kind)
        if last is not None and now - last < REFUSAL_LOG_INTERVAL:
            return
        count = self._unlogged[kind]
        self._unlogged[kind] = 0
        self._logged_at[kind] = now
        _log.warn(
            "{listener}: refused {count} " + _REFUSAL_TEXT[kind] + ", the last from {peer}",
            event="connection.refused",
            listener=self.listener,
            limit=limit,
            refusal=kind,
            count=count,
            peer=clip(peer, 2 * ECHO_CHARS),
            park="",
            code="",
            result=kind,
            reason=f"{self.listener}: {count} refused, {kind} (limit {limit}), the last from {clip(peer)}",
        )


class IGuardsItself(Interface):
    """A listener's factory that counts its connections in a `ConnectionGuard` of its own.

    The HTTP sites (the uplink's, the command API's) count in their channels,
    which also keep the HTTP bounds; any other lot-facing factory is wrapped
    in a `GuardedFactory` instead.
    """

    guard = Attribute("The `ConnectionGuard` its connections are counted in.")


class _GuardedProtocol(ProtocolWrapper):
    """Counts its connection in the guard: under its peer while its lot is unbound, in all until it closes."""

    factory: GuardedFactory
    host: str | None = None
    """The host its per-peer count is held under ("" when none is), None once released."""
    _settled = False
    _over_cap = False
    _check: IDelayedCall | None = None

    def dataReceived(self, data: bytes) -> None:
        if self._settled:
            self.wrappedProtocol.dataReceived(data)
            return
        if self.host == "" and not self._place():
            return
        self.wrappedProtocol.dataReceived(data)
        self._settle_if_bound()

    def write(self, data: bytes) -> None:
        super().write(data)
        if not self._settled and self._check is None:
            # A login binds after its password check, in a thread, answering just before it
            # binds: look again once that has run, not only when the lot next sends.
            self._check = self.factory.guard.clock.callLater(0, self._checked)

    def _checked(self) -> None:
        self._check = None
        self._settle_if_bound()

    def _settle_if_bound(self) -> None:
        if self._settled or getattr(self.wrappedProtocol, "bound_at", None) is None:
            return
        # Its lot has bound: the per-peer cap is for connections that have not.
        self._settled = True
        if self.host:
            self.factory.guard.settle(self.host)
            self.host = ""

    def peer_known(self) -> None:
        """The PROXY header has named the peer (`ProxyHeaderFactory`): count the connection there now."""
        if self.host == "" and not self._settled:
            self._place()

    def _place(self) -> bool:
        """A proxied connection's peer is known once the PROXY header is read: count it there.

        The lot-side protocol named its peer as the connection was accepted,
        from the balancer's address: a protocol that keeps it in `peer` (as
        `DownlinkProtocol` and the bolink connection do, for logs, the
        journal's online records and the status page) is given the lot's.
        """
        if self._over_cap:
            return False
        address = self.getPeer()
        host = self.factory.guard.place(address)
        if host is None:
            self._over_cap = True
            self.abortConnection()
            return False
        self.host = host
        inner = self.wrappedProtocol
        if hasattr(inner, "peer"):
            inner.peer = describe(address)
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._check is not None:
            self._check.cancel()
            self._check = None
        self.factory.guard.release(self.host)
        self.host = None
        super().connectionLost(reason)


class GuardedFactory(WrappingFactory):
    """A lot-facing TCP listener's factory under a `ConnectionGuard`: over a cap, a new connection is closed.

    For the TCP downlink and dialect listeners, whose traffic is a few frames a
    minute a lot, so the wrapper's layer costs nothing that matters; the HTTP
    uplink counts in its channel instead (`gateway.lots.http`). Twisted's own
    `policies.LimitConnectionsByPeer` reads addresses as tuples (which they no
    longer are) and has no total cap.

    Many lots may share one address (a NAT, one server running several lots'
    software) and each holds its connection for good, so here the per-peer cap
    counts connections whose lot has not bound yet: those an attacker can
    open. A lot-side protocol tells it has bound by setting `bound_at` (as
    `gateway.lots.tcp.DownlinkProtocol` and the bolink connection do).
    """

    protocol = _GuardedProtocol

    def __init__(self, wrappedFactory: Any, guard: ConnectionGuard) -> None:
        super().__init__(wrappedFactory)
        self.guard = guard

    def buildProtocol(self, addr: Any) -> Any:
        host = self.guard.admit(addr)
        if host is None:
            return None
        protocol = super().buildProtocol(addr)
        if not isinstance(protocol, _GuardedProtocol):
            self.guard.release(host)
            return None
        protocol.host = host
        return protocol


class GuardCollector(Collector):
    """The listeners' guards as Prometheus metrics: open connections and refusals by kind."""

    def __init__(self, guards: Sequence[ConnectionGuard]) -> None:
        self._guards = guards

    def describe(self) -> Iterator[Metric]:
        return self._families(describing=True)

    def collect(self) -> Iterator[Metric]:
        return self._families(describing=False)

    def _families(self, *, describing: bool) -> Iterator[Metric]:
        open_ = GaugeMetricFamily(
            "cpmi_listener_connections", "Connections open on a listener.", labels=["listener"]
        )
        refused = CounterMetricFamily(
            "cpmi_listener_refused",
            "Connections or requests a listener refused, by limit: per_peer, total (caps), "
            "header_timeout, body_rate (too slow), body_size (413).",
            labels=["listener", "limit"],
        )
        if not describing:
            for guard in self._guards:
                open_.add_metric([guard.listener], guard.open)
                for kind, count in guard.refused.items():
                    refused.add_metric([guard.listener, kind], count)
        yield open_
        yield refused


def register_guards(registry: CollectorRegistry, guards: Sequence[ConnectionGuard]) -> GuardCollector:
    """Expose the listeners' guards on `registry`."""
    collector = GuardCollector(guards)
    registry.register(collector)
    return collector


class ListenFailed(Exception):
    """A listener could not bind its port as the gateway started: ``name`` is its key under ``listen``."""

    def __init__(self, name: str, error: CannotListenError) -> None:
        super().__init__(name, error)
        self.name = name
        self.error = error


class Listener(MultiService):
    """
    One port of the gateway, named by its key under ``listen``: Twisted's strports service.

    A port that cannot be bound stops start-up (strports raises at once
    rather than leaving a deaf gateway running); this names the listener in
    the :class:`ListenFailed` it raises, for the one-line error. A `haproxy:`
    description takes the PROXY protocol through `ProxyHeaderFactory`. A
    description naming no ``backlog=`` listens with :data:`BACKLOG`.
    """

    def __init__(self, name: str, description: str, factory: Factory | Any, reactor: Any) -> None:
        super().__init__()
        self.setName(name)
        self.key = name
        self.description = description
        self.factory = factory
        description = with_backlog(description)
        if proxied(description):
            # Twisted's `haproxy:` endpoint, with its wrapper bounded and telling when the peer is known.
            inner = description.strip()[len(_PROXY_PREFIX) :]
            factory = ProxyHeaderFactory(factory)
            strports.service(inner, factory, reactor=reactor).setServiceParent(self)
        else:
            strports.service(description, factory, reactor=reactor).setServiceParent(self)

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as error:
            raise ListenFailed(self.key, error) from error

    def startService(self) -> None:
        try:
            super().startService()
        except CannotListenError as error:
            raise ListenFailed(self.key, error) from error

"""
Every lot as the upstream platform sees it: its session (HTTP) and its TCP link, kept up.

For each configured lot, :class:`UpstreamLots` holds an
:class:`~gateway.upstream.session.UpstreamSession` (login, token, requests)
and a :class:`gateway.client.DownlinkClient` connected to ``cloud.downlink``:
bound by ``heartbeat`` with the session's token, sending heartbeats, closing a
link the upstream has gone silent on (``tcp.read_idle``), reconnecting with a
capped, jittered backoff, and answering each ACK through the lot's
:class:`~gateway.upstream.relay.Relay`. A ``9000`` on the link makes the
session log in again; the link binds with the new token on its next attempt.

A reload adds and removes lots here as it does on the lot side; a lot whose
upstream account changed gets a new session and link.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Mapping
from typing import Any

from attrs import frozen
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IReactorTime, IStreamClientEndpoint
from twisted.logger import Logger

from gateway.interfaces import JournalAppend
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import Backoff, DownlinkClient
from gateway.lotclient.uplink import HTTPRequester
from gateway.settings import Config, LotConfig
from gateway.upstream.relay import Relay, RelayLots, RelaySync
from gateway.upstream.session import UpstreamAccount, UpstreamSession

__all__ = ["HEARTBEAT_INTERVAL", "UpstreamLots"]

HEARTBEAT_INTERVAL = 30.0
"""Seconds between the heartbeats on each upstream link (the standard asks for at most 60)."""

RECONNECT = Backoff(initial=1.0, factor=2.0, maximum=60.0, jitter=0.5)

log = Logger()


@frozen
class _Account:
    """What of a lot's configuration its upstream session and link are made of."""

    username: str
    password: str
    secret: str

    @classmethod
    def of(cls, lot: LotConfig) -> _Account:
        return cls(lot.upstream_username, lot.upstream_password, lot.upstream_secret)


class _Lot:
    """One lot's session and link."""

    def __init__(
        self, session: UpstreamSession, link: DownlinkClient, relay: Relay, account: _Account
    ) -> None:
        self.session = session
        self.link = link
        self.relay = relay
        self.account = account


class UpstreamLots:
    """The upstream sessions and links of every configured lot; see the module docstring."""

    def __init__(
        self,
        *,
        config: Config,
        http: HTTPRequester,
        clock: IReactorTime,
        endpoint: Callable[[], IStreamClientEndpoint],
        journal: JournalAppend,
        lots: RelayLots,
        sync: RelaySync | None,
        deadlines: Mapping[str, float],
        rng: random.Random | None = None,
    ) -> None:
        self._http = http
        self._clock = clock
        self._endpoint = endpoint
        self._journal = journal
        self._lots = lots
        self._sync = sync
        self._deadlines = deadlines
        self._rng = rng if rng is not None else random.Random()
        self._config = config
        self._running = False
        self._by_park: dict[str, _Lot] = {}
        for lot in config.lots:
            self._by_park[lot.park_code] = self._make(lot)

    def session(self, park: str) -> UpstreamSession | None:
        """The upstream session of `park`, or None when it is not configured (now)."""
        lot = self._by_park.get(park)
        return lot.session if lot is not None else None

    def link(self, park: str) -> DownlinkClient | None:
        """The upstream TCP link of `park`, or None."""
        lot = self._by_park.get(park)
        return lot.link if lot is not None else None

    def bound(self) -> int:
        """How many lots' links are bound upstream now."""
        return sum(1 for lot in self._by_park.values() if lot.link.bound)

    def totals(self) -> dict[str, int]:
        """The sessions', relays' and links' counters, summed over the lots configured now."""
        totals: Counter[str] = Counter()
        for lot in self._by_park.values():
            totals.update(lot.session.counters)
            totals.update(lot.relay.counters)
            totals["lost"] += lot.link.counters.lost
            totals["read_idle_closes"] += lot.link.counters.read_idle_closes
        return dict(totals)

    def _make(self, lot: LotConfig) -> _Lot:
        account = _Account.of(lot)
        cloud = self._config.cloud
        session = UpstreamSession(
            account=UpstreamAccount(lot.park_code, account.username, account.password, account.secret),
            url=cloud.url,
            http=self._http,
            clock=self._clock,
            zone=self._config.gateway.timezone,
            timeout=cloud.request_timeout,
            journal=self._journal,
        )
        relay = Relay(
            park=lot.park_code,
            lots=self._lots,
            sync=self._sync,
            journal=self._journal,
            clock=self._clock,
            deadlines=self._deadlines,
        )
        tcp = self._config.tcp
        holder: list[DownlinkClient] = []

        def token_refused() -> None:
            session.token_invalid(holder[0].token if holder else "")

        link = DownlinkClient(
            endpoint=self._endpoint(),
            clock=self._clock,
            credentials=LotCredentials(lot.park_code, account.username, "", account.secret),
            answer=relay.answer,
            token=lambda: session.token,
            bind="heartbeat",
            heartbeat_interval=HEARTBEAT_INTERVAL,
            bind_timeout=float(tcp.bind_timeout),
            backoff=RECONNECT,
            rng=self._rng,
            on_token_invalid=token_refused,
            max_frame_bytes=tcp.max_frame_bytes,
            # The upstream answers each heartbeat, so a silence of two intervals is a dead link.
            read_idle=max(float(tcp.read_idle), 2 * HEARTBEAT_INTERVAL) if tcp.read_idle else 0.0,
        )
        holder.append(link)
        park = lot.park_code

        def bound() -> None:
            log.info("lot {park} bound upstream", event="upstream.bound", park=park)

        link.bound_listeners.append(bound)
        # A new token (a first login, or one after a 9000) binds the link without its backoff.
        session.listeners.append(link.connect_now)
        return _Lot(session, link, relay, account)

    def start(self) -> None:
        """Connect every lot's link (each logs in upstream as it first needs a token)."""
        self._running = True
        for lot in self._by_park.values():
            lot.link.start()

    def stop(self) -> Deferred[Any]:
        """Close every link; fires once they are closed."""
        self._running = False
        return DeferredList([lot.link.stop() for lot in self._by_park.values()])

    def reconfigure(self, config: Config) -> None:
        """Follow a reload: new lots get a session and a link, removed ones lose theirs."""
        self._config = config
        wanted = {lot.park_code: lot for lot in config.lots}
        stopping: list[Deferred[Any]] = []
        for park in list(self._by_park):
            lot = wanted.get(park)
            if lot is None or _Account.of(lot) != self._by_park[park].account:
                stopping.append(self._by_park.pop(park).link.stop())
        for park, lot in wanted.items():
            if park not in self._by_park:
                self._by_park[park] = self._make(lot)
                if self._running:
                    self._by_park[park].link.start()
        # The replaced links close in their own time; nothing waits for them.
        DeferredList(stopping)

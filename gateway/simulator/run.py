"""Many simulated lots at once: start-up, pacing to a total event rate, the end, summaries.

`Simulation.run` logs every lot in (a few at a time: the gateway checks
passwords with argon2), binds their downlinks, then picks a lot at random for
each traffic event, `rate` events a second in total, for `duration` seconds or
(soak) until `stop`. At the end it waits up to `drain` seconds for the lots'
uploads to be acknowledged; what is still unacknowledged then counts as errors.

`time_scale` divides the standard's periods: the 10 minutes between retries,
and the heartbeat interval (never under half a second), so an outage test
need not wait 10 minutes. Reconnection backoff shrinks with it too.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TextIO
from zoneinfo import ZoneInfo

from attrs import field, frozen
from tqdm import tqdm
from twisted.internet.defer import Deferred, DeferredSemaphore, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime, IStreamClientEndpoint
from twisted.internet.task import LoopingCall, deferLater

from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import Backoff, DownlinkClient
from gateway.lotclient.uplink import HTTPRequester, UplinkClient
from gateway.simulator.lot import HEARTBEAT_INTERVAL, LotModel, SimulatedLot
from gateway.simulator.stats import LatencyHistogram, Stats, Summary
from gateway.simulator.traffic import Layout, Traffic
from gateway.simulator.uploads import RETRY_INTERVAL

__all__ = ["MIN_HEARTBEAT", "ProgressBar", "Settings", "Simulation"]

MIN_HEARTBEAT = 0.5
"""However scaled, a lot sends at most two heartbeats a second."""
TICK = 0.02
"""Seconds between two rounds of pacing."""
PROGRESS_EVERY = 0.25
DRAIN_POLL = 0.05


def _positive(instance: object, attribute: object, value: float) -> None:
    if not value > 0:
        raise ValueError(f"{getattr(attribute, 'name', 'value')} must be positive, not {value!r}")


def _not_negative(instance: object, attribute: object, value: float) -> None:
    if not value >= 0:
        raise ValueError(f"{getattr(attribute, 'name', 'value')} must not be negative, not {value!r}")


def _duration(instance: object, attribute: object, value: float | None) -> None:
    if value is not None:
        _positive(instance, attribute, value)


@frozen
class Settings:
    """How a simulation runs; `duration` None is a soak, until stopped."""

    rate: float = field(default=10.0, validator=_not_negative)
    duration: float | None = field(default=60.0, validator=_duration)
    time_scale: float = field(default=1.0, validator=_positive)
    seed: int | None = None
    heartbeat: float = field(default=HEARTBEAT_INTERVAL, validator=_positive)
    drain: float = field(default=30.0, validator=_not_negative)
    summary_interval: float = field(default=60.0, validator=_positive)
    request_timeout: float = field(default=30.0, validator=_positive)
    occupancy: float = 0.6
    login_concurrency: int = 16
    bind_wait: float = field(default=10.0, validator=_not_negative)
    zone: ZoneInfo = field(factory=lambda: ZoneInfo("Asia/Shanghai"))
    backoff: Backoff | None = None

    @property
    def retry_interval(self) -> float:
        """The standard's 10 minutes between retries, scaled."""
        return RETRY_INTERVAL / self.time_scale

    @property
    def heartbeat_interval(self) -> float:
        """Seconds between a lot's heartbeats, scaled, at least MIN_HEARTBEAT."""
        return max(MIN_HEARTBEAT, self.heartbeat / self.time_scale)

    @property
    def reconnect_backoff(self) -> Backoff:
        """The downlinks' reconnection backoff: 1 s doubling up to 60 s, scaled, with jitter."""
        if self.backoff is not None:
            return self.backoff
        scale = self.time_scale
        return Backoff(initial=max(0.05, 1.0 / scale), factor=2.0, maximum=max(1.0, 60.0 / scale), jitter=0.5)


class ProgressBar:
    """One line redrawn in place on a terminal, by tqdm: a bar when the end is known, the counts."""

    WIDTH = 30

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._bar: tqdm | None = None
        self._known: bool | None = None

    def draw(self, fraction: float | None, text: str) -> None:
        """Redraw the line: `fraction` of the bar filled (None: no bar), then `text`."""
        known = fraction is not None
        if self._bar is not None and known != self._known:
            self.finish()
        if self._bar is None:
            self._known = known
            self._bar = tqdm(
                total=1000 if known else None,
                file=self._stream,
                bar_format=f"{{bar:{self.WIDTH}}} {{percentage:3.0f}}% {{desc}}" if known else "{desc}",
                mininterval=0,
                dynamic_ncols=True,
            )
        if fraction is not None:
            self._bar.n = round(min(1.0, max(0.0, fraction)) * 1000)
        self._bar.set_description_str(text, refresh=False)
        self._bar.refresh()

    def finish(self) -> None:
        """End the line, so what follows starts on its own."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None


class Simulation:
    """N simulated lots driven through one gateway; `run` returns the summary."""

    def __init__(
        self,
        *,
        lots: Sequence[LotCredentials],
        http: HTTPRequester,
        uplink_url: str,
        clock: IReactorTime,
        settings: Settings,
        downlink: Callable[[LotCredentials], IStreamClientEndpoint] | None = None,
        progress: TextIO | None = None,
        summaries: TextIO | None = None,
    ) -> None:
        self.settings = settings
        self.stats = Stats()
        self.lots: list[SimulatedLot] = []
        self.downlinks: list[DownlinkClient] = []
        self._credentials = list(lots)
        self._http = http
        self._url = uplink_url
        self._clock = clock
        self._downlink = downlink
        self._progress = ProgressBar(progress) if progress is not None else None
        self._summaries = summaries
        self._rng = random.Random(settings.seed)
        self._ready: list[SimulatedLot] = []
        self._pairs: list[tuple[SimulatedLot, DownlinkClient]] = []
        self._stopping = False
        self._stopped: Deferred[None] = Deferred()
        self._paced_from = 0.0
        self._emitted = 0
        self._window: dict[str, int] = {}
        self._window_start = 0.0
        self._end: IDelayedCall | None = None

    # --- control ---------------------------------------------------------

    def stop(self) -> None:
        """End the run now (a soak's end, or an interrupted run): no more events, then the drain."""
        if not self._stopping:
            self._stopping = True
            self._stopped.callback(None)

    @property
    def ready(self) -> list[SimulatedLot]:
        """The lots that logged in."""
        return list(self._ready)

    def _build(self) -> None:
        settings = self.settings
        for credentials in self._credentials:
            rng = random.Random(self._rng.getrandbits(64))
            uplink = UplinkClient(
                http=self._http,
                url=self._url,
                credentials=credentials,
                clock=self._clock,
                timeout=settings.request_timeout,
            )
            traffic = Traffic(Layout.generate(credentials.park_code, rng), rng, settings.zone)
            lot = SimulatedLot(
                credentials=credentials,
                uplink=uplink,
                model=LotModel(traffic, rng, settings.zone),
                clock=self._clock,
                stats=self.stats,
                rng=rng,
                retry_interval=settings.retry_interval,
                heartbeat_interval=settings.heartbeat_interval,
                occupancy=settings.occupancy,
            )
            self.lots.append(lot)
            if self._downlink is not None:
                client = self._downlink_client(credentials, uplink, lot, rng)
                self.downlinks.append(client)
                self._pairs.append((lot, client))

    def _downlink_client(
        self, credentials: LotCredentials, uplink: UplinkClient, lot: SimulatedLot, rng: random.Random
    ) -> DownlinkClient:
        assert self._downlink is not None

        def relogin() -> None:
            uplink.login().addErrback(lambda _: None)  # the next bind attempt tells

        return DownlinkClient(
            endpoint=self._downlink(credentials),
            clock=self._clock,
            credentials=credentials,
            answer=lot.answer,
            token=lambda: uplink.token,
            heartbeat_interval=self.settings.heartbeat_interval,
            backoff=self.settings.reconnect_backoff,
            rng=random.Random(rng.getrandbits(64)),
            on_token_invalid=relogin,
        )

    # --- the run ---------------------------------------------------------

    async def run(self) -> Summary:
        """Start the lots, drive them, drain them; the summary."""
        self._build()
        await self._start_lots()
        clients = [client for lot, client in self._pairs if lot.started]
        for client in clients:
            client.start()
        if clients and not self._stopping and self.settings.bind_wait > 0:
            bound = gatherResults([client.when_bound() for client in clients])
            bound.addTimeout(self.settings.bind_wait, self._clock)
            try:
                await bound
            except Exception:
                pass  # counted as they come; the run goes on with the lots it has
        loops = self._drive()
        await self._stopped
        if self._end is not None and self._end.active():
            self._end.cancel()
        for loop in loops:
            if loop.running:
                loop.stop()
        await self._drain()
        for lot in self.lots:
            lot.stop()
        await gatherResults([client.stop() for client in self.downlinks])
        if self._progress is not None:
            self._progress.finish()
        return self.summary(final=True)

    async def _start_lots(self) -> None:
        semaphore = DeferredSemaphore(max(1, self.settings.login_concurrency))

        async def start(lot: SimulatedLot) -> None:
            if self._stopping:
                return
            if await semaphore.run(lot.start):
                self._ready.append(lot)

        await gatherResults([Deferred.fromCoroutine(start(lot)) for lot in self.lots])

    def _drive(self) -> list[LoopingCall]:
        """Start pacing (and the progress line, and a soak's summaries); end after `duration`."""
        clock = self._clock
        self._paced_from = self._window_start = clock.seconds()
        self._window = self._totals()
        loops: list[LoopingCall] = []
        if self._stopping:
            return loops

        def every(interval: float, function: Callable[[], None]) -> None:
            loop = LoopingCall(function)
            loop.clock = clock
            loop.start(interval, now=False)
            loops.append(loop)

        every(TICK, self._tick)
        if self._progress is not None:
            every(PROGRESS_EVERY, self._draw)
        if self.settings.duration is None and self._summaries is not None:
            every(self.settings.summary_interval, self._soak_summary)
        if self.settings.duration is not None:
            self._end = clock.callLater(self.settings.duration, self.stop)
        return loops

    def _tick(self) -> None:
        if not self._ready:
            return
        rate = self.settings.rate
        due = int((self._clock.seconds() - self._paced_from) * rate) - self._emitted
        most = max(1, int(rate))
        if due > most:  # the process fell behind: the lost events are dropped, not bunched
            self._emitted += due - most
            due = most
        choice = self._rng.choice
        ready = self._ready
        for _ in range(max(0, due)):
            choice(ready).event()
            self._emitted += 1

    async def _drain(self) -> None:
        deadline = self._clock.seconds() + self.settings.drain
        while any(not lot.idle for lot in self._ready) and self._clock.seconds() < deadline:
            await deferLater(self._clock, DRAIN_POLL, lambda: None)

    # --- reporting -------------------------------------------------------

    def _totals(self) -> dict[str, int]:
        stats = self.stats
        return {
            "sent": stats.sent,
            "acked": stats.acked,
            "retried": stats.retried,
            "errors": stats.errors,
            "downlinks_replied": sum(client.counters.replies for client in self.downlinks),
            "reconnects": sum(client.counters.reconnects for client in self.downlinks),
            "bad_signatures": sum(client.counters.bad_signatures for client in self.downlinks),
        }

    def summary(self, final: bool = False) -> Summary:
        """The run so far; `final` counts what was never acknowledged as errors."""
        totals = self._totals()
        errors = totals["errors"] + totals["bad_signatures"]
        if final:
            errors += sum(lot.pending for lot in self._ready)
        return Summary(
            lots=len(self._ready),
            sent=totals["sent"],
            acked=totals["acked"],
            retried=totals["retried"],
            errors=errors,
            p50_ms=self.stats.latency.percentile(0.50),
            p99_ms=self.stats.latency.percentile(0.99),
            downlinks_replied=totals["downlinks_replied"],
        )

    def window_summary(self) -> dict[str, object]:
        """What happened since the last window (soak mode's minute line), and starts a new window."""
        now = self._clock.seconds()
        totals = self._totals()
        window: LatencyHistogram = self.stats.new_window()
        seconds = max(now - self._window_start, 1e-9)
        delta = {name: totals[name] - self._window.get(name, 0) for name in totals}
        self._window, self._window_start = totals, now
        return {
            "time": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
            "window_s": round(seconds, 3),
            "lots": len(self._ready),
            "connected": sum(1 for client in self.downlinks if client.bound),
            "sent": delta["sent"],
            "acked": delta["acked"],
            "acked_per_s": round(delta["acked"] / seconds, 1),
            "retried": delta["retried"],
            "errors": delta["errors"] + delta["bad_signatures"],
            "p50_ms": window.percentile(0.50),
            "p99_ms": window.percentile(0.99),
            "downlinks_replied": delta["downlinks_replied"],
            "reconnects": delta["reconnects"],
            "pending": sum(lot.pending for lot in self._ready),
        }

    def _soak_summary(self) -> None:
        assert self._summaries is not None
        if self._progress is not None:
            self._progress.finish()
        self._summaries.write(json.dumps(self.window_summary(), separators=(",", ":")) + "\n")
        self._summaries.flush()

    def _draw(self) -> None:
        assert self._progress is not None
        elapsed = self._clock.seconds() - self._paced_from
        duration = self.settings.duration
        summary = self.summary()
        text = (
            f"{elapsed:6.1f}s {summary.lots} lots sent {summary.sent} acked {summary.acked} "
            f"retried {summary.retried} errors {summary.errors} p99 {summary.p99_ms:.1f}ms "
            f"replied {summary.downlinks_replied}"
        )
        self._progress.draw(elapsed / duration if duration else None, text)

"""
How to run nats-py beside the reactor: a dedicated loop thread (the gateway's) or Twisted's asyncio reactor.

Usage: python -m bench.nats_bridge [--round-trips N] [--pipelined N]

Each way runs in its own process against one local nats-server with JetStream:

- ``thread``: the default (epoll) reactor and :class:`gateway.cluster.connection.NatsConnection`,
  nats-py on its own loop thread, results back through ``callFromThread``;
- ``asyncio``: Twisted's asyncio reactor, nats-py on the reactor's own loop, results
  through ``Deferred.fromFuture``.

Measured, from the reactor's side: JetStream publish round trips per second (one
publish, wait for its PubAck, the next), pipelined publishes per second (a batch of
2000 sent, then their PubAcks awaited), and the reactor's lateness while the
pipelined publishes run (a 1 ms timer: p50/p99 of how late it fires), which is what
an uplink waiting for the reactor would feel. The uplink benchmark (``bench.uplink
--reactor asyncio``) gives the other half of the choice: the asyncio reactor's cost
on the hot path of every gateway, with or without NATS. Writes bench/results/nats_bridge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import ENV, write_result

BATCH = 2000


def child(mode: str, url: str, round_trips: int, pipelined: int) -> None:
    """In its own process: measure one way and print the figures as JSON."""
    if mode == "asyncio":
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)  # ensure_future and Deferred.fromFuture use the current loop
        asyncioreactor.install(loop)
    from twisted.internet import reactor, task
    from twisted.internet.defer import Deferred, ensureDeferred

    lateness: list[float] = []
    measuring = [False]
    expected = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        if measuring[0] and expected[0]:
            lateness.append(max(0.0, now - expected[0]))
        expected[0] = now + 0.001

    async def publish_batch(js: Any, count: int, start: int) -> None:
        futures = [await js.publish_async("bench.x", b"x" * 300) for _ in range(count)]
        await asyncio.gather(*futures)

    async def main() -> dict[str, Any]:
        if mode == "thread":
            from gateway.cluster.connection import CONNECTED, NatsConnection
            from gateway.settings import ClusterSettings

            connection = NatsConnection(ClusterSettings(servers=(url,)), reactor=reactor)
            connection.startService()
            while connection.state != CONNECTED:
                await task.deferLater(reactor, 0.01, lambda: None)

            def run(fn: Any) -> Deferred[Any]:
                return connection.run(fn)

            await run(lambda nc, js: js.add_stream(name="BENCH", subjects=["bench.>"]))
        else:
            import nats

            nc = await Deferred.fromFuture(asyncio.ensure_future(nats.connect(url)))
            js = nc.jetstream()

            def run(fn: Any) -> Deferred[Any]:
                return Deferred.fromFuture(asyncio.ensure_future(fn(nc, js)))

            await run(lambda nc, js: js.add_stream(name="BENCH", subjects=["bench.>"]))
        timer = task.LoopingCall(tick)
        timer.start(0.001)
        began = time.perf_counter()
        for _ in range(round_trips):
            await run(lambda nc, js: js.publish("bench.x", b"x" * 300))
        round_trip_rate = round_trips / (time.perf_counter() - began)
        measuring[0] = True
        began = time.perf_counter()
        for start in range(0, pipelined, BATCH):
            await run(lambda nc, js, start=start: publish_batch(js, min(BATCH, pipelined - start), start))
        pipelined_rate = pipelined / (time.perf_counter() - began)
        measuring[0] = False
        timer.stop()
        if mode == "thread":
            await connection.stopService()
        else:
            await Deferred.fromFuture(asyncio.ensure_future(nc.close()))
        lateness.sort()
        return {
            "round_trips_per_s": round_trip_rate,
            "pipelined_per_s": pipelined_rate,
            "reactor_late_p50_ms": lateness[len(lateness) // 2] * 1000 if lateness else 0.0,
            "reactor_late_p99_ms": lateness[int(len(lateness) * 0.99)] * 1000 if lateness else 0.0,
        }

    result: dict[str, Any] = {}

    def done(figures: dict[str, Any]) -> None:
        result.update(figures)
        reactor.stop()

    def failed(failure: Any) -> None:
        result["error"] = failure.getErrorMessage()
        reactor.stop()

    reactor.callWhenRunning(lambda: ensureDeferred(main()).addCallbacks(done, failed))
    reactor.run()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--round-trips", type=int, default=3000)
    parser.add_argument("--pipelined", type=int, default=40_000)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "URL"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], args.child[1], args.round_trips, args.pipelined)
        return
    from tests.cluster.natsserver import NatsServer

    figures: dict[str, Any] = {}
    for mode in ("thread", "asyncio"):
        work = Path(tempfile.mkdtemp(prefix="cpmi-nats-bridge-"))
        server = NatsServer(work)
        server.start()
        try:
            out = subprocess.run(
                [
                    *(sys.executable, "-m", "bench.nats_bridge", "--child", mode, server.url),
                    *("--round-trips", str(args.round_trips), "--pipelined", str(args.pipelined)),
                ],
                env=ENV,
                capture_output=True,
                text=True,
                check=True,
                timeout=300,
            )
            figures[mode] = json.loads(out.stdout.strip().splitlines()[-1])
        finally:
            server.stop()
    print(f"{'way':<8} {'round trips/s':>14} {'pipelined/s':>12} {'reactor late p50':>17} {'p99':>8}")
    for mode, r in figures.items():
        print(
            f"{mode:<8} {r['round_trips_per_s']:>14,.0f} {r['pipelined_per_s']:>12,.0f}"
            f" {r['reactor_late_p50_ms']:>14.2f} ms {r['reactor_late_p99_ms']:>5.2f} ms"
        )
    print(f"wrote {write_result('nats_bridge', figures)}")


if __name__ == "__main__":
    main()

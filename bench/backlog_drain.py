"""
Backlog drain after an outage: journaled uplinks forwarded per second to a local cloud.

Usage: python -m bench.backlog_drain [--events N] [--half] [--batch-max-events K] [--profile FILE]

1. Builds, with the journal's own writer, the journal an outage leaves: ``--events``
   (100,000) ``uplink`` records of five lots -- carIn, carOut, payments (prepay,
   cashierOff), pictures, free spaces, device states, from the samples of the
   standard -- none of them forwarded yet.
2. Starts a lean CloudEvents receiver in its own process (this module with
   ``--receive``): it checks each batch's signature, counts its events, notes
   duplicate ids and any seq out of order, and answers 204 (a 2xx acknowledges
   the whole batch, CONTRACT §6).
3. Starts the gateway (``twistd``, journal.fsync = "always", sink "cloudevents",
   the default batch settings unless ``--batch-max-events`` is given) on that
   journal, and samples its RSS every 0.5 s until the receiver has every event
   and the gateway's ``cpmi_forward_done_seq`` has reached the last one.

The rate is taken over the drain: from the first event received to the last
(also given from the gateway's start, start-up replay included). "Memory flat"
is judged by the RSS rise from the last sample before the first event to the
maximum, and by the growth over the second half of the drain; with ``--half``
the drain is first run at N/2 too, and the maximum RSS must not grow with N.
The receiver also counts duplicate ids, seqs out of order and bad signatures.
Prints a table and writes bench/results/backlog_drain.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import attrs
import orjson
from nacl.exceptions import BadSignatureError
from nacl.signing import SigningKey, VerifyKey
from twisted.internet.task import Clock

from bench.harness import (
    CHEAP_HASH,
    ENV,
    cpu_seconds,
    free_port,
    gateway,
    metric,
    rss_bytes,
    wait_for,
    write_result,
)
from gateway.cloud.httpsig import content_digest
from gateway.config import CloudConfig
from gateway.journal.kinds import UPLINK_RECORD
from gateway.journal.writer import Journal
from gateway.keys import public_key_b64, write_signing_key
from tests.journal.helpers import ManualRunner
from tests.protocol.samples import SAMPLES

PARKS = ("P001", "P002", "P003", "P004", "P005")
# What a lot reports during an outage, by share: mostly cars in and out.
MIX = (
    ("carIn", 34),
    ("carOut", 34),
    ("prepay", 6),
    ("cashierOff", 3),
    ("carImage", 5),
    ("freeSpace", 10),
    ("devStatus", 4),
    ("gateManual", 2),
    ("carFix", 2),
)
OUTAGE_SECONDS = 4 * 3600
# RSS limits for "flat": rise from the start of the drain to the maximum, and growth
# over the second half of the drain.
FLAT_RISE_BYTES = 32 * 2**20
FLAT_LATE_BYTES = 8 * 2**20
# ... and the difference of the maximum at N and at N/2 (--half).
FLAT_WITH_N_BYTES = 16 * 2**20
TARGET_RATE = 10_000
URL_PATH = "/events"


# -- the journal an outage leaves


def build_journal(directory: Path, events: int, seed: int = 7) -> int:
    """Write ``events`` uplink records into a new journal at ``directory``; the last seq."""
    rng = random.Random(seed)
    codes = [code for code, _ in MIX]
    weights = [weight for _, weight in MIX]
    clock = Clock()
    clock.advance(time.time() - OUTAGE_SECONDS)
    runner = ManualRunner()
    journal = Journal.open(directory, reactor=clock, run_blocking=runner, fsync="never")
    step = OUTAGE_SECONDS / max(events, 1)
    for n in range(events):
        park = PARKS[n % len(PARKS)]
        code = rng.choices(codes, weights)[0]
        data: Any = SAMPLES[code]
        if isinstance(data, dict):
            data = dict(data)
            if "recordCode" in data:
                data["recordCode"] = f"{park}{n:012d}"
            if "parkCode" in data:
                data["parkCode"] = park
        journal.append(UPLINK_RECORD, park, code, f"o{n:09d}", data).addCallback(lambda record: record.seq)
        if n % 1000 == 999 or n == events - 1:
            clock.advance(step * 1000)  # flush
            runner.run_all()
    last = journal.last_seq
    journal.close()
    clock.advance(0)
    runner.run_all()
    return last


# -- the receiver (its own process)


class Tally:
    """What the receiver has seen."""

    def __init__(self, url: str, key: VerifyKey | None) -> None:
        self.url = url
        self.key = key
        self.ids: set[str] = set()
        self.events = 0
        self.batches = 0
        self.duplicates = 0
        self.out_of_order = 0
        self.bad_signatures = 0
        self.last_seq = 0
        self.first_batch = 0
        self.first_at: float | None = None
        self.last_at: float | None = None

    def signed(self, body: bytes, headers: dict[str, str]) -> bool:
        """RFC 9421 as the gateway signs (see docs/receiver.py): digest, then Ed25519 over the base."""
        if self.key is None:
            return True
        digest = content_digest(body)
        params, signature = headers.get("signature-input", ""), headers.get("signature", "")
        base = f'"@method": POST\n"@target-uri": {self.url}\n"content-digest": {digest}\n'
        base += f'"@signature-params": {params[5:]}'
        try:
            self.key.verify(base.encode(), base64.b64decode(signature[6:-1], validate=True))
        except (BadSignatureError, ValueError):
            return False
        return headers.get("content-digest") == digest

    def batch(self, body: bytes, headers: dict[str, str]) -> None:
        if not self.signed(body, headers):
            self.bad_signatures += 1
        now = time.monotonic()
        events = orjson.loads(body)
        if self.first_at is None:
            self.first_at, self.first_batch = now, len(events)
        self.last_at = now
        self.batches += 1
        for event in events:
            self.events += 1
            if event["id"] in self.ids:
                self.duplicates += 1
            self.ids.add(event["id"])
            seq = int(event["cpmiseq"])
            if seq <= self.last_seq:
                self.out_of_order += 1
            self.last_seq = max(self.last_seq, seq)

    def as_json(self) -> bytes:
        fields = (
            "events",
            "first_batch",
            "batches",
            "duplicates",
            "out_of_order",
            "bad_signatures",
            "last_seq",
        )
        figures: dict[str, Any] = {name: getattr(self, name) for name in fields}
        figures.update(first_at=self.first_at, last_at=self.last_at)
        return orjson.dumps(figures)


async def _serve_connection(tally: Tally, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            request_line, *lines = head.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            if headers.get("transfer-encoding", "").lower() == "chunked":
                parts = []
                while True:
                    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                    parts.append(await reader.readexactly(size + 2))
                    if size == 0:
                        break
                body = b"".join(part[:-2] for part in parts)
            else:
                body = await reader.readexactly(int(headers.get("content-length", "0")))
            if request_line.startswith("POST "):
                tally.batch(body, headers)
                writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
            else:
                answer = tally.as_json()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\n\r\n%s" % (len(answer), answer)
                )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def receive(port: int, url: str, public_key: str) -> None:
    """Serve the receiver on ``port`` until killed: POST a batch, GET the tally."""
    key = VerifyKey(base64.b64decode(public_key)) if public_key else None
    tally = Tally(url, key)

    async def serve() -> None:
        server = await asyncio.start_server(
            lambda r, w: _serve_connection(tally, r, w), "127.0.0.1", port, limit=2**20
        )
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


def tally(port: int) -> dict[str, Any]:
    """The receiver's figures so far."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/tally", timeout=10) as response:
        figures: dict[str, Any] = json.loads(response.read())
        return figures


# -- the run


def profile(pid: int, path: str, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway for the drain (collapsed stacks, one per line)."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "200"]
    command += ["--format", "raw", "--output", path, "--nonblocking"]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL)


def slope(samples: list[tuple[float, int]]) -> float:
    """Least-squares bytes per second of (seconds, RSS) samples (0 for fewer than two)."""
    if len(samples) < 2:
        return 0.0
    mean_t = sum(t for t, _ in samples) / len(samples)
    mean_r = sum(r for _, r in samples) / len(samples)
    spread = sum((t - mean_t) ** 2 for t, _ in samples)
    if spread == 0:
        return 0.0
    return sum((t - mean_t) * (r - mean_r) for t, r in samples) / spread


def drain(args: argparse.Namespace) -> dict[str, Any]:
    """Build the journal, start the receiver and the gateway, and follow the drain."""
    work = Path(tempfile.mkdtemp(prefix="cpmi-drain-"))
    try:
        return drain_in(work, args)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def drain_in(work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """:func:`drain` in the directory ``work``."""
    built_at = time.monotonic()
    last_seq = build_journal(work / "journal", args.events)
    print(f"journal: {args.events:,} uplinks (seq 1-{last_seq}) built in {time.monotonic() - built_at:.1f} s")
    key = SigningKey.generate()
    write_signing_key(str(work / "gateway.key"), key)
    receiver_port, api_port = free_port(), free_port()
    uplink_port, downlink_port = free_port(), free_port()
    url = f"http://127.0.0.1:{receiver_port}{URL_PATH}"
    batch = f"batch_max_events = {args.batch_max_events}\n" if args.batch_max_events else ""
    config = (
        f'[gateway]\nid = "gw-bench"\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{uplink_port}:interface=127.0.0.1"\n'
        f'downlink = "tcp:{downlink_port}:interface=127.0.0.1"\n'
        f'api = "tcp:{api_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "always"\n'
        f'[cloud]\nsink = "cloudevents"\nurl = "{url}"\n{batch}'
    )
    for n, park in enumerate(PARKS, 1):
        config += (
            f'[[lot]]\npark_code = "{park}"\nusername = "lot{n:03d}"\npassword = "{CHEAP_HASH}"\n'
            'signature = "off"\n'
        )
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bench.backlog_drain",
            "--receive",
            str(receiver_port),
            url,
            public_key_b64(key),
        ],
        env=ENV,
    )
    samples: list[tuple[float, int, int, float]] = []  # (monotonic, RSS, events received, CPU)
    try:
        wait_for(receiver_port, receiver)
        started = time.monotonic()
        with gateway(work, config, api_port) as server:
            listening = time.monotonic()
            profiler = profile(server.pid, args.profile, args.profile_seconds) if args.profile else None
            deadline = listening + args.timeout
            done_seq = 0.0
            while True:
                now = time.monotonic()
                seen = tally(receiver_port)
                samples.append((now, rss_bytes(server.pid), seen["events"], cpu_seconds(server.pid)))
                if seen["events"] >= args.events:
                    done_seq = metric(api_port, "cpmi_forward_done_seq")
                    if done_seq >= last_seq:
                        break
                if now > deadline:
                    raise SystemExit(f"not drained after {args.timeout} s: {seen}")
                time.sleep(max(0.0, now + args.sample_every - time.monotonic()))
            finished = time.monotonic()
            # From the last sample before the first event: the drain's CPU, and up to one interval more.
            before = [cpu for _, _, received, cpu in samples if received == 0]
            cpu_total = cpu_seconds(server.pid)
            cpu = cpu_total - (before[-1] if before else 0.0)
            forwarded = {
                name: metric(api_port, f"cpmi_forward_{name}_total")
                for name in ("events", "batches", "retries", "rejected")
            }
            receiver_cpu = cpu_seconds(receiver.pid)
            if profiler is not None:
                profiler.wait()
    finally:
        receiver.terminate()
        receiver.wait()
    figures = figures_of(
        args, seen, samples, started, listening, finished, cpu, receiver_cpu, forwarded, done_seq
    )
    figures["gateway_cpu_seconds_total"] = cpu_total
    return figures


def figures_of(
    args: argparse.Namespace,
    seen: dict[str, Any],
    samples: list[tuple[float, int, int, float]],
    started: float,
    listening: float,
    finished: float,
    cpu: float,
    receiver_cpu: float,
    forwarded: dict[str, float],
    done_seq: float,
) -> dict[str, Any]:
    """The figures of one drain, from the receiver's tally and the RSS samples."""
    first_at, last_at = seen["first_at"], seen["last_at"]
    drain_seconds = max(last_at - first_at, 1e-9)
    draining = [(t, rss) for t, rss, received, _ in samples if received > 0]
    # Draining began after the last sample that saw no event yet: its RSS is the base.
    before = [rss for _, rss, received, _ in samples if received == 0]
    rss_start = before[-1] if before else samples[0][1]
    rss_max = max(rss for _, rss, _, _ in samples)
    half = [(t, rss) for t, rss in draining if t >= first_at + drain_seconds / 2]
    late_growth = (max(r for _, r in half) - half[0][1]) if half else 0
    return {
        "events": args.events,
        "batch_max_events": args.batch_max_events or _default("batch_max_events"),
        "batch_max_bytes": _default("batch_max_bytes"),
        "batch_max_delay": _default("batch_max_delay"),
        "received": seen["events"],
        "batches": seen["batches"],
        "duplicates": seen["duplicates"],
        "out_of_order": seen["out_of_order"],
        "bad_signatures": seen["bad_signatures"],
        # The first batch arrived at first_at: the others arrived in the drain's seconds.
        "events_per_s": (seen["events"] - seen["first_batch"]) / drain_seconds,
        "drain_seconds": drain_seconds,
        "events_per_s_from_start": seen["events"] / (last_at - started),
        "seconds_from_start": last_at - started,
        "seconds_to_listen": listening - started,
        "seconds_to_first_event": first_at - started,
        "seconds_to_done_seq": finished - started,
        "gateway_cpu_seconds": cpu,
        "gateway_cpu_us_per_event": cpu / max(seen["events"], 1) * 1e6,
        "receiver_cpu_seconds": receiver_cpu,
        "rss_listening_mib": samples[0][1] / 2**20,
        "rss_start_mib": rss_start / 2**20,
        "rss_max_mib": rss_max / 2**20,
        "rss_end_mib": samples[-1][1] / 2**20,
        "rss_rise_mib": (rss_max - rss_start) / 2**20,
        "rss_late_growth_mib": late_growth / 2**20,
        "rss_slope_kib_per_s": slope(half) / 1024,
        "rss_samples_mib": [round(rss / 2**20, 1) for _, rss, _, _ in samples],
        "forwarded": forwarded,
        "done_seq": done_seq,
    }


def _default(name: str) -> Any:
    """The default of the cloud setting ``name``."""
    return getattr(attrs.fields(CloudConfig), name).default


def report(figures: dict[str, Any]) -> bool:
    """Print the table; whether every target is met."""
    rate_met = figures["events_per_s"] >= TARGET_RATE
    half = figures.get("half")
    with_n = figures["rss_max_mib"] - half["rss_max_mib"] if half else 0.0
    flat = (
        figures["rss_rise_mib"] * 2**20 <= FLAT_RISE_BYTES
        and figures["rss_late_growth_mib"] * 2**20 <= FLAT_LATE_BYTES
        and with_n * 2**20 <= FLAT_WITH_N_BYTES
    )
    once = figures["duplicates"] == 0 and figures["received"] == figures["events"]
    in_order = figures["out_of_order"] == 0 and figures["bad_signatures"] == 0
    rows = [
        (
            "events/s (first to last event)",
            f"{figures['events_per_s']:,.0f}",
            f">= {TARGET_RATE:,}",
            rate_met,
        ),
        ("drain seconds", f"{figures['drain_seconds']:.2f}", "", None),
        ("events/s from gateway start", f"{figures['events_per_s_from_start']:,.0f}", "", None),
        ("seconds from start to last event", f"{figures['seconds_from_start']:.2f}", "", None),
        ("seconds from start to first event", f"{figures['seconds_to_first_event']:.2f}", "", None),
        ("RSS when the API listens MiB", f"{figures['rss_listening_mib']:.1f}", "", None),
        ("RSS as the drain began MiB", f"{figures['rss_start_mib']:.1f}", "", None),
        ("RSS max MiB", f"{figures['rss_max_mib']:.1f}", "", None),
        ("RSS end MiB", f"{figures['rss_end_mib']:.1f}", "", None),
        (
            "RSS rise (max - start) MiB",
            f"{figures['rss_rise_mib']:.1f}",
            f"<= {FLAT_RISE_BYTES / 2**20:.0f}",
            figures["rss_rise_mib"] * 2**20 <= FLAT_RISE_BYTES,
        ),
        (
            "RSS growth, 2nd half MiB",
            f"{figures['rss_late_growth_mib']:.1f}",
            f"<= {FLAT_LATE_BYTES / 2**20:.0f}",
            figures["rss_late_growth_mib"] * 2**20 <= FLAT_LATE_BYTES,
        ),
        *(
            [
                (
                    f"RSS max at N minus at N/2 ({half['events']:,}) MiB",
                    f"{with_n:.1f}",
                    f"<= {FLAT_WITH_N_BYTES / 2**20:.0f}",
                    with_n * 2**20 <= FLAT_WITH_N_BYTES,
                ),
                ("events/s at N/2", f"{half['events_per_s']:,.0f}", "", None),
            ]
            if half
            else []
        ),
        ("events received / journaled", f"{figures['received']:,} / {figures['events']:,}", "all", once),
        ("duplicates", str(figures["duplicates"]), "0", figures["duplicates"] == 0),
        (
            "out of order / bad signatures",
            f"{figures['out_of_order']} / {figures['bad_signatures']}",
            "0",
            in_order,
        ),
        ("gateway CPU µs per event", f"{figures['gateway_cpu_us_per_event']:.0f}", "", None),
    ]
    print(f"{'figure':<36} {'value':>16} {'target':>10}  met?")
    for name, value, target, met in rows:
        mark = "" if met is None else ("yes" if met else "NO")
        print(f"{name:<36} {value:>16} {target:>10}  {mark}")
    print(
        f"batches: {figures['batches']} (cloud.batch_max_events {figures['batch_max_events']}, "
        f"batch_max_bytes {figures['batch_max_bytes']}, batch_max_delay {figures['batch_max_delay']} s); "
        f"gateway counted {figures['forwarded']['events']:.0f} events, done seq {figures['done_seq']:.0f}"
    )
    return rate_met and flat and once and in_order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000, help="uplinks in the backlog")
    parser.add_argument(
        "--batch-max-events", type=int, default=0, help="cloud.batch_max_events (default: the gateway's)"
    )
    parser.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds")
    parser.add_argument("--profile", metavar="FILE", help="record the gateway with py-spy: collapsed stacks")
    parser.add_argument("--profile-seconds", type=int, default=10, help="how long to profile")
    parser.add_argument("--sample-every", type=float, default=0.5, help="seconds between RSS samples")
    parser.add_argument("--half", action="store_true", help="drain N/2 events first, to compare the RSS")
    parser.add_argument("--keep", action="store_true", help="keep the journal and the gateway's log")
    parser.add_argument("--result", default="backlog_drain", help="name of the bench/results file")
    parser.add_argument("--receive", nargs=3, metavar=("PORT", "URL", "PUBKEY"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receive:
        receive(int(args.receive[0]), args.receive[1], args.receive[2])
        return
    half = None
    if args.half:
        half = drain(argparse.Namespace(**{**vars(args), "events": args.events // 2, "profile": None}))
    figures = drain(args)
    if half is not None:
        keep = ("events", "events_per_s", "drain_seconds", "rss_start_mib", "rss_max_mib", "rss_end_mib")
        figures["half"] = {name: half[name] for name in keep}
    met = report(figures)
    figures["met"] = met
    print(f"target met: {'yes' if met else 'NO'}; written {write_result(args.result, figures)}")


if __name__ == "__main__":
    main()

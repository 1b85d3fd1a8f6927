"""
How long a gateway takes to start on a large journal (not collected by pytest).

Usage: python -m bench.startup [--mib 1024] [--dir DIRECTORY]

Builds a journal of about ``--mib`` MiB as ten days of a busy gateway would
leave it (reports of 500 lots, an image every 50 records, logins, sync
entries, forwarding progress; 64 MiB segments), then times, on the same
files in the same process:

- ``whole``: the start-up before checkpoints (every record decoded and replayed);
- ``scan``: ``restore_at_start`` on a journal without a checkpoint (headers only);
- ``stopped``: ``restore_at_start`` after a clean stop (a checkpoint at the end);
- ``killed``: the same after kill -9, 100,000 records past the last checkpoint;

each with ``Journal.open`` (recovery checks the last segment) included; then
``twistd -n cpmi-gateway`` itself, from its start until ``/readyz`` answers 200,
after the kill -9 and after the clean stop (the issue's target: <= 5 s for a
1 GiB journal). Prints the seconds and the ratios to ``whole``, and writes
bench/results/startup.json.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from twisted.internet.task import Clock

from bench.harness import CHEAP_HASH, ENV, free_port, twistd_command, write_result
from gateway.cloud.progress import Progress
from gateway.journal.kinds import CHECKPOINT_RECORD
from gateway.journal.reader import read_records
from gateway.journal.record import GENESIS_CHAIN, Record, encode_line, format_ts
from gateway.journal.segments import segment_name
from gateway.journal.writer import Journal
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.state import StartState, rebuild, restore_at_start
from tests.journal.helpers import ManualRunner
from tests.lots.harness import ZONE

SEGMENT_BYTES = 64 * 2**20
DAYS = 10
KILLED_AFTER = 100_000


class Writer:
    """Writes chained lines straight into segment files, as the journal would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.seq = 0
        self.chain = GENESIS_CHAIN
        self.size = 0
        self.total = 0
        self.file: Any = None
        self.state = StartState()

    def append(self, ts: float, kind: str, park: str, code: str, opr: str, body: object) -> None:
        self.seq += 1
        line, self.chain = encode_line(self.seq, format_ts(ts), kind, park, code, opr, body, self.chain)
        if self.file is None or self.size + len(line) > SEGMENT_BYTES:
            if self.file is not None:
                self.file.close()
            self.file = open(self.directory / segment_name(self.seq), "wb")
            self.size = 0
        self.file.write(line)
        self.size += len(line)
        self.total += len(line)
        if kind != CHECKPOINT_RECORD:
            self.state.observe(Record(self.seq, format_ts(ts), kind, park, code, opr, body, ""))

    def close(self) -> None:
        if self.file is not None:
            self.file.close()


def build(directory: Path, mib: int, now: float) -> tuple[int, int]:
    """Fill ``directory``; returns (records, seq after which a kill -9 would leave the last checkpoint)."""
    random.seed(7)
    writer = Writer(directory)
    target = mib * 2**20
    image = "A" * 40_000
    lots = [f"P{n:04d}" for n in range(500)]
    # Records spaced evenly over DAYS by the bytes written, ending now.
    n = 0
    killed_checkpoint = 0
    while writer.total < target:
        n += 1
        ts = now - DAYS * 86400 * (1 - writer.total / target)
        park = random.choice(lots)
        if n % 50 == 0:
            writer.append(
                ts, "uplink", park, "carImage", f"i{n}", {"imageCode": f"i{n}", "imageBase64": image}
            )
        elif n % 1000 == 0:
            body = {
                "user": f"u{park}",
                "park": park,
                "token_sha256": f"{n:064x}",
                "expires": "2026-12-31T16:00:00+00:00",
            }
            writer.append(ts, "token", park, "login", f"l{n}", body)
        elif n % 5000 == 0:
            writer.append(
                ts,
                "sync",
                park,
                "blacklist",
                f"s{n}",
                {"client": "c", "data": {"carNum": "京A1"}, "expires": format_ts(ts + 86400)},
            )
        elif n % 500 == 0:
            writer.append(
                ts,
                "forwarded",
                "",
                "",
                "",
                {"first": n - 499, "last": n, "events": 500, "status": 200, "through": writer.seq},
            )
        else:
            code = "carIn" if n % 2 else "carOut"
            body = {
                "recordCode": f"R{n}",
                "carNum": "京A12345",
                "inCross": "1",
                "inTime": "2026-11-24 08:30:00",
                "parkCode": park,
                "payMode": 1,
                "fee": 1200,
                "note": "x" * 200,
            }
            writer.append(ts, "uplink", park, code, f"o{n}", body)
        if writer.total >= target - KILLED_AFTER * 1100 and not killed_checkpoint:
            writer.append(ts, CHECKPOINT_RECORD, "", "", "", writer.state.body(ts))
            killed_checkpoint = writer.seq
    writer.close()
    return writer.seq, killed_checkpoint


def start(directory: Path, now: float) -> tuple[float, Any]:
    clock = Clock()
    clock.advance(now)
    began = time.perf_counter()
    journal = Journal.open(directory, reactor=clock, run_blocking=ManualRunner())
    sessions = Sessions(clock, ZONE)
    restored = restore_at_start(
        journal, now=now, sessions=sessions, repeats=Repeats(clock), totals=ParkTotals(), progress=Progress()
    )
    took = time.perf_counter() - began
    os.close(journal._fd)
    os.close(journal._directory_fd)
    return took, restored


def whole(directory: Path, now: float) -> float:
    clock = Clock()
    clock.advance(now)
    began = time.perf_counter()
    journal = Journal.open(directory, reactor=clock, run_blocking=ManualRunner())
    rebuild(read_records(directory), Sessions(clock, ZONE), Repeats(clock), ParkTotals(), None, Progress())
    took = time.perf_counter() - began
    os.close(journal._fd)
    os.close(journal._directory_fd)
    return took


def process_to_ready(journal: Path, work: Path) -> float:
    """Seconds from starting twistd on `journal` until its /readyz answers 200; then kill -9 it.

    The whole start-up as an operator sees it: the interpreter, imports, the
    configuration, the journal's recovery and replay, the listeners. The
    journal was just written, so its files are in the page cache.
    """
    work.mkdir()
    uplink, api = free_port(), free_port()
    config = work / "gateway.toml"
    config.write_text(
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{uplink}:interface=127.0.0.1"\ndownlink = "tcp:0:interface=127.0.0.1"\n'
        f'api = "tcp:{api}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{journal}"\nfsync = "always"\n'
        f'[[lot]]\npark_code = "P0000"\nusername = "lot0000"\npassword = "{CHEAP_HASH}"\nsecret = "k"\n'
    )
    began = time.perf_counter()
    process = subprocess.Popen(twistd_command(config, work / "twistd.log"), env=ENV, cwd=work)
    try:
        while process.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{api}/readyz", timeout=1) as response:
                    if response.status == 200:
                        return time.perf_counter() - began
            except OSError:
                pass
            time.sleep(0.02)
        raise SystemExit(f"the gateway exited with {process.returncode}; see {work / 'twistd.log'}")
    finally:
        process.kill()  # as a crash would: no shutdown checkpoint is added to the journal
        process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024)
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-startup-", dir=args.dir))
    now = 1_795_000_000.0
    try:
        killed = base / "killed"
        killed.mkdir()
        began = time.perf_counter()
        records, checkpoint = build(killed, args.mib, now)
        print(f"built {records} records, {args.mib} MiB, in {time.perf_counter() - began:.1f} s")
        results: dict[str, Any] = {"mib": args.mib, "records": records}
        results["whole_s"] = whole(killed, now)
        took, restored = start(killed, now)
        results["killed_s"] = took
        results["killed_read"] = restored.records
        assert restored.checkpoint == checkpoint, (restored.checkpoint, checkpoint)
        results["process_killed_s"] = process_to_ready(killed, base / "killed-run")
        # Without any checkpoint: the same files less that one record are not quite the same,
        # so read the whole journal by header with the checkpoint made unusable in place.
        os.rename(killed, base / "plain")
        plain = base / "plain"
        for path in sorted(plain.iterdir()):
            data = path.read_bytes()
            marker = b'"kind":"checkpoint"'
            if marker in data:
                path.write_bytes(data.replace(marker, b'"kind":"checkpoinT"'))
        took, restored = start(plain, now)
        results["scan_s"] = took
        results["scan_read"] = restored.records
        # A clean stop: a checkpoint of the state at the end.
        state = StartState()
        for record in read_records(plain):
            state.observe(record)
        clock = Clock()
        clock.advance(now)
        journal = Journal.open(plain, reactor=clock, run_blocking=ManualRunner())
        journal._append_now(CHECKPOINT_RECORD, "", "", "", state.body(now))
        os.close(journal._fd)
        os.close(journal._directory_fd)
        took, restored = start(plain, now)
        results["stopped_s"] = took
        results["stopped_read"] = restored.records
        results["process_stopped_s"] = process_to_ready(plain, base / "stopped-run")
        for name in ("whole", "scan", "killed", "stopped"):
            ratio = results[f"{name}_s"] / results["whole_s"]
            read = results.get(f"{name}_read", records)
            print(f"{name:8} {results[f'{name}_s']:8.3f} s   {ratio:6.4f} of whole   {read} records read")
        for name in ("killed", "stopped"):
            seconds = results[f"process_{name}_s"]
            print(
                f"twistd to /readyz 200 after a {'kill -9' if name == 'killed' else 'clean stop'}: "
                f"{seconds:.2f} s (target <= 5 s)"
            )
        write_result("startup", results)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

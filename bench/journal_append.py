"""
Benchmarks of the journal's hot path (not collected by pytest).

Usage: python -m bench.journal_append [DIRECTORY]

1. ``append`` alone: microseconds per call, 10,000 appends a turn (Clock, no I/O
   waits: the flush and fsync are outside the timed part).
2. 10,000 appends with fsync="always" under the real reactor, in three load
   shapes (16 and 64 writers each appending when its last append is
   acknowledged, as lots waiting for their 0000; 100 appended per turn),
   against a baseline that writes the very same batches of bytes with one
   os.write and one os.fsync each, in a plain loop, in the same directory.

The target (journal/baseline >= 0.5) is read on the writers' shapes, which
are what lots do. With 100 a turn the batches hold some 200 records, the
baseline is a memcpy and one fsync per batch, and the ratio measures the
cost of building records (JSON and the BLAKE2b chain) instead.
Prints a table and writes bench/results/journal_append.json.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.task import Clock, react

from bench.harness import write_result
from gateway.journal.writer import Journal
from tests.journal.helpers import ManualRunner

reactor: Any = _reactor

N = 10_000
CAR_IN = {
    "parkCode": "P001",
    "carNumber": "粤B12345",
    "carNumberColor": 1,
    "inTime": "2026-11-24 11:05:41",
    "gateId": "G01",
    "gateName": "东门入口",
    "carType": 1,
    "operator": "auto",
    "images": [],
}


def bench_append(directory: str, results: dict[str, Any]) -> None:
    clock = Clock()
    clock.advance(1_795_000_000.0)
    runner = ManualRunner()
    journal = Journal.open(directory, reactor=clock, run_blocking=runner, fsync="never")
    for label, body in (("carIn body (~200 B)", CAR_IN), ("small body", {"n": 1})):
        best = float("inf")

        def one(body: object = body) -> None:
            journal.append("uplink", "P001", "carIn", "opr-0123456789", body)

        for _ in range(5):
            elapsed = timeit.timeit(one, number=N)
            best = min(best, elapsed)
            clock.advance(0.001)  # flush (not timed)
        results[f"append_us {label}"] = round(best / N * 1e6, 2)
        print(f"append, {label}: {best / N * 1e6:.2f} µs per call (best of 5 x {N})")
    journal.close()
    clock.advance(0)
    runner.run_all()


def baseline(directory: str, batches: list[int], data: bytes) -> float:
    """Write the same batches (sizes in bytes) with os.write + os.fsync each; seconds."""
    path = os.path.join(directory, "baseline.bin")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
    os.fsync(fd)
    start = time.perf_counter()
    offset = 0
    for size in batches:
        os.write(fd, data[offset : offset + size])
        os.fsync(fd)
        offset += size
    elapsed = time.perf_counter() - start
    os.close(fd)
    os.remove(path)
    return elapsed


async def bench_always(directory: str, shape: str) -> dict[str, Any]:
    batches: list[int] = []

    def counting_write(fd: int, data: bytes | memoryview) -> int:
        batches.append(len(data))
        return os.write(fd, data)

    journal = Journal.open(directory, reactor=reactor, os_write=counting_write)
    await journal.append("warm-up", "", "", "", None)  # the first fsync of a new file is slow
    batches.clear()
    start = time.perf_counter()
    if shape == "100 per turn":
        ds: list[Deferred[Any]] = []
        done: Deferred[None] = Deferred()

        def produce() -> None:
            for _ in range(100):
                ds.append(journal.append("uplink", "P001", "carIn", "opr-0123456789", CAR_IN))
            if len(ds) < N:
                reactor.callLater(0, produce)
            else:
                done.callback(None)

        produce()
        await done
        await gatherResults(ds)
    else:
        # Plain callbacks, not coroutines: the writers' own cost is not the journal's.
        remaining = [N]
        finished: Deferred[None] = Deferred()
        writers = [int(shape.split()[0])]

        def write(_: object = None) -> None:
            if remaining[0] > 0:
                remaining[0] -= 1
                journal.append("uplink", "P001", "carIn", "opr-0123456789", CAR_IN).addCallback(write)
            else:
                writers[0] -= 1
                if writers[0] == 0:
                    finished.callback(None)

        for _ in range(writers[0]):
            write()
        await finished
    elapsed = time.perf_counter() - start
    await journal.close()
    data = b"".join(
        open(os.path.join(directory, name), "rb").read() for name in sorted(os.listdir(directory))
    )[-sum(batches) :]
    base = baseline(directory, batches, data)
    return {
        "shape": shape,
        "records_s": round(N / elapsed),
        "batches": len(batches),
        "baseline_records_s": round(N / base),
        "ratio": round(base / elapsed, 2),
    }


def report(results: dict[str, Any], shapes: list[dict[str, Any]]) -> None:
    """Print the table and write the results."""
    print(f"{'fsync=always':<14} {'records/s':>10} {'batches':>8} {'baseline/s':>11} {'ratio':>6}  target")
    for row in shapes:
        target = ">= 0.5" if "writers" in row["shape"] else "(see above)"
        print(
            f"{row['shape']:<14} {row['records_s']:>10,} {row['batches']:>8} "
            f"{row['baseline_records_s']:>11,} {row['ratio']:>6.2f}  {target}"
        )
    results["shapes"] = shapes
    results["ratio"] = min(row["ratio"] for row in shapes if "writers" in row["shape"])
    write_result("journal_append", results)


def main(parent: str) -> None:
    def fresh() -> str:
        return tempfile.mkdtemp(dir=parent)

    directories: list[str] = []

    def new() -> str:
        directories.append(fresh())
        return directories[-1]

    results: dict[str, Any] = {"records": N}
    bench_append(new(), results)
    shapes: list[dict[str, Any]] = []

    async def run(_: Any) -> None:
        for shape in ("16 writers", "64 writers", "100 per turn"):
            shapes.append(await bench_always(new(), shape))
        report(results, shapes)

    run_reactor: Callable[..., Any] = react
    try:
        run_reactor(lambda r: ensureDeferred(run(r)))
    finally:
        for each in directories:
            shutil.rmtree(each, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else tempfile.gettempdir())

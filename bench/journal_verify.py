"""
``cpmictl log verify`` on a large journal, against a plain hash of the same bytes (not collected by pytest).

Usage: python -m bench.journal_verify [--mib N] [--image-every K] [--runs R] [--dir PARENT] [--keep]

Builds a journal of about N MiB (256 by default) in a temporary directory, as
the gateway writes it: uplink carIn/carOut records and their answers (a few
hundred bytes each), one carImage in K (20; 0 for none) with a 24-48 KB base64
picture, a seal every 10,000 records, 64 MiB segments. Then, best of R runs each (files in the
page cache):

- verify: ``python -m gateway.cli.main log verify DIR`` as its own process
  (what the operator waits for, interpreter start-up included);
- verify_journal: the same check called in this process (no start-up);
- baseline (lines): read the segments and BLAKE2b-128 every line, in this
  process, without a single check -- the chain's cost on one core;
- baseline (files): BLAKE2b over the whole files in 1 MiB reads.

Prints MiB/s and s/GiB for each and verify's time against the lines baseline;
writes bench/results/journal_verify.json.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from gateway.journal.integrity import verify_journal
from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.record import GENESIS_CHAIN, encode_line, format_ts
from gateway.journal.seals import seal_body
from gateway.journal.segments import list_segments, segment_name

ROOT = Path(__file__).parent.parent
SEGMENT_BYTES = 64 * 2**20
SEAL_EVERY = 10_000
MIB = 2**20


def _car_in(n: int) -> dict[str, Any]:
    return {
        "recordCode": f"P001202611{n:08d}",
        "carNum": "京A12345",
        "inCross": "IN-01",
        "inTime": "2026-11-24 08:30:00",
        "inIdentity": 2,
        "carColor": "蓝",
        "operatorName": "张三",
    }


def _car_out(n: int) -> dict[str, Any]:
    return {
        **_car_in(n),
        "outCross": "OUT-02",
        "outTime": "2026-11-24 10:05:00",
        "outIdentity": "临时车",
        "parkMinutes": 95,
        "chargeStatus": 1,
        "payMoney": 12.0,
        "discountMoney": 2.0,
        "incomeMoney": 10.0,
        "paymentMode": 4,
        "payOrigin": 1,
        "exitType": 0,
    }


def _answer(code: str, n: int) -> dict[str, Any]:
    return {"code": code, "oprNum": f"opr-{n}", "resultCode": "0000", "resultMessage": "成功", "data": {}}


def build(directory: str, mib: int, image_every: int = 20, seed: int = 1) -> tuple[int, int, int]:
    """Write about ``mib`` MiB of journal, an image in ``image_every`` records; (records, seals, bytes)."""
    rng = random.Random(seed)
    key = SigningKey(bytes(32))
    pictures = [base64.b64encode(rng.randbytes(rng.randrange(18_000, 36_000))).decode() for _ in range(16)]
    target = mib * MIB
    seq = 0
    chain = GENESIS_CHAIN
    since_seal = seals = total = 0
    segment_size = 0
    out: Any = None
    moment = 1_795_000_000.0
    n = 0
    try:
        while total < target:
            n += 1
            moment += 0.05
            park = f"P{n % 7 + 1:03d}"
            if since_seal >= SEAL_EVERY:
                kind, park, code, opr = SEAL_RECORD, "", "", ""
                body: object = seal_body(key, "gw-bench", seq, chain.decode("ascii"))
                since_seal = 0
                seals += 1
            elif image_every and n % image_every == 0:
                kind, code, opr = "uplink", "carImage", f"opr-{n}"
                body = [
                    {
                        "recordCode": f"P001202611{n:08d}",
                        "imageCode": f"IMG-{n}",
                        "imageType": 1,
                        "imageBase64": rng.choice(pictures),
                    }
                ]
            elif n % 2:
                kind, code, opr = "uplink", rng.choice(("carIn", "carOut")), f"opr-{n}"
                body = _car_in(n) if code == "carIn" else _car_out(n)
            else:
                kind, code, opr = "answer", rng.choice(("carIn", "carOut")), f"opr-{n - 1}"
                body = _answer(code, n)
            if kind != SEAL_RECORD:
                since_seal += 1
            seq += 1
            line, chain = encode_line(seq, format_ts(moment), kind, park, code, opr, body, chain)
            if out is None or (segment_size > 0 and segment_size + len(line) > SEGMENT_BYTES):
                if out is not None:
                    out.close()
                out = open(os.path.join(directory, segment_name(seq)), "wb")
                segment_size = 0
            out.write(line)
            segment_size += len(line)
            total += len(line)
    finally:
        if out is not None:
            out.close()
    return seq, seals, total


def baseline_lines(directory: str) -> None:
    """Read every segment and hash every line as the chain does; no checks."""
    blake2b = hashlib.blake2b
    for segment in list_segments(directory):
        with open(segment.path, "rb") as f:
            for line in f:
                blake2b(line, digest_size=16).hexdigest()


def baseline_files(directory: str) -> None:
    """BLAKE2b over the whole files, 1 MiB at a time."""
    for segment in list_segments(directory):
        digest = hashlib.blake2b(digest_size=16)
        with open(segment.path, "rb") as f:
            while chunk := f.read(MIB):
                digest.update(chunk)


def cli_verify(directory: str) -> None:
    """``cpmictl log verify DIR`` as its own process; it must find the journal whole."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", "log", "verify", directory],
        capture_output=True,
        text=True,
        env=env,
    )
    if result.returncode != 0 or not result.stdout.startswith("journal whole:"):
        raise SystemExit(f"verify failed ({result.returncode}): {result.stdout}{result.stderr}")


def in_process_verify(directory: str) -> None:
    """The check ``cpmictl log verify`` makes, called here (workers as it chooses them)."""
    verify_journal(directory, allow_partial_tail=True, seals=True)


def best(run: Callable[[], None], runs: int) -> float:
    """The shortest of ``runs`` timed runs, in seconds."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="journal size in MiB (256)")
    parser.add_argument("--image-every", type=int, default=20, help="one carImage record in K (20; 0: none)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs of each, the best kept (3)")
    parser.add_argument("--dir", default=tempfile.gettempdir(), help="where to build the journal")
    parser.add_argument("--keep", action="store_true", help="keep the journal (its path is printed)")
    args = parser.parse_args()
    directory = tempfile.mkdtemp(prefix="cpmi-verify-", dir=args.dir)
    try:
        start = time.perf_counter()
        records, seals, size = build(directory, args.mib, args.image_every)
        segments = len(list_segments(directory))
        print(
            f"journal: {size / MIB:.0f} MiB, {records:,} records, {seals} seals, {segments} segments "
            f"(built in {time.perf_counter() - start:.1f} s); {os.cpu_count()} CPUs"
        )
        baseline_files(directory)  # into the page cache
        timings = {
            "baseline_files": best(lambda: baseline_files(directory), args.runs),
            "baseline_lines": best(lambda: baseline_lines(directory), args.runs),
            "verify": best(lambda: cli_verify(directory), args.runs),
            "verify_journal": best(lambda: in_process_verify(directory), args.runs),
        }
        labels = {
            "baseline_files": "baseline: BLAKE2b of the files",
            "baseline_lines": "baseline: BLAKE2b of every line",
            "verify": "cpmictl log verify (process)",
            "verify_journal": "verify_journal (in this process)",
        }
        summary: dict[str, Any] = {
            "mib": round(size / MIB, 1),
            "records": records,
            "image_every": args.image_every,
            "segments": segments,
        }
        for name, seconds in timings.items():
            rate = size / MIB / seconds
            gib = seconds * 2**30 / size
            print(f"{labels[name]:<34} {seconds:7.2f} s  {rate:7.0f} MiB/s  {gib:6.2f} s/GiB")
            summary[name] = {"seconds": round(seconds, 3), "mib_s": round(rate, 1), "s_gib": round(gib, 2)}
        ratio = timings["verify"] / timings["baseline_lines"]
        summary["ratio"] = round(ratio, 2)
        print(f"verify / baseline (lines) = {ratio:.2f} (time; below 1 is faster than one core hashing)")
        out = ROOT / "bench" / "results"
        out.mkdir(parents=True, exist_ok=True)
        (out / "journal_verify.json").write_text(json.dumps(summary, indent=2) + "\n")
    finally:
        if args.keep:
            print(f"kept: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()

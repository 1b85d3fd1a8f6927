"""A writer killed with SIGKILL mid-stream loses nothing it acknowledged."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from twisted.internet.task import Clock

from gateway.journal.reader import read_records, verify
from gateway.journal.segments import list_segments
from gateway.journal.writer import Journal
from tests.journal.crash_writer import body_for
from tests.journal.helpers import ManualRunner

ROOT = Path(__file__).parent.parent.parent


def parse(text: str) -> list[tuple[int, int]]:
    return [(int(seq), int(n)) for seq, n in (line.split() for line in text.splitlines())]


def run_and_kill(directory: Path, acknowledgements: int, rng: random.Random) -> list[tuple[int, int]]:
    """Run the crash writer until it has acknowledged that many records, then SIGKILL it."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.journal.crash_writer", str(directory)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    watchdog = threading.Timer(8, proc.kill)
    watchdog.start()
    try:
        assert proc.stdout is not None
        acked: list[tuple[int, int]] = []
        for line in proc.stdout:
            acked += parse(line)
            if len(acked) >= acknowledgements:
                break
        time.sleep(rng.random() * 0.01)  # somewhere in the middle of a batch
        proc.kill()
        # Read on through proc.stdout itself: communicate() reads the pipe's descriptor and would
        # skip what the loop above had buffered already, starting mid-line.
        rest = proc.stdout.read()
        assert proc.stderr is not None
        errors = proc.stderr.read()
        proc.wait(timeout=5)
    finally:
        watchdog.cancel()
    acked += parse(rest)
    assert len(acked) >= acknowledgements, errors
    return acked


def test_sigkill_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """After SIGKILL, every acknowledged seq is on disk with its body; the journal verifies and goes on."""
    rng = random.Random()
    directory = tmp_path / "journal"
    previous_last = 0
    for _ in range(3):
        acked = run_and_kill(directory, rng.randint(200, 700), rng)
        last_segment = Path(list_segments(directory)[-1].path).read_bytes()
        torn = not last_segment.endswith(b"\n")
        runner = ManualRunner()
        journal = Journal.open(directory, reactor=Clock(), run_blocking=runner)
        records = {r.seq: r for r in journal.replay()}
        assert verify(directory) == len(records)
        assert records.keys() == set(range(1, journal.last_seq + 1))
        for seq, n in acked:
            assert records[seq].body == body_for(n)
            assert records[seq].opr == f"opr-{n}"
        assert min(seq for seq, _ in acked) > previous_last  # seq continued from the last round
        assert (records[journal.last_seq].kind == "recovery") == torn
        previous_last = journal.last_seq
        closed = journal.close()
        runner.run_all()
        assert closed.called
    assert [r.seq for r in read_records(directory)] == list(range(1, previous_last + 1))

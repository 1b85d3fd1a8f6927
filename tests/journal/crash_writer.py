"""
Append to a journal as fast as possible until killed (for the crash test).

Usage: python -m tests.journal.crash_writer DIRECTORY

Opens the journal (fsync="always") under the real reactor and appends records
in a loop, several per reactor turn, keeping at most a few hundred in flight.
When an append's Deferred fires, prints ``SEQ N`` (the acknowledged seq and the
writer's own counter, which the body holds) and flushes stdout, so whoever
reads the output knows what was acknowledged when it killed the process.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor as _reactor

from gateway.journal.record import Record
from gateway.journal.writer import Journal

reactor: Any = _reactor

PER_TURN = 8
IN_FLIGHT = 256


def body_for(n: int) -> dict[str, object]:
    """The body of the writer's n-th record (the crash test rebuilds it from n)."""
    return {
        "n": n,
        "plate": f"粤B{n:05d}",
        "note": "line\u2028sep\n" + "x" * (n % 97),
        "big": 2**70 + n if n % 2 else n,  # every other record takes the json fallback
    }


def main(directory: str) -> None:
    journal = Journal.open(directory, reactor=reactor)
    out = sys.stdout
    state = {"n": 0, "in_flight": 0}

    def acknowledged(record: Record, n: int) -> None:
        state["in_flight"] -= 1
        out.write(f"{record.seq} {n}\n")
        out.flush()

    def loop() -> None:
        for _ in range(PER_TURN):
            if state["in_flight"] >= IN_FLIGHT:
                break
            n = state["n"] = state["n"] + 1
            state["in_flight"] += 1
            d = journal.append("uplink", "P001", "carIn", f"opr-{n}", body_for(n))
            d.addCallback(acknowledged, n)
        reactor.callLater(0, loop)

    reactor.callWhenRunning(loop)
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])

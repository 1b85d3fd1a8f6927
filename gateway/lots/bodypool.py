"""Worker processes that parse big uplink bodies, so that no body stalls the reactor.

The form decoding and JSON parse of a body of some MiB hold the interpreter
for tens of milliseconds to seconds, and every other lot's request waits
behind them (issue 19). `BodyPool` sends a body over `inline_bytes` to one of
a few worker processes (`python -m gateway.lots.bodies`, at a lower priority)
and gives back what it found (`gateway.lots.bodies.parse_body`); smaller
bodies, nearly all of a lot's, are parsed where they are, as before.

Bounds, since anyone can post big bodies: at most `max_pending` bodies wait
or are being parsed (one more is refused: `parse` returns None, answered 9999
"busy, retry"); a waiting body whose client has gone is dropped before it is
sent. A body is streamed to its worker from the request's own (spooled) file,
so the gateway never holds a big body in memory; only a parsed request comes
back whole.

The processes, their queue, restarts and stop are `gateway.lots.workers.WorkerPool`'s.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping
from typing import IO, Any

from twisted.internet.defer import Deferred

from gateway.lots.bodies import Outcome
from gateway.lots.workers import WorkerPool, provides_processes

__all__ = ["WORKER_ARGS", "BodyPool", "provides_processes"]

WORKER_ARGS = (sys.executable, "-m", "gateway.lots.bodies")
"""The worker's command line."""


class BodyPool:
    """A few worker processes parsing big uplink bodies off the reactor, with a bounded queue.

    `start` spawns `workers` processes (again, after a pause, when one ends);
    `stop` ends them. `parse` queues a body and returns the Deferred of its
    outcome (a fault of the worker's is a `("fault", ...)` outcome, never an
    errback), or None when `max_pending` bodies wait already.
    """

    def __init__(
        self,
        reactor: Any,
        *,
        workers: int,
        max_pending: int,
        inline_bytes: int,
        args: tuple[str, ...] = WORKER_ARGS,
        env: dict[str, str] | None = None,
    ) -> None:
        self.inline_bytes = inline_bytes
        self.workers = WorkerPool(
            reactor, name="body", args=args, workers=workers, max_pending=max_pending, env=env
        )

    @property
    def pending(self) -> int:
        """Bodies waiting or being parsed."""
        return self.workers.pending

    @property
    def counters(self) -> Mapping[str, int]:
        """Bodies parsed; refused because `max_pending` waited already; dropped, their client gone."""
        counters = self.workers.counters
        return {"parsed": counters["done"], "busy": counters["busy"], "dropped": counters["dropped"]}

    def start(self) -> None:
        """Spawn the workers."""
        self.workers.start()

    def stop(self) -> Deferred[None]:
        """End the workers and answer what waits as a fault; fires once every worker has ended."""
        return self.workers.stop()

    def parse(
        self,
        content: IO[bytes],
        size: int,
        raw_type: bytes | None,
        query_param: bytes | None,
        gone: Callable[[], bool],
    ) -> Deferred[Outcome] | None:
        """Queue the body in `content` (of `size` bytes; the pool closes it); None when too many wait.

        The outcome is `gateway.lots.bodies.parse_body`'s, or `("fault", why)`
        when its worker ended, or `("gone",)` when the client left before the
        body's turn came.
        """
        return self.workers.submit((raw_type, query_param), content, size, gone)

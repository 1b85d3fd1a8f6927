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

The pool is driven by the reactor alone (`IReactorProcess`): no thread.
"""

from __future__ import annotations

import marshal
import os
import sys
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from attrs import frozen
from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from gateway.lots.bodies import JOB_HEAD, OUTCOME_HEAD, Outcome

__all__ = ["WORKER_ARGS", "BodyPool"]

log = Logger()

WORKER_ARGS = (sys.executable, "-m", "gateway.lots.bodies")
"""The worker's command line."""

_RESTART_DELAY = 1.0  # seconds before a worker that ended is started again
_STOP_WAIT = 5.0  # seconds a stopping worker has to exit before it is killed


class _Sender(FileSender):
    """Streams a body to its worker a pipe's buffer at a time (FileSender's 16 KiB take 4 turns)."""

    CHUNK_SIZE = 2**16


@frozen
class _Job:
    """A body to parse: its file (the pool's now), size, Content-Type and the URL's `param`."""

    content: IO[bytes]
    size: int
    raw_type: bytes | None
    query_param: bytes | None
    gone: Callable[[], bool]
    done: Deferred[Outcome]


class _Worker(ProcessProtocol):
    """One worker process: sends it one job at a time, reads back each outcome."""

    def __init__(self, pool: BodyPool) -> None:
        self.pool = pool
        self.job: _Job | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._wanted = OUTCOME_HEAD.size
        self._in_head = True

    def connectionMade(self) -> None:
        self.pool._idle(self)

    def run(self, job: _Job) -> None:
        """Send `job` to the process: its head now, its body streamed from its file."""
        self.job = job
        meta = marshal.dumps((job.raw_type, job.query_param))
        self.transport.write(JOB_HEAD.pack(len(meta), job.size) + meta)  # type: ignore[union-attr]
        job.content.seek(0)
        sent = _Sender().beginFileTransfer(job.content, self.transport)
        sent.addErrback(lambda _: None)  # the process ended: processEnded answers the job

    def childDataReceived(self, childFD: int, data: bytes) -> None:
        if childFD != 1:
            return
        self._chunks.append(data)
        self._buffered += len(data)
        while self._buffered >= self._wanted:
            joined = b"".join(self._chunks)
            piece, rest = joined[: self._wanted], joined[self._wanted :]
            self._chunks, self._buffered = ([rest] if rest else []), len(rest)
            if self._in_head:
                (self._wanted,) = OUTCOME_HEAD.unpack(piece)
                self._in_head = False
            else:
                self._wanted, self._in_head = OUTCOME_HEAD.size, True
                self._finished(marshal.loads(piece))

    def _finished(self, outcome: Outcome) -> None:
        job, self.job = self.job, None
        if job is None:
            return
        job.content.close()
        self.pool.counters["parsed"] += 1
        job.done.callback(outcome)
        self.pool._idle(self)

    def processEnded(self, reason: Failure) -> None:
        job, self.job = self.job, None
        self.pool._ended(self, job, reason)


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
        self._reactor = reactor
        self.workers = workers
        self.max_pending = max_pending
        self.inline_bytes = inline_bytes
        self._args = args
        self._env = env
        self._waiting: deque[_Job] = deque()
        self._idle_workers: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._running = False
        self._stopped: list[Deferred[None]] = []
        self._kill_call: IDelayedCall | None = None
        self.counters = {"parsed": 0, "busy": 0, "dropped": 0}
        """Bodies parsed; refused because `max_pending` waited already; dropped, their client gone."""

    @property
    def pending(self) -> int:
        """Bodies waiting or being parsed."""
        return len(self._waiting) + sum(1 for worker in self._all if worker.job is not None)

    def start(self) -> None:
        """Spawn the workers."""
        self._running = True
        for _ in range(self.workers - len(self._all)):
            self._spawn()

    def stop(self) -> Deferred[None]:
        """End the workers (their stdin closes; they exit; killed after `_STOP_WAIT` s) and answer
        what waits as a fault. Fires once every worker has ended."""
        self._running = False
        while self._waiting:
            job = self._waiting.popleft()
            job.content.close()
            job.done.callback(("fault", "the gateway is stopping"))
        ended: Deferred[None] = Deferred()
        if not self._all:
            ended.callback(None)
            return ended
        self._stopped.append(ended)
        for worker in list(self._all):
            if worker.transport is not None:
                worker.transport.closeStdin()
        self._kill_call = self._reactor.callLater(_STOP_WAIT, self._kill)
        return ended

    def _kill(self) -> None:
        self._kill_call = None
        for worker in list(self._all):
            if worker.transport is not None:
                try:
                    worker.transport.signalProcess("KILL")
                except ProcessExitedAlready:
                    pass

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
        if self.pending >= self.max_pending or not self._running:
            self.counters["busy"] += 1
            content.close()
            return None
        job = _Job(content, size, raw_type, query_param, gone, Deferred())
        self._waiting.append(job)
        self._next()
        return job.done

    def _spawn(self) -> None:
        worker = _Worker(self)
        self._all.add(worker)
        env = dict(os.environ) if self._env is None else self._env
        self._reactor.spawnProcess(
            worker, self._args[0], list(self._args), env=env, childFDs={0: "w", 1: "r", 2: 2}
        )

    def _idle(self, worker: _Worker) -> None:
        self._idle_workers.append(worker)
        self._next()

    def _next(self) -> None:
        while self._waiting and self._idle_workers:
            job = self._waiting.popleft()
            if job.gone():
                self.counters["dropped"] += 1
                job.content.close()
                job.done.callback(("gone",))
                continue
            self._idle_workers.pop().run(job)

    def _ended(self, worker: _Worker, job: _Job | None, reason: Failure) -> None:
        self._all.discard(worker)
        if worker in self._idle_workers:
            self._idle_workers.remove(worker)
        if job is not None:
            job.content.close()
            log.error("a body worker ended while parsing a body: {reason}", reason=reason.value)
            job.done.callback(("fault", "the body's worker process ended"))
        elif self._running:
            log.warn("a body worker ended: {reason}; another starts in a second", reason=reason.value)
        if self._running:
            self._reactor.callLater(_RESTART_DELAY, self._respawn)
        elif not self._all:
            if self._kill_call is not None and self._kill_call.active():
                self._kill_call.cancel()
            self._kill_call = None
            stopped, self._stopped = self._stopped, []
            for ended in stopped:
                ended.callback(None)

    def _respawn(self) -> None:
        if self._running and len(self._all) < self.workers:
            self._spawn()


def provides_processes(reactor: object) -> bool:
    """Whether `reactor` can run worker processes (a test's memory reactor may not)."""
    return IReactorProcess.providedBy(reactor)

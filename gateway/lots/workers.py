"""Worker processes fed from a bounded queue, so that costly work never stalls the reactor.

Two kinds of work run in processes of their own: big uplink bodies
(`gateway.lots.bodypool`) and Argon2id password checks
(`gateway.lots.passwords`). A thread would not do: the form decoding and JSON
parse of a big body hold CPython's lock for their whole length, and a check's
64 MiB of working memory would belong to the gateway. `WorkerPool` runs
`workers` such processes (`gateway.lots.workerloop` is their side), sends
each one job at a time over its stdin and reads the outcome on its stdout.

Bounds and failures, since anyone can send the work:
- at most `max_pending` jobs wait or run; one more is refused (`submit`
  returns None) and so is any while no worker is alive;
- a waiting job whose client has gone is dropped before it is sent;
- a worker first says it is ready (after its warm-up); one that ends before
  that could not start, and the next try waits twice as long (1 s, 2 s, ...
  up to a minute), logged each time;
- a job that takes longer than `deadline` kills its worker and is answered
  `("fault", ...)`; so is the job of a worker that ends, and, when no worker
  is left alive, every job waiting;
- a worker that ends is replaced after a second; `stop` closes each
  worker's stdin (it finishes its job, then exits), kills what is left
  after 5 s, and fires once all have ended. A worker also asks the kernel to kill it when
  the gateway ends (`workerloop.die_with_parent`): none outlives it.

Restarts, start failures, and jobs lost or late are counted in `counters`
(plain integers) for the metrics (`gateway.cloud.metrics.WorkersCollector`).

Driven by the reactor alone (`IReactorProcess`): no thread.
"""

from __future__ import annotations

import marshal
import os
from collections import deque
from collections.abc import Callable
from typing import IO, Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessExitedAlready
from twisted.internet.interfaces import IDelayedCall, IReactorProcess
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.protocols.basic import FileSender
from twisted.python.failure import Failure

from gateway.lots.workerloop import JOB_HEAD, OUTCOME_HEAD, READY, Outcome

__all__ = ["WorkerPool", "provides_processes"]

log = Logger()

RESTART_DELAY = 1.0  # seconds before a worker that ended is started again
MAX_RESTART_DELAY = 60.0  # the longest wait between two tries of a worker that cannot start
START_TIMEOUT = 30.0  # seconds a worker has to say it is ready, else it is killed
STOP_WAIT = 5.0  # seconds a stopping worker has to exit before it is killed


def provides_processes(reactor: object) -> bool:
    """Whether `reactor` can run worker processes (a test's memory reactor may not)."""
    return IReactorProcess.providedBy(reactor)


class _Sender(FileSender):
    """Streams a body to its worker a pipe's buffer at a time (FileSender's 16 KiB take 4 turns)."""

    CHUNK_SIZE = 2**16


class _Job:
    """One job: its marshalled meta, its body (bytes, or a file the pool closes), and who waits."""

    __slots__ = ("body", "content", "done", "gone", "meta", "size")

    def __init__(
        self,
        meta: bytes,
        body: bytes | IO[bytes],
        size: int,
        gone: Callable[[], bool],
    ) -> None:
        self.meta = meta
        self.content: IO[bytes] | None = None if isinstance(body, bytes) else body
        self.body = body if isinstance(body, bytes) else b""
        self.size = size
        self.gone = gone
        self.done: Deferred[Outcome] = Deferred()

    def answer(self, outcome: Outcome) -> None:
        """Close the job's file and fire its Deferred with `outcome`, once."""
        if self.content is not None:
            self.content.close()
        if not self.done.called:
            self.done.callback(outcome)


class _Worker(ProcessProtocol):
    """One worker process: ready once it says so, then one job at a time."""

    def __init__(self, pool: WorkerPool) -> None:
        self.pool = pool
        self.job: _Job | None = None
        self.ready = False
        self.ended = False
        self.timer: IDelayedCall | None = None
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._wanted = OUTCOME_HEAD.size
        self._in_head = True

    def run(self, job: _Job) -> None:
        """Send `job` to the process: its head and meta now, its body after (streamed from its file)."""
        self.job = job
        self._time(self.pool.deadline)
        head = JOB_HEAD.pack(len(job.meta), job.size) + job.meta
        transport: Any = self.transport
        if job.content is None:
            transport.write(head + job.body)
            return
        transport.write(head)
        job.content.seek(0)
        sent = _Sender().beginFileTransfer(job.content, transport)
        sent.addErrback(lambda _: None)  # the process ended: processEnded answers the job

    def _time(self, seconds: float | None) -> None:
        """Kill the process unless it answers (or says it is ready) within `seconds`."""
        self._untime()
        if seconds is not None:
            self.timer = self.pool.clock.callLater(seconds, self.pool._late, self)

    def _untime(self) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None

    def kill(self) -> None:
        """Send the process SIGKILL (it may have ended already)."""
        if self.transport is not None:
            try:
                self.transport.signalProcess("KILL")
            except ProcessExitedAlready:
                pass

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
                self._outcome(marshal.loads(piece))

    def _outcome(self, outcome: Outcome) -> None:
        self._untime()
        if not self.ready:
            if outcome == READY:
                self.ready = True
                self.pool._ready(self)
            return
        job, self.job = self.job, None
        if job is None:
            return  # answered already: its deadline passed
        self.pool.counters["done"] += 1
        job.answer(outcome)
        self.pool._idle(self)

    def processEnded(self, reason: Failure) -> None:
        self._untime()
        self.ended = True
        job, self.job = self.job, None
        self.pool._ended(self, job, reason)


class WorkerPool:
    """`workers` processes running `args`, fed one job each from a queue of at most `max_pending`.

    `submit` queues a job and returns the Deferred of its outcome: what the
    worker answered, `("fault", why)` when its worker ended or took longer
    than `deadline`, or `("gone",)` when its client left before its turn.
    It never errs. `name` names the workers in the log ("body", "password").
    """

    def __init__(
        self,
        reactor: Any,
        *,
        name: str,
        args: tuple[str, ...],
        workers: int,
        max_pending: int,
        env: dict[str, str] | None = None,
        deadline: float | None = None,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.clock = reactor
        self.name = name
        self.workers = workers
        self.max_pending = max_pending
        self.deadline = deadline
        self.start_timeout = start_timeout
        self._args = args
        self._env = env
        self._waiting: deque[_Job] = deque()
        self._idle_workers: list[_Worker] = []
        self._all: set[_Worker] = set()
        self._running = False
        self._start_failures = 0
        self._respawn_call: IDelayedCall | None = None
        self._stopped: list[Deferred[None]] = []
        self._kill_call: IDelayedCall | None = None
        self.counters = {
            "done": 0,
            "busy": 0,
            "dropped": 0,
            "lost": 0,
            "late": 0,
            "start_failures": 0,
            "restarts": 0,
        }
        """Jobs answered by a worker; refused (full, or no worker alive); dropped, their client gone;
        answered a fault because their worker ended or was late; workers that could not start; workers
        that ended after they were ready, while the pool ran, and were replaced (the metrics read these)."""

    @property
    def pending(self) -> int:
        """Jobs waiting or being worked on."""
        return len(self._waiting) + sum(1 for worker in self._all if worker.job is not None)

    @property
    def alive(self) -> int:
        """Worker processes alive (ready or starting): none while all are being restarted."""
        return len(self._all) if self._running else 0

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers alive."""
        return [worker.transport.pid for worker in self._all if worker.transport is not None]

    def start(self) -> None:
        """Spawn the workers."""
        self._running = True
        for _ in range(self.workers - len(self._all)):
            self._spawn()

    def stop(self) -> Deferred[None]:
        """End the workers and answer what waits `("fault", ...)`; fires once every worker has ended.

        Each worker's stdin is closed (it ends after the job it holds); one
        still there after `STOP_WAIT` seconds is killed.
        """
        self._running = False
        if self._respawn_call is not None and self._respawn_call.active():
            self._respawn_call.cancel()
        self._respawn_call = None
        self._fail_waiting("the gateway is stopping")
        ended: Deferred[None] = Deferred()
        if not self._all:
            ended.callback(None)
            return ended
        self._stopped.append(ended)
        for worker in list(self._all):
            if worker.transport is not None:
                worker.transport.closeStdin()
        if self._kill_call is None:
            self._kill_call = self.clock.callLater(STOP_WAIT, self._kill)
        return ended

    def _kill(self) -> None:
        self._kill_call = None
        for worker in list(self._all):
            worker.kill()

    def submit(
        self, meta: Any, body: bytes | IO[bytes], size: int, gone: Callable[[], bool]
    ) -> Deferred[Outcome] | None:
        """Queue a job (`meta` marshallable; `body` bytes, or a file of `size` bytes the pool closes).

        None, at once, when `max_pending` jobs wait or run, or no worker is alive.
        """
        if self.pending >= self.max_pending or not self.alive:
            self.counters["busy"] += 1
            if not isinstance(body, bytes):
                body.close()
            return None
        job = _Job(marshal.dumps(meta), body, size, gone)
        self._waiting.append(job)
        self._next()
        return job.done

    def _spawn(self) -> None:
        worker = _Worker(self)
        env = dict(os.environ) if self._env is None else self._env
        try:
            self.clock.spawnProcess(
                worker, self._args[0], list(self._args), env=env, childFDs={0: "w", 1: "r", 2: 2}
            )
        except Exception as error:  # fork or pipe failed: as a worker that could not start
            self._start_failed(f"{type(error).__name__}: {error}")
            return
        self._all.add(worker)
        worker._time(self.start_timeout)

    def _ready(self, worker: _Worker) -> None:
        if self._start_failures:
            log.info("a {name} worker started again", name=self.name)
        self._start_failures = 0
        self._idle(worker)

    def _idle(self, worker: _Worker) -> None:
        if self._running:
            self._idle_workers.append(worker)
            self._next()

    def _next(self) -> None:
        while self._waiting and self._idle_workers:
            job = self._waiting.popleft()
            if job.gone():
                self.counters["dropped"] += 1
                job.answer(("gone",))
                continue
            self._idle_workers.pop().run(job)

    def _late(self, worker: _Worker) -> None:
        """A worker did not answer in time: kill it; its job is answered now, not when it has ended."""
        worker.timer = None
        job, worker.job = worker.job, None
        if job is not None:
            self.counters["late"] += 1
            log.error(
                "a {name} worker took over {seconds} s over one job: killed, another starts",
                name=self.name,
                seconds=self.deadline,
            )
            job.answer(("fault", f"the {self.name} worker took too long"))
        elif not worker.ready:
            log.error(
                "a {name} worker was not ready within {seconds} s: killed",
                name=self.name,
                seconds=self.start_timeout,
            )
        worker.kill()

    def _ended(self, worker: _Worker, job: _Job | None, reason: Failure) -> None:
        self._all.discard(worker)
        if worker in self._idle_workers:
            self._idle_workers.remove(worker)
        if job is not None:
            self.counters["lost"] += 1
            log.error("a {name} worker ended during a job: {reason}", name=self.name, reason=reason.value)
            job.answer(("fault", f"the {self.name} worker ended"))
        if not self._all:
            self._fail_waiting(f"no {self.name} worker is running")
        if self._running:
            if not worker.ready:
                self._start_failed(str(reason.value))
            else:
                self.counters["restarts"] += 1
                log.warn(
                    "a {name} worker ended: {reason}; another starts", name=self.name, reason=reason.value
                )
                self._respawn_later(RESTART_DELAY)
        elif not self._all:
            if self._kill_call is not None and self._kill_call.active():
                self._kill_call.cancel()
            self._kill_call = None
            stopped, self._stopped = self._stopped, []
            for ended in stopped:
                ended.callback(None)

    def _start_failed(self, why: str) -> None:
        self.counters["start_failures"] += 1
        self._start_failures += 1
        delay = min(RESTART_DELAY * 2 ** (self._start_failures - 1), MAX_RESTART_DELAY)
        log.error(
            "a {name} worker could not start ({why}); next try in {delay:.0f} s",
            name=self.name,
            why=why,
            delay=delay,
        )
        if not self._all:
            self._fail_waiting(f"no {self.name} worker is running")
        self._respawn_later(delay)

    def _respawn_later(self, delay: float) -> None:
        if self._respawn_call is None or not self._respawn_call.active():
            self._respawn_call = self.clock.callLater(delay, self._respawn)

    def _respawn(self) -> None:
        self._respawn_call = None
        if self._running:
            self.start()

    def _fail_waiting(self, why: str) -> None:
        while self._waiting:
            self._waiting.popleft().answer(("fault", why))

"""The worker processes' pool (`gateway.lots.workers`) as the password checks use it: what happens when
a worker dies, is slow, cannot start, or the gateway stops, all on a fake `IReactorProcess`."""

from __future__ import annotations

import marshal
from typing import Any

from twisted.internet.error import ProcessDone, ProcessTerminated
from twisted.internet.interfaces import IReactorProcess
from twisted.internet.task import Clock
from twisted.logger import formatEvent
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.lots.passwords import CHECK_DEADLINE, LoginsBusy, PasswordChecker
from gateway.lots.workerloop import JOB_HEAD, READY, frame
from gateway.lots.workers import MAX_RESTART_DELAY, STOP_WAIT, WorkerPool
from tests.lots.harness import fired, result_of
from tests.test_logs import captured


class Worker:
    """A spawned fake worker: the jobs written to its stdin, answered when the test says."""

    def __init__(self, protocol: Any) -> None:
        self.protocol = protocol
        self.stdin = b""
        self.stdin_closed = False
        self.signals: list[str] = []
        self.ended = False
        self.pid = 4242

    def write(self, data: bytes) -> None:
        self.stdin += data

    def closeStdin(self) -> None:
        self.stdin_closed = True

    def signalProcess(self, signal: str) -> None:
        self.signals.append(signal)

    def ready(self) -> None:
        self.protocol.childDataReceived(1, frame(READY))

    def jobs(self) -> list[tuple[Any, bytes]]:
        """The (meta, body) of every job written so far."""
        found, data = [], self.stdin
        while data:
            meta_size, body_size = JOB_HEAD.unpack(data[: JOB_HEAD.size])
            data = data[JOB_HEAD.size :]
            found.append((marshal.loads(data[:meta_size]), data[meta_size : meta_size + body_size]))
            data = data[meta_size + body_size :]
        return found

    def answer(self, matches: bool) -> None:
        """Answer the job under way, as the password worker would."""
        self.protocol.childDataReceived(1, frame(("checked", matches)))

    def end(self, reason: Failure | None = None) -> None:
        self.ended = True
        self.protocol.processEnded(reason or Failure(ProcessTerminated(signal=9)))


@implementer(IReactorProcess)
class Processes(Clock):
    """A clock that spawns `Worker`s (ready at once unless `ready` is false), or fails to."""

    def __init__(self, ready: bool = True) -> None:
        super().__init__()
        self.spawned: list[Worker] = []
        self.ready_at_once = ready
        self.refuse = False

    def spawnProcess(self, protocol: Any, executable: Any, args: Any = (), **kwargs: Any) -> Worker:
        if self.refuse:
            raise OSError(24, "Too many open files")
        worker = Worker(protocol)
        self.spawned.append(worker)
        protocol.makeConnection(worker)
        if self.ready_at_once:
            worker.ready()
        return worker

    @property
    def live(self) -> list[Worker]:
        return [worker for worker in self.spawned if not worker.ended]


def checker(processes: Processes, max_pending: int = 4) -> PasswordChecker:
    passwords = PasswordChecker(processes, workers=1, max_pending=max_pending)
    passwords.start()
    return passwords


def busy(deferred: Any) -> str:
    """The message of the LoginsBusy a check failed with."""
    results: list[Any] = []
    deferred.addBoth(results.append)
    [result] = results
    assert isinstance(result, Failure) and result.check(LoginsBusy), result
    return result.getErrorMessage()


def test_a_check_goes_to_the_worker_over_its_pipe_and_comes_back() -> None:
    """A check is one job on the worker's stdin (the hash as meta, the password as body); its answer
    is the check's result; the next waiting check goes then."""
    processes = Processes()
    passwords = checker(processes)
    first, second = passwords.check("$argon2id$h", "right"), passwords.check(None, "guess")
    [worker] = processes.spawned
    assert worker.jobs() == [(("$argon2id$h",), b"right")] and passwords.waiting == 1
    worker.answer(True)
    assert result_of(first) is True
    assert worker.jobs()[1] == ((None,), b"guess")
    worker.answer(False)
    assert result_of(second) is False and passwords.counters["checked"] == 2


def test_a_worker_that_dies_mid_check_answers_busy_and_is_replaced() -> None:
    """The worker ending during a check: that check and every waiting one are answered LoginsBusy, a
    check meanwhile is refused busy at once, and a new worker is started a second later."""
    processes = Processes()
    passwords = checker(processes)
    checks = [passwords.check("$argon2id$h", f"p{n}") for n in range(3)]
    with captured() as events:
        processes.spawned[0].end()
    assert [busy(each) for each in checks] == [
        "the password check could not be made now (the password worker ended)",
        "the password check could not be made now (the password worker ended)",
        "the password check could not be made now (the password worker ended)",
    ]
    assert any("a password worker ended during a job" in formatEvent(e) for e in events)
    assert busy(passwords.check("$argon2id$h", "p3")) == "no password worker is running now"
    assert passwords.counters["busy"] == 4
    processes.advance(1.0)
    assert len(processes.live) == 1
    again = passwords.check("$argon2id$h", "p4")
    processes.live[0].answer(True)
    assert result_of(again) is True


def test_a_slow_worker_is_killed_at_the_deadline_and_its_check_answered_busy() -> None:
    """A check not answered within CHECK_DEADLINE: LoginsBusy at once, the worker killed and replaced."""
    processes = Processes()
    passwords = checker(processes)
    slow = passwords.check("$argon2id$h", "p")
    [worker] = processes.spawned
    processes.advance(CHECK_DEADLINE - 0.1)
    assert not fired(slow)
    processes.advance(0.2)
    assert "took too long" in busy(slow) and worker.signals == ["KILL"]
    worker.end()
    processes.advance(1.0)
    assert len(processes.live) == 1 and passwords.pool is not None and passwords.pool.counters["late"] == 1


def test_a_worker_that_cannot_start_is_tried_again_later_each_time() -> None:
    """A worker ending before it is ready: logins are answered busy at once; the next tries wait 1, 2,
    4 ... s, at most a minute, each logged; once one is ready, checks are answered again."""
    processes = Processes(ready=False)
    passwords = checker(processes)
    waiting = passwords.check("$argon2id$h", "p")  # queued while the worker starts
    assert not fired(waiting)
    with captured() as events:
        processes.spawned[0].end(Failure(ProcessDone(1)))
        assert "no password worker is running" in busy(waiting)
        assert busy(passwords.check("$argon2id$h", "p")) == "no password worker is running now"
        delays = []
        for _ in range(8):
            spawned = len(processes.spawned)
            waited = 0.0
            while len(processes.spawned) == spawned:
                processes.advance(0.5)
                waited += 0.5
            delays.append(waited)
            processes.spawned[-1].end(Failure(ProcessDone(1)))
    assert delays == [1.0, 2.0, 4.0, 8.0, 16.0, 32.0, MAX_RESTART_DELAY, MAX_RESTART_DELAY]
    assert sum("a password worker could not start" in formatEvent(e) for e in events) == 9
    processes.advance(MAX_RESTART_DELAY)
    processes.spawned[-1].ready()
    later = passwords.check("$argon2id$h", "p")
    processes.spawned[-1].answer(True)
    assert result_of(later) is True


def test_a_worker_that_never_says_it_is_ready_is_killed() -> None:
    """A worker silent after start (stuck in its warm-up) is killed after START_TIMEOUT, and retried."""
    processes = Processes(ready=False)
    pool = WorkerPool(processes, name="password", args=("x",), workers=1, max_pending=1, start_timeout=30)
    pool.start()
    processes.advance(30)
    assert processes.spawned[0].signals == ["KILL"]
    processes.spawned[0].end()
    assert pool.counters["start_failures"] == 1 and pool.alive == 0


def test_a_spawn_that_fails_counts_as_a_worker_that_could_not_start() -> None:
    """When the process cannot even be spawned (no fds, no memory), logins are busy; it is tried again."""
    processes = Processes()
    processes.refuse = True
    passwords = checker(processes)
    assert busy(passwords.check("$argon2id$h", "p")) == "no password worker is running now"
    processes.refuse = False
    processes.advance(1.0)
    assert len(processes.live) == 1


def test_stop_with_checks_in_flight_ends_the_worker_and_answers_every_check() -> None:
    """Stop answers the waiting checks busy, closes the worker's stdin, kills it if still there after
    STOP_WAIT, and fires once it has ended; the check under way is answered busy too; none restarts."""
    processes = Processes()
    passwords = checker(processes)
    under_way, waiting = passwords.check("$argon2id$h", "a"), passwords.check("$argon2id$h", "b")
    stopped = passwords.stop()
    assert busy(waiting) == "the gateway is stopping"
    [worker] = processes.spawned
    assert worker.stdin_closed and not fired(stopped)
    processes.advance(STOP_WAIT)
    assert worker.signals == ["KILL"]
    worker.end()
    assert fired(stopped) and "worker ended" in busy(under_way)
    processes.advance(60)
    assert len(processes.spawned) == 1
    assert busy(passwords.check("$argon2id$h", "c")) == "no password worker is running now"


def test_the_checks_of_clients_gone_are_never_sent() -> None:
    """A check whose client left while it waited is dropped, not sent to the worker."""
    processes = Processes()
    passwords = checker(processes)
    passwords.check("$argon2id$h", "first")
    left = passwords.check("$argon2id$h", "left", lambda: True)
    processes.spawned[0].answer(False)
    assert result_of(left.addErrback(lambda f: f.type.__name__)) == "ClientGone"
    assert [body for _, body in processes.spawned[0].jobs()] == [b"first"]


def test_a_worker_ending_mid_job_counts_a_job_lost_and_a_restart() -> None:
    """A ready worker ending during a job: `lost` and `restarts` each count one (the metrics read them),
    nothing else does; its replacement ending while idle counts one more restart, no job lost."""
    processes = Processes()
    pool = WorkerPool(processes, name="body", args=("x",), workers=1, max_pending=2)
    pool.start()
    job = pool.submit(("meta",), b"body", 4, lambda: False)
    assert job is not None
    processes.spawned[0].end()
    assert result_of(job) == ("fault", "the body worker ended")
    assert pool.counters["lost"] == 1 and pool.counters["restarts"] == 1
    assert pool.counters["late"] == pool.counters["start_failures"] == 0 and pool.alive == 0
    processes.advance(1.0)
    assert pool.alive == 1
    processes.live[0].end()
    assert pool.counters["lost"] == 1 and pool.counters["restarts"] == 2


def test_a_failed_spawn_counts_a_start_failure_not_a_restart() -> None:
    """A spawn that raises counts in `start_failures` each try, never in `restarts`."""
    processes = Processes()
    processes.refuse = True
    pool = WorkerPool(processes, name="password", args=("x",), workers=1, max_pending=1)
    pool.start()
    assert pool.counters["start_failures"] == 1 and pool.alive == 0
    processes.advance(1.0)
    assert pool.counters["start_failures"] == 2
    processes.refuse = False
    processes.advance(2.0)
    assert pool.alive == 1 and pool.counters["start_failures"] == 2 and pool.counters["restarts"] == 0


def test_a_late_job_counts_late_and_a_restart_and_a_stop_counts_neither() -> None:
    """A job past its deadline counts in `late` (not `lost`), its killed worker in `restarts`; workers
    ending because the pool stops count nothing."""
    processes = Processes()
    pool = WorkerPool(processes, name="password", args=("x",), workers=1, max_pending=1, deadline=5.0)
    pool.start()
    assert pool.submit(("meta",), b"p", 1, lambda: False) is not None
    processes.advance(5.0)
    processes.spawned[0].end()
    assert (pool.counters["late"], pool.counters["lost"], pool.counters["restarts"]) == (1, 0, 1)
    processes.advance(1.0)
    stopped = pool.stop()
    processes.live[0].end(Failure(ProcessDone(0)))
    assert fired(stopped)
    assert (pool.counters["late"], pool.counters["lost"], pool.counters["restarts"]) == (1, 0, 1)

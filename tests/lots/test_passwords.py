"""Password checks: the bounded queue in front of the workers, what passed is remembered, and the
password worker process itself (tests/lots/test_workers.py: its pool's failures)."""

from __future__ import annotations

import io
import os
import signal
import time
from pathlib import Path
from typing import Any

import nacl.pwhash
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock, deferLater
from twisted.python.failure import Failure

from gateway import config
from gateway.lots import passwordworker
from gateway.lots.passwords import (
    ClientGone,
    LoginsBusy,
    PassedPasswords,
    PasswordChecker,
    worker_environment,
)
from gateway.lots.workerloop import serve
from gateway.lots.workers import WorkerPool
from gateway.settings import Config
from tests.lots.workerwire import job_of, outcomes

ROOT = Path(__file__).resolve().parents[2]

HASH = nacl.pwhash.argon2id.str(
    b"right",
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
).decode()


class HeldThreads:
    """A runner standing in for the workers: each check waits until the test answers it."""

    def __init__(self) -> None:
        self.running: list[tuple[bytes, Deferred[bool]]] = []

    def __call__(self, password_hash: str | None, password: bytes) -> Deferred[bool]:
        deferred: Deferred[bool] = Deferred()
        self.running.append((password, deferred))
        return deferred

    def answer(self, index: int = 0, matches: bool = False) -> None:
        """Finish the `index`th running check."""
        _, deferred = self.running.pop(index)
        deferred.callback(matches)


def held_checker(threads: int = 2, max_pending: int = 3) -> tuple[PasswordChecker, HeldThreads]:
    runner = HeldThreads()
    checker = PasswordChecker(Clock(), workers=threads, max_pending=max_pending, run=runner)
    return checker, runner


def failure_of(deferred: Deferred[Any]) -> Failure:
    results: list[Any] = []
    deferred.addBoth(results.append)
    [result] = results
    assert isinstance(result, Failure)
    return result


def test_past_max_pending_a_check_is_refused_busy_at_once() -> None:
    """Two checks run, three wait; the sixth fails LoginsBusy at once; a freed thread takes the next."""
    checker, runner = held_checker()
    checks = [checker.check(HASH, f"p{n}") for n in range(5)]
    assert [password for password, _ in runner.running] == [b"p0", b"p1"] and checker.waiting == 3
    assert failure_of(checker.check(HASH, "p5")).check(LoginsBusy)
    runner.answer(0, True)
    assert checks[0].result is True
    assert [password for password, _ in runner.running] == [b"p1", b"p2"] and checker.waiting == 2
    assert not checks[2].called
    assert checker.counters == {"checked": 3, "busy": 1, "dropped": 0}


def test_a_check_whose_client_has_gone_is_dropped_before_it_runs() -> None:
    """When a thread frees, waiting checks whose client left fail ClientGone without running."""
    checker, runner = held_checker()
    left = {"p2": False, "p3": False}
    checks = [checker.check(HASH, f"p{n}", lambda n=n: left.get(f"p{n}", False)) for n in range(5)]
    left["p2"] = left["p3"] = True
    runner.answer(0)
    assert [password for password, _ in runner.running] == [b"p1", b"p4"]
    assert failure_of(checks[2]).check(ClientGone) and failure_of(checks[3]).check(ClientGone)
    assert checker.counters["dropped"] == 2 and checker.waiting == 0


def test_a_full_queue_makes_room_by_dropping_the_checks_of_clients_gone() -> None:
    """A login arriving at a full queue is refused only if every waiting client is still there."""
    checker, _ = held_checker()
    gone = [False]
    [checker.check(HASH, f"p{n}", lambda: gone[0]) for n in range(5)]
    gone[0] = True
    late = checker.check(HASH, "late")
    assert not late.called and checker.waiting == 1 and checker.counters["dropped"] == 3


def test_cancelling_a_waiting_check_takes_it_out_of_the_queue() -> None:
    """A cancelled check that has not started frees its place and never runs."""
    checker, runner = held_checker()
    checks = [checker.check(HASH, f"p{n}") for n in range(3)]
    checks[2].cancel()
    failure_of(checks[2])
    assert checker.waiting == 0
    runner.answer(0)
    assert [password for password, _ in runner.running] == [b"p1"]


OTHER_HASH = nacl.pwhash.argon2id.str(
    b"changed",
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
).decode()


def settings_with(*hashes: str) -> Config:
    """A configuration whose lots have the password hashes `hashes`."""
    lots = [
        {"park_code": f"P{n:03d}", "username": f"lot{n:03d}", "password": h, "secret": "s"}
        for n, h in enumerate(hashes)
    ]
    return config.parse({"lot": lots})


def test_a_password_that_passed_is_answered_again_without_a_thread() -> None:
    """After one Argon2id pass, the same password against the same hash is true at once, off the queue."""
    checker, runner = held_checker(threads=1, max_pending=1)
    first = checker.check(HASH, "right")
    runner.answer(0, True)
    assert first.result is True and len(checker.passed) == 1
    checker.check(HASH, "other-1")  # takes the one thread
    checker.check(HASH, "other-2")  # fills the queue: a further check is busy
    again = checker.check(HASH, "right")
    assert again.result is True  # neither queued nor refused busy
    assert checker.counters == {"checked": 2, "busy": 0, "dropped": 0} and checker.passed.hits == 1


def test_a_wrong_password_never_passes_through_what_is_remembered() -> None:
    """Remembering the right password lets no other through: each wrong one costs a full check, and fails."""
    checker, runner = held_checker(threads=1, max_pending=8)
    checker.check(HASH, "right")
    runner.answer(0, True)
    for wrong in ("wrong", "right ", "Right", "", "righ", "right\x00"):
        attempt = checker.check(HASH, wrong)
        assert not attempt.called and [p for p, _ in runner.running] == [wrong.encode()]
        runner.answer(0, False)
        assert attempt.result is False
    assert checker.passed.hits == 0 and len(checker.passed) == 1
    # Nor does the right password pass for another hash, or for an unknown account.
    other = checker.check(OTHER_HASH, "right")
    assert not other.called
    runner.answer(0, False)
    unknown = checker.check(None, "right")
    assert not unknown.called
    runner.answer(0, False)
    assert other.result is False and unknown.result is False


def test_a_failed_check_is_not_remembered() -> None:
    """A check that answered false, or failed, leaves nothing behind: the next attempt is checked in full."""
    checker, runner = held_checker(threads=1, max_pending=8)
    checker.check(HASH, "right")
    runner.answer(0, False)
    failing = checker.check(HASH, "right")
    _, deferred = runner.running.pop(0)
    deferred.errback(RuntimeError("libsodium failed"))
    failure_of(failing)
    assert len(checker.passed) == 0
    checker.check(HASH, "right")
    assert len(runner.running) == 1


def test_a_password_changed_in_the_configuration_no_longer_passes() -> None:
    """A reload that changes a lot's hash forgets the old password; one that keeps it keeps it."""
    checker, runner = held_checker(threads=1, max_pending=8)
    for password_hash, password in ((HASH, "right"), (OTHER_HASH, "changed")):
        checker.check(password_hash, password)
        runner.answer(0, True)
    assert len(checker.passed) == 2
    checker.reconfigure(settings_with(OTHER_HASH))  # lot 0's password changed to OTHER_HASH's
    assert len(checker.passed) == 1
    old = checker.check(HASH, "right")
    assert not old.called  # checked in full again
    runner.answer(0, False)
    assert checker.check(OTHER_HASH, "changed").result is True  # unchanged: still remembered


def test_a_check_under_way_across_a_reload_is_not_remembered() -> None:
    """A check that began before a reload answers, but what it passed is not remembered."""
    checker, runner = held_checker(threads=1, max_pending=8)
    during = checker.check(HASH, "right")
    checker.reconfigure(settings_with(HASH))
    runner.answer(0, True)
    assert during.result is True and len(checker.passed) == 0


def test_what_is_remembered_is_bounded_least_recently_used_first() -> None:
    """At most `remembered` pairs are kept; the one used least recently goes first."""
    runner = HeldThreads()
    checker = PasswordChecker(Clock(), threads=1, max_pending=8, run=runner, remembered=2)  # type: ignore[arg-type]
    hashes = [f"$argon2id$fake-{n}" for n in range(3)]
    for h in hashes[:2]:
        checker.check(h, "pw")
        runner.answer(0, True)
    assert checker.check(hashes[0], "pw").result is True  # hashes[1] is now the least recently used
    checker.check(hashes[2], "pw")
    runner.answer(0, True)
    assert len(checker.passed) == 2
    assert checker.check(hashes[0], "pw").result is True
    assert checker.check(hashes[2], "pw").result is True
    assert not checker.check(hashes[1], "pw").called  # forgotten: checked in full
    nothing = PasswordChecker(Clock(), threads=1, run=runner, remembered=0)  # type: ignore[arg-type]
    runner.running.clear()
    nothing.check(HASH, "right")
    runner.answer(0, True)
    assert len(nothing.passed) == 0


def test_what_is_remembered_holds_neither_password_nor_a_plain_digest() -> None:
    """Only MACs under a key of its own are kept: not the password, nor a digest anyone could compute."""
    remembered = PassedPasswords()
    remembered.remember(HASH, b"right")
    other = PassedPasswords()
    other.remember(HASH, b"right")
    [mac] = remembered._macs.values()
    [other_mac] = other._macs.values()
    assert b"right" not in mac and mac != other_mac  # each process its own key
    assert remembered.passed(HASH, b"right") and not other.passed(HASH, b"wrong")
    remembered.forget()
    assert len(remembered) == 0 and not remembered.passed(HASH, b"right")


def test_a_reload_reaches_the_lots_password_checker() -> None:
    """The lots' service hands a reloaded configuration to its password checker too."""
    from twisted.internet.testing import MemoryReactorClock

    from gateway.dialects.service import LotsService

    service = LotsService(settings_with(HASH), reactor=MemoryReactorClock(), journal=None)  # type: ignore[arg-type]
    assert service.passwords in service.reconfigurable()


# The password worker ------------------------------------------------------------------------


def job(password_hash: str | None, password: bytes) -> bytes:
    return job_of((password_hash,), password)


def test_the_worker_checks_each_password_in_turn_and_an_unknown_account_against_its_decoy() -> None:
    """The worker's loop answers ("checked", matches): right, wrong, a broken hash, an unknown account."""
    checks = passwordworker.Checks()
    out = io.BytesIO()
    jobs = [(HASH, b"right"), (HASH, b"wrong"), ("$argon2id$garbage", b"right"), (None, b"right")]
    serve(io.BytesIO(b"".join(job(h, p) for h, p in jobs)), out, checks.check)
    assert outcomes(out.getvalue()) == [
        ("checked", True),
        ("checked", False),
        ("checked", False),
        ("checked", False),
    ]
    assert checks.decoy is not None and checks.decoy.startswith(b"$argon2id$v=19$m=65536,t=2,p=1$")


def test_a_fault_in_the_worker_names_the_error_and_nothing_of_the_password() -> None:
    """A job the worker cannot handle is answered a fault naming the error's type, never its text."""
    secret = b"the-password-itself"
    out = io.BytesIO()
    stdin = io.BytesIO(job_of(("too", "many"), secret))
    serve(stdin, out, passwordworker.Checks().check, fault=passwordworker._fault)
    assert outcomes(out.getvalue()) == [("fault", "the password check failed: ValueError")]
    assert secret not in out.getvalue()


def test_the_worker_environment_keeps_the_working_memory_resident() -> None:
    """The gateway's environment goes to the worker, with glibc told never to mmap nor to trim."""
    env = worker_environment({"PATH": "/bin", "MALLOC_MMAP_MAX_": "65536"})
    assert env["PATH"] == "/bin" and env["MALLOC_MMAP_MAX_"] == "0"
    assert int(env["MALLOC_TRIM_THRESHOLD_"]) >= 2**32


def status_kib(pid: int, field: str) -> int:
    """A `kB` field of /proc/PID/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


async def until(condition: Any, seconds: float = 20.0) -> None:
    """Wait on the running reactor until `condition()` holds (or fail after `seconds`)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await deferLater(reactor, 0.02, lambda: None)


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    return state != "Z"


def real_checker(**kw: Any) -> PasswordChecker:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return PasswordChecker(reactor, env=env, **kw)


async def ready_worker(checker: PasswordChecker) -> tuple[WorkerPool, int]:
    """Start `checker` and wait until its one worker process is ready: its pool, and the worker's pid."""
    checker.start()
    pool = checker.pool
    assert pool is not None
    await until(lambda: pool._idle_workers)
    [pid] = pool.pids
    return pool, pid


@pytest_twisted.ensureDeferred
async def test_a_real_worker_checks_at_nice_10_with_its_memory_held_from_the_start() -> None:
    """The worker process answers right, wrong and unknown; it runs at nice 10; its Argon2id working
    memory (64 MiB) is resident once it is ready and stays so, no more and no less, across checks."""
    checker = real_checker(max_pending=8)
    try:
        _, pid = await ready_worker(checker)
        ready_rss = status_kib(pid, "VmRSS")
        assert ready_rss >= 64 * 1024  # the decoy check's memory, held
        answers = await gatherResults(
            [checker.check(HASH, password) for password in ("right", "x")] + [checker.check(None, "right")]
        )
        assert answers == [True, False, False]
        for _ in range(3):
            assert await checker.check(None, "y") is False
        assert abs(status_kib(pid, "VmRSS") - ready_rss) < 8 * 1024
        assert os.getpriority(os.PRIO_PROCESS, pid) >= passwordworker.NICENESS
        assert os.getpriority(os.PRIO_PROCESS, 0) < passwordworker.NICENESS
    finally:
        await checker.stop()
    assert not alive(pid)


@pytest_twisted.ensureDeferred
async def test_a_real_worker_killed_mid_check_answers_busy_and_is_replaced() -> None:
    """kill -9 of the worker during a check: that login and those waiting are answered LoginsBusy at
    once, new ones too until another worker is up; then checks are answered again."""
    checker = real_checker(max_pending=8)
    try:
        pool, pid = await ready_worker(checker)
        under_way, waiting = checker.check(None, "a"), checker.check(None, "b")
        os.kill(pid, signal.SIGKILL)
        for each in (under_way, waiting):
            try:
                await each
            except LoginsBusy as error:
                assert "could not be made" in str(error) or "no password worker" in str(error)
            else:
                raise AssertionError("a check of a killed worker answered")
        assert failure_of(checker.check(HASH, "right")).check(LoginsBusy)  # none runs now
        await until(lambda: pool._idle_workers)
        assert pool.pids != [pid] and await checker.check(HASH, "right") is True
    finally:
        await checker.stop()


@pytest_twisted.ensureDeferred
async def test_a_worker_that_cannot_start_makes_logins_busy_never_a_hang() -> None:
    """A worker that exits at once: each login is answered LoginsBusy, and it is tried again later."""
    checker = PasswordChecker(reactor, args=("/bin/sh", "-c", "exit 3"))
    checker.start()
    pool = checker.pool
    assert pool is not None
    try:
        first = checker.check(HASH, "right")
        try:
            await first
        except LoginsBusy:
            pass
        else:
            raise AssertionError("a login was checked without a worker")
        await until(lambda: pool.counters["start_failures"] >= 1)
        assert failure_of(checker.check(HASH, "right")).check(LoginsBusy)
        assert checker.counters["busy"] == 2
    finally:
        await checker.stop()


@pytest_twisted.ensureDeferred
async def test_a_stop_with_checks_in_flight_ends_the_worker_and_answers_them() -> None:
    """Stopping with one check under way and more waiting: all are answered (busy, or their result),
    the worker has ended when stop fires, and nothing is left running."""
    checker = real_checker(max_pending=8)
    _, pid = await ready_worker(checker)
    checks = [checker.check(None, f"p{n}") for n in range(4)]
    await checker.stop()
    assert not alive(pid)
    results = []
    for each in checks:
        each.addBoth(results.append)
    assert len(results) == 4
    assert all(isinstance(r, Failure) and r.check(LoginsBusy) for r in results[1:])

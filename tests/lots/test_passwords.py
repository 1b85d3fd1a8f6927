"""Argon2id checks run in their own threads, never in the reactor, behind a bounded queue."""

from __future__ import annotations

import os
import threading
from typing import Any

import nacl.pwhash
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from gateway.lots.passwords import (
    PASSWORD_NICENESS,
    ClientGone,
    LoginsBusy,
    PasswordChecker,
    Verify,
    lower_thread_priority,
)

HASH = nacl.pwhash.argon2id.str(
    b"right",
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
).decode()


@pytest_twisted.ensureDeferred
async def test_checks_run_off_the_reactor_thread() -> None:
    """A check answers true for the right password, false otherwise, in a pool thread; stop is idempotent."""
    checker = PasswordChecker(reactor)
    checker.start()
    seen: list[str] = []
    original = checker._verify_hash

    def spy(password_hash: bytes, password: bytes) -> bool:
        seen.append(threading.current_thread().name)
        return original(password_hash, password)

    checker._verify_hash = spy  # type: ignore[method-assign]
    try:
        assert await checker.check(HASH, "right") is True
        assert await checker.check(HASH, "wrong") is False
        assert await checker.check("$argon2id$garbage", "right") is False
        assert await checker.check(None, "right") is False
    finally:
        checker.stop()
        checker.stop()
    assert seen and threading.main_thread().name not in seen


class HeldThreads:
    """A runner standing in for the pool: each check waits until the test answers it."""

    def __init__(self) -> None:
        self.running: list[tuple[bytes, Deferred[bool]]] = []

    def __call__(self, verify: Verify, password_hash: str | None, password: bytes) -> Deferred[bool]:
        deferred: Deferred[bool] = Deferred()
        self.running.append((password, deferred))
        return deferred

    def answer(self, index: int = 0, matches: bool = False) -> None:
        """Finish the `index`th running check."""
        _, deferred = self.running.pop(index)
        deferred.callback(matches)


def held_checker(threads: int = 2, max_pending: int = 3) -> tuple[PasswordChecker, HeldThreads]:
    runner = HeldThreads()
    checker = PasswordChecker(Clock(), threads=threads, max_pending=max_pending, run=runner)  # type: ignore[arg-type]
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


@pytest_twisted.ensureDeferred
async def test_the_pool_checks_behind_the_queue() -> None:
    """With the real pool, queued checks all run in its threads and answer."""
    checker = PasswordChecker(reactor, threads=1, max_pending=8)
    checker.start()
    try:
        answers = await gatherResults([checker.check(HASH, password) for password in ("right", "x", "right")])
    finally:
        checker.stop()
    assert answers == [True, False, True] and checker.counters["checked"] == 3


def test_a_password_thread_lowers_its_own_priority_and_no_other() -> None:
    """lower_thread_priority makes the calling thread PASSWORD_NICENESS nicer; the process keeps its own."""
    before = os.getpriority(os.PRIO_PROCESS, 0)
    seen: list[tuple[bool, int]] = []

    def in_thread() -> None:
        lowered = lower_thread_priority()
        seen.append((lowered, os.getpriority(os.PRIO_PROCESS, threading.get_native_id())))

    worker = threading.Thread(target=in_thread)
    worker.start()
    worker.join(10)
    assert seen == [(True, max(before, PASSWORD_NICENESS))]
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


@pytest_twisted.ensureDeferred
async def test_checks_run_at_the_password_threads_priority() -> None:
    """A check in the real pool runs in a thread PASSWORD_NICENESS nicer than the reactor."""
    checker = PasswordChecker(reactor, threads=1, max_pending=8)
    niceness: list[int] = []
    verify_hash = PasswordChecker._verify_hash

    def noting(password_hash: bytes, password: bytes) -> bool:
        niceness.append(os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
        return verify_hash(password_hash, password)

    checker._verify_hash = noting  # type: ignore[method-assign]
    checker.start()
    try:
        assert await checker.check(HASH, "right")
    finally:
        checker.stop()
    assert niceness and niceness[0] >= PASSWORD_NICENESS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) < PASSWORD_NICENESS

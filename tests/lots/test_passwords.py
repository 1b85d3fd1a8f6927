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

from gateway import config
from gateway.lots.passwords import (
    PASSWORD_NICENESS,
    ClientGone,
    LoginsBusy,
    PassedPasswords,
    PasswordChecker,
    Verify,
    lower_thread_priority,
)
from gateway.settings import Config

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

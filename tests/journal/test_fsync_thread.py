"""The journal's own thread for blocking calls (`FsyncThread`) under the real reactor."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import gatherResults

from gateway.journal.disk import FsyncThread

reactor: Any = _reactor


@pytest_twisted.ensureDeferred
async def test_jobs_run_in_order_off_the_reactor_and_fire_in_it() -> None:
    """Jobs run one at a time in the order given, in another thread; their Deferreds fire in the reactor's."""
    runner = FsyncThread(reactor)
    assert not runner.started  # no thread before the first job
    ran: list[tuple[int, int]] = []
    fired_in: list[int] = []

    def job(n: int) -> int:
        ran.append((n, threading.get_ident()))
        return n * 10

    def fired(result: int) -> int:
        fired_in.append(threading.get_ident())
        return result

    try:
        ds = [runner(partial(job, n)).addCallback(fired) for n in range(20)]
        assert await gatherResults(ds) == [n * 10 for n in range(20)]
    finally:
        runner.stop()
    assert [n for n, _ in ran] == list(range(20))
    assert {ident for _, ident in ran} != {threading.get_ident()} and len({ident for _, ident in ran}) == 1
    assert set(fired_in) == {threading.get_ident()}


@pytest_twisted.ensureDeferred
async def test_a_raising_job_fails_its_deferred_and_the_next_still_runs() -> None:
    """An exception in a job is that job's failure; the thread goes on with the next."""
    runner = FsyncThread(reactor)

    def broken() -> None:
        raise OSError(5, "I/O error")

    try:
        failed = runner(broken)
        after = runner(lambda: "next")
        with pytest.raises(OSError, match="I/O error"):
            await failed
        assert await after == "next"
    finally:
        runner.stop()


def test_stop_ends_the_thread_after_its_jobs_and_twice_is_harmless() -> None:
    """stop() returns once the jobs given are done and the thread has ended; a second stop does nothing."""
    runner = FsyncThread(reactor)
    done = threading.Event()
    runner(done.set)
    thread = next(t for t in threading.enumerate() if t.name == "cpmi-journal-fsync")
    runner.stop()
    assert done.is_set() and not thread.is_alive() and not runner.started
    runner.stop()

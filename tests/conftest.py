"""Fixtures shared by the tests: journals in a temporary directory, HAProxy; no thread left running."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.journal.helpers import Harness
from tests.processes import installed, which_haproxy


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    """Make Harnesses (in tmp_path unless given a path); close their journals afterwards."""
    made: list[Harness] = []

    def make(path: Path | None = None, **options: Any) -> Harness:
        made.append(Harness(path or tmp_path / "journal", **options))
        return made[-1]

    yield make
    for each in made:
        if not each.journal._closed:
            each.close()


@pytest.fixture
def h(harness: Callable[..., Harness]) -> Harness:
    """A journal with default options in tmp_path/journal."""
    return harness()


@pytest.fixture(scope="session")
def haproxy() -> str:
    """The path of haproxy, installed with apt-get when missing; skipped (saying why) if that cannot be."""
    found, output = installed("haproxy", which_haproxy)
    if found is None:
        why = "haproxy is missing and apt-get could not install it:\n" + output
        print(why)
        pytest.skip(why)
    return found


# The real reactor's pool: pytest-twisted stops it when it stops the reactor, after the last test.
REACTOR_POOL = "PoolThread-twisted.internet.reactor-"


@pytest.fixture(autouse=True)
def no_thread_left_running() -> Iterator[None]:
    """Fail a test that leaves a non-daemon thread running.

    Python waits for every non-daemon thread before it exits, so one left running makes
    pytest hang after printing its summary (a CI job then ends only at its time limit).
    The memory reactors' pools are stopped here; anything else left running is the test's
    bug and fails it, naming the threads.
    """
    before = set(threading.enumerate())
    yield
    tap = sys.modules.get("tests.test_tap")
    if tap is not None:
        while tap.MemoryReactor.started:
            pool = tap.MemoryReactor.started.pop()
            if not pool.joined:
                pool.stop()
    left = [
        thread
        for thread in threading.enumerate()
        if thread not in before
        and not thread.daemon
        and thread.is_alive()
        and not thread.name.startswith(REACTOR_POOL)
    ]
    if left:
        pytest.fail(f"threads left running: {sorted(thread.name for thread in left)}", pytrace=False)


_status = {"exit": 0}


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    _status["exit"] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """The safety net behind `no_thread_left_running`: a thread still running once pytest
    is done (one left by a failed test's skipped teardown, say) would keep the process from
    exiting, and CI would wait for it until its time limit. Name it and exit now instead,
    with the run's status, or 1 if the run had passed."""
    left = [
        thread
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not thread.daemon and thread.is_alive()
    ]
    if left:
        names = sorted(thread.name for thread in left)
        sys.stdout.flush()
        sys.stderr.write(f"\nthreads still running after the last test, not waited for: {names}\n")
        sys.stderr.flush()
        os._exit(_status["exit"] or 1)

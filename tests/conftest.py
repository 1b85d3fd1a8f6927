"""Fixtures shared by the tests: journals in a temporary directory; no thread left running."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.journal.helpers import Harness


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

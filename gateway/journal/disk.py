"""
How the journal writer reaches the disk: the reactor and thread it needs, its error, new segments.

The writer (``gateway.journal.writer``) decides; these are the blocking calls it
runs on its one-thread pool and the error they end in. Segment files are opened
for appending only, and a new one exists for good (its directory synced)
before anything is written to it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

__all__ = [
    "CREATE_SEGMENT",
    "OPEN_SEGMENT",
    "JournalReactor",
    "JournalWriteError",
    "PoolRunner",
    "RunBlocking",
    "SegmentNotSynced",
    "create_segment",
    "timed_fsync",
    "write_error",
]

_T = TypeVar("_T")

OPEN_SEGMENT = os.O_WRONLY | os.O_APPEND | os.O_CLOEXEC
CREATE_SEGMENT = OPEN_SEGMENT | os.O_CREAT | os.O_TRUNC


class JournalReactor(Protocol):
    """What the journal needs of a reactor: its time (``IReactorTime``)."""

    def seconds(self) -> float: ...

    def callLater(
        self, delay: float, callable: Callable[..., object], *args: object, **kw: object
    ) -> Any: ...


class RunBlocking(Protocol):
    """Runs a blocking job off the reactor thread; the Deferred fires in it."""

    def __call__(self, job: Callable[[], _T]) -> Deferred[_T]: ...


class JournalWriteError(Exception):
    """A record was not written (or not synced); ``errno`` is None if no OS error."""

    errno: int | None
    message: str

    def __init__(self, errno: int | None, message: str) -> None:
        super().__init__(errno, message)
        self.errno = errno
        self.message = message

    def __str__(self) -> str:
        return f"[Errno {self.errno}] {self.message}" if self.errno is not None else self.message


class SegmentNotSynced(Exception):
    """The sync of a full segment failed during rotation."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def write_error(reason: Failure | BaseException, what: str) -> JournalWriteError:
    """A failure of a write, an fsync or a rotation as the :class:`JournalWriteError` appenders get."""
    error = reason.value if isinstance(reason, Failure) else reason
    if isinstance(error, SegmentNotSynced):
        error = error.error
    if isinstance(error, OSError):
        return JournalWriteError(error.errno, f"{what}: {error.strerror or error}")
    return JournalWriteError(None, f"{what}: {error!r}")


class PoolRunner:
    """Runs jobs on the journal's own one-thread pool."""

    def __init__(self, reactor: JournalReactor, pool: ThreadPool) -> None:
        self._reactor = cast(IReactorFromThreads, reactor)
        self._pool = pool

    def __call__(self, job: Callable[[], _T]) -> Deferred[_T]:
        if not self._pool.started:
            # Started at the first job, so that a journal opened by a process
            # whose reactor never runs leaves no thread to keep it alive.
            self._pool.start()
        return deferToThreadPool(self._reactor, self._pool, job)


def timed_fsync(fsync: Callable[[int], None], fd: int) -> float:
    """Run ``fsync(fd)`` (in the pool thread) and return how many seconds it took."""
    # A wall clock is right here: it measures the syscall and decides nothing.
    start = time.perf_counter()
    fsync(fd)
    return time.perf_counter() - start


def create_segment(directory: str, directory_fd: int, name: str, fsync: Callable[[int], None]) -> int:
    """Create (or empty) a segment file and sync the directory; return its fd."""
    fd = os.open(os.path.join(directory, name), CREATE_SEGMENT, 0o644)
    try:
        fsync(directory_fd)
    except BaseException:
        os.close(fd)
        raise
    return fd

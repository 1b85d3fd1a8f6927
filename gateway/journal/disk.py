"""
How the journal writer reaches the disk: the reactor and thread it needs, its error, new segments.

The writer (``gateway.journal.writer``) decides; these are the blocking calls it
runs on its one thread and the error they end in. Segment files are opened
for appending only, and a new one exists for good (its directory synced)
before anything is written to it.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from queue import SimpleQueue
from typing import Any, Protocol, TypeVar, cast

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure

__all__ = [
    "CREATE_SEGMENT",
    "OPEN_SEGMENT",
    "FsyncThread",
    "JournalReactor",
    "JournalWriteError",
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


class FsyncThread:
    """Runs the journal's blocking jobs, one at a time in order, on one thread of its own.

    What a pool offers beyond this, the journal never needs, and it costs on
    every batch: `twisted.python.threadpool` hands a job over through a
    `queue.Queue` (a Python-level lock and condition, notified from the
    reactor thread), and captures and restores the logging context around it.
    Here a job goes through a C `SimpleQueue` and comes back with one
    `callFromThread`, so both threads run as few bytecodes as possible per
    batch; the fewer there are, the less the thread waits for the GIL while
    the reactor is busy, and the sooner a batch is acknowledged.

    The thread starts with the first job, so that a journal opened by a
    process whose reactor never runs leaves no thread behind, and `stop`
    ends it once the jobs already given are done.
    """

    def __init__(self, reactor: JournalReactor, name: str = "cpmi-journal-fsync") -> None:
        self._reactor = cast(IReactorFromThreads, reactor)
        self._name = name
        self._jobs: SimpleQueue[tuple[Callable[[], Any], Deferred[Any]] | None] = SimpleQueue()
        self._thread: threading.Thread | None = None

    @property
    def started(self) -> bool:
        """Whether the thread runs (it starts with the first job)."""
        return self._thread is not None

    def __call__(self, job: Callable[[], _T]) -> Deferred[_T]:
        d: Deferred[_T] = Deferred()
        if self._thread is None:
            self._thread = threading.Thread(target=self._work, name=self._name)
            self._thread.start()
        self._jobs.put((job, d))
        return d

    def stop(self) -> None:
        """End the thread after the jobs it was given (blocks until then); a second stop does nothing."""
        thread, self._thread = self._thread, None
        if thread is not None:
            self._jobs.put(None)
            thread.join()

    def _work(self) -> None:
        get, call = self._jobs.get, self._reactor.callFromThread
        while (item := get()) is not None:
            job, d = item
            try:
                result = job()
            except BaseException:
                call(d.errback, Failure())
            else:
                call(d.callback, result)


def timed_fsync(fsync: Callable[[int], None], fd: int) -> float:
    """Run ``fsync(fd)`` (in the journal's thread) and return how many seconds it took."""
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

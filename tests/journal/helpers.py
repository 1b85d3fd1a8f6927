"""Test doubles for the journal: a hand-cranked fsync thread and a disk that counts and fails."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, globalLogPublisher

from gateway.journal.segments import list_segments
from gateway.journal.writer import Journal


class ManualRunner:
    """Stands in for the fsync thread: jobs wait until the test runs them."""

    def __init__(self) -> None:
        self.jobs: list[tuple[Callable[[], Any], Deferred[Any]]] = []

    def __call__(self, job: Callable[[], Any]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.jobs.append((job, d))
        return d

    def run_next(self, index: int = 0) -> None:
        job, d = self.jobs.pop(index)
        try:
            result = job()
        except BaseException:
            d.errback()
        else:
            d.callback(result)

    def run_all(self) -> None:
        while self.jobs:
            self.run_next()


class Disk:
    """os.write / os.fsync / os.ftruncate that count calls and fail on demand."""

    def __init__(self, *, real_fsync: bool = False) -> None:
        self.real_fsync = real_fsync
        self.writes: list[int] = []  # bytes per os.write call
        self.fsyncs: list[int] = []  # fds
        self.write_fault: OSError | None = None
        self.write_fault_after: int = 0  # bytes written before write_fault is raised
        self.fsync_fault: OSError | None = None
        self.next_fsync_faults: list[OSError] = []  # one-shot faults, raised in turn
        self.next_write_faults: list[OSError] = []
        self.ftruncate_fault: OSError | None = None

    def write(self, fd: int, data: bytes | memoryview) -> int:
        if self.next_write_faults:
            raise self.next_write_faults.pop(0)
        if self.write_fault is not None:
            if self.write_fault_after > 0:
                n = os.write(fd, data[: self.write_fault_after])
                self.write_fault_after -= n
                self.writes.append(n)
                return n
            raise self.write_fault
        n = os.write(fd, data)
        self.writes.append(n)
        return n

    def fsync(self, fd: int) -> None:
        self.fsyncs.append(fd)
        if self.next_fsync_faults:
            raise self.next_fsync_faults.pop(0)
        if self.fsync_fault is not None:
            raise self.fsync_fault
        if self.real_fsync:
            os.fsync(fd)

    def ftruncate(self, fd: int, size: int) -> None:
        if self.ftruncate_fault is not None:
            raise self.ftruncate_fault
        os.ftruncate(fd, size)

    def reset(self) -> None:
        self.writes.clear()
        self.fsyncs.clear()


@contextmanager
def logs_of(namespace: str) -> Iterator[list[LogEvent]]:
    """The events logged in `namespace` while the block runs (the observer goes even if the block fails)."""
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == namespace:
            events.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


class Harness:
    """A journal on a Clock, a ManualRunner and a Disk, in a real directory."""

    def __init__(self, path: Path, **options: Any) -> None:
        self.path = path
        self.clock = Clock()
        self.clock.advance(1_795_000_000.25)  # 2026-11-18T11:06:40.25Z
        self.runner = ManualRunner()
        self.disk = Disk()
        self.options = options
        self.journal = self.open()

    def open(self) -> Journal:
        self.journal = Journal.open(
            self.path,
            reactor=self.clock,
            run_blocking=self.runner,
            os_fsync=self.disk.fsync,
            os_write=self.disk.write,
            os_ftruncate=self.disk.ftruncate,
            **self.options,
        )
        self.disk.reset()
        return self.journal

    def turn(self) -> None:
        """Run what is due now on the clock (one reactor turn's worth)."""
        self.clock.advance(0)

    def settle(self) -> None:
        """Turn and run jobs until nothing is left to do now."""
        while True:
            self.turn()
            if not self.runner.jobs:
                if not any(c.getTime() <= self.clock.seconds() for c in self.clock.getDelayedCalls()):
                    return
                continue
            self.runner.run_all()

    def close(self) -> None:
        d = self.journal.close()
        self.settle()
        assert d.called
        d.addErrback(lambda f: None)

    def reopen(self) -> Journal:
        self.close()
        return self.open()

    def append_many(self, n: int, kind: str = "uplink") -> list[Deferred[Any]]:
        return [
            self.journal.append(kind, "P001", "carIn", f"opr-{i}", {"i": i, "plate": "粤B12345"})
            for i in range(n)
        ]

    def segment_paths(self) -> list[str]:
        return [s.path for s in list_segments(self.path)]

    def data(self) -> bytes:
        return b"".join(Path(p).read_bytes() for p in self.segment_paths())


def results(ds: list[Deferred[Any]]) -> list[Any]:
    """The results the Deferreds have fired with (asserting they all fired)."""
    out: list[Any] = []
    for d in ds:
        assert d.called, "Deferred has not fired"
        d.addBoth(out.append)
    return out

"""
The free-space watermark: refuse journal appends before the disk is full.

A journal that runs its file system out of space fails its appends one batch
at a time, after the write or the fsync failed, and shares that space with
whatever else writes there. :class:`SpaceWatch` refuses appends earlier and
more cheaply: it measures the free space (``statvfs``) every ``interval``
seconds and, below ``journal.min_free_bytes``, its :meth:`SpaceWatch.guard`
(set as ``Journal.guard``) gives a reason, so each append fails at once with
``ENOSPC`` and the lot is answered ``9999`` and retries later.

Once low, the watch stays low until the free space is back above the
watermark by a margin (a tenth of it, at least 1 MiB), so that a disk hovering
at the watermark does not flap between refusing and accepting. The journal
asks the guard on every append, so the guard only reads what the last check
found. A failing ``statvfs`` is logged once and changes nothing: the gateway
does not start refusing messages because it cannot watch the disk.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["FileSystemStats", "SpaceWatch", "format_bytes", "resume_threshold"]

_log = Logger()

_MIB = 2**20


class FileSystemStats(Protocol):
    """What the watch reads of an ``os.statvfs`` result."""

    @property
    def f_bavail(self) -> int: ...

    @property
    def f_frsize(self) -> int: ...


def format_bytes(n: int) -> str:
    """A size for people: ``64 MiB``, ``12.5 MiB``, ``300 KiB``, ``512 bytes``."""
    if n >= _MIB:
        return f"{n / _MIB:.1f}".removesuffix(".0") + " MiB"
    if n >= 1024:
        return f"{n // 1024} KiB"
    return f"{n} bytes"


def resume_threshold(min_free_bytes: int) -> int:
    """The free space a low watch needs to accept appends again: the watermark plus a margin."""
    return min_free_bytes + max(min_free_bytes // 10, _MIB)


class SpaceWatch:
    """
    Watches the free space of the journal's file system; its :meth:`guard` refuses appends when low.

    ``path`` is the journal directory, ``clock`` the reactor's time and
    ``statvfs`` the call that measures (``os.statvfs``; replaced in tests).
    With ``min_free_bytes`` 0 the watch is off: never low, no timer.
    """

    def __init__(
        self,
        *,
        path: str,
        min_free_bytes: int,
        clock: IReactorTime,
        statvfs: Callable[[str], FileSystemStats] = os.statvfs,
        interval: float = 1.0,
    ) -> None:
        if min_free_bytes < 0:
            raise ValueError("min_free_bytes must be 0 (off) or more")
        if interval <= 0:
            raise ValueError("interval must be positive")
        self._path = path
        self._min_free_bytes = min_free_bytes
        self._clock = clock
        self._statvfs = statvfs
        self._interval = interval
        self._loop: LoopingCall | None = None
        self._free_bytes: int | None = None
        self._problem: str | None = None
        self._measure_error: str | None = None

    # -- what the journal and the metrics read

    def guard(self) -> str | None:
        """Why appends are refused now (the disk is nearly full), or None: set as ``Journal.guard``."""
        return self._problem

    @property
    def problem(self) -> str | None:
        """Why appends are refused now, or None; the same as :meth:`guard`."""
        return self._problem

    @property
    def low(self) -> bool:
        """Whether the free space is below the watermark (and not yet back above its margin)."""
        return self._problem is not None

    @property
    def free_bytes(self) -> int | None:
        """The free space the last successful check found (for unprivileged users), or None."""
        return self._free_bytes

    @property
    def measure_error(self) -> str | None:
        """Why the last check could not measure the free space, or None when it could."""
        return self._measure_error

    # -- checking

    def start(self) -> None:
        """Check now, then every ``interval`` seconds (nothing when the watch is off)."""
        if self._min_free_bytes == 0 or self._loop is not None:
            return
        loop = LoopingCall(self.check)
        loop.clock = self._clock
        self._loop = loop
        loop.start(self._interval, now=True).addErrback(self._stopped_by_bug)

    def stop(self) -> None:
        """Stop checking; the last state stays."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def check(self) -> None:
        """Measure the free space now and update the state, logging when it changes."""
        if self._min_free_bytes == 0:
            return
        try:
            stats = self._statvfs(self._path)
            free = stats.f_bavail * stats.f_frsize
        except OSError as error:
            message = str(error.strerror or error)
            if self._measure_error is None:
                _log.error(
                    "journal: cannot measure the free space of {path} ({error}); until it can, "
                    "appends stay {state}",
                    path=self._path,
                    error=message,
                    state="refused" if self._problem is not None else "accepted",
                )
            self._measure_error = message
            return
        if self._measure_error is not None:
            self._measure_error = None
            _log.info("journal: measuring the free space of {path} again", path=self._path)
        self._free_bytes = free
        watermark = self._min_free_bytes
        if self._problem is None:
            if free < watermark:
                self._problem = self._reason(free)
                _log.critical(
                    "journal: {problem}; appends are refused (lots are answered 9999 and retry) "
                    "until it is back to {resume}",
                    problem=self._problem,
                    resume=format_bytes(resume_threshold(watermark)),
                )
        elif free >= resume_threshold(watermark):
            self._problem = None
            _log.info(
                "journal: free space on the journal's file system is back to {free} "
                "(journal.min_free_bytes {watermark}); appends resume",
                free=format_bytes(free),
                watermark=format_bytes(watermark),
            )
        else:
            self._problem = self._reason(free)  # with the numbers of this check

    def _reason(self, free: int) -> str:
        watermark = self._min_free_bytes
        reason = (
            f"free space on the journal's file system is {format_bytes(free)}, "
            f"below journal.min_free_bytes ({format_bytes(watermark)})"
        )
        if free >= watermark:  # low, and not yet back above the margin
            margin = resume_threshold(watermark) - watermark
            reason += f" plus the {format_bytes(margin)} it must regain after running low"
        return reason

    def _stopped_by_bug(self, failure: Failure) -> None:
        self._loop = None
        _log.failure("journal: the free-space watch stopped", failure)

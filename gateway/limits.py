"""The process's file-descriptor limit: raised to the hard limit at start, so lots are not refused early.

Every bound lot holds a TCP connection, and each connection is a file
descriptor. Many systems start services with a soft limit of 1024, which
would cap a gateway at about a thousand lots while the hard limit allows far
more; the soft limit is the process's own to raise up to the hard one.
"""

from __future__ import annotations

import resource
from typing import Protocol

from attrs import frozen

__all__ = ["RESERVED", "FdLimit", "raise_fd_limit"]

RESERVED = 64
"""Descriptors kept for what is not a lot: listeners, journal segments, the cloud, threads."""

# Linux refuses a soft limit above fs.nr_open even when the hard limit is unlimited.
_UNLIMITED_CAP = 1_048_576


class Limits(Protocol):
    """The part of the `resource` module used here (a test passes its own)."""

    RLIMIT_NOFILE: int
    RLIM_INFINITY: int

    def getrlimit(self, which: int, /) -> tuple[int, int]: ...

    def setrlimit(self, which: int, limits: tuple[int, int], /) -> None: ...


@frozen
class FdLimit:
    """The soft limit before and after, the hard limit, and why it could not be raised ("" if it was)."""

    before: int
    after: int
    hard: int
    problem: str = ""

    @property
    def lots(self) -> int:
        """About how many lots can hold a connection at once."""
        return max(0, self.after - RESERVED)


def raise_fd_limit(limits: Limits = resource) -> FdLimit:
    """Raise the soft RLIMIT_NOFILE to the hard limit (capped when unlimited); report what it is."""
    soft, hard = limits.getrlimit(limits.RLIMIT_NOFILE)
    target = _UNLIMITED_CAP if hard == limits.RLIM_INFINITY else hard
    if soft == limits.RLIM_INFINITY or soft >= target:
        return FdLimit(soft, soft, hard)
    try:
        limits.setrlimit(limits.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError) as error:
        return FdLimit(soft, soft, hard, str(error))
    return FdLimit(soft, target, hard)

"""The file-descriptor limit is raised to the hard limit at start, and what it allows is told."""

from __future__ import annotations

import resource

from attrs import define

from gateway.limits import RESERVED, raise_fd_limit

INFINITY = resource.RLIM_INFINITY


@define
class FakeLimits:
    """The resource module's NOFILE limits, in memory; `refuse` makes setrlimit fail as Linux can."""

    soft: int
    hard: int
    refuse: bool = False
    RLIMIT_NOFILE: int = resource.RLIMIT_NOFILE
    RLIM_INFINITY: int = INFINITY

    def getrlimit(self, which: int, /) -> tuple[int, int]:
        assert which == self.RLIMIT_NOFILE
        return self.soft, self.hard

    def setrlimit(self, which: int, limits: tuple[int, int], /) -> None:
        assert which == self.RLIMIT_NOFILE
        if self.refuse:
            raise ValueError("not allowed to raise maximum limit")
        self.soft, self.hard = limits


def test_the_soft_limit_is_raised_to_the_hard_one() -> None:
    """A soft limit of 1024 under a hard one of 524288 becomes 524288, with room for that less the reserve."""
    limits = FakeLimits(1024, 524288)
    limit = raise_fd_limit(limits)
    assert (limits.soft, limits.hard) == (524288, 524288)
    assert (limit.before, limit.after, limit.problem) == (1024, 524288, "")
    assert limit.lots == 524288 - RESERVED


def test_an_unlimited_hard_limit_is_capped() -> None:
    """An unlimited hard limit raises the soft one to 1048576, which Linux accepts, not to infinity."""
    limits = FakeLimits(1024, INFINITY)
    assert raise_fd_limit(limits).after == 1048576
    assert limits.soft == 1048576 and limits.hard == INFINITY


def test_a_soft_limit_already_at_the_hard_one_is_left() -> None:
    """Nothing is set when the soft limit is the hard one already."""
    limits = FakeLimits(4096, 4096, refuse=True)
    limit = raise_fd_limit(limits)
    assert (limit.before, limit.after, limit.problem) == (4096, 4096, "")


def test_a_refusal_is_reported_not_raised() -> None:
    """When the system refuses, the limit stays and the reason is kept for the log."""
    limit = raise_fd_limit(FakeLimits(1024, 65536, refuse=True))
    assert (limit.after, limit.lots) == (1024, 1024 - RESERVED)
    assert "not allowed" in limit.problem


def test_the_real_limit_can_be_raised_in_this_process() -> None:
    """On this machine the call succeeds and leaves the soft limit at the hard one (or the cap)."""
    limit = raise_fd_limit()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert limit.problem == "" and soft == limit.after
    assert soft == hard or (hard == INFINITY and soft == 1048576)

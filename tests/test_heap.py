"""gateway.heap: long-lived objects frozen out of full collections, after start-up and bind waves."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from gateway.heap import FREEZE_EVERY, SETTLE_AFTER, BindSettler, settle_heap


@pytest.fixture(autouse=True)
def unfrozen() -> Iterator[None]:
    """Each test leaves the test process's collector as it found it."""
    yield
    gc.unfreeze()


def test_settle_heap_freezes_what_lives_and_collects_what_does_not() -> None:
    """Live objects end frozen; a cycle already frozen is unfrozen and collected."""

    class Node:
        other: object

    cycle = Node()
    cycle.other = cycle
    gc.freeze()
    del cycle
    assert gc.get_freeze_count() > 0
    frozen = settle_heap()
    assert frozen == gc.get_freeze_count() > 0
    assert not any(type(o) is Node for o in gc.get_objects())
    gc.unfreeze()
    assert not any(type(o) is Node for o in gc.get_objects())  # it was collected, not kept frozen


def test_a_wave_of_binds_settles_once_when_quiet() -> None:
    """Binds keep pushing the settling back; it happens once, SETTLE_AFTER after the last."""
    clock = Clock()
    settler = BindSettler(clock)
    for _ in range(5):
        settler.bound("P001")
        clock.advance(SETTLE_AFTER / 2)
    assert settler.settled == 0 and gc.get_freeze_count() == 0
    clock.advance(SETTLE_AFTER / 2)
    assert settler.settled == 1 and gc.get_freeze_count() > 0
    clock.advance(SETTLE_AFTER * 10)
    assert settler.settled == 1
    settler.bound("P002")
    clock.advance(SETTLE_AFTER)
    assert settler.settled == 2


def test_stopping_cancels_a_pending_settling() -> None:
    """A gateway stopping leaves no settling timer behind."""
    clock = Clock()
    settler = BindSettler(clock)
    settler.bound("P001")
    settler.stop()
    assert clock.getDelayedCalls() == []
    clock.advance(SETTLE_AFTER)
    assert settler.settled == 0


def test_a_long_wave_freezes_what_bound_so_far_every_so_many_binds_and_settles_at_its_end() -> None:
    """Every `every` binds of one wave, what lives is frozen (no collection); the count starts again
    after the settling, which still collects and freezes once."""
    clock = Clock()
    freezes: list[int] = []
    settler = BindSettler(clock, every=3, freeze=lambda: freezes.append(len(freezes)))
    for _ in range(7):
        settler.bound("P001")
        clock.advance(0.01)
    assert len(freezes) == 2 and settler.frozen_in_waves == 2
    clock.advance(SETTLE_AFTER)
    assert settler.settled == 1
    settler.bound("P002")
    settler.bound("P003")
    assert len(freezes) == 2  # the 7th bind's count was dropped at the settling
    settler.bound("P004")
    assert len(freezes) == 3


def test_the_wave_freeze_is_gc_freeze_by_default() -> None:
    """With the defaults, the FREEZE_EVERY-th bind of a wave freezes the process's live objects."""
    clock = Clock()
    settler = BindSettler(clock)
    for _ in range(FREEZE_EVERY - 1):
        settler.bound("P001")
    assert gc.get_freeze_count() == 0
    settler.bound("P001")
    assert gc.get_freeze_count() > 0 and settler.settled == 0
    settler.stop()

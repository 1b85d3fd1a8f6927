"""gateway.heap: long-lived objects frozen out of full collections, after start-up and bind waves."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from twisted.internet.task import Clock

from gateway.heap import SETTLE_AFTER, BindSettler, settle_heap


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

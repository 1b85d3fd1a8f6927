"""Repeated oprNums (B.2.3.6): first answer again, nothing stored twice, 9007 past five."""

from __future__ import annotations

import gc

from twisted.internet.task import Clock

from gateway.lots.answers import OK, Answer
from gateway.lots.repeats import Repeats
from gateway.protocol.results import Result


def result_of(repeats: Repeats, park: str, opr: str) -> Answer | None:
    waiting = repeats.seen(park, opr)
    if waiting is None:
        return None
    answers: list[Answer] = []
    waiting.addCallback(answers.append)
    return answers[0] if answers else None


def test_a_new_opr_num_is_processed() -> None:
    """An oprNum never seen is not a repeat."""
    assert Repeats(Clock()).seen("P1", "o1") is None


def test_a_repeat_gets_the_stored_answer() -> None:
    """A repeat of a stored request is answered with the first answer."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", OK, stored=True)
    assert result_of(repeats, "P1", "o1") is OK


def test_the_same_opr_num_of_another_lot_is_not_a_repeat() -> None:
    """Repeats are per lot."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", OK, stored=True)
    assert repeats.seen("P2", "o1") is None


def test_a_repeat_during_processing_waits_for_the_first_answer() -> None:
    """A repeat that arrives before the first is stored gets its answer when it is."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    waiting = repeats.seen("P1", "o1")
    assert waiting is not None
    answers: list[Answer] = []
    waiting.addCallback(answers.append)
    assert answers == []
    repeats.finish("P1", "o1", OK, stored=True)
    assert answers == [OK]


def test_a_rejected_request_is_processed_again() -> None:
    """A request answered without being stored is processed again when repeated."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", Answer.of(Result.FIELD_INVALID, "x"), stored=False)
    assert repeats.seen("P1", "o1") is None


def test_more_than_five_repeats_within_an_hour_is_9007() -> None:
    """The sixth repeat of an oprNum within the hour is answered 9007, stored or not."""
    for stored in (True, False):
        repeats = Repeats(Clock())
        repeats.begin("P1", "o1")
        repeats.finish("P1", "o1", OK, stored=stored)
        for _ in range(5):
            answer = result_of(repeats, "P1", "o1")
            assert answer is (OK if stored else None)
            if not stored:
                repeats.begin("P1", "o1")
                repeats.finish("P1", "o1", Answer.of(Result.FIELD_INVALID, "x"), stored=False)
        answer = result_of(repeats, "P1", "o1")
        assert answer is not None and answer.result is Result.TOO_MANY_REPEATS


def test_an_hour_later_the_opr_num_is_new_again() -> None:
    """After the window, the oprNum and its count are forgotten."""
    clock = Clock()
    repeats = Repeats(clock)
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", OK, stored=True)
    clock.advance(3600)
    assert repeats.seen("P1", "o1") is None
    assert len(repeats) == 0


def test_restored_answers_count_only_within_the_window() -> None:
    """Answers found in the journal are kept only when less than an hour old."""
    clock = Clock()
    clock.advance(10_000)
    repeats = Repeats(clock)
    repeats.restore("P1", "old", 10_000 - 3600, OK)
    repeats.restore("P1", "new", 10_000 - 3599, OK)
    assert repeats.seen("P1", "old") is None
    assert result_of(repeats, "P1", "new") is OK


def test_a_request_outliving_the_window_still_answers_its_repeats() -> None:
    """A repeat waiting on a first request that is pruned meanwhile still gets its answer."""
    clock = Clock()
    repeats = Repeats(clock, window=10.0)
    repeats.begin("P1", "o1")
    waiting = repeats.seen("P1", "o1")
    assert waiting is not None
    clock.advance(11)
    repeats.seen("P1", "other")  # prunes o1
    answers: list[Answer] = []
    waiting.addCallback(answers.append)
    repeats.finish("P1", "o1", OK, stored=True)
    assert answers == [OK]
    assert len(repeats) == 0 and repeats.seen("P1", "o1") is None


def test_entries_are_not_objects_for_the_garbage_collector() -> None:
    """Ten thousand remembered uplinks add no objects for the collector's full passes to walk."""
    repeats = Repeats(Clock())
    gc.collect()
    before = len(gc.get_objects())
    for n in range(10_000):
        opr = f"o{n}"
        repeats.begin("P1", opr)
        repeats.finish("P1", opr, OK, stored=True)
    gc.collect()
    assert len(repeats) == 10_000
    assert len(gc.get_objects()) - before < 100

"""Repeated oprNums (B.2.3.6): first answer again, nothing stored twice, 9007 past five."""

from __future__ import annotations

import gc

import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from gateway.lots.answers import OK, Answer
from gateway.lots.repeats import FAULT, Repeats
from gateway.protocol.results import Result
from tests.test_logs import captured


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
    """The sixth repeat of a stored oprNum within the hour is answered 9007."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", OK, stored=True)
    for _ in range(5):
        assert result_of(repeats, "P1", "o1") is OK
    answer = result_of(repeats, "P1", "o1")
    assert answer is not None and answer.result is Result.TOO_MANY_REPEATS


@pytest.mark.parametrize("result", [Result.FAILED, Result.FIELD_INVALID])
def test_attempts_not_stored_never_count_towards_9007(result: Result) -> None:
    """Six attempts answered without being stored (9999 for a full disk, or a refusal) leave the
    oprNum free: the seventh is processed and, once stored, is the one repeats are answered from."""
    repeats = Repeats(Clock())
    for _ in range(6):
        assert repeats.seen("P1", "o1") is None
        repeats.begin("P1", "o1")
        repeats.finish("P1", "o1", Answer.of(result, "disk low"), stored=False)
    assert repeats.seen("P1", "o1") is None
    repeats.begin("P1", "o1")
    repeats.finish("P1", "o1", OK, stored=True)
    assert result_of(repeats, "P1", "o1") is OK


def test_repeats_waiting_on_a_failed_attempt_get_its_answer_and_do_not_count() -> None:
    """Repeats that waited on an attempt answered 9999 get that answer; the oprNum is then free again."""
    repeats = Repeats(Clock())
    repeats.begin("P1", "o1")
    waiting = [repeats.seen("P1", "o1") for _ in range(5)]
    failed = Answer.of(Result.FAILED, "journal")
    repeats.finish("P1", "o1", failed, stored=False)
    answers: list[Answer] = []
    for waiter in waiting:
        assert waiter is not None
        waiter.addCallback(answers.append)
    assert answers == [failed] * 5
    assert repeats.seen("P1", "o1") is None and len(repeats) == 0


def test_an_attempt_that_raises_is_answered_9999_and_frees_its_opr_num() -> None:
    """A fault while handling (an exception, or a failed Deferred) answers FAULT to the attempt and to
    the repeats waiting on it, and the next attempt is processed, not left waiting forever."""
    repeats = Repeats(Clock())

    def broken() -> Deferred[tuple[Answer, bool]]:
        raise RecursionError("nested too deeply for the redaction")

    held: Deferred[tuple[Answer, bool]] = Deferred()
    with captured() as events:
        first = repeats.attempt("P1", "o1", lambda: held)
        waiting = repeats.seen("P1", "o1")
        held.errback(ValueError("the record encoder refused it"))
        raised = repeats.attempt("P1", "o2", broken)
    assert first.result is FAULT and waiting is not None and waiting.result is FAULT
    assert raised.result is FAULT and FAULT.result is Result.FAILED
    assert len([e for e in events if e.get("log_failure") is not None]) == 2
    assert repeats.seen("P1", "o1") is None and repeats.seen("P1", "o2") is None
    later = repeats.attempt("P1", "o1", lambda: succeed((OK, True)))
    assert later.result is OK and result_of(repeats, "P1", "o1") is OK


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

"""Several engines over one journal: each reads back only its own progress records."""

from __future__ import annotations

from gateway.forwarding import Progress
from gateway.journal.kinds import FORWARDED_RECORD, REJECTED_RECORD
from gateway.journal.record import Record


def _record(seq: int, kind: str, body: dict[str, object]) -> Record:
    return Record(
        seq=seq, ts="2026-12-05T12:00:00Z", kind=kind, park="", code="", opr="", body=body, chain=""
    )


RECORDS = [
    _record(10, FORWARDED_RECORD, {"first": 1, "last": 8, "events": 8, "status": 200, "through": 9}),
    _record(
        11,
        FORWARDED_RECORD,
        {"first": 1, "last": 10, "events": 9, "status": 200, "through": 10, "sink": "nats"},
    ),
    _record(
        12,
        REJECTED_RECORD,
        {"seq": 11, "id": "gw-11", "type": "t", "status": 400, "through": 11, "sink": "nats"},
    ),
]


def test_the_main_sinks_progress_ignores_records_naming_another_sink() -> None:
    """The main sink's Progress (no name) reads the records without `sink`, as journals always had them."""
    progress = Progress()
    for record in RECORDS:
        progress.restore(record)
    assert progress.through == 9


def test_a_named_engines_progress_reads_only_its_own_records() -> None:
    """An engine named "nats" resumes after its own highest `through`, not the main sink's."""
    progress = Progress("nats")
    for record in RECORDS:
        progress.restore(record)
    assert progress.through == 11
    assert Progress("other").through == 0

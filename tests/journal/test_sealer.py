"""The sealer: seal records by time and by count, none on a quiet journal, one at stop; seals verify."""

from __future__ import annotations

from nacl.signing import SigningKey

from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.reader import read_records
from gateway.journal.sealer import Sealer
from gateway.journal.seals import check_seal, seal_body, seal_message
from tests.journal.helpers import Harness

KEY = SigningKey(bytes(range(32)))


def sealer(h: Harness, interval: float = 60.0, records: int = 1000) -> Sealer:
    s = Sealer(
        journal=h.journal, key=KEY, gateway_id="gw-01", clock=h.clock, interval=interval, records=records
    )
    s.start()
    return s


def seals(h: Harness) -> list[tuple[int, dict[str, object]]]:
    return [(r.seq, r.body) for r in read_records(h.path) if r.kind == SEAL_RECORD]  # type: ignore[misc]


def test_a_seal_signs_the_record_before_it(h: Harness) -> None:
    """Each seal names the seq and chain of the record just before it and verifies with the public key."""
    s = sealer(h, interval=10)
    h.append_many(3)
    h.settle()
    h.clock.advance(10)
    h.settle()
    records = list(read_records(h.path))
    [(seq, body)] = seals(h)
    before = records[seq - 2]
    assert (body["seq"], body["chain"]) == (before.seq, before.chain)
    assert check_seal(body, KEY.verify_key) is None
    assert check_seal(body, SigningKey.generate().verify_key) is not None
    assert check_seal({**body, "seq": 2}, KEY.verify_key) is not None
    s.stop()


def test_quiet_journal_gets_no_seals_and_count_triggers_early(h: Harness) -> None:
    """No seal when nothing was appended; after `records` records a seal comes before the timer."""
    s = sealer(h, interval=10, records=5)
    h.clock.advance(30)
    h.settle()
    assert seals(h) == []
    h.append_many(5)
    h.settle()
    h.settle()
    assert [body["seq"] for _, body in seals(h)] == [5]
    h.clock.advance(10)  # only the seal since: nothing new to seal
    h.settle()
    assert len(seals(h)) == 1
    s.stop()


def test_stop_seals_the_end(h: Harness) -> None:
    """Stopping seals what came since the last seal, so a cleanly closed journal ends sealed."""
    s = sealer(h)
    h.append_many(2)
    h.settle()
    d = s.stop()
    h.settle()
    assert d is not None and d.called
    records = list(read_records(h.path))
    assert records[-1].kind == SEAL_RECORD and records[-1].body["seq"] == 2
    assert h.clock.getDelayedCalls() == []


def test_seal_message_binds_gateway_seq_and_chain() -> None:
    """The signed bytes differ for another gateway, seq or chain; a malformed body is refused."""
    base = seal_message("gw-01", 5, "a" * 32)
    assert base != seal_message("gw-02", 5, "a" * 32) != seal_message("gw-01", 6, "a" * 32)
    body = seal_body(KEY, "gw-01", 5, "a" * 32)
    assert check_seal({**body, "gateway": "gw-02"}, KEY.verify_key) is not None
    assert check_seal(["x"], KEY.verify_key) == "seal body is not an object"
    assert check_seal({**body, "signature": "%%%"}, KEY.verify_key) is not None

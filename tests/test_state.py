"""Start-up state: checkpoints, and restoring from the last one instead of reading the whole journal."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.defer import fail
from twisted.internet.task import Clock

from gateway.cloud.progress import Progress
from gateway.journal.kinds import CHECKPOINT_RECORD
from gateway.journal.reader import read_records
from gateway.journal.record import Record, encode_line, format_ts
from gateway.journal.scan import find_last, first_seq_since, scan_headers
from gateway.journal.segments import list_segments
from gateway.journal.writer import JournalWriteError
from gateway.lots.parks import ParkTotals
from gateway.lots.repeats import Repeats
from gateway.lots.sessions import Sessions
from gateway.state import Checkpointer, StartState, rebuild, restore_at_start
from tests.journal.helpers import Harness
from tests.lots.harness import ZONE

NOW = 1_795_000_000.25  # the journal harness's clock: 2026-11-18T11:06:40.25Z


class SyncLog:
    """Stands in for the sync queue: what it was asked to restore."""

    def __init__(self) -> None:
        self.records: list[Record] = []

    def restore(self, record: Any) -> None:
        self.records.append(record)


class Parts:
    """The parts start-up fills, on a clock at the harness's time."""

    def __init__(self, now: float = NOW, window: float = 3600.0) -> None:
        self.clock = Clock()
        self.clock.advance(now)
        self.window = window
        self.sessions = Sessions(self.clock, ZONE)
        self.repeats = Repeats(self.clock, window=window)
        self.totals = ParkTotals()
        self.sync = SyncLog()
        self.progress = Progress()

    def restore(self, h: Harness) -> Any:
        return restore_at_start(
            h.journal,
            now=self.clock.seconds(),
            sessions=self.sessions,
            repeats=self.repeats,
            totals=self.totals,
            sync=self.sync,
            progress=self.progress,
            repeat_window=self.window,
        )

    def rebuild(self, h: Harness) -> int:
        return rebuild(h.journal.replay(), self.sessions, self.repeats, self.totals, self.sync, self.progress)


def token_body(
    user: str, park: str, digest: str, expires: str = "2026-11-30T16:00:00+00:00"
) -> dict[str, str]:
    return {"user": user, "park": park, "token_sha256": digest, "expires": expires}


def test_state_follows_records_and_round_trips_through_a_checkpoint_body() -> None:
    """observe keeps the newest token per account, totals, undone sync entries, forwarding, quarantines."""
    state = StartState()
    records = [
        Record(1, "t", "token", "P1", "login", "o1", token_body("u1", "P1", "a" * 64), ""),
        Record(2, "t", "token", "P1", "login", "o2", token_body("u1", "P1", "b" * 64), ""),
        Record(3, "t", "uplink", "P1", "parkEnv", "o3", {"totalNum": 120}, ""),
        Record(4, "t", "sync", "P1", "blacklist", "o4", {"data": {"carNum": "京A1"}}, ""),
        Record(5, "t", "sync", "P1", "blacklist", "o5", {"data": {"carNum": "京A2"}}, ""),
        Record(6, "t", "sync-done", "P1", "blacklist", "o4", {"seq": 4, "outcome": "delivered"}, ""),
        Record(7, "t", "forwarded", "", "", "", {"through": 6}, ""),
        Record(8, "t", "rejected", "", "", "", {"through": 3}, ""),
        Record(9, "t", "quarantine", "", "", "", {"segment": "s", "offset": 5, "seq": 2}, ""),
        Record(10, "t", "uplink", "P1", "carIn", "o10", {"carNum": "京A3"}, ""),
    ]
    for record in records:
        state.observe(record)
    assert state.through == 10
    assert state.tokens == {"u1": token_body("u1", "P1", "b" * 64)}
    assert state.totals == {"P1": 120}
    assert list(state.sync) == [5]
    assert state.forwarded == 6
    assert state.quarantined == [{"segment": "s", "offset": 5, "seq": 2}]
    body = json.loads(json.dumps(state.body(NOW)))
    again = StartState.from_body(body)
    assert again.body(NOW) == state.body(NOW)


def test_expired_tokens_are_left_out_of_a_checkpoint() -> None:
    """A token whose month is over is not carried into the next checkpoint."""
    state = StartState()
    state.observe(
        Record(1, "t", "token", "P1", "", "", token_body("u1", "P1", "a" * 64, format_ts(NOW - 1)), "")
    )
    state.observe(
        Record(2, "t", "token", "P2", "", "", token_body("u2", "P2", "b" * 64, format_ts(NOW + 1)), "")
    )
    assert [t["user"] for t in state.body(NOW)["tokens"]] == ["u2"]


def test_a_malformed_checkpoint_body_is_refused_with_a_reason() -> None:
    """from_body names what is wrong instead of building a half state."""
    good = StartState().body(NOW)
    for bad, reason in [
        ({**good, "version": 99}, "version"),
        ({**good, "through": "12"}, "through"),
        ({**good, "tokens": [{"park": "P1"}]}, "user"),
        ({k: v for k, v in good.items() if k != "sync"}, "malformed"),
        ([], "version"),
    ]:
        try:
            StartState.from_body(bad)
        except ValueError as e:
            assert reason in str(e)
        else:
            raise AssertionError(f"accepted {bad!r}")


def fill(h: Harness, n: int, start: int = 0, park: str = "P001") -> None:
    for i in range(start, start + n):
        h.journal.append("uplink", park, "carIn", f"opr-{i}", {"i": i, "image": "x" * 50})
    h.settle()


def test_start_up_reads_only_what_follows_the_last_checkpoint(harness: Any) -> None:
    """With a checkpoint, records before it (and older than the repeat window) are not read at all."""
    h = harness(segment_bytes=4096)
    h.journal.append("token", "P001", "login", "o", token_body("lot001", "P001", "c" * 64))
    fill(h, 200)
    state = StartState()
    for record in h.journal.replay():
        state.observe(record)
    h.clock.advance(7200)  # what came before is out of the repeat window
    h.journal.append(CHECKPOINT_RECORD, "", "", "", state.body(h.clock.seconds()))
    fill(h, 5, start=200)
    h.close()
    # Damage before the checkpoint would be found (and set aside) by a whole read.
    first = list_segments(h.path)[1].path
    data = bytearray(Path(first).read_bytes())
    data[10] ^= 0xFF
    Path(first).write_bytes(bytes(data))
    h.open()
    parts = Parts(h.clock.seconds())
    restored = parts.restore(h)
    assert restored.checkpoint == 202
    assert restored.from_seq > list_segments(h.path)[1].first_seq
    assert restored.records < 20  # the checkpoint, the five after it, and the start of their segment
    assert h.journal.quarantined == []
    assert len(parts.sessions) == 1
    assert parts.repeats.seen("P001", "opr-204") is not None
    assert parts.repeats.seen("P001", "opr-10") is None  # two hours old


def test_the_repeat_window_is_read_even_before_the_checkpoint(harness: Any) -> None:
    """Requests stored within the last hour stay repeats after a restart, checkpoint or not."""
    h = harness(segment_bytes=4096)
    fill(h, 50)
    h.clock.advance(3000)
    fill(h, 50, start=50)
    state = StartState()
    for record in h.journal.replay():
        state.observe(record)
    h.journal.append(CHECKPOINT_RECORD, "", "", "", state.body(h.clock.seconds()))
    h.settle()
    h.clock.advance(1000)  # the first 50 are now 4000 s old, the next 50 only 1000 s
    h.reopen()
    parts = Parts(h.clock.seconds())
    restored = parts.restore(h)
    assert restored.checkpoint == 101
    assert restored.from_seq <= 51
    assert parts.repeats.seen("P001", "opr-49") is None
    assert all(parts.repeats.seen("P001", f"opr-{i}") is not None for i in range(50, 100))


def test_an_unusable_checkpoint_means_reading_the_whole_journal(harness: Any) -> None:
    """A checkpoint of another version is passed over; the state still comes out right."""
    h = harness()
    h.journal.append("token", "P001", "login", "o", token_body("lot001", "P001", "c" * 64))
    h.journal.append(CHECKPOINT_RECORD, "", "", "", {"version": 0})
    fill(h, 3)
    h.reopen()
    parts = Parts()
    restored = parts.restore(h)
    assert restored.checkpoint is None and restored.from_seq == 1 and restored.records == 5
    assert len(parts.sessions) == 1


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("login"), st.sampled_from(["u1", "u2", "u3"])),
        st.tuples(st.just("parkEnv"), st.integers(0, 500)),
        st.tuples(st.just("sync"), st.sampled_from(["P1", "P2"])),
        st.tuples(st.just("done"), st.integers(0, 30)),
        st.tuples(st.just("forwarded"), st.integers(0, 60)),
        st.tuples(st.just("uplink"), st.integers(0, 20)),
        st.tuples(st.just("answer"), st.integers(0, 20)),
        st.tuples(st.just("later"), st.integers(0, 400)),
        st.tuples(st.just("settle"), st.just(0)),
        st.tuples(st.just("turn"), st.just(0)),  # a batch written, its fsync not yet done
        st.tuples(st.just("fsync"), st.just(0)),  # the fsync done: the batch commits
        st.tuples(st.just("restart"), st.just(0)),
    ),
    max_size=60,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=OPS,
    every=st.integers(1, 7),
    segment_bytes=st.sampled_from([2048, 1 << 20]),
    window=st.sampled_from([1.0, 100.0, 3600.0]),
)
def test_restoring_from_checkpoints_equals_reading_the_whole_journal(
    ops: list[tuple[str, int | str]], every: int, segment_bytes: int, window: float
) -> None:
    """Whatever was journaled, and wherever checkpoints fell, start-up rebuilds what a whole read does."""
    with tempfile.TemporaryDirectory() as tmp:
        h = Harness(Path(tmp) / "journal", segment_bytes=segment_bytes)
        checkpointer = Checkpointer(journal=h.journal, state=StartState(), clock=h.clock, records=every)
        checkpointer.start()
        syncs: list[int] = []
        for op, arg in ops:
            journal = h.journal
            if op == "login":
                journal.append("token", "P1", "login", "o", token_body(str(arg), "P1", f"{arg}-{len(syncs)}"))
            elif op == "parkEnv":
                journal.append("uplink", "P1", "parkEnv", f"env-{arg}", {"totalNum": arg})
            elif op == "sync":
                syncs.append(journal.last_seq + 1)
                journal.append("sync", str(arg), "blacklist", f"s{len(syncs)}", {"data": {"carNum": "京A1"}})
            elif op == "done" and syncs:
                seq = syncs[int(arg) % len(syncs)]
                journal.append("sync-done", "P1", "blacklist", "", {"seq": seq, "outcome": "delivered"})
            elif op == "forwarded":
                journal.append("forwarded", "", "", "", {"through": arg})
            elif op == "uplink":
                journal.append("uplink", "P2", "carIn", f"opr-{arg}", {"n": arg})
            elif op == "answer":
                body = {"resultCode": "0000", "resultMessage": "ok", "data": {"fee": arg}}
                journal.append("answer", "P2", "autoPay", f"opr-{arg}", body)
            elif op == "later":
                h.clock.advance(int(arg))
            elif op == "settle":
                h.settle()
            elif op == "turn":
                h.turn()
            elif op == "fsync" and h.runner.jobs:
                h.runner.run_next()
            elif op == "restart":
                d = checkpointer.stop()
                h.reopen()
                fast = Parts(h.clock.seconds())
                restored = fast.restore(h)
                checkpointer = Checkpointer(
                    journal=h.journal, state=restored.state, clock=h.clock, records=every
                )
                checkpointer.start()
                if d is not None:
                    assert d.called
        checkpointer.stop()
        h.reopen()
        fast, whole = Parts(h.clock.seconds(), window), Parts(h.clock.seconds(), window)
        restored = fast.restore(h)
        whole.rebuild(h)
        reference = StartState()
        for record in read_records(h.path):
            reference.observe(record)
        assert restored.state.body(NOW) | {"through": 0} == reference.body(NOW) | {"through": 0}
        assert len(fast.sessions) == len(whole.sessions)
        assert [(r.seq, r.park, r.body) for r in fast.sync.records] == [
            (r.seq, r.park, r.body) for r in whole.sync.records
        ]
        assert fast.progress.through == whole.progress.through
        for park in ("P1", "P2"):
            assert fast.totals.total(park) == whole.totals.total(park)
        for n in range(21):
            a, b = fast.repeats.seen("P2", f"opr-{n}"), whole.repeats.seen("P2", f"opr-{n}")
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.result == b.result  # type: ignore[attr-defined]
        h.close()


def test_a_record_appended_while_a_checkpoint_was_being_made_is_not_lost(h: Harness) -> None:
    """A token journaled between a batch's commit and the checkpoint it triggers is restored."""
    checkpointer = Checkpointer(journal=h.journal, state=StartState(), clock=h.clock, records=2)
    checkpointer.start()
    h.journal.append("uplink", "P001", "carIn", "o1", {})
    h.journal.append("uplink", "P001", "carIn", "o2", {})
    h.turn()  # written; its fsync has not returned yet
    h.journal.append("token", "P001", "login", "o3", token_body("lot001", "P001", "d" * 64))
    h.runner.run_next()  # the first batch commits: the checkpoint is appended after the token
    h.settle()
    checkpoint = find_last(h.path, CHECKPOINT_RECORD)
    assert checkpoint is not None and checkpoint.seq == 4
    assert checkpoint.body["through"] == 2  # type: ignore[index]
    h.clock.advance(7200)  # no stop: as after kill -9
    h.reopen()
    parts = Parts(h.clock.seconds())
    restored = parts.restore(h)
    assert restored.checkpoint == 4
    assert len(parts.sessions) == 1


def test_checkpointer_checkpoints_every_n_records_and_at_stop(h: Harness) -> None:
    """A checkpoint follows each `records` committed records, and one more at stop if anything happened."""
    checkpointer = Checkpointer(journal=h.journal, state=StartState(), clock=h.clock, records=10)
    checkpointer.start()
    for batch in range(5):
        fill(h, 5, start=5 * batch)
    kinds = [r.kind for r in h.journal.replay()]
    assert [i + 1 for i, kind in enumerate(kinds) if kind == CHECKPOINT_RECORD] == [11, 22]
    last = find_last(h.path, CHECKPOINT_RECORD)
    assert last is not None and last.body["through"] == 21  # type: ignore[index]
    assert checkpointer.floor == 22
    d = checkpointer.stop()
    assert d is not None
    h.settle()
    assert d.called
    last = find_last(h.path, CHECKPOINT_RECORD)
    assert last is not None and last.body["through"] == 27  # type: ignore[index]
    assert checkpointer.floor == 28
    again = Checkpointer(journal=h.journal, state=StartState.from_body(last.body), clock=h.clock, records=10)
    again.start()
    assert again.stop() is None  # nothing happened since


def test_a_checkpoint_that_cannot_be_journaled_is_logged_and_tried_again_later(h: Harness) -> None:
    """A refused append (a full disk) does not move the floor, and the next records try again."""
    checkpointer = Checkpointer(journal=h.journal, state=StartState(), clock=h.clock, records=5)
    checkpointer.start()
    refuse = [True]
    real_append = h.journal.append

    def append(kind: str, park: str, code: str, opr: str, body: object) -> Any:
        if kind == CHECKPOINT_RECORD and refuse[0]:
            return fail(JournalWriteError(28, "no space"))
        return real_append(kind, park, code, opr, body)

    checkpointer._journal = type("J", (), {"append": staticmethod(append), "commit_observers": []})()
    fill(h, 5)
    assert checkpointer.floor == 1
    refuse[0] = False
    fill(h, 5, start=5)
    h.settle()
    assert checkpointer.floor == 11


def write_lines(directory: Path, records: list[tuple[str, str, str, str, object]], ts: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    chain = b"0" * 32
    lines = []
    for seq, (kind, park, code, opr, body) in enumerate(records, 1):
        line, chain = encode_line(seq, ts, kind, park, code, opr, body, chain)
        lines.append(line)
    (directory / "00000000000000000001.jsonl").write_bytes(b"".join(lines))


def test_find_last_is_not_fooled_by_a_body_that_looks_like_a_checkpoint(tmp_path: Path) -> None:
    """A lot's data holding the text of a checkpoint line is not taken for one."""
    fake = (
        '\n{"seq":9,"ts":"2026-11-18T11:06:40.250000Z","kind":"checkpoint",'
        '"park":"","code":"","opr":"","body":{}}'
    )
    write_lines(
        tmp_path / "j",
        [
            ("checkpoint", "", "", "", {"version": 1, "n": "real"}),
            ("uplink", "P1", "carIn", "o", {"kind": "checkpoint", "note": fake}),
            ("uplink", "P1", "carIn", "o2", {"x": ',"kind":"checkpoint","park":"",'}),
        ],
        "2026-11-18T11:06:40.250000Z",
    )
    found = find_last(tmp_path / "j", CHECKPOINT_RECORD)
    assert found is not None and found.seq == 1 and found.body == {"version": 1, "n": "real"}
    assert find_last(tmp_path / "j", "seal") is None


def test_find_last_finds_a_record_far_back_across_chunks_and_segments(harness: Any) -> None:
    """The last checkpoint is found behind megabytes of later records and in an older segment."""
    h = harness(segment_bytes=1 << 21)
    h.journal.append(CHECKPOINT_RECORD, "", "", "", {"version": 1, "n": 1})
    for i in range(60):
        h.journal.append("uplink", "P1", "carImage", f"i{i}", {"image": "A" * 60_000})
    h.settle()
    assert len(list_segments(h.path)) >= 2
    found = find_last(h.path, CHECKPOINT_RECORD)
    assert found is not None and found.seq == 1


def test_headers_read_escaped_fields_as_the_full_decoder_does(tmp_path: Path) -> None:
    """Quotes, backslashes and any Unicode in park, code or opr come out the same as decode_line gives."""
    odd = ['a"b', "c\\d", "京A·12345", "tab\there", "\u2028", 'x\\"y']
    write_lines(tmp_path / "j", [("uplink", p, "carIn", p[::-1], {"b": p}) for p in odd], format_ts(NOW))
    found: list[Any] = []
    headers = list(scan_headers(tmp_path / "j", found.append))
    records = list(read_records(tmp_path / "j"))
    assert found == []
    assert [(h.seq, h.kind, h.park, h.code, h.opr, h.ts) for h in headers] == [
        (r.seq, r.kind, r.park, r.code, r.opr, r.ts) for r in records
    ]
    assert [h.record() for h in headers] == records


def test_a_line_whose_header_cannot_be_read_is_reported_with_its_place(tmp_path: Path) -> None:
    """A damaged header is skipped and reported with segment, offset and the seq it should have had."""
    write_lines(tmp_path / "j", [("uplink", "P1", "carIn", f"o{i}", {}) for i in range(3)], format_ts(NOW))
    path = tmp_path / "j" / "00000000000000000001.jsonl"
    lines = path.read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"kind"', b'"k1nd"')
    path.write_bytes(b"".join(lines))
    found: list[Any] = []
    assert [h.seq for h in scan_headers(tmp_path / "j", found.append)] == [1, 3]
    [damage] = found
    assert damage.seq == 2 and damage.offset == len(lines[0]) and damage.segment == path.name


def test_a_record_with_its_fields_in_another_order_is_read_as_every_reader_reads_it(tmp_path: Path) -> None:
    """Headers of a line not in the writer's order come from decoding it, as read_records does."""
    write_lines(tmp_path / "j", [("uplink", "P1", "carIn", "o1", {})], format_ts(NOW))
    path = tmp_path / "j" / "00000000000000000001.jsonl"
    reordered = (
        b'{"ts":"%s","seq":2,"kind":"uplink","park":"P2","code":"carOut","opr":"o2","body":{},"chain":"%s"}\n'
    )
    with path.open("ab") as f:
        f.write(reordered % (format_ts(NOW).encode(), b"0" * 32))
    found: list[Any] = []
    headers = list(scan_headers(tmp_path / "j", found.append))
    assert found == []
    assert [(h.seq, h.park, h.code, h.opr) for h in headers] == [
        (r.seq, r.park, r.code, r.opr) for r in read_records(tmp_path / "j")
    ]
    assert headers[1].park == "P2"


def test_first_seq_since_picks_the_segment_where_a_time_begins(harness: Any) -> None:
    """The newest segment that starts before the time is where reading for it must begin."""
    h = harness(segment_bytes=4096)
    fill(h, 60)
    middle = h.clock.seconds()
    h.clock.advance(100)
    fill(h, 60, start=60)
    segments = list_segments(h.path)
    assert first_seq_since(h.path, format_ts(middle + 50)) == max(
        s.first_seq for s in segments if s.first_seq <= 61
    )
    assert first_seq_since(h.path, format_ts(middle - 50)) == 1
    assert first_seq_since(h.path, format_ts(h.clock.seconds() + 1)) == segments[-1].first_seq


def test_quarantines_named_by_a_checkpoint_are_shown_again_not_journaled_again(harness: Any) -> None:
    """Damage set aside before is listed in `quarantined` after a restart, without a new record."""
    h = harness()
    body = {
        "segment": "00000000000000000001.jsonl",
        "offset": 0,
        "seq": 1,
        "reason": "x",
        "last_seq": None,
        "saved_as": "",
    }
    h.journal.append("quarantine", "", "", "", body)
    fill(h, 2)
    h.reopen()
    before = h.journal.last_seq
    Parts().restore(h)
    assert [q.offset for q in h.journal.quarantined] == [0]
    assert h.journal.last_seq == before


def test_a_revoked_token_is_not_restored_with_or_without_a_checkpoint(harness: Any) -> None:
    """A `token-revoked` record takes the account's token out of the state, and so out of a restart."""
    h = harness()
    h.journal.append("token", "P001", "login", "o1", token_body("lot001", "P001", "c" * 64))
    h.journal.append("token", "P002", "login", "o2", token_body("lot002", "P002", "d" * 64))
    h.journal.append("token-revoked", "P001", "", "", {"user": "lot001", "reason": "removed"})
    h.settle()
    state = StartState()
    for record in h.journal.replay():
        state.observe(record)
    assert list(state.tokens) == ["lot002"]
    h.close()
    h.open()
    parts = Parts(h.clock.seconds())
    parts.restore(h)
    assert len(parts.sessions) == 1
    h.journal.append(CHECKPOINT_RECORD, "", "", "", state.body(h.clock.seconds()))
    h.settle()
    h.close()
    h.open()
    parts = Parts(h.clock.seconds())
    assert parts.restore(h).checkpoint is not None
    assert len(parts.sessions) == 1

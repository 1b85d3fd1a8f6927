"""Tests for ``cpmictl log``: tail, show, stats, verify, export, replay and backup of the journal."""

from __future__ import annotations

import base64
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from nacl.signing import SigningKey
from twisted.internet.defer import Deferred
from twisted.internet.selectreactor import SelectReactor
from twisted.internet.task import deferLater

from gateway.cli import log
from gateway.cli.log.replay import Interrupted, run_to_end
from gateway.cli.main import build_parser, main
from gateway.cloud.events import BATCH_CONTENT_TYPE, to_event
from gateway.cloud.httpsig import verify_request
from gateway.forwarding import Progress
from gateway.journal.kinds import (
    ANSWER_RECORD,
    FORWARDED_RECORD,
    OFFLINE_RECORD,
    ONLINE_RECORD,
    QUERY_RECORD,
    REJECTED_RECORD,
    SEAL_RECORD,
    SYNC_DONE_RECORD,
    SYNC_RECORD,
    TOKEN_RECORD,
    UPLINK_RECORD,
)
from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record, encode_line, format_ts
from gateway.journal.seals import seal_body
from gateway.journal.segments import list_segments
from gateway.keys import public_key_b64, write_signing_key
from tests.journal.helpers import Harness

REPO_ROOT = Path(__file__).resolve().parents[2]
IMAGE = base64.b64encode(bytes(range(256)) * 293).decode("ascii")  # 100,012 characters
SHANGHAI = ZoneInfo("Asia/Shanghai")


def append(h: Harness, kind: str, park: str = "", code: str = "", opr: str = "", body: object = None) -> int:
    """Append one record with the real writer, let it reach the disk, return its seq."""
    d = h.journal.append(kind, park, code, opr, {} if body is None else body)
    h.settle()
    assert d.called
    return h.journal.last_seq


def seal(h: Harness, key: SigningKey, gateway: str = "gw-test") -> int:
    """Append a seal over the journal's head, as the sealer does."""
    seq, chain = h.journal.head
    return append(h, SEAL_RECORD, body=seal_body(key, gateway, seq, chain))


def car_in(h: Harness, park: str, n: int) -> int:
    return append(
        h, "uplink", park, "carIn", f"o{n}", {"recordCode": f"R{n}", "inTime": "2026-11-24 08:30:00"}
    )


def lines_of(path: Path) -> list[bytes]:
    """Every line of a journal directory, in order."""
    return [line for s in list_segments(path) for line in Path(s.path).read_bytes().splitlines(keepends=True)]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["log", *argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path / "journal")
    yield h
    if h.journal.problem is None:
        h.close()


# -- tail


def test_tail_filters_combine_and_shorten_images(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """tail --park and --code select together; a 100 KB base64 image shows as its start and length."""
    car_in(journal, "P001", 1)
    car_in(journal, "P002", 2)
    append(journal, "uplink", "P001", "carImage", "o3", {"recordCode": "R3", "imageBase64": IMAGE})
    append(journal, "uplink", "P002", "carImage", "o4", {"recordCode": "R4", "imageBase64": IMAGE})
    code, out, err = run(capsys, "tail", "--park", "P001", "--code", "carImage", str(journal.path))
    assert (code, err) == (0, "")
    [line] = out.splitlines()
    assert line.startswith("#3 2026-11-18T11:06:40Z uplink P001 carImage opr=o3 {")
    assert f'"imageBase64":"{IMAGE[:8]}…(100012 chars)"' in line
    assert len(line) < 300

    code, out, _ = run(capsys, "tail", "--kind", "uplink", "--park", "P002", "-n", "1", str(journal.path))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["#4"]


def test_tail_prints_the_last_twenty_by_default(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """Without -n or --since, tail prints the last 20 records, oldest first, across segments."""
    h = Harness(journal.path.parent / "small", segment_bytes=600)
    for n in range(1, 26):
        car_in(h, "P001", n)
    h.close()
    assert len(list_segments(h.path)) > 5
    code, out, _ = run(capsys, "tail", str(h.path))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == [f"#{n}" for n in range(6, 26)]


def test_tail_since_and_json_give_raw_lines(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """--since takes a seq (#N or N) or an RFC 3339 time; --json prints the lines as written, whole."""
    car_in(journal, "P001", 1)
    journal.clock.advance(3600)
    append(journal, "uplink", "P001", "carImage", "o2", {"imageBase64": IMAGE})
    car_in(journal, "P002", 3)
    written = lines_of(journal.path)

    for since in ("#2", "2", "2026-11-18T19:30:00+08:00", "2026-11-18T11:30:00Z"):
        code, out, err = run(capsys, "tail", "--since", since, "--json", str(journal.path))
        assert (code, err) == (0, ""), since
        assert out.encode() == b"".join(written[1:]), since
    code, out, _ = run(
        capsys, "tail", "--since", "#2", "--kind", "uplink", "--park", "P002", str(journal.path)
    )
    assert [line.split()[0] for line in out.splitlines()] == ["#3"]


def test_tail_rejects_a_time_without_offset(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """--since with a time that has no offset (or is no time at all) is a usage error, exit 2."""
    for since in ("2026-11-18T11:30:00", "yesterday", "#0"):
        code, _, err = run(capsys, "tail", "--since", since, str(journal.path))
        assert code == 2, since
        assert "--since" in err


def test_tail_escapes_what_a_terminal_would_act_on(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Control characters a lot sent (an ANSI escape in oprNum) are shown escaped, never raw."""
    append(journal, "uplink", "P001", "carIn", "x\x1b[2Jy\u202e", {"note": "\x9b31m"})
    code, out, _ = run(capsys, "tail", str(journal.path))
    assert code == 0
    assert "\x1b" not in out and "\x9b" not in out and "\u202e" not in out
    assert "opr=x\\u001b[2Jy\\u202e" in out


def test_tail_follow_picks_up_new_records_across_segments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """tail -f prints records written after it started, through segment rotations; Ctrl-C exits 0."""
    h = Harness(tmp_path / "journal", segment_bytes=300)  # a segment per record or so
    for n in range(1, 4):
        car_in(h, "P001", n)
    segments_at_start = len(list_segments(h.path))
    args = build_parser().parse_args(["log", "tail", "-f", "-n", "1", "--park", "P001", str(h.path)])
    sleeps: list[float] = []

    def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if len(sleeps) == 1:
            for n in range(4, 8):
                car_in(h, "P001" if n != 5 else "P002", n)
        elif len(sleeps) == 3:
            raise KeyboardInterrupt

    assert log.run_tail(args, sleep=sleep) == 0
    h.close()
    assert len(list_segments(h.path)) >= segments_at_start + 3
    out = capsys.readouterr().out
    assert [line.split()[0] for line in out.splitlines()] == ["#3", "#4", "#6", "#7"]
    assert sleeps == [log.POLL_SECONDS] * 3


def test_tail_follow_waits_for_a_partial_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A line being written is not printed until it is whole, then it is printed once, raw with --json."""
    h = Harness(tmp_path / "journal")
    car_in(h, "P001", 1)
    seq, chain = h.journal.head
    h.close()
    line, _ = encode_line(
        seq + 1, format_ts(1_795_000_100), "uplink", "P001", "carOut", "o2", {}, chain.encode()
    )
    segment = list_segments(h.path)[-1].path
    args = build_parser().parse_args(["log", "tail", "-f", "-n", "0", "--json", str(h.path)])
    calls = 0

    def sleep(seconds: float) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            with open(segment, "ab") as f:
                f.write(line[:30])
        elif calls == 2:
            assert capsys.readouterr().out == ""  # half a line: nothing yet
            with open(segment, "ab") as f:
                f.write(line[30:])
        else:
            raise KeyboardInterrupt

    assert log.run_tail(args, sleep=sleep) == 0
    assert capsys.readouterr().out.encode() == line


# -- show


def test_show_prints_the_whole_record(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """show SEQ prints the record as indented JSON, Chinese as is and the image not shortened."""
    car_in(journal, "P001", 1)
    append(journal, "uplink", "P001", "carImage", "o2", {"carNum": "粤B12345", "imageBase64": IMAGE})
    car_in(journal, "P001", 3)
    code, out, err = run(capsys, "show", "#2", str(journal.path))
    assert (code, err) == (0, "")
    assert '\n  "kind": "uplink",\n' in out
    assert "粤B12345" in out
    record = json.loads(out)
    assert record["seq"] == 2
    assert record["body"] == {"carNum": "粤B12345", "imageBase64": IMAGE}
    assert list(record) == ["seq", "ts", "kind", "park", "code", "opr", "body", "chain"]


def test_show_missing_seq_fails(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """show of a seq the journal does not hold exits 1 with one line on stderr."""
    car_in(journal, "P001", 1)
    code, out, err = run(capsys, "show", "99", str(journal.path))
    assert code == 1
    assert out == ""
    assert err == f"cpmictl log show: no record #99 in {journal.path}\n"


def test_show_finds_a_record_in_a_later_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """show goes to the segment named for the seq, whichever of many it is."""
    h = Harness(tmp_path / "journal", segment_bytes=300)
    for n in range(1, 10):
        car_in(h, "P001", n)
    h.close()
    code, out, _ = run(capsys, "show", "7", str(h.path))
    assert code == 0
    assert json.loads(out)["opr"] == "o7"


# -- stats


def build_known_journal(h: Harness) -> None:
    """Eleven records: events 1, 2, 3, 5 forwarded (through 5), then 7, 9, 10, 11 not yet."""
    car_in(h, "P001", 1)  # 1 event
    car_in(h, "P001", 2)  # 2 event
    append(h, "uplink", "P002", "carOut", "o3", {"recordCode": "R3"})  # 3 event
    append(h, "token", "P001", "login", "l1", {"user": "u1", "token_sha256": "ab" * 32})  # 4
    append(h, "lot-online", "P002", body={"peer": "10.0.0.2:5000"})  # 5 event
    append(h, FORWARDED_RECORD, body={"first": 1, "last": 5, "events": 4, "status": 200, "through": 5})
    h.clock.advance(60)
    append(h, "uplink", "P002", "carOut", "o4", {"recordCode": "R4"})  # 7 event
    append(h, "query", "P001", "autoPay", "q1", {"carNum": "粤B12345"})  # 8
    car_in(h, "P001", 5)  # 9 event
    append(h, "sync-done", "P002", "parkInfo", "s1", {"seq": 3, "outcome": "delivered"})  # 10 event
    append(h, "lot-offline", "P002", body={"reason": "closed"})  # 11 event


def test_stats_counts_and_backlog(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """stats counts kinds, codes and parks and shows the events after the highest through, per park."""
    h = Harness(tmp_path / "journal")
    build_known_journal(h)
    h.close()
    code, out, err = run(capsys, "stats", str(h.path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith(f"journal {h.path}: 1 segments, ")
    assert lines[1] == "records: 11, from #1 (2026-11-18T11:06:40Z) to #11 (2026-11-18T11:07:40Z)"
    assert table(lines, "by kind") == {
        "uplink": 5,
        "token": 1,
        "lot-online": 1,
        "forwarded": 1,
        "query": 1,
        "sync-done": 1,
        "lot-offline": 1,
    }
    assert table(lines, "by code") == {"carIn": 3, "carOut": 2, "login": 1, "autoPay": 1, "parkInfo": 1}
    assert table(lines, "by park") == {"P001": 5, "P002": 5}
    assert "forwarding: done through #5 (forwarded, refused, or no event)" in lines
    assert "backlog: 4 events not forwarded, the oldest #7 (2026-11-18T11:07:40Z)" in lines
    assert table(lines, "lag by park (events not forwarded)") == {"P002": 3, "P001": 1}


def table(lines: list[str], title: str) -> dict[str, int]:
    """A `title:` table of stats' output, as a dict."""
    start = lines.index(f"{title}:") + 1
    rows: dict[str, int] = {}
    for line in lines[start:]:
        if not line.startswith("  "):
            break
        name, count = line.split()
        rows[name] = int(count)
    return rows


def test_stats_is_the_same_whatever_the_segments(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The backlog comes out the same when through and the oldest event sit in different segments."""
    outputs = []
    for size in (64 * 2**20, 300):
        h = Harness(tmp_path / f"j{size}", segment_bytes=size)
        build_known_journal(h)
        h.close()
        code, out, _ = run(capsys, "stats", str(h.path))
        assert code == 0
        outputs.append(out.split("\n", 1)[1])
    assert len(list_segments(tmp_path / "j300")) > 3
    assert outputs[0] == outputs[1]


def test_stats_without_forwarding(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """With nothing forwarded (the log-only sink), every event is backlog, the oldest the first."""
    append(journal, "token", "P001", "login", "l1", {})
    car_in(journal, "P001", 1)
    car_in(journal, "P002", 2)
    code, out, _ = run(capsys, "stats", str(journal.path))
    assert code == 0
    assert "forwarding: nothing forwarded yet" in out
    assert "backlog: 2 events not forwarded, the oldest #2 (2026-11-18T11:06:40Z)" in out


def test_event_kinds_agree_with_to_event() -> None:
    """The kinds stats decides without the body map to an event, or not, as to_event says; spellings agree."""
    for kind in log.EVENT_KINDS | log.NO_EVENT_KINDS:
        for body in ({}, {"outcome": "delivered", "type": "x", "through": 1}, [1], "x"):
            record = Record(1, "2026-11-18T11:06:40.250000Z", kind, "P001", "carIn", "o1", body, "0" * 32)
            event = to_event(record, gateway_id="gw", zone=SHANGHAI)
            assert (event is not None) == (kind in log.EVENT_KINDS), (kind, body)
    assert {UPLINK_RECORD, ONLINE_RECORD, OFFLINE_RECORD} == log.EVENT_KINDS
    for kind in (TOKEN_RECORD, QUERY_RECORD, ANSWER_RECORD, SYNC_RECORD, FORWARDED_RECORD, SEAL_RECORD):
        assert kind in log.NO_EVENT_KINDS
    assert SYNC_DONE_RECORD not in log.NO_EVENT_KINDS | log.EVENT_KINDS
    assert REJECTED_RECORD not in log.NO_EVENT_KINDS | log.EVENT_KINDS


# -- verify


def test_verify_whole_journal_with_seals(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """verify passes a whole, sealed journal and says which key it checked the seals with."""
    key = SigningKey.generate()
    car_in(journal, "P001", 1)
    car_in(journal, "P001", 2)
    seal(journal, key)
    car_in(journal, "P001", 3)
    seal(journal, key)
    car_in(journal, "P001", 4)
    code, out, err = run(capsys, "verify", str(journal.path))
    assert (code, err) == (0, "")
    assert out.splitlines()[0] == (
        "journal whole: 6 records, 2 seals "
        f"(checked with the key the journal recorded first: {public_key_b64(key)})"
    )
    assert "last seal: #5, over the records up to #4; 1 records after it" in out

    key_file = journal.path.parent / "gateway.pub"
    key_file.write_text(public_key_b64(key) + "\n")
    code, out, _ = run(capsys, "verify", "--pubkey", str(key_file), str(journal.path))
    assert code == 0
    assert f"(checked with the given key: {public_key_b64(key)})" in out


def test_verify_flipped_byte(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """A byte changed in a record fails verify with exit 1 and that record's seq."""
    for n in range(1, 6):
        car_in(journal, "P001", n)
    journal.close()
    [segment] = list_segments(journal.path)
    data = Path(segment.path).read_bytes()
    at = data.index(b'"recordCode":"R3"') + len('"recordCode":"R')
    Path(segment.path).write_bytes(data[:at] + b"8" + data[at + 1 :])
    code, out, err = run(capsys, "verify", str(journal.path))
    assert code == 1
    assert out == ""
    assert err.startswith("first bad seq: 3: chain does not match")
    assert err.count("\n") == 1


def damaged_and_recovered(tmp_path: Path, key: SigningKey) -> tuple[Harness, int]:
    """A journal of 6 records whose record 3 was altered, then set aside at the next start; and its offset."""
    h = Harness(tmp_path / "damaged", signing_key=key, gateway_id="gw-test")
    for n in range(1, 6):
        car_in(h, "P001", n)
    seal(h, key)
    h.close()
    [segment] = list_segments(h.path)
    data = Path(segment.path).read_bytes()
    at = data.index(b'"recordCode":"R3"') + len('"recordCode":"R')
    offset = data.rindex(b"\n", 0, at) + 1
    Path(segment.path).write_bytes(data[:at] + b"8" + data[at + 1 :])
    return h, offset


def test_verify_damage_set_aside_passes_and_names_what_was_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before the restart verify fails at seq 3; after it, verify exits 0 and names what was lost."""
    key = SigningKey.generate()
    h, offset = damaged_and_recovered(tmp_path, key)
    code, out, err = run(capsys, "verify", str(h.path))
    assert code == 1 and err.startswith("first bad seq: 3: chain does not match")
    h.open()
    h.close()
    code, out, err = run(capsys, "verify", "--pubkey", public_key_b64(key), str(h.path))
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].startswith("journal whole: 6 records, 1 seals (checked with the given key")
    assert (
        f"set aside: record #3 lost: {len(lines_of(h.path)[2])} bytes at offset {offset} of segment "
        f"00000000000000000001.jsonl (chain does not match (the line or one before it was altered)); "
        f"vouched for by recovery record #7, signed with {public_key_b64(key)}"
    ) in lines
    assert "last seal: #6, over the records up to #5; 1 records after it" in out

    code, out, err = run(capsys, "verify", "--pubkey", public_key_b64(SigningKey.generate()), str(h.path))
    assert code == 1 and "first bad seq: 3: recovery record #7: signed with another key" in err


def test_show_tail_and_stats_of_a_journal_with_damage_set_aside(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """show names the recovery record for a lost seq; tail and stats skip the hole without warnings."""
    key = SigningKey.generate()
    h, offset = damaged_and_recovered(tmp_path, key)
    h.open()
    h.close()
    code, out, err = run(capsys, "show", "3", str(h.path))
    assert code == 1 and out == ""
    assert err == (
        f"cpmictl log show: record #3 was set aside as damaged: recovery record #7 (segment "
        f"00000000000000000001.jsonl, offset {offset}, {len(lines_of(h.path)[2])} bytes: "
        "chain does not match (the line or one before it was altered); "
        f"saved as 00000000000000000001.jsonl.damaged-{offset})\n"
    )
    code, out, err = run(capsys, "show", "4", str(h.path))
    assert (code, err) == (0, "") and '"recordCode": "R4"' in out
    code, out, err = run(capsys, "tail", str(h.path))
    assert (code, err) == (0, "")
    assert [line.split()[0] for line in out.splitlines()] == ["#1", "#2", "#4", "#5", "#6", "#7"]
    assert "recovery" in out.splitlines()[-1]
    code, out, err = run(capsys, "stats", str(h.path))
    assert (code, err) == (0, "")
    assert "damage set aside: 1 times, 1 records lost" in out
    assert "damaged lines skipped" not in out


def test_verify_end_to_end_after_a_restart_in_a_real_process(tmp_path: Path) -> None:
    """cpmictl log verify, run as a process, exits 0 on the repaired journal and prints the damage."""
    key = SigningKey.generate()
    h, offset = damaged_and_recovered(tmp_path, key)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))

    def cpmictl_verify() -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "gateway.cli.main",
                "log",
                "verify",
                "--pubkey",
                public_key_b64(key),
                str(h.path),
            ],
            capture_output=True,
            text=True,
            env=env,
            cwd=REPO_ROOT,
            timeout=60,
            check=False,
        )

    before = cpmictl_verify()
    assert before.returncode == 1 and before.stderr.startswith("first bad seq: 3:")
    h.open()
    h.close()
    after = cpmictl_verify()
    assert after.returncode == 0, after.stderr
    assert "set aside: record #3 lost: " in after.stdout and f"at offset {offset} " in after.stdout


def test_verify_seal_by_another_key(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """A seal made with another key than the first seal's fails at that seal's seq."""
    car_in(journal, "P001", 1)
    seal(journal, SigningKey.generate())
    car_in(journal, "P001", 2)
    intruder = seal(journal, SigningKey.generate())
    car_in(journal, "P001", 3)
    code, _, err = run(capsys, "verify", str(journal.path))
    assert code == 1
    assert err.startswith(f"first bad seq: {intruder}: sealed with another key")


def test_verify_with_the_wrong_pubkey(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """--pubkey with a key that did not seal the journal fails at the first seal."""
    car_in(journal, "P001", 1)
    first = seal(journal, SigningKey.generate())
    other = public_key_b64(SigningKey.generate())
    code, _, err = run(capsys, "verify", "--pubkey", other, str(journal.path))
    assert code == 1
    assert err.startswith(f"first bad seq: {first}: sealed with another key")


def test_verify_seal_over_the_wrong_record(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """A validly signed seal that does not sign the record just before it fails (records were cut)."""
    key = SigningKey.generate()
    car_in(journal, "P001", 1)
    seq, chain = journal.journal.head
    car_in(journal, "P001", 2)
    bad = append(journal, SEAL_RECORD, body=seal_body(key, "gw-test", seq, chain))
    code, _, err = run(capsys, "verify", str(journal.path))
    assert code == 1
    assert err.startswith(f"first bad seq: {bad}: seal signs #{seq}")


def test_verify_without_seals(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """A whole journal without seals passes and says it has none."""
    car_in(journal, "P001", 1)
    code, out, _ = run(capsys, "verify", "--pubkey", public_key_b64(SigningKey.generate()), str(journal.path))
    assert code == 0
    assert out == "journal whole: 1 records, no seals (nothing signed to check)\n"


def test_verify_bad_pubkey_is_usage(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """--pubkey that is neither a key nor a file holding one is a usage error (exit 2)."""
    car_in(journal, "P001", 1)
    code, _, err = run(capsys, "verify", "--pubkey", "not-a-key", str(journal.path))
    assert code == 2
    assert err.count("\n") == 1


def sealed_segments(tmp_path: Path) -> Harness:
    """A closed journal over several segments, sealed every third record."""
    key = SigningKey.generate()
    h = Harness(tmp_path / "journal", segment_bytes=400)
    for n in range(1, 13):
        car_in(h, "P001", n)
        if n % 3 == 0:
            seal(h, key)
    h.close()
    assert len(list_segments(h.path)) >= 5
    return h


def test_verify_deleted_middle_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A segment removed from the middle fails verify at its first seq, at offset 0 of the next."""
    h = sealed_segments(tmp_path)
    segments = list_segments(h.path)
    Path(segments[2].path).unlink()
    code, out, err = run(capsys, "verify", str(h.path))
    assert (code, out) == (1, "")
    assert err == (
        f"first bad seq: {segments[2].first_seq}: segment starts at seq {segments[3].first_seq} where "
        f"{segments[2].first_seq} was expected (segment {segments[3].name}, offset 0)\n"
    )


def test_verify_truncated_segment(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A segment cut short (not the last one) fails at the seq of its cut line."""
    h = sealed_segments(tmp_path)
    segment = list_segments(h.path)[1]
    path = Path(segment.path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    *_, last = data.splitlines(keepends=True)
    code, _, err = run(capsys, "verify", str(h.path))
    assert code == 1
    assert err.startswith(f"first bad seq: {int(last[7 : last.index(b',')])}: partial line")


def alter_first_line(path: str) -> int:
    """Change a byte in the first line of a segment; that line's seq."""
    data = Path(path).read_bytes()
    at = data.index(b'"recordCode":"R') + len('"recordCode":"')
    Path(path).write_bytes(data[:at] + b"X" + data[at + 1 :])
    return int(data[7 : data.index(b",")])


@pytest.mark.parametrize("first", ["bad seal", "altered byte"])
def test_verify_reports_the_first_break_in_journal_order(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], first: str
) -> None:
    """Chain and seals are checked in one pass: a bad seal before an altered byte is the one reported,
    and an altered byte before a bad seal."""
    key = SigningKey.generate()
    h = Harness(tmp_path / "journal", segment_bytes=400)
    car_in(h, "P001", 1)
    seq, chain = h.journal.head
    car_in(h, "P001", 2)
    if first == "bad seal":
        bad = append(h, SEAL_RECORD, body=seal_body(key, "gw-test", seq, chain))  # signs #1, not #2
    else:
        seal(h, key)
    for n in range(3, 12):
        car_in(h, "P001", n)
    intruder = seal(h, SigningKey.generate())
    car_in(h, "P001", 12)
    h.close()
    segments = list_segments(h.path)
    assert len(segments) >= 4
    if first == "bad seal":
        alter_first_line(segments[-1].path)
        expected = (
            f"first bad seq: {bad}: seal signs #{seq} with chain {chain}, but the record before it is #2"
        )
    else:
        assert segments[1].first_seq < intruder
        altered = alter_first_line(segments[1].path)
        expected = f"first bad seq: {altered}: chain does not match"
    code, _, err = run(capsys, "verify", str(h.path))
    assert code == 1
    assert err.startswith(expected)
    assert re.search(r"\(segment [0-9]{20}\.jsonl, offset [0-9]+\)\n$", err)


# -- verify after a rotation of the signing key


def rotated(h: Harness, old: SigningKey, new: SigningKey) -> tuple[int, int]:
    """Records sealed by ``old``, then by ``new`` (the gateway restarted on a new key file); the seqs of
    the first seal by ``new`` and of a record after it."""
    car_in(h, "P001", 1)
    car_in(h, "P001", 2)
    seal(h, old)
    car_in(h, "P001", 3)
    seal(h, old)
    car_in(h, "P001", 4)
    first_new = seal(h, new)
    after = car_in(h, "P001", 5)
    seal(h, new)
    car_in(h, "P001", 6)
    return first_new, after


def test_verify_a_rotation_without_pubkey_says_how_to_check_it(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without --pubkey, the first seal by a new key fails (exit 1, its seq), and a second line gives the
    command that checks with the old and the new key, which then passes."""
    old, new = SigningKey.generate(), SigningKey.generate()
    first_new, _ = rotated(journal, old, new)
    code, out, err = run(capsys, "verify", str(journal.path))
    assert (code, out) == (1, "")
    first, hint = err.splitlines()
    assert first.startswith(
        f"first bad seq: {first_new}: sealed with another key ({public_key_b64(new)}) "
        f"than the one checked against ({public_key_b64(old)})"
    )
    command = (
        f"cpmictl log verify --pubkey {public_key_b64(old)} --pubkey {public_key_b64(new)} "
        f"{shlex.quote(str(journal.path))}"
    )
    assert hint == (
        f"the seals change key at #{first_new}: if the gateway's signing key was rotated, make sure both "
        f"keys are its own (cpmictl pubkey KEYFILE prints a key file's), then check with both: {command}"
    )
    argv = shlex.split(hint.rsplit(": ", 1)[1])
    assert argv[:3] == ["cpmictl", "log", "verify"]
    code, out, err = run(capsys, *argv[2:])
    assert (code, err) == (0, "")


def test_verify_with_both_keys_lists_what_each_sealed(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pubkey OLD --pubkey NEW (a file and base64 alike) passes a rotated journal and names each key
    with the seals it made; a key given that made none is said to have none."""
    old, new, unrelated = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    rotated(journal, old, new)
    old_file = journal.path.parent / "old.pub"
    old_file.write_text(public_key_b64(old) + "\n")
    code, out, err = run(
        capsys, "verify", "--pubkey", str(old_file), "--pubkey", public_key_b64(new), str(journal.path)
    )
    assert (code, err) == (0, "")
    assert out.splitlines() == [
        "journal whole: 10 records, 4 seals (checked with the given keys: "
        f"{public_key_b64(old)} (seals #3\u2013#5), {public_key_b64(new)} (seals #7\u2013#9))",
        "last seal: #9, over the records up to #8; 1 records after it are covered by the chain only",
    ]
    keys = [public_key_b64(key) for key in (new, unrelated, old)]
    code, out, _ = run(capsys, "verify", *(f"--pubkey={key}" for key in keys), str(journal.path))
    assert code == 0
    assert out.splitlines()[0].endswith(
        f"(checked with the given keys: {keys[2]} (seals #3\u2013#5), {keys[0]} (seals #7\u2013#9), "
        f"{keys[1]} (no seals))"
    )


def test_verify_one_seal_per_key_and_a_key_given_twice(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """A key that made one seal is shown with that seal; the same key given twice is one given key."""
    old, new = SigningKey.generate(), SigningKey.generate()
    car_in(journal, "P001", 1)
    seal(journal, old)
    car_in(journal, "P001", 2)
    seal(journal, new)
    code, out, _ = run(
        capsys, "verify", "--pubkey", public_key_b64(old), "--pubkey", public_key_b64(new), str(journal.path)
    )
    assert code == 0
    assert out.splitlines()[0] == (
        "journal whole: 4 records, 2 seals (checked with the given keys: "
        f"{public_key_b64(old)} (seal #2), {public_key_b64(new)} (seal #4))"
    )
    code, out, _ = run(
        capsys, "verify", "--pubkey", public_key_b64(old), "--pubkey", public_key_b64(old), str(journal.path)
    )
    assert code == 1
    code, out, _ = run(capsys, "verify", *["--pubkey", public_key_b64(new)] * 2, str(journal.path))
    assert code == 1


def test_verify_with_the_old_key_only(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """--pubkey OLD alone fails a rotated journal at the first seal by the new key, and says to add it."""
    old, new = SigningKey.generate(), SigningKey.generate()
    first_new, _ = rotated(journal, old, new)
    code, out, err = run(capsys, "verify", "--pubkey", public_key_b64(old), str(journal.path))
    assert (code, out) == (1, "")
    first, hint = err.splitlines()
    assert first.startswith(
        f"first bad seq: {first_new}: sealed with another key ({public_key_b64(new)}) "
        f"than the one checked against ({public_key_b64(old)})"
    )
    assert hint.startswith(f"the seal at #{first_new} was made by a key not given ({public_key_b64(new)}):")
    assert hint.endswith(
        f"add it: cpmictl log verify --pubkey {public_key_b64(old)} --pubkey {public_key_b64(new)} "
        f"{shlex.quote(str(journal.path))}"
    )


def test_verify_a_rotated_journal_with_an_unrelated_key(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """--pubkey with a key that sealed nothing fails at the first seal; with the old and the new key and
    an unrelated one as well, the journal passes."""
    old, new, unrelated = SigningKey.generate(), SigningKey.generate(), SigningKey.generate()
    rotated(journal, old, new)
    code, _, err = run(capsys, "verify", "--pubkey", public_key_b64(unrelated), str(journal.path))
    assert code == 1
    assert err.startswith(f"first bad seq: 3: sealed with another key ({public_key_b64(old)})")
    code, _, err = run(
        capsys,
        "verify",
        "--pubkey",
        public_key_b64(unrelated),
        "--pubkey",
        public_key_b64(new),
        str(journal.path),
    )
    assert code == 1
    assert err.startswith(
        f"first bad seq: 3: sealed with another key ({public_key_b64(old)}) than the ones checked against "
        f"({public_key_b64(unrelated)}, {public_key_b64(new)})"
    )


def test_verify_finds_a_record_altered_after_the_rotation(
    journal: Harness, capsys: pytest.CaptureFixture[str]
) -> None:
    """With both keys given, a byte changed in a record after the rotation still fails verify at that
    record's seq, on one line (no key hint: the keys are not the problem)."""
    old, new = SigningKey.generate(), SigningKey.generate()
    first_new, after = rotated(journal, old, new)
    assert after > first_new
    journal.close()
    [segment] = list_segments(journal.path)
    data = Path(segment.path).read_bytes()
    at = data.index(b'"recordCode":"R5"') + len('"recordCode":"R')
    Path(segment.path).write_bytes(data[:at] + b"8" + data[at + 1 :])
    code, out, err = run(
        capsys, "verify", "--pubkey", public_key_b64(old), "--pubkey", public_key_b64(new), str(journal.path)
    )
    assert (code, out) == (1, "")
    assert err.startswith(f"first bad seq: {after}: chain does not match")
    assert err.count("\n") == 1


# -- export


def test_export_since_until(journal: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    """export writes the raw lines from --since to --until (inclusive; seq or time), to stdout or -o."""
    for n in range(1, 7):
        car_in(journal, "P001" if n % 2 else "P002", n)
        journal.clock.advance(60)
    written = lines_of(journal.path)
    code, out, _ = run(capsys, "export", "--since", "2", "--until", "#4", str(journal.path))
    assert code == 0
    assert out.encode() == b"".join(written[1:4])

    code, out, _ = run(
        capsys,
        "export",
        "--since",
        "2026-11-18T11:08:40Z",  # record 3's minute
        "--until",
        "2026-11-18T19:10:40.25+08:00",  # record 5, to the microsecond
        "--park",
        "P001",
        str(journal.path),
    )
    assert code == 0
    assert out.encode() == written[2] + written[4]

    target = journal.path.parent / "out.jsonl"
    code, out, err = run(capsys, "export", "--kind", "uplink", "-o", str(target), str(journal.path))
    assert (code, out) == (0, "")
    assert err == f"exported 6 records to {target}\n"
    assert target.read_bytes() == b"".join(written)


# -- replay


class Cloud:
    """A local HTTP endpoint that keeps what it receives and answers with the statuses it is given."""

    def __init__(self, statuses: list[int]) -> None:
        self.statuses = statuses
        self.requests: list[tuple[dict[str, str], bytes]] = []
        cloud = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                cloud.requests.append((dict(self.headers.items()), body))
                status = cloud.statuses.pop(0) if cloud.statuses else 200
                answer = b"overloaded, try later" if status >= 300 else b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def cloud(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Cloud]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no conf/gateway.toml here
    server = Cloud([])
    yield server
    server.close()


def replay_journal(h: Harness) -> list[int]:
    """Uplinks of two lots and records that are no event; the seqs of the events."""
    events = []
    events.append(car_in(h, "P001", 1))
    append(h, "token", "P001", "login", "l1", {"user": "u1"})
    events.append(car_in(h, "P002", 2))
    events.append(car_in(h, "P001", 3))
    append(h, "query", "P001", "autoPay", "q1", {})
    events.append(append(h, "lot-online", "P002", body={"peer": "10.0.0.2:5000"}))
    events.append(car_in(h, "P001", 4))
    return events


def test_replay_sends_signed_batches_with_original_ids(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """replay POSTs the events in batches of --batch, ids {gateway}-{seq}, signed with the gateway's key."""
    events = replay_journal(journal)
    key = SigningKey.generate()
    write_signing_key(str(journal.path.parent / "gateway.key"), key)
    argv = ["replay", "--from", "1", "--url", cloud.url, "--batch", "2", "--gateway-id", "gw-test"]
    code, out, err = run(capsys, *argv, "--key", "gateway.key", str(journal.path))
    assert (code, out) == (0, "")
    assert err == (
        f"replayed 5 events in 3 batches to {cloud.url} "
        "(records #1 to #7; 2 records with no event left out)\n"
    )
    assert [len(json.loads(body)) for _, body in cloud.requests] == [2, 2, 1]
    records = {r.seq: r for r in read_records(journal.path)}
    sent = [event for _, body in cloud.requests for event in json.loads(body)]
    assert [event["id"] for event in sent] == [f"gw-test-{seq}" for seq in events]
    assert sent == [to_event(records[seq], gateway_id="gw-test", zone=SHANGHAI) for seq in events]
    for headers, body in cloud.requests:
        assert headers["Content-Type"] == BATCH_CONTENT_TYPE
        assert verify_request("POST", cloud.url, body, headers, key.verify_key)


def test_replay_range_park_and_config(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """--to and --park narrow the records; the gateway id and key come from --config."""
    replay_journal(journal)
    key = SigningKey.generate()
    write_signing_key(str(journal.path.parent / "gw.key"), key)
    config = journal.path.parent / "gateway.toml"
    config.write_text('[gateway]\nid = "gw-cfg"\nsigning_key = "gw.key"\n')
    argv = [
        "replay",
        "--from",
        "#2",
        "--to",
        "6",
        "--park",
        "P001",
        "--url",
        cloud.url,
        "--config",
        str(config),
    ]
    code, _, _ = run(capsys, *argv, str(journal.path))
    assert code == 0
    [(headers, body)] = cloud.requests
    assert [event["id"] for event in json.loads(body)] == ["gw-cfg-4"]
    assert verify_request("POST", cloud.url, body, headers, key.verify_key)


def test_replay_stops_at_an_error(journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]) -> None:
    """A 500 stops replay with exit 1, the status, the answer and the seq to resume from."""
    events = replay_journal(journal)
    write_signing_key(str(journal.path.parent / "gateway.key"), SigningKey.generate())
    cloud.statuses[:] = [200, 500]
    argv = ["replay", "--from", "1", "--url", cloud.url, "--batch", "2", "--gateway-id", "gw-test"]
    code, out, err = run(capsys, *argv, "--key", "gateway.key", str(journal.path))
    assert code == 1
    assert out == ""
    assert len(cloud.requests) == 2
    assert err.count("\n") == 1
    assert f"HTTP 500 from {cloud.url}: overloaded, try later" in err
    assert f"events #{events[2]} to #{events[3]}; 2 events were sent before them" in err
    assert err.rstrip().endswith(f"resume with --from {events[2]}")


def test_replay_stops_at_a_refused_batch(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """A 4xx for a batch of several stops replay too (it is not split as the gateway would): exit 1."""
    events = replay_journal(journal)
    write_signing_key(str(journal.path.parent / "gateway.key"), SigningKey.generate())
    cloud.statuses[:] = [400]
    argv = ["replay", "--from", "1", "--url", cloud.url, "--batch", "2", "--gateway-id", "gw-test"]
    code, _, err = run(capsys, *argv, "--key", "gateway.key", str(journal.path))
    assert code == 1
    assert len(cloud.requests) == 1
    assert f"HTTP 400 from {cloud.url}: overloaded, try later for events #{events[0]} to #{events[1]}" in err
    assert err.rstrip().endswith(f"0 events were sent before them; resume with --from {events[0]}")


def test_replay_without_an_answer_says_so(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """A cloud that cannot be reached stops replay with exit 1, the reason and where to resume."""
    events = replay_journal(journal)
    write_signing_key(str(journal.path.parent / "gateway.key"), SigningKey.generate())
    cloud.close()  # nothing listens there now
    argv = ["replay", "--from", "1", "--url", cloud.url, "--gateway-id", "gw-test"]
    code, out, err = run(capsys, *argv, "--key", "gateway.key", str(journal.path))
    assert (code, out) == (1, "")
    assert err.startswith(f"cpmictl log replay: no answer from {cloud.url} (")
    assert "refused" in err
    assert err.count("\n") == 1
    assert err.rstrip().endswith(f"resume with --from {events[0]}")


def test_replay_progress_bar_on_a_terminal(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal, replay draws a progress bar on stderr (cleared at the end), then the summary line."""
    replay_journal(journal)
    write_signing_key(str(journal.path.parent / "gateway.key"), SigningKey.generate())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["replay", "--from", "1", "--url", cloud.url, "--gateway-id", "gw-test", "--key", "gateway.key"]
    code, out, err = run(capsys, *argv, str(journal.path))
    assert code == 0
    assert out == ""
    drawn, summary = err.rsplit("\r", 1)
    # tqdm redraws at most ten times a second: the bar over the 7 records shows at least its start.
    assert drawn.startswith("\rreplay:") and "/7 [" in drawn
    assert summary.startswith("replayed 5 events in 1 batches") and summary.count("\n") == 1


def test_replay_no_progress_on_a_terminal(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """--no-progress leaves stderr to the summary line alone, even on a terminal."""
    replay_journal(journal)
    write_signing_key(str(journal.path.parent / "gateway.key"), SigningKey.generate())
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    argv = ["replay", "--no-progress", "--from", "1", "--url", cloud.url, "--gateway-id", "gw-test"]
    code, _, err = run(capsys, *argv, "--key", "gateway.key", str(journal.path))
    assert code == 0
    assert "\r" not in err
    assert err.startswith("replayed 5 events in 1 batches") and err.count("\n") == 1


def test_run_to_end_gives_the_result_or_raises_the_error() -> None:
    """replay's reactor runner returns what the work returns and raises what it raises, reactor stopped."""
    reactor = SelectReactor()

    async def answer() -> int:
        await deferLater(reactor, 0, lambda: None)
        return 42

    assert run_to_end(reactor, answer) == 42
    assert not reactor.running
    failing = SelectReactor()

    async def refuse() -> int:
        await deferLater(failing, 0, lambda: None)
        raise log.common.Failure("refused")

    with pytest.raises(log.common.Failure, match="refused"):
        run_to_end(failing, refuse)


def test_run_to_end_says_when_the_reactor_stopped_first() -> None:
    """A reactor stopped before the work ends (Ctrl-C, SIGTERM) is Interrupted, not a hang or a result."""
    reactor = SelectReactor()
    never: Deferred[None] = Deferred()

    async def wait_forever() -> None:
        reactor.callLater(0, reactor.stop)
        await never

    with pytest.raises(Interrupted):
        run_to_end(reactor, wait_forever)


def test_run_to_end_stops_at_ctrl_c_and_leaves_the_signals_as_they_were() -> None:
    """Ctrl-C stops replay's reactor (Interrupted); SIGINT and SIGTERM are given back, and SIGCHLD and
    the wake-up fd, which another reactor of the process (a test's) reaps its children by, are untouched."""
    taken = (signal.SIGCHLD, signal.SIGINT, signal.SIGTERM)
    before = {signum: signal.getsignal(signum) for signum in taken}
    wakeup = signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(wakeup)
    reactor = SelectReactor()
    never: Deferred[None] = Deferred()

    async def interrupted_soon() -> None:
        reactor.callLater(0, os.kill, os.getpid(), signal.SIGINT)
        await never

    with pytest.raises(Interrupted):
        run_to_end(reactor, interrupted_soon)
    assert {signum: signal.getsignal(signum) for signum in taken} == before
    assert signal.set_wakeup_fd(wakeup) == wakeup


def test_replay_without_identity_fails_cleanly(
    journal: Harness, cloud: Cloud, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a configuration file, --gateway-id or --key, replay says what to give (exit 1)."""
    car_in(journal, "P001", 1)
    code, _, err = run(capsys, "replay", "--from", "1", "--url", cloud.url, str(journal.path))
    assert code == 1
    assert "give --config, or --gateway-id and --key" in err
    assert err.count("\n") == 1
    assert cloud.requests == []


# -- backup


def test_backup_of_a_live_journal_and_restore(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """backup leaves a half-written line out, the copy verifies; restored, it resumes after through."""
    h = Harness(tmp_path / "journal", segment_bytes=400)
    for n in range(1, 4):
        car_in(h, "P001", n)
    append(h, FORWARDED_RECORD, body={"first": 1, "last": 3, "events": 3, "status": 200, "through": 3})
    car_in(h, "P002", 4)
    last = car_in(h, "P002", 5)
    h.close()
    segments = list_segments(h.path)
    assert len(segments) > 2
    with open(segments[-1].path, "ab") as f:
        f.write(b'{"seq":7,"ts":"2026-11-18T11:06:4')  # a write in progress
    dest = tmp_path / "backup" / "journal"

    code, out, err = run(capsys, "backup", str(h.path), str(dest))
    assert (code, err) == (0, "")
    assert f"copied {last} records (#1 to #{last})" in out
    assert "left out: the incomplete last line (33 bytes, being written)" in out
    assert [s.name for s in list_segments(dest)] == [s.name for s in segments]
    assert verify(dest) == last
    assert lines_of(dest) == lines_of(h.path)[:-1]
    assert lines_of(dest)[-1].startswith(f'{{"seq":{last},'.encode())

    restored = tmp_path / "restored"
    shutil.copytree(dest, restored)
    again = Harness(restored)
    progress = Progress()
    events_after = []
    for record in again.journal.replay():
        if record.kind in (FORWARDED_RECORD, REJECTED_RECORD):
            progress.restore(record)
    for record in again.journal.replay(progress.through + 1):
        if to_event(record, gateway_id="gw", zone=SHANGHAI) is not None:
            events_after.append(record.seq)
    again.close()
    assert progress.through == 3
    assert events_after == [5, 6]


def test_backup_refuses_a_destination_of_another_journal(
    journal: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """backup into a backup of another journal fails with one line (exit 1) and touches nothing."""
    car_in(journal, "P001", 1)
    other = Harness(tmp_path / "other")
    car_in(other, "P009", 1)
    other.close()
    dest = journal.path.parent / "dest"
    assert run(capsys, "backup", str(other.path), str(dest))[0] == 0
    before = lines_of(dest)
    code, _, err = run(capsys, "backup", str(journal.path), str(dest))
    assert code == 1
    assert err.startswith(f"cpmictl log backup: {dest} is not a backup of {journal.path}")
    assert err.count("\n") == 1
    assert lines_of(dest) == before


# -- errors and damage


@pytest.mark.parametrize("verb", [["tail"], ["show", "1"], ["stats"], ["verify"], ["export"]])
def test_no_journal_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], verb: list[str]) -> None:
    """A missing directory, or one without segments, fails with exit 1 and one line, no traceback."""
    for directory in (tmp_path / "absent", tmp_path):
        code, out, err = run(capsys, *verb, str(directory))
        assert code == 1
        assert out == ""
        assert err.count("\n") == 1
        assert err.startswith(f"cpmictl log {verb[0]}: {directory}")


def test_a_damaged_line_is_skipped_by_readers_and_found_by_verify(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A damaged line in an older segment: tail and export warn and go on, verify fails at its seq."""
    h = Harness(tmp_path / "journal", segment_bytes=300)
    for n in range(1, 6):
        car_in(h, "P001", n)
    h.close()
    second = list_segments(h.path)[1]
    Path(second.path).write_bytes(b"garbage where record 2 was\n")
    code, out, err = run(capsys, "tail", str(h.path))
    assert code == 0
    assert [line.split()[0] for line in out.splitlines()] == ["#1", "#3", "#4", "#5"]
    assert re.match(
        r"cpmictl log tail: warning: skipped a damaged line \(segment 0+2\.jsonl, offset 0\)", err
    )
    code, out, _ = run(capsys, "export", str(h.path))
    assert code == 0
    assert len(out.splitlines()) == 4
    code, out, _ = run(capsys, "stats", str(h.path))
    assert code == 0
    assert "records: 4, from #1" in out
    assert f"damaged lines skipped: 1 (cpmictl log verify {h.path})" in out
    code, _, err = run(capsys, "verify", str(h.path))
    assert code == 1
    assert err.startswith("first bad seq: 2: ")


def test_help_lists_the_verbs(capsys: pytest.CaptureFixture[str]) -> None:
    """cpmictl log --help names every verb; cpmictl log alone is a usage error."""
    assert main(["log", "--help"]) == 0
    out = capsys.readouterr().out
    for verb in ("tail", "show", "stats", "verify", "export", "replay", "backup"):
        assert verb in out
    assert main(["log"]) == 2
    assert capsys.readouterr().err.startswith("usage: cpmictl log")


def test_backup_starts_after_segments_retention_removes_meanwhile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An oldest segment removed between listing and copying is left out; the copy verifies from there."""
    h = Harness(tmp_path / "journal", segment_bytes=400)
    last = 0
    for n in range(1, 6):
        last = car_in(h, "P001", n)
    h.close()
    listed = list_segments(h.path)
    assert len(listed) > 2
    Path(listed[0].path).unlink()

    def stale(directory: str) -> list[Any]:
        return listed if Path(directory) == h.path else list_segments(directory)

    monkeypatch.setattr("gateway.journal.backup.list_segments", stale)
    dest = tmp_path / "backup"
    code, out, err = run(capsys, "backup", str(h.path), str(dest))
    assert (code, err) == (0, "")
    assert f", {len(listed) - 1} new segments, " in out
    assert f"(#{listed[1].first_seq} to #{last})" in out

"""``cpmictl log backup`` (incremental) and ``cpmictl log restore``, as an operator runs them."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from nacl.signing import SigningKey

from gateway.cli.main import main
from gateway.journal.kinds import SEAL_RECORD
from gateway.journal.seals import seal_body
from gateway.journal.segments import list_segments
from gateway.keys import public_key_b64, write_signing_key
from tests.journal.helpers import Harness


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["log", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def car_ins(h: Harness, n: int, start: int = 0) -> int:
    for i in range(start, start + n):
        h.journal.append("uplink", "P001", "carIn", f"o{i}", {"recordCode": f"R{i}"})
        h.settle()
    return h.journal.last_seq


@pytest.fixture
def key_file(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.key"
    write_signing_key(str(path), SigningKey(b"k" * 32))
    return path


def test_backup_twice_copies_only_what_is_new(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The second run says what it added; a third, with nothing new, says so; both exit 0."""
    h = Harness(tmp_path / "journal", segment_bytes=400)
    car_ins(h, 3)
    dest = tmp_path / "backup"
    code, out, err = run(capsys, "backup", str(h.path), str(dest))
    assert (code, err) == (0, "")
    assert out.startswith("copied 3 records (#1 to #3), ")
    last = car_ins(h, 2, start=3)
    code, out, err = run(capsys, "backup", str(h.path), str(dest))
    assert (code, err) == (0, "")
    assert out.startswith(f"copied 2 records (#4 to #{last}), ")
    assert out.rstrip().endswith("chain checked")
    code, out, _ = run(capsys, "backup", str(h.path), str(dest))
    assert (code, out) == (0, f"{dest}: nothing new since #{last}\n")
    code, out, _ = run(capsys, "verify", str(dest))
    assert code == 0 and f"journal whole: {last} records" in out


def test_backup_progress_on_a_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a terminal a bar shows the bytes copied on standard error, to 100%; --no-progress silences it."""
    h = Harness(tmp_path / "journal")
    car_ins(h, 3)
    size = sum(Path(s.path).stat().st_size for s in list_segments(h.path))
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    code, out, err = run(capsys, "backup", "--progress", str(h.path), str(tmp_path / "backup"))
    assert code == 0
    assert "backup: 100%" in err and f"{size}/{size}" in err
    assert out.startswith("copied 3 records")
    car_ins(h, 1)
    code, out, err = run(capsys, "backup", "--no-progress", str(h.path), str(tmp_path / "backup"))
    assert code == 0 and err == "" and out.startswith("copied 1 records")


def test_restore_then_verify_names_the_jump(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    """restore prints where the journal goes on; verify then passes and names the restore record."""
    h = Harness(tmp_path / "journal")
    car_ins(h, 3)
    h.close()
    dest = tmp_path / "backup"
    assert run(capsys, "backup", str(h.path), str(dest))[0] == 0
    target = tmp_path / "restored"
    argv = ["restore", "--gateway-id", "gw-test", "--key", str(key_file), str(dest), str(target)]
    code, out, err = run(capsys, *argv)
    assert (code, err) == (0, "")
    assert out.startswith(
        f"restored 1 segments, records up to #3, from {dest} to {target}; the journal goes on at #"
    )
    floor = int(out.split("goes on at #")[1].split()[0])
    assert floor > 1_700_000_000_000_000
    pubkey = public_key_b64(SigningKey(b"k" * 32))
    code, out, err = run(capsys, "verify", "--pubkey", pubkey, str(target))
    assert (code, err) == (0, "")
    assert "journal whole: 4 records" in out
    assert f"restored: from a backup ending at #3; seqs #4\u2013#{floor - 1} skipped" in out
    assert f"restore record #{floor}" in out

    code, _, err = run(capsys, *argv)
    assert code == 1
    assert err == (
        f"cpmictl log restore: {target} already holds a journal (2 segments); move it away, or give "
        "--replace to keep it beside as <segment>.replaced-<time>\n"
    )


def test_restore_refuses_a_running_journal_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    """A journal a writer holds open is not restored over, even with --replace: exit 1, one line."""
    h = Harness(tmp_path / "journal")
    car_ins(h, 2)
    dest = tmp_path / "backup"
    assert run(capsys, "backup", str(h.path), str(dest))[0] == 0
    argv = ["restore", "--replace", "--gateway-id", "gw", "--key", str(key_file), str(dest), str(h.path)]
    code, out, err = run(capsys, *argv)
    assert (code, out) == (1, "")
    assert err == f"cpmictl log restore: the journal {h.path} is held by a running gateway; stop it first\n"


def test_restore_without_a_key_says_what_to_give(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no configuration file and no --key, restore fails with one line naming the options."""
    monkeypatch.chdir(tmp_path)
    h = Harness(tmp_path / "journal")
    car_ins(h, 1)
    h.close()
    dest = tmp_path / "backup"
    assert run(capsys, "backup", str(h.path), str(dest))[0] == 0
    code, _, err = run(capsys, "restore", str(dest), str(tmp_path / "r"))
    assert code == 1
    assert err.endswith("(give --config, or --gateway-id and --key)\n")
    assert err.count("\n") == 1
    assert not (tmp_path / "r").exists() or list_segments(tmp_path / "r") == []


def test_help_lists_restore(capsys: pytest.CaptureFixture[str]) -> None:
    """cpmictl log --help names the restore verb beside backup."""
    assert main(["log", "--help"]) == 0
    out = capsys.readouterr().out
    assert "restore" in out and "backup" in out


def test_verify_counts_records_after_the_last_seal_not_the_seqs_skipped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key_file: Path
) -> None:
    """A seal before the restore: verify counts the records after it, not the seqs the restore skipped."""
    key = SigningKey(b"k" * 32)
    h = Harness(tmp_path / "journal")
    car_ins(h, 3)
    seq, chain = h.journal.head
    h.journal.append(SEAL_RECORD, "", "", "", seal_body(key, "gw", seq, chain))
    h.settle()
    h.close()
    dest = tmp_path / "backup"
    assert run(capsys, "backup", str(h.path), str(dest))[0] == 0
    target = tmp_path / "restored"
    argv = ["restore", "--gateway-id", "gw", "--key", str(key_file), str(dest), str(target)]
    assert run(capsys, *argv)[0] == 0
    again = Harness(target)
    car_ins(again, 2, start=10)
    again.close()
    code, out, err = run(capsys, "verify", "--pubkey", public_key_b64(key), str(target))
    assert (code, err) == (0, "")
    assert "journal whole: 7 records, 1 seals" in out
    assert "last seal: #4, over the records up to #3; 3 records after it are covered by the chain only" in out

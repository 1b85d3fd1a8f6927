"""The journal's batch fsyncs in a helper process (`FsyncProcess`): real reactor, real processes."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.logger import globalLogPublisher

from gateway.journal.disk import FsyncThread
from gateway.journal.fsync_child import ANSWER
from gateway.journal.fsync_process import MAX_DEATHS, FsyncProcess, _Helper
from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record
from gateway.journal.writer import Journal, JournalWriteError

reactor: Any = _reactor

FAKE = str(Path(__file__).with_name("fake_fsync_child.py"))
ROOT = Path(__file__).resolve().parents[2]


def fake(*fault: str) -> tuple[str, ...]:
    """The argv of a helper with `fault` (see fake_fsync_child.py)."""
    return (sys.executable, FAKE, *fault)


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (a zombie has ended)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def held_files(pid: int) -> set[str]:
    """The regular files process `pid` holds open."""
    found = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except FileNotFoundError:
            continue
        if target.startswith("/"):
            found.add(target)
    return found


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest.fixture
def errors() -> Iterator[list[str]]:
    """The text of every error or worse logged while the test runs."""
    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_level") is not None and event["log_level"].name in ("error", "critical"):
            from twisted.logger import formatEvent

            seen.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    yield seen
    globalLogPublisher.removeObserver(observe)


def appends(journal: Journal, n: int, kind: str = "a") -> list[Deferred[Record]]:
    return [journal.append(kind, "P001", "carIn", f"o-{i}", {"i": i}) for i in range(n)]


async def batch_fails_with_eio(journal: Journal) -> None:
    """Three appends, each failing with EIO because the helper that owed their fsync is gone."""
    for d in appends(journal, 3, "b"):
        with pytest.raises(JournalWriteError, match="fsync helper ended before answering") as caught:
            await d
        assert caught.value.errno == 5


async def a_fresh_helper_takes_over(
    tmp_path: Path, journal: Journal, stop: Callable[[FsyncProcess], None] = lambda process: None
) -> None:
    """Two records synced, then `stop` (if the helper does not end by itself): the next batch fails
    with EIO and is cut off before anyone was answered, the one after starts a new helper (not the
    thread), the first helper has ended and the journal verifies. Closes `journal`."""
    helper = journal._helper
    assert helper is not None
    try:
        await gatherResults(appends(journal, 2))
        first_pid = helper.pid
        stop(helper)
        await batch_fails_with_eio(journal)
        assert [r.kind for r in read_records(tmp_path)] == ["a", "a"]  # cut off before anyone was answered
        record = await journal.append("c", "", "", "", {})
        assert record.seq == 3 and helper.pid != first_pid and not helper.on_thread
    finally:
        await journal.close()
    assert first_pid is not None and not alive(first_pid)
    assert verify(tmp_path) == 3


@pytest_twisted.ensureDeferred
async def test_always_syncs_batches_in_a_helper_process_that_ends_with_the_journal(tmp_path: Path) -> None:
    """With "always" and the real fsync, a helper holding the segment syncs the batches; close ends it."""
    journal = Journal.open(tmp_path, reactor=reactor)
    helper = journal._helper
    assert helper is not None and helper.pid is None  # nothing started before the first batch
    seconds: list[float] = []
    journal.fsync_observers.append(seconds.append)
    for _ in range(5):
        await gatherResults(appends(journal, 10))
    pid = helper.pid
    assert pid is not None and alive(pid) and not helper.on_thread
    assert Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[3].endswith(b"fsync_child.py")
    assert str(tmp_path / "00000000000000000001.jsonl") in held_files(pid)
    assert len(seconds) == 5 and all(0 <= s < 5 for s in seconds)
    await journal.close()
    assert not alive(pid)
    assert verify(tmp_path) == 50


@pytest_twisted.ensureDeferred
async def test_the_helper_follows_rotation_and_holds_only_the_newest_segment(tmp_path: Path) -> None:
    """Each new segment's descriptor is handed over before its first sync; the helper lets the old one go."""
    journal = Journal.open(tmp_path, reactor=reactor, segment_bytes=600)
    try:
        for i in range(12):
            await journal.append("a", "P001", "carIn", f"o-{i}", {"i": i, "pad": "x" * 100})
        segments = sorted(tmp_path.glob("*.jsonl"))
        assert len(segments) > 3
        pid = journal._helper.pid  # type: ignore[union-attr]
        assert pid is not None
        assert {f for f in held_files(pid) if f.endswith(".jsonl")} == {str(segments[-1])}
    finally:
        await journal.close()
    assert verify(tmp_path) == 12


@pytest_twisted.ensureDeferred
async def test_an_errno_from_the_helper_fails_the_batch_and_cuts_it_off(tmp_path: Path) -> None:
    """The helper's EIO fails the batch like a failed fsync: cut off the file; the next batch goes on."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("eio", "2"))
    try:
        await gatherResults(appends(journal, 3))
        failing = appends(journal, 4, "b")
        for d in failing:
            with pytest.raises(JournalWriteError) as caught:
                await d
            assert caught.value.errno == 5
        record = await journal.append("c", "", "", "", {})
        assert record.seq == 4
    finally:
        await journal.close()
    assert [r.kind for r in read_records(tmp_path)] == ["a"] * 3 + ["c"]
    assert verify(tmp_path) == 4


@pytest_twisted.ensureDeferred
async def test_a_helper_dying_mid_batch_fails_it_and_a_fresh_helper_takes_the_next(
    tmp_path: Path, errors: list[str]
) -> None:
    """A helper ending before it answers fails the batch (never acknowledged); the next starts a new helper.

    Its fsync may have run and failed: the error is reported once per open file,
    which the journal shares with the helper, so a retry could wrongly succeed.
    """
    await a_fresh_helper_takes_over(
        tmp_path, Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("die", "2"))
    )
    assert any("unanswered" in e for e in errors)


@pytest_twisted.ensureDeferred
async def test_a_request_that_cannot_be_sent_fails_its_batch_and_a_fresh_helper_takes_the_next(
    tmp_path: Path, errors: list[str]
) -> None:
    """A batch whose request cannot be sent to the helper (its socket shut) fails with EIO and is cut off.

    The request goes out on the socket at once, not through a transport; a
    send that fails is the helper's end as far as the journal knows, so the
    batch is never acknowledged, the helper is ended and the next batch starts
    another.
    """

    def shut(process: FsyncProcess) -> None:
        assert process._helper is not None and process._helper.socket is not None
        process._helper.socket.shutdown(socket.SHUT_WR)  # the next send fails (EPIPE)

    # The first helper ends too: it reads the end of its socket.
    await a_fresh_helper_takes_over(tmp_path, Journal.open(tmp_path, reactor=reactor), shut)
    assert any("could not send it a request" in e for e in errors)


@pytest_twisted.ensureDeferred
async def test_a_helper_gone_unread_after_an_fsync_is_not_taken_for_one_that_never_started(
    tmp_path: Path, errors: list[str]
) -> None:
    """A send failing on a helper that synced and died before the reactor read it: EIO, no thread retry.

    Its greeting is still unread in the socket when the next request fails to
    go out. Taken for a helper that never got ready, its fsyncs would be run
    again on the thread, which could report success for a writeback error
    the helper's fsync consumed; what it said is read first, so they fail.
    """
    thread = FsyncThread(reactor)
    process = FsyncProcess(reactor, thread, argv=fake("die", "1"))
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        first = process.sync(fd)  # it syncs this one, then exits unanswered
        pid = process.pid
        assert pid is not None
        deadline = time.monotonic() + 10
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.01)  # the reactor does not run: nothing of the helper is read yet
        assert not alive(pid)
        second = process.sync(fd)  # the send fails: the helper's end is closed
        for d in (first, second):
            with pytest.raises(OSError, match="fsync helper ended before answering"):
                await d
        assert not thread.started  # nothing was run again on the thread
        assert any("could not send it a request" in e for e in errors)
    finally:
        await process.stop()
        os.close(fd)
        thread.stop()


def test_answers_read_together_stop_at_a_helper_dropped_by_the_first(errors: list[str]) -> None:
    """Two answers in one read, the first dropping the helper: the second batch fails, no stray answer."""
    thread = FsyncThread(reactor)
    process = FsyncProcess(reactor, thread)
    helper = _Helper()
    helper.ready = helper.process_ended = True
    first: Deferred[float] = Deferred()
    second: Deferred[float] = Deferred()
    helper.pending.extend([(9, first), (9, second)])
    seen: list[float] = []
    first.addCallback(lambda seconds: (seen.append(seconds), process._drop(helper)))
    failures: list[BaseException] = []
    second.addErrback(lambda f: failures.append(f.value))
    process._received(helper, ANSWER.pack(0, 0.25) * 2)
    assert seen == [0.25]
    assert len(failures) == 1 and "ended before answering" in str(failures[0])
    assert not any("nobody asked for" in e for e in errors)


@pytest_twisted.ensureDeferred
async def test_after_too_many_helper_deaths_the_thread_syncs(tmp_path: Path, errors: list[str]) -> None:
    """Once MAX_DEATHS helpers ended with a batch unanswered, it syncs on its thread (logged once)."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("die", "1"))
    helper = journal._helper
    assert helper is not None
    try:
        for _ in range(MAX_DEATHS):
            with pytest.raises(JournalWriteError):
                await journal.append("a", "", "", "", {})
        assert helper.on_thread
        pid = helper.pid
        assert (await journal.append("b", "", "", "", {})).seq == 1
        assert helper.pid == pid  # no new helper
    finally:
        await journal.close()
    assert sum("thread from now on" in e for e in errors) == 1
    assert [r.kind for r in read_records(tmp_path)] == ["b"]


@pytest.mark.parametrize("argv", [fake("noready"), ("/nonexistent/python3", "-I")])
@pytest_twisted.ensureDeferred
async def test_a_helper_that_cannot_start_leaves_the_syncs_to_the_thread(
    tmp_path: Path, errors: list[str], argv: tuple[str, ...]
) -> None:
    """A helper that never got ready ran no fsync: the thread syncs its batch instead, and all later ones."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=argv)
    helper = journal._helper
    assert helper is not None
    try:
        assert [r.seq for r in await gatherResults(appends(journal, 5))] == [1, 2, 3, 4, 5]
        assert helper.on_thread
        assert (await journal.append("b", "", "", "", {})).seq == 6
    finally:
        await journal.close()
    assert sum("thread from now on" in e for e in errors) == 1
    assert verify(tmp_path) == 6


@pytest_twisted.ensureDeferred
async def test_appends_during_a_slow_helper_wait_and_nothing_is_acknowledged_early(tmp_path: Path) -> None:
    """While the helper's fsync runs, nothing of the batch fires; later appends gather into one next batch."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("slow", "0.3"))
    seconds: list[float] = []
    journal.fsync_observers.append(seconds.append)
    fired: list[int] = []
    try:
        first = [d.addCallback(lambda r: fired.append(r.seq) or r) for d in appends(journal, 3)]
        await sleep(0.1)
        second = [d.addCallback(lambda r: fired.append(r.seq) or r) for d in appends(journal, 4)]
        await sleep(0.05)
        assert fired == []
        await gatherResults(first + second)
        assert fired == list(range(1, 8))
        assert len(seconds) == 2 and all(s >= 0.3 for s in seconds)  # two batches: 3, then 4
    finally:
        await journal.close()


@pytest_twisted.ensureDeferred
async def test_close_during_a_helper_fsync_waits_for_it_then_ends_the_helper(tmp_path: Path) -> None:
    """Closing while the helper syncs a batch acknowledges the batch, then syncs, then ends the helper."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("slow", "0.3"))
    batch = appends(journal, 3)
    await sleep(0.1)
    pid = journal._helper.pid  # type: ignore[union-attr]
    assert pid is not None and alive(pid)
    closed = journal.close()
    late = journal.append("late", "", "", "", {})
    with pytest.raises(JournalWriteError, match="closed"):
        await late
    await closed
    assert all(d.called for d in batch)
    assert [r.seq for r in await gatherResults(batch)] == [1, 2, 3]
    assert not alive(pid)
    assert verify(tmp_path) == 3


@pytest_twisted.ensureDeferred
async def test_rotation_waits_for_the_helper_fsync_then_hands_over_the_new_segment(tmp_path: Path) -> None:
    """A batch needing a new segment waits for the helper's fsync; then the new segment is handed over."""
    journal = Journal.open(tmp_path, reactor=reactor, fsync_helper=fake("slow", "0.2"), segment_bytes=400)
    try:
        first = appends(journal, 2)
        await sleep(0.05)
        second = [journal.append("b", "", "", "", {"pad": "y" * 200}) for _ in range(2)]
        await gatherResults(first + second)
        segments = sorted(tmp_path.glob("*.jsonl"))
        assert len(segments) >= 2
        pid = journal._helper.pid  # type: ignore[union-attr]
        assert pid is not None
        assert {f for f in held_files(pid) if f.endswith(".jsonl")} == {str(segments[-1])}
    finally:
        await journal.close()
    assert verify(tmp_path) == 4


@pytest_twisted.ensureDeferred
async def test_stop_kills_a_helper_that_does_not_end(tmp_path: Path) -> None:
    """A helper that does not end when its socket closes is killed after the grace period."""
    thread = FsyncThread(reactor)
    process = FsyncProcess(reactor, thread, argv=fake("deaf"), stop_grace=0.2)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT)
    try:
        unanswered = process.sync(fd)
        await sleep(0.3)
        pid = process.pid
        assert pid is not None and alive(pid)
        started = time.monotonic()
        await process.stop()
        assert 0.1 < time.monotonic() - started < 5 and not alive(pid)
        with pytest.raises(OSError, match="fsync helper ended before answering"):
            await unanswered
    finally:
        os.close(fd)
        thread.stop()


def test_the_helper_ends_when_the_gateway_dies(tmp_path: Path) -> None:
    """A gateway killed without closing its journal leaves no helper behind: it ends on its socket's end."""
    script = textwrap.dedent(
        f"""
        import os, sys
        from twisted.internet import reactor
        from gateway.journal.writer import Journal
        journal = Journal.open({str(tmp_path)!r}, reactor=reactor)
        def appended(record):
            print(journal._helper.pid, flush=True)
            os.kill(os.getpid(), 9)
        reactor.callWhenRunning(lambda: journal.append("a", "", "", "", {{}}).addCallback(appended))
        reactor.run()
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", script], env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, timeout=60
    )
    assert result.returncode == -9
    pid = int(result.stdout)
    deadline = time.monotonic() + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not alive(pid)
    assert verify(tmp_path) == 1

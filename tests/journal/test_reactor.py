"""The journal under the real reactor, with its own fsync thread."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor as _reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater

from gateway.journal.reader import read_records, verify
from gateway.journal.record import Record
from gateway.journal.writer import Journal
from tests.journal.helpers import Disk

reactor: Any = _reactor


def open_journal(path: Path, disk: Disk, **options: Any) -> Journal:
    options.setdefault("os_fsync", disk.fsync)
    journal = Journal.open(path, reactor=reactor, os_write=disk.write, os_ftruncate=disk.ftruncate, **options)
    disk.reset()
    return journal


async def turn() -> None:
    """Let the reactor go round once."""
    await deferLater(reactor, 0, lambda: None)


@pytest_twisted.ensureDeferred
async def test_one_turn_one_write_one_fsync(tmp_path: Path) -> None:
    """100 appends in one turn are written by one os.write and synced by one fsync, in a thread."""
    disk = Disk(real_fsync=True)
    journal = open_journal(tmp_path, disk)
    fsyncs_seen: list[int] = []

    def seen(record: Record) -> Record:
        fsyncs_seen.append(len(disk.fsyncs))
        return record

    ds = [journal.append("uplink", "P001", "carIn", f"o-{i}", {"i": i}).addCallback(seen) for i in range(100)]
    records = await gatherResults(ds)
    assert [r.seq for r in records] == list(range(1, 101))
    assert len(disk.writes) == 1 and len(disk.fsyncs) == 1
    assert set(fsyncs_seen) == {1}  # none fired before the fsync
    await journal.close()
    assert verify(tmp_path) == 100


@pytest_twisted.ensureDeferred
async def test_appends_during_a_slow_fsync_form_one_batch(tmp_path: Path) -> None:
    """While an fsync is in flight, appends of several turns wait and share the next batch."""
    release = threading.Event()
    entered: Deferred[None] = Deferred()
    disk = Disk(real_fsync=True)

    armed = False

    def slow_fsync(fd: int) -> None:
        if armed and not entered.called:
            reactor.callFromThread(entered.callback, None)
            release.wait(10)
        disk.fsync(fd)

    journal = open_journal(tmp_path, disk, os_fsync=slow_fsync)
    armed = True
    fired: list[int] = []
    first = [journal.append("a", "", "", "", i) for i in range(10)]
    await entered
    second = []
    for _ in range(5):
        second += [journal.append("b", "", "", "", i) for i in range(4)]
        await turn()

    def seen(record: Record) -> Record:
        fired.append(record.seq)
        return record

    for d in first + second:
        d.addCallback(seen)
    assert fired == [] and len(disk.writes) == 1
    release.set()
    await gatherResults(first + second)
    assert fired == list(range(1, 31))
    assert len(disk.writes) == 2 and len(disk.fsyncs) == 2
    await journal.close()


@pytest_twisted.ensureDeferred
async def test_never_mode_fires_without_fsync(tmp_path: Path) -> None:
    """fsync="never": records are acknowledged once written, with no fsync."""
    disk = Disk()
    journal = open_journal(tmp_path, disk, fsync="never")
    await gatherResults([journal.append("a", "", "", "", i) for i in range(20)])
    assert disk.fsyncs == [] and len(disk.writes) == 1
    await journal.close()
    assert len(disk.fsyncs) == 1  # close syncs


@pytest_twisted.ensureDeferred
async def test_interval_mode_fsyncs_on_a_timer(tmp_path: Path) -> None:
    """fsync="interval": acknowledged once written; an fsync follows within the interval."""
    disk = Disk()
    journal = open_journal(tmp_path, disk, fsync="interval", interval=0.05)
    await journal.append("a", "", "", "", 1)
    assert disk.fsyncs == []
    await deferLater(reactor, 0.2, lambda: None)
    assert len(disk.fsyncs) == 1
    await journal.close()


@pytest_twisted.ensureDeferred
async def test_shutdown_trigger_is_registered_and_removed(tmp_path: Path) -> None:
    """The journal closes itself before reactor shutdown, unless closed first."""
    journal = open_journal(tmp_path, Disk())
    before = reactor._eventTriggers["shutdown"].before
    assert any(getattr(t[0], "__self__", None) is journal for t in before)
    await journal.append("a", "", "", "", 1)
    await journal.close()
    assert not any(getattr(t[0], "__self__", None) is journal for t in before)
    assert [r.seq for r in read_records(tmp_path)] == [1]

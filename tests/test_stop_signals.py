"""SIGTERM stops the gateway even when it lands inside a write to the log file (StopSignals)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactor

from gateway.reload import StopSignals
from tests.ports import free_port
from tests.processes import ROOT, kill, start_twistd, wait_for_answer
from tests.test_reload_end_to_end import lot_entry, write
from twisted import version as twisted_version

# A reactor logging to a LogFile, as twistd's does; SIGTERM arrives while the file's lock is
# in the state an interrupted `write` leaves it in (its inner lock taken, no owner recorded yet).
SCRIPT = """
import os, signal, sys
from twisted.internet import reactor
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.python.logfile import LogFile
from gateway.reload import StopSignals

file = LogFile.fromFullPath(sys.argv[1])
globalLogBeginner.beginLoggingTo([textFileLogObserver(file)], redirectStandardIO=False)
if sys.argv[2] == "quiet":
    StopSignals(reactor).startService()

def interrupted_inside_a_write():
    file.write("before\\n")
    inner = file._threadable_lock._block
    inner.acquire()
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(1000):  # the handler runs at one of these bytecodes, the lock still taken
        pass
    inner.release()

reactor.callWhenRunning(interrupted_inside_a_write)
reactor.run()
"""


def _stop_inside_a_write(tmp_path: Path, mode: str, timeout: float) -> tuple[bool, str]:
    """Run SCRIPT: (whether it stopped within `timeout` s, its log)."""
    log = tmp_path / "twistd.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(log), mode],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process.wait(timeout)
        stopped = True
    except subprocess.TimeoutExpired:
        stopped = False
    finally:
        kill(process)
    return stopped, log.read_text(encoding="utf-8") if log.exists() else ""


def test_sigterm_inside_a_log_write_stops_the_reactor(tmp_path: Path) -> None:
    """With StopSignals, a SIGTERM handled while the log file's lock is half taken returns at once;
    the reactor then logs "Received SIGTERM" from its loop and stops."""
    stopped, log = _stop_inside_a_write(tmp_path, "quiet", 30)
    assert stopped
    assert "Received SIGTERM, shutting down." in log


def test_twisteds_own_handler_hangs_there(tmp_path: Path) -> None:
    """The hazard StopSignals removes, as upstream behaviour: Twisted's own handler logs from the
    signal handler, and waits for ever on the lock the interrupted write holds.

    This documents Twisted, not the gateway: the day Twisted stops logging there, the reproduction
    no longer hangs and the test is skipped, saying that StopSignals can go. That StopSignals works
    is the hard test above.
    """
    stopped, log = _stop_inside_a_write(tmp_path, "twisted", 3)
    if stopped and "Received SIGTERM" in log:
        pytest.skip(
            f"Twisted {twisted_version.short()} no longer hangs on a SIGTERM inside a log write: "
            "the hazard is fixed upstream, and gateway.reload.StopSignals can go"
        )
    assert not stopped, (
        f"the reproduction exited without handling SIGTERM (has Twisted changed LogFile?): {log}"
    )
    assert "Received SIGTERM" not in log


class _Reactor(MemoryReactor):
    """A MemoryReactor with the reactor's signal handlers and a callFromThread that only records."""

    def __init__(self) -> None:
        super().__init__()
        self.queued: list[tuple[Any, tuple[Any, ...]]] = []
        self.handled: list[int] = []

    def callFromThread(self, f: Any, *args: Any, **kwargs: Any) -> None:
        self.queued.append((f, args))

    def sigTerm(self, number: int, frame: object = None) -> None:
        self.handled.append(number)

    def sigInt(self, number: int, frame: object = None) -> None:
        self.handled.append(number)


@pytest.fixture
def saved_handlers() -> Any:
    """SIGTERM's and SIGINT's handlers as they were, put back after the test."""
    before = {signum: signal.getsignal(signum) for signum in StopSignals.SIGNALS}
    yield before
    for signum, handler in before.items():
        signal.signal(signum, handler)


def test_the_reactors_handlers_are_queued_not_run(saved_handlers: Any) -> None:
    """Once the reactor runs, SIGTERM and SIGINT only queue its own handler (run later by the loop);
    after shutdown its handlers are back; a handler that is not the reactor's is left alone."""
    reactor = _Reactor()
    signal.signal(signal.SIGTERM, reactor.sigTerm)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    service = StopSignals(reactor)
    service.startService()
    assert signal.getsignal(signal.SIGTERM) == reactor.sigTerm  # nothing before the reactor runs
    [take] = reactor.whenRunningHooks
    take[0](*take[1], **take[2])
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    signal.getsignal(signal.SIGTERM)(signal.SIGTERM, None)  # type: ignore[operator]
    assert reactor.handled == []
    [(handler, args)] = reactor.queued
    handler(*args)
    assert reactor.handled == [signal.SIGTERM]
    [give_back] = reactor.triggers["after"]["shutdown"]
    give_back[0](*give_back[1], **give_back[2])
    assert signal.getsignal(signal.SIGTERM) == reactor.sigTerm


def test_twistd_stops_on_sigterm_with_the_signal_queued(tmp_path: Path) -> None:
    """A running twistd gateway, sent SIGTERM, logs it from the reactor's loop, stops, and exits
    by that signal as twistd does (the reactor's exit signal is still recorded)."""
    ports = {name: free_port() for name in ("uplink", "downlink", "api")}
    config = tmp_path / "gateway.toml"
    write(config, tmp_path, ports, lot_entry("P1", "lot1"))
    process = start_twistd(tmp_path, str(config))
    try:
        wait_for_answer(ports["api"], process)  # a SIGTERM before `reactor.run` kills at once, unlogged
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == -signal.SIGTERM
    finally:
        kill(process)
        assert process.stderr is not None
        process.stderr.close()
    log = (tmp_path / "twistd.log").read_text(encoding="utf-8")
    assert "Received SIGTERM, shutting down." in log
    assert "Main loop terminated." in log

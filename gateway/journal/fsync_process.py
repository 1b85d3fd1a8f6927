"""
The journal's batch fsyncs, run by a helper process (``gateway.journal.fsync_child``).

Why a process: the journal used to run each batch's ``fsync`` on a thread of
its own (``FsyncThread``). The disk syncs a few KiB in 0.16-0.20 ms, but under
load the thread took about 1 ms a batch, because once ``fsync`` returned it had
to win the interpreter's lock back from a busy reactor (which hands it over
only every switch interval, 5 ms by default) before anyone learned the batch
was durable. A helper process has no lock to share: its answer is a few bytes
of socket input, read by the reactor like any other.

What the journal keeps: nothing is acknowledged before an fsync of it
returned success. The rules for a helper that fails:

- it answers an errno: the batch's fsync failed, exactly as if ``os.fsync``
  had raised it (the journal cuts the batch off and fails its records);
- it ends before answering a batch: the batch fails with ``EIO``. Its fsync
  may have run and even failed, and Linux reports a writeback error once to
  each open file: the helper had the same open file as the journal (the
  descriptor was passed, not reopened), so an fsync retried by another helper
  or thread could return success for data that never reached the disk. Failing
  the batch is the one safe answer; the journal cuts it off the file. The
  next batch starts a fresh helper; after :data:`MAX_DEATHS` helpers ended
  so, the journal uses its thread for good;
- a request cannot be sent to it (its socket is closed or full): it is
  dropped as if it had ended, and the batches it owes fail with ``EIO``;
- it cannot be started, or ends before saying it is ready: it never ran an
  fsync, so the batches given to it go to the thread instead (nothing was
  consumed), and every later one too; logged once.

The reactor talks to the helper on the bare socket, not through a Twisted
transport: a batch's request is one ``send`` (``sendmsg`` with the descriptor
for a new segment) made at once, and its answer one ``recv`` when the socket
is readable. A transport buffered each byte until the next turn of the loop,
waited for a write event, and registered and unregistered it with epoll
around the write; on a reactor that is the gateway's bottleneck, that cost
showed in every durable answer (docs/benchmarks.md, 2026-12-06).

:meth:`FsyncProcess.stop` closes the socket (the helper ends when it sees the
end of it, as it does when the gateway dies) and kills a helper still running
after :data:`STOP_GRACE` seconds.
"""

from __future__ import annotations

import array
import errno as errno_codes
import os
import socket
import sys
from collections import deque
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ProcessExitedAlready
from twisted.internet.interfaces import IReactorFDSet, IReactorProcess, IReadDescriptor
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from gateway.journal.disk import JournalReactor, RunBlocking, timed_fsync
from gateway.journal.fsync_child import ANSWER, HELLO, SOCKET_FD

__all__ = ["CHILD_ARGV", "MAX_DEATHS", "STOP_GRACE", "FsyncProcess"]

_log = Logger()

# -I: no environment, no user site, not even the script's folder; -S: no site
# module. The helper needs the standard library only and starts in a few ms.
CHILD_ARGV = (sys.executable, "-I", "-S", str(Path(__file__).with_name("fsync_child.py")))
MAX_DEATHS = 3
STOP_GRACE = 5.0

_HANDOVER = b"FS"  # this segment from now on, then sync it
_SYNC = b"S"
_HANDOVER_LEVEL = (socket.SOL_SOCKET, socket.SCM_RIGHTS)


class _Helper:
    """One helper process: its process transport, our end of its socket and the fsyncs it owes."""

    def __init__(self) -> None:
        self.process: Any = None
        self.socket: socket.socket | None = None
        self.reader: _HelperReader | None = None
        self.ready = False
        self.buffer = b""
        self.segment: int | None = None  # the journal's fd the helper holds a copy of
        self.pending: deque[tuple[int, Deferred[float]]] = deque()
        self.ended: Deferred[None] = Deferred()
        self.socket_lost = False
        self.process_ended = False
        self.kill_call: Any = None


@implementer(IReadDescriptor)
class _HelperReader:
    """The gateway's end of the helper's socket as the reactor reads it: answers in, end of stream.

    Not a transport: a batch's request is one ``send`` on the socket at once
    (see :meth:`FsyncProcess.sync`), and an answer is one ``recv``, so that a
    batch costs the reactor neither a write buffer, nor a write event, nor
    the ``epoll_ctl`` calls around it.
    """

    def __init__(self, owner: FsyncProcess, helper: _Helper, sock: socket.socket) -> None:
        self._owner = owner
        self._helper = helper
        self._recv = sock.recv
        self._fileno = sock.fileno()

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "fsync-helper"

    # The reactor takes the exception itself, as TCP's doRead returns it (the interface says Failure).
    def doRead(self) -> BaseException | None:  # type: ignore[override]
        try:
            data = self._recv(4096)
        except (BlockingIOError, InterruptedError):
            return None
        except OSError as e:
            return e
        if not data:
            return ConnectionDone()
        self._owner._received(self._helper, data)
        return None

    def connectionLost(self, reason: Failure) -> None:
        self._owner._drop(self._helper)


class _HelperProcessProtocol(ProcessProtocol):
    """The helper as a process: what it says on stderr, and its end."""

    def __init__(self, owner: FsyncProcess, helper: _Helper) -> None:
        self._owner = owner
        self._helper = helper

    def outReceived(self, data: bytes) -> None:
        self.errReceived(data)

    def errReceived(self, data: bytes) -> None:
        for line in data.decode("utf-8", "replace").splitlines():
            _log.warn("journal fsync helper: {line}", line=line)

    def processEnded(self, reason: Failure) -> None:
        self._owner._process_ended(self._helper, reason)


class FsyncProcess:
    """Runs the journal's batch fsyncs in a helper process; falls back to ``fallback`` (its thread).

    All methods are called in the reactor thread. The helper starts with the
    first :meth:`sync`, so a journal whose reactor never runs leaves no
    process behind.
    """

    def __init__(
        self,
        reactor: JournalReactor,
        fallback: RunBlocking,
        *,
        os_fsync: Callable[[int], None] = os.fsync,
        argv: tuple[str, ...] = CHILD_ARGV,
        stop_grace: float = STOP_GRACE,
    ) -> None:
        self._reactor: Any = reactor
        self._fallback = fallback
        self._os_fsync = os_fsync
        self._argv = argv
        self._stop_grace = stop_grace
        self._helper: _Helper | None = None
        self._deaths = 0
        self._on_thread = not (IReactorProcess.providedBy(reactor) and IReactorFDSet.providedBy(reactor))
        self.pid: int | None = None

    @property
    def on_thread(self) -> bool:
        """Whether fsyncs go to the thread (the helper could not run, or died too often)."""
        return self._on_thread

    def sync(self, fd: int) -> Deferred[float]:
        """fsync the file open as ``fd``: the Deferred fires with the seconds it took, or fails (OSError)."""
        if self._on_thread:
            return self._in_thread(fd)
        helper = self._helper or self._spawn()
        if helper is None:
            return self._in_thread(fd)
        d: Deferred[float] = Deferred()
        helper.pending.append((fd, d))
        sock = helper.socket
        assert sock is not None
        try:
            if helper.segment != fd:
                helper.segment = fd
                sock.sendmsg((_HANDOVER,), ((*_HANDOVER_LEVEL, array.array("i", (fd,))),))
            else:
                sock.send(_SYNC)
        except OSError as e:
            # Not sent (the helper ended, or stopped reading: a request is one byte and
            # at most one batch is in flight, so its buffer never fills otherwise). What
            # was sent before may have been synced or not: the helper is dropped, and
            # every fsync it owes, this one included, fails as when it ends unanswered.
            _log.error("journal fsync helper: could not send it a request ({error})", error=e)
            self._drain(helper)
            self._drop(helper)
        return d

    def forget(self, fd: int) -> None:
        """The journal is about to close ``fd``: the next sync of that number is another file."""
        if self._helper is not None and self._helper.segment == fd:
            self._helper.segment = None

    def stop(self) -> Deferred[None]:
        """End the helper (fires once it has ended); any fsync it still owes fails."""
        helper, self._helper = self._helper, None
        self._on_thread = True  # a sync after stop does not start another
        if helper is None or helper.process_ended:
            return succeed(None)
        self._drop(helper)
        if helper.kill_call is None:
            helper.kill_call = self._reactor.callLater(self._stop_grace, self._kill, helper)
        return helper.ended

    # -- the helper's life

    def _in_thread(self, fd: int) -> Deferred[float]:
        return self._fallback(partial(timed_fsync, self._os_fsync, fd))

    def _spawn(self) -> _Helper | None:
        helper = _Helper()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            helper.process = self._reactor.spawnProcess(
                _HelperProcessProtocol(self, helper),
                self._argv[0],
                list(self._argv),
                env={},
                childFDs={0: "w", 1: "r", 2: "r", SOCKET_FD: theirs.fileno()},
            )
            ours.setblocking(False)
            helper.reader = _HelperReader(self, helper, ours)
            helper.socket = ours
            self._reactor.addReader(helper.reader)
        except Exception as e:
            self._give_up(f"could not start it ({e})")
            if helper.process is not None:
                self._kill(helper)
            ours.close()
            return None
        finally:
            theirs.close()
        self.pid = helper.process.pid
        helper.process.closeStdin()
        self._helper = helper
        return helper

    def _received(self, helper: _Helper, data: bytes) -> None:
        buffer = helper.buffer + data
        if not helper.ready:
            if len(buffer) < len(HELLO):
                helper.buffer = buffer
                return
            if buffer[: len(HELLO)] != HELLO:
                _log.error("journal fsync helper: unexpected greeting {data!r}", data=buffer[:32])
                helper.buffer = b""
                self._drop(helper)
                return
            helper.ready = True
            buffer = buffer[len(HELLO) :]
        size = ANSWER.size
        end = len(buffer) - len(buffer) % size
        helper.buffer = buffer[end:]
        answers = [ANSWER.unpack_from(buffer, at) for at in range(0, end, size)]
        for error, seconds in answers:
            if helper.socket_lost:  # dropped by whoever an answer called back
                return
            if not helper.pending:
                _log.error("journal fsync helper: an answer nobody asked for")
                self._drop(helper)
                return
            _, d = helper.pending.popleft()
            if error == 0:
                d.callback(seconds)
            else:
                d.errback(OSError(error, os.strerror(error)))

    def _drain(self, helper: _Helper) -> None:
        """Take in what the helper said before it went (its greeting, answers), as a read would have."""
        sock = helper.socket
        while sock is not None and not helper.socket_lost:
            try:
                data = sock.recv(4096)
            except OSError:
                return
            if not data:
                return
            self._received(helper, data)

    def _drop(self, helper: _Helper) -> None:
        """Close our end of the helper's socket (the helper ends on it) and settle what it owes."""
        if helper.socket_lost:
            return
        if helper.reader is not None:
            self._reactor.removeReader(helper.reader)
        if helper.socket is not None:
            helper.socket.close()
        self._socket_lost(helper)

    def _socket_lost(self, helper: _Helper) -> None:
        helper.socket_lost = True
        if self._helper is helper:
            self._helper = None
        pending = list(helper.pending)
        helper.pending.clear()
        if not helper.process_ended:
            # The helper closed its end while running (or sent garbage): it is of no more use.
            if helper.kill_call is None:
                helper.kill_call = self._reactor.callLater(self._stop_grace, self._kill, helper)
        if not helper.ready:
            if not self._on_thread:
                self._give_up("it ended before it was ready")
            for fd, d in pending:
                self._in_thread(fd).chainDeferred(d)
            return
        if not pending:
            return
        self._deaths += 1
        _log.error("journal fsync helper ended with {n} fsync(s) unanswered; failing them", n=len(pending))
        if self._deaths >= MAX_DEATHS and not self._on_thread:
            self._give_up(f"{self._deaths} helpers ended with fsyncs unanswered")
        for _, d in pending:
            d.errback(OSError(errno_codes.EIO, "the fsync helper ended before answering"))

    def _process_ended(self, helper: _Helper, reason: Failure) -> None:
        helper.process_ended = True
        if helper.kill_call is not None and helper.kill_call.active():
            helper.kill_call.cancel()
        helper.ended.callback(None)

    def _kill(self, helper: _Helper) -> None:
        helper.kill_call = None
        try:
            helper.process.signalProcess("KILL")
        except ProcessExitedAlready:
            pass

    def _give_up(self, why: str) -> None:
        self._on_thread = True
        _log.error("journal fsync helper: {why}; the journal fsyncs on its thread from now on", why=why)

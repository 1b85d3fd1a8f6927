"""The worker process's side of `gateway.lots.workers`: jobs in on stdin, outcomes out on stdout.

A job is `JOB_HEAD` (the lengths of its meta and its body), the meta (a
marshalled tuple) and the body (bytes); an outcome is `OUTCOME_HEAD` and a
marshalled tuple. A worker first does whatever makes it ready (the password
worker's decoy check), then writes `READY`, then answers each job in turn
until its stdin ends. `gateway.lots.bodies` and `gateway.lots.passwordworker`
are the two workers.

This module imports nothing of Twisted, so that a worker starts quickly.
"""

from __future__ import annotations

import ctypes
import marshal
import os
import signal
import struct
import sys
import traceback
from collections.abc import Callable
from typing import Any, BinaryIO

__all__ = ["JOB_HEAD", "OUTCOME_HEAD", "READY", "Outcome", "frame", "run", "serve"]

JOB_HEAD = struct.Struct(">II")
"""A job's head on the worker's stdin: the length of its marshalled meta, then of its body."""
OUTCOME_HEAD = struct.Struct(">I")
"""An outcome's head on the worker's stdout: the length of the marshalled outcome that follows."""

Outcome = tuple[Any, ...]
Handle = Callable[[Any, bytes], Outcome]
"""What a worker does with one job: `handle(meta, body)`, its outcome (plain, marshallable values)."""

READY: Outcome = ("ready",)
"""The first outcome a worker writes: it is ready for jobs."""

_PR_SET_PDEATHSIG = 1  # prctl(2)


def frame(outcome: Outcome) -> bytes:
    """`outcome` as the worker writes it: its head and its marshalled form."""
    answer = marshal.dumps(outcome)
    return OUTCOME_HEAD.pack(len(answer)) + answer


def _read(stream: BinaryIO, size: int) -> bytes | None:
    """Exactly `size` bytes of `stream`, or None at its end."""
    chunks = []
    while size:
        chunk = stream.read(size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def serve(stdin: BinaryIO, stdout: BinaryIO, handle: Handle, fault: Callable[[], str] | None = None) -> None:
    """The worker's loop: a job in, its outcome out, until stdin ends (a job cut short included).

    An exception of `handle` is answered `("fault", fault())`: by default the
    traceback cut to 2,000 characters; a worker whose jobs hold secrets gives
    a `fault` that names the error alone.
    """
    while True:
        head = _read(stdin, JOB_HEAD.size)
        if head is None:
            return
        meta_size, body_size = JOB_HEAD.unpack(head)
        meta, body = _read(stdin, meta_size), _read(stdin, body_size)
        if meta is None or body is None:
            return
        try:
            outcome = handle(marshal.loads(meta), body)
        except Exception:
            outcome = ("fault", fault() if fault is not None else traceback.format_exc()[-2000:])
        del body
        stdout.write(frame(outcome))
        stdout.flush()


def die_with_parent() -> bool:
    """Ask Linux to kill this process when its parent (the gateway) ends, however it ends.

    The closed stdin ends the loop too, but only once the job under way is
    done; this also covers a gateway killed with -9. False where it cannot be
    had (not Linux): the closed stdin is then what ends the worker.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def run(handle: Handle, niceness: int, warm: Callable[[], None] | None = None, **options: Any) -> None:
    """A worker's main: nicer by `niceness`, dying with its parent; `warm()`, READY, then serve."""
    os.nice(niceness)
    die_with_parent()
    if os.getppid() == 1:
        return  # the gateway ended before the request to follow it took hold
    if warm is not None:
        warm()
    stdout = sys.stdout.buffer
    stdout.write(frame(READY))
    stdout.flush()
    serve(sys.stdin.buffer, stdout, handle, **options)

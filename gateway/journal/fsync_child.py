"""
The journal's fsync helper: a small process that runs ``fsync`` for the gateway.

The gateway writes a batch into its segment itself and asks this process to
sync it. ``fsync`` on any descriptor of a file flushes that file's data (the
kernel syncs the inode, not the descriptor), so the gateway hands over its
segment's descriptor once per segment (``SCM_RIGHTS``) and then one byte per
batch. A thread in the gateway could do the same, but once its ``fsync``
returned it would have to take back the interpreter's lock from a busy reactor
before the reactor learned of it: a process shares no lock, and its answer is
ordinary socket input.

Run as a script (``python -I -S fsync_child.py``: the standard library only,
so that it starts in a few milliseconds), with its end of a UNIX stream
socket as descriptor 3. What travels on it:

- to the child, ``F`` with a descriptor attached: from now on sync that file
  (the one held before is closed); ``S``: fsync the file held now and answer.
- to the gateway, first :data:`HELLO` once the child is ready, then one
  :data:`ANSWER` per ``S`` in order: the errno (0 when the fsync succeeded)
  and the seconds the call took.

The child ends when the gateway's end closes (the gateway stopped, or died: the
kernel closes its descriptors). It ignores SIGINT, SIGTERM and SIGHUP, which a
terminal or a service manager sends to the whole process group: the gateway
stops it once the journal no longer needs it, after the last batch it syncs.
"""

from __future__ import annotations

import array
import os
import signal
import socket
import struct
import sys
import time

__all__ = ["ANSWER", "HELLO", "SOCKET_FD", "main"]

SOCKET_FD = 3
HELLO = b"FSYNC/1\n"
ANSWER = struct.Struct("<id")  # errno (0: synced), seconds the fsync took
_FDS_SPACE = socket.CMSG_SPACE(16 * array.array("i").itemsize)


def main() -> int:
    """Serve the gateway on descriptor 3 until it closes its end."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_IGN)
    sock = socket.socket(fileno=SOCKET_FD)
    received: list[int] = []
    current = -1
    sock.sendall(HELLO)
    while True:
        data, ancillary, _, _ = sock.recvmsg(4096, _FDS_SPACE)
        if not data:
            return 0
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
                received.extend(fds)
        answers = []
        for op in data:
            if op == 0x46:  # "F": sync this file from now on
                if current >= 0:
                    os.close(current)
                current = received.pop(0) if received else -1
            elif op == 0x53:  # "S"
                start = time.perf_counter()
                try:
                    if current < 0:
                        raise OSError(9, "no segment was handed over")
                    os.fsync(current)
                except OSError as e:
                    answers.append(ANSWER.pack(e.errno or 5, time.perf_counter() - start))
                else:
                    answers.append(ANSWER.pack(0, time.perf_counter() - start))
            else:
                sys.stderr.write(f"fsync helper: unknown request {op!r}\n")
                return 2
        if answers:
            sock.sendall(b"".join(answers))


if __name__ == "__main__":
    sys.exit(main())

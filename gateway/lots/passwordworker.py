"""The password worker: Argon2id checks in a process of its own, at a lower priority, with fixed memory.

`python -m gateway.lots.passwordworker` is run and fed by
`gateway.lots.passwords.PasswordChecker` (through `gateway.lots.workers`).
A job's meta is `(password_hash,)`, the configured `$argon2id$` hash or None
for an unknown account (checked against a decoy hash made here at start, so
that an unknown user name takes as long to refuse as a wrong password); its
body is the password, which reaches this process over its stdin pipe alone
and is never written anywhere. The outcome is `("checked", matches)`; a
fault names the error's type and nothing of the job.

Memory: a check at the interactive limits (`cpmictl passwd`) works in
64 MiB. libsodium maps and unmaps those for each check, so a flood of
checks would make the process's memory go up and down by 64 MiB at the
attacker's pace. Here the reference implementation (argon2-cffi) takes them
from malloc, and the gateway starts this process with glibc told never to
use mmap for an allocation nor to give the heap back
(`WORKER_ENVIRONMENT`): the decoy check at start makes the working memory
resident once, and every later check reuses it. So the process holds the
same memory quiet and under a flood, and one check at a time is all it
ever runs.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import Type, hash_secret, verify_secret

from gateway.lots import workerloop

__all__ = ["DECOY_PASSWORD", "NICENESS", "WORKER_ENVIRONMENT", "Checks", "main", "make_decoy", "verify"]

NICENESS = 10
"""How much nicer than the gateway the worker runs: a flood of checks takes the CPU the reactor
leaves idle, not the reactor's."""

WORKER_ENVIRONMENT = {
    # Never serve an allocation by mmap (a 64 MiB one is over any mmap threshold glibc accepts) ...
    "MALLOC_MMAP_MAX_": "0",
    # ... nor hand the heap's top back to the kernel: the working memory stays resident.
    "MALLOC_TRIM_THRESHOLD_": str(2**40),
    # One arena: the worker has one thread.
    "MALLOC_ARENA_MAX": "1",
}
"""What the gateway adds to a password worker's environment."""

DECOY_PASSWORD = b"cpmi-gateway decoy password"

# libsodium's interactive limits, as `cpmictl passwd` hashes with (opslimit 2, 64 MiB).
_TIME_COST = 2
_MEMORY_KIB = 65536


def make_decoy() -> bytes:
    """A fresh `$argon2id$` hash of the decoy password at the interactive limits."""
    return hash_secret(
        DECOY_PASSWORD,
        os.urandom(16),
        time_cost=_TIME_COST,
        memory_cost=_MEMORY_KIB,
        parallelism=1,
        hash_len=32,
        type=Type.ID,
    )


def verify(password_hash: bytes, password: bytes) -> bool:
    """Whether `password` matches the `$argon2id$` hash `password_hash`; a broken hash matches nothing."""
    try:
        return bool(verify_secret(password_hash, password, Type.ID))
    except (VerificationError, InvalidHashError, ValueError):
        return False


class Checks:
    """The worker's state: its decoy hash, made (and so its working memory made resident) by `warm`."""

    def __init__(self) -> None:
        self.decoy: bytes | None = None

    def warm(self) -> None:
        """Make the decoy hash and check against it once: the working memory is resident from now on."""
        self.decoy = make_decoy()
        verify(self.decoy, b"")

    def check(self, meta: Any, password: bytes) -> tuple[str, bool]:
        """One job: `("checked", matches)`; an unknown account (hash None) is checked against the decoy."""
        (password_hash,) = meta
        if password_hash is None:
            if self.decoy is None:
                self.warm()
            assert self.decoy is not None
            verify(self.decoy, password)
            return ("checked", False)
        return ("checked", verify(str(password_hash).encode("ascii", "replace"), password))


def _fault() -> str:
    """What a fault says: the exception's type, never its text (it could quote the job)."""
    error = sys.exc_info()[1]
    return f"the password check failed: {type(error).__name__}"


def main() -> None:
    """Run as the worker: nice, the decoy check, ready, then one check after the other."""
    checks = Checks()
    workerloop.run(checks.check, NICENESS, checks.warm, fault=_fault)


if __name__ == "__main__":
    main()

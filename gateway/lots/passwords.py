"""Argon2id password checks, in threads of their own so the reactor never waits on one."""

from __future__ import annotations

import nacl.exceptions
import nacl.pwhash
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

# Checked against when the account is unknown, so that an unknown user name takes
# as long to refuse as a wrong password. Made on first use, in a pool thread.
_DECOY_PASSWORD = b"cpmi-gateway decoy password"


class PasswordChecker:
    """Verifies passwords against `$argon2id$` hashes in a small dedicated pool.

    Each check takes tens of milliseconds and 64 MiB, so the pool is small (one
    thread per core on the target machine) and separate from the reactor's own.
    """

    def __init__(self, reactor: IReactorFromThreads, threads: int = 2) -> None:
        self._reactor = reactor
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="cpmi-passwords")
        self._decoy: bytes | None = None

    def start(self) -> None:
        """Start the pool."""
        self._pool.start()

    def stop(self) -> None:
        """Stop the pool, waiting for the check under way; a second stop does nothing."""
        if self._pool.started:
            self._pool.stop()

    def check(self, password_hash: str | None, password: str) -> Deferred[bool]:
        """Whether `password` matches `password_hash`; None means an unknown account."""
        return deferToThreadPool(
            self._reactor, self._pool, self._verify, password_hash, password.encode("utf-8")
        )

    def _verify(self, password_hash: str | None, password: bytes) -> bool:
        if password_hash is None:
            if self._decoy is None:
                self._decoy = nacl.pwhash.argon2id.str(_DECOY_PASSWORD)
            self._verify_hash(self._decoy, password)
            return False
        return self._verify_hash(password_hash.encode("ascii", "replace"), password)

    @staticmethod
    def _verify_hash(password_hash: bytes, password: bytes) -> bool:
        try:
            return bool(nacl.pwhash.verify(password_hash, password))
        except (nacl.exceptions.InvalidkeyError, nacl.exceptions.CryptoError, ValueError):
            return False

"""Argon2id password checks, in threads of their own so the reactor never waits on one.

Checks wait in a bounded queue in front of the threads (CONTRACT §4, hostile
clients): when `max_pending` already wait, a further check fails at once with
`LoginsBusy` (the lot is answered 9999 "busy, retry"); a waiting check whose
client has gone away (its `gone` says so) is dropped before it runs, failing
with `ClientGone`. So a flood of logins costs a bounded queue and the pool's
threads, never the reactor's time or other lots' answers.

A password that passed Argon2id is remembered, in memory only, as a MAC under
a key made at random when the checker is (`PassedPasswords`): the same lot
logging in again with it (every lot at 00:00 on the 1st, when the month's
tokens expire together; every lot after a reconnection) is answered from
that MAC at the cost of one BLAKE2b, without the queue or a thread. A wrong
password never matches a remembered MAC, so it always costs a full Argon2id
check; the stored form of a password stays its Argon2id hash.
"""

from __future__ import annotations

import hmac
import os
import threading
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from hashlib import blake2b

import nacl.exceptions
import nacl.pwhash
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from gateway.settings import Config

# Checked against when the account is unknown, so that an unknown user name takes
# as long to refuse as a wrong password. Made on first use, in a pool thread.
_DECOY_PASSWORD = b"cpmi-gateway decoy password"

# How much nicer than the reactor the password threads run (Linux: a thread's own
# priority). A login flood then takes the cores the reactor leaves idle, not the
# reactor's: reports and heartbeats of every lot keep their latency (bench/hostile.py).
PASSWORD_NICENESS = 10

_thread_state = threading.local()


def lower_thread_priority(niceness: int = PASSWORD_NICENESS) -> bool:
    """Make the calling thread `niceness` nicer, once per thread; whether it is now that nice.

    On Linux `setpriority(PRIO_PROCESS, tid)` sets one thread's priority. Where
    that is not possible (another system, a sandbox refusing it) the check
    still runs, at the reactor's priority.
    """
    if getattr(_thread_state, "lowered", False):
        return True
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, max(os.getpriority(os.PRIO_PROCESS, tid), niceness))
    except (AttributeError, OSError):
        return False
    _thread_state.lowered = True
    return True


Verify = Callable[[str | None, bytes], bool]
Runner = Callable[[Verify, str | None, bytes], "Deferred[bool]"]
"""Runs one verification off the reactor: `run(verify, password_hash, password)`."""


class LoginsBusy(Exception):
    """Too many logins are waiting for a password check: retry later."""


class ClientGone(Exception):
    """The client went away before its password check ran: it was dropped."""


def _never() -> bool:
    return False


class _Waiting:
    """One check in the queue."""

    __slots__ = ("deferred", "generation", "gone", "password", "password_hash")

    def __init__(
        self,
        password_hash: str | None,
        password: bytes,
        gone: Callable[[], bool],
        deferred: Deferred[bool],
        generation: int,
    ) -> None:
        self.password_hash = password_hash
        self.password = password
        self.gone = gone
        self.deferred = deferred
        self.generation = generation


# How many passed passwords a checker remembers at most (one per lot's hash is all a
# configuration needs; past this the least recently used is forgotten). About 150 bytes each.
REMEMBERED = 65536


class PassedPasswords:
    """Which (Argon2id hash, password) pairs passed a check in this process, as MACs under a key of its own.

    Kept: for each hash, the BLAKE2b MAC, keyed by 32 random bytes made here
    (never stored, logged or journaled, and gone with the process), of the
    hash and the password that passed against it. A password matches if its
    MAC under that key is the one kept for the hash: so only the exact
    password that passed Argon2id against this very hash matches, and
    learning the MACs would not give the password back without the key. A
    hash changed in the configuration is another key into the table, so the
    old password no longer matches anything; `keep_only` drops what the
    configuration no longer holds. At most `limit` are kept, the least
    recently used going first.
    """

    def __init__(self, limit: int = REMEMBERED) -> None:
        if limit < 0:
            raise ValueError("limit must not be negative")
        self._limit = limit
        self._key = os.urandom(32)
        self._macs: OrderedDict[str, bytes] = OrderedDict()
        self.hits = 0

    def __len__(self) -> int:
        return len(self._macs)

    def _mac(self, password_hash: str, password: bytes) -> bytes:
        mac = blake2b(key=self._key, digest_size=32, person=b"cpmi-passed")
        stored = password_hash.encode("utf-8", "replace")
        mac.update(len(stored).to_bytes(4, "big"))
        mac.update(stored)
        mac.update(password)
        return mac.digest()

    def passed(self, password_hash: str, password: bytes) -> bool:
        """Whether exactly `password` passed a check against `password_hash` and is remembered."""
        kept = self._macs.get(password_hash)
        if kept is None or not hmac.compare_digest(kept, self._mac(password_hash, password)):
            return False
        self._macs.move_to_end(password_hash)
        self.hits += 1
        return True

    def remember(self, password_hash: str, password: bytes) -> None:
        """Note that `password` passed Argon2id against `password_hash` (call it only then)."""
        if self._limit == 0:
            return
        self._macs[password_hash] = self._mac(password_hash, password)
        self._macs.move_to_end(password_hash)
        while len(self._macs) > self._limit:
            self._macs.popitem(last=False)

    def keep_only(self, password_hashes: Iterable[str]) -> None:
        """Forget every pair whose hash is not among `password_hashes` (the configuration's now)."""
        keep = set(password_hashes)
        for password_hash in [h for h in self._macs if h not in keep]:
            del self._macs[password_hash]

    def forget(self) -> None:
        """Forget everything, and take a new key."""
        self._macs.clear()
        self._key = os.urandom(32)


class PasswordChecker:
    """Verifies passwords against `$argon2id$` hashes in a small dedicated pool, behind a bounded queue.

    Each check takes tens of milliseconds and 64 MiB, so the pool is small (one
    thread per core on the target machine) and separate from the reactor's own.
    At most `threads` checks are handed to the pool at once; the rest wait here,
    where a check can still be dropped. `run` is how a check reaches a thread
    (the pool by default; tests pass their own).
    """

    def __init__(
        self,
        reactor: IReactorFromThreads,
        threads: int = 2,
        max_pending: int = 256,
        run: Runner | None = None,
        remembered: int = REMEMBERED,
    ) -> None:
        self._reactor = reactor
        self._threads = threads
        self._max_pending = max_pending
        self._pool = ThreadPool(minthreads=0, maxthreads=threads, name="cpmi-passwords")
        self._run: Runner = run if run is not None else self._in_pool
        self._decoy: bytes | None = None
        self._waiting: deque[_Waiting] = deque()
        self._running = 0
        self.passed = PassedPasswords(remembered)
        # Bumped by each reload: a check begun before it does not remember its password.
        self._generation = 0
        # Read by the metrics: checks run, refused as busy, dropped for a client gone.
        self.counters: dict[str, int] = {"checked": 0, "busy": 0, "dropped": 0}

    def start(self) -> None:
        """Start the pool."""
        self._pool.start()

    def stop(self) -> None:
        """Stop the pool, waiting for the check under way; a second stop does nothing."""
        if self._pool.started:
            self._pool.stop()

    def reconfigure(self, config: Config) -> None:
        """A reload: forget the passwords of hashes no longer configured; checks under way remember none."""
        self._generation += 1
        self.passed.keep_only(lot.password for lot in config.lots)

    @property
    def waiting(self) -> int:
        """How many checks wait for a thread now."""
        return len(self._waiting)

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        """Whether `password` matches `password_hash`; None means an unknown account.

        Fails with LoginsBusy at once when `max_pending` checks already wait,
        and with ClientGone when `gone()` is true by the time a thread is free.
        Cancelling the Deferred drops a check that has not started. A
        password that passed against the same hash before is answered true
        at once, from `passed`, without a thread.
        """
        encoded = password.encode("utf-8")
        if password_hash is not None and self.passed.passed(password_hash, encoded):
            return succeed(True)
        if len(self._waiting) >= self._max_pending:
            self._drop_gone()
            if len(self._waiting) >= self._max_pending:
                self.counters["busy"] += 1
                return fail(LoginsBusy(f"{len(self._waiting)} logins are waiting for a password check"))

        def cancel(_: Deferred[bool]) -> None:
            try:
                self._waiting.remove(entry)
            except ValueError:
                pass  # under way: its result is ignored

        deferred: Deferred[bool] = Deferred(cancel)
        entry = _Waiting(password_hash, encoded, gone or _never, deferred, self._generation)
        self._waiting.append(entry)
        self._next()
        return deferred

    def _drop_gone(self) -> None:
        """Drop the waiting checks whose clients have gone, making room for those still there."""
        kept: deque[_Waiting] = deque()
        for entry in self._waiting:
            if entry.gone():
                self._dropped(entry)
            else:
                kept.append(entry)
        self._waiting = kept

    def _dropped(self, entry: _Waiting) -> None:
        self.counters["dropped"] += 1
        if not entry.deferred.called:
            entry.deferred.errback(ClientGone("the client went away before its password check"))

    def _next(self) -> None:
        """Hand waiting checks to the pool while it has a thread free."""
        while self._running < self._threads and self._waiting:
            entry = self._waiting.popleft()
            if entry.deferred.called:
                continue
            if entry.gone():
                self._dropped(entry)
                continue
            self._running += 1
            self.counters["checked"] += 1
            ran: Deferred[bool] = maybeDeferred(self._run, self._verify, entry.password_hash, entry.password)
            ran.addBoth(self._ran, entry)

    def _ran(self, result: bool | Failure, entry: _Waiting) -> None:
        self._running -= 1
        if result is True and entry.password_hash is not None and entry.generation == self._generation:
            self.passed.remember(entry.password_hash, entry.password)
        self._next()
        if entry.deferred.called:
            return  # cancelled while it ran
        if isinstance(result, Failure):
            entry.deferred.errback(result)
        else:
            entry.deferred.callback(result)

    def _in_pool(self, verify: Verify, password_hash: str | None, password: bytes) -> Deferred[bool]:
        return deferToThreadPool(self._reactor, self._pool, verify, password_hash, password)

    def _verify(self, password_hash: str | None, password: bytes) -> bool:
        lower_thread_priority()
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

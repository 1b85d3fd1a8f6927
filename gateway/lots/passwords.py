"""Argon2id password checks, in a worker process of their own so the reactor never waits on one.

Checks wait in a bounded queue in front of the worker (CONTRACT §4, hostile
clients): when `max_pending` already wait, a further check fails at once with
`LoginsBusy` (the lot is answered 9999 "busy, retry"); a waiting check whose
client has gone away (its `gone` says so) is dropped before it runs, failing
with `ClientGone`. So a flood of logins costs a bounded queue and the
worker's time, never the reactor's time or other lots' answers.

The checks run in `workers` processes (`python -m gateway.lots.passwordworker`,
default one), one check each at a time, at nice 10, with their Argon2id
working memory (64 MiB each) made resident at start and kept: a flood makes
neither the gateway nor its workers hold more than they hold quiet. The
password crosses to a worker over its stdin pipe only. A worker that ends
during a check, or takes longer than `deadline`, is replaced; its check and
those waiting are answered `LoginsBusy` (so is every check while no worker
is running: one that cannot start is tried again, later each time).

A password that passed Argon2id is remembered, in memory only, as a MAC under
a key made at random when the checker is (`PassedPasswords`): the same lot
logging in again with it (every lot at 00:00 on the 1st, when the month's
tokens expire together; every lot after a reconnection) is answered from
that MAC at the cost of one BLAKE2b, without the queue or a worker. A wrong
password never matches a remembered MAC, so it always costs a full Argon2id
check; the stored form of a password stays its Argon2id hash.
"""

from __future__ import annotations

import hmac
import os
import sys
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from hashlib import blake2b
from typing import Any

from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.lots.passwordworker import WORKER_ENVIRONMENT
from gateway.lots.workerloop import Outcome
from gateway.lots.workers import WorkerPool, provides_processes
from gateway.settings import Config

log = Logger()

WORKER_ARGS = (sys.executable, "-m", "gateway.lots.passwordworker")
"""The password worker's command line."""

CHECK_DEADLINE = 10.0
"""Seconds a worker has for one check (tens of milliseconds as a rule) before it is killed."""

Runner = Callable[[str | None, bytes], "Deferred[bool]"]
"""Runs one check off the reactor: `run(password_hash, password)`, whether it matches."""


class LoginsBusy(Exception):
    """No password check can be had now (too many wait, or no worker runs): retry later."""


class ClientGone(Exception):
    """The client went away before its password check ran: it was dropped."""


QUEUE_FULL = "too many logins are waiting for a password check"


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


def worker_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """A password worker's environment: `base` (the gateway's own by default) and glibc's settings
    that keep its working memory resident (`gateway.lots.passwordworker.WORKER_ENVIRONMENT`)."""
    return {**(dict(os.environ) if base is None else base), **WORKER_ENVIRONMENT}


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
    """Verifies passwords against `$argon2id$` hashes in worker processes, behind a bounded queue.

    At most `workers` checks are handed to the workers at once (one each); the
    rest wait here, where a check can still be dropped. `run` is how a check
    reaches a worker (the processes by default; tests pass their own, and no
    process is started then). `threads` is the former name of `workers`.
    """

    def __init__(
        self,
        reactor: Any,
        workers: int = 1,
        max_pending: int = 256,
        run: Runner | None = None,
        remembered: int = REMEMBERED,
        *,
        threads: int | None = None,
        args: tuple[str, ...] = WORKER_ARGS,
        env: dict[str, str] | None = None,
        deadline: float = CHECK_DEADLINE,
    ) -> None:
        self._workers = threads if threads is not None else workers
        self._max_pending = max_pending
        self._pool: WorkerPool | None = None
        if run is None and provides_processes(reactor):
            self._pool = WorkerPool(
                reactor,
                name="password",
                args=args,
                workers=self._workers,
                max_pending=self._workers,
                env=worker_environment(env),
                deadline=deadline,
            )
        self._run: Runner = run if run is not None else self._in_worker
        self._waiting: deque[_Waiting] = deque()
        self._running = 0
        self.passed = PassedPasswords(remembered)
        # Bumped by each reload: a check begun before it does not remember its password.
        self._generation = 0
        # Read by the metrics: checks run, refused as busy, dropped for a client gone.
        self.counters: dict[str, int] = {"checked": 0, "busy": 0, "dropped": 0}

    @property
    def pool(self) -> WorkerPool | None:
        """The worker processes (None when checks are run another way)."""
        return self._pool

    def start(self) -> None:
        """Start the workers (each makes its working memory resident with a decoy check)."""
        if self._pool is not None:
            self._pool.start()

    def stop(self) -> Deferred[None]:
        """Answer the waiting checks busy and end the workers; fires once they have ended."""
        self._fail_waiting("the gateway is stopping")
        if self._pool is None:
            return succeed(None)
        return self._pool.stop()

    def reconfigure(self, config: Config) -> None:
        """A reload: forget the passwords of hashes no longer configured; checks under way remember none."""
        self._generation += 1
        self.passed.keep_only(lot.password for lot in config.lots)

    @property
    def waiting(self) -> int:
        """How many checks wait for a worker now."""
        return len(self._waiting)

    def _available(self) -> bool:
        return self._pool is None or self._pool.alive > 0

    def check(
        self, password_hash: str | None, password: str, gone: Callable[[], bool] | None = None
    ) -> Deferred[bool]:
        """Whether `password` matches `password_hash`; None means an unknown account.

        Fails with LoginsBusy at once when `max_pending` checks already wait or
        no worker runs, and with ClientGone when `gone()` is true by the time a
        worker is free. Cancelling the Deferred drops a check that has not
        started. A password that passed against the same hash before is
        answered true at once, from `passed`, without a worker.
        """
        encoded = password.encode("utf-8")
        if password_hash is not None and self.passed.passed(password_hash, encoded):
            return succeed(True)
        if not self._available():
            self.counters["busy"] += 1
            return fail(LoginsBusy("no password worker is running now"))
        if len(self._waiting) >= self._max_pending:
            self._drop_gone()
            if len(self._waiting) >= self._max_pending:
                self.counters["busy"] += 1
                return fail(LoginsBusy(QUEUE_FULL))

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

    def _fail_waiting(self, why: str) -> None:
        """Answer every waiting check busy (the workers are gone, or the gateway stops)."""
        waiting, self._waiting = self._waiting, deque()
        for entry in waiting:
            if not entry.deferred.called:
                self.counters["busy"] += 1
                entry.deferred.errback(LoginsBusy(why))

    def _next(self) -> None:
        """Hand waiting checks to the workers while one is free."""
        while self._running < self._workers and self._waiting:
            entry = self._waiting.popleft()
            if entry.deferred.called:
                continue
            if entry.gone():
                self._dropped(entry)
                continue
            self._running += 1
            self.counters["checked"] += 1
            ran: Deferred[bool] = maybeDeferred(self._run, entry.password_hash, entry.password)
            ran.addBoth(self._ran, entry)

    def _ran(self, result: bool | Failure, entry: _Waiting) -> None:
        self._running -= 1
        if result is True and entry.password_hash is not None and entry.generation == self._generation:
            self.passed.remember(entry.password_hash, entry.password)
        if isinstance(result, Failure) and result.check(LoginsBusy) and not self._available():
            self._fail_waiting(result.getErrorMessage())
        self._next()
        if entry.deferred.called:
            return  # cancelled while it ran
        if isinstance(result, Failure):
            if result.check(LoginsBusy):
                self.counters["busy"] += 1
            entry.deferred.errback(result)
        else:
            entry.deferred.callback(result)

    def _in_worker(self, password_hash: str | None, password: bytes) -> Deferred[bool]:
        """Send one check to a worker process: whether it matched, or LoginsBusy if none could make it."""
        if self._pool is None:
            return fail(LoginsBusy("this reactor cannot run the password worker"))
        submitted = self._pool.submit((password_hash,), password, len(password), _never)
        if submitted is None:
            return fail(LoginsBusy("no password worker is running now"))
        return submitted.addCallback(_matched)


def _matched(outcome: Outcome) -> bool:
    """A worker's outcome as whether the password matched; LoginsBusy when the check was not made."""
    if outcome[0] == "checked":
        return bool(outcome[1])
    raise LoginsBusy(f"the password check could not be made now ({outcome[-1]})")

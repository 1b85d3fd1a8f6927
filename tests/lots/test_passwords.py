"""Argon2id checks run in their own threads, never in the reactor."""

from __future__ import annotations

import threading

import nacl.pwhash
import pytest_twisted
from twisted.internet import reactor

from gateway.lots.passwords import PasswordChecker

HASH = nacl.pwhash.argon2id.str(
    b"right",
    opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
    memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
).decode()


@pytest_twisted.ensureDeferred
async def test_checks_run_off_the_reactor_thread() -> None:
    """A check answers true for the right password, false otherwise, in a pool thread; stop is idempotent."""
    checker = PasswordChecker(reactor)
    checker.start()
    seen: list[str] = []
    original = checker._verify_hash

    def spy(password_hash: bytes, password: bytes) -> bool:
        seen.append(threading.current_thread().name)
        return original(password_hash, password)

    checker._verify_hash = spy  # type: ignore[method-assign]
    try:
        assert await checker.check(HASH, "right") is True
        assert await checker.check(HASH, "wrong") is False
        assert await checker.check("$argon2id$garbage", "right") is False
        assert await checker.check(None, "right") is False
    finally:
        checker.stop()
        checker.stop()
    assert seen and threading.main_thread().name not in seen

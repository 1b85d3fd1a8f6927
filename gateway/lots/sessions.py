"""Lot sessions: the tokens issued at login (B.4.1, B.3.5, B.3.6).

A token is valid until the end of the natural month in the gateway's zone, and a
second login of the same account replaces it. Only the token's SHA-256 is kept,
in memory and in the journal's `token` records, so a journal reader never sees a
usable token; tokens survive a restart by replaying those records.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping
from typing import Protocol
from zoneinfo import ZoneInfo

from attrs import frozen
from twisted.internet.interfaces import IReactorTime

from gateway.protocol.times import end_of_month, rfc3339_seconds


def new_token() -> str:
    """A fresh 32-character token."""
    return secrets.token_hex(16)


def token_digest(token: str) -> str:
    """What the gateway keeps of a token."""
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()


@frozen
class Session:
    """Who holds a token, and until when."""

    username: str
    park: str
    expires: float


class SessionListener(Protocol):
    """Told of each token put in force or revoked ([cluster]: `gateway.cluster.tokens`)."""

    def installed(self, body: Mapping[str, object]) -> None: ...
    def revoked(self, username: str, session: Session, digest: str) -> None: ...


class Sessions:
    """The tokens in force, one per account; `listeners` are told of each change but a replacement's."""

    def __init__(
        self,
        clock: IReactorTime,
        zone: ZoneInfo,
        make_token: Callable[[], str] = new_token,
    ) -> None:
        self._clock = clock
        self._zone = zone
        self._make_token = make_token
        self._by_digest: dict[str, Session] = {}
        self._digest_by_user: dict[str, str] = {}
        self.listeners: list[SessionListener] = []

    def mint(self, username: str, park: str) -> tuple[str, dict[str, str]]:
        """A new token for `username`, and the journal body that will put it in force.

        The token is not in force until `install` is given that body, which the
        caller does once the body is durable.
        """
        token = self._make_token()
        expires = end_of_month(self._clock.seconds(), self._zone)
        body = {
            "user": username,
            "park": park,
            "token_sha256": token_digest(token),
            "expires": expires.isoformat(),
        }
        return token, body

    def install(self, body: Mapping[str, object]) -> None:
        """Put in force the token of a `token` record, revoking the account's previous one."""
        username, park = str(body["user"]), str(body["park"])
        digest = str(body["token_sha256"])
        expires = rfc3339_seconds(str(body["expires"]))
        previous = self._digest_by_user.pop(username, None)
        if previous is not None:
            self._by_digest.pop(previous, None)
        self._digest_by_user[username] = digest
        self._by_digest[digest] = Session(username=username, park=park, expires=expires)
        for listener in self.listeners:
            listener.installed(body)

    def revoke(self, username: str) -> bool:
        """Take the account's token out of force; whether it had one."""
        digest = self._digest_by_user.pop(username, None)
        if digest is None:
            return False
        session = self._by_digest.pop(digest, None)
        if session is not None:
            for listener in self.listeners:
                listener.revoked(username, session, digest)
        return True

    def digest_of(self, username: str) -> str | None:
        """The SHA-256 of the account's token in force (expired or not), or None."""
        return self._digest_by_user.get(username)

    def lookup(self, token: str) -> Session | None:
        """The session of `token`, or None when it is unknown, replaced or expired."""
        if not token:
            return None
        session = self._by_digest.get(token_digest(token))
        if session is None or session.expires <= self._clock.seconds():
            return None
        return session

    def expired(self, token: str) -> bool:
        """Whether `token` is its account's token in force but past its expiry (not replaced, not revoked)."""
        if not token:
            return False
        session = self._by_digest.get(token_digest(token))
        return session is not None and session.expires <= self._clock.seconds()

    def __len__(self) -> int:
        return len(self._by_digest)

"""
Tokens follow the lot (CONTRACT §9): each lot's token in force, in the KV bucket ``cpmi_tokens``.

Key = park, value ``{"token_sha256", "expires", "issued", "gateway"}``: the
token's SHA-256, never the token. A gateway that issues a token (a login)
writes it; every gateway watches the bucket and puts each lot's newest token
in force locally, journaling it first as a `token` record (code ``learned``)
as it journals the tokens it issues, so a restart keeps it. So:

- a lot that reconnects to another gateway (a failover through the balancer)
  binds there with its token, with no new login;
- a login anywhere replaces the token everywhere: the old one is answered
  9000 from then on, and a connection bound with it is closed (CONTRACT §5);
- a token revoked here (a reload removing the lot or changing its
  credentials) is deleted from the bucket, and every gateway revokes it
  (journaling a `token-revoked` record).

Uplinks and binds look tokens up locally, as without ``[cluster]``: nothing on
the hot path waits on NATS. A token issued while NATS is down is written when
it is back, unless a newer one (``issued``) is in the bucket by then.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from attrs import define
from twisted.application.service import Service
from twisted.logger import Logger
from twisted.python.failure import Failure

from gateway.cluster.buckets import Bucket, Value
from gateway.cluster.connection import NatsConnection
from gateway.interfaces import JournalAppend
from gateway.journal.kinds import TOKEN_RECORD, TOKEN_REVOKED_RECORD
from gateway.lots.sessions import Session, Sessions
from gateway.protocol.times import rfc3339_seconds, utc_rfc3339
from gateway.settings import LotConfig

__all__ = ["TOKENS_BUCKET", "TokenShare"]

TOKENS_BUCKET = "cpmi_tokens"

log = Logger()


@define
class _Known:
    digest: str
    issued: float


class TokenShare(Service):
    """The lots' tokens shared through ``cpmi_tokens``; a listener of the gateway's `Sessions`."""

    def __init__(
        self,
        connection: NatsConnection,
        *,
        sessions: Sessions,
        journal: JournalAppend,
        lot_by_park: Callable[[str], LotConfig | None],
        gateway_id: str,
        clock: Any,
        retry: float = 1.0,
    ) -> None:
        self.gateway_id = gateway_id
        self._sessions = sessions
        self._journal = journal
        self._lot_by_park = lot_by_park
        self._clock = clock
        self._known: dict[str, _Known] = {}
        self._learning = False
        self.learned = 0
        """Tokens put in force here from the bucket."""
        self.bucket = Bucket(connection, TOKENS_BUCKET, clock=clock, on_entry=self._entry, retry=retry)
        self.setName("tokens")

    def startService(self) -> None:
        super().startService()
        self._sessions.listeners.append(self)
        self.bucket.start()

    def stopService(self) -> None:
        super().stopService()
        if self in self._sessions.listeners:
            self._sessions.listeners.remove(self)
        self.bucket.stop()

    # -- Sessions' listener

    def installed(self, body: Mapping[str, object]) -> None:
        """A token issued here: into the bucket (now, or once NATS is back)."""
        if self._learning:
            return
        park, digest = str(body["park"]), str(body["token_sha256"])
        known = self._known.get(park)
        if known is not None and known.digest == digest:
            return
        issued = self._clock.seconds()
        self._known[park] = _Known(digest, issued)
        value = {
            "token_sha256": digest,
            "expires": str(body["expires"]),
            "issued": utc_rfc3339(issued),
            "gateway": self.gateway_id,
        }
        self.bucket.put(park, value)

    def revoked(self, username: str, session: Session, digest: str) -> None:
        """A token revoked here (a reload): out of the bucket, so every gateway revokes it."""
        if self._learning:
            return
        self._known.pop(session.park, None)
        self.bucket.delete_if(session.park, lambda value: value.get("token_sha256") == digest)

    # -- the bucket's entries

    def _entry(self, park: str, value: Value | None, revision: int) -> None:
        lot = self._lot_by_park(park)
        if value is None:
            known = self._known.pop(park, None)
            if (
                known is not None
                and lot is not None
                and self._sessions.digest_of(lot.username) == known.digest
            ):
                self._revoke(lot)
            return
        try:
            digest = str(value["token_sha256"])
            expires = str(value["expires"])
            issued = rfc3339_seconds(str(value["issued"]))
            expiry = rfc3339_seconds(expires)
        except (KeyError, ValueError):
            log.warn(
                "nats: bucket {bucket}: the entry of {park} is not a token's", bucket=TOKENS_BUCKET, park=park
            )
            return
        known = self._known.get(park)
        if known is not None and (known.digest == digest or issued < known.issued):
            return  # ours, seen again, or older than the one in force here
        self._known[park] = _Known(digest, issued)
        if lot is None or not lot.username or expiry <= self._clock.seconds():
            return
        if self._sessions.digest_of(lot.username) == digest:
            return
        body = {"user": lot.username, "park": park, "token_sha256": digest, "expires": expires}
        stored = self._journal.append(TOKEN_RECORD, park, "learned", "", body)
        stored.addCallbacks(self._learn, self._not_stored, callbackArgs=(park, body), errbackArgs=(park,))

    def _learn(self, _: object, park: str, body: dict[str, str]) -> None:
        known = self._known.get(park)
        lot = self._lot_by_park(park)
        if (
            known is None
            or known.digest != body["token_sha256"]
            or lot is None
            or lot.username != body["user"]
        ):
            return  # replaced meanwhile, or the lot's configuration changed
        self._learning = True
        try:
            self._sessions.install(body)
        finally:
            self._learning = False
        self.learned += 1
        log.debug("lot {park}: its token issued on another gateway is in force here", park=park)

    def _not_stored(self, failure: Failure, park: str) -> None:
        # Not in force here: a lot binding with it is answered 9000 and logs in again.
        self._known.pop(park, None)
        log.failure("the journal could not store a token learned for {park}", failure, park=park)

    def _revoke(self, lot: LotConfig) -> None:
        self._learning = True
        try:
            self._sessions.revoke(lot.username)
        finally:
            self._learning = False
        body = {"user": lot.username, "reason": "revoked on another gateway"}
        stored = self._journal.append(TOKEN_REVOKED_RECORD, lot.park_code, "", "", body)
        stored.addErrback(lambda failure: log.failure("the journal could not store a revocation", failure))
        log.info("lot {park}: its token was revoked on another gateway", park=lot.park_code)

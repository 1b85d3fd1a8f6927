"""Placement and token sharing in memory: the decisions on the bucket's entries, without a nats-server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from zoneinfo import ZoneInfo

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from gateway.cluster.placement import Placement
from gateway.cluster.tokens import TokenShare
from gateway.journal.kinds import TOKEN_RECORD, TOKEN_REVOKED_RECORD
from gateway.lots.sessions import Sessions, token_digest
from gateway.protocol.times import utc_rfc3339
from gateway.settings import ClusterSettings, LotConfig
from tests.lots.harness import MemoryJournal


class FakeConnection:
    """A NatsConnection whose runs wait until the test settles them."""

    def __init__(self) -> None:
        self.settings = ClusterSettings(servers=("nats://127.0.0.1:1",))
        self.state_observers: list[Callable[[str], None]] = []
        self.runs: list[tuple[Callable[..., Awaitable[Any]], Deferred[Any]]] = []

    @property
    def writes(self) -> list[tuple[Callable[..., Awaitable[Any]], Deferred[Any]]]:
        """The runs that write to the bucket (not the watch's)."""
        return [(fn, d) for fn, d in self.runs if fn.__name__ == "write"]

    def run(self, fn: Callable[..., Awaitable[Any]]) -> Deferred[Any]:
        d: Deferred[Any] = Deferred()
        self.runs.append((fn, d))
        return d


def placement(clock: Clock, closed: list[tuple[str, str]]) -> tuple[Placement, FakeConnection]:
    connection = FakeConnection()
    made = Placement(
        connection,  # type: ignore[arg-type]
        gateway_id="gw-a",
        clock=clock,
        disconnect=lambda park, reason: closed.append((park, reason)),
    )
    made.startService()
    return made, connection


def test_a_newer_bind_elsewhere_closes_the_lot_here_an_older_one_does_not() -> None:
    """Once this gateway's write landed (revision 5), an entry of another gateway at revision 4 (older)
    leaves the lot alone; one at revision 7 closes it, and the lot is then no longer held here."""
    clock = Clock()
    closed: list[tuple[str, str]] = []
    made, connection = placement(clock, closed)
    made.lot_bound("P001")
    clock.advance(0)
    _, written = connection.writes[-1]
    written.callback([5])
    assert made.holder("P001") == "gw-a"
    made._entry("P001", {"gateway": "gw-b", "since": utc_rfc3339(clock.seconds())}, 4)
    assert closed == []
    made._entry("P001", {"gateway": "gw-b", "since": utc_rfc3339(clock.seconds())}, 7)
    assert [park for park, _ in closed] == ["P001"] and "gw-b" in closed[0][1]
    assert made.holder("P001") == "gw-b"


def test_before_its_write_lands_the_since_times_decide() -> None:
    """While this gateway's own write is in flight (NATS slow or down), another gateway's entry wins
    only if its `since` is not before this bind."""
    clock = Clock()
    clock.advance(1000)
    closed: list[tuple[str, str]] = []
    made, _ = placement(clock, closed)
    made.lot_bound("P001")
    made._entry("P001", {"gateway": "gw-b", "since": utc_rfc3339(999)}, 3)
    assert closed == []
    made._entry("P001", {"gateway": "gw-b", "since": utc_rfc3339(1001)}, 4)
    assert [park for park, _ in closed] == ["P001"]


def test_an_entry_of_this_gateway_for_a_lot_it_does_not_hold_is_deleted() -> None:
    """An entry naming this gateway for a lot not bound here (left by a crash) is queued for a
    conditional delete; a deletion takes the holder away."""
    clock = Clock()
    made, connection = placement(clock, [])
    made._entry("P002", {"gateway": "gw-a", "since": utc_rfc3339(0)}, 2)
    clock.advance(0)
    assert len(connection.writes) == 1  # the conditional delete
    assert made.holder("P002") == "gw-a"
    made._entry("P002", None, 3)
    assert made.holder("P002") is None


def test_writes_of_one_lot_wait_for_each_other_and_a_failed_one_is_retried() -> None:
    """A lot's bind, unbind and bind again while NATS is slow: one write in flight, only the newest wish
    kept; after a failure the next try waits for the retry delay, and a failed write is tried again."""
    clock = Clock()
    made, connection = placement(clock, [])
    made.lot_bound("P001")
    clock.advance(0)
    made.lot_unbound("P001")
    made.lot_bound("P001")
    clock.advance(0)
    assert len(connection.writes) == 1 and made.bucket.backlog == 1  # the first bind's in flight
    connection.writes[0][1].errback(OSError("timeout"))
    assert len(connection.writes) == 1  # after a failure, the next try waits for the retry delay
    clock.advance(1.0)
    assert len(connection.writes) == 2 and made.bucket.backlog == 0  # the newest wish (the second bind)
    connection.writes[1][1].errback(OSError("timeout"))
    assert made.bucket.backlog == 1
    clock.advance(1.0)
    assert len(connection.writes) == 3
    made.stopService()


LOT = LotConfig(
    park_code="P001",
    username="userP001",
    password="x",
    signature="required",
    secret="k",
    dialect="standard",
    upstream_username="",
    upstream_password="",
    upstream_secret="",
)


def share(clock: Clock) -> tuple[TokenShare, Sessions, MemoryJournal, FakeConnection]:
    sessions = Sessions(clock, ZoneInfo("Asia/Shanghai"))
    journal = MemoryJournal(clock)
    connection = FakeConnection()
    made = TokenShare(
        connection,  # type: ignore[arg-type]
        sessions=sessions,
        journal=journal,
        lot_by_park=lambda park: LOT if park == "P001" else None,
        gateway_id="gw-a",
        clock=clock,
    )
    made.startService()
    return made, sessions, journal, connection


def entry(token: str, issued: float, expires: float = 10**10) -> dict[str, object]:
    return {
        "token_sha256": token_digest(token),
        "expires": utc_rfc3339(expires),
        "issued": utc_rfc3339(issued),
        "gateway": "gw-b",
    }


def test_a_token_from_the_bucket_is_journaled_then_put_in_force_an_older_one_is_ignored() -> None:
    """A token issued elsewhere is journaled (`token`, code learned, its SHA-256 only) and then in
    force here; one issued earlier than the one in force is ignored; an expired one is not learned."""
    clock = Clock()
    clock.advance(100)
    made, sessions, journal, _ = share(clock)
    made._entry("P001", entry("new-token", issued=50), 1)
    assert sessions.lookup("new-token") is not None
    [record] = journal.records
    assert (record.kind, record.code, record.park) == (TOKEN_RECORD, "learned", "P001")
    assert "new-token" not in repr(record.body)
    made._entry("P001", entry("old-token", issued=40), 2)
    assert sessions.lookup("old-token") is None and sessions.lookup("new-token") is not None
    made._entry("P001", entry("late-token", issued=60, expires=90), 3)
    assert sessions.lookup("late-token") is None
    assert made.learned == 1


def test_a_login_here_is_written_and_a_deletion_revokes_only_the_token_it_named() -> None:
    """A token installed by a login goes into the bucket; the bucket's echo changes nothing; a deletion
    revokes the lot's token here (journaled) when it is the one the bucket had."""
    clock = Clock()
    made, sessions, journal, connection = share(clock)
    _, body = sessions.mint("userP001", "P001")
    sessions.install(body)
    clock.advance(0)
    assert len(connection.writes) == 1  # the put
    echo = {**body, "issued": utc_rfc3339(clock.seconds()), "token_sha256": body["token_sha256"]}
    made._entry("P001", echo, 9)
    assert journal.records == []
    made._entry("P001", None, 10)
    assert sessions.digest_of("userP001") is None
    assert [r.kind for r in journal.records] == [TOKEN_REVOKED_RECORD]


def test_a_revocation_here_deletes_the_token_from_the_bucket() -> None:
    """Revoking the account's token here (a reload) queues a delete of the lot's entry."""
    clock = Clock()
    made, sessions, _, connection = share(clock)
    _, body = sessions.mint("userP001", "P001")
    sessions.install(body)
    clock.advance(0)
    connection.writes[0][1].callback([1])
    assert sessions.revoke("userP001")
    clock.advance(0)
    assert len(connection.writes) == 2
    made.stopService()
    assert made not in sessions.listeners


def test_the_binds_of_one_reactor_turn_go_to_nats_in_one_run() -> None:
    """A wave of 100 binds in one turn costs one hop to the NATS loop, and each lot learns its revision."""
    clock = Clock()
    made, connection = placement(clock, [])
    for n in range(100):
        made.lot_bound(f"P{n:03d}")
    assert connection.writes == []
    clock.advance(0)
    assert len(connection.writes) == 1
    connection.writes[0][1].callback(list(range(1, 101)))
    assert made._mine["P042"].revision == 43
    assert made.bucket.backlog == 0

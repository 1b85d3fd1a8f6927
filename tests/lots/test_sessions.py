"""Tokens: 32 characters, valid to the end of the natural month, one per account."""

from __future__ import annotations

from datetime import datetime
from zoneinfo import ZoneInfo

from twisted.internet.task import Clock

from gateway.lots.sessions import Sessions, new_token, token_digest

SHANGHAI = ZoneInfo("Asia/Shanghai")


def clock_at(text: str, zone: ZoneInfo = SHANGHAI) -> Clock:
    clock = Clock()
    clock.advance(datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=zone).timestamp())
    return clock


def test_tokens_are_32_characters_and_fresh() -> None:
    """Each token is 32 characters and no two are alike."""
    tokens = {new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert {len(token) for token in tokens} == {32}


def test_token_is_in_force_only_once_installed() -> None:
    """A minted token is unknown until its record is installed."""
    sessions = Sessions(clock_at("2026-11-24 10:00:00"), SHANGHAI)
    token, body = sessions.mint("lot001", "P001")
    assert sessions.lookup(token) is None
    sessions.install(body)
    session = sessions.lookup(token)
    assert session is not None and (session.username, session.park) == ("lot001", "P001")


def test_record_holds_no_usable_token() -> None:
    """The journal body carries the token's SHA-256, never the token."""
    sessions = Sessions(clock_at("2026-11-24 10:00:00"), SHANGHAI)
    token, body = sessions.mint("lot001", "P001")
    assert token not in repr(body)
    assert body["token_sha256"] == token_digest(token)


def test_token_expires_at_the_end_of_the_natural_month_in_the_zone() -> None:
    """A token issued on 24 November is valid until 1 December 00:00 in the gateway's zone."""
    clock = clock_at("2026-11-24 10:00:00")
    sessions = Sessions(clock, SHANGHAI)
    token, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    assert body["expires"] == "2026-12-01T00:00:00+08:00"
    end = datetime(2026, 12, 1, tzinfo=SHANGHAI).timestamp()
    clock.advance(end - clock.seconds() - 1)
    assert sessions.lookup(token) is not None
    clock.advance(1)
    assert sessions.lookup(token) is None


def test_december_tokens_expire_in_january() -> None:
    """The month after December is January of the next year."""
    sessions = Sessions(clock_at("2026-12-31 23:59:59"), SHANGHAI)
    _, body = sessions.mint("lot001", "P001")
    assert body["expires"] == "2027-01-01T00:00:00+08:00"


def test_second_login_revokes_the_first_token() -> None:
    """Installing a new token for an account makes its previous token unknown (B.3.5)."""
    sessions = Sessions(clock_at("2026-11-24 10:00:00"), SHANGHAI)
    first, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    second, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    assert sessions.lookup(first) is None
    assert sessions.lookup(second) is not None
    assert len(sessions) == 1


def test_tokens_survive_a_rebuild_from_records() -> None:
    """A new Sessions given the same records knows the same tokens."""
    clock = clock_at("2026-11-24 10:00:00")
    sessions = Sessions(clock, SHANGHAI)
    token, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    again = Sessions(clock, SHANGHAI)
    again.install(dict(body))
    assert again.lookup(token) == sessions.lookup(token)


def test_empty_and_unknown_tokens_are_refused() -> None:
    """An empty or never-issued token has no session; revoke removes one."""
    sessions = Sessions(clock_at("2026-11-24 10:00:00"), SHANGHAI)
    token, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    assert sessions.lookup("") is None
    assert sessions.lookup("0" * 32) is None
    sessions.revoke("lot001")
    assert sessions.lookup(token) is None


def test_expired_tells_an_expired_token_from_a_replaced_or_revoked_one() -> None:
    """`expired` is true only for the account's token in force once its month has ended."""
    clock = clock_at("2026-11-30 23:59:00")
    sessions = Sessions(clock, SHANGHAI)
    first, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    assert not sessions.expired(first) and not sessions.expired("") and not sessions.expired("0" * 32)
    clock.advance(60)
    assert sessions.expired(first) and sessions.lookup(first) is None
    second, body = sessions.mint("lot001", "P001")
    sessions.install(body)
    assert not sessions.expired(first)  # replaced: no longer the account's
    sessions.revoke("lot001")
    assert not sessions.expired(second)

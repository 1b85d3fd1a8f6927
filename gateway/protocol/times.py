"""Times on the wire (`yyyy-MM-dd HH:mm:ss` in the gateway's zone) and token lifetimes."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

WIRE_FORMAT = "%Y-%m-%d %H:%M:%S"


def wire_time(seconds: float, zone: ZoneInfo) -> str:
    """`seconds` since the epoch as the standard writes times, in `zone`."""
    return datetime.fromtimestamp(seconds, zone).strftime(WIRE_FORMAT)


def end_of_month(seconds: float, zone: ZoneInfo) -> datetime:
    """The first instant of the natural month after the one holding `seconds`, in `zone`."""
    now = datetime.fromtimestamp(seconds, zone)
    if now.month == 12:
        return datetime(now.year + 1, 1, 1, tzinfo=zone)
    return datetime(now.year, now.month + 1, 1, tzinfo=zone)


def utc_rfc3339(seconds: float) -> str:
    """Epoch seconds as RFC 3339 in UTC with milliseconds: `2026-11-18T11:06:40.000Z`."""
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def rfc3339_seconds(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time such as a journal record's `ts`."""
    return datetime.fromisoformat(text).timestamp()

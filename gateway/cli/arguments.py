"""Argument types shared by ``cpmictl`` commands: numbers and lot addresses, checked for argparse.

``lot simulate`` and ``conformance`` read the same options (``--uplink``,
``--downlink``, counts and durations); the checks live here so neither command
reaches into the other.
"""

from __future__ import annotations

import argparse
from urllib.parse import urlsplit, urlunsplit

__all__ = ["at_least_one", "not_negative", "number", "parse_downlink", "positive", "uplink_url"]


def number(text: str) -> float:
    """A finite number; anything else is a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
    return value


def positive(text: str) -> float:
    """A finite number above 0."""
    value = number(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
    return value


def not_negative(text: str) -> float:
    """A finite number, 0 or above."""
    value = number(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must not be negative: {text!r}")
    return value


def at_least_one(text: str) -> int:
    """A whole number, 1 or above."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {text!r}")
    return value


def uplink_url(text: str) -> str:
    """The URL to POST to: `text`, with `/uplink` as its path when it has none."""
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--uplink: not an http(s) URL: {text!r}")
    if parts.path in ("", "/"):
        parts = parts._replace(path="/uplink")
    return urlunsplit(parts)


def parse_downlink(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as a host and a port."""
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--downlink: expected HOST:PORT, got {text!r}")
    return host, int(port)

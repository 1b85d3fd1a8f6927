"""Free loopback ports for the tests' servers, outside the kernel's ephemeral range.

A port the kernel hands out for ``bind(("127.0.0.1", 0))`` comes from the same
range it takes the local ports of outgoing connections from, so between the pick
and a server's own bind any connection the suite opens (a client, a NATS or HAProxy
health check) may take it ("Address already in use", a flaky test). The ports here
are drawn below that range, where the kernel puts nothing by itself, and never
twice in one test process.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

__all__ = ["free_port", "free_ports"]

_handed_out: set[int] = set()
_random = random.Random()


def _ephemeral_low() -> int:
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768
    return low


_LOW, _HIGH = 10000, min(_ephemeral_low(), 65536) - 1


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on `host` that nothing listens on now, not handed out before in this process."""
    if _HIGH - _LOW < 1000:  # an unusual ephemeral range: fall back to the kernel's pick
        with socket.socket() as probe:
            probe.bind((host, 0))
            port: int = probe.getsockname()[1]
            return port
    for _ in range(1000):
        port = _random.randint(_LOW, _HIGH)
        if port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind((host, port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free port found between {_LOW} and {_HIGH}")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """`count` distinct free ports."""
    return [free_port(host) for _ in range(count)]

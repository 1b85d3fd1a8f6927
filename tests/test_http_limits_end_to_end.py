"""The HTTP listeners' bounds against a real `twistd -n cpmi-gateway` over loopback (CONTRACT §4, issue 19).

One test for the uplink port and one for the API port; the in-memory tests
of each bound are in tests/lots/test_http_limits.py.
"""

from __future__ import annotations

import json
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.ports import free_port
from tests.processes import start_twistd, stop, wait_for_port
from tests.test_end_to_end import api_config, plain_post, write_config

PARTIAL_HEAD = b"POST /uplink HTTP/1.1\r\nHost: gw\r\n"


def limited(config: str, keys: str) -> str:
    """`config` with an [uplink] table of `keys` added."""
    path = Path(config)
    path.write_text(path.read_text() + f"\n[uplink]\n{keys}\n")
    return config


@contextmanager
def gateway(tmp_path: Path, config: str, port: int) -> Iterator[subprocess.Popen[bytes]]:
    process = start_twistd(tmp_path, config)
    try:
        wait_for_port(port, process)
        time.sleep(0.2)  # wait_for_port's own probe has closed
        yield process
    finally:
        stop(process)


def opened(port: int, first: bytes = b"") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    if first:
        sock.sendall(first)
    return sock


def closed_within(sock: socket.socket, seconds: float) -> bool:
    """Whether the gateway closes `sock` within `seconds` (reading, and dropping, anything it sends)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if not sock.recv(65536):
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def answer_head(sock: socket.socket) -> bytes:
    """The status line and headers of the gateway's answer on `sock`."""
    sock.settimeout(5)
    got = b""
    while b"\r\n\r\n" not in got:
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


BODIES = [b'{"code":"heartbeat","oprNum":"%s"}' % opr for opr in (b"p1", b"p2", b"p3")]


def read_answers(sock: socket.socket, count: int) -> list[bytes]:
    """The bodies of the next `count` answers on `sock`, each read by its Content-Length."""
    sock.settimeout(5)
    got = b""
    bodies: list[bytes] = []
    while len(bodies) < count:
        head, separator, rest = got.partition(b"\r\n\r\n")
        length = re.search(rb"Content-Length: (\d+)", head) if separator else None
        if length is not None and len(rest) >= int(length.group(1)):
            bodies.append(rest[: int(length.group(1))])
            got = rest[int(length.group(1)) :]
            continue
        chunk = sock.recv(65536)
        assert chunk, "closed before the answers came"
        got += chunk
    return bodies


def test_uplink_closes_slow_heads_caps_a_peer_and_refuses_a_huge_body_unread(tmp_path: Path) -> None:
    """On a real uplink port: a 5th connection from one peer is closed at once, heads trickling a byte
    every half second are closed by header_timeout, a 300 MiB Content-Length is answered 413 with no
    byte of body sent, and an honest uplink is still answered; pipelined requests are answered in
    order on a connection kept open, and HTTP/1.0 is answered and closed."""
    port = free_port()
    config = limited(write_config(tmp_path, port), "header_timeout = 2\nmax_connections_per_peer = 4")
    with gateway(tmp_path, config, port):
        slow = [opened(port, PARTIAL_HEAD) for _ in range(4)]
        started = time.monotonic()
        fifth = opened(port)
        assert closed_within(fifth, 1.0), "a connection over max_connections_per_peer is closed at once"
        for _ in range(3):  # a byte every half second: before, each restarted Twisted's idle timer
            time.sleep(0.5)
            for sock in slow:
                try:
                    sock.sendall(b"X")
                except (ConnectionResetError, BrokenPipeError):
                    pass  # on a slow machine the 2 s may be up already: closed, as it should be
        assert all(closed_within(sock, 3.5) for sock in slow)
        assert time.monotonic() - started < 5.5
        for sock in [fifth, *slow]:
            sock.close()

        declared = b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % 2**28
        huge = opened(port, PARTIAL_HEAD + declared)
        head = answer_head(huge)
        assert head.startswith(b"HTTP/1.1 413 "), head
        assert closed_within(huge, 2.0)
        huge.close()
        assert plain_post(port, b'{"code":"heartbeat"}')["resultCode"] != ""

        # Keep-alive and pipelining on the real socket: three requests in one write, three
        # answers in order on the same connection, which stays open; HTTP/1.0 is closed.
        post = b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        kept = opened(port, b"".join(post + b"Content-Length: %d\r\n\r\n%s" % (len(b), b) for b in BODIES))
        answers = read_answers(kept, len(BODIES))
        assert [json.loads(body)["oprNum"] for body in answers] == ["p1", "p2", "p3"]
        assert not closed_within(kept, 0.3)
        kept.close()
        old = opened(
            port, b"POST /uplink HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(BODIES[0]), BODIES[0])
        )
        assert answer_head(old).startswith(b"HTTP/1.0 200 ")
        assert closed_within(old, 2.0)
        old.close()


def test_api_answers_healthz_while_the_uplink_is_at_its_cap_and_refuses_a_huge_body(tmp_path: Path) -> None:
    """With the uplink port at max_connections, /healthz still answers 200 on the API port; the
    API's own cap closes its 4th connection at once; a body over api_max_body_bytes is 413 unread,
    token or not."""
    config, _downlink, api = api_config(tmp_path)
    uplink = int(Path(config).read_text().split('uplink = "tcp:', 1)[1].split(":", 1)[0])
    keys = "header_timeout = 5\nmax_connections = 3\napi_max_connections = 3\napi_max_body_bytes = 4096"
    config = limited(config, keys)
    with gateway(tmp_path, config, api):
        flood = [opened(uplink, PARTIAL_HEAD) for _ in range(3)]
        over = opened(uplink)
        assert closed_within(over, 1.0), "the uplink is at its cap"

        health = opened(api, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        assert answer_head(health).startswith(b"HTTP/1.1 200 ")
        health.close()

        huge = opened(
            api,
            b"POST /v1/parks/P001/commands/gateOpen HTTP/1.1\r\nHost: gw\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % 2**28,
        )
        assert answer_head(huge).startswith(b"HTTP/1.1 413 ")
        huge.close()

        idle = [opened(api) for _ in range(3)]
        fourth = opened(api)
        assert closed_within(fourth, 1.0), "the API's own cap"
        for sock in [*idle, fourth, *flood, over]:
            sock.close()
        time.sleep(0.3)
        after = opened(api, b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        head = answer_head(after)
        assert head.startswith(b"HTTP/1.1 200 ")
        after.close()
        metrics = opened(api, b"GET /metrics HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
        body = b""
        while chunk := metrics.recv(65536):
            body += chunk
        metrics.close()
        text = body.decode()
        assert 'cpmi_listener_refused_total{limit="total",listener="uplink"} 1.0' in text
        assert 'cpmi_listener_refused_total{limit="total",listener="api"} 1.0' in text
        assert 'cpmi_listener_refused_total{limit="body_size",listener="api"} 1.0' in text

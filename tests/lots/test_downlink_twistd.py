"""The downlink's refusals over real sockets, against `twistd -n cpmi-gateway` (CONTRACT §4, §5)."""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from gateway.journal.reader import read_records
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import gateway_toml, start_twistd, stop, wait_for_port
from tests.test_end_to_end import envelope, plain_post

API_TOKEN = "api-token-for-the-test"


class Ports:
    def __init__(self) -> None:
        self.uplink, self.downlink, self.api = free_port(), free_port(), free_port()


@pytest.fixture
def gateway(tmp_path: Path) -> Iterator[Ports]:
    """A twistd gateway whose lot P001 must sign (secret "k"), on loopback ports of its own."""
    ports = Ports()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
{gateway_toml(tmp_path, uplink=ports.uplink, downlink=ports.downlink, api=ports.api)}
[cloud]
api_token = "{API_TOKEN}"
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
signature = "required"
secret = "k"
"""
    )
    process = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(ports.uplink, process)
        wait_for_port(ports.downlink, process)
        wait_for_port(ports.api, process)
        yield ports
    finally:
        stop(process, 30)


class Connection:
    """A blocking downlink connection, reading whole frames."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder(2**20)
        self.frames: list[dict[str, Any]] = []

    def send(self, message: dict[str, Any]) -> None:
        self.socket.sendall(encode_frame(message))

    def heartbeat(self, token: str, signed: bool = True, opr: str = "hb") -> None:
        signature = sign("{}", token, "k") if signed else ""
        self.send({"token": token, "code": "heartbeat", "oprNum": opr, "signature": signature, "data": {}})

    def next(self) -> dict[str, Any]:
        """The next frame the gateway sends; fails if it closes first."""
        while not self.frames:
            data = self.socket.recv(65536)
            assert data, "the gateway closed the connection"
            self.frames.extend(json.loads(f) for f in self.decoder.feed(data) if isinstance(f, bytes))
        return self.frames.pop(0)

    def closed_by_gateway(self) -> bool:
        """Whether the gateway closes the connection (what it sends before is skipped)."""
        try:
            while self.socket.recv(65536):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.socket.close()


def api(ports: Ports, method: str, path: str, body: object = None) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{ports.api}{path}",
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {API_TOKEN}"},
    )
    with urllib.request.urlopen(request, timeout=15) as response:
        raw = response.read()
        kind = response.headers.get("content-type", "")
        return response.status, json.loads(raw) if kind.startswith("application/json") else raw.decode()


def log_in(ports: Ports) -> str:
    """Log the lot in over HTTP (signed with its secret "k", as `envelope` does); its token."""
    answer = plain_post(ports.uplink, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))
    assert answer["resultCode"] == "0000", answer
    token: str = answer["data"]["token"]
    return token


def metric(ports: Ports, name: str) -> float:
    _, text = api(ports, "GET", "/metrics")
    [line] = [line for line in text.splitlines() if line.startswith(name + " ")]
    return float(line.split()[1])


def test_an_unsigned_heartbeat_does_not_steal_a_signing_lots_downlink(gateway: Ports, tmp_path: Path) -> None:
    """Over real sockets: a heartbeat carrying the lot's token but no signature is answered 9006 and
    closed; the lot's own connection stays bound and gets the next gateOpen, whose oprNum is the
    journal's."""
    token = log_in(gateway)
    lot = Connection(gateway.downlink)
    lot.heartbeat(token)
    assert lot.next()["resultCode"] == "0000"
    attacker = Connection(gateway.downlink)
    attacker.heartbeat(token, signed=False)
    assert attacker.next()["resultCode"] == "9006"
    assert attacker.closed_by_gateway()
    attacker.close()
    answers: list[tuple[int, Any]] = []
    caller = threading.Thread(
        target=lambda: answers.append(
            api(gateway, "POST", "/v1/parks/P001/commands/gateOpen", {"barCode": "B1"})
        )
    )
    caller.start()
    ack = lot.next()
    assert ack["code"] == "gateOpen"
    data = {"barStatus": 1}
    lot.send(
        {
            "code": "gateOpen",
            "oprNum": ack["oprNum"],
            "resultCode": "0000",
            "resultMessage": "ok",
            "signature": sign(compact(data), token, "k"),
            "data": data,
        }
    )
    caller.join(15)
    assert answers and answers[0][0] == 200 and answers[0][1]["data"] == data
    lot.close()
    assert metric(gateway, "cpmi_downlink_replaced_total") == 0
    assert metric(gateway, "cpmi_downlink_bad_signatures_total") == 1
    commands = [r for r in read_records(tmp_path / "journal") if r.kind in ("command", "command-reply")]
    assert [r.opr for r in commands] == [ack["oprNum"]] * 2


def test_a_stream_of_dollars_before_a_bind_is_closed_at_the_cap(gateway: Ports) -> None:
    """Over real sockets: an unbound connection streaming `$` is closed once past max_unbound_bytes
    (64 KiB by default), and a lot logging in meanwhile is answered at once."""
    attacker = Connection(gateway.downlink)
    attacker.socket.sendall(b"$" * 60_000)
    started = time.monotonic()
    token = log_in(gateway)
    lot = Connection(gateway.downlink)
    lot.heartbeat(token)
    assert lot.next()["resultCode"] == "0000"
    assert time.monotonic() - started < 5
    sent = 60_000
    try:
        while sent < 10 * 2**20:
            attacker.socket.sendall(b"$" * 4096)
            sent += 4096
    except (BrokenPipeError, ConnectionResetError):
        pass
    assert attacker.closed_by_gateway()
    assert sent < 10 * 2**20, "the gateway took 10 MiB of `$` without closing"
    attacker.close()
    lot.close()
    assert metric(gateway, "cpmi_downlink_closed_unbound_bytes_total") == 1

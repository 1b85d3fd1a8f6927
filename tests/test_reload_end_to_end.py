"""Reloading a running twistd: `kill -HUP` and POST /v1/admin/reload, with lots connected over TCP."""

from __future__ import annotations

import json
import random
import signal
import socket
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nacl.pwhash

from gateway.journal.reader import read_records
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import gateway_toml, start_twistd, stop, wait_for_port, wait_until

# A second password, so that a lot's password can change in the file.
OTHER_PASSWORD = "the-new-password"


def _hash(password: str) -> str:
    return nacl.pwhash.argon2id.str(
        password.encode(),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_MIN,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_MIN,
    ).decode()


class TcpLot:
    """A lot's downlink connection over a blocking socket: one request, its answer."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder(2**20)
        self.frames: list[dict[str, Any]] = []

    def request(self, code: str, data: Any, token: str = "") -> dict[str, Any]:
        opr = f"{code}-{random.random()}"
        message = {"token": token, "code": code, "oprNum": opr, "signature": sign(compact(data), token, "k")}
        self.sock.sendall(encode_frame({**message, "data": data}))
        while True:
            for frame in self.frames:
                if frame.get("oprNum") == opr:
                    return frame
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the gateway closed the connection")
            self.frames += [json.loads(payload) for payload in self.decoder.feed(chunk)]

    def login(self, username: str, password: str = PASSWORD) -> str:
        answer = self.request("login", {"parkUserName": username, "parkUserPwd": password})
        assert answer["resultCode"] == "0000", answer
        return str(answer["data"]["token"])

    def closed(self) -> bool:
        """Whether the gateway has closed the connection (waits a moment for it)."""
        self.sock.settimeout(0.2)
        try:
            while chunk := self.sock.recv(65536):
                self.frames += [json.loads(payload) for payload in self.decoder.feed(chunk)]
            return True
        except TimeoutError:
            return False
        except OSError:
            return True
        finally:
            self.sock.settimeout(10)

    def close(self) -> None:
        self.sock.close()


def lot_entry(park: str, username: str, password_hash: str = HASH) -> str:
    return f"""
[[lot]]
park_code = "{park}"
username = "{username}"
password = "{password_hash}"
secret = "k"
"""


def write(path: Path, tmp_path: Path, ports: dict[str, int], *lots: str, extra: str = "") -> None:
    path.write_text(
        f"""
{gateway_toml(tmp_path, **ports)}
[cloud]
api_token = "cloud-token"
{extra}
"""
        + "".join(lots)
    )


def admin_reload(port: int, token: str = "cloud-token") -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/v1/admin/reload",
        data=b"",
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def reloads(tmp_path: Path) -> list[dict[str, Any]]:
    return [record.body for record in read_records(tmp_path / "journal") if record.kind == "reload"]


def test_a_hup_adds_and_removes_lots_without_dropping_the_others(tmp_path: Path) -> None:
    """kill -HUP: P1 stays connected, removed P2 is cut off, added P3 logs in; bad files are refused."""
    ports = {name: free_port() for name in ("uplink", "downlink", "api")}
    config = tmp_path / "gateway.toml"
    write(config, tmp_path, ports, lot_entry("P1", "lot1"), lot_entry("P2", "lot2"))
    process = start_twistd(tmp_path, str(config))
    lots: list[TcpLot] = []
    try:
        wait_for_port(ports["api"], process)
        p1, p2 = TcpLot(ports["downlink"]), TcpLot(ports["downlink"])
        lots += [p1, p2]
        token1, token2 = p1.login("lot1"), p2.login("lot2")

        write(config, tmp_path, ports, lot_entry("P1", "lot1"), lot_entry("P3", "lot3"))
        process.send_signal(signal.SIGHUP)
        wait_until(lambda: len(reloads(tmp_path)) == 1)
        [applied] = reloads(tmp_path)
        assert applied["source"] == "SIGHUP" and applied["ok"] is True
        assert applied["lots"]["added"] == ["P3"] and applied["lots"]["removed"] == ["P2"]
        assert p2.closed()
        assert not p1.closed()
        assert p1.request("heartbeat", {}, token1)["resultCode"] == "0000"
        p3 = TcpLot(ports["downlink"])
        lots.append(p3)
        p3.login("lot3")
        # The removed lot's token is revoked: a new connection cannot bind with it.
        again = TcpLot(ports["downlink"])
        lots.append(again)
        assert again.request("heartbeat", {}, token2)["resultCode"] == "9000"

        # A broken file is refused by the API with its line; everything keeps running.
        config.write_text(config.read_text().replace("[[lot]]", "[[lot]\n", 1))
        status, body = admin_reload(ports["api"])
        assert status == 400 and body["reloaded"] is False
        assert body["error"].startswith(f"{config}: not valid TOML")
        assert p1.request("heartbeat", {}, token1)["resultCode"] == "0000"
        status, body = admin_reload(ports["api"], token="not-a-token")
        assert status == 401

        # P1's password changes: its connection is cut and its token revoked, even after a restart.
        other = _hash(OTHER_PASSWORD)
        write(config, tmp_path, ports, lot_entry("P1", "lot1", other), lot_entry("P3", "lot3"))
        status, body = admin_reload(ports["api"])
        assert status == 200 and body["lots"]["cut"] == ["P1"], body
        assert p1.closed()
        assert [r["ok"] for r in reloads(tmp_path)] == [True, False, True]
    finally:
        for lot in lots:
            lot.close()
        stopped = stop(process, 30)
    assert stopped, "the gateway did not stop within 30 s of SIGTERM"

    process = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(ports["downlink"], process)
        late = TcpLot(ports["downlink"])
        lots.append(late)
        assert late.request("heartbeat", {}, token1)["resultCode"] == "9000"
        assert TcpLot(ports["downlink"]).login("lot1", OTHER_PASSWORD)
    finally:
        for lot in lots:
            lot.close()
        stopped = stop(process, 30)
    assert stopped, "the gateway did not stop within 30 s of SIGTERM"

"""A legacy lot speaking bolink over its own port, through twistd, to a cloud and back."""

from __future__ import annotations

import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.dialects.bolink_messages import sign
from gateway.journal.reader import read_records
from tests.test_cloud_end_to_end import wait_until
from tests.test_end_to_end import free_port, start_twistd, wait_for_port

SECRET = "s3cret"
API_TOKEN = "cloud-token-for-the-test"


class Cloud:
    """A CloudEvents receiver on a thread: keeps every event it is sent, answers 204."""

    def __init__(self) -> None:
        events: list[dict[str, Any]] = []
        self.events = events

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                events.extend(json.loads(body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/events"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of_type(self, suffix: str) -> list[dict[str, Any]]:
        return [event for event in self.events if event["type"].endswith(suffix)]


class LegacyLot:
    """A bolink lot's end: JSON lines over TCP, signed with the secret."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.socket.makefile("rb")
        self.token = ""

    def send(self, service: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        line = json.dumps({"service_name": service, "token": self.token, "sign": sign(text, SECRET)})
        # The envelope with data as written, so that it is what the sign covers.
        self.socket.sendall((line[:-1] + f',"data":{text}}}\r\n').encode())

    def read(self) -> dict[str, Any]:
        answer: dict[str, Any] = json.loads(self.file.readline())
        return answer

    def close(self) -> None:
        self.file.close()
        self.socket.close()


def api_post(port: int, path: str, body: object) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}",
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {API_TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=20) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_a_bolink_lot_reaches_the_cloud_and_its_gate_opens(tmp_path: Path) -> None:
    """Entries and exits of a bolink lot arrive as carIn/carOut/freeSpace events; gateOpen lifts its rod."""
    cloud = Cloud()
    bolink_port, api_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[gateway]
signing_key = "{tmp_path / "gateway.key"}"
[listen]
uplink = "tcp:0:interface=127.0.0.1"
downlink = "tcp:0:interface=127.0.0.1"
api = "tcp:{api_port}:interface=127.0.0.1"
bolink = "tcp:{bolink_port}:interface=127.0.0.1"
[journal]
path = "{tmp_path / "journal"}"
[cloud]
url = "{cloud.url}"
api_token = "{API_TOKEN}"
batch_max_delay = 0.05
[[lot]]
park_code = "B001"
dialect = "bolink"
secret = "{SECRET}"
"""
    )
    gateway = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(bolink_port, gateway)
        wait_for_port(api_port, gateway)
        lot = LegacyLot(bolink_port)
        lot.send("login", {"park_id": "B001", "local_id": "box-1"})
        login = lot.read()
        assert login["state"] == 1 and len(login["token"]) == 32
        lot.token = login["token"]
        entry = {
            "order_id": "A1001",
            "car_number": "京A12345",
            "in_time": 1700000000,
            "in_channel_id": "in-1",
            "car_type": "月租车",
            "empty_plot": 41,
        }
        lot.send("in_park", entry)
        assert lot.read() == {"service_name": "in_park", "state": 1, "errmsg": "", "order_id": "A1001"}
        exit_ = {
            **entry,
            "out_time": 1700003599,
            "out_channel_id": "out-2",
            "amount_receivable": "12.50",
            "total": "10.00",
            "reduce_amount": 2.5,
            "pay_type": "wallet",
            "empty_plot": 42,
        }
        lot.send("out_park", exit_)
        assert lot.read()["state"] == 1
        lot.socket.sendall(b"0x11\n")
        assert lot.file.readline() == b"0x12\n"

        wait_until(lambda: len(cloud.of_type("freeSpace.v1")) == 2 and len(cloud.of_type("carOut.v1")) == 1)
        (car_in,) = cloud.of_type("org.cpmi.t002.carIn.v1")
        assert car_in["source"] == "urn:cpmi:park:B001"
        assert car_in["data"] == {
            "recordCode": "A1001",
            "carNum": "京A12345",
            "inCross": "in-1",
            "inTime": "2023-11-15T06:13:20+08:00",
            "inIdentity": 1,
        }
        (car_out,) = cloud.of_type("org.cpmi.t002.carOut.v1")
        assert car_out["data"]["parkMinutes"] == 59
        assert car_out["data"]["outTime"] == "2023-11-15T07:13:19+08:00"
        assert (car_out["data"]["payMoney"], car_out["data"]["incomeMoney"]) == (12.5, 10.0)
        assert (car_out["data"]["discountMoney"], car_out["data"]["paymentMode"]) == (2.5, 9)
        assert [e["data"]["emptyNum"] for e in cloud.of_type("freeSpace.v1")] == [41, 42]
        assert [e["data"]["reason"] for e in cloud.of_type("lot-online.v1")] == ["login (local_id box-1)"]

        # The cloud opens the gate: the lot sees operate_liftrod and lifts it.
        answers: list[tuple[int, dict[str, Any]]] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                api_post(api_port, "/v1/parks/B001/commands/gateOpen", {"barCode": "in-1", "isOpen": 1})
            )
        )
        caller.start()
        assert lot.read() == {
            "service_name": "operate_liftrod",
            "channel_id": "in-1",
            "channel_name": "",
            "operate": 1,
        }
        lot.socket.sendall(b'{"service_name":"operate_liftrod","state":1}\n')
        caller.join(20)
        assert answers[0][0] == 200 and answers[0][1]["resultCode"] == "0000"
        status, body = api_post(api_port, "/v1/parks/B001/commands/feeQuery", {"recordCode": "A1001"})
        assert status == 400 and "bolink" in body["error"]
        lot.close()
    finally:
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        cloud.server.shutdown()
    records = list(read_records(str(tmp_path / "journal")))
    kept = [(r.kind, r.code) for r in records if r.kind in ("uplink", "legacy")]
    assert kept == [
        ("uplink", "carIn"),
        ("uplink", "freeSpace"),
        ("legacy", "in_park"),
        ("uplink", "carOut"),
        ("uplink", "freeSpace"),
        ("legacy", "out_park"),
    ]
    assert all(r.body["message"]["data"]["order_id"] == "A1001" for r in records if r.kind == "legacy")
    assert not any(lot_token_in(r.body, login["token"]) for r in records)


def lot_token_in(body: object, token: str) -> bool:
    """Whether the lot's token appears anywhere in a record's body (it must not)."""
    return token in json.dumps(body)

"""A lot speaking the ParkingOS protocol as its server expects it, through twistd, to a cloud and back.

The lot here is written from the protocol's description (the ParkingOS server's
SensorServerHandler and the bolink SDK documentation), not from the gateway: it
signs with its own MD5, sends JSON lines, and reads frames as the ParkingOS
server writes them, "\\n" + JSON + "\\r".
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from gateway.journal.reader import read_records
from tests.ports import free_port
from tests.processes import gateway_toml, start_twistd, stop, wait_for_port, wait_until

SECRET = "3b7c1e0f9a2d4c6e"
API_TOKEN = "cloud-token-for-the-test"
PARK = "30001"


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


class ParkingOSLot:
    """A lot's SDK end: JSON lines out, signed MD5(data + "key=" + secret) in upper case; frames in."""

    def __init__(self, port: int) -> None:
        self.socket = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.file = self.socket.makefile("rb")
        self.token = ""

    def send(self, service: str, data: dict[str, Any]) -> None:
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
        sign = hashlib.md5((text + "key=" + SECRET).encode()).hexdigest().upper()
        head = {"service_name": service, "sign": sign} | ({"token": self.token} if self.token else {})
        line = json.dumps(head, ensure_ascii=False, separators=(",", ":"))[:-1] + f',"data":{text}}}\n'
        self.socket.sendall(line.encode())

    def frame(self) -> bytes:
        """The next frame the gateway writes: "\\n", the text, "\\r"."""
        assert self.file.read(1) == b"\n"
        text = b""
        while not text.endswith(b"\r"):
            text += self.file.read(1)
        return text[:-1]

    def read(self) -> dict[str, Any]:
        message: dict[str, Any] = json.loads(self.frame())
        return message

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


def test_a_parkingos_lot_reaches_the_cloud_and_its_barrier_rises(tmp_path: Path) -> None:
    """A ParkingOS lot logs in, reports an entry, an exit and a payment, and a gateOpen raises its barrier."""
    cloud = Cloud()
    bolink_port, api_port = free_port(), free_port()
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
{gateway_toml(tmp_path, uplink=0, downlink=0, api=api_port, bolink=bolink_port)}
[cloud]
url = "{cloud.url}"
api_token = "{API_TOKEN}"
batch_max_delay = 0.05
[[lot]]
park_code = "{PARK}"
dialect = "bolink"
secret = "{SECRET}"
"""
    )
    gateway = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(bolink_port, gateway)
        wait_for_port(api_port, gateway)
        lot = ParkingOSLot(bolink_port)
        local = "5e2a91c0d7b3_2.1.0.0_channels_1_2"
        lot.send("login", {"union_id": "200300", "park_id": PARK, "local_id": local, "version": "2.1.0.0"})
        login = lot.read()
        assert list(login) == ["state", "token", "service_name"] and login["state"] == 1
        lot.token = login["token"]

        # An entry of a temporary car (car_cost_type 1 临停车), as SDK 2.1 writes it.
        entry = {
            "car_number": "京N8D2K1",
            "in_time": 1700000000,
            "order_id": "4711",
            "car_type": "小车",
            "car_cost_type": 1,
            "in_channel_id": "1",
            "empty_plot": 41,
            "park_id": PARK,
        }
        lot.send("in_park", entry)
        assert lot.read() == {"service_name": "in_park", "state": 1, "errmsg": "", "order_id": "4711"}
        # The SDK sending it again, as the later ParkingOS server answers a repeat.
        lot.send("in_park", entry)
        assert lot.read() == {
            "state": 0,
            "errmsg": "数据已处理过...",
            "service_name": "in_park",
            "order_id": "4711",
            "car_number": "京N8D2K1",
        }
        # The exit, paid with the owner's code (sweepcode); amounts as strings; SDK 2.1's "empty_ plot".
        exit_ = {
            "car_number": "京N8D2K1",
            "in_time": 1700000000,
            "out_time": 1700003599,
            "car_cost_type": 1,
            "out_channel_id": "2",
            "amount_receivable": "15.00",
            "reduce_amount": "2.50",
            "total": "12.50",
            "pay_type": "sweepcode",
            "order_id": "4711",
            "empty_ plot": 42,
            "park_id": PARK,
            "auth_code": "",
        }
        lot.send("out_park", exit_)
        assert lot.read()["state"] == 1
        # The payment completed in cash after all: the whole order again (2.3 upload_order).
        lot.send("upload_order", {**exit_, "pay_type": "cash", "data_target": "cloud"})
        assert lot.read() == {"service_name": "upload_order", "state": 1, "errmsg": "", "order_id": "4711"}
        lot.socket.sendall(b"0x11\n")
        assert lot.frame() == b"0x12"

        wait_until(lambda: len(cloud.of_type("freeSpace.v1")) == 3 and len(cloud.of_type("carOut.v1")) == 2)
        (car_in,) = cloud.of_type("org.cpmi.t002.carIn.v1")
        assert car_in["source"] == f"urn:cpmi:park:{PARK}"
        assert car_in["data"] == {
            "recordCode": "4711",
            "carNum": "京N8D2K1",
            "inCross": "1",
            "inTime": "2023-11-15T06:13:20+08:00",
            "inIdentity": 2,  # 临时车
        }
        settled, paid = (event["data"] for event in cloud.of_type("org.cpmi.t002.carOut.v1"))
        assert settled == {
            "recordCode": "4711",
            "carNum": "京N8D2K1",
            "outCross": "2",
            "inTime": "2023-11-15T06:13:20+08:00",
            "outTime": "2023-11-15T07:13:19+08:00",
            "inIdentity": 2,
            "parkMinutes": 59,
            "payMoney": 15.0,
            "incomeMoney": 12.5,
            "discountMoney": 2.5,
            "paymentMode": 0,  # WeChat or Alipay, not said which: 未知
        }
        assert paid == {**settled, "paymentMode": 1}  # 现金
        assert [e["data"]["emptyNum"] for e in cloud.of_type("freeSpace.v1")] == [41, 42, 42]
        assert [e["data"]["reason"] for e in cloud.of_type("lot-online.v1")] == [f"login (local_id {local})"]

        # The cloud opens the gate: the lot is told to raise the barrier (operate 0) and says it did.
        answers: list[tuple[int, dict[str, Any]]] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                api_post(api_port, f"/v1/parks/{PARK}/commands/gateOpen", {"barCode": "2", "isOpen": 1})
            )
        )
        caller.start()
        command = lot.read()
        assert command["service_name"] == "operate_liftrod"
        assert (command["channel_id"], command["operate"], command["park_id"]) == ("2", 0, PARK)
        lot.send(
            "operate_liftrod",
            {
                "data_target": "cloud",
                "state": 1,
                "channel_id": command["channel_id"],
                "operate": command["operate"],
                "liftrod_id": command["liftrod_id"],
            },
        )
        caller.join(20)
        assert answers[0][0] == 200 and answers[0][1]["resultCode"] == "0000"
        status, body = api_post(api_port, f"/v1/parks/{PARK}/commands/feeQuery", {"recordCode": "4711"})
        assert status == 400 and "bolink" in body["error"]
        lot.close()
    finally:
        stopped = stop(gateway, 30)
        cloud.server.shutdown()
    assert stopped, "the gateway did not stop within 30 s of SIGTERM"
    records = list(read_records(str(tmp_path / "journal")))
    kept = [(r.kind, r.code) for r in records if r.kind in ("uplink", "legacy")]
    assert kept == [
        ("uplink", "carIn"),
        ("uplink", "freeSpace"),
        ("legacy", "in_park"),
        ("uplink", "carOut"),
        ("uplink", "freeSpace"),
        ("legacy", "out_park"),
        ("uplink", "carOut"),
        ("uplink", "freeSpace"),
        ("legacy", "upload_order"),
    ]
    assert all(r.body["message"]["data"]["order_id"] == "4711" for r in records if r.kind == "legacy")
    assert not any(login["token"] in json.dumps(r.body) for r in records)

"""The t002 sink over real sockets: gateway A stands in for its lots towards gateway B, a T/CPMI 002 platform.

B is an ordinary cpmi-gateway (its own lots P001 and P002, a CloudEvents cloud,
an autoPay endpoint, the command API). A has the same two parks: P001 a
standard lot on A's own HTTP and TCP ports, P002 a bolink lot on A's bolink
port; each logs in to B with its upstream account. Two twistd processes,
blocking clients, and the journals of both read back.
"""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any, cast

import pytest

from gateway.journal.reader import read_records
from gateway.journal.record import Record
from gateway.protocol.framing import encode_frame
from gateway.protocol.signing import compact, sign
from tests.dialects.test_bolink_end_to_end import API_TOKEN, SECRET, Cloud, api_post
from tests.dialects.test_bolink_end_to_end import ParkingOSLot as LegacyLot
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import gateway_toml, start_twistd, wait_for_port, wait_until
from tests.protocol.samples import RESPONSE_SAMPLES, SAMPLES
from tests.test_cloud_end_to_end import QueryEndpoint
from tests.test_end_to_end import envelope, plain_post
from tests.test_reload_end_to_end import TcpLot
from tests.test_reload_end_to_end import _hash as argon2id_hash

UPSTREAM_PASSWORDS = {"P001": "up-pass-1", "P002": "up-pass-2"}
UPSTREAM_ENV = "P001_UPSTREAM"  # A reads P001's upstream password from here (env:NAME)
GATE_OPEN = {"barCode": "GATE-OUT-02", "isOpen": 1}
GATE_OPENED = RESPONSE_SAMPLES["gateOpen"]  # what the standard lot replies
CAR_IN = cast(dict[str, Any], SAMPLES["carIn"])
ENTRY = {  # a bolink lot's in_park, as in the dialect test
    "order_id": "A1001",
    "car_number": "京A12345",
    "in_time": 1700000000,
    "in_channel_id": "in-1",
    "car_type": "月租车",
    "empty_plot": 41,
}


class Pair:
    """Gateway B (the platform, with its cloud and autoPay endpoint) and gateway A (sink t002 towards B)."""

    def __init__(self, tmp_path: Path) -> None:
        self.cloud = Cloud()
        self.query = ThreadingHTTPServer(("127.0.0.1", 0), QueryEndpoint)
        threading.Thread(target=self.query.serve_forever, daemon=True).start()
        self.b_dir, self.a_dir = tmp_path / "b", tmp_path / "a"
        self.b_dir.mkdir()
        self.a_dir.mkdir()
        self.b = {name: free_port() for name in ("uplink", "downlink", "api")}
        self.a = {name: free_port() for name in ("uplink", "downlink", "api", "bolink")}
        self.b_config = self.b_dir / "gateway.toml"
        self.b_config.write_text(self._b_text())
        self.a_config = self.a_dir / "gateway.toml"
        self.a_config.write_text(self._a_text())
        self.b_process: subprocess.Popen[bytes] | None = None
        self.a_process: subprocess.Popen[bytes] | None = None

    def _b_text(self) -> str:
        lots = "".join(
            f"""
[[lot]]
park_code = "{park}"
username = "up-{park.lower()}"
password = "{argon2id_hash(password)}"
"""
            for park, password in UPSTREAM_PASSWORDS.items()
        )
        return f"""
{gateway_toml(self.b_dir, "gw-b", **self.b)}
[tcp]
bind_timeout = 5
[cloud]
sink = "cloudevents"
url = "{self.cloud.url}"
query_url = "http://127.0.0.1:{self.query.server_address[1]}/autopay"
api_token = "{API_TOKEN}"
batch_max_delay = 0.05
{lots}"""

    def _a_text(self) -> str:
        # A's autoPay waits on B, which waits (1 s at most) on its endpoint: A gets a little more.
        return f"""
{gateway_toml(self.a_dir, "gw-a", **self.a)}
[tcp]
bind_timeout = 5
[cloud]
sink = "t002"
url = "http://127.0.0.1:{self.b["uplink"]}/uplink"
downlink = "127.0.0.1:{self.b["downlink"]}"
retry_min_delay = 0.2
retry_max_delay = 1.0
[deadlines]
autoPay = 3
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
upstream_username = "up-p001"
upstream_password = "env:{UPSTREAM_ENV}"
[[lot]]
park_code = "P002"
dialect = "bolink"
secret = "{SECRET}"
upstream_username = "up-p002"
upstream_password = "{UPSTREAM_PASSWORDS["P002"]}"
"""

    def start_b(self) -> None:
        self.b_process = start_twistd(self.b_dir, str(self.b_config))
        wait_for_port(self.b["api"], self.b_process)
        wait_for_port(self.b["uplink"], self.b_process)
        wait_for_port(self.b["downlink"], self.b_process)

    def stop_b(self) -> None:
        assert self.b_process is not None
        self.b_process.send_signal(signal.SIGTERM)
        # twistd ends by re-raising the signal once the reactor has stopped cleanly.
        assert self.b_process.wait(30) in (0, -signal.SIGTERM)

    def start_a(self) -> None:
        self.a_process = start_twistd(self.a_dir, str(self.a_config))
        for name in ("uplink", "downlink", "bolink"):
            wait_for_port(self.a[name], self.a_process)

    def stop(self) -> None:
        for process in (self.a_process, self.b_process):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(10)
        self.cloud.server.shutdown()
        self.query.shutdown()

    def a_records(self) -> list[Record]:
        return list(read_records(self.a_dir / "journal"))

    def b_records(self) -> list[Record]:
        return list(read_records(self.b_dir / "journal"))

    def b_park(self, park: str) -> dict[str, Any]:
        """B's API view of `park` (connected, backlog, ...)."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.b['api']}/v1/parks/{park}",
            headers={"Authorization": f"Bearer {API_TOKEN}"},
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer

    def wait_bound_upstream(self, *parks: str) -> None:
        """Until B sees A's link for each of `parks` bound."""
        wait_until(lambda: all(self.b_park(park)["connected"] for park in parks), deadline=30)

    def command(self, park: str, lot_side: Callable[[], object]) -> tuple[int, dict[str, Any]]:
        """POST gateOpen for `park` to B's API while `lot_side` plays the lot; B's status and answer."""
        answers: list[tuple[int, dict[str, Any]]] = []
        caller = threading.Thread(
            target=lambda: answers.append(
                api_post(self.b["api"], f"/v1/parks/{park}/commands/gateOpen", GATE_OPEN)
            )
        )
        caller.start()
        try:
            lot_side()
        finally:
            caller.join(20)
        assert answers, "B's API did not answer"
        return answers[0]


@pytest.fixture
def pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Pair]:
    """B and A running, B first; A's process has P001's upstream password in its environment."""
    monkeypatch.setenv(UPSTREAM_ENV, UPSTREAM_PASSWORDS["P001"])
    gateways = Pair(tmp_path)
    try:
        gateways.start_b()
        gateways.start_a()
        yield gateways
    finally:
        gateways.stop()
    assert_no_password_in_clear(gateways)


def assert_no_password_in_clear(gateways: Pair) -> None:
    """Neither the upstream passwords nor the lot's own appear in A's journal files (nor in A's log)."""
    files = [*sorted((gateways.a_dir / "journal").iterdir()), gateways.a_dir / "twistd.log"]
    assert any(path.suffix == ".jsonl" for path in files)
    for path in files:
        text = path.read_bytes().decode("utf-8", "replace")
        for password in (*UPSTREAM_PASSWORDS.values(), PASSWORD):
            assert password not in text, (path.name, password)


def bind_standard_lot(gateways: Pair) -> tuple[TcpLot, str]:
    """The standard lot P001 logs in to A over HTTP and binds its TCP connection with that token."""
    login = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
    answer = plain_post(gateways.a["uplink"], envelope("login", login))
    assert answer["resultCode"] == "0000", answer
    token = str(answer["data"]["token"])
    lot = TcpLot(gateways.a["downlink"])
    assert lot.request("heartbeat", {}, token)["resultCode"] == "0000"
    return lot, token


def answer_next_ack(lot: TcpLot, token: str, code: str, data: object) -> dict[str, Any]:
    """Read the lot's TCP connection until an ACK of `code` arrives; REPLY to it 0000 with `data`."""
    answered = {frame["oprNum"] for frame in lot.frames if "resultCode" in frame}
    while True:
        for frame in lot.frames:
            if frame.get("code") == code and "resultCode" not in frame and frame["oprNum"] not in answered:
                reply = {
                    "code": code,
                    "oprNum": frame["oprNum"],
                    "resultCode": "0000",
                    "resultMessage": "ok",
                    "signature": sign(compact(data), token, "k"),
                    "data": data,
                }
                lot.sock.sendall(encode_frame(reply))
                lot.frames.append(reply)  # marks the ACK answered for the next call
                return frame
        chunk = lot.sock.recv(65536)
        if not chunk:
            raise ConnectionError("A closed the lot's connection")
        for payload in lot.decoder.feed(chunk):
            assert isinstance(payload, bytes), payload
            lot.frames.append(json.loads(payload))


def uplinks(records: list[Record], park: str) -> list[Record]:
    return [record for record in records if record.kind == "uplink" and record.park == park]


def body_of(record: Record) -> dict[str, Any]:
    """A record's body, which is an object for every kind these tests read."""
    assert isinstance(record.body, dict), record
    return record.body


def test_uplinks_commands_and_queries_pass_through_a_to_b(pair: Pair) -> None:
    """A re-sends its lots' uplinks to B with their oprNums, relays B's commands, and asks B for autoPay.

    Both lots' uplinks reach B (the bolink one translated), B's cloud sees the
    standard lot's; B's gateOpen reaches each lot through its dialect and the
    lot's REPLY is B's API answer; once the standard lot has gone, A answers
    B's command 9008 itself; an autoPay is answered with what B's endpoint said.
    """
    lot, token = bind_standard_lot(pair)
    legacy = LegacyLot(pair.a["bolink"])
    try:
        # 1. Uplinks: A answers at once, B gets the same request with the same oprNum.
        answer = plain_post(pair.a["uplink"], envelope("carIn", CAR_IN, token, opr="a-car-in-1"))
        assert answer["resultCode"] == "0000", answer
        legacy.send("login", {"park_id": "P002", "local_id": "box-1"})
        login = legacy.read()
        assert login["state"] == 1, login
        legacy.token = login["token"]
        legacy.send("in_park", ENTRY)
        assert legacy.read()["state"] == 1

        wait_until(lambda: len(uplinks(pair.b_records(), "P001")) == 1)
        [forwarded] = uplinks(pair.b_records(), "P001")
        [original] = uplinks(pair.a_records(), "P001")
        assert (forwarded.code, forwarded.opr) == ("carIn", "a-car-in-1")
        assert forwarded.body == original.body == CAR_IN
        wait_until(lambda: len(pair.cloud.of_type("org.cpmi.t002.carIn.v1")) >= 1)
        [event] = [e for e in pair.cloud.of_type("org.cpmi.t002.carIn.v1") if e["source"].endswith("P001")]
        assert event["cpmioprnum"] == "a-car-in-1"

        translated = [r for r in uplinks(pair.a_records(), "P002") if r.code == "carIn"]
        assert len(translated) == 1 and body_of(translated[0])["recordCode"] == "A1001"
        wait_until(lambda: any(r.code == "carIn" for r in uplinks(pair.b_records(), "P002")))
        [legacy_in] = [r for r in uplinks(pair.b_records(), "P002") if r.code == "carIn"]
        assert (legacy_in.opr, legacy_in.body) == (translated[0].opr, translated[0].body)

        # 2. B's command API -> A's link -> the lot, and its REPLY back.
        pair.wait_bound_upstream("P001", "P002")
        acks: list[dict[str, Any]] = []
        status, body = pair.command(
            "P001", lambda: acks.append(answer_next_ack(lot, token, "gateOpen", GATE_OPENED))
        )
        assert status == 200 and body["resultCode"] == "0000" and body["data"] == GATE_OPENED, body
        assert acks[0]["data"]["barCode"] == "GATE-OUT-02" and acks[0]["token"] == token

        lifted: list[dict[str, Any]] = []

        def lift() -> None:
            command = legacy.read()
            lifted.append(command)
            answer = {key: command[key] for key in ("channel_id", "operate", "liftrod_id")}
            legacy.send("operate_liftrod", {"state": 1, **answer})  # signed, its members in data

        status, body = pair.command("P002", lift)
        assert status == 200 and body["resultCode"] == "0000", body
        assert lifted[0]["service_name"] == "operate_liftrod" and lifted[0]["channel_id"] == "GATE-OUT-02"

        # 5. autoPay: B asks its endpoint, whose answer is the lot's.
        paid = plain_post(pair.a["uplink"], envelope("autoPay", SAMPLES["autoPay"], token, opr="a-pay-1"))
        assert paid["resultCode"] == "0000", paid
        assert paid["data"]["payStatus"] == 1 and paid["data"]["orderCode"].startswith("gw-b-"), paid
        assert [r.opr for r in pair.b_records() if r.kind == "query"] == ["a-pay-1"]
        [b_answer] = [r.body for r in pair.b_records() if r.kind == "answer" and r.opr == "a-pay-1"]
        assert paid["resultMessage"] == b_answer["resultMessage"], (paid, b_answer)  # type: ignore[index]

        # 3. The standard lot goes away: A answers B's command 9008 itself, at once.
        lot.close()
        wait_until(lambda: any(r.kind == "lot-offline" and r.park == "P001" for r in pair.a_records()))
        started = time.monotonic()
        status, body = api_post(pair.b["api"], "/v1/parks/P001/commands/gateOpen", GATE_OPEN)
        assert status == 200 and body["resultCode"] == "9008", (status, body)
        assert time.monotonic() - started < 1.5
    finally:
        lot.close()
        legacy.close()

    records = pair.a_records()
    for park, results in (("P001", ["0000", "9008"]), ("P002", ["0000"])):
        acked = [r for r in records if r.kind == "upstream-ack" and r.park == park]
        replied = [r for r in records if r.kind == "upstream-reply" and r.park == park]
        assert [r.code for r in acked] == ["gateOpen"] * len(results)
        assert [body_of(r)["resultCode"] for r in replied] == results
        # Paired by B's oprNum: the REPLY went back under the ACK's own.
        assert [r.opr for r in acked] == [r.opr for r in replied]


def test_uplinks_sent_while_b_is_down_arrive_in_order_once_and_the_link_rebinds(pair: Pair) -> None:
    """With B stopped, A still answers its lot 0000; once B is back every uplink reaches it once, in order.

    A's TCP link to B binds again by itself, so B's commands reach the lot again.
    """
    lot, token = bind_standard_lot(pair)
    try:
        answer = plain_post(pair.a["uplink"], envelope("carIn", CAR_IN, token, opr="before"))
        assert answer["resultCode"] == "0000"
        wait_until(lambda: [r.opr for r in uplinks(pair.b_records(), "P001")] == ["before"])
        pair.wait_bound_upstream("P001")

        pair.stop_b()
        during = [f"during-{n}" for n in range(3)]
        for n, opr in enumerate(during):
            data = {**CAR_IN, "recordCode": f"R-OUTAGE-{n}"}
            answer = plain_post(pair.a["uplink"], envelope("carIn", data, token, opr=opr))
            assert answer["resultCode"] == "0000", answer
        pair.start_b()

        wait_until(lambda: len(uplinks(pair.b_records(), "P001")) >= 4, deadline=30)
        time.sleep(0.3)  # a duplicate sent right after would be journaled by now
        oprs = [r.opr for r in uplinks(pair.b_records(), "P001")]
        assert oprs == ["before", *during], oprs
        recorded = [body_of(r)["recordCode"] for r in uplinks(pair.b_records(), "P001")[1:]]
        assert recorded == [f"R-OUTAGE-{n}" for n in range(3)]

        pair.wait_bound_upstream("P001")
        status, body = pair.command("P001", lambda: answer_next_ack(lot, token, "gateOpen", GATE_OPENED))
        assert status == 200 and body["resultCode"] == "0000" and body["data"] == GATE_OPENED, body
    finally:
        lot.close()

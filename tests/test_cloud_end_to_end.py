"""Forwarding over real sockets: twistd sends signed batches to the README's receiver, through an outage."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from gateway.journal.reader import read_records
from gateway.keys import load_or_create_signing_key, public_key_b64
from tests.ports import free_port
from tests.processes import ROOT, gateway_toml, start_twistd, stop, wait_for_port, wait_until
from tests.protocol.samples import SAMPLES
from tests.test_end_to_end import CAR_IN, HASH, PASSWORD, envelope, plain_post


def write_config(tmp_path: Path, gateway_id: str, port: int, cloud: str) -> Path:
    """A gateway config with one lot, the uplink on `port` and the `[cloud]` lines given."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
{gateway_toml(tmp_path, gateway_id, uplink=port, downlink=0, api=0)}
[cloud]
{cloud}
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
    )
    return config


class Receiver:
    """docs/receiver.py in a subprocess; the event ids it printed, in order."""

    def __init__(self, port: int, public_key: str) -> None:
        self.port = port
        self.public_key = public_key
        self.ids: list[str] = []
        self.process: subprocess.Popen[str] | None = None
        self.started = False

    def start(self) -> None:
        """Start the receiver on its port; the first start moves to another free port if the
        one picked was taken meanwhile (another process may bind it between the pick and here)."""
        for attempt in range(5):
            self.process = subprocess.Popen(
                [sys.executable, str(ROOT / "docs" / "receiver.py"), self.url, self.public_key],
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,  # a line per request: a pipe nobody reads would fill
                text=True,
            )
            try:
                wait_for_port(self.port, self.process)  # type: ignore[arg-type]
            except AssertionError:
                if self.started or attempt == 4 or self.process.poll() is None:
                    raise
                self.port = free_port()
                continue
            threading.Thread(target=self._read, args=(self.process,), daemon=True).start()
            self.started = True
            return

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/events"

    def _read(self, process: subprocess.Popen[str]) -> None:
        assert process.stdout is not None
        for line in process.stdout:
            self.ids.append(line.split()[0])

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def test_uplinks_reach_a_real_receiver_through_an_outage_and_a_restart(tmp_path: Path) -> None:
    """Uplinks arrive signed; an outage loses nothing and keeps order; a restart re-sends nothing."""
    key, _ = load_or_create_signing_key(str(tmp_path / "gateway.key"))
    receiver = Receiver(free_port(), public_key_b64(key))
    receiver.start()  # before the config is written: its url holds the port it got
    port = free_port()
    config = write_config(
        tmp_path,
        "gw-e2e",
        port,
        f'''url = "{receiver.url}"
batch_max_delay = 0.05
retry_min_delay = 0.1
retry_max_delay = 0.5''',
    )
    gateway = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(port, gateway)
        token = plain_post(port, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))[
            "data"
        ]["token"]

        def send(first: int, count: int) -> None:
            for n in range(first, first + count):
                answer = plain_post(
                    port, envelope("carIn", {**CAR_IN, "recordCode": f"R{n}"}, token, f"o-{n}")
                )
                assert answer["resultCode"] == "0000"

        send(0, 10)
        wait_until(lambda: len(receiver.ids) >= 10)
        receiver.stop()  # the cloud goes down; the lot does not notice
        send(10, 30)
        time.sleep(0.5)
        receiver.start()
        wait_until(lambda: len(receiver.ids) >= 40)
        gateway.send_signal(signal.SIGTERM)
        gateway.wait(30)
        gateway = start_twistd(tmp_path, str(config))
        wait_for_port(port, gateway)
        send(40, 1)
        wait_until(lambda: len(receiver.ids) >= 41)
        time.sleep(0.5)  # anything re-sent after the restart would be here by now
    finally:
        stopped = stop(gateway, 30)
        receiver.stop()
    assert stopped, "the gateway did not stop within 30 s of SIGTERM"
    records = {r.seq: r for r in read_records(tmp_path / "journal")}
    uplink_ids = [f"gw-e2e-{seq}" for seq, r in sorted(records.items()) if r.kind == "uplink"]
    assert len(uplink_ids) == 41
    received = [i for i in receiver.ids if i in set(uplink_ids)]
    assert received == uplink_ids  # each once, in journal order
    assert any(r.kind == "forwarded" for r in records.values())


class QueryEndpoint(BaseHTTPRequestHandler):
    """A cloud's autoPay endpoint: pays at once, or too late for a record code "SLOW"."""

    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        event = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if event["data"]["recordCode"] == "SLOW":
            time.sleep(3)
        body = json.dumps({"payStatus": 1, "orderCode": event["id"], "actualPay": 10.0}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_autopay_is_answered_by_the_cloud_within_its_deadline(tmp_path: Path) -> None:
    """twistd asks a real query endpoint: its answer is the lot's data; a late one is 9999 after 1 s."""
    endpoint = ThreadingHTTPServer(("127.0.0.1", 0), QueryEndpoint)
    threading.Thread(target=endpoint.serve_forever, daemon=True).start()
    port = free_port()
    config = write_config(
        tmp_path,
        "gw-q",
        port,
        f'''url = "http://127.0.0.1:1/events"
query_url = "http://127.0.0.1:{endpoint.server_address[1]}/autopay"''',
    )
    gateway = start_twistd(tmp_path, str(config))
    try:
        wait_for_port(port, gateway)
        token = plain_post(port, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))[
            "data"
        ]["token"]
        paid = plain_post(port, envelope("autoPay", SAMPLES["autoPay"], token, "pay-1"))
        assert paid["resultCode"] == "0000", paid
        assert paid["data"]["payStatus"] == 1 and paid["data"]["orderCode"].startswith("gw-q-")
        start = time.monotonic()
        late = plain_post(
            port, envelope("autoPay", {**SAMPLES["autoPay"], "recordCode": "SLOW"}, token, "pay-2")
        )
        waited = time.monotonic() - start
        assert late["resultCode"] == "9999" and "within 1 s" in late["resultMessage"], late
        assert 0.9 < waited < 2.5
    finally:
        stopped = stop(gateway, 30)
        endpoint.shutdown()
    assert stopped, "the gateway did not stop within 30 s of SIGTERM"
    answers = [r.body for r in read_records(tmp_path / "journal") if r.kind == "answer"]
    assert [a["resultCode"] for a in answers] == ["0000", "9999"]

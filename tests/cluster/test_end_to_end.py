"""Under twistd: sink nats and a [[forward]] to a CloudEvents receiver, through outages of both."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import nats

from gateway.journal.reader import read_records
from gateway.keys import load_or_create_signing_key, public_key_b64
from tests.cluster.natsserver import NatsServer
from tests.ports import free_port
from tests.processes import gateway_toml, kill, lots_toml, start_twistd, wait_for_port, wait_until
from tests.test_cloud_end_to_end import Receiver
from tests.test_end_to_end import CAR_IN, PASSWORD, envelope, plain_post


def write_config(tmp_path: Path, port: int, api: int, nats_url: str, receiver_url: str) -> Path:
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
{gateway_toml(tmp_path, "gw-n", uplink=port, downlink=0, api=api)}
[cluster]
servers = ["{nats_url}"]
reconnect_min_delay = 0.05
reconnect_max_delay = 0.3
request_timeout = 1.0
[cloud]
sink = "nats"
batch_max_delay = 0.02
retry_min_delay = 0.05
retry_max_delay = 0.5
request_timeout = 1.0
[[forward]]
name = "city"
sink = "cloudevents"
url = "{receiver_url}"
batch_max_delay = 0.02
retry_min_delay = 0.05
retry_max_delay = 0.5
{lots_toml(2)}"""
    )
    return config


def stream_ids(url: str) -> list[str]:
    """The CloudEvent ids in CPMI_EVENTS, in stream order (read with nats-py, as a consumer would)."""

    async def read() -> list[str]:
        nc = await nats.connect(url)
        try:
            js = nc.jetstream()
            info = await js.stream_info("CPMI_EVENTS")
            ids = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                message = await js.get_msg("CPMI_EVENTS", seq)
                ids.append(json.loads(message.data)["id"])
            return ids
        finally:
            await nc.close()

    return asyncio.run(read())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def get_text(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return str(response.read().decode())


def test_every_acknowledged_uplink_reaches_the_stream_and_the_forward_in_order(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Uplinks of two lots, acknowledged while nats-server and then the CloudEvents receiver are down,
    each reach the stream once and the receiver, in journal order per lot; /readyz stays 200 while NATS
    is down and shows its state; a down forward holds back only itself."""
    key, _ = load_or_create_signing_key(str(tmp_path / "gateway.key"))
    receiver = Receiver(free_port(), public_key_b64(key))
    server = nats_server  # killed by the fixture, whatever happens here
    port, api = free_port(), free_port()
    config = write_config(tmp_path, port, api, server.url, receiver.url)
    receiver.start()
    gateway = start_twistd(tmp_path, str(config))
    acknowledged: list[str] = []
    stop = threading.Event()
    try:
        wait_for_port(port, gateway)
        tokens = {}
        for lot in ("lot001", "lot002"):
            login = plain_post(port, envelope("login", {"parkUserName": lot, "parkUserPwd": PASSWORD}))
            tokens[lot] = login["data"]["token"]

        def send(count: int) -> None:
            for _ in range(count):
                n = len(acknowledged)
                lot = ("lot001", "lot002")[n % 2]
                answer = plain_post(
                    port, envelope("carIn", {**CAR_IN, "recordCode": f"R{n}"}, tokens[lot], f"o-{n}")
                )
                assert answer["resultCode"] == "0000"
                acknowledged.append(f"o-{n}")

        send(20)
        wait_until(lambda: len(receiver.ids) >= 20)
        server.stop()  # NATS goes; lots are still answered, and the city still gets events
        send(30)
        ready = get_json(f"http://127.0.0.1:{api}/readyz")
        assert ready["status"] == "ready"
        wait_until(lambda: get_json(f"http://127.0.0.1:{api}/readyz")["nats"]["state"] == "reconnecting")
        wait_until(lambda: len(receiver.ids) >= 50)
        server.start()
        wait_until(lambda: "cpmi_nats_connected 1.0" in get_text(f"http://127.0.0.1:{api}/metrics"))
        receiver.stop()  # now the city goes; NATS catches up regardless
        send(30)
        wait_until(lambda: len(stream_ids(server.url)) >= 80, deadline=30)
        metrics = get_text(f"http://127.0.0.1:{api}/metrics")
        assert 'cpmi_forward_sink_backlog_records{sink="city"}' in metrics
        receiver.start()
        wait_until(lambda: len(receiver.ids) >= 80, deadline=30)
        time.sleep(0.5)  # anything sent twice would be here by now
        status_lines = get_text(f"http://127.0.0.1:{api}/readyz")
    finally:
        stop.set()
        gateway.send_signal(signal.SIGTERM)
        try:
            gateway.wait(30)
        finally:
            kill(gateway)
            receiver.stop()
    ids = stream_ids(server.url)
    server.stop()
    assert "nats" in status_lines
    records = {r.seq: r for r in read_records(tmp_path / "journal")}
    uplinks = [r for _, r in sorted(records.items()) if r.kind == "uplink" and r.code == "carIn"]
    assert [r.opr for r in uplinks] == acknowledged
    expected = [f"gw-n-{r.seq}" for r in uplinks]
    in_stream = [each for each in ids if each in set(expected)]
    assert in_stream == expected  # each once, in journal order (so in order per lot)
    at_city = [each for each in receiver.ids if each in set(expected)]
    assert at_city == expected
    forwarded = [r for r in records.values() if r.kind == "forwarded"]
    assert {r.body.get("sink", "") for r in forwarded} == {"", "city"}

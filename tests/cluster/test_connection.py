"""The NATS connection on its own loop thread, against a real nats-server."""

from __future__ import annotations

import threading
from typing import Any

import nats.js.errors
import pytest
import pytest_twisted
from nats.aio.client import Client
from nats.js import JetStreamContext
from twisted.internet import reactor

from gateway.cluster.connection import (
    CLOSED,
    CONNECTED,
    CONNECTING,
    RECONNECTING,
    NatsConnection,
    NatsUnavailable,
    reconnect_delay,
)
from gateway.settings import ClusterSettings
from tests.cluster.natsserver import NatsServer
from tests.ports import free_port
from tests.processes import eventually


def settings(*servers: str, **options: Any) -> ClusterSettings:
    options.setdefault("reconnect_min_delay", 0.05)
    options.setdefault("reconnect_max_delay", 0.2)
    options.setdefault("request_timeout", 2.0)
    return ClusterSettings(servers=servers, **options)


def test_reconnect_delay_backs_off_and_caps() -> None:
    """The reconnect wait doubles from reconnect_min_delay up to reconnect_max_delay, jittered in [½, 1]."""
    config = ClusterSettings(servers=("nats://x:1",), reconnect_min_delay=0.25, reconnect_max_delay=10.0)
    assert reconnect_delay(config, 0, lambda: 1.0) == 0.0
    assert reconnect_delay(config, 1, lambda: 1.0) == 0.25
    assert reconnect_delay(config, 3, lambda: 1.0) == 1.0
    assert reconnect_delay(config, 3, lambda: 0.0) == 0.5
    assert reconnect_delay(config, 100, lambda: 1.0) == 10.0


def test_run_before_start_fails_unavailable() -> None:
    """run() before the connection exists fails at once with NatsUnavailable, naming the state."""
    connection = NatsConnection(settings("nats://127.0.0.1:1"), reactor=reactor)
    assert connection.state == CLOSED
    failures: list[Any] = []
    connection.run(lambda nc, js: nc.flush()).addErrback(failures.append)
    assert failures and failures[0].check(NatsUnavailable)
    assert "closed" in str(failures[0].value)


@pytest_twisted.ensureDeferred
async def test_run_fires_on_the_reactor_thread(nats_server: NatsServer) -> None:
    """A coroutine run on the NATS loop fires its Deferred on the reactor thread, with its result."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    connection.startService()
    try:
        assert connection.state == CONNECTING
        await eventually(lambda: connection.state == CONNECTED)
        seen: dict[str, object] = {}

        async def request(nc: Client, js: JetStreamContext) -> int:
            seen["loop thread"] = threading.current_thread().name
            await nc.flush()
            return 42

        result = await connection.run(request)
        assert result == 42
        assert seen["loop thread"] == "nats"
        assert threading.current_thread() is threading.main_thread()
    finally:
        await connection.stopService()
    assert connection.state == CLOSED
    assert not any(thread.name == "nats" for thread in threading.enumerate())


@pytest_twisted.ensureDeferred
async def test_failure_of_the_coroutine_reaches_the_deferred(nats_server: NatsServer) -> None:
    """An exception raised on the NATS loop fails the Deferred with that exception."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    connection.startService()
    try:
        await eventually(lambda: connection.state == CONNECTED)

        async def broken(nc: Client, js: JetStreamContext) -> None:
            raise ValueError("no")

        with pytest.raises(ValueError, match="no"):
            await connection.run(broken)
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_to_reactor_hands_a_subscription_message_to_the_reactor(nats_server: NatsServer) -> None:
    """A subscription handler on the NATS loop hands each message to the reactor thread with to_reactor."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    connection.startService()
    received: list[tuple[bytes, bool]] = []

    def on_reactor(data: bytes) -> None:
        received.append((data, threading.current_thread() is threading.main_thread()))

    try:
        await eventually(lambda: connection.state == CONNECTED)

        async def subscribe(nc: Client, js: JetStreamContext) -> None:
            async def handler(msg: Any) -> None:
                connection.to_reactor(on_reactor, msg.data)

            await nc.subscribe("t.x", cb=handler)
            await nc.publish("t.x", b"hello")

        await connection.run(subscribe)
        await eventually(lambda: bool(received))
        assert received == [(b"hello", True)]
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_connecting_until_a_server_comes_then_connected(tmp_path: Any) -> None:
    """With no server up the state stays connecting (run fails unavailable); once one starts, connected."""
    server = NatsServer(tmp_path, free_port())
    connection = NatsConnection(settings(server.url), reactor=reactor)
    connection.startService()
    try:
        from twisted.internet.task import deferLater

        await deferLater(reactor, 0.3, lambda: None)
        assert connection.state == CONNECTING
        with pytest.raises(NatsUnavailable):
            await connection.run(lambda nc, js: nc.flush())
        server.start()
        await eventually(lambda: connection.state == CONNECTED, timeout=20)
    finally:
        await connection.stopService()
        server.stop()


@pytest_twisted.ensureDeferred
async def test_reconnects_after_the_server_restarts(nats_server: NatsServer) -> None:
    """The server going away turns the state to reconnecting; its return to connected, counted."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    states: list[str] = []
    connection.state_observers.append(states.append)
    connection.startService()
    try:
        await eventually(lambda: connection.state == CONNECTED)
        nats_server.stop()
        await eventually(lambda: connection.state == RECONNECTING)
        assert connection.last_error
        nats_server.start()
        await eventually(lambda: connection.state == CONNECTED, timeout=20)
        assert connection.reconnects == 1
        assert connection.last_error == ""
        assert await connection.run(lambda nc, js: _flushed(nc)) == "flushed"
    finally:
        await connection.stopService()
    assert states == [CONNECTING, CONNECTED, RECONNECTING, CONNECTED, CLOSED]


async def _flushed(nc: Client) -> str:
    await nc.flush()
    return "flushed"


@pytest_twisted.ensureDeferred
async def test_ensure_stream_creates_it_once_with_the_replicas(nats_server: NatsServer) -> None:
    """ensure_stream creates a missing stream with [cluster] replicas and the given config, and
    takes an existing one as it is."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    connection.startService()
    try:
        await eventually(lambda: connection.state == CONNECTED)
        info: Any = await connection.ensure_stream("T_EVENTS", ["t.events.>"], duplicate_window=120.0)
        assert info.config.num_replicas == 1
        assert info.config.duplicate_window == 120.0
        again: Any = await connection.ensure_stream("T_EVENTS", ["t.events.>"], duplicate_window=300.0)
        assert again.config.duplicate_window == 120.0
        # Overlapping subjects: the server refuses, and the refusal reaches the caller.
        with pytest.raises(nats.js.errors.APIError):
            await connection.ensure_stream("T_OTHER", ["t.events.x"])
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_stop_while_connecting_joins_the_thread(tmp_path: Any) -> None:
    """Stopping before any server answered ends the connect attempts and joins the loop thread."""
    connection = NatsConnection(settings(f"nats://127.0.0.1:{free_port()}"), reactor=reactor)
    connection.startService()
    await connection.stopService()
    assert connection.state == CLOSED
    assert not any(thread.name == "nats" for thread in threading.enumerate())


@pytest_twisted.ensureDeferred
async def test_a_connection_nats_py_gave_up_is_made_again(nats_server: NatsServer) -> None:
    """When nats-py closes its client by itself (not at stop), the connection starts over with a new
    client: connecting, then connected, and run() works again."""
    connection = NatsConnection(settings(nats_server.url), reactor=reactor)
    states: list[str] = []
    connection.state_observers.append(states.append)
    connection.startService()
    try:
        await eventually(lambda: connection.state == CONNECTED)
        first = connection._nc
        await connection.run(lambda nc, js: nc.close())  # as nats-py does after a protocol error
        await eventually(lambda: connection.state == CONNECTED and connection._nc is not first)
        assert await connection.run(lambda nc, js: _flushed(nc)) == "flushed"
    finally:
        await connection.stopService()
    assert states == [CONNECTING, CONNECTED, CONNECTING, CONNECTED, CLOSED]

"""A journal, the NATS connection and a forwarding engine with the nats sink, on the real reactor."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from nats.aio.client import Client
from nats.js import JetStreamContext
from twisted.internet import reactor as _reactor

from gateway.cluster.connection import CONNECTED, NatsConnection
from gateway.cluster.sink import TAKE_IN_DELAY, NatsSink
from gateway.forwarding import ForwardingEngine
from gateway.journal.reader import read_records
from gateway.journal.writer import Journal
from gateway.settings import CloudConfig, ClusterSettings
from tests.processes import eventually

reactor: Any = _reactor

FAST = CloudConfig(
    sink="nats",
    url="",
    downlink="",
    query_url="",
    api_token="",
    batch_max_delay=0.01,
    retry_min_delay=0.05,
    retry_max_delay=0.3,
    request_timeout=2.0,
)


def cluster_settings(*servers: str, **options: Any) -> ClusterSettings:
    options.setdefault("reconnect_min_delay", 0.05)
    options.setdefault("reconnect_max_delay", 0.3)
    options.setdefault("request_timeout", 2.0)
    return ClusterSettings(servers=servers, **options)


class Rig:
    """The parts of a gateway's nats sink, started and stopped by the test."""

    def __init__(self, path: Path, url: str, *, gateway_id: str = "gw-t", cloud: CloudConfig = FAST) -> None:
        self.path = path
        self.journal = Journal.open(path, reactor=reactor, fsync="never")
        self.connection = NatsConnection(cluster_settings(url), reactor=reactor)
        self.sink = NatsSink(
            connection=self.connection, settings=cloud, gateway_id=gateway_id, zone=ZoneInfo("Asia/Shanghai")
        )
        self.engine = ForwardingEngine(
            journal=self.journal, clock=reactor, settings=cloud, sink=self.sink, take_in_delay=TAKE_IN_DELAY
        )

    async def start(self, connected: bool = True) -> None:
        self.connection.startService()
        if connected:
            await eventually(lambda: self.connection.state == CONNECTED)
        self.engine.start()

    async def stop(self) -> None:
        self.engine.stop()
        await self.connection.stopService()
        await self.journal.close()

    async def stream(self, name: str = "CPMI_EVENTS") -> list[Any]:
        """Every message in the stream, in stream order."""

        async def read(nc: Client, js: JetStreamContext) -> list[Any]:
            info = await js.stream_info(name)
            return [
                await js.get_msg(name, seq) for seq in range(info.state.first_seq, info.state.last_seq + 1)
            ]

        messages: list[Any] = await self.connection.run(read)
        return messages

    def records(self) -> list[Any]:
        return list(read_records(self.path))


def event(message: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(message.data)
    return body

"""Whole gateways in this process against one real nats-server, and lots on their TCP downlinks.

`Gateway` is `tap.makeService` on free loopback ports with `[cluster]` on; `Lot`
is the lot client of `gateway.lotclient` bound to a gateway's downlink, answering
each ACK as its `answer` says and keeping what it was sent; `Cloud` is a NATS
client of the test's own (a `NatsConnection`), asking as an operator's cloud would.
`TwoGateways` is the tests' usual setup: gw-a and gw-b, a cloud and the lots the
test binds, all started by ``async with`` and all stopped after it.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any

import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from gateway import tap
from gateway.cluster.commands import NatsCommands
from gateway.cluster.connection import CONNECTED, NatsConnection
from gateway.cluster.sync import ClusterSync
from gateway.journal.reader import read_records_skipping
from gateway.journal.record import Record
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkClient, DownlinkReply
from gateway.protocol.envelope import Request
from gateway.settings import ClusterSettings
from tests.cluster.natsserver import NatsServer
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import eventually, gateway_toml

API_TOKEN = "cloud-token"
PARKS = ("P001", "P002")


class Gateway:
    """One gateway (makeService) with [cluster] on the given nats-server."""

    def __init__(self, tmp_path: Path, name: str, nats: NatsServer, extra: str = "") -> None:
        self.name = name
        self.work = tmp_path / name
        self.work.mkdir()
        self.downlink = free_port()
        self.api = free_port()
        lots = "".join(
            f'[[lot]]\npark_code = "{park}"\nusername = "user{park}"\npassword = "{HASH}"\nsecret = "k"\n'
            for park in PARKS
        )
        config = self.work / "gateway.toml"
        config.write_text(
            f"""
{gateway_toml(self.work, name, uplink=free_port(), downlink=self.downlink, api=self.api)}
[cluster]
servers = ["{nats.url}"]
reconnect_min_delay = 0.05
reconnect_max_delay = 0.5
[cloud]
api_token = "{API_TOKEN}"
{extra}
{lots}"""
        )
        self.config = config
        self._make()

    def _make(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", str(self.config)])
        self.service = tap.makeService(options, reactor)
        self.connection: NatsConnection = self.service.getServiceNamed("cluster").connection  # type: ignore[attr-defined]

    async def restart(self, connected: bool = True) -> None:
        """Stop the gateway and start a new one from the same configuration and journal."""
        await self.stop()
        self._make()
        self.service.startService()
        if connected:
            await eventually(lambda: self.connection.state == CONNECTED, what=f"{self.name} connected")

    @property
    def commands(self) -> NatsCommands:
        """The gateway's NATS command responder."""
        cluster = self.service.getServiceNamed("cluster")
        service: Any = cluster.getServiceNamed("nats-commands")  # type: ignore[attr-defined]
        commands: NatsCommands = service.commands
        return commands

    @property
    def sync(self) -> ClusterSync:
        """The gateway's JetStream sync."""
        lots: Any = self.service.getServiceNamed("parts").getServiceNamed("lots")  # type: ignore[attr-defined]
        sync: ClusterSync = lots.sync
        return sync

    async def start(self) -> None:
        self.service.startService()
        await eventually(lambda: self.connection.state == CONNECTED, what=f"{self.name} connected to NATS")

    async def stop(self) -> None:
        if self.service.running:
            await self.service.stopService()
        # A wave of binds settles the heap (gc.freeze, gateway.heap): no later test should inherit it.
        gc.unfreeze()

    def records(self, kind: str | None = None) -> list[Record]:
        """The journal's records (of `kind`), as written so far."""
        found = read_records_skipping(str(self.work / "journal"), on_damage=lambda damage: None)
        return [record for record in found if kind is None or record.kind == kind]

    async def post(self, park: str, code: str, body: object) -> tuple[int, Any]:
        """POST a command to this gateway's API; (status, JSON body)."""
        response = await treq.post(
            f"http://127.0.0.1:{self.api}/v1/parks/{park}/commands/{code}",
            data=json.dumps(body).encode(),
            headers={"Authorization": [f"Bearer {API_TOKEN}"], "Content-Type": ["application/json"]},
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        return response.code, json.loads(await response.content())


class Lot:
    """A lot bound to a gateway's downlink by login, answering ACKs as `answer` says."""

    def __init__(self, park: str, answer: Callable[[Request], Any] | None = None) -> None:
        self.park = park
        self.received: list[Request] = []
        self.answer = answer or (lambda request: DownlinkReply(data={"done": request.code}))
        self.client: DownlinkClient | None = None

    def _answer(self, request: Request) -> Any:
        self.received.append(request)
        return self.answer(request)

    async def bind(self, gateway: Gateway) -> None:
        """Log in on `gateway`'s downlink and wait until bound (and the gateway has taken it on)."""
        await self.leave()
        self.client = DownlinkClient(
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.downlink),
            clock=reactor,
            credentials=LotCredentials(self.park, f"user{self.park}", PASSWORD, "k"),
            answer=self._answer,
            bind="login",
        )
        self.client.start()
        await self.client.when_bound()

    async def leave(self) -> None:
        if self.client is not None:
            client, self.client = self.client, None
            await client.stop()

    def codes(self) -> list[str]:
        return [request.code for request in self.received]


class Cloud:
    """The operator's side of NATS: a connection of its own."""

    def __init__(self, nats: NatsServer) -> None:
        self.connection = NatsConnection(
            ClusterSettings(servers=(nats.url,), reconnect_min_delay=0.05, reconnect_max_delay=0.5),
            reactor=reactor,
        )

    async def start(self) -> None:
        self.connection.startService()
        await eventually(lambda: self.connection.state == CONNECTED, what="the cloud connected")

    async def stop(self) -> None:
        if self.connection.running:
            await self.connection.stopService()

    def request(
        self, subject: str, payload: bytes, timeout: float = 5.0, headers: dict[str, str] | None = None
    ) -> Deferred[Any]:
        """A NATS request; fires with the reply message (or fails as nats-py does)."""

        async def ask(nc: Any, js: Any) -> Any:
            return await nc.request(subject, payload, timeout=timeout, headers=headers)

        return self.connection.run(ask)

    async def wait_for_responder(self, subject: str, timeout: float = 10.0) -> None:
        """Until a request on `subject` finds a responder (the gateway's subscription is in place)."""
        from nats.errors import NoRespondersError

        responded: list[bool] = []

        async def probe(nc: Any, js: Any) -> bool:
            try:
                # Unknown to the lot's gateway (never a valid code): answered 9001 at once, nothing sent.
                await nc.request(subject.rsplit(".", 1)[0] + ".probe", b"{}", timeout=2)
            except NoRespondersError:
                return False
            return True

        async def check() -> None:
            responded.append(await self.connection.run(probe))

        deadline = reactor.seconds() + timeout
        while not (responded and responded[-1]):
            if reactor.seconds() > deadline:
                raise AssertionError(f"no responder on {subject} within {timeout} s")
            await check()


class TwoGateways:
    """Gateways gw-a and gw-b (lots P001 and P002 each) on one nats-server, a cloud client (unless
    ``cloud=False``) and the lots the test binds (`lot`): ``async with`` starts them, and stops them all
    after, the lots first and gw-a last. ``extra`` is added to both gateways' configuration."""

    def __init__(self, tmp_path: Path, nats: NatsServer, extra: str = "", *, cloud: bool = True) -> None:
        self.nats = nats
        self.a = Gateway(tmp_path, "gw-a", nats, extra)
        self.b = Gateway(tmp_path, "gw-b", nats, extra)
        self.cloud = Cloud(nats)
        self._with_cloud = cloud
        self.lots: list[Lot] = []

    def lot(self, park: str = "P001", answer: Callable[[Request], Any] | None = None) -> Lot:
        """A lot (not bound yet) that leaves when the setup stops."""
        lot = Lot(park, answer)
        self.lots.append(lot)
        return lot

    async def start(self) -> None:
        await self.a.start()
        await self.b.start()
        if self._with_cloud:
            await self.cloud.start()

    async def stop(self) -> None:
        for lot in self.lots:
            await lot.leave()
        await self.cloud.stop()
        await self.b.stop()
        await self.a.stop()

    async def __aenter__(self) -> TwoGateways:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        await self.stop()

    async def stream_messages(self, stream: str = "CPMI_SYNC") -> int:
        """How many messages `stream` holds (CPMI_SYNC, a work queue: the entries not acknowledged)."""

        async def info(nc: Any, js: Any) -> int:
            return int((await js.stream_info(stream)).state.messages)

        count: int = await self.cloud.connection.run(info)
        return count

    async def stream_empties(self, stream: str = "CPMI_SYNC", timeout: float = 10.0) -> None:
        """Until `stream` holds nothing: an acknowledgement reaches the server a moment after the
        gateway has settled the entry."""
        held = [await self.stream_messages(stream)]
        deadline = reactor.seconds() + timeout
        while held[-1] != 0:
            if reactor.seconds() > deadline:
                raise AssertionError(f"{stream} still holds {held[-1]} messages after {timeout} s")
            await deferLater(reactor, 0.02, lambda: None)
            held.append(await self.stream_messages(stream))


def reply_of(msg: Any) -> dict[str, Any]:
    """A command reply's JSON."""
    body: dict[str, Any] = json.loads(msg.data)
    return body

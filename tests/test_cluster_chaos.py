"""Chaos: gateways as one through NATS, losing a gateway and a nats-server under load (CONTRACT §9).

Three nats-servers on deploy/nats (as tests/test_deploy_nats.py renders them),
two twistd gateways with `[cluster]` (replicas 3) and `sink = "nats"`, HAProxy
on deploy/haproxy.cfg (as tests/test_haproxy_cluster.py renders it), and 25
lots, each on its own loopback address (127.0.0.x), posting carIn uplinks
continuously and holding a downlink bound by its token. Mid-run one gateway
and one nats-server are killed with SIGKILL. Then:

- every lot whose downlink was on the killed gateway is bound again within
  10 s through the balancer, by heartbeat with the token it had (no lot logs
  in again: a refused token fails the test);
- every uplink a gateway answered `0000` (a lot retries an unanswered one with
  the same oprNum, as lots do) is in CPMI_EVENTS exactly once, once the killed
  gateway has been started again and has published its journal;
- a command reaches every lot, from either gateway's API.

Every process is killed in teardown and writes only to files under the test's directory.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from gateway.cluster.connection import CONNECTED, NatsConnection
from gateway.journal.kinds import TOKEN_RECORD
from gateway.journal.reader import read_records_skipping
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import Backoff, DownlinkClient, DownlinkReply
from gateway.protocol.signing import compact, sign
from gateway.settings import ClusterSettings
from tests.lots.harness import PASSWORD
from tests.processes import NatsNode, eventually, kill, start_nats_cluster, wait_until
from tests.protocol.samples import SAMPLES
from tests.test_haproxy_cluster import (
    API_TOKEN,
    LOTS,
    SECRET,
    Cluster,
    Gateway,
    Lot,
    park,
    running,
    start_gateway,
    username,
)

# Seconds of load before the kills and after them.
BEFORE, AFTER = 3.0, 4.0
# Between two uplinks of one lot.
PAUSE = 0.05


@dataclass
class ClusterGateway(Gateway):
    """A twistd gateway of the cluster: [cluster] on the three nats-servers, events to NATS."""

    nats: tuple[str, ...] = ()

    def config(self) -> str:
        servers = ", ".join(f'"{url}"' for url in self.nats)
        cluster = (
            f"[cluster]\nservers = [{servers}]\nreplicas = 3\n"
            "reconnect_min_delay = 0.05\nreconnect_max_delay = 0.5\n"
            '[cloud]\nsink = "nats"\n'
        )
        text = super().config().replace('[cloud]\nsink = "log-only"\n', cluster)
        return text.replace("max_connections_per_peer = 3", "max_connections_per_peer = 16")


@dataclass
class Deployment:
    nats: list[NatsNode]
    gateways: list[ClusterGateway]
    cluster: Cluster


@pytest.fixture
def deployment(haproxy: str, tmp_path: Path) -> Iterator[Deployment]:
    """Three nats-servers, two cluster gateways, HAProxy in front; all up, all killed at the end."""
    nats = start_nats_cluster(tmp_path)
    try:
        # JetStream elects its meta leader some seconds after the routes are up: the gateways' buckets
        # and streams wait for it (a deployment's NATS runs long before its gateways start).
        wait_until(
            lambda: all(node.monitoring("/jsz").get("meta_cluster", {}).get("leader") for node in nats),
            30,
            "a JetStream meta leader",
        )
        urls = tuple(node.url for node in nats)
        gateways = [ClusterGateway(f"gw-{n}", tmp_path / f"gw{n}", nats=urls) for n in (1, 2)]
        with running(haproxy, tmp_path, gateways) as cluster:
            yield Deployment(nats, gateways, cluster)
    finally:
        for node in nats:
            kill(node.process)


@implementer(IAgentEndpointFactory)
class _FromSource:
    """Connections to the balancer from one lot's address."""

    def __init__(self, source: str) -> None:
        self.source = source

    def endpointForURI(self, uri: Any) -> TCP4ClientEndpoint:
        return TCP4ClientEndpoint(
            reactor, uri.host.decode(), uri.port, timeout=5, bindAddress=(self.source, 0)
        )


class ChaosLot:
    """A lot at 127.0.0.x: a downlink bound by its token (never by a new login), uplinks in a loop."""

    def __init__(self, n: int, deployment: Deployment) -> None:
        self.n = n
        self.park = park(n)
        self.source = f"127.0.0.{10 + n}"
        self.deployment = deployment
        # Logged in once, before the run, over the balancer's downlink (then that connection goes).
        plain = Lot(n, deployment.cluster)
        self.token = plain.login()
        plain.close()
        self.acknowledged: list[str] = []
        self.refused: list[str] = []
        self.commands: list[str] = []
        self.running = True
        self.agent = Agent.usingEndpointFactory(
            reactor, _FromSource(self.source), pool=HTTPConnectionPool(reactor, False)
        )
        self.downlink = DownlinkClient(
            endpoint=TCP4ClientEndpoint(
                reactor, "127.0.0.1", deployment.cluster.downlink, timeout=5, bindAddress=(self.source, 0)
            ),
            clock=reactor,
            credentials=LotCredentials(self.park, username(n), PASSWORD, SECRET),
            answer=self._answer,
            token=lambda: self.token,
            bind="heartbeat",
            backoff=Backoff(initial=0.1, factor=2.0, maximum=1.0, jitter=0.5),
            on_token_invalid=lambda: self.refused.append("token refused on bind"),
        )

    def _answer(self, request: Any) -> DownlinkReply:
        self.commands.append(request.code)
        return DownlinkReply(data={"done": request.code})

    async def post_forever(self) -> None:
        """Post carIn after carIn; an unanswered one is sent again with the same oprNum until answered."""
        count = 0
        while self.running:
            count += 1
            opr = f"{self.park}-{count}"
            data = {"recordCode": opr, "carNum": "京A12345", "inCross": "1", "inTime": "2026-11-24 08:30:00"}
            envelope = {
                "token": self.token,
                "code": "carIn",
                "oprNum": opr,
                "signature": sign(compact(data), self.token, SECRET),
                "data": data,
            }
            body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
            while True:
                answer = await self._post(body)
                if answer is not None:
                    break
                await deferLater(reactor, 0.1, lambda: None)
            if answer.get("resultCode") == "0000":
                self.acknowledged.append(opr)
            else:
                self.refused.append(f"{opr}: {answer}")
            await deferLater(reactor, PAUSE, lambda: None)

    async def _post(self, body: bytes) -> dict[str, Any] | None:
        """One POST through the balancer; its JSON answer, or None when none came (retry)."""
        try:
            response = await treq.request(
                "POST",
                f"http://127.0.0.1:{self.deployment.cluster.uplink}/uplink",
                data=body,
                headers={"Content-Type": ["application/x-www-form-urlencoded"]},
                agent=self.agent,
                timeout=5,
            )
            content = await response.content()
            answer: dict[str, Any] = json.loads(content)
            return answer
        except Exception:
            return None


def tokens_known(gateway: Gateway) -> set[str]:
    """The parks whose token the gateway journaled, issued or learned."""
    records = read_records_skipping(str(gateway.work / "journal"), on_damage=lambda damage: None)
    return {record.park for record in records if record.kind == TOKEN_RECORD}


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def command(gateway: Gateway, lot: ChaosLot) -> tuple[int, Any]:
    """POST gateOpen for ``lot`` to ``gateway``'s command API."""
    response = await treq.post(
        f"http://127.0.0.1:{gateway.api}/v1/parks/{lot.park}/commands/gateOpen",
        data=json.dumps(SAMPLES["gateOpen"]).encode(),
        headers={"Authorization": [f"Bearer {API_TOKEN}"], "Content-Type": ["application/json"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
        timeout=15,
    )
    return response.code, json.loads(await response.content())


async def stream_ids(urls: tuple[str, ...]) -> list[str] | None:
    """Every Nats-Msg-Id of a carIn in CPMI_EVENTS, as many times as stored; None if it could not be read."""
    connection = NatsConnection(ClusterSettings(servers=urls), reactor=reactor)
    connection.startService()
    try:
        await eventually(lambda: connection.state == CONNECTED, 20, "the test's NATS connection")

        async def read(nc: Any, js: Any) -> list[str]:
            info = await js.stream_info("CPMI_EVENTS")
            total = info.state.messages
            sub = await js.subscribe("cpmi.events.>", stream="CPMI_EVENTS", ordered_consumer=True)
            ids: list[str] = []
            try:
                for _ in range(total):
                    msg = await sub.next_msg(timeout=10)
                    if msg.subject.endswith(".carIn"):
                        ids.append(msg.headers["Nats-Msg-Id"])
            finally:
                await sub.unsubscribe()
            return ids

        found: list[str] = await connection.run(read)
        return found
    except Exception as error:  # a leader being elected, a server lost meanwhile: read again
        print(f"reading CPMI_EVENTS: {error!r}; again")
        return None
    finally:
        await connection.stopService()


@pytest_twisted.ensureDeferred
async def test_losing_a_gateway_and_a_nats_server_under_load_loses_nothing(deployment: Deployment) -> None:
    """kill -9 of a gateway and a nats-server mid-run: lots back within 10 s with their tokens, every
    acknowledged uplink in CPMI_EVENTS exactly once, commands reach every lot from either gateway."""
    lots = [ChaosLot(n, deployment) for n in range(LOTS)]
    posting: list[Deferred[None]] = []
    try:
        # Before the chaos: every gateway has every lot's token (issued there or learned from cpmi_tokens).
        await eventually(
            lambda: all(len(tokens_known(g)) == LOTS for g in deployment.gateways), 20, "tokens shared"
        )
        for lot in lots:
            lot.downlink.start()
        await eventually(lambda: all(lot.downlink.bound for lot in lots), 20, "every lot bound by its token")
        posting = [Deferred.fromCoroutine(lot.post_forever()) for lot in lots]
        await sleep(BEFORE)
        victim, survivor = deployment.gateways
        held = {p for p, state in victim.parks().items()}
        assert held and len(held) < LOTS, f"balance source put {len(held)} of {LOTS} lots on gw-1"
        moving = [lot for lot in lots if lot.park in held]
        assert victim.process is not None
        victim.process.kill()
        killed = time.monotonic()
        kill(deployment.nats[0].process)
        victim.process.wait(timeout=10)
        await eventually(lambda: not any(lot.downlink.bound for lot in moving), 10, "gw-1's lots cut")
        try:
            took = await eventually(lambda: all(lot.downlink.bound for lot in moving), 10, "bound again")
        except AssertionError:
            unbound = {
                lot.park: (lot.refused, lot.downlink.counters) for lot in moving if not lot.downlink.bound
            }
            raise AssertionError(
                f"gw-1's lots not bound again by their tokens within 10 s: {unbound}"
            ) from None
        print(
            f"{len(moving)} lots bound again {time.monotonic() - killed:.2f} s after kill -9 ({took:.2f} s)"
        )
        await sleep(AFTER)
        for lot in lots:
            lot.running = False
        for done in posting:
            await done
        posting = []
        refused = {lot.park: lot.refused for lot in lots if lot.refused}
        assert not refused, refused
        assert all(lot.acknowledged for lot in lots)
        assert set(survivor.parks()) == {lot.park for lot in lots}

        # Commands reach every lot, through the survivor holding them all.
        for lot in lots:
            status, body = await command(survivor, lot)
            assert status == 200 and body["resultCode"] == "0000", (lot.park, status, body)
        # The killed gateway back: it publishes its journal, and asks the survivor through NATS.
        start_gateway(victim)
        assert all(lot.commands.count("gateOpen") == 1 for lot in lots)

        acknowledged = {f"{lot.park}:{opr}" for lot in lots for opr in lot.acknowledged}
        urls = tuple(server.url for server in deployment.nats[1:])
        deadline = time.monotonic() + 30
        while True:
            ids = await stream_ids(urls) or []
            missing = acknowledged - set(ids)
            if not missing or time.monotonic() > deadline:
                break
            await sleep(1)
        assert not missing, f"{len(missing)} acknowledged uplinks not in the stream: {sorted(missing)[:5]}"
        twice = {msg_id for msg_id in ids if ids.count(msg_id) > 1} if len(ids) != len(set(ids)) else set()
        assert not twice, f"stored more than once: {sorted(twice)[:5]}"
        print(f"{len(acknowledged)} acknowledged uplinks, each once in CPMI_EVENTS")
        # The gateway started again asks the survivor holding the lots through NATS.
        for lot in lots[:5]:
            status, body = await command(victim, lot)
            assert status == 200 and body["resultCode"] == "0000", (lot.park, status, body)
            assert lot.commands.count("gateOpen") == 2
    finally:
        for lot in lots:
            lot.running = False
        for done in posting:
            await done
        for lot in lots:
            await lot.downlink.stop()

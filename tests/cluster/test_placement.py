"""Placement and tokens in NATS KV (CONTRACT §9): a real nats-server, two whole gateways, real lots."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.web.client import HTTPConnectionPool

from gateway.cluster.placement import Placement
from gateway.cluster.tokens import TokenShare
from gateway.journal.kinds import TOKEN_RECORD, TOKEN_REVOKED_RECORD
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkClient, DownlinkReply
from gateway.lots.sessions import Sessions
from tests.cluster.gateways import API_TOKEN, Gateway, TwoGateways
from tests.cluster.natsserver import NatsServer
from tests.lots.harness import PASSWORD
from tests.processes import eventually


def placement(gateway: Gateway) -> Placement:
    found: Placement = gateway.service.getServiceNamed("cluster").getServiceNamed("placement")  # type: ignore[attr-defined]
    return found


def tokens(gateway: Gateway) -> TokenShare:
    found: TokenShare = gateway.service.getServiceNamed("cluster").getServiceNamed("tokens")  # type: ignore[attr-defined]
    return found


def sessions(gateway: Gateway) -> Sessions:
    lots: Any = gateway.service.getServiceNamed("parts").getServiceNamed("lots")  # type: ignore[attr-defined]
    found: Sessions = lots.sessions
    return found


async def park_json(gateway: Gateway, park: str = "") -> Any:
    return await get_json(gateway, "/v1/parks" + (f"/{park}" if park else ""))


async def get_json(gateway: Gateway, path: str) -> Any:
    response = await treq.get(
        f"http://127.0.0.1:{gateway.api}{path}",
        headers={"Authorization": [f"Bearer {API_TOKEN}"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    assert response.code == 200
    return json.loads(await response.content())


class Setup(TwoGateways):
    def __init__(self, tmp_path: Path, nats: NatsServer) -> None:
        super().__init__(tmp_path, nats, cloud=False)
        self.clients: list[DownlinkClient] = []

    def by_token(self, gateway: Gateway, token: str, park: str = "P001") -> DownlinkClient:
        """A lot's downlink binding on ``gateway`` by heartbeat with ``token`` (no login)."""
        refused: list[bool] = []
        client = DownlinkClient(
            endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", gateway.downlink),
            clock=reactor,
            credentials=LotCredentials(park, f"user{park}", PASSWORD, "k"),
            answer=lambda request: DownlinkReply(data={}),
            token=lambda: token,
            bind="heartbeat",
            on_token_invalid=lambda: refused.append(True),
        )
        client.refused = refused  # type: ignore[attr-defined]
        self.clients.append(client)
        client.start()
        return client


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Setup]:
    """Two gateways on one nats-server; all stopped at the end."""
    async with Setup(tmp_path, nats_server) as made:
        try:
            both = (made.a, made.b)
            await eventually(lambda: all(placement(g).bucket.watching for g in both), what="watching")
            await eventually(lambda: all(tokens(g).bucket.watching for g in both), what="watching")
            yield made
        finally:
            for client in made.clients:
                await client.stop()


@pytest_twisted.ensureDeferred
async def test_every_gateway_shows_the_gateway_holding_each_lot(setup: Setup) -> None:
    """A lot bound on gw-a is listed by gw-b's `GET /v1/parks[/{park}]` as held by gw-a; once it
    leaves, its entry goes and both show no gateway for it."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await eventually(lambda: placement(setup.b).holder("P001") == "gw-a", what="gw-b sees gw-a hold P001")
    one = await park_json(setup.b, "P001")
    assert one["gateway"] == "gw-a" and one["connected"] is False
    listed = {park["parkCode"]: park for park in (await park_json(setup.b))["parks"]}
    assert listed["P001"]["gateway"] == "gw-a"
    assert listed["P002"]["gateway"] is None
    page = {lot["parkCode"]: lot for lot in (await get_json(setup.b, "/v1/status"))["lots"]["items"]}
    assert page["P001"]["gateway"] == "gw-a" and page["P002"]["gateway"] is None
    here = await park_json(setup.a, "P001")
    assert here["gateway"] == "gw-a" and here["connected"] is True
    await lot.leave()
    await eventually(lambda: placement(setup.b).holder("P001") is None, what="the entry deleted on unbind")
    await eventually(lambda: placement(setup.a).holder("P001") is None, what="gw-a no longer holds it")
    assert (await park_json(setup.b, "P001"))["gateway"] is None


@pytest_twisted.ensureDeferred
async def test_the_newest_bind_wins_the_older_gateway_closes_its_connection(setup: Setup) -> None:
    """The lot bound on gw-a binds again on gw-b (its new connection): gw-a sees the newer entry and
    closes its own connection to the lot, and the bucket names gw-b (gw-a's unbind does not delete it)."""
    first = setup.lot()
    await first.bind(setup.a)
    await eventually(lambda: placement(setup.b).holder("P001") == "gw-a", what="gw-b sees gw-a hold P001")
    second = setup.lot()
    await second.bind(setup.b)
    routers: Any = setup.a.service.getServiceNamed("parts").getServiceNamed("lots")  # type: ignore[attr-defined]
    await eventually(lambda: not routers.router.state("P001").connected, what="gw-a closed its connection")
    await eventually(lambda: placement(setup.a).holder("P001") == "gw-b", what="gw-a sees gw-b hold P001")
    assert placement(setup.b).holder("P001") == "gw-b"
    assert (await park_json(setup.a, "P001"))["gateway"] == "gw-b"


@pytest_twisted.ensureDeferred
async def test_a_lot_moves_to_another_gateway_with_its_token_and_a_new_login_replaces_it_everywhere(
    setup: Setup,
) -> None:
    """Logged in on gw-a, the lot binds on gw-b by heartbeat with that token (no login): gw-b learned
    it from the bucket and journaled it (`token`, code learned, only its SHA-256). A login on gw-b
    then puts the new token in force on gw-a and the old one out."""
    lot = setup.lot()
    await lot.bind(setup.a)
    assert lot.client is not None
    old = lot.client.token
    assert old and sessions(setup.a).lookup(old) is not None
    await eventually(lambda: sessions(setup.b).lookup(old) is not None, what="gw-b learned the token")
    learned = [r for r in setup.b.records(TOKEN_RECORD) if r.code == "learned"]
    assert len(learned) == 1 and learned[0].park == "P001"
    assert old not in json.dumps(learned[0].body) and "token_sha256" in learned[0].body
    await lot.leave()
    moved = setup.by_token(setup.b, old)
    await moved.when_bound()
    assert not moved.refused  # type: ignore[attr-defined]
    await moved.stop()
    again = setup.lot()
    await again.bind(setup.b)  # a new login, on gw-b
    assert again.client is not None
    new = again.client.token
    assert new != old
    await eventually(lambda: sessions(setup.a).lookup(new) is not None, what="gw-a learned the new token")
    assert sessions(setup.a).lookup(old) is None
    assert sessions(setup.b).lookup(old) is None


@pytest_twisted.ensureDeferred
async def test_a_token_revoked_on_one_gateway_is_revoked_on_all(setup: Setup) -> None:
    """gw-a revokes the lot's token (as a reload does): it leaves the bucket and gw-b revokes it too,
    journaling a `token-revoked` record."""
    lot = setup.lot()
    await lot.bind(setup.a)
    assert lot.client is not None
    token = lot.client.token
    await eventually(lambda: sessions(setup.b).lookup(token) is not None, what="gw-b learned the token")
    await lot.leave()
    assert sessions(setup.a).revoke("userP001")
    await eventually(lambda: sessions(setup.b).lookup(token) is None, what="gw-b revoked it")

    def revoked() -> list[tuple[str, str]]:
        return [(r.park, r.body["user"]) for r in setup.b.records(TOKEN_REVOKED_RECORD)]

    # The token goes out of force at once; its record reaches the file with the journal's next batch.
    await eventually(lambda: revoked() != [], what="gw-b journaled the revocation")
    assert revoked() == [("P001", "userP001")]


@pytest_twisted.ensureDeferred
async def test_binding_does_not_wait_for_nats_and_placement_is_written_when_it_is_back(
    setup: Setup, nats_server: NatsServer
) -> None:
    """With nats-server down, a lot still binds on gw-a at once; when the server is back, its placement
    is written and gw-b sees it."""
    nats_server.stop()
    await eventually(lambda: setup.a.connection.state != "connected", what="gw-a lost NATS")
    lot = setup.lot()
    await lot.bind(setup.a)
    assert placement(setup.a).holder("P001") == "gw-a"
    nats_server.start()
    await eventually(
        lambda: placement(setup.b).holder("P001") == "gw-a", timeout=30, what="written once back"
    )

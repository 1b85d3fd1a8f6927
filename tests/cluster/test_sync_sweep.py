"""The sync sweep against a real nats-server: expiry on time for lots bound nowhere, the lots' consumers."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import gatherResults
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from gateway.cloud.events import to_event
from gateway.cluster.sync import _claim, consumer_name
from gateway.journal.kinds import SYNC_DONE_RECORD
from gateway.protocol.times import utc_rfc3339
from tests.cluster.gateways import API_TOKEN, Gateway, TwoGateways
from tests.cluster.natsserver import NatsServer
from tests.processes import eventually
from tests.protocol.samples import SAMPLES

PAST = "2020-01-01T00:00:00Z"


class Setup(TwoGateways):
    async def publish(self, park: str, number: int, expires: str, msg_id: str) -> None:
        """The cloud publishes a blacklist entry for `park` straight to CPMI_SYNC."""
        data = json.dumps({**SAMPLES["blacklist"], "carNum": f"苏E{number:05d}"}).encode()
        headers = {"Cpmi-Expires": expires, "Nats-Msg-Id": msg_id, "Cpmi-Client": "city"}

        async def publish(nc: Any, js: Any) -> None:
            await js.publish(f"cpmi.sync.{park}.blacklist", data, headers=headers)

        await self.cloud.connection.run(publish)

    async def consumers(self) -> set[str]:
        async def names(nc: Any, js: Any) -> set[str]:
            return {info.name for info in await js.consumers_info("CPMI_SYNC")}

        found: set[str] = await self.cloud.connection.run(names)
        return found

    async def add_consumer(self, park: str, name: str = "") -> None:
        """A lot's consumer as a gateway makes it (or one named `name`), made by the test."""

        async def add(nc: Any, js: Any) -> None:
            from nats.js.api import AckPolicy, ConsumerConfig

            config = ConsumerConfig(
                durable_name=name or consumer_name(park),
                filter_subject=f"cpmi.sync.{park}.>",
                deliver_subject=f"cpmi.sync-deliver.{park}",
                ack_policy=AckPolicy.EXPLICIT,
                max_ack_pending=1,
            )
            await js.add_consumer("CPMI_SYNC", config)

        await self.cloud.connection.run(add)

    async def delete_consumer(self, park: str) -> None:
        async def delete(nc: Any, js: Any) -> None:
            await js.delete_consumer("CPMI_SYNC", consumer_name(park))

        await self.cloud.connection.run(delete)


def expired(gateway: Gateway) -> list[Any]:
    return [r for r in gateway.records(SYNC_DONE_RECORD) if r.body.get("outcome") == "expired"]


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Setup]:
    """Two gateways (lots P001, P002) and a cloud client on one nats-server; all stopped at the end."""
    async with Setup(tmp_path, nats_server) as made:
        # Each gateway's first sweep (at start, once CPMI_SYNC is ready) over before the test begins.
        await eventually(
            lambda: all(g.sync._cleaned is not None and not g.sync._sweeping for g in (made.a, made.b)),
            what="the first sweeps",
        )
        yield made


@pytest_twisted.ensureDeferred
async def test_an_entry_expiring_while_its_lot_is_bound_nowhere_is_expired_once_by_two_sweeping_gateways(
    setup: Setup,
) -> None:
    """Entries of a lot that never bound, one past its expiry and one not: both gateways sweep at once;
    the expired one is journaled `sync-done` "expired" (the downlink-expired event, `swept`) by exactly one
    of them and leaves the stream; the other stays."""
    await setup.publish("P002", 1, PAST, "cloud-1")
    await setup.publish("P002", 2, utc_rfc3339(reactor.seconds() + 3600), "cloud-2")
    await gatherResults([setup.a.sync.sweep(), setup.b.sync.sweep()])
    found = expired(setup.a) + expired(setup.b)
    assert len(found) == 1
    [done] = found
    assert done.park == "P002" and done.code == "blacklist"
    assert done.body["entry"] == "cloud-1" and done.body["client"] == "city" and done.body["swept"] is True
    gateway_id = "gw-a" if expired(setup.a) else "gw-b"
    event = to_event(done, gateway_id=gateway_id, zone=ZoneInfo("Asia/Shanghai"))
    assert event is not None and event["type"] == "org.cpmi.gateway.downlink-expired.v1"
    assert await setup.stream_messages() == 1
    assert setup.a.sync.counters["swept"] + setup.b.sync.counters["swept"] == 1
    # Swept again: nothing more to expire, nothing journaled twice.
    await gatherResults([setup.a.sync.sweep(), setup.b.sync.sweep()])
    assert len(expired(setup.a) + expired(setup.b)) == 1


@pytest_twisted.ensureDeferred
async def test_an_entry_is_claimed_once_whoever_deletes_it_second(setup: Setup) -> None:
    """The claim both a sweep and a lot's holder make before journaling an expiry: deleting the entry from
    the stream is True for the first gateway, False (not an error) for the second, whatever the order."""
    await setup.publish("P002", 1, PAST, "cloud-1")

    async def seq(nc: Any, js: Any) -> int:
        return int((await js.stream_info("CPMI_SYNC")).state.last_seq)

    last = await setup.cloud.connection.run(seq)

    def claim(gateway: Gateway) -> Any:
        return gateway.connection.run(lambda nc, js: _claim(js, "CPMI_SYNC", last))

    assert await gatherResults([claim(setup.a), claim(setup.b)]) in ([True, False], [False, True])
    assert await claim(setup.a) is False
    assert await setup.stream_messages() == 0


@pytest_twisted.ensureDeferred
async def test_a_lot_that_left_has_its_entries_expired_on_time_and_the_next_bind_gets_the_rest(
    setup: Setup,
) -> None:
    """A lot bound on B, then gone: an entry published for it after its expiry is swept by A (its consumer
    exists but no gateway delivers from it), so when the lot binds again it receives only the live one."""
    lot = setup.lot()
    await lot.bind(setup.b)
    await eventually(lambda: "P001" in setup.b.sync.held() and setup.b.sync._lots_held["P001"].attached)
    await lot.leave()
    await eventually(lambda: "P001" not in setup.b.sync.held())

    async def unbound(nc: Any, js: Any) -> bool:
        return not (await js.consumer_info("CPMI_SYNC", consumer_name("P001"))).push_bound

    for _ in range(250):
        if await setup.cloud.connection.run(unbound):
            break
        await deferLater(reactor, 0.02, lambda: None)
    await setup.publish("P001", 1, PAST, "cloud-1")
    await setup.publish("P001", 2, utc_rfc3339(reactor.seconds() + 3600), "cloud-2")
    await setup.a.sync.sweep()
    [done] = expired(setup.a)
    assert done.body["entry"] == "cloud-1"
    await lot.bind(setup.b)
    await eventually(
        lambda: any(r.body.get("outcome") == "delivered" for r in setup.b.records(SYNC_DONE_RECORD)),
        what="the live entry delivered",
    )
    assert [request.data["carNum"] for request in lot.received if request.code == "blacklist"] == ["苏E00002"]
    assert expired(setup.b) == []


@pytest_twisted.ensureDeferred
async def test_a_sweep_is_bounded_in_lots_and_entries(setup: Setup) -> None:
    """With `sweep_lots` 1 and `sweep_entries` 2, one sweep looks at one lot and two of its entries: three
    expired entries of P001 take two sweeps of P001 (P002 visited in between)."""
    for number in range(3):
        await setup.publish("P001", number, PAST, f"cloud-{number}")
    sync = setup.a.sync
    sync.sweep_lots, sync.sweep_entries = 1, 2
    sync._sweep_cursor = 0
    await sync.sweep()  # P001: two of three
    assert len(expired(setup.a)) == 2
    await sync.sweep()  # P002: nothing
    assert len(expired(setup.a)) == 2
    await sync.sweep()  # P001: the third
    assert [r.body["entry"] for r in expired(setup.a)] == ["cloud-0", "cloud-1", "cloud-2"]
    assert await setup.stream_messages() == 0


@pytest_twisted.ensureDeferred
async def test_consumers_of_lots_no_longer_configured_are_deleted_at_start_and_on_reload(
    setup: Setup,
) -> None:
    """A consumer left for a lot the configuration no longer has (P009) is deleted by the first sweep; a
    reload that removes P002 has P002's consumer deleted by the next; P001's, and anything not a lot's
    consumer, stay."""
    await setup.add_consumer("P009")
    await setup.add_consumer("P001")
    await setup.add_consumer("P002")
    await setup.add_consumer("P007", name="audit")
    await setup.a.sync.sweep()  # the gateway's first sweep ran at start already: the next sees no change
    assert {consumer_name("P009"), consumer_name("P001")} <= await setup.consumers()
    await setup.a.restart()
    await eventually(
        lambda: setup.a.sync._cleaned is not None and not setup.a.sync._sweeping, what="the first sweep"
    )
    assert await setup.consumers() == {consumer_name("P001"), consumer_name("P002"), "audit"}
    assert setup.a.sync.counters["consumers_deleted"] == 1
    text = setup.a.config.read_text()
    setup.a.config.write_text(text.replace('park_code = "P002"', 'park_code = "P003"'))
    response = await treq.post(
        f"http://127.0.0.1:{setup.a.api}/v1/admin/reload",
        headers={"Authorization": [f"Bearer {API_TOKEN}"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    assert response.code == 200, await response.text()
    await setup.a.sync.sweep()
    assert await setup.consumers() == {consumer_name("P001"), "audit"}


@pytest_twisted.ensureDeferred
async def test_a_consumer_deleted_by_hand_while_its_lot_is_bound_is_made_again(setup: Setup) -> None:
    """The consumer of P001, bound on A, deleted by hand: A's next sweep makes it again and subscribes; an
    entry POSTed afterwards reaches the lot."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await eventually(lambda: setup.a.sync._lots_held.get("P001") is not None)
    await eventually(lambda: setup.a.sync._lots_held["P001"].attached, what="attached")
    await setup.delete_consumer("P001")
    assert consumer_name("P001") not in await setup.consumers()
    await setup.a.sync.sweep()
    await eventually(lambda: setup.a.sync._lots_held["P001"].attached, what="attached again")
    assert consumer_name("P001") in await setup.consumers()
    assert setup.a.sync.counters["consumers_recreated"] == 1
    status, _ = await setup.a.post("P001", "blacklist", SAMPLES["blacklist"])
    assert status == 202
    await eventually(lambda: any(request.code == "blacklist" for request in lot.received), what="delivered")

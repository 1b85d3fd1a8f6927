"""Sync entries over JetStream (CONTRACT §9) with a real nats-server: whole gateways, lots on real TCP."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import pytest_twisted
from twisted.internet.defer import Deferred

from gateway.cloud.events import to_event
from gateway.journal.kinds import SYNC_DONE_RECORD, SYNC_RECORD
from gateway.lotclient.downlink import DownlinkReply
from gateway.protocol.envelope import Request
from gateway.protocol.results import Result
from tests.cluster.gateways import Gateway, Lot, TwoGateways
from tests.cluster.natsserver import NatsServer
from tests.processes import eventually
from tests.protocol.samples import SAMPLES

BLACKLIST = SAMPLES["blacklist"]


def blacklist(number: int) -> dict[str, Any]:
    """A blacklist entry told apart by its car number."""
    return {**BLACKLIST, "carNum": f"苏E{number:05d}"}


class Setup(TwoGateways):
    def delivered(self, gateway: Gateway) -> list[Any]:
        return [r for r in gateway.records(SYNC_DONE_RECORD) if r.body.get("outcome") == "delivered"]


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Setup]:
    """Two gateways and a cloud client on one nats-server; all stopped at the end."""
    async with Setup(tmp_path, nats_server) as made:
        yield made


def _published(gateway: Gateway, count: int) -> Any:
    return lambda: len(gateway.records(SYNC_DONE_RECORD)) == count


def blacklists(lot: Lot) -> list[Request]:
    return [request for request in lot.received if request.code == "blacklist"]


@pytest_twisted.ensureDeferred
async def test_a_blacklist_sent_while_the_lot_was_offline_reaches_it_when_it_binds_elsewhere(
    setup: Setup,
) -> None:
    """A blacklist POSTed on A while the lot is offline: 202 with A's seq, published to CPMI_SYNC (A
    journals `sync` and `sync-done` "published", no event); the lot binds on B, gets it under the oprNum
    A journaled, replies 0000; B journals `sync-done` "delivered" (the downlink-delivered event) and
    acks: the stream is empty."""
    status, body = await setup.a.post("P001", "blacklist", BLACKLIST)
    assert status == 202
    seq = body["seq"]
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 1, what="published")
    entry = setup.a.records(SYNC_RECORD)[0]
    published = setup.a.records(SYNC_DONE_RECORD)[0]
    assert entry.seq == seq and published.body["seq"] == seq and published.body["outcome"] == "published"
    assert to_event(published, gateway_id="gw-a", zone=ZoneInfo("Asia/Shanghai")) is None
    assert await setup.stream_messages() == 1
    lot = setup.lot()
    await lot.bind(setup.b)
    await eventually(lambda: len(setup.delivered(setup.b)) == 1, what="delivered on B")
    [sent] = blacklists(lot)
    assert sent.data == BLACKLIST and sent.opr == entry.opr
    done = setup.delivered(setup.b)[0]
    assert done.opr == entry.opr
    assert done.body["entry"] == f"gw-a-{seq}" and done.body["gateway"] == "gw-a"
    assert done.body["client"] == "cloud" and done.body["attempts"] == 1
    event = to_event(done, gateway_id="gw-b", zone=ZoneInfo("Asia/Shanghai"))
    assert event is not None and event["type"] == "org.cpmi.gateway.downlink-delivered.v1"
    await eventually(lambda: setup.b.sync.pending("P001") == 0, what="acknowledged")
    await setup.stream_empties()
    assert setup.delivered(setup.a) == []


@pytest_twisted.ensureDeferred
async def test_entries_reach_the_lot_in_order_one_at_a_time(setup: Setup) -> None:
    """Five entries from both gateways' APIs reach the lot in the order they were accepted, each sent only
    once the one before was acknowledged."""
    in_flight: list[int] = []
    most: list[int] = [0]

    def answer(request: Request) -> Any:
        if request.code != "blacklist":
            return DownlinkReply()
        in_flight.append(1)
        most[0] = max(most[0], len(in_flight))
        reply: Deferred[DownlinkReply] = Deferred()
        from twisted.internet import reactor

        def done() -> None:
            in_flight.pop()
            reply.callback(DownlinkReply())

        reactor.callLater(0.05, done)
        return reply

    for number in range(5):
        gateway = setup.a if number % 2 == 0 else setup.b
        status, _ = await gateway.post("P001", "blacklist", blacklist(number))
        assert status == 202
        # Published in the order accepted: wait for this one before the other gateway takes the next.
        await eventually(_published(gateway, number // 2 + 1))
    lot = setup.lot(answer=answer)
    await lot.bind(setup.a)
    await eventually(lambda: len(setup.delivered(setup.a)) == 5, what="all five delivered")
    assert [request.data["carNum"] for request in blacklists(lot)] == [f"苏E{n:05d}" for n in range(5)]
    assert most[0] == 1


@pytest_twisted.ensureDeferred
async def test_an_entry_past_its_ttl_is_expired_with_its_outcome_event_not_sent(setup: Setup) -> None:
    """An entry whose expiry passed while its lot was offline is not sent when the lot binds: `sync-done`
    "expired" (the downlink-expired event) is journaled and the entry acknowledged; the next one is sent."""

    async def publish(nc: Any, js: Any) -> None:
        headers = {"Cpmi-Expires": "2020-01-01T00:00:00Z", "Nats-Msg-Id": "cloud-1", "Cpmi-Client": "city"}
        await js.publish("cpmi.sync.P001.blacklist", json.dumps(blacklist(1)).encode(), headers=headers)
        await js.publish("cpmi.sync.P001.blacklist", json.dumps(blacklist(2)).encode())

    await setup.cloud.connection.run(publish)
    lot = setup.lot()
    await lot.bind(setup.a)
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 2, what="both settled")
    expired, delivered = setup.a.records(SYNC_DONE_RECORD)
    assert expired.body["outcome"] == "expired" and expired.body["entry"] == "cloud-1"
    assert expired.body["client"] == "city" and expired.body["attempts"] == 0
    event = to_event(expired, gateway_id="gw-a", zone=ZoneInfo("Asia/Shanghai"))
    assert event is not None and event["type"] == "org.cpmi.gateway.downlink-expired.v1"
    assert delivered.body["outcome"] == "delivered"
    assert [request.data["carNum"] for request in blacklists(lot)] == ["苏E00002"]
    await eventually(lambda: setup.a.sync.pending("P001") == 0)
    await setup.stream_empties()


@pytest_twisted.ensureDeferred
async def test_a_bad_entry_in_the_stream_is_refused_and_the_next_goes_on(setup: Setup) -> None:
    """An entry published straight to the stream with data that is not JSON, or that the catalog refuses,
    is journaled "refused" naming the problem (the downlink-refused event) and terminated; it never reaches
    the lot, the next one does."""

    async def publish(nc: Any, js: Any) -> None:
        await js.publish("cpmi.sync.P001.blacklist", b"{not json")
        await js.publish("cpmi.sync.P001.blacklist", json.dumps({"carNum": "x" * 200}).encode())
        await js.publish("cpmi.sync.P001.openSesame", b"{}")
        await js.publish("cpmi.sync.P001.blacklist", json.dumps(blacklist(3)).encode())

    await setup.cloud.connection.run(publish)
    lot = setup.lot()
    await lot.bind(setup.a)
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 4, what="all settled")
    outcomes = [record.body for record in setup.a.records(SYNC_DONE_RECORD)]
    assert [body["outcome"] for body in outcomes] == ["refused", "refused", "refused", "delivered"]
    assert "JSON" in outcomes[0]["reason"]
    assert "carNum" in outcomes[1]["reason"]
    assert "openSesame" in outcomes[2]["reason"]
    # A final outcome the cloud hears of: the downlink-refused event, with the reason.
    event = to_event(setup.a.records(SYNC_DONE_RECORD)[1], gateway_id="gw-a", zone=ZoneInfo("Asia/Shanghai"))
    assert event is not None and event["type"] == "org.cpmi.gateway.downlink-refused.v1"
    assert event["data"]["code"] == "blacklist" and "carNum" in event["data"]["reason"]
    assert [request.data["carNum"] for request in blacklists(lot)] == ["苏E00003"]
    await eventually(lambda: setup.a.sync.pending("P001") == 0)
    await setup.stream_empties()


@pytest_twisted.ensureDeferred
async def test_a_lot_that_moves_takes_its_pending_entries_along(setup: Setup) -> None:
    """The lot binds on A and leaves with its first entry unanswered; bound again on B it gets that
    entry again, then the others, in order; A journals no outcome for it."""
    for number in range(3):
        assert (await setup.a.post("P001", "blacklist", blacklist(number)))[0] == 202
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 3, what="published")
    silent = setup.lot(answer=lambda request: Deferred() if request.code == "blacklist" else DownlinkReply())
    await silent.bind(setup.a)
    await eventually(lambda: len(blacklists(silent)) == 1, what="the first entry sent on A")
    # The lot's entries in the stream, as the holder last saw them, are its depth in the metrics.
    assert setup.a.sync.pending("P001") > 0
    assert setup.a.sync.depths() == {"P001": setup.a.sync.pending("P001")}
    await silent.leave()
    await eventually(lambda: "P001" not in setup.a.sync.held(), what="A saw the lot leave")
    lot = setup.lot()
    await lot.bind(setup.b)
    await eventually(lambda: len(setup.delivered(setup.b)) == 3, what="delivered on B")
    assert [request.data["carNum"] for request in blacklists(lot)] == ["苏E00000", "苏E00001", "苏E00002"]
    assert blacklists(lot)[0].opr == blacklists(silent)[0].opr
    assert setup.delivered(setup.a) == []
    assert setup.delivered(setup.b)[0].body["attempts"] == 2


@pytest_twisted.ensureDeferred
async def test_a_nats_server_restart_while_entries_are_pending_loses_none(setup: Setup) -> None:
    """Entries pending in the stream survive a nats-server crash (kill -9) and restart, and one POSTed while
    NATS is down is journaled (202) and published once it is back; the lot then gets all, in order."""
    for number in range(3):
        assert (await setup.a.post("P001", "blacklist", blacklist(number)))[0] == 202
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 3, what="published")
    setup.nats.stop()
    await eventually(lambda: setup.a.connection.state != "connected", what="A sees NATS gone")
    status, _ = await setup.a.post("P001", "blacklist", blacklist(3))
    assert status == 202 and setup.a.sync.pending("P001") >= 1
    setup.nats.start()
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 4, timeout=30, what="published again")
    lot = setup.lot()
    await lot.bind(setup.b)
    await eventually(lambda: len(setup.delivered(setup.b)) == 4, timeout=30, what="all delivered")
    assert [request.data["carNum"] for request in blacklists(lot)] == [f"苏E{n:05d}" for n in range(4)]
    await eventually(lambda: setup.b.sync.pending("P001") == 0)
    await setup.stream_empties()


@pytest_twisted.ensureDeferred
async def test_a_reply_other_than_0000_is_tried_again_and_the_next_entries_wait(setup: Setup) -> None:
    """The lot refuses the first delivery (9999): the entry is given again after the retry delay, and
    the second entry waits behind it."""
    setup.a.sync._retry = 0.3  # the default (30 s) is too long for a test
    refusals = [1]

    def answer(request: Request) -> Any:
        if request.code == "blacklist" and refusals:
            refusals.pop()
            return DownlinkReply.of(Result.FAILED, "busy")
        return DownlinkReply()

    for number in range(2):
        assert (await setup.a.post("P001", "blacklist", blacklist(number)))[0] == 202
    await eventually(lambda: len(setup.a.records(SYNC_DONE_RECORD)) == 2, what="published")
    lot = setup.lot(answer=answer)
    await lot.bind(setup.a)
    await eventually(lambda: len(setup.delivered(setup.a)) == 2, what="both delivered")
    assert [request.data["carNum"] for request in blacklists(lot)] == ["苏E00000", "苏E00000", "苏E00001"]
    assert setup.delivered(setup.a)[0].body["attempts"] == 2


@pytest_twisted.ensureDeferred
async def test_an_entry_accepted_while_nats_was_down_is_published_after_a_gateway_restart(
    setup: Setup,
) -> None:
    """An entry journaled (202) while NATS is down, the gateway then restarted before NATS came back: the
    new gateway finds it unpublished in the journal, publishes it once NATS is there, and the lot gets it."""
    setup.nats.stop()
    await eventually(lambda: setup.a.connection.state != "connected", what="A sees NATS gone")
    status, body = await setup.a.post("P001", "blacklist", blacklist(7))
    assert status == 202
    await setup.a.restart(connected=False)
    assert setup.a.sync.first_pending_seq() == body["seq"]  # the journal keeps it until published
    setup.nats.start()
    await eventually(lambda: setup.a.connection.state == "connected", timeout=30, what="A connected again")
    await eventually(_published(setup.a, 1), timeout=30, what="published after the restart")
    assert setup.a.sync.first_pending_seq() is None
    lot = setup.lot()
    await lot.bind(setup.b)
    await eventually(lambda: len(setup.delivered(setup.b)) == 1, timeout=30, what="delivered")
    assert [request.data["carNum"] for request in blacklists(lot)] == ["苏E00007"]


@pytest_twisted.ensureDeferred
async def test_a_lot_held_when_nats_py_gives_its_client_up_takes_its_entries_on_the_new_client(
    setup: Setup,
) -> None:
    """nats-py closing its client for good takes the lot's subscription to its consumer with it; once the
    new client is connected the lot subscribes again, and an entry POSTed then reaches it."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await eventually(lambda: setup.a.sync._lots_held["P001"].attached, what="P001 subscribed on A")
    first = setup.a.connection._nc
    await setup.a.connection.run(lambda nc, js: nc.close())
    await eventually(
        lambda: setup.a.connection.state == "connected" and setup.a.connection._nc is not first,
        what="a new client",
    )
    status, _ = await setup.b.post("P001", "blacklist", BLACKLIST)
    assert status == 202
    await eventually(lambda: len(setup.delivered(setup.a)) == 1, what="delivered on A's new client")
    assert [request.data for request in blacklists(lot)] == [BLACKLIST]

"""The nats sink against a real nats-server: subjects, headers, order, dedupe, outages, refusals."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest_twisted
from attrs import evolve
from nats.aio.client import Client
from nats.js import JetStreamContext
from twisted.internet.task import deferLater

from gateway.cluster.sink import msg_id
from gateway.interfaces import Entry
from gateway.journal.kinds import FORWARDED_RECORD, ONLINE_RECORD, REJECTED_RECORD, UPLINK_RECORD
from tests.cluster.natsserver import NatsServer
from tests.cluster.rig import FAST, Rig, event, reactor
from tests.ports import free_port
from tests.processes import eventually
from tests.protocol.samples import SAMPLES

CAR_IN = SAMPLES["carIn"]


def test_msg_id_is_park_and_opr_for_uplinks_else_the_event_id() -> None:
    """Nats-Msg-Id is {park}:{oprNum} for a lot's interface message, the event id for the gateway's own."""
    uplink = Entry(5, "P001", "carIn", "o-9", "gw-5", "org.cpmi.t002.carIn.v1", b"{}", 0.0, "")
    online = Entry(6, "P001", "lot-online", "", "gw-6", "org.cpmi.gateway.lot-online.v1", b"{}", 0.0, "")
    assert msg_id(uplink) == "P001:o-9"
    assert msg_id(online) == "gw-6"


@pytest_twisted.ensureDeferred
async def test_events_go_to_their_subjects_with_their_headers(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Each event is a structured CloudEvent on cpmi.events.{park}.{suffix}, Nats-Msg-Id as the contract
    says, in a CPMI_EVENTS stream the sink created with a duplicate window of at least 2 minutes."""
    rig = Rig(tmp_path / "journal", nats_server.url)
    await rig.start()
    try:
        await rig.journal.append(ONLINE_RECORD, "P001", "", "", {"peer": "127.0.0.1"})
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-1", CAR_IN)
        await eventually(lambda: rig.engine.done_through >= 2)
        messages = await rig.stream()
        info: Any = await rig.connection.run(lambda nc, js: js.stream_info("CPMI_EVENTS"))
    finally:
        await rig.stop()
    assert [m.subject for m in messages] == ["cpmi.events.P001.lot-online", "cpmi.events.P001.carIn"]
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["gw-t-1", "P001:o-1"]
    assert {m.headers["Content-Type"] for m in messages} == {"application/cloudevents+json"}
    car_in = event(messages[1])
    assert car_in["specversion"] == "1.0" and car_in["id"] == "gw-t-2"
    assert car_in["type"] == "org.cpmi.t002.carIn.v1" and car_in["source"] == "urn:cpmi:park:P001"
    assert car_in["data"]["inTime"] == "2026-11-24T08:30:00+08:00"
    assert info.config.subjects == ["cpmi.events.>"]
    assert info.config.duplicate_window >= 120
    assert info.config.num_replicas == 1
    forwarded = [r for r in rig.records() if r.kind == FORWARDED_RECORD]
    assert forwarded and forwarded[-1].body["through"] >= 2


@pytest_twisted.ensureDeferred
async def test_each_lots_events_are_stored_in_journal_order(tmp_path: Path, nats_server: NatsServer) -> None:
    """600 uplinks of three lots, in batches, are stored once each and in journal order."""
    rig = Rig(tmp_path / "journal", nats_server.url, cloud=evolve(FAST, batch_max_events=50))
    await rig.start()
    try:
        for n in range(600):
            rig.journal.append(
                UPLINK_RECORD, f"P{n % 3}", "carIn", f"o-{n}", {**CAR_IN, "recordCode": f"R{n}"}
            )
        await eventually(lambda: rig.engine.done_through >= 600, timeout=30)
        messages = await rig.stream()
    finally:
        await rig.stop()
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"P{n % 3}:o-{n}" for n in range(600)]


@pytest_twisted.ensureDeferred
async def test_a_batch_sent_again_is_stored_once(tmp_path: Path, nats_server: NatsServer) -> None:
    """A batch published twice (as after a lost PubAck) is acknowledged twice and stored once; a lot's
    retry of the same oprNum through another gateway (another event id) is stored once too."""
    rig = Rig(tmp_path / "journal", nats_server.url)
    other = Rig(tmp_path / "other", nats_server.url, gateway_id="gw-other")
    await rig.start()
    await other.start()
    try:
        records = [
            await rig.journal.append(UPLINK_RECORD, "P001", "carIn", f"o-{n}", CAR_IN) for n in range(5)
        ]
        batch = rig.sink.entries(records, 0.0)
        first = await rig.sink.deliver(batch)
        again = await rig.sink.deliver(batch)
        retry = await other.sink.deliver(other.sink.entries(records[:1], 0.0))
        messages = await rig.stream()
    finally:
        await other.stop()
        await rig.stop()
    assert all(outcome.done and not outcome.refused for outcome in [*first, *again, *retry])  # type: ignore[union-attr]
    assert [event(m)["id"] for m in messages] == [f"gw-t-{n}" for n in range(1, 6)]


@pytest_twisted.ensureDeferred
async def test_nats_server_restarted_under_load_loses_and_doubles_nothing(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """Uplinks keep being journaled while nats-server is killed and started again: every one of them
    ends up in the stream exactly once, each lot's in journal order."""
    cloud = evolve(FAST, batch_max_events=20, request_timeout=0.3)
    rig = Rig(tmp_path / "journal", nats_server.url, cloud=cloud)
    await rig.start()
    sent = 0

    async def load(count: int) -> None:
        nonlocal sent
        for _ in range(count):
            rig.journal.append(UPLINK_RECORD, f"P{sent % 4}", "carIn", f"o-{sent}", {**CAR_IN, "n": sent})
            sent += 1
            if sent % 10 == 0:
                await deferLater(reactor, 0.002, lambda: None)

    try:
        await load(300)
        nats_server.stop()
        await load(300)
        await deferLater(reactor, 1.0, lambda: None)  # longer than a PubAck may take: retried
        nats_server.start()
        await load(300)
        nats_server.stop()  # again, while the backlog drains
        await deferLater(reactor, 0.6, lambda: None)
        nats_server.start()
        await load(100)
        await eventually(lambda: rig.engine.counters["events"] >= sent, timeout=60)
        messages = await rig.stream()
        retries, reconnects = rig.engine.counters["retries"], rig.connection.reconnects
    finally:
        await rig.stop()
    assert retries >= 1 and reconnects >= 1  # the outages were felt
    ids = [m.headers["Nats-Msg-Id"] for m in messages]
    assert len(ids) == len(set(ids)) == sent
    for park in ("P0", "P1", "P2", "P3"):
        mine = [int(each.split(":o-")[1]) for each in ids if each.startswith(f"{park}:")]
        assert mine == sorted(mine)
    assert not [r for r in rig.records() if r.kind == REJECTED_RECORD]


@pytest_twisted.ensureDeferred
async def test_events_wait_while_nats_is_not_there(tmp_path: Path) -> None:
    """Events journaled before any nats-server answers are retried, and delivered once one starts."""
    server = NatsServer(tmp_path / "nats", free_port())
    server.work.mkdir()
    rig = Rig(tmp_path / "journal", server.url)
    await rig.start(connected=False)
    try:
        for n in range(10):
            await rig.journal.append(UPLINK_RECORD, "P001", "carIn", f"o-{n}", CAR_IN)
        await eventually(lambda: rig.engine.counters["retries"] >= 1)
        assert rig.engine.done_through == 0
        assert "NATS is connecting" in rig.engine.last_error
        server.start()
        await eventually(lambda: rig.engine.done_through >= 10, timeout=30)
        messages = await rig.stream()
    finally:
        await rig.stop()
        server.stop()
    assert len(messages) == 10


@pytest_twisted.ensureDeferred
async def test_an_event_the_stream_never_takes_is_rejected_and_the_rest_go(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """An event larger than the stream's max_msg_size is refused by JetStream (a 4xx): it is journaled as
    rejected, not retried, and the events around it are delivered."""
    rig = Rig(tmp_path / "journal", nats_server.url)
    await rig.start()
    try:
        await rig.connection.ensure_stream("CPMI_EVENTS", ["cpmi.events.>"], max_msg_size=2000)
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-1", CAR_IN)
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-2", {**CAR_IN, "big": "x" * 5000})
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-3", CAR_IN)
        await eventually(lambda: rig.engine.done_through >= 4)  # the third, then the rejected record's event
        messages = await rig.stream()
    finally:
        await rig.stop()
    rejected = [r for r in rig.records() if r.kind == REJECTED_RECORD]
    assert [r.body["seq"] for r in rejected] == [2]
    assert rejected[0].body["status"] == 400
    assert "maximum" in rejected[0].body["answer"]
    assert [m.headers["Nats-Msg-Id"] for m in messages][:2] == ["P001:o-1", "P001:o-3"]


@pytest_twisted.ensureDeferred
async def test_a_stream_the_gateway_may_not_create_is_a_rejection(tmp_path: Path) -> None:
    """No stream and no right to create it: the events are rejected (journaled), not retried forever."""
    work = tmp_path / "nats"
    work.mkdir()
    (work / "auth.conf").write_text(
        "authorization { users = [ { user: gw, password: pw, permissions: "
        '{ publish: { deny: ["$JS.API.STREAM.CREATE.>"] } } } ] }\n'
    )
    server = NatsServer(work, args=("-c", str(work / "auth.conf")))
    server.start()
    rig = Rig(tmp_path / "journal", f"nats://gw:pw@127.0.0.1:{server.port}")
    try:
        await rig.start()
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-1", CAR_IN)
        await eventually(lambda: any(r.kind == REJECTED_RECORD for r in rig.records()), timeout=30)
    finally:
        await rig.stop()
        server.stop()
    rejected = [r for r in rig.records() if r.kind == REJECTED_RECORD]
    assert rejected[0].body["seq"] == 1 and rejected[0].body["status"] == 403
    assert "may not create" in rejected[0].body["answer"]


@pytest_twisted.ensureDeferred
async def test_a_deleted_stream_is_created_again(tmp_path: Path, nats_server: NatsServer) -> None:
    """The stream deleted under a running gateway (no responders) is created again and delivery goes on."""
    rig = Rig(tmp_path / "journal", nats_server.url)
    await rig.start()

    async def delete(nc: Client, js: JetStreamContext) -> None:
        await js.delete_stream("CPMI_EVENTS")
        await asyncio.sleep(0)

    try:
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-1", CAR_IN)
        await eventually(lambda: rig.engine.counters["events"] >= 1)
        await rig.connection.run(delete)
        await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-2", CAR_IN)
        await eventually(lambda: rig.engine.counters["events"] >= 2, timeout=30)
        messages = await rig.stream()
    finally:
        await rig.stop()
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["P001:o-2"]


async def _no_acks(rig: Rig, no_ack: bool) -> None:
    """Make CPMI_EVENTS store without answering (no_ack), or answer again."""

    async def update(nc: Client, js: JetStreamContext) -> None:
        info = await js.stream_info("CPMI_EVENTS")
        await js.update_stream(replace(info.config, no_ack=no_ack))

    await rig.connection.run(update)


@pytest_twisted.ensureDeferred
async def test_events_without_a_puback_are_sent_again_and_stored_once(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """A stream that stores but does not answer (no PubAck within the timeout): the events are retried,
    not counted delivered, and once PubAcks come again each is in the stream once, in order."""
    rig = Rig(tmp_path / "journal", nats_server.url, cloud=evolve(FAST, request_timeout=0.3))
    await rig.start()
    try:
        await rig.connection.ensure_stream("CPMI_EVENTS", ["cpmi.events.>"], duplicate_window=120.0)
        await _no_acks(rig, True)
        for n in range(5):
            await rig.journal.append(UPLINK_RECORD, "P001", "carIn", f"o-{n}", CAR_IN)
        await eventually(lambda: rig.engine.counters["retries"] >= 2)
        assert rig.engine.done_through == 0 and "no PubAck" in rig.engine.last_error
        await _no_acks(rig, False)
        await eventually(lambda: rig.engine.done_through >= 5, timeout=30)
        messages = await rig.stream()
    finally:
        await rig.stop()
    assert [m.headers["Nats-Msg-Id"] for m in messages] == [f"P001:o-{n}" for n in range(5)]


@pytest_twisted.ensureDeferred
async def test_stopping_with_publishes_in_flight_leaves_nothing_running(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    """The gateway stops while a batch waits for its PubAcks: the wait is abandoned (the batch goes again
    after a restart), nothing is waited for, and the NATS thread is gone."""
    rig = Rig(tmp_path / "journal", nats_server.url, cloud=evolve(FAST, request_timeout=30.0))
    await rig.start()
    await rig.connection.ensure_stream("CPMI_EVENTS", ["cpmi.events.>"])
    await _no_acks(rig, True)
    await rig.journal.append(UPLINK_RECORD, "P001", "carIn", "o-1", CAR_IN)
    await eventually(lambda: rig.engine._in_flight is not None)
    await deferLater(reactor, 0.1, lambda: None)  # the batch is written and waits
    await rig.stop()
    assert rig.engine.done_through == 0
    assert rig.sink._acks is not None and not rig.sink._acks.waiting
    assert not [t for t in threading.enumerate() if t.name == "nats"]

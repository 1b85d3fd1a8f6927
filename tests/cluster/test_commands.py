"""Commands over NATS (CONTRACT §9) with a real nats-server, whole gateways and lots on real TCP downlinks."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_twisted
from nats.errors import NoRespondersError
from twisted.internet.defer import Deferred

from gateway.journal.kinds import COMMAND_RECORD, COMMAND_REPLY_RECORD
from gateway.lotclient.downlink import DownlinkReply
from tests.cluster.gateways import Cloud, TwoGateways, reply_of
from tests.cluster.natsserver import NatsServer
from tests.processes import eventually
from tests.protocol.samples import SAMPLES

GATE = SAMPLES["gateOpen"]
SUBJECT = "cpmi.commands.P001.gateOpen"


class Setup(TwoGateways):
    def __init__(self, tmp_path: Path, nats: NatsServer) -> None:
        # gateOpen's deadline cut to 1 s, so a lot that never answers costs a second.
        super().__init__(tmp_path, nats, "[deadlines]\ngateOpen = 1.0\n")


@pytest_twisted.async_yield_fixture
async def setup(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Setup]:
    """Two gateways and a cloud client on one nats-server; all stopped at the end."""
    async with Setup(tmp_path, nats_server) as made:
        yield made


async def _no_responders(cloud: Cloud, subject: str, payload: bytes = b"{}") -> bool:
    try:
        await cloud.request(subject, payload, timeout=3)
    except NoRespondersError:
        return True
    return False


@pytest_twisted.ensureDeferred
async def test_a_nats_request_opens_a_gate_and_is_journaled_as_over_http(setup: Setup) -> None:
    """A request on cpmi.commands.P001.gateOpen reaches the lot bound here over TCP, and its REPLY is the
    reply; the gateway journals `command` and `command-reply` under the oprNum the lot got."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    msg = await setup.cloud.request(SUBJECT, json.dumps(GATE).encode(), headers={"Cpmi-Client": "ops"})
    reply = reply_of(msg)
    assert reply == {"resultCode": "0000", "resultMessage": "操作成功", "data": {"done": "gateOpen"}}
    assert msg.headers["Cpmi-Status"] == "200"
    sent = [request for request in lot.received if request.code == "gateOpen"]
    assert len(sent) == 1 and sent[0].data == GATE
    await eventually(lambda: len(setup.a.records(COMMAND_REPLY_RECORD)) == 1, what="command-reply journaled")
    command = setup.a.records(COMMAND_RECORD)[0]
    answer = setup.a.records(COMMAND_REPLY_RECORD)[0]
    assert command.opr == answer.opr == sent[0].opr
    assert command.body == {"client": "ops", "data": GATE, "via": "nats"}
    assert answer.body["resultCode"] == "0000" and answer.body["client"] == "ops"
    assert setup.b.records(COMMAND_RECORD) == []


@pytest_twisted.ensureDeferred
async def test_no_responders_when_no_gateway_holds_the_lot(setup: Setup) -> None:
    """A lot bound nowhere has no responder (9008 to an asker); once it leaves the gateway it was bound to,
    that gateway answers no more, and one that holds another lot never answers for this one."""
    assert await _no_responders(setup.cloud, SUBJECT)
    other = setup.lot("P002")
    await other.bind(setup.b)
    await setup.cloud.wait_for_responder("cpmi.commands.P002.gateOpen")
    assert await _no_responders(setup.cloud, SUBJECT)
    lot = setup.lot()
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    await lot.leave()
    await eventually(lambda: "P001" not in setup.a.commands.held(), what="P001 released")
    ok = False
    for _ in range(50):
        if await _no_responders(setup.cloud, SUBJECT):
            ok = True
            break
    assert ok, "the gateway still answers for a lot that left"


@pytest_twisted.ensureDeferred
async def test_a_lot_that_does_not_reply_in_time_is_9009(setup: Setup) -> None:
    """A lot that never replies: the request is answered 9009 (status 504) at the deadline, and journaled."""
    lot = setup.lot(answer=lambda request: Deferred() if request.code == "gateOpen" else DownlinkReply())
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    msg = await setup.cloud.request(SUBJECT, json.dumps(GATE).encode(), timeout=10)
    reply = reply_of(msg)
    assert reply["resultCode"] == "9009" and "P001" in reply["resultMessage"]
    assert msg.headers["Cpmi-Status"] == "504"
    await eventually(lambda: len(setup.a.records(COMMAND_REPLY_RECORD)) == 1)
    assert setup.a.records(COMMAND_REPLY_RECORD)[0].body["resultCode"] == "9009"


@pytest.mark.parametrize(
    ("code", "payload", "result", "words"),
    [
        ("gateOpen", b"{barCode", "9002", "JSON"),
        ("gateOpen", b'"open"', "9004", "object"),
        ("gateOpen", b'{"isOpen": true}', "9010", "data.barCode"),
        ("openSesame", b"{}", "9001", "openSesame"),
        ("blacklist", json.dumps(SAMPLES["blacklist"]).encode(), "9001", "sync"),
        ("carIn", b"{}", "9001", "carIn"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_a_bad_request_gets_a_clear_reply_and_nothing_reaches_the_lot(
    setup: Setup, code: str, payload: bytes, result: str, words: str
) -> None:
    """Bad JSON, data the catalog refuses, an unknown code, a sync or uplink code: a reply with the result
    code and a message naming the problem; nothing journaled, nothing sent, and the gateway answers on."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    reply = reply_of(await setup.cloud.request(f"cpmi.commands.P001.{code}", payload))
    assert reply["resultCode"] == result and words in reply["resultMessage"], reply
    assert reply["data"] is None
    assert "gateOpen" not in lot.codes()
    assert setup.a.records(COMMAND_RECORD) == []
    after = reply_of(await setup.cloud.request(SUBJECT, json.dumps(GATE).encode()))
    assert after["resultCode"] == "0000"


@pytest_twisted.ensureDeferred
async def test_the_http_api_of_one_gateway_reaches_a_lot_bound_on_another(setup: Setup) -> None:
    """POST on gateway A for a lot bound on B: B sends it and journals command and reply (via gw-a); A
    answers the caller 200 with the lot's reply and journals nothing, the record being B's."""
    lot = setup.lot()
    await lot.bind(setup.b)
    await setup.cloud.wait_for_responder(SUBJECT)
    status, body = await setup.a.post("P001", "gateOpen", GATE)
    assert (status, body) == (
        200,
        {"resultCode": "0000", "resultMessage": "操作成功", "data": {"done": "gateOpen"}},
    )
    assert [request.data for request in lot.received if request.code == "gateOpen"] == [GATE]
    await eventually(lambda: len(setup.b.records(COMMAND_REPLY_RECORD)) == 1)
    command = setup.b.records(COMMAND_RECORD)[0]
    assert command.body == {"client": "cloud", "data": GATE, "via": "gw-a"}
    assert command.opr == lot.received[-1].opr
    assert setup.a.records(COMMAND_RECORD) == [] and setup.a.records(COMMAND_REPLY_RECORD) == []


@pytest_twisted.ensureDeferred
async def test_the_http_api_answers_409_when_no_gateway_holds_the_lot(setup: Setup) -> None:
    """POST for a lot bound nowhere: no responders, so 409 with 9008; the asking gateway journals the
    command and its 9008 reply, no gateway having taken it."""
    status, body = await setup.a.post("P001", "gateOpen", GATE)
    assert status == 409 and body["resultCode"] == "9008"
    await eventually(lambda: len(setup.a.records(COMMAND_REPLY_RECORD)) == 1)
    assert setup.a.records(COMMAND_RECORD)[0].body == {"client": "cloud", "data": GATE, "via": "nats"}
    assert setup.a.records(COMMAND_REPLY_RECORD)[0].body["resultCode"] == "9008"


@pytest_twisted.ensureDeferred
async def test_the_http_api_answers_504_when_the_lot_elsewhere_does_not_reply(setup: Setup) -> None:
    """POST on A for a lot on B that never replies: B's deadline answers 9009, and A gives the caller 504."""
    lot = setup.lot(answer=lambda request: Deferred() if request.code == "gateOpen" else DownlinkReply())
    await lot.bind(setup.b)
    await setup.cloud.wait_for_responder(SUBJECT)
    status, body = await setup.a.post("P001", "gateOpen", GATE)
    assert status == 504 and body["resultCode"] == "9009"
    await eventually(lambda: len(setup.b.records(COMMAND_REPLY_RECORD)) == 1)
    assert setup.b.records(COMMAND_REPLY_RECORD)[0].body["resultCode"] == "9009"


@pytest_twisted.ensureDeferred
async def test_a_lot_that_moves_is_answered_for_by_its_new_gateway_only(setup: Setup) -> None:
    """A lot binding on B after A: requests reach it on B; A, which lost it, answers for it no more."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    await lot.bind(setup.b)
    await eventually(
        lambda: "P001" in setup.b.commands.subscribed() and "P001" not in setup.a.commands.held()
    )
    await setup.cloud.wait_for_responder(SUBJECT)  # B's subscription has reached the server too
    for _ in range(3):
        assert reply_of(await setup.cloud.request(SUBJECT, json.dumps(GATE).encode()))["resultCode"] == "0000"
    await eventually(lambda: len(setup.b.records(COMMAND_REPLY_RECORD)) == 3)
    assert len(setup.a.records(COMMAND_REPLY_RECORD)) == 0


@pytest_twisted.ensureDeferred
async def test_a_lot_held_when_nats_py_gives_its_client_up_answers_again_on_the_new_client(
    setup: Setup,
) -> None:
    """nats-py closing its client for good (as after a protocol error) takes the subscriptions with it;
    once the connection's new client is connected, the lot still held subscribes again and a NATS
    request opens its gate."""
    lot = setup.lot()
    await lot.bind(setup.a)
    await setup.cloud.wait_for_responder(SUBJECT)
    first = setup.a.connection._nc
    await setup.a.connection.run(lambda nc, js: nc.close())
    await eventually(
        lambda: setup.a.connection.state == "connected" and setup.a.connection._nc is not first,
        what="a new client",
    )
    await setup.cloud.wait_for_responder(SUBJECT)
    reply = reply_of(await setup.cloud.request(SUBJECT, json.dumps(GATE).encode()))
    assert reply["resultCode"] == "0000"
    assert [request.code for request in lot.received].count("gateOpen") == 1

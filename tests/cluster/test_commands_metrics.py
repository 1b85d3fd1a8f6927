"""The [cluster] commands and sync metrics: counted in memory, and read from /metrics of real gateways."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from nats.errors import NoRespondersError, TimeoutError
from prometheus_client import CollectorRegistry, generate_latest
from twisted.internet import reactor
from twisted.web.client import HTTPConnectionPool

from gateway.cloud.metrics import register_cluster
from gateway.journal.kinds import SYNC_DONE_RECORD
from tests.cluster.gateways import API_TOKEN, Cloud, Gateway, Lot, TwoGateways
from tests.cluster.natsserver import NatsServer
from tests.cluster.test_commands_memory import FakeNats, make
from tests.processes import eventually
from tests.protocol.samples import SAMPLES


class AskingNats(FakeNats):
    """A FakeNats whose requests answer as `answers` says, one each: a reply, or an exception to raise."""

    def __init__(self, answers: list[Any]) -> None:
        super().__init__()
        self.answers = answers

    async def request(self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]) -> Any:
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


class Counts:
    def __init__(self, counters: dict[str, int]) -> None:
        self.counters = counters


def value(text: str, name: str, labels: str = "") -> float:
    """A sample's value in Prometheus text (`name{labels} value`); 0 when absent."""
    pattern = re.escape(name) + (r"\{" + re.escape(labels) + r"\}" if labels else "") + r" ([0-9.e+]+)"
    found = re.search(r"^" + pattern + r"$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_answers_asks_and_the_in_flight_cap_are_counted_and_exported() -> None:
    """Replies by resultCode (the cap's 9999 too), busy refusals, what is in flight, and each asking of
    another gateway by outcome (answered, no responders, timeout, failed) reach the registry."""
    commands, nats, path = make(max_in_flight=1)
    commands.lot_bound("P001")
    for _ in range(2):
        nats.deliver("cpmi.commands.P001.gateOpen", b"{}")
    answer = type("Msg", (), {"headers": {"Cpmi-Status": "200"}, "data": b'{"resultCode":"0000"}'})
    asking = AskingNats([answer, NoRespondersError(), TimeoutError(), RuntimeError("boom")])
    commands._connection = asking
    for _ in range(4):
        commands.ask("P002", "gateOpen", {}, "opr1", "cloud").addErrback(lambda failure: None)
    asking.state = "reconnecting"
    commands.ask("P002", "gateOpen", {}, "opr1", "cloud").addErrback(lambda failure: None)
    registry = CollectorRegistry()
    sync = Counts({"published": 3, "delivered": 2, "expired": 1, "consumers_recreated": 1})
    register_cluster(registry, commands, sync)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert value(text, "cpmi_nats_commands_total", 'result="9999"') == 1
    assert value(text, "cpmi_nats_commands_busy_total") == 1
    assert value(text, "cpmi_nats_commands_in_flight") == 1
    assert value(text, "cpmi_nats_asks_total", 'outcome="answered"') == 1
    assert value(text, "cpmi_nats_asks_total", 'outcome="no_responders"') == 1
    assert value(text, "cpmi_nats_asks_total", 'outcome="timeout"') == 1
    assert value(text, "cpmi_nats_asks_total", 'outcome="failed"') == 2
    assert value(text, "cpmi_sync_entries_total", 'outcome="published"') == 3
    assert value(text, "cpmi_sync_entries_total", 'outcome="refused"') == 0
    assert value(text, "cpmi_sync_consumers_total", 'action="recreated"') == 1
    path.waiting[0].callback((200, {"resultCode": "0000", "resultMessage": "ok", "data": None}))
    text = generate_latest(registry).decode()
    assert value(text, "cpmi_nats_commands_total", 'result="0000"') == 1
    assert value(text, "cpmi_nats_commands_in_flight") == 0


@pytest_twisted.async_yield_fixture
async def gateways(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[tuple[Gateway, Gateway, Cloud]]:
    """Two gateways and a cloud client on one nats-server; all stopped at the end."""
    async with TwoGateways(tmp_path, nats_server) as two:
        yield two.a, two.b, two.cloud


async def metrics(gateway: Gateway) -> str:
    response = await treq.get(
        f"http://127.0.0.1:{gateway.api}/metrics",
        headers={"Authorization": [f"Bearer {API_TOKEN}"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    text: str = await response.text()
    return text


@pytest_twisted.ensureDeferred
async def test_the_metrics_of_real_gateways_count_commands_asks_and_sync_entries(
    gateways: tuple[Gateway, Gateway, Cloud],
) -> None:
    """P001 bound on B: A's API asks B (answered) and asks for P002 (no responders); B answers that and
    counts 0000; a blacklist POSTed on A is counted published on A and delivered on B; each gateway's
    /metrics shows its own figures."""
    a, b, _ = gateways
    lot = Lot("P001")
    await lot.bind(b)
    try:
        await eventually(lambda: "P001" in b.commands.subscribed(), what="B answers for P001")
        status, _ = await a.post("P001", "gateOpen", SAMPLES["gateOpen"])
        assert status == 200
        status, _ = await a.post("P002", "gateOpen", {**SAMPLES["gateOpen"], "parkCode": "P002"})
        assert status == 409
        status, _ = await a.post("P001", "blacklist", SAMPLES["blacklist"])
        assert status == 202
        await eventually(
            lambda: any(r.body.get("outcome") == "delivered" for r in b.records(SYNC_DONE_RECORD)),
            what="delivered on B",
        )
    finally:
        await lot.leave()
    on_a, on_b = await metrics(a), await metrics(b)
    assert value(on_a, "cpmi_nats_asks_total", 'outcome="answered"') == 1
    assert value(on_a, "cpmi_nats_asks_total", 'outcome="no_responders"') == 1
    assert value(on_a, "cpmi_sync_entries_total", 'outcome="published"') == 1
    assert value(on_a, "cpmi_sync_entries_total", 'outcome="delivered"') == 0
    assert value(on_b, "cpmi_nats_commands_total", 'result="0000"') == 1
    assert value(on_b, "cpmi_sync_entries_total", 'outcome="delivered"') == 1
    assert value(on_b, "cpmi_nats_asks_total", 'outcome="answered"') == 0

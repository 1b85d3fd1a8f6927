"""`cpmictl conformance lot`: the kit as a platform, against the simulator's lot and a broken lot."""

from __future__ import annotations

import io
import random
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import pytest_twisted
from treq.client import HTTPClient
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.web.client import Agent, HTTPConnectionPool

from gateway.cli.conformance import lot_main
from gateway.cli.main import build_parser
from gateway.conformance.checks import lot_checks
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import DownlinkClient, DownlinkReply
from gateway.lotclient.uplink import UplinkClient
from gateway.protocol.envelope import Request, request_text
from gateway.simulator.run import Settings, Simulation
from gateway.simulator.traffic import Layout, Traffic
from tests.conformance.fakes import CREDENTIALS, PASSWORD, SECRET, rows_of
from tests.ports import free_port
from tests.simulator.helpers import ZONE


def start_kit(tmp_path: Path, duration: float, *options: str) -> tuple[Deferred[int], io.StringIO, int, int]:
    """`cpmictl conformance lot` running in this process: its exit code to come, its output, its ports."""
    uplink, downlink = free_port(), free_port()
    args = build_parser().parse_args(
        [
            "conformance", "lot",
            "--uplink-listen", f"tcp:{uplink}:interface=127.0.0.1",
            "--downlink-listen", f"tcp:{downlink}:interface=127.0.0.1",
            "--user", "lot001", "--password", PASSWORD, "--secret", SECRET,
            "--duration", str(duration), "--junit", str(tmp_path / "lot.xml"),
            *options,
        ]
    )  # fmt: skip
    out = io.StringIO()
    return Deferred.fromCoroutine(lot_main(args, reactor, out)), out, uplink, downlink


def http() -> HTTPClient:
    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


@pytest_twisted.ensureDeferred
async def test_the_simulated_lot_passes(tmp_path: Path) -> None:
    """The simulator's lot, driven against the kit, fails nothing: every downlink is replied to
    validly, everything it sent was accepted; interfaces it never sent are SKIP, with why."""
    finished, out, uplink, downlink = start_kit(tmp_path, 4.5, "--write-idle", "1")

    def endpoint(lot: LotCredentials) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", downlink)

    simulation = Simulation(
        lots=[CREDENTIALS],
        http=http(),
        uplink_url=f"http://127.0.0.1:{uplink}/uplink",
        clock=reactor,
        settings=Settings(seed=11, rate=40, duration=3.2, drain=1, heartbeat=3),
        downlink=endpoint,
    )
    summary = await Deferred.fromCoroutine(simulation.run())
    code = await finished
    text = out.getvalue()
    rows = rows_of(text)
    assert summary.errors == 0 and summary.downlinks_replied == 16
    assert code == 0, text
    assert set(rows) == {check.name for check in lot_checks()}
    passed = {name for name, (outcome, _) in rows.items() if outcome == "PASS"}
    assert {f"downlink.{check.code}" for check in lot_checks() if check.group == "downlink"} <= passed
    rules = {"login", "signature", "oprnum", "repeat.limit", "tcp.bind", "tcp.frames", "tcp.heartbeat-reply"}
    assert rules | {"uplink.carIn", "uplink.carOut", "uplink.heartbeat", "uplink.parkEnv"} <= passed, text
    assert rows["uplink.autoPay"] == ("SKIP", "the lot sent no autoPay during the run")
    assert rows["heartbeat.interval"][0] == "SKIP"
    suite = ElementTree.parse(tmp_path / "lot.xml").getroot()
    assert suite.get("tests") == str(len(rows)) and suite.get("failures") == "0"


def broken_answer(request: Request) -> DownlinkReply | None:
    """A lot that never replies to gateOpen and answers gateState with a word for a number."""
    if request.code == "gateOpen":
        return None
    if request.code == "gateState":
        return DownlinkReply(data={"barCode": "G1", "barStatus": "open"})
    return DownlinkReply()


@pytest_twisted.ensureDeferred
async def test_a_broken_lot_fails_with_reasons(tmp_path: Path) -> None:
    """A lot that sends a bad time, signs with the wrong secret, leaves a command unanswered and
    replies with a bad field: each is a FAIL naming what was wrong; exit 1."""
    finished, out, uplink_port, downlink_port = start_kit(tmp_path, 3.0, "--deadline", "1")
    rng = random.Random(3)
    traffic = Traffic(Layout.generate("P001", rng), rng, ZONE)
    uplink = UplinkClient(
        http=http(), url=f"http://127.0.0.1:{uplink_port}/uplink", credentials=CREDENTIALS, clock=reactor
    )
    now = reactor.seconds()
    assert (await uplink.send("carIn", traffic.sample("carIn", now))).ok
    car_out = traffic.sample("carOut", now)
    assert isinstance(car_out, dict)
    refused = await uplink.send("carOut", {**car_out, "inTime": "yesterday"})
    assert refused.result_code == "9010"
    free_space = traffic.sample("freeSpace", now)
    wrong = request_text("freeSpace", uplink.new_opr(), uplink.token, "not-the-secret", free_space)
    assert (await uplink.post_text(wrong)).result_code == "9006"
    lot = DownlinkClient(
        endpoint=TCP4ClientEndpoint(reactor, "127.0.0.1", downlink_port),
        clock=reactor,
        credentials=CREDENTIALS,
        answer=broken_answer,
        token=lambda: uplink.token,
        heartbeat_interval=1,
    )
    lot.start()
    try:
        code = await finished
    finally:
        await lot.stop()
    text = out.getvalue()
    rows = rows_of(text)
    assert code == 1
    expected = {
        "signature": "1 message with a wrong signature, first: freeSpace oprNum",
        "uplink.carOut": "1 of 1 message refused; oprNum",
        "uplink.freeSpace": "9006",
        "downlink.gateOpen": "no REPLY within the deadline (1 s)",
        "downlink.gateState": "its data is not valid: data.barStatus: not an integer: 'open'",
    }
    for name, words in expected.items():
        assert rows[name][0] == "FAIL" and words in rows[name][1], (name, text)
    assert "data.inTime: not a yyyy-MM-dd HH:mm:ss time" in rows["uplink.carOut"][1]
    for name in ("login", "uplink.carIn", "tcp.bind", "downlink.feeQuery", "downlink.blacklist"):
        assert rows[name][0] == "PASS", (name, text)


@pytest_twisted.ensureDeferred
async def test_a_run_without_a_lot_fails_login_and_skips_the_rest(tmp_path: Path) -> None:
    """No lot ever comes: login FAILs (nothing was shown to work), every other row is SKIP; exit 1."""
    finished, out, _, _ = start_kit(tmp_path, 0.5)
    code = await finished
    rows = rows_of(out.getvalue())
    assert code == 1
    assert rows.pop("login") == (
        "FAIL",
        "the lot never logged in during the run (is it pointed at this kit?)",
    )
    assert {outcome for outcome, _ in rows.values()} == {"SKIP"}
    assert rows["tcp.bind"] == ("SKIP", "the lot never connected to the TCP downlink")
    assert rows["downlink.gateOpen"][1] == "the run ended before this was checked (was the lot connected?)"

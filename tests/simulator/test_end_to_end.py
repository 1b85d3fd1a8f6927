"""The simulator over real loopback sockets: hundreds of lots, an outage, the command API, the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from treq.client import HTTPClient
from twisted.application.service import MultiService
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.task import deferLater
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway import tap
from gateway.journal.reader import read_records
from gateway.lotclient.credentials import LotCredentials
from gateway.protocol.times import wire_time
from gateway.simulator.run import Settings, Simulation
from gateway.simulator.stats import Summary
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import ROOT, eventually, gateway_toml, start_twistd
from tests.simulator.helpers import ZONE

SECRET = "k"
API_TOKEN = "cloud-token"
SUMMARY_KEYS = ["lots", "sent", "acked", "retried", "errors", "p50_ms", "p99_ms", "downlinks_replied"]


class CloudReceiver(Resource):
    """The cloud's events endpoint in this process: keeps every event of every batch, answers 204."""

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.events: list[dict[str, Any]] = []

    def render_POST(self, request: Request) -> bytes:
        assert request.content is not None
        self.events.extend(json.loads(request.content.read()))
        request.setResponseCode(204)
        return b""

    def lot_messages(self) -> set[tuple[str, str]]:
        """(park, oprNum) of each lot message received (org.cpmi.t002.*), duplicates dropped."""
        return {
            (event["source"].removeprefix("urn:cpmi:park:"), event["cpmioprnum"])
            for event in self.events
            if event["type"].startswith("org.cpmi.t002.")
        }


def write_config(tmp_path: Path, lots: int, cloud: str = "") -> tuple[str, dict[str, int]]:
    """A gateway config with `lots` lots (one cheap hash for all) on free loopback ports."""
    ports = {name: free_port() for name in ("uplink", "downlink", "api")}
    text = f"""
{gateway_toml(tmp_path, "gw-sim", **ports)}
[uplink]
# All the lots connect from 127.0.0.1 at once: more than one address may have unbound.
max_connections_per_peer = {lots + 64}
[cloud]
api_token = "{API_TOKEN}"
{cloud}
"""
    for n in range(lots):
        text += f'[[lot]]\npark_code = "P{n:03d}"\nusername = "lot{n:03d}"\n'
        text += f'password = "{HASH}"\nsecret = "{SECRET}"\n'
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path), ports


def credentials(lots: int) -> list[LotCredentials]:
    return [LotCredentials(f"P{n:03d}", f"lot{n:03d}", PASSWORD, SECRET) for n in range(lots)]


def start_gateway(config: str) -> MultiService:
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    return service


def simulation(ports: dict[str, int], lots: int, pool: HTTPConnectionPool, **settings: Any) -> Simulation:
    def endpoint(lot: LotCredentials) -> IStreamClientEndpoint:
        return TCP4ClientEndpoint(reactor, "127.0.0.1", ports["downlink"])

    return Simulation(
        lots=credentials(lots),
        http=HTTPClient(Agent(reactor, pool=pool)),
        uplink_url=f"http://127.0.0.1:{ports['uplink']}/uplink",
        clock=reactor,
        settings=Settings(seed=2026, **settings),
        downlink=endpoint,
    )


async def command(ports: dict[str, int], park: str, code: str, data: Any) -> tuple[int, Any]:
    response = await treq.post(
        f"http://127.0.0.1:{ports['api']}/v1/parks/{park}/commands/{code}",
        json=data,
        headers={"Authorization": [f"Bearer {API_TOKEN}"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_two_hundred_lots_and_the_cloud_receives_what_they_were_acknowledged(tmp_path: Path) -> None:
    """200 lots through a gateway: each message acked reaches the cloud, and commands are replied to."""
    receiver = CloudReceiver()
    listening = reactor.listenTCP(0, Site(receiver), interface="127.0.0.1")  # type: ignore[attr-defined]
    url = f"http://127.0.0.1:{listening.getHost().port}/events"
    config, ports = write_config(
        tmp_path, 200, f'sink = "cloudevents"\nurl = "{url}"\nbatch_max_delay = 0.05\nretry_min_delay = 0.1'
    )
    service = start_gateway(config)
    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 32
    run = simulation(ports, 200, pool, rate=150, duration=3, drain=10)
    acked: set[tuple[str, str]] = set()
    run.stats.acked_listeners.append(lambda park, code, opr: acked.add((park, opr)))
    try:
        running = Deferred.fromCoroutine(run.run())
        await eventually(lambda: len(run.ready) == 200 and all(client.bound for client in run.downlinks))
        lot = run.lots[0]
        record = lot.model.random_record()
        status, fee = await command(ports, "P000", "feeQuery", {"recordCode": record})
        assert status == 200 and fee["resultCode"] == "0000" and fee["data"]["recordCode"] == record
        assert fee["data"]["payMoney"] >= fee["data"]["chargeMoney"] >= 0
        status, gate = await command(ports, "P001", "gateOpen", {"barCode": "GATE-OUT-01", "isOpen": 1})
        assert status == 200 and gate == {
            "resultCode": "0000",
            "resultMessage": "操作成功",
            "data": {"barCode": "GATE-OUT-01", "status": 1},
        }
        status, _ = await command(ports, "P002", "blacklist", {"carNum": "苏E88888", "Type": 1})
        assert status == 202
        summary: Summary = await running
        await eventually(lambda: len(receiver.lot_messages()) >= summary.acked)
        await eventually(
            lambda: any(e["type"] == "org.cpmi.gateway.downlink-delivered.v1" for e in receiver.events)
        )
    finally:
        await pool.closeCachedConnections()
        await service.stopService()
        await listening.stopListening()
    assert summary.lots == 200 and summary.errors == 0, run.stats.reasons
    assert summary.sent == summary.acked > 200 * 6
    assert receiver.lot_messages() == acked and len(acked) == summary.acked
    assert summary.downlinks_replied >= 3
    assert "苏E88888" in run.lots[2].model.blacklist
    assert 0 < summary.p50_ms <= summary.p99_ms


def stop_process(process: subprocess.Popen[bytes]) -> Deferred[None]:
    """SIGTERM, then fire once the process has exited, without blocking the reactor."""
    process.send_signal(signal.SIGTERM)

    async def wait() -> None:
        await eventually(lambda: process.poll() is not None, timeout=30)

    return Deferred.fromCoroutine(wait())


@pytest_twisted.ensureDeferred
async def test_an_outage_is_retried_and_exits_are_backfilled_newest_first(tmp_path: Path) -> None:
    """The gateway stops for a while: lots retry, keep their oprNums, and backfill exits newest first."""
    config, ports = write_config(tmp_path, 5)
    gateway = start_twistd(tmp_path, config)
    pool = HTTPConnectionPool(reactor, persistent=True)
    run = simulation(ports, 5, pool, rate=25, duration=6, drain=15, time_scale=600)
    acked: set[tuple[str, str]] = set()
    run.stats.acked_listeners.append(lambda park, code, opr: acked.add((park, opr)))
    try:
        await eventually(lambda: gateway.poll() is None and _listening(ports["uplink"]), timeout=30)
        running = Deferred.fromCoroutine(run.run())
        await eventually(lambda: all(client.bound for client in run.downlinks), timeout=15)
        await deferLater(reactor, 1.0, lambda: None)
        await stop_process(gateway)
        stopped_at = wire_time(reactor.seconds(), ZONE)
        await deferLater(reactor, 2.5, lambda: None)  # the outage: cars keep coming and going
        restarted_at = wire_time(reactor.seconds(), ZONE)
        gateway = start_twistd(tmp_path, config)
        summary: Summary = await running
    finally:
        await pool.closeCachedConnections()
        if gateway.poll() is None:
            await stop_process(gateway)
    assert summary.errors == 0, run.stats.reasons
    assert summary.retried > 0 and run.stats.backfilled > 0 and run.stats.transport_failures > 0
    assert sum(client.counters.reconnects for client in run.downlinks) >= 5
    uplinks = [record for record in read_records(tmp_path / "journal") if record.kind == "uplink"]
    stored = [(record.park, record.opr) for record in uplinks]
    assert len(stored) == len(set(stored)), "a message was stored twice"
    assert acked <= set(stored)
    # The exits of the outage wait together and go newest first once the gateway answers. (A car
    # whose carIn failed and that leaves later is backfilled then, after them; an exit in the very
    # second the gateway went away may have been on its way already: neither is checked here.)
    backfills: dict[str, list[str]] = defaultdict(list)
    for record in uplinks:
        if record.code == "backfill" and stopped_at < record.body["outTime"] <= restarted_at:
            backfills[record.park].append(record.body["outTime"])
    assert sum(len(out_times) for out_times in backfills.values()) >= 5
    for park, out_times in backfills.items():
        assert out_times == sorted(out_times, reverse=True), park


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


async def cpmictl(*args: str) -> tuple[int, str, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out, err, code = await getProcessOutputAndValue(
        sys.executable, ("-m", "gateway.cli.main", *args), env=env, path=str(ROOT), reactor=reactor
    )
    return code, out.decode(), err.decode()


@pytest_twisted.ensureDeferred
async def test_the_cli_prints_one_json_line_and_exits_by_its_errors(tmp_path: Path) -> None:
    """cpmictl lot simulate: one JSON line; exit 0 without errors, 1 with; a soak ends on SIGTERM."""
    config, ports = write_config(tmp_path, 20)
    good, bad, soak = tmp_path / "good.csv", tmp_path / "bad.csv", tmp_path / "soak.csv"
    rows = "".join(f"{lot.park_code},{lot.username},{lot.password},{SECRET}\n" for lot in credentials(15))
    good.write_text("park_code,username,password,secret\n" + rows)
    # Other accounts than the good run's: a second login of one account would replace its token (B.3.5).
    bad.write_text(f"P015,lot015,{PASSWORD},{SECRET}\nP016,lot016,wrong,{SECRET}\n")
    soak.write_text(f"P017,lot017,{PASSWORD},{SECRET}\nP018,lot018,{PASSWORD},{SECRET}\n")
    service = start_gateway(config)
    uplink = ["--uplink", f"http://127.0.0.1:{ports['uplink']}"]
    common = ["lot", "simulate", *uplink, "--duration", "1"]
    downlink = f"127.0.0.1:{ports['downlink']}"
    soak_args = ["--credentials", str(soak), "--soak", "--summary-every", "0.5", "--rate", "10"]
    soaking = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli.main", "lot", "simulate", *uplink, *soak_args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        good_run = Deferred.fromCoroutine(
            cpmictl(*common, "--credentials", str(good), "--downlink", downlink, "--rate", "20", "--seed=1")
        )
        bad_run = Deferred.fromCoroutine(cpmictl(*common, "--credentials", str(bad), "--rate", "5"))
        code, out, err = await good_run
        bad_code, bad_out, bad_err = await bad_run
        await deferLater(reactor, 1.0, lambda: None)
        await stop_process(soaking)
    finally:
        if soaking.poll() is None:
            soaking.kill()
        await service.stopService()
    soak_out, soak_err = soaking.communicate(timeout=10)
    assert soaking.returncode == 0, soak_err
    *minutes, last = [json.loads(line) for line in soak_out.decode().splitlines()]
    assert minutes and all(line["lots"] == 2 and "acked_per_s" in line for line in minutes)
    assert list(last) == SUMMARY_KEYS and last["errors"] == 0 and last["acked"] > 0
    assert code == 0, err
    [line] = out.splitlines()
    summary = json.loads(line)
    assert list(summary) == SUMMARY_KEYS
    assert summary["lots"] == 15 and summary["errors"] == 0 and summary["sent"] == summary["acked"] >= 15 * 6
    assert bad_code == 1, bad_err
    [bad_line] = bad_out.splitlines()
    assert json.loads(bad_line)["errors"] == 1 and json.loads(bad_line)["lots"] == 1, bad_err
    assert "login 9003" in bad_err

"""The gateway over real loopback sockets: makeService in process, and twistd killed under load."""

from __future__ import annotations

import io
import json
import random
import signal
import threading
import time
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest_twisted
import treq
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.web.client import HTTPConnectionPool

from gateway import tap
from gateway.journal.integrity import verify_journal
from gateway.journal.reader import read_records, read_records_skipping, verify
from gateway.protocol.catalog import INTERFACES, DeliveryClass
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD, signed_envelope
from tests.ports import free_port
from tests.processes import gateway_toml, start_twistd, wait_for_port
from tests.protocol.samples import SAMPLES

ROOT = Path(__file__).parent.parent
# parkEnv first: freeSpace is checked against its totalNum.
REPORTS = sorted(
    (i.code for i in INTERFACES if i.uplink is DeliveryClass.REPORT), key=lambda code: code != "parkEnv"
)
CAR_IN = {"recordCode": "R1", "carNum": "京A12345", "inCross": "1", "inTime": "2026-11-24 08:30:00"}


def write_config(tmp_path: Path, port: int, downlink: int = 0, api: int = 0) -> str:
    """A config with the uplink on `port` and the downlink and API on free loopback ports (or these)."""
    path = tmp_path / "gateway.toml"
    path.write_text(
        f"""
{gateway_toml(tmp_path, uplink=port, downlink=downlink or free_port(), api=api or free_port())}
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
    )
    return str(path)


def envelope(code: str, data: Any, token: str = "", opr: str = "") -> bytes:
    text = compact(data)
    param = {
        "token": token,
        "code": code,
        "oprNum": opr or f"{code}-{random.random()}",
        "signature": sign(text, token, "k"),
        "data": data,
    }
    return urllib.parse.urlencode({"param": json.dumps(param, ensure_ascii=False)}).encode()


async def post(port: int, body: bytes) -> dict[str, Any]:
    # A fresh connection each time: a kept-alive one would outlive a restart in this process.
    response = await treq.post(
        f"http://127.0.0.1:{port}/uplink",
        data=body,
        headers={"Content-Type": ["application/x-www-form-urlencoded"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    assert response.code == 200
    answer: dict[str, Any] = json.loads(await response.content())
    return answer


@pytest_twisted.ensureDeferred
async def test_login_upload_restart_keeps_token(tmp_path: Path) -> None:
    """Over loopback: login, every report interface stored, and after a restart the token still works."""
    port = free_port()
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, port)])
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        login = await post(port, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))
        assert login["resultCode"] == "0000"
        token = login["data"]["token"]
        answer = await post(port, envelope("carIn", CAR_IN, token, opr="e2e-1"))
        assert answer["resultCode"] == "0000"
        for code in REPORTS:
            answer = await post(port, envelope(code, SAMPLES[code], token, opr=f"every-{code}"))
            assert answer["resultCode"] == "0000", (code, answer)
        image = [{"recordCode": "R1", "imageCode": "IMG1", "imageType": 1}]
        param = urllib.parse.parse_qs(envelope("carImage", image, token, opr="e2e-image").decode())["param"][
            0
        ]
        response = await treq.post(
            f"http://127.0.0.1:{port}/uplink",
            data={"param": param},
            files={"IMG1": ("a.jpg", "image/jpeg", io.BytesIO(b"\xff\xd8jpeg"))},
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        assert json.loads(await response.content())["resultCode"] == "0000"
    finally:
        await service.stopService()

    service = tap.makeService(options, reactor)
    service.startService()
    try:
        again = await post(port, envelope("carIn", CAR_IN, token, opr="e2e-2"))
        assert again["resultCode"] == "0000"
        repeat = await post(port, envelope("carIn", CAR_IN, token, opr="e2e-1"))
        assert repeat["resultCode"] == "0000"
    finally:
        await service.stopService()
    oprs = [record.opr for record in read_records(tmp_path / "journal") if record.kind == "uplink"]
    assert oprs == ["e2e-1", *(f"every-{code}" for code in REPORTS), "e2e-image", "e2e-2"]
    [image_record] = [r for r in read_records(tmp_path / "journal") if r.opr == "e2e-image"]
    assert image_record.body[0]["imageBase64"] == "/9hqcGVn"


def plain_post(port: int, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/uplink",
        data=body,
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    with urllib.request.urlopen(request, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def upload(port: int, token: str, prefix: str, stop: threading.Event, acknowledged: set[str]) -> None:
    """Upload carIn records one after another until stopped or refused; note each 0000."""
    count = 0
    while not stop.is_set():
        opr = f"{prefix}-{count}"
        count += 1
        try:
            answer = plain_post(port, envelope("carIn", CAR_IN, token, opr=opr))
        except (OSError, urllib.error.URLError, ValueError):
            return
        if answer["resultCode"] == "0000":
            acknowledged.add(opr)  # set.add is atomic under the GIL


def test_kill_9_under_load_loses_no_acknowledged_record(tmp_path: Path) -> None:
    """twistd SIGKILLed under upload load, 20 times: every uplink answered 0000 is in the journal."""
    port = free_port()
    config = write_config(tmp_path, port)
    acknowledged: set[str] = set()
    rng = random.Random(2026)
    for round_number in range(20):
        process = start_twistd(tmp_path, config)
        try:
            wait_for_port(port, process)
            token = plain_post(port, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))[
                "data"
            ]["token"]
            stop = threading.Event()
            workers = [
                threading.Thread(
                    target=upload, args=(port, token, f"r{round_number}-w{n}", stop, acknowledged)
                )
                for n in range(4)
            ]
            for worker in workers:
                worker.start()
            time.sleep(0.2 + 0.6 * rng.random())
            process.send_signal(signal.SIGKILL)
            process.wait(10)
            stop.set()
            for worker in workers:
                worker.join(10)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    # A last start recovers the torn tail; then every acknowledged record must be there.
    process = start_twistd(tmp_path, config)
    try:
        wait_for_port(port, process)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    stored = {record.opr for record in read_records(tmp_path / "journal") if record.kind == "uplink"}
    assert len(acknowledged) > 200, "the load was too light to mean anything"
    assert acknowledged <= stored, sorted(acknowledged - stored)[:10]
    assert verify(tmp_path / "journal") > 0


class LotClient(Protocol):
    """A lot's downlink connection: logs in, then answers every ACK with a REPLY."""

    def __init__(self) -> None:
        self.decoder = FrameDecoder(2**20)
        self.frames: list[dict[str, Any]] = []
        self.bound: Deferred[dict[str, Any]] = Deferred()
        self.waiting: dict[str, Deferred[dict[str, Any]]] = {}
        self.silent: set[str] = set()  # codes the lot never answers

    def ack(self, code: str) -> Deferred[dict[str, Any]]:
        """Fires with the next ACK of `code` the lot receives (after it has replied to it)."""
        return self.waiting.setdefault(code, Deferred())

    def connectionMade(self) -> None:
        login = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
        self.send(signed_envelope("login", login, secret="k", opr="bind-1"))

    def send(self, message: dict[str, Any]) -> None:
        self.transport.write(encode_frame(message))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            assert isinstance(payload, bytes)
            frame = json.loads(payload)
            self.frames.append(frame)
            if frame.get("oprNum") == "bind-1":
                self.bound.callback(frame)
            elif "resultCode" not in frame and frame["code"] not in self.silent:  # an ACK: answer it
                reply_data = {"barCode": frame["data"].get("barCode", ""), "opened": 1}
                self.send(
                    {
                        "code": frame["code"],
                        "oprNum": frame["oprNum"],
                        "resultCode": "0000",
                        "resultMessage": "ok",
                        "signature": sign(compact(reply_data), self.token, "k"),
                        "data": reply_data,
                    }
                )
                if frame["code"] in self.waiting:
                    self.waiting.pop(frame["code"]).callback(frame)

    @property
    def token(self) -> str:
        return str(self.frames[0]["data"]["token"])


@pytest_twisted.ensureDeferred
async def test_gate_open_from_the_api_reaches_the_lot_and_its_reply_comes_back(tmp_path: Path) -> None:
    """Over loopback: a lot binds on TCP; POST gateOpen to the API; the lot's REPLY is the answer."""
    config, downlink, api = api_config(tmp_path)
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    lot = LotClient()
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", downlink), lot)
        bound = await lot.bound
        assert bound["resultCode"] == "0000" and len(bound["data"]["token"]) == 32
        url = f"http://127.0.0.1:{api}/v1/parks/P001/commands/gateOpen"
        response = await treq.post(
            url,
            json={"barCode": "G1", "isOpen": 1},
            headers={"Authorization": ["Bearer cloud-token"]},
            pool=HTTPConnectionPool(reactor, persistent=False),
        )
        answer = json.loads(await response.content())
        assert response.code == 200, answer
        assert answer == {"resultCode": "0000", "resultMessage": "ok", "data": {"barCode": "G1", "opened": 1}}
        [ack] = [frame for frame in lot.frames if frame.get("code") == "gateOpen"]
        assert ack["token"] == lot.token and ack["data"]["barCode"] == "G1"
        assert ack["signature"] == sign(compact(ack["data"]), lot.token, "k")
        metrics = await treq.get(
            f"http://127.0.0.1:{api}/metrics", pool=HTTPConnectionPool(reactor, persistent=False)
        )
        text = (await metrics.content()).decode()
        for name in (
            "cpmi_lots_connected 1.0",
            "cpmi_journal_fsync_seconds_count",
            "cpmi_sync_queued_entries 0.0",
            'cpmi_command_seconds_count{code="gateOpen",outcome="ok"} 1.0',
            "cpmi_downlink_frames_in_total",
        ):
            assert name in text, name
        assert "cpmi_sync_queue_depth{" not in text  # nothing queued: no series, for this lot or any
        unauthorised = await treq.post(
            url, json={"barCode": "G1"}, pool=HTTPConnectionPool(reactor, persistent=False)
        )
        assert unauthorised.code == 401
    finally:
        lot.transport.loseConnection()  # type: ignore[union-attr]
        await service.stopService()
    records = list(read_records(tmp_path / "journal"))
    kinds = [record.kind for record in records]
    assert kinds.index("lot-online") < kinds.index("command") < kinds.index("command-reply")
    [offline] = [record for record in records if record.kind == "lot-offline"]
    assert offline.body["reason"] == "gateway stopping"


def api_config(tmp_path: Path) -> tuple[str, int, int]:
    """A config with all three listeners on free loopback ports and an API token."""
    uplink, downlink, api = free_port(), free_port(), free_port()
    config = Path(write_config(tmp_path, uplink, downlink, api))
    config.write_text(config.read_text() + '[cloud]\napi_token = "cloud-token"\n')
    return str(config), downlink, api


async def api_call(method: str, url: str, body: Any = None) -> tuple[int, Any]:
    response = await treq.request(
        method,
        url,
        json=body,
        headers={"Authorization": ["Bearer cloud-token"]},
        pool=HTTPConnectionPool(reactor, persistent=False),
    )
    return response.code, json.loads(await response.content())


@pytest_twisted.ensureDeferred
async def test_blacklist_queued_offline_survives_a_restart_and_reaches_the_lot(tmp_path: Path) -> None:
    """A sync command for an offline lot is 202, kept across a restart, and delivered once the lot binds."""
    config, downlink, api = api_config(tmp_path)
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        status, body = await api_call(
            "POST", f"http://127.0.0.1:{api}/v1/parks/P001/commands/blacklist", {"carNum": "京A99999"}
        )
        assert status == 202, body
        seq = body["seq"]
    finally:
        await service.stopService()

    service = tap.makeService(options, reactor)
    service.startService()
    lot = LotClient()
    try:
        status, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
        assert status == 200 and park["backlog"] == 1 and park["connected"] is False
        delivered = lot.ack("blacklist")
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", downlink), lot)
        ack = await delivered.addTimeout(10, reactor)
        assert ack["data"]["carNum"] == "京A99999"
        for _ in range(100):  # the REPLY is on its way back; let the gateway journal it
            status, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
            if park["backlog"] == 0:
                break
        assert park["backlog"] == 0
    finally:
        lot.transport.loseConnection()  # type: ignore[union-attr]
        await service.stopService()
    [done] = [r for r in read_records(tmp_path / "journal") if r.kind == "sync-done"]
    assert done.body["seq"] == seq and done.body["outcome"] == "delivered"


@pytest_twisted.ensureDeferred
async def test_configured_deadline_applies_to_a_silent_lot(tmp_path: Path) -> None:
    """With [deadlines] gateState = 0.3, a lot that never replies makes the API answer 504/9009 quickly."""
    config, downlink, api = api_config(tmp_path)
    Path(config).write_text(Path(config).read_text() + "[deadlines]\ngateState = 0.3\n")
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    lot = LotClient()
    lot.silent.add("gateState")
    try:
        await connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", downlink), lot)
        await lot.bound
        started = reactor.seconds()
        status, body = await api_call(
            "POST", f"http://127.0.0.1:{api}/v1/parks/P001/commands/gateState", {"barCode": "G1"}
        )
        assert status == 504 and body["resultCode"] == "9009"
        assert reactor.seconds() - started < 5, "the catalog's 10 s deadline was used, not the configured one"
    finally:
        lot.transport.loseConnection()  # type: ignore[union-attr]
        await service.stopService()


@pytest_twisted.ensureDeferred
async def test_damaged_journal_starts_degraded_and_keeps_serving(tmp_path: Path) -> None:
    """An altered record in an old segment and in the last one: the gateway starts, says so, and serves.

    Each is set aside alone under a signed recovery record, so the journal verifies whole again.
    """
    config, _, api = api_config(tmp_path)
    text = Path(config).read_text()
    Path(config).write_text(text.replace("[journal]\n", "[journal]\nsegment_bytes = 65536\n"))
    options = tap.Options()
    options.parseOptions(["--config", config])
    port = int(Path(config).read_text().split('uplink = "tcp:')[1].split(":")[0])
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        token = (await post(port, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})))[
            "data"
        ]["token"]
        for n in range(400):
            answer = await post(port, envelope("carIn", {**CAR_IN, "recordCode": f"R{n}"}, token, f"d-{n}"))
            assert answer["resultCode"] == "0000"
    finally:
        await service.stopService()
    segments = sorted((tmp_path / "journal").glob("*.jsonl"))
    assert len(segments) >= 2
    for segment in (segments[0], segments[-1]):
        data = bytearray(segment.read_bytes())
        lines = bytes(data).splitlines(keepends=True)
        data[len(lines[0]) + len(lines[1]) + 3] ^= 0x20  # "seq" -> "SEQ": record 3 is not a record
        segment.write_bytes(bytes(data))

    service = tap.makeService(options, reactor)  # must not raise: no crash loop
    service.startService()
    try:
        response = await treq.get(
            f"http://127.0.0.1:{api}/readyz", pool=HTTPConnectionPool(reactor, persistent=False)
        )
        text = (await response.content()).decode()
        assert response.code == 200 and text.count("quarantined") == 2, text
        metrics = await treq.get(
            f"http://127.0.0.1:{api}/metrics", pool=HTTPConnectionPool(reactor, persistent=False)
        )
        assert "cpmi_journal_quarantined_segments 2.0" in (await metrics.content()).decode()
        answer = await post(port, envelope("carIn", CAR_IN, token, "after-damage"))
        assert answer["resultCode"] == "0000"
    finally:
        await service.stopService()
    kinds = [r.kind for r in read_records_skipping(tmp_path / "journal", lambda damage: None)]
    assert kinds.count("recovery") == 2 and kinds[-1] == "seal"
    third = int(segments[-1].name[:20]) + 2  # the third record of the last segment
    verdict = verify_journal(tmp_path / "journal", seals=True)
    assert [r.lost for r in verdict.recoveries] == [(3, 3), (third, third)]


@pytest_twisted.ensureDeferred
async def test_http_uplinks_mark_the_lot_seen_in_the_api(tmp_path: Path) -> None:
    """A lot that only uses HTTP is "last seen" at its login and signed uplinks; a bad signature is not.

    CONTRACT §3: a heartbeat marks the lot alive, and heartbeats come over HTTP
    too; `GET /v1/parks` gives when the lot last sent anything.
    """
    config, _, api = api_config(tmp_path)
    uplink = int(tomllib.loads(Path(config).read_text())["listen"]["uplink"].split(":")[1])
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        status, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
        assert status == 200 and park["lastSeen"] is None
        login = await post(uplink, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD}))
        token = login["data"]["token"]
        _, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
        at_login = park["lastSeen"]
        assert at_login is not None and park["connected"] is False
        await deferLater(reactor, 1.1, lambda: None)  # lastSeen is given to the second
        forged = urllib.parse.parse_qs(envelope("heartbeat", {}, token).decode())["param"][0]
        forged = forged.replace(sign(compact({}), token, "k"), "0" * 32)
        refused = await post(uplink, urllib.parse.urlencode({"param": forged}).encode())
        assert refused["resultCode"] == "9006"
        _, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
        assert park["lastSeen"] == at_login
        answer = await post(uplink, envelope("heartbeat", {}, token))
        assert answer["resultCode"] == "0000"
        _, park = await api_call("GET", f"http://127.0.0.1:{api}/v1/parks/P001")
        assert park["lastSeen"] > at_login and park["connected"] is False
    finally:
        await service.stopService()

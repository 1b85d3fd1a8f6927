"""CONTRACT §6-§8 as an acceptance test sees them: one real gateway (twistd), its public ports,
a local CloudEvents receiver, the journal files and `cpmictl`.

One gateway serves the whole module (starting twistd is the slow part); each test uses its own
record codes and oprNums, so the tests do not depend on one another's order.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import VerifyKey

from gateway import config
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD, signed_envelope
from tests.ports import free_port
from tests.processes import ROOT, gateway_toml, lots_toml, start_twistd, stop, wait_for_answer, wait_until
from tests.protocol.samples import SAMPLES
from tests.test_end_to_end import CAR_IN, envelope, plain_post

GATEWAY_ID = "gw-c"
CLOUD_TOKEN = "cloud-token"
TOKENS = {"reader": "read-token", "commander": "command-token", "syncer": "sync-token", "root": "admin-token"}
ROLES = {"reader": "read", "commander": "command", "syncer": "sync", "root": "admin"}
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)")


# --- the cloud: an events endpoint and a query endpoint ------------------------------------------


class Cloud(ThreadingHTTPServer):
    """Records every request; answers /events with the next planned status (200 when none)."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), CloudHandler)
        self.requests: list[dict[str, Any]] = []
        self.planned: list[int] = []
        self.lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def events(self) -> list[dict[str, Any]]:
        """Every event received on /events (retries included), in arrival order."""
        with self.lock:
            batches = [r for r in self.requests if r["path"] == "/events"]
        return [event for batch in batches for event in json.loads(batch["body"])]

    def event(self, opr: str) -> dict[str, Any]:
        """The first event carrying ``cpmioprnum`` ``opr``, waiting for it."""
        wait_until(lambda: any(e.get("cpmioprnum") == opr for e in self.events()), what=f"event {opr}")
        return next(e for e in self.events() if e.get("cpmioprnum") == opr)


class CloudHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Cloud

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.lock:
            self.server.requests.append(
                {"path": self.path, "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body}
            )
            status = self.server.planned.pop(0) if self.path == "/events" and self.server.planned else 200
        if self.path == "/query":
            event = json.loads(body)
            answer = json.dumps({"payStatus": 1, "orderCode": event["id"], "actualPay": 10.0}).encode()
        else:
            answer = json.dumps({"status": status, "why": "refused by the test"}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


# --- the gateway --------------------------------------------------------------------------------


class Gateway:
    """The running gateway's ports, directories and the cloud it sends to."""

    def __init__(self, work: Path, cloud: Cloud) -> None:
        self.work = work
        self.cloud = cloud
        self.uplink, self.downlink, self.api = free_port(), free_port(), free_port()
        self.journal = work / "journal"
        self.key = work / "gateway.key"
        clients = "".join(
            f'[[api_client]]\nname = "{name}"\n'
            f'token_sha256 = "{hashlib.sha256(token.encode()).hexdigest()}"\nroles = ["{ROLES[name]}"]\n'
            for name, token in TOKENS.items()
        )
        self.config = work / "gateway.toml"
        self.config.write_text(
            f"""{gateway_toml(work, GATEWAY_ID, uplink=self.uplink, downlink=self.downlink, api=self.api)}
seal_interval = 0.5
[cloud]
url = "{cloud.url}/events"
query_url = "{cloud.url}/query"
api_token = "{CLOUD_TOKEN}"
batch_max_delay = 0.02
retry_min_delay = 0.1
retry_max_delay = 0.3
{clients}
{lots_toml(2)}"""
        )
        self.token = ""

    def login(self) -> str:
        if not self.token:
            answer = plain_post(
                self.uplink, envelope("login", {"parkUserName": "lot001", "parkUserPwd": PASSWORD})
            )
            self.token = answer["data"]["token"]
        return self.token

    def car_in(self, opr: str, record: str) -> dict[str, Any]:
        """Upload a carIn for P001 under ``opr``; the lot's answer."""
        return plain_post(self.uplink, envelope("carIn", {**CAR_IN, "recordCode": record}, self.login(), opr))

    def call(
        self, method: str, path: str, token: str | None = CLOUD_TOKEN, body: object = None
    ) -> tuple[int, dict[str, str], Any]:
        """An API request: status, headers (lower-case names) and body (JSON when it says so)."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        data = None if body is None else json.dumps(body).encode()
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.api}{path}", data=data, method=method, headers=headers
        )
        try:
            response = urllib.request.urlopen(request, timeout=10)
        except urllib.error.HTTPError as error:
            response = error
        with response:
            raw = response.read()
            answer_headers = {k.lower(): v for k, v in response.headers.items()}
            decoded = json.loads(raw) if "json" in answer_headers.get("content-type", "") else raw.decode()
            return response.status, answer_headers, decoded

    def records(self) -> list[dict[str, Any]]:
        """Every journal line, parsed as plain JSON (as `jq` would)."""
        lines: list[dict[str, Any]] = []
        for segment in sorted(p for p in self.journal.iterdir() if p.is_file()):
            text = segment.read_bytes()
            for line in text.split(b"\n")[:-1]:  # a line still being written has no \n yet
                lines.append(json.loads(line))
        return lines

    def record(self, kind: str, opr: str) -> dict[str, Any]:
        wait_until(lambda: any(r["kind"] == kind and r["opr"] == opr for r in self.records()))
        return next(r for r in self.records() if r["kind"] == kind and r["opr"] == opr)


def cpmictl(*args: str, stdin: str = "", cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`cpmictl ARGS...` in a process of its own."""
    return subprocess.run(
        [sys.executable, "-m", "gateway.cli.main", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd or ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def assert_signed(request: dict[str, Any], url: str, key: Path) -> None:
    """``request`` carries Content-Digest (RFC 9530, sha-256) and an RFC 9421 Ed25519 signature over
    @method, @target-uri (``url``) and content-digest that the public key of ``key`` verifies."""
    headers, body = request["headers"], request["body"]
    digest = base64.b64encode(hashlib.sha256(body).digest()).decode()
    assert headers["content-digest"] == f"sha-256=:{digest}:"
    label, params = headers["signature-input"].split("=", 1)
    assert params.startswith('("@method" "@target-uri" "content-digest");')
    assert 'alg="ed25519"' in params
    base = (
        f'"@method": POST\n"@target-uri": {url}\n'
        f'"content-digest": {headers["content-digest"]}\n"@signature-params": {params}'
    ).encode()
    match = re.fullmatch(rf"{label}=:([A-Za-z0-9+/=]+):", headers["signature"])
    assert match, headers["signature"]
    public = cpmictl("pubkey", str(key))
    assert public.returncode == 0, public.stderr
    VerifyKey(base64.b64decode(public.stdout.strip())).verify(base, base64.b64decode(match.group(1)))


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A gateway with a CloudEvents sink at a local cloud, two lots, the API and three API clients."""
    cloud = Cloud()
    threading.Thread(target=cloud.serve_forever, daemon=True).start()
    gateway = Gateway(tmp_path_factory.mktemp("contract"), cloud)
    process = start_twistd(gateway.work, str(gateway.config))
    try:
        wait_for_answer(gateway.api, process)
        yield gateway
    finally:
        stop(process, 30)
        cloud.shutdown()
        cloud.server_close()


class Lot:
    """A lot's downlink connection over a plain socket: binds with login, answers each ACK with 0000."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.decoder = FrameDecoder(2**20)
        self.frames: list[dict[str, Any]] = []
        self.pending: list[dict[str, Any]] = []
        login = {"parkUserName": "lot001", "parkUserPwd": PASSWORD}
        self.send(signed_envelope("login", login, secret="k", opr="bind-1"))
        self.token = self.next_frame()["data"]["token"]
        self.reader = threading.Thread(target=self._answer, daemon=True)
        self.reader.start()

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(encode_frame(message))

    def next_frame(self) -> dict[str, Any]:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed")
            for payload in self.decoder.feed(data):
                assert isinstance(payload, bytes), payload  # not FrameTooLarge
                self.pending.append(dict(json.loads(payload)))
        frame = self.pending.pop(0)
        self.frames.append(frame)
        return frame

    def _answer(self) -> None:
        try:
            while True:
                frame = self.next_frame()
                if "resultCode" not in frame:
                    reply = {"barCode": frame["data"].get("barCode", ""), "opened": 1}
                    self.send(
                        {
                            "code": frame["code"],
                            "oprNum": frame["oprNum"],
                            "resultCode": "0000",
                            "resultMessage": "ok",
                            "signature": sign(compact(reply), self.token, "k"),
                            "data": reply,
                        }
                    )
        except OSError:
            pass

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.reader.join(10)


# --- §6 events -----------------------------------------------------------------------------------


def test_an_uplink_is_one_cloudevent_in_a_signed_batch(gw: Gateway) -> None:
    """§6: a carIn reaches cloud.url as a POSTed CloudEvents batch; its event has the id
    `{gateway id}-{seq}`, the park's source, the interface's type, RFC 3339 times (the data's
    converted with the zone's offset), `datacontenttype`, and the extensions cpmioprnum / cpmiseq."""
    assert gw.car_in("ev-1", "EV1")["resultCode"] == "0000"
    event = gw.cloud.event("ev-1")
    [record] = [r for r in gw.records() if r["kind"] == "uplink" and r["opr"] == "ev-1"]
    assert event["specversion"] == "1.0"
    assert event["id"] == f"{GATEWAY_ID}-{record['seq']}"
    assert event["cpmiseq"] == record["seq"] and event["cpmioprnum"] == "ev-1"
    assert event["source"] == "urn:cpmi:park:P001"
    assert event["type"] == "org.cpmi.t002.carIn.v1"
    assert event["datacontenttype"] == "application/json"
    assert RFC3339.fullmatch(event["time"]), event["time"]
    assert event["data"]["carNum"] == CAR_IN["carNum"] and event["data"]["recordCode"] == "EV1"
    assert event["data"]["inTime"] == "2026-11-24T08:30:00+08:00"
    [request] = [r for r in gw.cloud.requests if b'"ev-1"' in r["body"]]
    assert request["path"] == "/events"
    assert request["headers"]["content-type"] == "application/cloudevents-batch+json"


def test_the_batch_is_signed_per_rfc_9421_with_the_gateway_key(gw: Gateway) -> None:
    """§6: each request carries Content-Digest (RFC 9530, sha-256) and an Ed25519 signature
    (RFC 9421) over @method, @target-uri and content-digest, verifiable with `cpmictl pubkey`."""
    assert gw.car_in("sig-1", "SIG1")["resultCode"] == "0000"
    gw.cloud.event("sig-1")
    [request] = [r for r in gw.cloud.requests if b'"sig-1"' in r["body"]]
    assert_signed(request, f"{gw.cloud.url}/events", gw.key)


def test_a_5xx_is_retried_with_the_same_event_id(gw: Gateway) -> None:
    """§6: 5xx, 408 and 429 are retried (with backoff); every retry carries the same event id."""
    for status in (503, 408, 429):
        gw.cloud.planned.append(status)
        opr = f"retry-{status}"
        assert gw.car_in(opr, f"RT{status}")["resultCode"] == "0000"
        wait_until(lambda opr=opr: sum(e.get("cpmioprnum") == opr for e in gw.cloud.events()) >= 2, what=opr)
        ids = {e["id"] for e in gw.cloud.events() if e.get("cpmioprnum") == opr}
        [record] = [r for r in gw.records() if r["kind"] == "uplink" and r["opr"] == opr]
        assert ids == {f"{GATEWAY_ID}-{record['seq']}"}


def test_another_4xx_is_a_rejection_journaled_not_retried_and_replayable(gw: Gateway, tmp_path: Path) -> None:
    """§6: a 400 is not retried; the rejection is journaled with the cloud's answer; the later
    records still flow; `cpmictl log replay` re-sends the rejected event with its original id."""
    gw.cloud.planned.append(400)
    assert gw.car_in("rej-1", "REJ1")["resultCode"] == "0000"
    event = gw.cloud.event("rej-1")
    assert gw.car_in("rej-2", "REJ2")["resultCode"] == "0000"
    gw.cloud.event("rej-2")

    def sent() -> list[str]:
        return [
            e["id"]
            for e in gw.cloud.events()
            if e.get("cpmioprnum") == "rej-1" and e["type"] == event["type"]
        ]

    assert sent() == [event["id"]]
    wait_until(lambda: any(r["kind"] == "rejected" for r in gw.records()), what="a rejected record")
    rejected = [r for r in gw.records() if r["kind"] == "rejected"]
    assert any("refused by the test" in json.dumps(r["body"]) for r in rejected), rejected
    seq = event["cpmiseq"]
    replay = cpmictl(
        "log", "replay", "--from", str(seq), "--to", str(seq), "--park", "P001",
        "--url", f"{gw.cloud.url}/events", "--config", str(gw.config), str(gw.journal),
    )  # fmt: skip
    assert replay.returncode == 0, replay.stderr
    assert sent() == [event["id"]] * 2
    *_, replayed = [
        r
        for r in list(gw.cloud.requests)
        if r["path"] == "/events" and any(e["id"] == event["id"] for e in json.loads(r["body"]))
    ]
    assert_signed(replayed, f"{gw.cloud.url}/events", gw.key)
    other = cpmictl(
        "log", "replay", "--from", str(seq), "--to", str(seq), "--park", "P002",
        "--url", f"{gw.cloud.url}/events", "--config", str(gw.config), str(gw.journal),
    )  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert sent() == [event["id"]] * 2  # --park P002 left P001's record out


def test_lot_online_is_a_gateway_event(gw: Gateway) -> None:
    """§6: the gateway's own records are events typed org.cpmi.gateway.{name}.v1 (lot online
    here, then lot offline), with the park's source and the `{gateway id}-{seq}` id of their journal
    record."""
    lot = Lot(gw.downlink)
    gw.token = lot.token  # the login on the downlink replaced the uplink's token
    try:
        wait_until(lambda: any(r["kind"] == "lot-online" for r in gw.records()), what="lot-online")
        [online] = [r for r in gw.records() if r["kind"] == "lot-online"][:1]
        wait_until(lambda: any(e["id"] == f"{GATEWAY_ID}-{online['seq']}" for e in gw.cloud.events()))
        event = next(e for e in gw.cloud.events() if e["id"] == f"{GATEWAY_ID}-{online['seq']}")
        assert event["type"] == "org.cpmi.gateway.lot-online.v1"
        assert event["source"] == "urn:cpmi:park:P001"
    finally:
        lot.close()
    wait_until(lambda: any(e["type"] == "org.cpmi.gateway.lot-offline.v1" for e in gw.cloud.events()))


def test_autopay_is_one_structured_cloudevent_to_the_query_url(gw: Gateway) -> None:
    """§6: a query uplink is POSTed alone to cloud.query_url as application/cloudevents+json;
    the 2xx answer's JSON body is the lot's data under resultCode 0000."""
    answer = plain_post(gw.uplink, envelope("autoPay", SAMPLES["autoPay"], gw.login(), "pay-1"))
    assert answer["resultCode"] == "0000", answer
    [request] = [r for r in gw.cloud.requests if r["path"] == "/query"]
    assert request["headers"]["content-type"] == "application/cloudevents+json"
    assert_signed(request, f"{gw.cloud.url}/query", gw.key)
    event = json.loads(request["body"])
    assert event["type"] == "org.cpmi.t002.autoPay.v1" and event["source"] == "urn:cpmi:park:P001"
    assert answer["data"] == {"payStatus": 1, "orderCode": event["id"], "actualPay": 10.0}


# --- §6 the command API ----------------------------------------------------------------------------


def test_api_bearer_roles_and_refusals(gw: Gateway) -> None:
    """§6: wrong or missing bearer 401; a client without the role 403; unknown park 404; an
    unknown code or one of another class 400."""
    gate = {"barCode": "B1", "isOpen": 1}
    assert gw.call("POST", "/v1/parks/P002/commands/gateOpen", None, gate)[0] == 401
    assert gw.call("POST", "/v1/parks/P002/commands/gateOpen", "nope", gate)[0] == 401
    assert gw.call("GET", "/v1/parks", None)[0] == 401
    assert gw.call("POST", "/v1/parks/P002/commands/gateOpen", TOKENS["reader"], gate)[0] == 403
    assert (
        gw.call("POST", "/v1/parks/P002/commands/blacklist", TOKENS["commander"], {"carNum": "京A1"})[0]
        == 403
    )
    assert gw.call("POST", "/v1/parks/P002/commands/gateOpen", TOKENS["syncer"], gate)[0] == 403
    assert gw.call("GET", "/v1/parks", TOKENS["commander"])[0] == 403
    assert gw.call("GET", "/v1/openapi.json", None)[0] == 401
    assert gw.call("GET", "/v1/schemas/gateOpen.json", "nope")[0] == 401
    assert gw.call("GET", "/v1/parks", TOKENS["root"])[0] == 200  # admin: every role
    assert gw.call("POST", "/v1/parks/P002/commands/gateOpen", TOKENS["root"], gate)[0] == 409
    assert gw.call("POST", "/v1/parks/P002/commands/blacklist", TOKENS["root"], {"carNum": "京A1"})[0] == 202
    assert gw.call("POST", "/v1/parks/P999/commands/gateOpen", CLOUD_TOKEN, gate)[0] == 404
    assert gw.call("GET", "/v1/parks/P999", TOKENS["reader"])[0] == 404
    assert gw.call("POST", "/v1/parks/P002/commands/noSuchCode", CLOUD_TOKEN, {})[0] == 400
    assert gw.call("POST", "/v1/parks/P002/commands/carIn", CLOUD_TOKEN, CAR_IN)[0] == 400
    assert gw.call("POST", "/v1/parks/P002/commands/autoPay", CLOUD_TOKEN, SAMPLES["autoPay"])[0] == 400
    assert gw.call("POST", "/v1/parks/P999/commands/blacklist", CLOUD_TOKEN, {"carNum": "京A1"})[0] == 404


def test_api_command_to_a_lot_not_connected_is_409_9008(gw: Gateway) -> None:
    """§6: a command-class code for a lot with no downlink is 409 with resultCode 9008."""
    status, headers, body = gw.call(
        "POST", "/v1/parks/P002/commands/gateOpen", TOKENS["commander"], {"barCode": "B1", "isOpen": 1}
    )
    assert status == 409
    assert headers["content-type"].startswith("application/json")
    assert body["resultCode"] == "9008" and set(body) >= {"resultCode", "resultMessage"}


def test_api_command_is_answered_with_the_lots_reply(gw: Gateway) -> None:
    """§6/§7: a command to a bound lot is 200 {resultCode, resultMessage, data} from its REPLY; the
    command's journaled oprNum is the one the lot was sent."""
    lot = Lot(gw.downlink)
    gw.token = lot.token
    try:
        wait_until(lambda: gw.call("GET", "/v1/parks/P001", TOKENS["reader"])[2]["connected"] is True)
        status, _, body = gw.call(
            "POST", "/v1/parks/P001/commands/gateOpen", TOKENS["commander"], {"barCode": "G7", "isOpen": 1}
        )
        assert status == 200, body
        assert body == {"resultCode": "0000", "resultMessage": "ok", "data": {"barCode": "G7", "opened": 1}}
        [ack] = [f for f in lot.frames if f.get("code") == "gateOpen" and f["data"].get("barCode") == "G7"]
        commands = [r for r in gw.records() if r["kind"] == "command" and r["opr"] == ack["oprNum"]]
        assert len(commands) == 1 and commands[0]["park"] == "P001" and commands[0]["code"] == "gateOpen"
    finally:
        lot.close()


def test_api_sync_is_202_with_the_journaled_seq(gw: Gateway) -> None:
    """§6: a sync-class code is answered 202 {"seq": N} once journaled; N is its journal record."""
    status, _, body = gw.call(
        "POST", "/v1/parks/P002/commands/blacklist", TOKENS["syncer"], {"carNum": "京B2"}
    )
    assert status == 202, body
    assert list(body) == ["seq"] and isinstance(body["seq"], int)
    [record] = [r for r in gw.records() if r["seq"] == body["seq"]]
    assert record["kind"] == "sync" and record["park"] == "P002" and record["code"] == "blacklist"


def test_api_sync_to_a_bound_lot_is_delivered_and_its_outcome_is_an_event(gw: Gateway) -> None:
    """§6/§9: a sync entry for a bound lot is sent to it; on its 0000 the outcome is published as a
    gateway event org.cpmi.gateway.downlink-delivered.v1 for the park."""
    lot = Lot(gw.downlink)
    gw.token = lot.token
    try:
        wait_until(lambda: gw.call("GET", "/v1/parks/P001", TOKENS["reader"])[2]["connected"] is True)
        status, _, body = gw.call(
            "POST", "/v1/parks/P001/commands/blacklist", TOKENS["syncer"], {"carNum": "京D4"}
        )
        assert status == 202, body
        wait_until(lambda: any(f.get("code") == "blacklist" for f in lot.frames), what="the sync ACK")
        wait_until(
            lambda: any(e["type"] == "org.cpmi.gateway.downlink-delivered.v1" for e in gw.cloud.events()),
            what="the delivered event",
        )
        delivered = [e for e in gw.cloud.events() if e["type"] == "org.cpmi.gateway.downlink-delivered.v1"]
        assert delivered[0]["source"] == "urn:cpmi:park:P001"
        assert re.fullmatch(rf"{GATEWAY_ID}-\d+", delivered[0]["id"])
    finally:
        lot.close()


def test_api_reading_endpoints(gw: Gateway) -> None:
    """§6: GET /v1/parks and /v1/parks/{parkCode} give connection state, last seen and backlog;
    schemas, the OpenAPI 3.1 document, /healthz, /readyz and Prometheus /metrics are served."""
    status, _, body = gw.call("GET", "/v1/parks", TOKENS["reader"])
    assert status == 200
    parks = {p["parkCode"]: p for p in body["parks"]}
    assert set(parks) == {"P001", "P002"}
    for park in parks.values():
        assert {"connected", "lastSeen", "backlog"} <= set(park)
    assert gw.call("GET", "/v1/parks/P002", TOKENS["reader"])[2] == parks["P002"]
    status, _, schema = gw.call("GET", "/v1/schemas/gateOpen.json", TOKENS["reader"])
    assert status == 200 and "barCode" in json.dumps(schema)
    status, _, openapi = gw.call("GET", "/v1/openapi.json", TOKENS["reader"])
    assert status == 200 and openapi["openapi"].startswith("3.1")
    assert gw.call("GET", "/healthz", None)[0] == 200
    assert gw.call("GET", "/readyz", None)[0] == 200
    status, headers, text = gw.call("GET", "/metrics", CLOUD_TOKEN)
    assert status == 200
    assert re.match(r"text/plain; version=\d", headers["content-type"]), headers["content-type"]
    assert "# TYPE " in text


# --- §7 the replay journal and `cpmictl log` ------------------------------------------------------


def test_journal_is_chained_json_lines_with_the_contract_fields(gw: Gateway) -> None:
    """§7: segments of UTF-8 JSON Lines, each line \\n-terminated; every record has seq (strictly
    increasing), ts (RFC 3339), kind, park, code, opr, body and a chain field; token issues,
    forwarding progress and rejections are records too, and the journal directory holds nothing else."""
    gw.car_in("jr-1", "JR1")
    gw.record("uplink", "jr-1")
    segments = sorted(gw.journal.iterdir())
    assert segments and all(p.suffix == ".jsonl" for p in segments), segments
    seqs = []
    for segment in segments:
        text = segment.read_bytes()
        text.decode("utf-8")
        for line in text.splitlines(keepends=True)[:-1]:  # all but a last one being written
            assert line.endswith(b"\n")
            record = json.loads(line)
            assert {"seq", "ts", "kind", "park", "code", "opr", "body", "chain"} <= set(record)
            assert RFC3339.fullmatch(record["ts"]), record["ts"]
            seqs.append(record["seq"])
    assert seqs == sorted(set(seqs))
    kinds = {r["kind"] for r in gw.records()}
    assert {"token", "uplink", "forwarded"} <= kinds


def test_log_tail_filters_and_json(gw: Gateway) -> None:
    """§7: `log tail --park --code --kind --json` prints one record per line, only those matching;
    `--since` starts from a seq or a time."""
    gw.car_in("tl-1", "TL1")
    record = gw.record("uplink", "tl-1")
    out = cpmictl(
        "log", "tail", "--park", "P001", "--code", "carIn", "--kind", "uplink", "--json", str(gw.journal)
    )
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert lines and all((r["park"], r["code"], r["kind"]) == ("P001", "carIn", "uplink") for r in lines)
    assert record["seq"] in [r["seq"] for r in lines]
    since = cpmictl("log", "tail", "--since", str(record["seq"]), "--json", str(gw.journal))
    assert since.returncode == 0, since.stderr
    assert json.loads(since.stdout.splitlines()[0])["seq"] == record["seq"]
    by_time = cpmictl("log", "tail", "--since", "2099-01-01T00:00:00+08:00", str(gw.journal))
    assert by_time.returncode == 0 and by_time.stdout == ""
    readable = cpmictl("log", "tail", "--park", "P002", str(gw.journal))
    assert readable.returncode == 0 and all("P002" in line for line in readable.stdout.splitlines())


def test_log_tail_follow_prints_new_records(gw: Gateway) -> None:
    """§7: `log tail -f` goes on printing records as they are written."""
    follower = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gateway.cli.main",
            "log",
            "tail",
            "-f",
            "--json",
            "--kind",
            "uplink",
            str(gw.journal),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_until(lambda: seen, what="tail -f's first lines")
        gw.car_in("fl-1", "FL1")
        wait_until(lambda: any('"fl-1"' in line for line in seen), what="the new record in tail -f")
    finally:
        follower.kill()
        follower.wait(10)
        reader.join(10)


def test_log_show_and_stats(gw: Gateway) -> None:
    """§7: `log show SEQ` prints that record; `log stats` counts per kind, code and park and shows
    the forwarding backlog and the oldest unforwarded record."""
    gw.car_in("sh-1", "SH1")
    record = gw.record("uplink", "sh-1")
    shown = cpmictl("log", "show", str(record["seq"]), str(gw.journal))
    assert shown.returncode == 0, shown.stderr
    assert '"sh-1"' in shown.stdout and "SH1" in shown.stdout
    stats = cpmictl("log", "stats", str(gw.journal))
    assert stats.returncode == 0, stats.stderr
    for word in ("kind", "code", "park", "uplink", "carIn", "P001", "backlog"):
        assert word in stats.stdout, word


def test_verify_backup_and_restore(gw: Gateway, tmp_path: Path) -> None:
    """§7: `log backup DIR DEST` is incremental and leaves DEST verifiable on its own; `verify`
    without --pubkey says it used the key the journal recorded first, exit 0; with another key, or
    on an altered byte, exit 1 naming the first bad seq; `log restore DEST DIR` makes a journal
    ending in a signed restore record."""
    gw.car_in("bk-1", "BK1")
    gw.record("uplink", "bk-1")
    dest = tmp_path / "backup"
    first = cpmictl("log", "backup", str(gw.journal), str(dest))
    assert first.returncode == 0, first.stderr
    again = cpmictl("log", "backup", str(gw.journal), str(dest))
    assert again.returncode == 0, again.stderr
    gw.car_in("bk-2", "BK2")
    bk2 = gw.record("uplink", "bk-2")
    wait_until(
        lambda: any(r["kind"] == "seal" and r["seq"] > bk2["seq"] for r in gw.records()), what="a seal"
    )
    more = cpmictl("log", "backup", str(gw.journal), str(dest))
    assert more.returncode == 0, more.stderr
    backed = [json.loads(line) for p in sorted(dest.glob("*.jsonl")) for line in p.read_bytes().splitlines()]
    assert any(r["opr"] == "bk-2" for r in backed)
    assert len({r["seq"] for r in backed}) == len(backed)
    verified = cpmictl("log", "verify", str(dest))
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "recorded first" in verified.stdout + verified.stderr
    public = cpmictl("pubkey", str(gw.key)).stdout.strip()
    assert cpmictl("log", "verify", "--pubkey", public, str(dest)).returncode == 0
    other = tmp_path / "other.key"
    other_public = cpmictl("keygen", str(other)).stdout.strip()
    assert cpmictl("log", "verify", "--pubkey", other_public, str(dest)).returncode == 1
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    victim = next(r for r in backed if r["opr"] == "bk-1")
    for segment in sorted(dest.glob("*.jsonl")):
        data = segment.read_bytes().replace(b'"BK1"', b'"BK9"')
        (damaged / segment.name).write_bytes(data)
    bad = cpmictl("log", "verify", str(damaged))
    assert bad.returncode == 1
    assert re.search(rf"bad seq:? #?{victim['seq']}\b", bad.stdout + bad.stderr), bad.stdout + bad.stderr
    restored = tmp_path / "restored"
    done = cpmictl("log", "restore", "--config", str(gw.config), str(dest), str(restored))
    assert done.returncode == 0, done.stderr
    after = [
        json.loads(line) for p in sorted(restored.glob("*.jsonl")) for line in p.read_bytes().splitlines()
    ]
    assert after[-1]["kind"] == "restore" and after[-1]["seq"] > backed[-1]["seq"]
    assert cpmictl("log", "verify", "--pubkey", public, str(restored)).returncode == 0


# --- §7 other cpmictl commands --------------------------------------------------------------------


def test_passwd_keygen_pubkey_apitoken(tmp_path: Path) -> None:
    """§7: `passwd` hashes the first stdin line to $argon2id$; `keygen PATH` writes a 0600 key and
    prints its base64 public key, which `pubkey PATH` prints again; `apitoken` prints a token and
    its hex SHA-256."""
    hashed = cpmictl("passwd", stdin="secret words\nignored\n")
    assert hashed.returncode == 0, hashed.stderr
    line = hashed.stdout.strip()
    assert line.startswith("$argon2id$")
    from argon2 import PasswordHasher

    assert PasswordHasher().verify(line, "secret words")
    key = tmp_path / "k" / "gateway.key"
    key.parent.mkdir()
    made = cpmictl("keygen", str(key))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert len(base64.b64decode(made.stdout.strip(), validate=True)) == 32
    assert cpmictl("pubkey", str(key)).stdout == made.stdout
    token = cpmictl("apitoken")
    assert token.returncode == 0, token.stderr
    words = token.stdout.split()
    digests = [w for w in words if re.fullmatch(r"[0-9a-f]{64}", w)]
    assert len(digests) == 1
    assert any(hashlib.sha256(w.encode()).hexdigest() == digests[0] for w in words), token.stdout


# --- §8 configuration ------------------------------------------------------------------------------

# §8's example as written, but for its two placeholders (a real hash and a whole SHA-256).
SECTION_8 = """
[gateway]
id = "gw-01"
timezone = "Asia/Shanghai"
signing_key = "conf/gateway.key"

[listen]
uplink = "tcp:8080"
downlink = "tcp:9000"
api = "tcp:8081:interface=127.0.0.1"

[journal]
path = "var/journal"
fsync = "always"

[uplink]
max_body_bytes = 16777216
header_timeout = 10
min_body_rate = 1024
max_connections_per_peer = 64
max_connections = 20000
max_pending_logins = 256

[tcp]
read_idle = 180
write_idle = 60
all_idle = 300
bind_timeout = 10
max_frame_bytes = 1048576
max_unbound_bytes = 65536

[cluster]
servers = ["nats://127.0.0.1:4222"]
prefix = "cpmi"
replicas = 1

[cloud]
sink = "log-only"
url = ""
downlink = ""
query_url = ""
api_token = ""

[[api_client]]
name = "monitoring"
token_sha256 = "TOKEN_SHA256"
roles = ["read"]

[[lot]]
park_code = "P001"
username = "lot001"
password = "HASH"
signature = "required"
secret = ""
dialect = "standard"
upstream_username = ""
upstream_password = ""
upstream_secret = ""
""".replace("HASH", HASH).replace("TOKEN_SHA256", hashlib.sha256(b"test").hexdigest())

# Every key of §8's example: (table path in an error, the table, the key, a value of the wrong kind).
SECTION_8_KEYS = [
    (f"{table}.{key}" if not isinstance(value, list) else f"{table}[0].{key}", table, key)
    for table, values in tomllib.loads(SECTION_8).items()
    for value in [values]
    for key in (values[0] if isinstance(values, list) else values)
]


def test_section_8_example_is_accepted_with_its_values() -> None:
    """§8: the example configuration, every key as written, is a valid configuration."""
    settings = config.parse(tomllib.loads(SECTION_8))
    assert settings.gateway.id == "gw-01" and settings.journal.fsync == "always"
    assert settings.cluster is not None and settings.cluster.prefix == "cpmi"
    assert settings.cluster.servers == ("nats://127.0.0.1:4222",) and settings.cluster.replicas == 1
    assert settings.cloud.sink == "log-only"
    assert settings.api_clients[0].roles == ("read",)
    [lot] = settings.lots
    assert (lot.park_code, lot.signature, lot.dialect) == ("P001", "required", "standard")


def test_section_8_defaults_are_its_example_values() -> None:
    """§8: each key left out takes the value the example shows (the defaults as written)."""
    empty = config.parse({"lot": [{"park_code": "P001", "username": "lot001", "password": HASH}]})
    full = config.parse({k: v for k, v in tomllib.loads(SECTION_8).items() if k != "api_client"})
    for table in ("gateway", "listen", "journal", "uplink", "tcp", "cloud"):
        assert getattr(empty, table) == getattr(full, table), table
    assert empty.lots == full.lots
    assert empty.cluster is None  # [cluster] is optional
    cluster = config.parse({"cluster": {"servers": ["nats://127.0.0.1:4222"]}}).cluster
    assert cluster is not None and (cluster.prefix, cluster.replicas) == ("cpmi", 1)


def _wrong_kind(value: object) -> object:
    """A value of another TOML type than ``value``."""
    if isinstance(value, str):
        return 5
    if isinstance(value, list):
        return "x"
    return "x"


@pytest.mark.parametrize(("path", "table", "key"), SECTION_8_KEYS, ids=[p for p, _, _ in SECTION_8_KEYS])
def test_each_section_8_key_refuses_a_bad_value_naming_it(path: str, table: str, key: str) -> None:
    """§8: a bad value of any key stops with one line that names the key."""
    document = tomllib.loads(SECTION_8)
    section = document[table][0] if isinstance(document[table], list) else document[table]
    section[key] = _wrong_kind(section[key])
    with pytest.raises(config.ConfigError) as caught:
        config.parse(document)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}:"), message


def test_a_config_error_stops_twistd_with_one_line_naming_the_key(tmp_path: Path) -> None:
    """§8: started with a bad key, the gateway exits non-zero, its error one line naming the key."""
    bad = tmp_path / "gateway.toml"
    bad.write_text(f'{gateway_toml(tmp_path, uplink=0, downlink=0, api=0)}\n[tcp]\nread_idle = "soon"\n')
    process = start_twistd(tmp_path, str(bad), stderr=subprocess.PIPE)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    assert process.returncode != 0
    lines = [line for line in err.decode().splitlines() if line.strip()]
    assert len(lines) == 1 and "tcp.read_idle" in lines[0], lines
    assert not (tmp_path / "journal").exists()


# --- §9 NATS ---------------------------------------------------------------------------------------


async def _nats_view(url: str) -> dict[str, Any]:
    """What a NATS client sees of the cluster: the events stream and its messages, the buckets'
    entries for P001, and a command asked on its subject."""
    import nats
    from nats.js.errors import KeyNotFoundError

    client = await nats.connect(url)
    try:
        js = client.jetstream()
        seen: dict[str, Any] = {}
        stream = await js.stream_info("CPMI_EVENTS")
        seen["stream"] = (stream.config.subjects, stream.config.num_replicas, stream.config.duplicate_window)
        pull = await js.pull_subscribe("cpmi.events.P001.>", durable=None)
        messages = []
        while True:
            try:
                batch = await pull.fetch(100, timeout=1)
            except TimeoutError:
                break
            messages.extend(batch)
        seen["events"] = [(m.subject, dict(m.headers or {}), json.loads(m.data)) for m in messages]
        lots = await js.key_value("cpmi_lots")
        seen["placement"] = json.loads((await lots.get("P001")).value or b"null")
        tokens = await js.key_value("cpmi_tokens")
        seen["token"] = json.loads((await tokens.get("P001")).value or b"null")
        reply = await client.request(
            "cpmi.commands.P001.gateOpen", b'{"barCode":"N1","isOpen":1}', timeout=10
        )
        seen["command"] = json.loads(reply.data)
        sync = await js.stream_info("CPMI_SYNC")
        seen["sync_subjects"] = sync.config.subjects
        try:
            await lots.get("P002")
            seen["p002"] = "held"
        except KeyNotFoundError:
            seen["p002"] = "absent"
        return seen
    finally:
        await client.close()


async def _placement(url: str, park: str) -> object:
    """The cpmi_lots entry of ``park`` (None when there is none)."""
    import nats
    from nats.js.errors import KeyNotFoundError

    client = await nats.connect(url)
    try:
        lots = await client.jetstream().key_value("cpmi_lots")
        try:
            return json.loads((await lots.get(park)).value or b"null")
        except KeyNotFoundError:
            return None
    finally:
        await client.close()


def test_nats_events_buckets_and_commands(tmp_path: Path) -> None:
    """§9 against a real nats-server: events are structured CloudEvents on
    cpmi.events.{park}.{suffix} in stream CPMI_EVENTS (replicas 1, duplicate window >= 2 min), with
    Nats-Msg-Id {park}:{oprNum} for an uplink and the event id for lot-online; the placement bucket
    cpmi_lots holds {"gateway", "since"} while the lot is bound, nothing after; cpmi_tokens holds
    the token's SHA-256; commands are answered on cpmi.commands.{park}.{code}; an unheld lot is
    409/9008 over HTTP; a sync entry is 202 {"seq"} and goes to CPMI_SYNC; /readyz is 200 with the
    NATS state beside; /v1/parks names the gateway holding each lot."""
    import asyncio

    from tests.cluster.natsserver import NatsServer

    server = NatsServer(tmp_path / "nats")
    server.work.mkdir()
    server.start()
    work = tmp_path / "gw"
    work.mkdir()
    uplink, downlink, api = free_port(), free_port(), free_port()
    toml = work / "gateway.toml"
    toml.write_text(
        f"""{gateway_toml(work, "gw-n", uplink=uplink, downlink=downlink, api=api)}
[cluster]
servers = ["{server.url}"]
[cloud]
sink = "nats"
api_token = "{CLOUD_TOKEN}"
batch_max_delay = 0.02
{lots_toml(2)}"""
    )
    process = start_twistd(work, str(toml))
    gateway = Gateway.__new__(Gateway)
    gateway.work, gateway.journal, gateway.api, gateway.uplink, gateway.token = (
        work,
        work / "journal",
        api,
        uplink,
        "",
    )
    lot: Lot | None = None
    try:
        wait_for_answer(api, process)
        assert gateway.car_in("n-1", "N1")["resultCode"] == "0000"
        lot = Lot(downlink)
        wait_until(lambda: gateway.call("GET", "/v1/parks/P001")[2]["connected"] is True, what="bound")
        record = gateway.record("uplink", "n-1")
        online = next(r for r in gateway.records() if r["kind"] == "lot-online")
        wait_until(lambda: sum(r["kind"] == "forwarded" for r in gateway.records()) >= 1, what="forwarded")
        status, _, body = gateway.call(
            "POST", "/v1/parks/P002/commands/gateOpen", CLOUD_TOKEN, {"barCode": "B"}
        )
        assert status == 409 and body["resultCode"] == "9008", body
        status, _, body = gateway.call(
            "POST", "/v1/parks/P002/commands/blacklist", CLOUD_TOKEN, {"carNum": "京C3"}
        )
        assert status == 202 and list(body) == ["seq"], body
        status, _, ready = gateway.call("GET", "/readyz", None)
        assert status == 200 and "nats" in ready, ready
        parks = {p["parkCode"]: p for p in gateway.call("GET", "/v1/parks")[2]["parks"]}
        assert parks["P001"]["gateway"] == "gw-n" and parks["P002"]["gateway"] is None
        wait_until(lambda: online["seq"] <= max(
            (r["body"].get("through", 0) for r in gateway.records() if r["kind"] == "forwarded"), default=0
        ), what="lot-online forwarded")  # fmt: skip
        seen = asyncio.run(_nats_view(server.url))
        lot.close()
        lot = None
        wait_until(lambda: gateway.call("GET", "/v1/parks/P001")[2]["connected"] is False, what="unbound")
        wait_until(lambda: asyncio.run(_placement(server.url, "P001")) is None, what="placement deleted")
    finally:
        if lot is not None:
            lot.close()
        stop(process, 30)
        server.stop()
    subjects, replicas, window = seen["stream"]
    assert subjects == ["cpmi.events.>"] and replicas == 1 and window >= 120
    by_subject = {subject: (headers, event) for subject, headers, event in seen["events"]}
    headers, event = by_subject["cpmi.events.P001.carIn"]
    assert headers["Nats-Msg-Id"] == "P001:n-1"
    assert headers["Content-Type"] == "application/cloudevents+json"
    assert event["id"] == f"gw-n-{record['seq']}" and event["type"] == "org.cpmi.t002.carIn.v1"
    assert event["specversion"] == "1.0" and event["datacontenttype"] == "application/json"
    headers, event = by_subject["cpmi.events.P001.lot-online"]
    assert headers["Nats-Msg-Id"] == event["id"] == f"gw-n-{online['seq']}"
    assert seen["placement"]["gateway"] == "gw-n" and RFC3339.fullmatch(seen["placement"]["since"])
    assert seen["token"] and re.search(r"[0-9a-f]{64}", json.dumps(seen["token"]))
    assert seen["command"]["resultCode"] == "0000" and set(seen["command"]) == {
        "resultCode",
        "resultMessage",
        "data",
    }
    assert any(s.startswith("cpmi.sync.") for s in seen["sync_subjects"])
    assert seen["p002"] == "absent"


def test_first_start_relative_paths_key_and_log_only(tmp_path: Path) -> None:
    """§8/§6: relative paths are relative to the working directory; a missing signing_key is created
    (mode 0600) at first start and its public key logged; with no [cloud] url the sink is log-only:
    an uplink is journaled and answered, nothing is forwarded."""
    (tmp_path / "etc").mkdir()
    uplink, api = free_port(), free_port()
    toml = tmp_path / "etc" / "gw.toml"
    toml.write_text(
        f"""[gateway]
signing_key = "keys/gateway.key"
[listen]
uplink = "tcp:{uplink}:interface=127.0.0.1"
downlink = "tcp:0:interface=127.0.0.1"
api = "tcp:{api}:interface=127.0.0.1"
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
    )
    (tmp_path / "keys").mkdir()
    process = start_twistd(tmp_path, str(toml))
    gateway = Gateway.__new__(Gateway)
    gateway.work, gateway.uplink, gateway.api, gateway.token = tmp_path, uplink, api, ""
    gateway.journal = tmp_path / "var" / "journal"  # the default journal.path, under the working directory
    try:
        wait_for_answer(api, process)
        assert gateway.car_in("lo-1", "LO1")["resultCode"] == "0000"
        gateway.record("uplink", "lo-1")
    finally:
        stop(process, 30)
    key = tmp_path / "keys" / "gateway.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    public = cpmictl("pubkey", str(key)).stdout.strip()
    assert public and public in (tmp_path / "twistd.log").read_text()
    assert not any(r["kind"] == "forwarded" for r in gateway.records())

"""Two real gateways behind the real HAProxy, on deploy/haproxy.cfg (CONTRACT §9, issue 24 item 5).

Debian's `haproxy` is installed with apt-get when missing (as the status
page's test does with Chromium); the test is skipped, saying why, only when
that is impossible. The shipped configuration is rendered with free ports
(and a stats socket for the test to read the servers' states) and run as it
is otherwise (`bench.cluster.render_haproxy`). 25 lots, each from its own
loopback address (127.0.0.x), hold a downlink and post uplinks through it.
Without NATS a lot that moves to another gateway logs in again there; its
token following it comes with the NATS buckets.

Every process started here is killed in teardown, and none writes to
pytest's output: twistd and haproxy write to files under the test's directory.
"""

from __future__ import annotations

import csv
import http.client
import io
import json
import select
import socket
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import Balancer, kill, start_haproxy, start_twistd, wait_until

LOTS = 25
SECRET = "k"
API_TOKEN = "cluster-test-token"
PER_PEER = 3


# --- the deployment: two gateways and the balancer -----------------------------------------------


@dataclass
class Gateway:
    """One twistd gateway: its ports, process and directory."""

    name: str
    work: Path
    uplink: int = field(default_factory=free_port)
    downlink: int = field(default_factory=free_port)
    api: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    def config(self) -> str:
        lots = "".join(
            f"""
[[lot]]
park_code = "{park(n)}"
username = "{username(n)}"
password = "{HASH}"
secret = "{SECRET}"
"""
            for n in range(LOTS)
        )
        return f"""
[gateway]
id = "{self.name}"
signing_key = "{self.work / "gateway.key"}"
[listen]
uplink = "haproxy:tcp:{self.uplink}:interface=127.0.0.1"
downlink = "haproxy:tcp:{self.downlink}:interface=127.0.0.1"
api = "tcp:{self.api}:interface=127.0.0.1"
[journal]
path = "{self.work / "journal"}"
[uplink]
max_connections_per_peer = {PER_PEER}
[cloud]
sink = "log-only"
api_token = "{API_TOKEN}"
{lots}"""

    def start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        config = self.work / "gateway.toml"
        config.write_text(self.config())
        with open(self.work / "stderr", "wb") as stderr:
            self.process = start_twistd(self.work, str(config), stderr=stderr)

    def get(self, path: str) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", self.api, timeout=5)
        try:
            connection.request("GET", path, headers={"Authorization": f"Bearer {API_TOKEN}"})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def parks(self) -> dict[str, dict[str, Any]]:
        """The lots this gateway holds now, by park: their peer among the rest."""
        status, body = self.get("/v1/parks")
        assert status == 200, body
        return {p["parkCode"]: p for p in json.loads(body)["parks"] if p["connected"]}

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the samples of `name` whose labels include `labels`."""
        _, body = self.get("/metrics")
        total = 0.0
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                    total += sample.value
        return total


def park(n: int) -> str:
    return f"P{n + 1:03d}"


def username(n: int) -> str:
    return f"lot{n + 1:03d}"


@dataclass
class Cluster:
    """The gateways and the balancer in front of them."""

    balancer: Balancer
    gateways: list[Gateway]

    @property
    def uplink(self) -> int:
        return self.balancer.uplink

    @property
    def downlink(self) -> int:
        return self.balancer.downlink

    def servers(self) -> dict[tuple[str, str], dict[str, str]]:
        """HAProxy's view of each (backend, server): its status and last check."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.balancer.stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        rows = csv.DictReader(io.StringIO(data.decode().lstrip("# ")))
        return {
            (row["pxname"], row["svname"]): row
            for row in rows
            if row["svname"] not in ("FRONTEND", "BACKEND")
        }

    def all_up(self) -> bool:
        """Every gateway and HAProxy running, and HAProxy's checks passing on all four servers."""
        for gateway in self.gateways:
            assert gateway.process is not None and gateway.process.poll() is None, (
                gateway.work / "stderr"
            ).read_text() + (gateway.work / "twistd.log").read_text()
        assert self.balancer.process.poll() is None, self.balancer.log.read_text()
        states = self.servers()
        return len(states) == 4 and all(row["status"] == "UP" for row in states.values())


def start_gateway(gateway: Gateway) -> None:
    """Start `gateway` and wait until its API answers; on new ports if another process took one meanwhile."""
    for _ in range(5):
        gateway.start()
        assert gateway.process is not None
        deadline = time.monotonic() + 60
        while gateway.process.poll() is None and time.monotonic() < deadline:
            try:
                if gateway.get("/readyz")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.1)
        kill(gateway.process)
        error = (gateway.work / "stderr").read_text()
        if "already in use" not in error:
            raise AssertionError(error + (gateway.work / "twistd.log").read_text())
        gateway.uplink, gateway.downlink, gateway.api = free_port(), free_port(), free_port()
    raise AssertionError(f"{gateway.name}: no free ports in five tries")


@contextmanager
def running(haproxy: str, work: Path, gateways: list[Gateway]) -> Iterator[Cluster]:
    """``gateways`` started, HAProxy on the shipped configuration in front of them, all up and checked;
    every process killed at the end."""
    balancer: Balancer | None = None
    try:
        for gateway in gateways:
            start_gateway(gateway)
        balancer = start_haproxy(haproxy, work, [(g.uplink, g.downlink, g.api) for g in gateways])
        cluster = Cluster(balancer, gateways)
        wait_until(cluster.all_up, 60, "the gateways up and HAProxy's checks passing")
        yield cluster
    finally:
        kill(balancer.process if balancer is not None else None)
        for gateway in gateways:
            kill(gateway.process)


@pytest.fixture
def cluster(haproxy: str, tmp_path: Path) -> Iterator[Cluster]:
    """Two gateways (log-only sink) behind haproxy on the shipped configuration, all up and checked.

    A port picked free may be taken by another process before it is bound
    (other tests run on this machine): the gateway or the balancer that
    cannot bind is started again on others.
    """
    with running(
        haproxy, tmp_path, [Gateway("gw-1", tmp_path / "gw1"), Gateway("gw-2", tmp_path / "gw2")]
    ) as up:
        yield up


# --- lots, each from its own address -------------------------------------------------------------


class Lot:
    """A lot site at 127.0.0.x: a downlink held through the balancer, and uplinks posted through it."""

    def __init__(self, n: int, cluster: Cluster) -> None:
        self.n = n
        self.park = park(n)
        self.source = f"127.0.0.{10 + n}"
        self.cluster = cluster
        self.sock: socket.socket | None = None
        self.token = ""
        self.posted = 0

    def open(self, port: int | None = None) -> socket.socket:
        """A new connection to the balancer's downlink port (or `port`) from this lot's address."""
        sock = socket.socket()
        sock.bind((self.source, 0))
        sock.settimeout(5)
        sock.connect(("127.0.0.1", port or self.cluster.downlink))
        return sock

    def login(self) -> str:
        """Connect the downlink and log in on it; the token (raises OSError or AssertionError if refused)."""
        sock = self.open()
        data = {"parkUserName": username(self.n), "parkUserPwd": PASSWORD}
        opr = f"login-{self.n}-{time.monotonic_ns()}"
        envelope = {"token": "", "code": "login", "oprNum": opr, "signature": sign(compact(data), "", SECRET)}
        sock.sendall(encode_frame({**envelope, "data": data}))
        decoder = FrameDecoder(1 << 20)
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                sock.close()
                raise ConnectionResetError("closed before the login's answer")
            for payload in decoder.feed(chunk):
                if isinstance(payload, bytes):
                    answer = json.loads(payload)
                    if answer.get("oprNum") == opr:
                        assert answer["resultCode"] == "0000", answer
                        self.sock = sock
                        self.token = answer["data"]["token"]
                        return self.token

    def post(self) -> dict[str, Any]:
        """POST one carIn through the balancer's uplink port from this lot's address."""
        self.posted += 1
        data = {
            "recordCode": f"R{self.n}-{self.posted}",
            "carNum": "京A12345",
            "inCross": "1",
            "inTime": "2026-11-24 08:30:00",
        }
        text = compact(data)
        envelope = {
            "token": self.token,
            "code": "carIn",
            "oprNum": f"{self.park}-{self.posted}-{time.monotonic_ns()}",
            "signature": sign(text, self.token, SECRET),
            "data": data,
        }
        body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)})
        connection = http.client.HTTPConnection(
            "127.0.0.1", self.cluster.uplink, timeout=5, source_address=(self.source, 0)
        )
        try:
            connection.request(
                "POST", "/uplink", body, headers={"Content-Type": "application/x-www-form-urlencoded"}
            )
            answer: dict[str, Any] = json.loads(connection.getresponse().read())
            return answer
        finally:
            connection.close()

    def still_open(self) -> bool:
        """Whether its downlink is still open (nothing but silence on it)."""
        assert self.sock is not None
        readable, _, _ = select.select([self.sock], [], [], 0)
        if not readable:
            return True
        try:
            return bool(self.sock.recv(65536, socket.MSG_PEEK))
        except OSError:
            return False

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def is_closed(sock: socket.socket, seconds: float) -> bool:
    """Whether the far end closes `sock` within `seconds` (it sends nothing either way)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except OSError:
        return True


def holders(cluster: Cluster) -> dict[str, tuple[int, str]]:
    """Each connected lot's park: the index of the gateway holding it and the peer it shows."""
    held: dict[str, tuple[int, str]] = {}
    for index, gateway in enumerate(cluster.gateways):
        if gateway.process is None or gateway.process.poll() is not None:
            continue
        for code, state in gateway.parks().items():
            assert code not in held, f"{code} bound on two gateways"
            held[code] = (index, state["peer"])
    return held


def test_lots_stick_to_one_gateway_are_seen_by_their_address_and_move_when_it_dies(
    cluster: Cluster,
) -> None:
    """Through HAProxy on deploy/haproxy.cfg: stickiness, the lots' own addresses, /readyz, failover.

    Each lot's downlink and uplinks reach one gateway (the uplinks are accepted
    with the token only that gateway issued); each gateway shows and caps
    peers by 127.0.0.x, never the balancer's address; HAProxy's checks are
    HTTP /readyz on the API port; after kill -9 of one gateway its lots are
    bound to the other through the balancer within a few seconds, and the
    lots on the survivor are untouched.
    """
    lots = [Lot(n, cluster) for n in range(LOTS)]
    try:
        for lot in lots:
            lot.login()
        for _ in range(3):
            for lot in lots:
                answer = lot.post()
                assert answer["resultCode"] == "0000", (lot.park, answer)

        # Stickiness, and each lot shown by its own address.
        held = holders(cluster)
        assert set(held) == {lot.park for lot in lots}
        for lot in lots:
            assert held[lot.park][1].split(":")[0] == lot.source, held[lot.park]
        by_gateway = [[lot for lot in lots if held[lot.park][0] == index] for index in (0, 1)]
        assert all(by_gateway), "balance source put every lot on one gateway"

        # HAProxy's checks are HTTP GET /readyz, answered 200 by each gateway's API.
        states = cluster.servers()
        assert {row["check_status"] for row in states.values()} == {"L7OK"}, states
        for gateway in cluster.gateways:
            assert gateway.metric("cpmi_api_requests_total", route="/readyz", status="200") > 0

        # Per-peer accounting is by the lot's address: PER_PEER unbound connections from
        # one lot's address fill its share, one more is cut; another lot's address on the
        # same gateway still gets in (counted under the balancer's, it would not).
        first, second = by_gateway[0][0], by_gateway[0][1]
        gateway = cluster.gateways[0]
        refused = gateway.metric("cpmi_listener_refused_total", listener="downlink", limit="per_peer")
        idle = [first.open() for _ in range(PER_PEER)]
        time.sleep(0.3)
        extra = first.open()
        assert is_closed(extra, 3), "a connection over the lot's per-peer cap was kept"
        other = second.open()
        closed = [is_closed(sock, 0.5) for sock in [*idle, other]]
        assert not any(closed), closed
        after = gateway.metric("cpmi_listener_refused_total", listener="downlink", limit="per_peer")
        assert after == refused + 1
        for sock in [*idle, extra, other]:
            sock.close()
        # The same on the uplink, whose connections all count (HTTP has no bind).
        refused = gateway.metric("cpmi_listener_refused_total", listener="uplink", limit="per_peer")
        idle = [first.open(cluster.uplink) for _ in range(PER_PEER)]
        time.sleep(0.3)
        extra = first.open(cluster.uplink)
        assert is_closed(extra, 3), "an uplink connection over the lot's per-peer cap was kept"
        other = second.open(cluster.uplink)
        closed = [is_closed(sock, 0.5) for sock in [*idle, other]]
        assert not any(closed), closed
        after = gateway.metric("cpmi_listener_refused_total", listener="uplink", limit="per_peer")
        assert after == refused + 1
        for sock in [*idle, extra, other]:
            sock.close()

        # kill -9 one gateway: its lots come back through the balancer to the other.
        victim, survivor = cluster.gateways[0], cluster.gateways[1]
        moving, staying = by_gateway[0], by_gateway[1]
        assert victim.process is not None
        victim.process.kill()
        killed = time.monotonic()
        victim.process.wait(timeout=10)
        for lot in moving:
            assert lot.sock is not None and is_closed(lot.sock, 5), f"{lot.park}'s downlink outlived gw1"
            lot.close()
        waiting = list(moving)
        while waiting and time.monotonic() - killed < 10:
            for lot in list(waiting):
                try:
                    lot.login()
                except (OSError, AssertionError):
                    continue
                waiting.remove(lot)
            if waiting:
                time.sleep(0.2)
        moved_in = time.monotonic() - killed
        assert not waiting, f"not bound again within 10 s: {[lot.park for lot in waiting]}"
        print(f"{len(moving)} lots bound to the other gateway {moved_in:.2f} s after kill -9")
        assert all(lot.still_open() for lot in staying), "a lot on the surviving gateway was cut"
        for lot in lots:
            answer = lot.post()
            assert answer["resultCode"] == "0000", (lot.park, answer)
        parks = survivor.parks()
        assert set(parks) == {lot.park for lot in lots}
        assert {p["peer"].split(":")[0] for p in parks.values()} == {lot.source for lot in lots}
        wait_until(
            lambda: all(
                row["status"].startswith("DOWN")
                for (_, server), row in cluster.servers().items()
                if server == "gw1"
            ),
            10,
            "HAProxy's checks marking the killed gateway down",
        )
    finally:
        for lot in lots:
            lot.close()

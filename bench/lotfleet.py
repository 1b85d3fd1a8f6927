"""Thousands of idle lots on the gateway's TCP downlink, from processes of their own.

Usage: python -m bench.lotfleet --port PORT [--lots N] [--first I] [--processes P]
           [--interval S] [--password PW] [--secret K] [--connecting C] [--seconds S]

Lot `i` (from `--first`, `--lots` of them) is the account `username(i)` of park
`park_code(i)` (`lots_config` writes their `[[lot]]` entries). Each lot connects
to the downlink, binds by a `login` frame (CONTRACT §5; the REPLY carries its
token), heartbeats every `--interval` seconds (the lots' heartbeats spread
evenly over the interval) and answers every ACK of the gateway at once with a
REPLY signed over its compact `data` with the ACK's token and the lot's secret
(B.3.7): `0000`, and for `gateOpen`/`gateState` the response data of the
standard's tables. A lot whose connection is lost connects again after a second.

A lot is one slotted protocol object and its frame decoder; one timer per
process drives every heartbeat. `--processes P` shares the lots among P child
processes, under this one, which merges their reports.

Reports JSON lines on stdout: `{"event": "bound", "lots": N, "seconds": T}` once
every lot is bound, `{"event": "status", ...}` every `--report` seconds, and
`{"event": "done", ...}` with the counters when it stops (SIGTERM, SIGINT or
after `--seconds`). `failures` in those is the sum of everything that went wrong.
`Fleet` runs it from another benchmark.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from twisted.internet.interfaces import IAddress, IConnector
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from bench.harness import BENCH_PASSWORD, CHEAP_HASH, ENV, metric, run_child
from gateway.heap import SETTLE_AFTER
from gateway.protocol.envelope import response_text, signed_request_text
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign

SECRET = "bench-secret"
API_TOKEN = "bench-api-token"
RECONNECT_DELAY = 1.0
TICK = 0.05
# What a lot answers in `data`, by ACK code (RESPONSE_SAMPLES of tests/protocol/samples.py).
ANSWERS = {"gateOpen": ("barCode", "status"), "gateState": ("barCode", "barStatus")}

COUNTERS = (
    "connects",
    "connect_failures",
    "binds",
    "bind_failures",
    "lost",
    "heartbeats_sent",
    "heartbeats_answered",
    "heartbeat_errors",
    "acks",
    "replies",
    "bad_frames",
    "bad_signatures",
)
FAILURES = ("connect_failures", "bind_failures", "lost", "heartbeat_errors", "bad_frames", "bad_signatures")


def settle_argument(parser: argparse.ArgumentParser, before: str) -> None:
    """`--settle`: seconds from all lots bound to `before`, past the gateway's one collection after binds."""
    parser.add_argument(
        "--settle",
        type=float,
        default=SETTLE_AFTER + 5,
        help=f"seconds between binding and {before}: past the gateway's one collection after a bind wave",
    )


def park_code(index: int) -> str:
    """The park code of lot `index`."""
    return f"P{index:05d}"


def username(index: int) -> str:
    """The account of lot `index`."""
    return f"lot{index:05d}"


def gateway_config(work: Path, *, uplink: int, downlink: int, api: int, lots: int) -> str:
    """A gateway on loopback with `lots` bench lots, its journal in `work`, fsync "always"."""
    return (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{uplink}:interface=127.0.0.1"\n'
        f'downlink = "tcp:{downlink}:interface=127.0.0.1"\n'
        f'api = "tcp:{api}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "always"\n'
        f'[cloud]\napi_token = "{API_TOKEN}"\n'
        # Every bench lot connects from 127.0.0.1 at once: more than one address may have unbound.
        f"[uplink]\nmax_connections_per_peer = {lots + 64}\nmax_connections = {max(20000, 2 * lots)}\n"
        + lots_config(lots)
    )


def wait_connected(api_port: int, lots: int, seconds: float) -> float:
    """Wait until the gateway's /metrics counts `lots` lots connected; how long it took."""
    started = time.monotonic()
    while metric(api_port, "cpmi_lots_connected") < lots:
        if time.monotonic() - started > seconds:
            connected = metric(api_port, "cpmi_lots_connected")
            raise SystemExit(f"the gateway has {connected:.0f} of {lots} lots connected after {seconds:g} s")
        time.sleep(0.5)
    return time.monotonic() - started


def lots_config(count: int, first: int = 0, secret: str = SECRET) -> str:
    """The `[[lot]]` entries of lots first..first+count-1, with the cheap bench password."""
    return "".join(
        f'[[lot]]\npark_code = "{park_code(i)}"\nusername = "{username(i)}"\n'
        f'password = "{CHEAP_HASH}"\nsecret = "{secret}"\n'
        for i in range(first, first + count)
    )


# --- one process's lots --------------------------------------------------------


class FleetLot(Protocol):
    """One lot's connection: the login frame, REPLYs to ACKs, answers to its requests."""

    __slots__ = ("bound", "decoder", "fleet", "index", "token")

    def __init__(self, fleet: LotFleet, index: int) -> None:
        self.fleet = fleet
        self.index = index
        self.decoder = FrameDecoder(1 << 16)
        self.token = ""
        self.bound = False

    def connectionMade(self) -> None:
        fleet = self.fleet
        fleet.counters["connects"] += 1
        data = compact({"parkUserName": username(self.index), "parkUserPwd": fleet.password})
        text = signed_request_text("login", f"login-{self.index}", "", fleet.secret, data)
        self.transport.write(encode_json_frame(text))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            if isinstance(payload, FrameTooLarge):
                self.fleet.counters["bad_frames"] += 1
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            try:
                message = json.loads(payload)
            except ValueError:
                self.fleet.counters["bad_frames"] += 1
                continue
            if not isinstance(message, dict):
                self.fleet.counters["bad_frames"] += 1
            elif "resultCode" in message:
                self.answered(message)
            else:
                self.acked(message)

    def answered(self, message: dict[str, Any]) -> None:
        """The gateway's answer to the lot's login or heartbeat."""
        counters = self.fleet.counters
        ok = message["resultCode"] == "0000"
        if message.get("code") == "login":
            if not ok or not isinstance(message.get("data"), dict):
                counters["bind_failures"] += 1
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            self.token = str(message["data"]["token"])
            self.bound = True
            self.fleet.lot_bound(self)
        elif message.get("code") == "heartbeat":
            counters["heartbeats_answered"] += 1
            if not ok:
                counters["heartbeat_errors"] += 1
        else:
            counters["bad_frames"] += 1

    def acked(self, message: dict[str, Any]) -> None:
        """An ACK (a command, or the gateway's heartbeat): REPLY at once, signed with its token."""
        fleet = self.fleet
        fleet.counters["acks"] += 1
        code, token, data = str(message.get("code")), str(message.get("token")), message.get("data")
        if sign(compact(data), token, fleet.secret) != message.get("signature"):
            fleet.counters["bad_signatures"] += 1
        fields = ANSWERS.get(code)
        answer: dict[str, object] = {}
        if fields is not None and isinstance(data, dict):
            answer = {fields[0]: data.get(fields[0], ""), fields[1]: 1}
        text = response_text(
            code, str(message.get("oprNum")), Result.OK.code, Result.OK.text, answer, token, fleet.secret
        )
        fleet.counters["replies"] += 1
        self.transport.write(encode_json_frame(text))  # type: ignore[union-attr]

    def heartbeat(self, opr: str) -> None:
        """Send one heartbeat request."""
        text = signed_request_text("heartbeat", opr, self.token, self.fleet.secret, "{}")
        self.transport.write(encode_json_frame(text))  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.fleet.lot_lost(self)


class _LotFactory(ClientFactory):
    noisy = False

    def __init__(self, fleet: LotFleet, index: int) -> None:
        self.fleet = fleet
        self.index = index

    def buildProtocol(self, addr: IAddress) -> FleetLot:
        return FleetLot(self.fleet, self.index)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.fleet.connect_failed(self.index)


class LotFleet:
    """The lots of one process: connecting at most `connecting` at a time, heartbeats, counters."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.host, self.port = args.host, args.port
        self.password, self.secret = args.password, args.secret
        self.interval = args.interval
        self.indexes = list(range(args.first, args.first + args.lots))
        self.connecting_limit = args.connecting
        self.counters = dict.fromkeys(COUNTERS, 0)
        # The lot of each index, None while it is not bound; heartbeats go round this list.
        self.slots: list[FleetLot | None] = [None] * len(self.indexes)
        self.waiting = list(reversed(self.indexes))
        self.connecting = 0
        self.bound = 0
        self.stopping = False
        self.started = time.monotonic()
        self.all_bound_at: float | None = None
        self.heartbeats_due = 0
        self.opr = 0

    def start(self) -> None:
        """Connect the lots, and start the heartbeat tick."""
        self.connect_more()
        self.reactor.callLater(TICK, self.tick)

    def connect_more(self) -> None:
        while self.waiting and self.connecting < self.connecting_limit and not self.stopping:
            index = self.waiting.pop()
            self.connecting += 1
            self.reactor.connectTCP(self.host, self.port, _LotFactory(self, index), timeout=30)

    def lot_bound(self, lot: FleetLot) -> None:
        self.counters["binds"] += 1
        self.connecting -= 1
        self.slots[lot.index - self.indexes[0]] = lot
        self.bound += 1
        if self.bound == len(self.indexes) and self.all_bound_at is None:
            self.all_bound_at = now = time.monotonic()
            emit({"event": "bound", "lots": self.bound, "seconds": round(now - self.started, 1)})
        self.connect_more()

    def connect_failed(self, index: int) -> None:
        self.counters["connect_failures"] += 1
        self.connecting -= 1
        self.retry(index)

    def lot_lost(self, lot: FleetLot) -> None:
        if lot.bound:
            self.slots[lot.index - self.indexes[0]] = None
            self.bound -= 1
            if not self.stopping:
                self.counters["lost"] += 1
        else:
            self.connecting -= 1  # refused or cut before it bound: counted where it failed
        self.retry(lot.index)

    def retry(self, index: int) -> None:
        if self.stopping:
            return

        def again() -> None:
            self.waiting.append(index)
            self.connect_more()

        self.reactor.callLater(RECONNECT_DELAY, again)
        self.connect_more()

    def tick(self) -> None:
        """Send the heartbeats that fell due since the last tick: lot k of n at k/n of each interval."""
        if self.stopping:
            return
        count = len(self.slots)
        due = int((time.monotonic() - self.started) * count / self.interval)
        for slot in range(self.heartbeats_due, due):
            lot = self.slots[slot % count]
            if lot is not None:
                self.opr += 1
                self.counters["heartbeats_sent"] += 1
                lot.heartbeat(f"hb-{os.getpid()}-{self.opr}")
        self.heartbeats_due = max(due, self.heartbeats_due)
        self.reactor.callLater(TICK, self.tick)

    def report(self, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "lots": len(self.indexes),
            "bound": self.bound,
            **self.counters,
            "failures": sum(self.counters[name] for name in FAILURES),
        }


def emit(line: dict[str, Any]) -> None:
    """One JSON line on stdout, at once."""
    sys.stdout.write(json.dumps(line) + "\n")
    sys.stdout.flush()


def run_lots(args: argparse.Namespace) -> None:
    """Run this process's lots on the reactor until a signal or `--seconds`."""
    from twisted.internet import reactor

    fleet = LotFleet(reactor, args)

    def status() -> None:
        emit(fleet.report("status"))
        reactor.callLater(args.report, status)  # type: ignore[attr-defined]

    def stop(*_: object) -> None:
        if fleet.stopping:
            return
        fleet.stopping = True
        emit(fleet.report("done"))
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    if args.report > 0:
        reactor.callLater(args.report, status)  # type: ignore[attr-defined]
    run_child(reactor, fleet.start, stop, args.seconds)


# --- several processes ------------------------------------------------------------


def supervise(args: argparse.Namespace) -> None:
    """Share the lots among `--processes` children and merge their reports into one stream."""
    children: list[subprocess.Popen[str]] = []
    for k in range(args.processes):
        first = args.first + args.lots * k // args.processes
        count = args.first + args.lots * (k + 1) // args.processes - first
        command = [*child_command(args), "--first", str(first), "--lots", str(count)]
        children.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV))
    latest: list[dict[str, Any]] = [{} for _ in children]
    bound = [False] * len(children)
    lock = threading.Lock()
    started = time.monotonic()

    def read(k: int, stream: IO[str]) -> None:
        for line in stream:
            report = json.loads(line)
            with lock:
                if report["event"] == "bound":
                    bound[k] = True
                    if all(bound):
                        seconds = round(time.monotonic() - started, 1)
                        emit({"event": "bound", "lots": args.lots, "seconds": seconds})
                else:
                    latest[k] = report
                    if report["event"] == "status" and all(latest):
                        emit(merged("status", latest))

    readers = [
        threading.Thread(target=read, args=(k, child.stdout), daemon=True) for k, child in enumerate(children)
    ]
    for reader in readers:
        reader.start()

    def stop(*_: object) -> None:
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    parent = os.getppid()

    def watch() -> None:
        while any(child.poll() is None for child in children):
            if os.getppid() != parent:
                stop()
            time.sleep(1.0)

    threading.Thread(target=watch, daemon=True).start()
    for child in children:
        child.wait()
    for reader in readers:
        reader.join(timeout=5)
    emit(merged("done", latest))


def merged(event: str, reports: list[dict[str, Any]]) -> dict[str, Any]:
    """The children's last reports summed into one."""
    total: dict[str, Any] = {"event": event, "processes": len(reports)}
    for report in reports:
        for key, value in report.items():
            if key not in ("event", "processes") and isinstance(value, int):
                total[key] = total.get(key, 0) + value
    return total


def child_command(args: argparse.Namespace) -> list[str]:
    """The command of one child process (its --first and --lots are appended)."""
    return [
        sys.executable,
        "-m",
        "bench.lotfleet",
        "--host",
        args.host,
        "--port",
        str(args.port),
        "--interval",
        str(args.interval),
        "--password",
        args.password,
        "--secret",
        args.secret,
        "--connecting",
        str(args.connecting),
        "--seconds",
        str(args.seconds),
        "--report",
        str(args.report),
    ]


# --- used from the benchmarks ----------------------------------------------------------


class Fleet:
    """A running `bench.lotfleet` (supervisor and children), read from another benchmark."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.bound = threading.Event()
        self.bound_report: dict[str, Any] = {}
        self.last: dict[str, Any] = {}
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            report = json.loads(line)
            if report["event"] == "bound":
                self.bound_report = report
                self.bound.set()
            else:
                self.last = report

    def wait_bound(self, seconds: float) -> dict[str, Any]:
        """Wait until every lot has bound; its report. Exits if the fleet dies or it takes too long."""
        deadline = time.monotonic() + seconds
        while not self.bound.wait(0.5):
            if self.process.poll() is not None:
                raise SystemExit(f"the lot fleet exited: {self.process.returncode}")
            if time.monotonic() > deadline:
                raise SystemExit(f"the lots did not all bind in {seconds:g} s: {self.last}")
        return self.bound_report

    def stop(self) -> dict[str, Any]:
        """Stop the lots; their final counters."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        return self.last


@contextmanager
def fleet(port: int, lots: int, *, processes: int = 2, interval: float = 60.0) -> Iterator[Fleet]:
    """`lots` lots (index 0 up) on the downlink `port` of loopback; stopped on exit."""
    command = [sys.executable, "-m", "bench.lotfleet", "--port", str(port), "--lots", str(lots)]
    command += ["--processes", str(processes), "--interval", str(interval)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV)
    running = Fleet(process)
    try:
        yield running
    finally:
        running.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True, help="the gateway's downlink port")
    parser.add_argument("--lots", type=int, default=1000)
    parser.add_argument("--first", type=int, default=0, help="index of the first lot")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument("--interval", type=float, default=60.0, help="seconds between a lot's heartbeats")
    parser.add_argument("--password", default=BENCH_PASSWORD)
    parser.add_argument("--secret", default=SECRET)
    parser.add_argument("--connecting", type=int, default=50, help="lots binding at once, per process")
    parser.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: on a signal)")
    parser.add_argument("--report", type=float, default=10.0, help="seconds between status lines (0: none)")
    args = parser.parse_args()
    if args.processes > 1:
        supervise(args)
    else:
        run_lots(args)


if __name__ == "__main__":
    main()

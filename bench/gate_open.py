"""gateOpen from the command API down to a lot and back, at a fixed rate, with many lots bound.

Usage: python -m bench.gate_open [--lots N] [--rate R] [--seconds S] [--connections C]
           [--processes P] [--settle S] [--profile FILE] [--runs N] [--floor-runs N]

The gateway runs as its own process on a configuration of N lots (10,000 by
default), journal.fsync = "always"; `bench.lotfleet` binds them all from its
own processes, heartbeating every 60 s and answering each ACK at once. Then a
client process of its own posts `POST /v1/parks/{park}/commands/gateOpen`
(bearer `cloud.api_token`) open-loop: R a second (300) for S seconds (20), the
k-th at start + k/R whether or not earlier ones have been answered, over
keep-alive connections (a new one is opened when all C are busy), park after
park. Each latency runs from the request's scheduled time to the last byte of
its answer, so a late client counts against the gateway, never for it; an
answer is right when it is 200 with resultCode 0000 and the lot's barCode.

`--runs` client processes (5) run one after the other against the same bound
lots. Target (issues 10 and 25): p99 <= 10 ms at 300/s with 10,000 lots
bound, in every one of the runs. Prints each run's p50/p99/max and errors
with the CPU of the gateway, of the client (its own `os.times`: a client
that took most of a core, or lagged behind its schedule, was starved rather
than the gateway slow) and of the whole machine, and writes
bench/results/gate_open.json.

After each run the same client runs once more against the floor (`RELAY`):
a bare twisted.web resource that hands each command to an echo process over
TCP and answers when it comes back, with no journal, signature or lot, on the
same machine with the lots still bound. Its p99 is what this machine does
to the shortest such path at the same rate; where even it misses 10 ms, the
machine, not the gateway, is the limit (bench.summary says which).
`--floor-runs 0` leaves it out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from bench.harness import (
    ENV,
    cpu_seconds,
    free_port,
    gateway,
    metric,
    py_spy,
    thread_cpu_seconds,
    wait_for,
    write_result,
)
from bench.lotfleet import API_TOKEN, fleet, gateway_config, park_code, settle_argument, wait_connected

P99_TARGET_MS = 10.0
BAR_CODE = "GATE-OUT-02"

RELAY = """
import sys
from twisted.internet import protocol, reactor
from twisted.protocols.basic import LineReceiver
from twisted.web import resource, server

class Echo(LineReceiver):
    delimiter = b"\\n"
    def lineReceived(self, line):
        self.sendLine(line)

class ToEcho(LineReceiver):
    delimiter = b"\\n"
    def connectionMade(self):
        relay.echo = self
        # Listening only once connected: a command can never find the echo process missing.
        reactor.listenTCP(int(sys.argv[2]), server.Site(relay), interface="127.0.0.1")
    def lineReceived(self, line):
        key, _, body = line.partition(b" ")
        request = relay.waiting.pop(key)
        request.write(b'{"resultCode":"0000","resultMessage":"ok","data":' + body + b"}")
        request.finish()

class Relay(resource.Resource):
    isLeaf = True
    def __init__(self):
        super().__init__()
        self.waiting, self.next, self.echo = {}, 0, None
    def render_POST(self, request):
        self.next += 1
        key = b"%d" % self.next
        self.waiting[key] = request
        request.setHeader(b"content-type", b"application/json")
        self.echo.sendLine(key + b" " + request.content.read().replace(b"\\n", b" "))
        return server.NOT_DONE_YET

if sys.argv[1] == "echo":
    reactor.listenTCP(int(sys.argv[2]), protocol.Factory.forProtocol(Echo), interface="127.0.0.1")
else:
    relay = Relay()
    protocol.ClientCreator(reactor, ToEcho).connectTCP("127.0.0.1", int(sys.argv[3]))
reactor.run()
"""
"""The floor: `python -c RELAY echo PORT` echoes lines; `python -c RELAY relay PORT ECHO_PORT` answers
each POST with ``{"resultCode":"0000","data":BODY}`` once its body came back from the echo process."""


# --- the client process ------------------------------------------------------------


class ApiConnection(Protocol):
    """One keep-alive HTTP/1.1 connection: one request at a time, its answer parsed by hand.

    twisted.web answers a Deferred resource with chunked encoding and a bytes one
    with Content-Length: both are read.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.buffer = bytearray()
        self.current: tuple[int, float, float] | None = None  # (k, scheduled, sent)
        self.head: tuple[int, int | None, bool] | None = None  # (status, length, chunked)
        self.body = bytearray()

    def connectionMade(self) -> None:
        self.client.connected(self)

    def request(self, k: int, scheduled: float, payload: bytes) -> None:
        self.current = (k, scheduled, time.monotonic())
        self.transport.write(payload)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while self.current is not None and self.parse():
            pass

    def parse(self) -> bool:
        """Take one answer out of the buffer if it is all there; whether it was."""
        buffer = self.buffer
        if self.head is None:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            lines = bytes(buffer[:end]).decode("latin-1").split("\r\n")
            del buffer[: end + 4]
            status = int(lines[0].split()[1])
            headers = {
                name.strip().lower(): value.strip()
                for name, _, value in (line.partition(":") for line in lines[1:])
            }
            length = int(headers["content-length"]) if "content-length" in headers else None
            self.head = (status, length, headers.get("transfer-encoding", "").lower() == "chunked")
            self.body = bytearray()
        status, length, chunked = self.head
        if chunked:
            while True:
                line_end = buffer.find(b"\r\n")
                if line_end < 0:
                    return False
                size = int(bytes(buffer[:line_end]).split(b";")[0], 16)
                if size == 0:
                    if buffer.find(b"\r\n\r\n", line_end) != line_end:
                        return False  # (no trailers are sent)
                    del buffer[: line_end + 4]
                    break
                if len(buffer) < line_end + 2 + size + 2:
                    return False
                self.body += buffer[line_end + 2 : line_end + 2 + size]
                del buffer[: line_end + 2 + size + 2]
        else:
            if length is None or len(buffer) < length:
                return False
            self.body = buffer[:length]
            del buffer[:length]
        assert self.current is not None
        k, scheduled, sent = self.current
        self.current = self.head = None
        self.client.answered(self, k, scheduled, sent, status, bytes(self.body))
        return True

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.client.lost(self)


class _ApiFactory(ClientFactory):
    noisy = False

    def __init__(self, client: Client) -> None:
        self.client = client

    def buildProtocol(self, addr: object) -> ApiConnection:
        return ApiConnection(self.client)

    def clientConnectionFailed(self, connector: object, reason: Failure) -> None:
        self.client.errors["connect failed"] += 1
        self.client.opening -= 1


class Client:
    """Posts gateOpen open-loop at `rate` a second for `seconds`, one park after another."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.args = args
        self.total = int(args.rate * args.seconds)
        self.latencies: list[float | None] = [None] * self.total
        self.sent_latencies: list[float | None] = [None] * self.total
        self.idle_connections: list[ApiConnection] = []
        self.waiting: deque[tuple[int, float]] = deque()
        self.opening = 0
        self.opened = 0
        self.next = 0
        self.done = 0
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.started = 0.0
        self.cpu_started = 0.0
        self.max_send_lag = 0.0

    def connect(self) -> None:
        self.opening += 1
        self.opened += 1
        self.reactor.connectTCP("127.0.0.1", self.args.port, _ApiFactory(self))

    def start(self) -> None:
        for _ in range(self.args.connections):
            self.connect()
        # The first request goes once the pool is open: its connections are not what is measured.
        self.reactor.callLater(1.0, self.begin)

    def begin(self) -> None:
        sys.stdout.write(json.dumps({"event": "begin"}) + "\n")
        sys.stdout.flush()
        self.started = time.monotonic()
        self.cpu_started = sum(os.times()[:2])
        self.tick()

    def payload(self, k: int) -> bytes:
        park = park_code(self.args.first + k % self.args.lots)
        body = json.dumps({"parkCode": park, "barCode": BAR_CODE, "isOpen": 1}).encode()
        head = (
            f"POST /v1/parks/{park}/commands/gateOpen HTTP/1.1\r\nHost: 127.0.0.1:{self.args.port}\r\n"
            f"Authorization: Bearer {self.args.token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    def tick(self) -> None:
        now = time.monotonic()
        while self.next < self.total:
            scheduled = self.started + self.next / self.args.rate
            if scheduled > now:
                break
            self.max_send_lag = max(self.max_send_lag, now - scheduled)
            self.send(self.next, scheduled)
            self.next += 1
        if self.next < self.total:
            delay = self.started + self.next / self.args.rate - time.monotonic()
            self.reactor.callLater(max(delay, 0.0), self.tick)
        else:
            self.reactor.callLater(self.args.grace, self.finish)

    def send(self, k: int, scheduled: float) -> None:
        if self.idle_connections:
            self.idle_connections.pop().request(k, scheduled, self.payload(k))
        else:
            self.waiting.append((k, scheduled))
            if len(self.waiting) > self.opening:
                self.connect()

    def connected(self, connection: ApiConnection) -> None:
        self.opening -= 1
        self.idle(connection)

    def idle(self, connection: ApiConnection) -> None:
        if self.waiting:
            k, scheduled = self.waiting.popleft()
            connection.request(k, scheduled, self.payload(k))
        else:
            self.idle_connections.append(connection)

    def answered(
        self, connection: ApiConnection, k: int, scheduled: float, sent: float, status: int, body: bytes
    ) -> None:
        now = time.monotonic()
        self.statuses[status] += 1
        self.done += 1
        try:
            answer = json.loads(body)
            right = (
                status == 200
                and answer.get("resultCode") == "0000"
                and answer.get("data", {}).get("barCode") == BAR_CODE
            )
        except (ValueError, AttributeError):
            right = False
        if right:
            self.latencies[k] = now - scheduled
            self.sent_latencies[k] = now - sent
        else:
            self.errors[f"HTTP {status}: {body[:120]!r}"] += 1
        self.idle(connection)
        if self.done == self.total:
            self.finish()

    def lost(self, connection: ApiConnection) -> None:
        if connection in self.idle_connections:
            self.idle_connections.remove(connection)
        if connection.current is not None:
            self.errors["connection lost"] += 1
            self.done += 1

    def finish(self) -> None:
        if not self.reactor.running:
            return
        answered = [value for value in self.latencies if value is not None]
        # The slowest answers and when they were due: a cluster is a pause, not a distribution.
        slowest = sorted(
            ((value, k) for k, value in enumerate(self.latencies) if value is not None), reverse=True
        )[:10]
        sent = [value for value in self.sent_latencies if value is not None]
        elapsed = time.monotonic() - self.started
        cpu = sum(os.times()[:2]) - self.cpu_started
        report = {
            "cpu_seconds": round(cpu, 3),
            "cpu_share": round(cpu / max(elapsed, 1e-9), 3),
            "requests": self.total,
            "answered_ok": len(answered),
            "unanswered": self.total - self.done,
            "errors": dict(self.errors),
            "statuses": {str(k): v for k, v in self.statuses.items()},
            "connections": self.opened,
            "max_send_lag_ms": round(self.max_send_lag * 1000, 3),
            "slowest": [
                {"at_s": round(k / self.args.rate, 3), "ms": round(value * 1000, 3)} for value, k in slowest
            ],
            "latencies_ms": [round(value * 1000, 3) for value in answered],
            "sent_latencies_ms": [round(value * 1000, 3) for value in sent],
        }
        sys.stdout.write(json.dumps(report) + "\n")
        sys.stdout.flush()
        self.reactor.stop()


def run_client(args: argparse.Namespace) -> None:
    from twisted.internet import reactor

    client = Client(reactor, args)
    reactor.callWhenRunning(client.start)  # type: ignore[attr-defined]
    reactor.run()  # type: ignore[attr-defined]


# --- the benchmark --------------------------------------------------------------------


def percentile(values: list[float], share: float) -> float:
    """The nearest-rank percentile of `values` (sorted), `share` in 0..1."""
    if not values:
        return float("nan")
    rank = max(1, min(len(values), int(-(-share * len(values) // 1))))
    return values[rank - 1]


def client_command(args: argparse.Namespace, api: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench.gate_open",
        "--client",
        "--port",
        str(api),
        "--token",
        API_TOKEN,
        "--lots",
        str(args.lots),
        "--rate",
        str(args.rate),
        "--seconds",
        str(args.seconds),
        "--connections",
        str(args.connections),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=300.0, help="commands a second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of each run")
    parser.add_argument("--runs", type=int, default=5, help="client runs against the same bound lots")
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections opened first")
    parser.add_argument("--processes", type=int, default=2, help="processes the lots run in")
    settle_argument(parser, "loading")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the gateway while the commands run")
    parser.add_argument(
        "--floor-runs", type=int, help="runs against the bare relay, after the gateway's (as many as --runs)"
    )
    # The client process's own options.
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--token", help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--grace", type=float, default=10.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        run_client(args)
        return
    floor_runs = args.runs if args.floor_runs is None else args.floor_runs
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-gate-"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    config = gateway_config(work, uplink=uplink, downlink=downlink, api=api, lots=args.lots)
    runs: list[dict[str, Any]] = []
    floor: list[dict[str, Any]] = []
    with relay() as (relay_port, relay_pid), gateway(work, config, api) as server:
        wait_for(downlink, server)
        with fleet(downlink, args.lots, processes=args.processes) as lots:
            lots.wait_bound(600)
            wait_connected(api, args.lots, 120)
            time.sleep(args.settle)
            for k in range(max(args.runs, floor_runs)):
                # Interleaved, so that the floor and the gateway share what the machine did meanwhile.
                if k < args.runs:
                    runs.append(one_run(args, api, server.pid, k))
                if k < floor_runs:
                    floor.append(floor_run(client_run(args, relay_port, relay_pid)))
            connected = metric(api, "cpmi_lots_connected")
        fleet_report = lots.last
    worst = max(runs, key=lambda run: run["p99_ms"])
    met_runs = sum(1 for run in runs if run["met"])
    figures: dict[str, Any] = {
        "lots": args.lots,
        "connected": int(connected),
        "rate": args.rate,
        "seconds": args.seconds,
        "runs": runs,
        "p99_runs_ms": [run["p99_ms"] for run in runs],
        "met_runs": met_runs,
        # The worst run's figures, as one run's were before.
        **{key: worst[key] for key in ("p50_ms", "p90_ms", "p99_ms", "max_ms")},
        "errors": sum(run["errors"] for run in runs),
        "client_cpu_share": [run["client_cpu_share"] for run in runs],
        "machine_busy_share": [run["machine_busy_share"] for run in runs],
        "fleet": fleet_report,
        "target": {"p99_ms": P99_TARGET_MS, "runs": args.runs},
    }
    if floor:
        figures["floor"] = {
            "what": "a bare twisted.web resource relaying each command to an echo process",
            "runs": floor,
            "p99_runs_ms": [run["p99_ms"] for run in floor],
            "met_runs": sum(1 for run in floor if run["met"]),
            "max_send_lag_ms": [run["client"]["max_send_lag_ms"] for run in floor],
        }
    figures["met"] = {"p99_ms": met_runs == len(runs)}
    print(
        f"gateOpen at {args.rate:g}/s, {args.runs} runs of {args.seconds:g} s, "
        f"{connected:.0f} of {args.lots} lots bound"
    )
    print_runs(runs, "gateway")
    print(f"met in {met_runs} of {len(runs)} runs; fleet failures {fleet_report.get('failures', '?')}")
    if floor:
        print("the floor, interleaved: a bare twisted.web resource relaying each command to an echo process")
        print_runs(floor, "relay")
        print(f"the floor met in {figures['floor']['met_runs']} of {len(floor)} runs")
    print(f"wrote {write_result('gate_open', figures)}")


def print_runs(runs: list[dict[str, Any]], server: str) -> None:
    """One line a run: latencies, errors, the CPU of `server` ("gateway" or "relay"), client, machine."""
    print(
        f"{'run':<4} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} {'errors':>6} {server + ' CPU':>11} "
        f"{'client CPU':>10} {'send lag ms':>11} {'machine busy':>12}  p99 <= {P99_TARGET_MS:g}?"
    )
    for k, run in enumerate(runs, 1):
        print(
            f"{k:<4} {run['p50_ms']:>7.2f} {run['p99_ms']:>7.2f} {run['max_ms']:>7.1f} {run['errors']:>6} "
            f"{run[server + '_cpu_share']:>11.1%} {run['client_cpu_share']:>10.1%} "
            f"{run['client']['max_send_lag_ms']:>11.1f} {run['machine_busy_share']:>12.1%}  "
            f"{'yes' if run['met'] else 'NO'}"
        )


@contextmanager
def relay() -> Iterator[tuple[int, int]]:
    """The floor's echo process and relay (`RELAY`) running: the relay's port and pid."""
    echo_port, relay_port = free_port(), free_port()
    with contextlib.ExitStack() as stack:
        for command in (["echo", str(echo_port)], ["relay", str(relay_port), str(echo_port)]):
            process = subprocess.Popen([sys.executable, "-c", RELAY, *command], env=ENV)
            stack.callback(process.wait)
            stack.callback(process.terminate)
            wait_for(int(command[1]), process)
        yield relay_port, process.pid


def floor_run(run: dict[str, Any]) -> dict[str, Any]:
    """A client run against the relay: its server is the relay."""
    return {key.replace("server_", "relay_", 1): value for key, value in run.items()}


def machine_busy() -> tuple[float, float]:
    """The machine's busy and total CPU time so far (all cores, /proc/stat), in clock ticks."""
    fields = [float(value) for value in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]  # idle and iowait
    return sum(fields) - idle, sum(fields)


def one_run(args: argparse.Namespace, api: int, pid: int, k: int) -> dict[str, Any]:
    """One client process's commands against the gateway `pid`: its latencies and everyone's CPU."""
    timeouts_before = metric(api, "cpmi_downlink_command_timeouts_total")
    fsyncs_before = metric(api, "cpmi_journal_fsync_seconds_count")
    profile = args.profile if args.profile and k == args.runs - 1 else None
    run = client_run(args, api, pid, profile)
    return {
        **{key.replace("server_", "gateway_", 1): value for key, value in run.items()},
        "command_timeouts": int(metric(api, "cpmi_downlink_command_timeouts_total") - timeouts_before),
        "fsyncs": int(metric(api, "cpmi_journal_fsync_seconds_count") - fsyncs_before),
    }


def client_run(args: argparse.Namespace, port: int, pid: int, profile: str | None = None) -> dict[str, Any]:
    """One client process's commands against the server `pid` on `port`: latencies and everyone's CPU."""
    client = subprocess.Popen(client_command(args, port), stdout=subprocess.PIPE, text=True, env=ENV)
    profiler = None
    try:
        assert client.stdout is not None
        client.stdout.readline()  # {"event": "begin"}: the pool is open, the first request goes
        profiler = py_spy(pid, profile, args.seconds) if profile else None
        cpu_before, started = cpu_seconds(pid), time.monotonic()
        busy_before, total_before = machine_busy()
        threads_before = thread_cpu_seconds(pid)
        line = client.stdout.readline()
        cpu, elapsed = cpu_seconds(pid) - cpu_before, time.monotonic() - started
        busy, total = machine_busy()
        threads = {
            name: round((seconds - threads_before.get(name, 0.0)) / elapsed, 3)
            for name, seconds in thread_cpu_seconds(pid).items()
            if seconds > threads_before.get(name, 0.0)
        }
        client.wait(timeout=30)
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
    if profiler is not None:
        profiler.wait()
    if client.returncode != 0 or not line:
        raise SystemExit(f"the client failed ({client.returncode})")
    report = json.loads(line)
    latencies = sorted(report.pop("latencies_ms"))
    sent = sorted(report.pop("sent_latencies_ms"))
    errors = report["requests"] - report["answered_ok"]
    p99 = percentile(latencies, 0.99)
    return {
        **{f"p{p}_ms": percentile(latencies, p / 100) for p in (50, 90, 99)},
        "max_ms": latencies[-1] if latencies else float("nan"),
        "from_sent": {f"p{p}_ms": percentile(sent, p / 100) for p in (50, 90, 99)},
        "errors": errors,
        "client": report,
        "client_cpu_share": report["cpu_share"],
        "machine_busy_share": round((busy - busy_before) / max(total - total_before, 1), 3),
        "server_cpu_share": round(cpu / elapsed, 3),
        "server_cpu_us_per_command": round(cpu / max(report["requests"], 1) * 1e6, 1),
        "server_thread_cpu_share": threads,
        "met": bool(p99 <= P99_TARGET_MS and errors == 0),
    }


if __name__ == "__main__":
    main()

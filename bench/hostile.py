"""An honest lot's uplink latency, quiet and under four attacks at once; the gateway's RSS and fds.

Usage: python -m bench.hostile [--quick] [--rate R] [--quiet S] [--attack S]
           [--again S] [--cycles N] [--slowloris N] [--dollar N] [--junk N] [--flood N]
           [--profile FILE]
       python -m bench.hostile attack KIND --port P ...   (one attack process; the benchmark runs them)

The gateway runs as its own process (twistd, journal.fsync = "always") with
three lots: P001 (the honest one, signature required), P002 (the login
flood's target: a real `cpmictl passwd` hash, the default empty secret) and
P003 (an honest login of it is timed every `--probe` seconds: the wait for
the password worker, its hash being the bench's cheap one). One client in this
process posts P001's signed carIns at a steady `--rate`, each on a new
connection, as much parking software does; its latency is measured while
quiet, then while four kinds of attack run, each from its own process, then
quiet again for `--again` seconds (to show how far the machine drifted):

- slowloris: `--slowloris` connections to the uplink, each sending one header
  byte every `--drip` seconds and never finishing its headers;
- `$` stream: `--dollar` unbound connections to the TCP downlink, streaming runs
  of `$` (and `#`, `*`, broken frames) at `--dollar-rate` bytes/s each;
- junk: `--junk` uplink connections in turn posting an envelope with one huge
  member (5 MiB `code`, `oprNum`, `token` or `signature`, no token), a body
  declaring 300 MiB, and a chunked body past the limit;
- login flood: `--flood` uplink connections, each posting a wrong-password
  login (to P002 or an unknown account) and hanging up after `--patience` s
  if not answered.

Every attack connects to 127.0.0.1 from source addresses of its own in
127.K.0.0/16 (at most `--per-peer` connections each, below the gateway's cap
per peer), reconnects when cut, and stops by itself when its time is up.
Attack processes run at `--attack-nice` so that the two cores measure the
gateway and not the attackers' own CPU. The gateway's RSS (with the part of it
that is Argon2id's working memory, while checks ran in its threads), its open
fds and the RSS of each of its children (the body and password workers:
processes of their own) are sampled from /proc every 0.2 s; the target's RSS
is the gateway's and its children's together, quiet (the median) against the
peak under attack. CPU is read per phase for its reactor thread, its other
threads, its workers and the machine. The p99 of the quiet phase after the
attack against the first shows how far the machine alone moved it within the
run; with `--cycles N` the quiet and attack windows alternate N times (each
attack started anew), so that a shared machine's drift falls on both alike.

Targets (issue 19, CONTRACT §4): p99 under attack <= 3 x quiet, RSS <= +64 MiB,
no fd exhaustion (and the honest lot never fails to connect). Prints a table
and writes bench/results/hostile.json (`--quick`: short, few connections,
bench/results/hostile-quick.json).
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Self

import nacl.pwhash
from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall, IReactorTCP, IReactorTime
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from bench.harness import (
    BENCH_PASSWORD,
    CHEAP_HASH,
    ENV,
    cpu_seconds,
    free_port,
    gateway,
    py_spy,
    run_child,
    thread_cpu_seconds,
    wait_for,
    write_result,
)
from bench.uplink import CAR_IN
from gateway.protocol.signing import compact, sign

HONEST_SECRET = "k"
# The login flood's account (P002) carries what `cpmictl passwd` makes.
REAL_PASSWORD = "a real lot password"
KINDS = ("slowloris", "dollar", "junk", "flood")
RATIO_TARGET = 3.0
RSS_TARGET_MIB = 64.0
HUGE = 5 * 2**20
ARGON2_KIB = nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE // 1024
MAPPING = re.compile(r"[0-9a-f]+-[0-9a-f]+ ")
DECLARED = 300 * 2**20
TICK = 0.05
CORES = os.cpu_count() or 1
RECONNECT_DELAY = 0.2
ANSWER_WAIT = 30.0  # junk: how long a huge member's answer is waited for


# --- the attacks (each runs in a process of its own) -----------------------------------------


def source_address(kind: int, index: int, per_peer: int) -> str:
    """The loopback address connection `index` of attack `kind` connects from: `per_peer` share one."""
    peer = index // per_peer
    return f"127.{kind + 1}.{peer // 250}.{peer % 250 + 1}"


def huge_member_body(member: str, size: int, opr: str) -> bytes:
    """A form body whose envelope carries `size` bytes in `member`, and no token."""
    envelope = {"token": "", "code": "carIn", "oprNum": opr, "signature": "", "data": {}}
    envelope[member] = "A" * size
    return b"param=" + urllib.parse.quote(json.dumps(envelope), safe="").encode()


def login_body(username: str, password: str, opr: str, secret: str = "") -> bytes:
    """A form-encoded `login` request, signed with `secret` (an attacker knows the default, "")."""
    data = {"parkUserName": username, "parkUserPwd": password}
    envelope = {
        "token": "",
        "code": "login",
        "oprNum": opr,
        "signature": sign(compact(data), "", secret),
        "data": data,
    }
    return b"param=" + urllib.parse.quote(json.dumps(envelope), safe="").encode()


def http_head(length: int | None) -> bytes:
    """A POST /uplink head: a Content-Length, or chunked when `length` is None; Connection: close."""
    size = "Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}"
    return (
        "POST /uplink HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n"
        f"Content-Type: application/x-www-form-urlencoded\r\n{size}\r\n\r\n"
    ).encode()


# What the `$` stream sends: runs of `$`, `#` and `*`, and frames that never end.
DOLLAR_JUNK = b"".join(
    [b"$" * 16384, b"$$", b"x" * 512, b"#" * 1024, b"*" * 1024, b"$$" + b"{" * 256, b"$" * 8192, b"#*$" * 512]
)


class Attack:
    """`connections` connections of one kind, each reconnecting when cut, until `stop`.

    `reactor` connects and keeps time; the protocols count what they did in `counters`.
    """

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor: IReactorTCP = reactor
        self.clock: IReactorTime = reactor
        self.args = args
        self.kind = args.kind
        self.protocol = PROTOCOLS[args.kind]
        self.counters: dict[str, int] = {"connects": 0, "connect_failures": 0, "cut": 0, "bytes_sent": 0}
        self.live: dict[int, Protocol] = {}
        self.stopping = False
        self.serial = 0

    def count(self, name: str, amount: int = 1) -> None:
        self.counters[name] = self.counters.get(name, 0) + amount

    def start(self) -> None:
        """Open the connections, spread over the first second."""
        for index in range(self.args.connections):
            self.clock.callLater(index / self.args.connections, self.connect, index)

    def connect(self, index: int) -> None:
        if self.stopping:
            return
        source = source_address(KINDS.index(self.kind), index, self.args.per_peer)
        factory = _AttackFactory(self, index)
        self.reactor.connectTCP("127.0.0.1", self.args.port, factory, timeout=10, bindAddress=(source, 0))

    def made(self, index: int, protocol: Protocol) -> None:
        self.count("connects")
        self.live[index] = protocol

    def failed(self, index: int) -> None:
        self.count("connect_failures")
        self.again(index)

    def lost(self, index: int, by_us: bool, delay: float) -> None:
        self.live.pop(index, None)
        if not by_us and not self.stopping:
            self.count("cut")
        self.again(index, delay)

    def again(self, index: int, delay: float = RECONNECT_DELAY) -> None:
        if not self.stopping:
            self.clock.callLater(delay, self.connect, index)

    def next_serial(self) -> int:
        self.serial += 1
        return self.serial

    def stop(self) -> dict[str, Any]:
        """Close every connection; the counters."""
        self.stopping = True
        for protocol in list(self.live.values()):
            if protocol.transport is not None:
                protocol.transport.abortConnection()  # type: ignore[attr-defined]
        return {"kind": self.kind, "connections": self.args.connections, **self.counters}


class _AttackFactory(ClientFactory):
    noisy = False

    def __init__(self, attack: Attack, index: int) -> None:
        self.attack = attack
        self.index = index

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self.attack.protocol(self.attack, self.index)

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        self.attack.failed(self.index)


class AttackProtocol(Protocol):
    """One attacking connection: a timer of its own, and whether it hung up itself."""

    def __init__(self, attack: Attack, index: int) -> None:
        self.attack = attack
        self.index = index
        self.timer: IDelayedCall | None = None
        self.hung_up = False

    def connectionMade(self) -> None:
        self.attack.made(self.index, self)
        self.begin()

    def begin(self) -> None:
        """What the connection sends first."""

    def send(self, data: bytes) -> None:
        self.attack.count("bytes_sent", len(data))
        self.transport.write(data)  # type: ignore[union-attr]

    def later(self, delay: float, call: Callable[[], None]) -> None:
        self.timer = self.attack.clock.callLater(delay, call)

    def hang_up(self) -> None:
        self.hung_up = True
        self.transport.loseConnection()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.ended()
        self.attack.lost(self.index, self.hung_up, self.pause())

    def ended(self) -> None:
        """Count what the connection came to."""

    def pause(self) -> float:
        """Seconds before the next connection in this one's place."""
        return RECONNECT_DELAY


class Slowloris(AttackProtocol):
    """A request whose headers never end: one byte of a header line every `--drip` seconds."""

    LINE = b"X-Slow: a\r\n"

    def begin(self) -> None:
        self.sent = 0
        self.send(b"POST /uplink HTTP/1.1\r\nHost: gateway\r\n")
        self.later(random.uniform(0, self.attack.args.drip), self.drip)

    def drip(self) -> None:
        self.send(self.LINE[self.sent % len(self.LINE) : self.sent % len(self.LINE) + 1])
        self.sent += 1
        self.later(self.attack.args.drip, self.drip)


class DollarStream(AttackProtocol):
    """An unbound downlink connection streaming `$` runs and broken frames at `--dollar-rate` bytes/s."""

    def begin(self) -> None:
        self.offset = 0
        self.paused = False
        self.transport.registerProducer(self, True)  # type: ignore[union-attr]
        self.later(0, self.tick)

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False

    def stopProducing(self) -> None:
        self.paused = True

    def tick(self) -> None:
        if not self.paused:
            size = max(1, int(self.attack.args.dollar_rate * TICK))
            repeats = (self.offset + size) // len(DOLLAR_JUNK) + 1
            self.send((DOLLAR_JUNK * repeats)[self.offset : self.offset + size])
            self.offset = (self.offset + size) % len(DOLLAR_JUNK)
        self.later(TICK, self.tick)


JUNK_SHAPES = ("huge-member", "declared-over", "chunked-over")
HUGE_MEMBERS = ("code", "oprNum", "token", "signature")


class JunkRequest(AttackProtocol):
    """One junk request: a huge member, a 300 MiB declared body, or a chunked body past the limit.

    The over-limit bodies are sent at `--body-rate` bytes/s up to `--over-bytes`,
    then the connection is dropped; the answer's status is counted as it comes.
    """

    def begin(self) -> None:
        serial = self.attack.next_serial()
        self.shape = JUNK_SHAPES[(serial - 1) % len(JUNK_SHAPES)]
        self.received = b""
        self.left = self.attack.args.over_bytes
        if self.shape == "huge-member":
            member = HUGE_MEMBERS[(serial - 1) // len(JUNK_SHAPES) % len(HUGE_MEMBERS)]
            body = huge_member_body(member, HUGE, f"junk-{os.getpid()}-{serial}")
            self.send(http_head(len(body)) + body)
            self.later(ANSWER_WAIT, self.hang_up)
        else:
            self.send(http_head(DECLARED if self.shape == "declared-over" else None))
            self.later(0, self.stream)

    def stream(self) -> None:
        size = min(self.left, max(1, int(self.attack.args.body_rate * TICK)))
        if size <= 0:
            self.later(self.attack.args.patience, self.hang_up)
            return
        self.left -= size
        body = b"x" * size
        self.send(body if self.shape == "declared-over" else b"%x\r\n%s\r\n" % (size, body))
        self.later(TICK, self.stream)

    def dataReceived(self, data: bytes) -> None:
        if len(self.received) < 64:
            self.received += data[:64]
        self.attack.count("bytes_received", len(data))

    def ended(self) -> None:
        status = self.received.split(b" ", 2)[1].decode(errors="replace") if b" " in self.received else "none"
        self.attack.count(f"{self.shape} {status}")

    def pause(self) -> float:
        return float(self.attack.args.pause)


class LoginFlood(AttackProtocol):
    """A wrong-password login to P002 or an unknown account; hangs up unanswered after `--patience`."""

    def begin(self) -> None:
        serial = self.attack.next_serial()
        username = "lot002" if serial % 2 else f"guess{serial}"
        body = login_body(username, f"wrong-{serial}", f"flood-{os.getpid()}-{serial}")
        self.received = b""
        self.send(http_head(len(body)) + body)
        self.later(self.attack.args.patience, self.hang_up)

    def dataReceived(self, data: bytes) -> None:
        self.received += data
        found = self.received.find(b'"resultCode":"')
        if found >= 0 and len(self.received) >= found + 18:
            code = self.received[found + 14 : found + 18].decode(errors="replace")
            self.attack.count(f"answered {code}")
            self.hang_up()

    def ended(self) -> None:
        if b'"resultCode":"' not in self.received:
            self.attack.count("abandoned" if self.hung_up else "cut unanswered")

    def pause(self) -> float:
        return float(self.attack.args.flood_pause)


PROTOCOLS: dict[str, type[AttackProtocol]] = {
    "slowloris": Slowloris,
    "dollar": DollarStream,
    "junk": JunkRequest,
    "flood": LoginFlood,
}


def attack_arguments(parser: argparse.ArgumentParser) -> None:
    """The attacks' knobs, shared by the benchmark (which passes them on) and an attack process."""
    parser.add_argument("--per-peer", type=int, default=32, help="attack connections per source address")
    parser.add_argument("--drip", type=float, default=3.0, help="slowloris: seconds between header bytes")
    parser.add_argument("--dollar-rate", type=int, default=256 * 1024, help="$ stream: bytes/s a connection")
    parser.add_argument(
        "--over-bytes", type=int, default=20 * 2**20, help="junk: bytes of an over-limit body"
    )
    parser.add_argument("--body-rate", type=int, default=8 * 2**20, help="junk: bytes/s of such a body")
    parser.add_argument(
        "--pause", type=float, default=1.0, help="junk: seconds between a connection's requests"
    )
    parser.add_argument("--patience", type=float, default=2.0, help="flood: seconds before hanging up")
    parser.add_argument(
        "--flood-pause", type=float, default=0.5, help="flood: seconds between a connection's logins"
    )
    parser.add_argument("--attack-nice", type=int, default=10, help="niceness of the attack processes")


def run_attack(argv: list[str]) -> None:
    """One attack process: run KIND until --seconds, then print its counters as one JSON line."""
    parser = argparse.ArgumentParser(prog="bench.hostile attack")
    parser.add_argument("kind", choices=KINDS)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--connections", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    attack_arguments(parser)
    args = parser.parse_args(argv)
    os.nice(args.attack_nice)
    from twisted.internet import reactor

    attack = Attack(reactor, args)

    def stop(*_: object) -> None:
        if attack.stopping:
            return
        sys.stdout.write(json.dumps(attack.stop()) + "\n")
        sys.stdout.flush()
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    run_child(reactor, attack.start, stop, args.seconds)


@contextmanager
def attacks(
    ports: dict[str, int], connections: dict[str, int], seconds: float, args: argparse.Namespace
) -> Iterator[dict[str, dict[str, Any]]]:
    """The attack processes, one a kind with connections; their counters filled in once they stop."""
    shared = [
        f"--per-peer={args.per_peer}",
        f"--drip={args.drip}",
        f"--dollar-rate={args.dollar_rate}",
        f"--over-bytes={args.over_bytes}",
        f"--body-rate={args.body_rate}",
        f"--pause={args.pause}",
        f"--patience={args.patience}",
        f"--flood-pause={args.flood_pause}",
        f"--attack-nice={args.attack_nice}",
    ]
    processes: dict[str, subprocess.Popen[str]] = {}
    for kind in KINDS:
        if connections[kind] > 0:
            command = [sys.executable, "-m", "bench.hostile", "attack", kind, f"--port={ports[kind]}"]
            command += [f"--connections={connections[kind]}", f"--seconds={seconds}", *shared]
            processes[kind] = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV)
    reports: dict[str, dict[str, Any]] = {}
    try:
        yield reports
    finally:
        for kind, process in processes.items():
            try:
                out, _ = process.communicate(timeout=seconds + 30)
            except subprocess.TimeoutExpired:
                process.terminate()
                out, _ = process.communicate()
            lines = out.strip().splitlines()
            reports[kind] = json.loads(lines[-1]) if lines else {"kind": kind, "error": process.returncode}


# --- the honest lot, and the gateway's process ---------------------------------------------------


class Phase:
    """The benchmark's current phase, read by the threads that tag their samples with it."""

    def __init__(self) -> None:
        self.name = "warm-up"


def percentile(values: Iterable[float], share: float) -> float:
    """The nearest-rank percentile `share` (0-1) of `values`; 0 when there are none."""
    ordered = sorted(values)
    if not ordered:
        return 0.0
    rank = max(1, -(-len(ordered) * share // 1))
    return ordered[int(rank) - 1]


class Background:
    """A thread of the benchmark's that samples until the `with` block it is entered by ends."""

    def __init__(self) -> None:
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        """Sample until `stopping` is set."""

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stopping.set()
        self.thread.join()


class HonestLot(Background):
    """P001 posting signed carIns at `rate` a second, each on a new connection, until stopped."""

    def __init__(self, port: int, token: str, rate: float, phase: Phase) -> None:
        self.port, self.token, self.rate, self.phase = port, token, rate, phase
        self.samples: list[tuple[str, float, str]] = []  # (phase, ms, outcome)
        super().__init__()
        data = compact(CAR_IN)
        self.head = json.dumps({"token": token, "code": "carIn"})[:-1] + ',"oprNum":"h'
        self.tail = '","signature":"%s","data":%s}' % (sign(data, token, HONEST_SECRET), data)

    def body(self, serial: int) -> bytes:
        return b"param=" + urllib.parse.quote(self.head + str(serial) + self.tail, safe="").encode()

    def run(self) -> None:
        due, serial = time.monotonic(), 0
        while not self.stopping.is_set():
            serial += 1
            phase = self.phase.name
            started = time.monotonic()
            outcome = self.one(self.body(serial))
            self.samples.append((phase, (time.monotonic() - started) * 1000, outcome))
            due = max(due + 1 / self.rate, time.monotonic())  # late: the next goes at once, not a burst
            self.stopping.wait(max(0.0, due - time.monotonic()))

    def one(self, body: bytes) -> str:
        """Post one carIn on a new connection: "ok", "connect", "timeout", or what came back."""
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            try:
                connection.connect()
            except OSError:
                return "connect"
            head = {"Content-Type": "application/x-www-form-urlencoded", "Connection": "close"}
            connection.request("POST", "/uplink", body, head)
            response = connection.getresponse()
            text = response.read()
            if response.status != 200:
                return f"http {response.status}"
            code = json.loads(text).get("resultCode")
            return "ok" if code == "0000" else f"answer {code}"
        except TimeoutError:
            return "timeout"
        except (OSError, http.client.HTTPException, ValueError) as error:
            return f"error {type(error).__name__}"
        finally:
            connection.close()


class LoginProbe(Background):
    """An honest login of P003 every `interval` seconds: (phase, ms, answer)."""

    def __init__(self, port: int, interval: float, phase: Phase) -> None:
        self.port, self.interval, self.phase = port, interval, phase
        self.samples: list[tuple[str, float, str]] = []
        super().__init__()

    def run(self) -> None:
        serial = 0
        while not self.stopping.wait(self.interval):
            serial += 1
            phase, started = self.phase.name, time.monotonic()
            data = {"parkUserName": "lot003", "parkUserPwd": BENCH_PASSWORD}
            envelope = {
                "token": "",
                "code": "login",
                "oprNum": f"probe-{serial}",
                "signature": "",
                "data": data,
            }
            envelope["signature"] = sign(compact(data), "", "")
            try:
                outcome = str(post(self.port, envelope, timeout=30)["resultCode"])
            except (OSError, ValueError) as error:
                outcome = f"error {type(error).__name__}"
            self.samples.append((phase, (time.monotonic() - started) * 1000, outcome))


def post(port: int, envelope: dict[str, Any], timeout: float = 10) -> dict[str, Any]:
    """Post `envelope` as a form on a new connection; the answer's envelope."""
    body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/uplink", data=body, timeout=timeout) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def fd_count(pid: int) -> int:
    """How many file descriptors process `pid` has open."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_limit(pid: int) -> int:
    """Process `pid`'s soft limit of open files."""
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return 0


def memory(smaps: str) -> tuple[int, int]:
    """Resident bytes in all, and in the mappings Argon2id works in, from one read of /proc/PID/smaps.

    libsodium maps each check's memory on its own (`mmap`, 64 MiB at the interactive
    limits `cpmictl passwd` uses) and unmaps it after: an anonymous read-write mapping
    of 64 MiB, which the kernel may merge with its neighbours (another check's, or a
    smaller one). So each anonymous read-write mapping of 64 MiB or more counts as
    Argon2id's for its whole 64 MiBs, up to what of it is resident. Both figures come
    from the one read, or a check ending between two reads would show as 64 MiB of
    other memory.
    """
    total, argon2, whole, anonymous = 0, 0, 0, False
    for line in smaps.splitlines():
        first = line.split()
        if MAPPING.match(line):
            anonymous = first[1] == "rw-p" and len(first) == 5
        elif first[0] == "Size:":
            whole = int(first[1]) // ARGON2_KIB * ARGON2_KIB if anonymous else 0
        elif first[0] == "Rss:":
            kib = int(first[1])
            total += kib * 1024
            argon2 += min(kib, whole) * 1024
            whole = 0
    return total, argon2


WORKER_KINDS = {"gateway.lots.bodies": "body", "gateway.lots.passwordworker": "password"}


def children(pid: int) -> list[int]:
    """The process ids of process `pid`'s children (the gateway's workers)."""
    try:
        return [int(child) for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def worker_kind(cmdline: bytes) -> str:
    """Which worker a child is, from its /proc/PID/cmdline: "body", "password" or "other"."""
    arguments = cmdline.split(b"\0")
    for module, kind in WORKER_KINDS.items():
        if module.encode() in arguments:
            return kind
    return "other"


def children_rss(pid: int) -> dict[str, int]:
    """Resident bytes of process `pid`'s children, by kind of worker (`worker_kind`)."""
    total = {"body": 0, "password": 0, "other": 0}
    for child in children(pid):
        try:
            status = Path(f"/proc/{child}/status").read_text()
            kind = worker_kind(Path(f"/proc/{child}/cmdline").read_bytes())
        except OSError:
            continue  # it ended between the reads
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total[kind] += int(line.split()[1]) * 1024
    return total


def children_cpu_seconds(pid: int) -> float:
    """CPU time so far of process `pid`'s children: those alive, and those it has reaped."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    total = (int(fields[13]) + int(fields[14])) / ticks
    for child in children(pid):
        try:
            total += cpu_seconds(child)
        except OSError:
            continue
    return total


def smaps(pid: int) -> str:
    """The text of /proc/PID/smaps."""
    return Path(f"/proc/{pid}/smaps").read_text()


class Sample:
    """One sample of the gateway's memory and fds: its own RSS and Argon2id's part of it, its open
    fds, and the RSS of its children (its workers: processes of their own), by kind."""

    __slots__ = ("argon2", "bodies", "fds", "gateway", "others", "passwords", "phase")

    def __init__(self, phase: str, gateway: int, argon2: int, fds: int, workers: dict[str, int]) -> None:
        self.phase, self.gateway, self.argon2, self.fds = phase, gateway, argon2, fds
        self.bodies, self.passwords, self.others = workers["body"], workers["password"], workers["other"]

    @property
    def total(self) -> int:
        """The gateway and every child of it: what the machine holds for it."""
        return self.gateway + self.bodies + self.passwords + self.others


def sample(pid: int, phase: str) -> Sample:
    """The gateway `pid`'s memory and fds now."""
    rss, argon2 = memory(smaps(pid))
    return Sample(phase, rss, argon2, fd_count(pid), children_rss(pid))


class Sampler(Background):
    """A `Sample` of the gateway every 0.2 s, tagged with the phase."""

    def __init__(self, pid: int, phase: Phase) -> None:
        self.pid, self.phase = pid, phase
        self.samples: list[Sample] = []
        super().__init__()

    def run(self) -> None:
        while not self.stopping.wait(0.2):
            try:
                self.samples.append(sample(self.pid, self.phase.name))
            except OSError:
                return


def memory_figures(samples: list[Sample], after: Sample) -> dict[str, float]:
    """RSS in MiB, quiet (the median) and at the peak under attack, of the gateway and its workers in
    all (the target's figure) and of each part; the growth; what is held after the attack."""
    quiet = [each for each in samples if each.phase == "quiet"]
    under = [each for each in samples if each.phase in ("ramp", "attack")] or quiet

    def mib(value: float) -> float:
        return round(value / 2**20, 1)

    figures: dict[str, float] = {}
    for name in ("total", "gateway", "passwords", "bodies"):
        figures[f"rss_{name}_quiet_mib"] = mib(percentile((getattr(each, name) for each in quiet), 0.5))
        figures[f"rss_{name}_peak_mib"] = mib(max((getattr(each, name) for each in under), default=0))
    figures["argon2_in_gateway_peak_mib"] = mib(max((each.argon2 for each in under), default=0))
    figures["rss_after_mib"] = mib(after.total)
    figures["rss_growth_mib"] = round(figures["rss_total_peak_mib"] - figures["rss_total_quiet_mib"], 1)
    figures["rss_retained_mib"] = round(figures["rss_after_mib"] - figures["rss_total_quiet_mib"], 1)
    return figures


def latency(samples: list[tuple[str, float, str]], phase: str) -> dict[str, Any]:
    """p50, p99 and max of the successful samples of `phase`, and what the others came to."""
    ok = [ms for name, ms, outcome in samples if name == phase and outcome == "ok"]
    failures: dict[str, int] = {}
    for name, _, outcome in samples:
        if name == phase and outcome != "ok":
            failures[outcome] = failures.get(outcome, 0) + 1
    return {
        "requests": len(ok) + sum(failures.values()),
        "p50_ms": round(percentile(ok, 0.50), 2),
        "p99_ms": round(percentile(ok, 0.99), 2),
        "max_ms": round(max(ok, default=0.0), 2),
        "failures": failures,
    }


def assess(figures: dict[str, Any]) -> dict[str, bool]:
    """Which targets the figures meet: the p99 ratio, the RSS growth, no fd exhaustion."""
    return {
        "p99_ratio": figures["p99_ratio"] <= RATIO_TARGET,
        "rss": figures["rss_growth_mib"] <= RSS_TARGET_MIB,
        "fds": (
            figures["fds_peak"] < figures["fds_limit"]
            and figures["honest_connect_failures"] == 0
            and figures["emfile_log_lines"] == 0
        ),
    }


def log_files(work: Path) -> list[Path]:
    """The gateway's log in `work`, with the files twistd rotated it into."""
    return sorted(work.glob("twistd.log*"))


def log_lines(work: Path, needle: str) -> int:
    """How many lines of the gateway's logs hold `needle` (grep: they may be gigabytes)."""
    command = ["grep", "-c", "-h", "-F", needle, *map(str, log_files(work))]
    found = subprocess.run(command, capture_output=True, text=True)
    return sum(int(count) for count in found.stdout.split())


def log_size(work: Path) -> int:
    """Bytes in the gateway's logs, rotated ones included."""
    return sum(path.stat().st_size for path in log_files(work))


def settings_toml(settings: list[str]) -> str:
    """TOML tables from `--set SECTION.KEY=VALUE` items (VALUE as TOML): `uplink.max_body_bytes=65536`."""
    tables: dict[str, list[str]] = {}
    for item in settings:
        name, equals, value = item.partition("=")
        section, dot, key = name.strip().partition(".")
        if not (equals and dot and section and key and value.strip()):
            raise SystemExit(f"--set {item!r}: expected SECTION.KEY=VALUE")
        if section in ("gateway", "listen", "journal", "lot"):
            raise SystemExit(f"--set {item!r}: the benchmark sets [{section}] itself")
        tables.setdefault(section, []).append(f"{key.strip()} = {value.strip()}")
    return "".join(f"[{section}]\n" + "\n".join(lines) + "\n" for section, lines in tables.items())


def gateway_config(work: Path, uplink: int, downlink: int, api: int, settings: list[str]) -> str:
    """The gateway's configuration: loopback ports, fsync "always", P001-P003, and the `--set` tables."""
    real = nacl.pwhash.argon2id.str(
        REAL_PASSWORD.encode(),
        opslimit=nacl.pwhash.argon2id.OPSLIMIT_INTERACTIVE,
        memlimit=nacl.pwhash.argon2id.MEMLIMIT_INTERACTIVE,
    ).decode()
    return (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{uplink}:interface=127.0.0.1"\n'
        f'downlink = "tcp:{downlink}:interface=127.0.0.1"\n'
        f'api = "tcp:{api}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "always"\n'
        + settings_toml(settings)
        + f'[[lot]]\npark_code = "P001"\nusername = "lot001"\npassword = "{CHEAP_HASH}"\n'
        f'secret = "{HONEST_SECRET}"\n'
        f'[[lot]]\npark_code = "P002"\nusername = "lot002"\npassword = "{real}"\n'
        f'[[lot]]\npark_code = "P003"\nusername = "lot003"\npassword = "{CHEAP_HASH}"\n'
    )


def main() -> None:
    if sys.argv[1:2] == ["attack"]:
        run_attack(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a few seconds, a few connections (a smoke run)")
    parser.add_argument("--rate", type=float, default=40.0, help="the honest lot's carIns a second")
    parser.add_argument("--quiet", type=float, help="seconds measured quiet (30; quick 3)")
    parser.add_argument("--attack", type=float, help="seconds measured under attack (60; quick 5)")
    parser.add_argument("--ramp", type=float, help="seconds the attacks run before measuring (5; quick 1)")
    parser.add_argument("--slowloris", type=int, help="slowloris connections (800; quick 40)")
    parser.add_argument("--dollar", type=int, help="$ stream connections (8; quick 2)")
    parser.add_argument("--junk", type=int, help="junk request connections (12; quick 2)")
    parser.add_argument("--flood", type=int, help="login flood connections (180; quick 8)")
    parser.add_argument("--probe", type=float, help="seconds between honest logins of P003 (5; quick 1)")
    parser.add_argument("--again", type=float, help="seconds measured quiet after the attack (15; quick 2)")
    parser.add_argument(
        "--cycles",
        type=int,
        default=1,
        help="alternate this many quiet and attack windows (splitting --quiet and --attack), so that"
        " the machine's own drift falls on both alike",
    )
    parser.add_argument("--profile", metavar="FILE", help="py-spy the gateway under attack")
    parser.add_argument("--keep", action="store_true", help="keep the gateway's directory (log, journal)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="a gateway setting to measure with (VALUE as TOML), e.g. uplink.max_body_bytes=1048576",
    )
    parser.add_argument("--stop-wait", type=float, default=30.0, help="seconds a stop may take before kill")
    attack_arguments(parser)
    args = parser.parse_args()
    defaults = (3, 5, 1, 40, 2, 2, 8, 1, 2) if args.quick else (30, 60, 5, 800, 8, 12, 180, 5, 15)
    names = ("quiet", "attack", "ramp", "slowloris", "dollar", "junk", "flood", "probe", "again")
    for name, default in zip(names, defaults, strict=True):
        if getattr(args, name) is None:
            setattr(args, name, default)
    connections = {kind: getattr(args, kind) for kind in KINDS}
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-hostile-"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    phase = Phase()
    try:
        with gateway(work, gateway_config(work, uplink, downlink, api, args.set), uplink) as server:
            wait_for(downlink, server)
            figures = measure(server.pid, work, uplink, downlink, connections, phase, args)
            figures.update(stop(server, args.stop_wait))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    report(figures)
    print(f"wrote {write_result('hostile-quick' if args.quick else 'hostile', figures)}")


class CpuMark:
    """CPU time so far: the machine's busy and total jiffies, the gateway's threads' seconds."""

    def __init__(
        self, when: float, busy: int, total: int, process: float, reactor: float, workers: float
    ) -> None:
        self.when, self.busy, self.total, self.process, self.reactor = when, busy, total, process, reactor
        self.workers = workers

    @classmethod
    def now(cls, pid: int) -> CpuMark:
        fields = [int(field) for field in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        idle = fields[3] + fields[4]
        # The process's time counts the threads that have ended (pool threads come and go).
        reactor = thread_cpu_seconds(pid)["main"]
        workers = children_cpu_seconds(pid)
        return cls(time.monotonic(), sum(fields) - idle, sum(fields), cpu_seconds(pid), reactor, workers)

    def share(self, later: CpuMark) -> dict[str, float]:
        """From this mark to `later`: the machine's busy cores, the gateway's reactor and other threads."""
        seconds = later.when - self.when
        busy = (later.busy - self.busy) / max(later.total - self.total, 1)
        reactor = later.reactor - self.reactor
        others = later.process - self.process - reactor
        return {
            "machine_busy_cores": round(busy * CORES, 2),
            "reactor": round(reactor / seconds, 2),
            "other_threads": round(others / seconds, 2),
            "workers": round((later.workers - self.workers) / seconds, 2),
        }


def mean_share(windows: list[tuple[CpuMark, CpuMark]]) -> dict[str, float]:
    """`CpuMark.share` over equal windows, averaged."""
    shares = [first.share(last) for first, last in windows]
    return {key: round(sum(share[key] for share in shares) / len(shares), 2) for key in shares[0]}


def merged_reports(reports: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The attack processes' counters of every cycle, summed (a cycle's processes count anew)."""
    merged: dict[str, dict[str, Any]] = {}
    for report in reports:
        for kind, counters in report.items():
            into = merged.setdefault(kind, {})
            for name, value in counters.items():
                if isinstance(value, int) and name != "connections":
                    into[name] = into.get(name, 0) + value
                else:
                    into[name] = value
    return merged


def stop(server: subprocess.Popen[bytes], seconds: float) -> dict[str, Any]:
    """Stop the gateway (SIGTERM), killing it after `seconds`: how long it took, and whether killed.

    Work the attack left queued (password checks of clients long gone) can hold a stop up.
    """
    started = time.monotonic()
    server.terminate()
    try:
        server.wait(timeout=seconds)
        killed = False
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()
        killed = True
    return {"stop_seconds": round(time.monotonic() - started, 1), "stop_killed": killed}


def measure(
    pid: int,
    work: Path,
    uplink: int,
    downlink: int,
    connections: dict[str, int],
    phase: Phase,
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Run the phases against the gateway `pid`: warm-up, quiet, ramp, attack, after; the figures."""
    login = {"parkUserName": "lot001", "parkUserPwd": BENCH_PASSWORD}
    envelope = {"token": "", "code": "login", "oprNum": "login-1", "signature": "", "data": login}
    envelope["signature"] = sign(compact(login), "", HONEST_SECRET)
    token = post(uplink, envelope)["data"]["token"]
    ports = {"slowloris": uplink, "dollar": downlink, "junk": uplink, "flood": uplink}
    with Sampler(pid, phase) as sampler, HonestLot(uplink, token, args.rate, phase) as honest:
        with LoginProbe(uplink, args.probe, phase) as probe:
            time.sleep(2)
            quiet_marks: list[tuple[CpuMark, CpuMark]] = []
            attack_marks: list[tuple[CpuMark, CpuMark]] = []
            cycle_reports: list[dict[str, dict[str, Any]]] = []
            log_before = log_size(work)
            quiet_each, attack_each = args.quiet / args.cycles, args.attack / args.cycles
            for cycle in range(args.cycles):
                if cycle:  # what the last attack left queued drains before the next quiet window
                    time.sleep(max(2.0, args.ramp))
                phase.name = "quiet"
                mark = CpuMark.now(pid)
                time.sleep(quiet_each)
                phase.name = "ramp"
                quiet_marks.append((mark, CpuMark.now(pid)))
                with attacks(ports, connections, args.ramp + attack_each, args) as reports:
                    time.sleep(args.ramp)
                    phase.name = "attack"
                    mark = CpuMark.now(pid)
                    profiling = args.profile and not cycle
                    profiler = py_spy(pid, args.profile, attack_each) if profiling else None
                    time.sleep(attack_each)
                    phase.name = "after"
                    attack_marks.append((mark, CpuMark.now(pid)))
                    if profiler is not None:
                        profiler.wait()
                cycle_reports.append(reports)
            time.sleep(max(2.0, args.ramp))
            log_growth = log_size(work) - log_before
            after = sample(pid, "after")
            phase.name = "again"
            again_mark = CpuMark.now(pid)
            time.sleep(args.again)
            again_marks = [(again_mark, CpuMark.now(pid))]
    quiet, attacked = latency(honest.samples, "quiet"), latency(honest.samples, "attack")
    phases = ("quiet", "ramp", "attack", "after", "again")
    failures = {name: latency(honest.samples, name)["failures"] for name in phases}
    under = [each for each in sampler.samples if each.phase in ("ramp", "attack")]
    figures: dict[str, Any] = {
        "quick": args.quick,
        "settings": args.set,
        "rate": args.rate,
        "seconds": {"quiet": args.quiet, "ramp": args.ramp, "attack": args.attack},
        "connections": connections,
        "quiet": quiet,
        "attacked": attacked,
        "again": latency(honest.samples, "again"),
        "failures": failures,
        "cycles": args.cycles,
        "cpu": {
            "quiet": mean_share(quiet_marks),
            "attack": mean_share(attack_marks),
            "again": mean_share(again_marks),
        },
        "p99_ratio": round(attacked["p99_ms"] / max(quiet["p99_ms"], 0.001), 2),
        "p50_ratio": round(attacked["p50_ms"] / max(quiet["p50_ms"], 0.001), 2),
        # Quiet against quiet: how far the machine alone moved the p99 within the run.
        "p99_again_ratio": round(latency(honest.samples, "again")["p99_ms"] / max(quiet["p99_ms"], 0.001), 2),
        **memory_figures(sampler.samples, after),
        "fds_quiet": max((each.fds for each in sampler.samples if each.phase == "quiet"), default=0),
        "fds_peak": max((each.fds for each in under), default=0),
        "fds_limit": fd_limit(pid),
        "honest_connect_failures": sum(1 for _, _, outcome in honest.samples if outcome == "connect"),
        "emfile_log_lines": log_lines(work, "EMFILE") + log_lines(work, "Too many open files"),
        "log_growth_mib": round(log_growth / 2**20, 1),
        "login_probe": {
            name: [(round(ms), outcome) for phase_name, ms, outcome in probe.samples if phase_name == name]
            for name in ("quiet", "attack")
        },
        "attacks": merged_reports(cycle_reports),
    }
    figures["targets"] = {"p99_ratio": RATIO_TARGET, "rss_growth_mib": RSS_TARGET_MIB}
    figures["met"] = assess(figures)
    return figures


def report(figures: dict[str, Any]) -> None:
    """Print the table of figures, and what each attack did."""
    quiet, attacked, met = figures["quiet"], figures["attacked"], figures["met"]
    mark = {True: "yes", False: "NO"}
    total = sum(figures["connections"].values())
    fails = figures["failures"]
    rows = [
        (
            "attack connections",
            f"{total:,} ({', '.join(f'{k} {v}' for k, v in figures['connections'].items())})",
        ),
        ("quiet p50 / p99", f"{quiet['p50_ms']:.1f} / {quiet['p99_ms']:.1f} ms ({quiet['requests']} carIns)"),
        (
            "attacked p50 / p99",
            f"{attacked['p50_ms']:.1f} / {attacked['p99_ms']:.1f} ms ({attacked['requests']} carIns,"
            f" max {attacked['max_ms']:.0f} ms)",
        ),
        (
            "quiet again p50 / p99",
            f"{figures['again']['p50_ms']:.1f} / {figures['again']['p99_ms']:.1f} ms"
            f" ({figures['again']['requests']} carIns, after the attack)",
        ),
        ("p99 attacked / quiet", f"{figures['p99_ratio']:.2f} x  (target <= 3)  {mark[met['p99_ratio']]}"),
        ("p50 attacked / quiet", f"{figures['p50_ratio']:.2f} x"),
        ("p99 quiet again / quiet", f"{figures['p99_again_ratio']:.2f} x  (the machine's own drift)"),
        (
            "RSS, gateway + workers: quiet / peak / after",
            f"{figures['rss_total_quiet_mib']:.0f} / {figures['rss_total_peak_mib']:.0f}"
            f" / {figures['rss_after_mib']:.0f} MiB",
        ),
        ("RSS growth (peak)", f"{figures['rss_growth_mib']:+.1f} MiB  (target <= +64)  {mark[met['rss']]}"),
        *(
            (
                f"  {label}: quiet / peak",
                f"{figures[f'rss_{name}_quiet_mib']:.0f} / {figures[f'rss_{name}_peak_mib']:.0f} MiB",
            )
            for name, label in (
                ("gateway", "the gateway's own"),
                ("passwords", "password workers'"),
                ("bodies", "body workers'"),
            )
        ),
        ("  Argon2id in the gateway", f"{figures['argon2_in_gateway_peak_mib']:.0f} MiB at most"),
        (
            "open fds quiet / peak / limit",
            f"{figures['fds_quiet']:,} / {figures['fds_peak']:,} / {figures['fds_limit']:,}"
            f"  {mark[met['fds']]}",
        ),
        ("honest connect failures", f"{figures['honest_connect_failures']}"),
        ("honest failures", json.dumps(fails)),
        ("EMFILE in the log", f"{figures['emfile_log_lines']}"),
        ("log growth under attack", f"{figures['log_growth_mib']:.1f} MiB"),
        ("honest login (P003) quiet", _probe_text(figures["login_probe"]["quiet"])),
        ("honest login under attack", _probe_text(figures["login_probe"]["attack"])),
        *(
            (
                f"CPU {name}",
                f"reactor {c['reactor']:.0%}, gateway's other threads {c['other_threads']:.0%},"
                f" workers {c.get('workers', 0):.0%} of a core;"
                f" machine {c['machine_busy_cores']:.2f} of {CORES} cores busy",
            )
            for name, c in figures["cpu"].items()
        ),
        ("gateway's stop took", f"{figures['stop_seconds']:.1f} s" + (" (killed)" * figures["stop_killed"])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    for kind, counters in figures["attacks"].items():
        print(f"  {kind}: " + ", ".join(f"{k} {v}" for k, v in counters.items() if k != "kind"))


def _probe_text(samples: list[tuple[int, str]]) -> str:
    if not samples:
        return "none"
    times = sorted(ms for ms, _ in samples)
    answers = sorted({answer for _, answer in samples})
    return f"{len(samples)} logins, median {times[len(times) // 2]} ms, max {times[-1]} ms, answers {answers}"


if __name__ == "__main__":
    main()

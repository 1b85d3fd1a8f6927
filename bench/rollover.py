"""The month's rollover: 10,000 lots whose tokens expire together log in again, as real lots do.

Usage: python -m bench.rollover [--lots N] [--processes P] [--lead S] [--spread S] [--rate R]

Every token expires at 00:00 on the 1st in the gateway's zone (B.3.6), so at
that instant every lot has to log in again. The gateway runs under twistd
(journal.fsync = "always", the lots' Argon2id hashes at the least cost, as in
every benchmark), its clock set `--lead` seconds before the next month's turn
(`BENCH_PRELUDE` shifts `time.time` in its process alone; nothing else of it
is changed). N lots bind from P processes of their own (`--processes`), each
lot a TCP downlink connection logged in with its password, as `bench.lotfleet`
binds them. Then the month turns, and each lot, as a real one does:

- heartbeats every `--interval` seconds (30) from its bind, its phase at
  random, as real lots do (a lot that says nothing gets the gateway's own
  heartbeat after `write_idle`, 60 s: a fleet that bound in the same few
  seconds and never spoke would be sent 10,000 of them together, which is
  how the rollover met the gateway before 2026-12-05, not how lots behave);
- finds its token expired at its next request (B.3.6), its heartbeat: the
  next heartbeats fall at random over `--interval` seconds after the turn,
  or over `--spread` seconds when that is shorter (`--spread 1` is every
  lot's clock saying 00:00 at once); it is answered 9000 and cut off;
- connects again at once and logs in with its password; answered 9999
  ("busy, retry") or cut off, it waits 1-3 s (at random) and tries again;
- once bound, posts one signed carIn over HTTP with its new token, and counts
  as uploading again when that is answered 0000.

Meanwhile a probe lot (its token renewed just after the turn) posts signed
carIns at `--rate` a second, each on a new connection, and its latency is
taken over the whole rollover. Beside it, from the same process at the same
rate, the floor probe posts the same way to a bare twisted.web resource
answering a constant (`bench.uplink`'s baseline): what this machine does to
the shortest such request meanwhile, so that bench.summary can tell a
machine that holds every process back from a slow gateway.

Target (issue 25): every lot bound and uploading again within 60 s of the
turn, the probe's p99 <= 25 ms. Also reported: how many Argon2id checks the
gateway ran in the rollover (the passwords that passed before are
remembered, so a repeated login costs no Argon2id), busy answers, and the
gateway's CPU. Writes
bench/results/rollover.json.

`bench.restart_storm` uses the same lots against a restarted gateway.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from twisted.internet.interfaces import IAddress, IConnector, IDelayedCall
from twisted.internet.protocol import ClientFactory, Protocol, connectionDone
from twisted.python.failure import Failure

from bench.harness import (
    BENCH_PASSWORD,
    ENV,
    cpu_seconds,
    free_port,
    metric,
    py_spy,
    run_child,
    twistd_command,
    wait_for,
    write_result,
)
from bench.hostile import HonestLot, Phase, percentile, post
from bench.lotfleet import ANSWERS, SECRET, emit, gateway_config, username
from bench.uplink import BARE, CAR_IN
from gateway.limits import BACKLOG
from gateway.protocol.envelope import response_text, signed_request_text
from gateway.protocol.framing import FrameDecoder, FrameTooLarge, encode_json_frame
from gateway.protocol.results import Result
from gateway.protocol.signing import compact, sign
from gateway.protocol.times import end_of_month

UPLOADED_TARGET_S = 60.0
P99_TARGET_MS = 25.0
FLOOR = "a bare twisted.web resource answering a constant, probed the same way at the same time"

CLOCK_PRELUDE = (
    "import time as _bench_time\n"
    "_bench_real, _bench_offset = _bench_time.time, float({offset!r})\n"
    "_bench_time.time = lambda: _bench_real() + _bench_offset\n"
)
# `--stalls`: inside the gateway, each garbage collection's pause (gc.callbacks) and the
# reactor's lag (a thread asks it for a callFromThread every 10 ms and times the answer: how
# long the reactor's turn in progress still held it), each fsync's time (os.fsync wrapped before
# the journal takes it), on CLOCK_MONOTONIC (the same in every
# process), written as JSON to the file at exit only (a dump holds the GIL: the probe would see it).
STALLS_PRELUDE = """
import gc as _s_gc, json as _s_json, sys as _s_sys, threading as _s_th, time as _s_time
_s_path, _s_gc_events, _s_lag, _s_start = {path!r}, [], [], [0.0]
def _s_gc_cb(phase, info):
    if phase == "start":
        _s_start[0] = _s_time.monotonic()
    else:
        _s_gc_events.append((_s_start[0], info["generation"], _s_time.monotonic() - _s_start[0]))
_s_gc.callbacks.append(_s_gc_cb)
import os as _s_os
_s_fsyncs, _s_real_fsync = [], _s_os.fsync
def _s_fsync(fd):
    began = _s_time.monotonic()
    try:
        _s_real_fsync(fd)
    finally:
        _s_fsyncs.append((began, _s_time.monotonic() - began))
_s_os.fsync = _s_fsync
def _s_dump():
    with open(_s_path, "w") as f:
        _s_json.dump({{"gc": list(_s_gc_events), "lag": list(_s_lag), "fsync": list(_s_fsyncs)}}, f)
def _s_watch():
    while "twisted.internet.reactor" not in _s_sys.modules:
        _s_time.sleep(0.1)
    reactor = _s_sys.modules["twisted.internet.reactor"]
    while not getattr(reactor, "running", False):
        _s_time.sleep(0.1)
    reactor.callFromThread(reactor.addSystemEventTrigger, "after", "shutdown", _s_dump)
    while reactor.running:
        sent, done = _s_time.monotonic(), _s_th.Event()
        reactor.callFromThread(done.set)
        done.wait(30)
        _s_lag.append((sent, _s_time.monotonic() - sent))
        _s_time.sleep(0.01)
_s_th.Thread(target=_s_watch, daemon=True).start()
import atexit as _s_atexit
_s_atexit.register(_s_dump)
"""
COUNTERS = (
    "connects",
    "connect_failures",
    "logins",
    "busy",
    "login_failures",
    "binds_by_token",
    "token_refusals",
    "expired",
    "lost",
    "uploads",
    "upload_failures",
    "bad_frames",
)


# --- the lots' processes ---------------------------------------------------------------


class HerdLot(Protocol):
    """One lot's downlink connection: binds by its token if it has one, by its password if not."""

    def __init__(self, herd: Herd, index: int) -> None:
        self.herd = herd
        self.index = index
        self.decoder = FrameDecoder(1 << 16)
        self.bound = False
        # The lot's next heartbeat, while it is bound.
        self.beat: IDelayedCall | None = None

    @property
    def token(self) -> str:
        return self.herd.tokens[self.index - self.herd.first]

    def connectionMade(self) -> None:
        herd = self.herd
        herd.counters["connects"] += 1
        herd.lots[self.index - herd.first] = self
        if self.token:
            self.send(signed_request_text("heartbeat", herd.opr(), self.token, herd.secret, "{}"))
        else:
            herd.counters["logins"] += 1
            data = compact({"parkUserName": username(self.index), "parkUserPwd": herd.password})
            self.send(signed_request_text("login", herd.opr(), "", herd.secret, data))

    def send(self, text: str) -> None:
        self.transport.write(encode_json_frame(text))  # type: ignore[union-attr]

    def heartbeat(self) -> None:
        """The lot's regular heartbeat; the next one `interval` seconds later."""
        self.beat = None
        self.send(signed_request_text("heartbeat", self.herd.opr(), self.token, self.herd.secret, "{}"))
        self.heartbeat_in(self.herd.interval)

    def heartbeat_in(self, seconds: float) -> None:
        """Send the next heartbeat `seconds` from now (instead of when it was due)."""
        if self.beat is not None and self.beat.active():
            self.beat.cancel()
        self.beat = self.herd.reactor.callLater(seconds, self.heartbeat)

    def dataReceived(self, data: bytes) -> None:
        for payload in self.decoder.feed(data):
            if isinstance(payload, FrameTooLarge):
                self.herd.counters["bad_frames"] += 1
                self.transport.loseConnection()  # type: ignore[union-attr]
                return
            try:
                message = json.loads(payload)
            except ValueError:
                self.herd.counters["bad_frames"] += 1
                continue
            if not isinstance(message, dict):
                self.herd.counters["bad_frames"] += 1
            elif "resultCode" in message:
                self.answered(message)
            else:
                self.acked(message)

    def answered(self, message: dict[str, Any]) -> None:
        herd, code, result = self.herd, message.get("code"), message.get("resultCode")
        slot = self.index - herd.first
        if code == "login":
            if result == Result.OK.code and isinstance(message.get("data"), dict):
                herd.tokens[slot] = str(message["data"]["token"])
                self.became_bound()
            elif "busy" in str(message.get("resultMessage", "")):
                herd.counters["busy"] += 1  # the gateway cuts the connection: try again later
            else:
                herd.counters["login_failures"] += 1
        elif code == "heartbeat":
            if result == Result.OK.code:
                if not self.bound:
                    herd.counters["binds_by_token"] += 1
                    self.became_bound()
            else:
                # 9000: the token expired (or was replaced): the gateway cuts the connection;
                # the lot logs in again with its password.
                herd.counters["expired" if self.bound else "token_refusals"] += 1
                herd.tokens[slot] = ""
        else:
            herd.counters["bad_frames"] += 1

    def became_bound(self) -> None:
        if not self.bound:
            # The first heartbeat at random within the interval: a fleet's phases are spread.
            self.heartbeat_in(random.uniform(0, self.herd.interval))
        self.bound = True
        self.herd.lot_bound(self)

    def acked(self, message: dict[str, Any]) -> None:
        """An ACK (a command, or the gateway's heartbeat): REPLY at once, signed with its token."""
        herd = self.herd
        code, token, data = str(message.get("code")), str(message.get("token")), message.get("data")
        fields = ANSWERS.get(code)
        answer: dict[str, object] = {}
        if fields is not None and isinstance(data, dict):
            answer = {fields[0]: data.get(fields[0], ""), fields[1]: 1}
        text = response_text(
            code, str(message.get("oprNum")), Result.OK.code, Result.OK.text, answer, token, herd.secret
        )
        self.send(text)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.beat is not None and self.beat.active():
            self.beat.cancel()
        self.beat = None
        self.herd.lot_lost(self)


class Upload(Protocol):
    """One signed carIn posted over HTTP/1.1 on a new connection; its answer read at the close."""

    def __init__(self, herd: Herd, index: int) -> None:
        self.herd, self.index = herd, index
        self.received = bytearray()

    def connectionMade(self) -> None:
        herd = self.herd
        token = herd.tokens[self.index - herd.first]
        data = compact(CAR_IN)
        text = signed_request_text("carIn", herd.opr(), token, herd.secret, data)
        body = b"param=" + urllib.parse.quote(text, safe="").encode()
        head = (
            "POST /uplink HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        )
        self.transport.write(head.encode() + body)  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        _, _, body = bytes(self.received).partition(b"\r\n\r\n")
        try:
            ok = json.loads(body).get("resultCode") == Result.OK.code
        except ValueError:
            ok = False
        self.herd.uploaded(self.index, ok)


class _Factory(ClientFactory):
    noisy = False

    def __init__(self, herd: Herd, index: int, kind: type[Protocol]) -> None:
        self.herd, self.index, self.kind = herd, index, kind

    def buildProtocol(self, addr: IAddress) -> Protocol:
        return self.kind(self.herd, self.index)  # type: ignore[call-arg]

    def clientConnectionFailed(self, connector: IConnector, reason: Failure) -> None:
        if self.kind is Upload:
            self.herd.uploaded(self.index, False)
        else:
            self.herd.counters["connect_failures"] += 1
            self.herd.again(self.index, random.uniform(0.5, 1.5))


class Herd:
    """The lots of one process: bind, lose, bind again; the month's turn; uploads after it."""

    def __init__(self, reactor: Any, args: argparse.Namespace) -> None:
        self.reactor = reactor
        self.host, self.port, self.uplink = args.host, args.port, args.uplink
        self.password, self.secret = args.password, args.secret
        self.first, self.count = args.first, args.lots
        self.turn = args.turn
        self.spread = args.spread
        self.interval = args.interval
        self.tokens = [""] * self.count
        self.lots: list[HerdLot | None] = [None] * self.count
        self.bound = [False] * self.count
        self.bound_count = 0
        # After the turn: which lots have logged in again, and uploaded with their new token.
        self.renewed = [False] * self.count
        self.renewed_count = 0
        self.done = [False] * self.count
        self.done_count = 0
        self.emitted: set[str] = set()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.waiting = list(reversed(range(self.first, self.first + self.count)))
        self.connecting = 0
        self.connecting_limit = args.connecting
        self.turned = False
        self.serial = 0
        self.stopping = False

    def opr(self) -> str:
        self.serial += 1
        return f"h{os.getpid()}-{self.serial}"

    def start(self) -> None:
        self.connect_more()
        if self.turn:
            self.reactor.callLater(max(0.0, self.turn - time.time()), self.month_turns)

    def connect_more(self) -> None:
        while self.waiting and self.connecting < self.connecting_limit and not self.stopping:
            index = self.waiting.pop()
            self.connecting += 1
            self.reactor.connectTCP(self.host, self.port, _Factory(self, index, HerdLot), timeout=30)

    def again(self, index: int, delay: float) -> None:
        """Connect lot `index` again after `delay` seconds."""
        self.connecting -= 1

        def later() -> None:
            self.waiting.append(index)
            self.connect_more()

        if not self.stopping:
            self.reactor.callLater(delay, later)
        self.connect_more()

    def lot_bound(self, lot: HerdLot) -> None:
        slot = lot.index - self.first
        self.connecting -= 1
        if not self.bound[slot]:
            self.bound[slot] = True
            self.bound_count += 1
        if self.bound_count == self.count:
            self.once("bound")
            # A restart: every lot was cut off, and all are bound again.
            if not self.turn and self.counters["lost"] >= self.count:
                self.once("rebound")
        if self.turned and not self.renewed[slot]:
            self.renewed[slot] = True
            self.renewed_count += 1
            if self.renewed_count == self.count:
                self.once("rebound")
            self.upload(lot.index)
        self.connect_more()

    def once(self, event: str) -> None:
        """Report `event` (with the time and counters), the first time only."""
        if event not in self.emitted:
            self.emitted.add(event)
            emit({"event": event, "at": time.time(), **self.counters})

    def lot_lost(self, lot: HerdLot) -> None:
        slot = lot.index - self.first
        if self.lots[slot] is lot:
            self.lots[slot] = None
        if lot.bound:
            self.bound[slot] = False
            self.bound_count -= 1
            self.counters["lost"] += 1
            self.connecting += 1  # counted as connecting again from here
        if self.stopping:
            return
        if not lot.bound:
            delay = random.uniform(1.0, 3.0)  # refused, or busy: pace the next attempt
        elif not self.tokens[slot]:
            delay = random.uniform(0.0, 0.2)  # cut off for an expired token: log in again at once
        else:
            delay = random.uniform(0.5, 1.5)  # the gateway went away: try again soon
        self.again(lot.index, delay)

    def month_turns(self) -> None:
        """00:00 on the 1st: each bound lot's next heartbeat is due within its interval anyway;
        within `spread` seconds when that is shorter (the lots' clocks agreeing on 00:00)."""
        self.turned = True
        emit({"event": "turned", "at": time.time()})
        if self.spread >= self.interval:
            return
        for lot in self.lots:
            if lot is not None and lot.bound:
                lot.heartbeat_in(random.uniform(0, self.spread))

    def upload(self, index: int) -> None:
        self.reactor.connectTCP(self.host, self.uplink, _Factory(self, index, Upload), timeout=30)

    def uploaded(self, index: int, ok: bool) -> None:
        slot = index - self.first
        if self.done[slot]:
            return
        if not ok:
            self.counters["upload_failures"] += 1
            if not self.stopping:
                self.reactor.callLater(random.uniform(1.0, 3.0), self.upload, index)
            return
        self.counters["uploads"] += 1
        self.done[slot] = True
        self.done_count += 1
        if self.done_count == self.count:
            self.once("uploaded")

    def report(self, event: str) -> dict[str, Any]:
        return {
            "event": event,
            "at": time.time(),
            "bound": self.bound_count,
            "done": self.done_count,
            **self.counters,
        }


def run_herd(args: argparse.Namespace) -> None:
    """Run this process's lots until a signal or `--seconds`."""
    from twisted.internet import reactor

    herd = Herd(reactor, args)

    def status() -> None:
        emit(herd.report("status"))
        reactor.callLater(args.report, status)  # type: ignore[attr-defined]

    def stop(*_: object) -> None:
        if herd.stopping:
            return
        herd.stopping = True
        emit(herd.report("done"))
        reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]

    reactor.callLater(args.report, status)  # type: ignore[attr-defined]
    run_child(reactor, herd.start, stop, args.seconds)


# --- the benchmark's side ------------------------------------------------------------------


class Lots:
    """The lots' processes, their reports merged: when all are bound, bound again, uploaded."""

    def __init__(self, processes: list[subprocess.Popen[str]]) -> None:
        self.processes = processes
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.last: list[dict[str, Any]] = [{} for _ in processes]
        self.lock = threading.Lock()
        self.readers = [
            threading.Thread(target=self._read, args=(k, p.stdout), daemon=True)
            for k, p in enumerate(processes)
        ]
        for reader in self.readers:
            reader.start()

    def _read(self, k: int, stream: IO[str]) -> None:
        for line in stream:
            report = json.loads(line)
            with self.lock:
                if report["event"] in ("status", "done"):
                    self.last[k] = report
                else:
                    self.events.setdefault(report["event"], []).append(report)

    def wait(self, event: str, seconds: float) -> float | None:
        """Wait until every process has reported `event`; the latest time it was reported at, or None."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            with self.lock:
                reports = self.events.get(event, [])
                if len(reports) >= len(self.processes):
                    return max(float(r["at"]) for r in reports)
            if any(p.poll() is not None for p in self.processes):
                raise SystemExit(f"a lots' process exited: {[p.returncode for p in self.processes]}")
            time.sleep(0.1)
        return None

    def forget(self, event: str) -> None:
        with self.lock:
            self.events.pop(event, None)

    def counters(self) -> dict[str, int]:
        """The processes' latest counters, summed."""
        total: dict[str, int] = {}
        with self.lock:
            for report in self.last:
                for key, value in report.items():
                    if key not in ("event", "at") and isinstance(value, int):
                        total[key] = total.get(key, 0) + value
        return total

    def stop(self) -> dict[str, int]:
        for process in self.processes:
            if process.poll() is None:
                process.terminate()
        for process in self.processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        for reader in self.readers:
            reader.join(timeout=5)
        return self.counters()


@contextmanager
def lots(args: argparse.Namespace, downlink: int, uplink: int, turn: float = 0.0) -> Iterator[Lots]:
    """`args.lots` lots from `args.processes` processes on the gateway's ports; stopped on exit."""
    processes = []
    for k in range(args.processes):
        first = args.lots * k // args.processes
        count = args.lots * (k + 1) // args.processes - first
        command = [sys.executable, "-m", "bench.rollover", "--child", "--port", str(downlink)]
        command += ["--uplink", str(uplink), "--first", str(first), "--lots", str(count)]
        command += ["--turn", repr(turn), "--spread", str(args.spread), "--connecting", str(args.connecting)]
        command += ["--interval", str(args.interval)]
        processes.append(subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=ENV))
    running = Lots(processes)
    try:
        yield running
    finally:
        running.stop()


def start_gateway(work: Path, config: Path, prelude: str = "") -> subprocess.Popen[bytes]:
    """The gateway under twistd on `config`, logging into `work`; `prelude` runs first in its process."""
    command = twistd_command(config, work / "twistd.log")
    command[2] = prelude + command[2]  # python -c PRELUDE...
    return subprocess.Popen(command, env=ENV, cwd=work)


def listen_overflows() -> int:
    """The kernel's count of connections dropped on full accept queues (TcpExt ListenOverflows), all ports."""
    try:
        lines = Path("/proc/net/netstat").read_text().splitlines()
    except OSError:
        return 0
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            table = dict(zip(names.split()[1:], values.split()[1:], strict=False))
            return int(table.get("ListenOverflows", 0))
    return 0


def stop_gateway(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> str:
    """Stop the gateway with `sig`; SIGKILL if it has not stopped 30 s later. How it stopped.

    A gateway that does not stop is a bug (twistd's own SIGTERM handler once
    hung on the log file's lock, see gateway.reload.StopSignals): the result
    says so rather than the benchmark hanging.
    """
    if process.poll() is None:
        process.send_signal(sig)
    try:
        process.wait(timeout=30)
        return "stopped"
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return "killed after 30 s"


def probe_token(port: int, index: int) -> str:
    """Log the probe lot (lot `index`) in over HTTP; its token."""
    data = {"parkUserName": username(index), "parkUserPwd": BENCH_PASSWORD}
    envelope = {"token": "", "code": "login", "oprNum": f"probe-{time.time()}", "signature": "", "data": data}
    envelope["signature"] = sign(compact(data), "", SECRET)
    answer = post(port, envelope)
    if answer.get("resultCode") != Result.OK.code:
        raise SystemExit(f"the probe lot could not log in: {answer}")
    return str(answer["data"]["token"])


class Probe(HonestLot):
    """The probe lot's carIns, signed with the bench lots' secret."""

    def __init__(self, port: int, token: str, rate: float, phase: Phase) -> None:
        super().__init__(port, token, rate, phase)
        data = compact(CAR_IN)
        self.tail = '","signature":"%s","data":%s}' % (sign(data, token, SECRET), data)
        self.head = json.dumps({"token": token, "code": "carIn"})[:-1] + f',"oprNum":"p{time.time()}-'
        self.sent_at: list[float] = []  # when each sample's carIn was sent (this machine's clock)

    def one(self, body: bytes) -> str:
        self.sent_at.append(time.time())
        return super().one(body)


def latency(samples: list[tuple[str, float, str]]) -> dict[str, Any]:
    """p50, p99, max (ms) of the ok samples, and what the others were."""
    ok = [ms for _, ms, outcome in samples if outcome == "ok"]
    others: dict[str, int] = {}
    for _, _, outcome in samples:
        if outcome != "ok":
            others[outcome] = others.get(outcome, 0) + 1
    return {
        "count": len(samples),
        "p50_ms": round(statistics.median(ok), 2) if ok else 0.0,
        "p99_ms": round(percentile(ok, 0.99), 2),
        "max_ms": round(max(ok), 2) if ok else 0.0,
        "not_ok": others,
    }


def stalls(path: Path, start: float, end: float, slowest: list[tuple[float, float]]) -> dict[str, Any]:
    """What `STALLS_PRELUDE` wrote, from `start` to `end` (monotonic): the reactor's lag, its
    turns over the probe's target, the fsyncs, the garbage collector's pauses by generation, and
    for each of the probe's `slowest` (sent at, ms) the longest lag and fsync while it waited."""
    try:
        seen = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    lags = [lag * 1000 for at, lag in seen["lag"] if start <= at <= end]
    long = [lag for lag in lags if lag > P99_TARGET_MS]
    fsyncs = [took * 1000 for at, took in seen["fsync"] if start <= at <= end]

    def longest(kind: str, sent: float, ms: float) -> float:
        during = [took for at, took in seen[kind] if at <= sent + ms / 1000 and at + took >= sent]
        return round(1000 * max(during, default=0.0), 1)

    pauses: dict[str, list[float]] = {}
    for at, generation, pause in seen["gc"]:
        if start <= at <= end:
            pauses.setdefault(f"gen{generation}", []).append(pause * 1000)
    return {
        "lag_samples": len(lags),
        "lag_p50_ms": round(statistics.median(lags), 2) if lags else 0.0,
        "lag_p99_ms": round(percentile(lags, 0.99), 2),
        "lag_max_ms": round(max(lags), 1) if lags else 0.0,
        f"lags_over_{P99_TARGET_MS:.0f}_ms": len(long),
        "fsyncs": len(fsyncs),
        "fsync_p50_ms": round(statistics.median(fsyncs), 2) if fsyncs else 0.0,
        "fsync_p99_ms": round(percentile(fsyncs, 0.99), 2),
        "fsync_max_ms": round(max(fsyncs), 1) if fsyncs else 0.0,
        "probe_slowest_waited_on": [
            {
                "ms": round(ms, 1),
                "longest_lag_ms": longest("lag", sent, ms),
                "longest_fsync_ms": longest("fsync", sent, ms),
            }
            for sent, ms in slowest
        ],
        "gc": {
            gen: {"count": len(ms), "total_ms": round(sum(ms), 1), "max_ms": round(max(ms), 1)}
            for gen, ms in sorted(pauses.items())
        },
    }


def with_backlog(config: str, backlog: int) -> str:
    """`config` with the uplink's and the downlink's listen backlog `backlog` (0: the gateway's, 1024)."""
    if not backlog:
        return config
    lines = config.splitlines(keepends=True)
    for k, line in enumerate(lines):
        if line.startswith(("uplink = ", "downlink = ")):
            lines[k] = line.replace('interface=127.0.0.1"', f'interface=127.0.0.1:backlog={backlog}"')
    return "".join(lines)


def arguments(parser: argparse.ArgumentParser) -> None:
    """The options the rollover and the restart storm share."""
    parser.add_argument("--lots", type=int, default=10_000)
    parser.add_argument("--processes", type=int, default=2, help="processes the lots are shared among")
    parser.add_argument("--connecting", type=int, default=200, help="lots connecting at once, per process")
    parser.add_argument("--rate", type=float, default=40.0, help="the probe lot's carIns a second")
    parser.add_argument(
        "--backlog",
        type=int,
        default=0,
        help="listen backlog of the uplink and downlink (0: the gateway's default, 1024; 50 was Twisted's)",
    )
    parser.add_argument(
        "--spread",
        type=float,
        default=30.0,
        help="seconds the lots' next requests after the turn spread over (at most --interval)",
    )
    parser.add_argument(
        "--interval",
        type=float,
        default=30.0,
        help="seconds between a bound lot's heartbeats (B.3.4: a real lot's 30 s)",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments(parser)
    parser.add_argument(
        "--profile", metavar="FILE", help="py-spy the gateway over the rollover: stacks to FILE"
    )
    parser.add_argument(
        "--stalls",
        metavar="FILE",
        help="measure inside the gateway its reactor's lag and its GC pauses (to FILE), and report them",
    )
    parser.add_argument(
        "--lead", type=float, default=60.0, help="seconds from the gateway's start to the turn"
    )
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--host", default="127.0.0.1", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--uplink", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--turn", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--password", default=BENCH_PASSWORD, help=argparse.SUPPRESS)
    parser.add_argument("--secret", default=SECRET, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--report", type=float, default=2.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        run_herd(args)
        return
    rollover(args)


def rollover(args: argparse.Namespace) -> None:
    """The benchmark: bind, turn the month, measure the lots' return and the probe's latency."""
    from zoneinfo import ZoneInfo

    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-rollover-"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    config = gateway_config(work, uplink=uplink, downlink=downlink, api=api, lots=args.lots + 1)
    config = with_backlog(config, args.backlog)
    zone = ZoneInfo("Asia/Shanghai")  # the gateway's default zone
    month_turn = end_of_month(time.time(), zone).timestamp()
    # The gateway's clock reads `lead` seconds before the turn when it starts.
    offset = month_turn - (time.time() + args.lead)
    turn = month_turn - offset  # the turn on this machine's clock
    config_file = work / "gateway.toml"
    config_file.write_text(config)
    prelude = CLOCK_PRELUDE.format(offset=offset)
    if args.stalls:
        prelude += STALLS_PRELUDE.format(path=str(Path(args.stalls).resolve()))
    server = start_gateway(work, config_file, prelude)
    bare_port = free_port()
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=ENV)
    results: dict[str, Any] = {
        "lots": args.lots,
        "lead_s": args.lead,
        "spread_s": min(args.spread, args.interval),
        "interval_s": args.interval,
        "backlog": args.backlog or BACKLOG,
    }
    try:
        wait_for(bare_port, bare)
        wait_for(uplink, server, seconds=120.0)
        wait_for(downlink, server)
        with lots(args, downlink, uplink, turn) as herd:
            bound_at = herd.wait("bound", max(10.0, turn - time.time() - 5))
            if bound_at is None:
                raise SystemExit(f"the lots did not all bind {5} s before the turn: raise --lead")
            results["bind_s"] = round(bound_at - (turn - args.lead), 1)
            print(f"{args.lots} lots bound {turn - bound_at:.1f} s before the month's turn", flush=True)
            phase = Phase()
            phase.name = "before"
            with Probe(uplink, probe_token(uplink, args.lots), args.rate, phase) as before:
                time.sleep(max(0.0, turn - time.time() - 0.3))
            time.sleep(max(0.0, turn + 0.05 - time.time()))
            overflows = listen_overflows()
            checks = metric(api, "cpmi_login_checks_total")
            busy = metric(api, "cpmi_login_busy_total")
            cpu = cpu_seconds(server.pid)
            started = time.monotonic()
            phase.name = "rollover"
            profiled = min(args.spread, args.interval) + 10
            profiler = py_spy(server.pid, args.profile, profiled) if args.profile else None
            with (
                Probe(uplink, probe_token(uplink, args.lots), args.rate, phase) as during,
                HonestLot(bare_port, "floor", args.rate, phase) as floor,
            ):
                rebound_at = herd.wait("rebound", 120.0)
                uploaded_at = herd.wait("uploaded", max(1.0, 120.0 - (time.monotonic() - started)))
                time.sleep(max(0.0, 5.0 - (time.monotonic() - started)))
            seconds = time.monotonic() - started
            window = (started, started + seconds)
            if profiler is not None:
                profiler.wait()
            results["gateway_cpu_share"] = round((cpu_seconds(server.pid) - cpu) / seconds, 3)
            results["argon2_checks"] = int(metric(api, "cpmi_login_checks_total") - checks)
            results["listen_overflows"] = listen_overflows() - overflows
            results["busy_answers"] = int(metric(api, "cpmi_login_busy_total") - busy)
            results["rebound_s"] = round(rebound_at - turn, 2) if rebound_at else None
            results["uploaded_s"] = round(uploaded_at - turn, 2) if uploaded_at else None
            results["probe_before"] = latency(before.samples)
            results["probe"] = latency(during.samples)
            results["floor"] = {"what": FLOOR, **latency(floor.samples)}
            slowest = sorted(zip(during.samples, during.sent_at, strict=True), key=lambda s: -s[0][1])[:5]
            # The same on the monotonic clock the gateway's --stalls are timed on.
            wall_to_monotonic = time.monotonic() - time.time()
            slowest_sent = [(at + wall_to_monotonic, sample[1]) for sample, at in slowest]
            results["probe_slowest"] = [
                {"after_turn_s": round(at - turn, 2), "ms": round(sample[1], 1)} for sample, at in slowest
            ]
            results["lots_counters"] = herd.stop()
            time.sleep(2.0)  # the lots' going offline logged, before the SIGTERM
    finally:
        results["gateway_stop"] = stop_gateway(server)
        bare.terminate()
        bare.wait()
    if args.stalls:
        results["stalls"] = stalls(Path(args.stalls), *window, slowest_sent)
    results["met"] = bool(
        results["uploaded_s"] is not None
        and results["uploaded_s"] <= UPLOADED_TARGET_S
        and results["probe"]["p99_ms"] <= P99_TARGET_MS
    )
    probe = results["probe"]
    print(
        f"rollover of {args.lots} lots: all bound again {results['rebound_s']} s and uploading again "
        f"{results['uploaded_s']} s after the turn (target <= {UPLOADED_TARGET_S:.0f} s); "
        f"Argon2id checks {results['argon2_checks']}, busy answers {results['busy_answers']}, "
        f"gateway CPU {results['gateway_cpu_share']:.0%} of a core, "
        f"listen overflows {results['listen_overflows']} (backlog {results['backlog']})\n"
        f"probe lot's carIns: p50 {probe['p50_ms']} ms, p99 {probe['p99_ms']} ms, max {probe['max_ms']} ms "
        f"({probe['count']} sent, not ok: {probe['not_ok'] or 'none'}; before the turn p99 "
        f"{results['probe_before']['p99_ms']} ms; target p99 <= {P99_TARGET_MS:.0f} ms)\n"
        f"probe's slowest: {results['probe_slowest']}\n"
        f"the floor ({FLOOR}), meanwhile: p50 {results['floor']['p50_ms']} ms, "
        f"p99 {results['floor']['p99_ms']} ms, max {results['floor']['max_ms']} ms "
        f"({results['floor']['count']} sent, not ok: {results['floor']['not_ok'] or 'none'})\n"
        f"lots: {results['lots_counters']}"
    )
    if args.stalls:
        print(f"inside the gateway over the rollover: {results['stalls']}")
    write_result("rollover", results)


if __name__ == "__main__":
    main()

"""Durable uplinks/s of 1, 2, … gateways behind HAProxy, against N × one gateway alone (issue 24 item 7).

Usage: python -m bench.cluster [--gateways 2] [--seconds 10] [--sources 64] [--processes 2]

Method, the same for every run so that it can be rerun on a bigger machine:

1. One gateway alone (twistd, log-only sink, journal.fsync = "always"), its
   uplink a plain `tcp:` listener, loaded directly: R1 uplinks/s.
2. For N = 1 … --gateways: N gateways, their lot-facing listeners `haproxy:`
   ones, behind one HAProxy on deploy/haproxy.cfg (rendered with free ports
   and N server lines): R(N). The ratio R(N) / (N × R1) is the scaling; the
   target is ≥ 0.8 for each gateway added while cores last (a gateway is one
   process on one core; HAProxy, the load and the other gateways need theirs).

The load: `--sources` lot sites, each its own loopback address (127.0.0.x)
and its own lot (login first, through the same path, so each holds a token
of the gateway its address is balanced to), each keeping one keep-alive
connection with one signed carIn in flight at a time, new oprNum each time.
wrk cannot pick its source address, and `balance source` would send all of
its connections to one gateway, so the load is this module's own client
(`--processes` processes, selectors, prebuilt requests). A request counts
when it is answered 0000, i.e. journaled with fsync: a durable uplink. The
same client loads every run, so the ratios compare like with like; the
client's own CPU is shown, since on a small machine it competes with the
gateways.

Prints a table with the machine's CPU count and writes bench/results/cluster.json.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import resource
import selectors
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_PASSWORD,
    CHEAP_HASH,
    ENV,
    ROOT,
    cpu_seconds,
    free_port,
    gateway,
    wait_for,
    write_result,
)
from gateway.protocol.signing import compact, sign

SHIPPED = ROOT / "deploy" / "haproxy.cfg"
SECRET = "k"
CAR_IN = {"recordCode": "R1", "carNum": "京A12345", "inCross": "1", "inTime": "2026-11-24 08:30:00"}


# --- the balancer's configuration, from the shipped one ------------------------------------------


def render_haproxy(
    shipped: str,
    *,
    uplink: int,
    downlink: int,
    gateways: Sequence[tuple[int, int, int]],
    stats: Path | None = None,
    maxconn: int = 2000,
) -> str:
    """deploy/haproxy.cfg in front of `gateways` (their uplink, downlink and API ports on loopback).

    The balancer's own fronts listen on `uplink` and `downlink`, on loopback.
    Everything but the ports is the shipped file's: each backend gets one
    server line per gateway, made from its first shipped one (same options, id
    N, name gwN). Comments go, and so do `user`/`group` (it runs as whoever
    runs it) and the shipped maxconn, which needs more descriptors than a
    test's limit allows. `stats` adds an admin socket to read the servers' states.
    """
    text = re.sub(r"^\s*(#|user |group ).*\n", "", shipped, flags=re.MULTILINE)
    text = re.sub(r"maxconn \d+", f"maxconn {maxconn}", text)
    text = text.replace("bind :8080", f"bind 127.0.0.1:{uplink}").replace(
        "bind :9000", f"bind 127.0.0.1:{downlink}"
    )
    lines: list[str] = []
    backend = ""
    made: set[str] = set()
    for line in text.splitlines():
        if line.startswith("backend "):
            backend = line.split()[1]
        found = re.match(r"^(\s+)server \S+ \S+ id \d+ port \d+(.*)$", line)
        if found is None:
            lines.append(line)
        elif backend not in made:  # the first shipped server line of a backend is the pattern
            made.add(backend)
            indent, rest = found.groups()
            for number, (up, down, api) in enumerate(gateways, start=1):
                target = up if backend.endswith("uplink") else down
                lines.append(f"{indent}server gw{number} 127.0.0.1:{target} id {number} port {api}{rest}")
    text = "\n".join(lines) + "\n"
    if stats is not None:
        text = text.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    return text


# --- the gateways ---------------------------------------------------------------------------------


def lots_config(count: int) -> str:
    return "".join(
        f'[[lot]]\npark_code = "P{n:03d}"\nusername = "lot{n:03d}"\n'
        f'password = "{CHEAP_HASH}"\nsecret = "{SECRET}"\n'
        for n in range(1, count + 1)
    )


def gateway_config(
    work: Path, ports: tuple[int, int, int], *, proxied: bool, lots: int, fsync: str = "always"
) -> str:
    scheme = "haproxy:tcp" if proxied else "tcp"
    uplink, downlink, api = ports
    return (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "{scheme}:{uplink}:interface=127.0.0.1"\n'
        f'downlink = "{scheme}:{downlink}:interface=127.0.0.1"\n'
        f'api = "tcp:{api}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "{fsync}"\n'
        f'[uplink]\nmax_connections_per_peer = 64\n[cloud]\nsink = "log-only"\n' + lots_config(lots)
    )


@contextmanager
def gateways(
    work: Path, count: int, *, proxied: bool, lots: int, fsync: str = "always"
) -> Iterator[list[tuple[int, int, int, int]]]:
    """`count` gateways running: each one's (uplink, downlink, API) ports and pid."""
    with ExitStack() as stack:
        running = []
        for number in range(1, count + 1):
            where = work / f"gw{number}"
            where.mkdir(parents=True)
            ports = (free_port(), free_port(), free_port())
            config = gateway_config(where, ports, proxied=proxied, lots=lots, fsync=fsync)
            process = stack.enter_context(gateway(where, config, ports[2]))
            running.append((*ports, process.pid))
        yield running


@contextmanager
def haproxy(work: Path, backends: Sequence[tuple[int, int, int]]) -> Iterator[tuple[int, int]]:
    """HAProxy on the shipped configuration in front of `backends`; its uplink port and pid."""
    binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
    if not os.access(binary, os.X_OK):
        raise SystemExit("haproxy is needed (Debian: apt-get install haproxy)")
    uplink, downlink = free_port(), free_port()
    stats = work / "haproxy.sock"
    config = work / "haproxy.cfg"
    config.write_text(
        render_haproxy(SHIPPED.read_text(), uplink=uplink, downlink=downlink, gateways=backends, stats=stats)
    )
    with open(work / "haproxy.log", "wb") as log:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        wait_for(uplink, process)  # type: ignore[arg-type]
        deadline = time.monotonic() + 30
        while servers_up(stats) < 2 * len(backends):
            if time.monotonic() > deadline:
                raise SystemExit(
                    "HAProxy's checks did not pass within 30 s: " + (work / "haproxy.log").read_text()
                )
            time.sleep(0.2)
        yield uplink, process.pid
    finally:
        process.kill()
        process.wait()


def servers_up(stats: Path) -> int:
    """How many servers HAProxy has up (0 while its socket is not there yet)."""
    try:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.connect(str(stats))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
    except OSError:
        return 0
    return sum(1 for line in data.decode().splitlines() if ",UP," in line and ",BACKEND," not in line)


# --- the load: lot sites on their own addresses ---------------------------------------------------


def source(index: int) -> str:
    return f"127.0.{1 + index // 200}.{10 + index % 200}"


def login(port: int, index: int) -> str:
    """Log lot index+1 in from its own address through `port`; its token."""
    data = {"parkUserName": f"lot{index + 1:03d}", "parkUserPwd": BENCH_PASSWORD}
    envelope = {
        "token": "",
        "code": "login",
        "oprNum": f"login-{index}",
        "signature": sign(compact(data), "", SECRET),
    }
    body = urllib.parse.urlencode({"param": json.dumps({**envelope, "data": data})})
    for _ in range(50):
        connection = http.client.HTTPConnection(
            "127.0.0.1", port, timeout=10, source_address=(source(index), 0)
        )
        try:
            connection.request("POST", "/uplink", body, {"Content-Type": "application/x-www-form-urlencoded"})
            answer = json.loads(connection.getresponse().read())
        except OSError:
            time.sleep(0.1)
            continue
        finally:
            connection.close()
        if answer["resultCode"] == "0000":
            token: str = answer["data"]["token"]
            return token
        time.sleep(0.1)
    raise SystemExit(f"lot {index + 1} could not log in: {answer}")


class Connection:
    """One lot site's keep-alive connection with one carIn in flight."""

    __slots__ = ("head", "inbox", "index", "sent", "sock", "tail")

    def __init__(self, port: int, index: int, token: str) -> None:
        self.index = index
        data = compact(CAR_IN)
        envelope = json.dumps({"token": token, "code": "carIn"})[:-1] + ',"oprNum":"'
        self.head = b"param=" + urllib.parse.quote(envelope, safe="").encode()
        self.tail = urllib.parse.quote(
            '","signature":"%s","data":%s}' % (sign(data, token, SECRET), data), safe=""
        ).encode()
        self.sent = 0
        self.inbox = b""
        self.sock = socket.socket()
        self.sock.bind((source(index), 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)

    def send(self) -> None:
        self.sent += 1
        body = self.head + b"c%d-%d" % (self.index, self.sent) + self.tail
        self.sock.send(
            b"POST /uplink HTTP/1.1\r\nHost: gw\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )

    def answered(self) -> bool | None:
        """Read what came: True for a 0000 answer complete, False for another, None for not yet."""
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by the server")
        self.inbox += chunk
        end = self.inbox.find(b"\r\n\r\n")
        if end < 0:
            return None
        found = re.search(rb"content-length: *(\d+)", self.inbox[:end], re.IGNORECASE)
        length = int(found.group(1)) if found else 0
        if len(self.inbox) < end + 4 + length:
            return None
        body = self.inbox[end + 4 : end + 4 + length]
        self.inbox = self.inbox[end + 4 + length :]
        return b'"resultCode":"0000"' in body


def load_child(spec: dict[str, Any]) -> None:
    """Run the connections of `spec` for its seconds; print how many were answered 0000 and otherwise."""
    connections = [Connection(spec["port"], index, token) for index, token in spec["lots"]]
    selector = selectors.DefaultSelector()
    for connection in connections:
        selector.register(connection.sock, selectors.EVENT_READ, connection)
    ok = other = 0
    start = time.monotonic()
    end = start + spec["seconds"]
    for connection in connections:
        connection.send()
    while time.monotonic() < end:
        for key, _ in selector.select(timeout=0.5):
            connection = key.data
            result = connection.answered()
            if result is None:
                continue
            if result:
                ok += 1
            else:
                other += 1
            connection.send()
    print(json.dumps({"ok": ok, "other": other, "seconds": time.monotonic() - start}), flush=True)


def load(port: int, tokens: list[str], seconds: int, processes: int) -> dict[str, float]:
    """Every lot's connection loading `port` for `seconds`, spread over `processes` processes."""
    shares = [[(i, tokens[i]) for i in range(p, len(tokens), processes)] for p in range(processes)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    reaped = before.ru_utime + before.ru_stime  # the CPU of children waited for so far
    children = [
        subprocess.Popen(
            [sys.executable, "-m", "bench.cluster", "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=ENV,
            cwd=ROOT,
        )
        for _ in shares
    ]
    for child, share in zip(children, shares, strict=True):
        assert child.stdin is not None
        child.stdin.write(json.dumps({"port": port, "lots": share, "seconds": seconds}).encode())
        child.stdin.close()
    started = time.monotonic()
    counts = {"ok": 0, "other": 0}
    for child in children:
        assert child.stdout is not None
        out = child.stdout.read()
        child.wait(timeout=60)
        figures = json.loads(out.decode().strip().splitlines()[-1])
        counts["ok"] += figures["ok"]
        counts["other"] += figures["other"]
    elapsed = time.monotonic() - started
    client_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {
        "rps": counts["ok"] / seconds,
        "other": counts["other"],
        "elapsed": elapsed,
        "client_cpu_share": round((client_cpu.ru_utime + client_cpu.ru_stime - reaped) / seconds, 2),
    }


def measure(
    port: int, pids: list[int], lots: int, seconds: int, processes: int, balancer: int | None = None
) -> dict[str, Any]:
    """Log every lot in through `port`, then load it; the rate and the CPU shares (gateways, balancer)."""
    tokens = [login(port, index) for index in range(lots)]
    watched = [*pids, *([balancer] if balancer is not None else [])]
    before = {pid: cpu_seconds(pid) for pid in watched}
    figures: dict[str, Any] = load(port, tokens, seconds, processes)
    share = {pid: round((cpu_seconds(pid) - before[pid]) / seconds, 2) for pid in watched}
    figures["gateway_cpu_share"] = [share[pid] for pid in pids]
    figures["haproxy_cpu_share"] = share[balancer] if balancer is not None else 0.0
    return figures


def main() -> None:
    if sys.argv[1:] == ["--child"]:
        load_child(json.loads(sys.stdin.read()))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gateways", type=int, default=2, help="the largest N (default 2)")
    parser.add_argument("--seconds", type=int, default=10, help="each run's length")
    parser.add_argument(
        "--sources", type=int, default=64, help="lot sites, each its own address and connection"
    )
    parser.add_argument("--processes", type=int, default=2, help="load-generating processes")
    parser.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        default="always",
        help="the gateways' journal.fsync: always for durable uplinks; never shows what the CPUs alone allow",
    )
    args = parser.parse_args()
    print(
        f"method: {args.sources} lot sites (127.0.x.y), one keep-alive connection each, "
        "one signed carIn in flight; "
        f"{args.processes} load processes; {args.seconds} s a run; fsync {args.fsync}; log-only sink; "
        f"{os.cpu_count()} CPUs.\n"
        "R1 = one gateway alone, loaded directly; R(N) = N gateways behind HAProxy (deploy/haproxy.cfg); "
        "scaling = R(N) / (N x R1), target >= 0.8 while cores last."
    )
    results: dict[str, Any] = {"method": {k: v for k, v in vars(args).items()}, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="cpmi-cluster-") as scratch:
        work = Path(scratch)
        with gateways(work / "alone", 1, proxied=False, lots=args.sources, fsync=args.fsync) as [
            (uplink, _, _, pid)
        ]:
            alone = measure(uplink, [pid], args.sources, args.seconds, args.processes)
        results["runs"]["1 alone"] = alone
        for count in range(1, args.gateways + 1):
            where = work / f"cluster-{count}"
            with gateways(where, count, proxied=True, lots=args.sources, fsync=args.fsync) as running:
                with haproxy(where, [ports[:3] for ports in running]) as (front, balancer):
                    gateway_pids = [r[3] for r in running]
                    run = measure(front, gateway_pids, args.sources, args.seconds, args.processes, balancer)
            run["scaling"] = round(run["rps"] / (count * alone["rps"]), 3)
            results["runs"][f"{count} behind haproxy"] = run
    print(f"{'run':<20} {'uplinks/s':>10} {'scaling':>8} {'not 0000':>9}  CPU: load, haproxy, gateways")
    for name, run in results["runs"].items():
        scaling = f"{run['scaling']:.2f}" if "scaling" in run else "-"
        print(
            f"{name:<20} {run['rps']:>10.0f} {scaling:>8} {run['other']:>9}  {run['client_cpu_share']:.2f},"
            f" {run['haproxy_cpu_share']:.2f}, {run['gateway_cpu_share']}"
        )
    write_result("cluster" if args.fsync == "always" else f"cluster-fsync-{args.fsync}", results)


if __name__ == "__main__":
    main()

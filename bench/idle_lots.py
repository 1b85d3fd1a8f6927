"""Bound idle lots in one gateway process: memory per lot, and the CPU their heartbeats take.

Usage: python -m bench.idle_lots [--lots N] [--window S] [--idle-window S] [--settle S]
           [--processes P] [--profile FILE]

The gateway runs as its own process on a configuration of N lots (10,000 by
default) written to a temporary directory, with journal.fsync = "always". Its
RSS is read once it has started (after one /metrics scrape, so the scrape's own
allocations are in both figures) and again once `bench.lotfleet` (P processes
of its own) has bound every lot and things have settled: the difference over
N is the memory a bound lot costs. The gateway's CPU share of one core is read
over `--idle-window` seconds before binding (what it spends on its own), then
over `--window` seconds (60 by default, so every lot heartbeats once in it)
while each lot heartbeats once per 60 s, the lots spread evenly over the minute.

Targets (issue 10): at most 4 KiB of RSS per bound lot; the heartbeats of
10,000 lots under 10 % of one core. Prints a table and writes
bench/results/idle_lots.json.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import cpu_seconds, free_port, gateway, metric, py_spy, rss_bytes, wait_for, write_result
from bench.lotfleet import fleet, gateway_config, settle_argument, wait_connected

HEARTBEAT_INTERVAL = 60.0
KIB_PER_LOT_TARGET = 4.0
CPU_SHARE_TARGET = 0.10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=10_000)
    parser.add_argument("--window", type=float, default=60.0, help="seconds of heartbeats measured")
    parser.add_argument("--idle-window", type=float, default=10.0, help="seconds of CPU measured unbound")
    settle_argument(parser, "reading RSS")
    parser.add_argument("--processes", type=int, default=2, help="processes the lots run in")
    parser.add_argument("--profile", metavar="FILE", help="py-spy the gateway over the window")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-idle-"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    config = gateway_config(work, uplink=uplink, downlink=downlink, api=api, lots=args.lots)
    with gateway(work, config, api) as server:
        wait_for(downlink, server)
        pid = server.pid
        metric(api, "cpmi_lots_connected")
        time.sleep(args.settle)
        rss_before = rss_bytes(pid)
        idle_cpu = cpu_share(pid, args.idle_window)
        started = time.monotonic()
        with fleet(downlink, args.lots, processes=args.processes, interval=HEARTBEAT_INTERVAL) as lots:
            lots.wait_bound(600)
            wait_connected(api, args.lots, 120)
            bind_seconds = time.monotonic() - started
            time.sleep(args.settle)
            rss_after = rss_bytes(pid)
            heartbeats_in = metric(api, "cpmi_downlink_heartbeats_in_total")
            heartbeats_out = metric(api, "cpmi_downlink_heartbeats_out_total")
            profiler = py_spy(pid, args.profile, args.window, rate=200) if args.profile else None
            share = cpu_share(pid, args.window)
            heartbeats_in = metric(api, "cpmi_downlink_heartbeats_in_total") - heartbeats_in
            heartbeats_out = metric(api, "cpmi_downlink_heartbeats_out_total") - heartbeats_out
            connected = metric(api, "cpmi_lots_connected")
            if profiler is not None:
                profiler.wait()
        fleet_report = lots.last
    kib_per_lot = (rss_after - rss_before) / 1024 / args.lots
    met = {"kib_per_lot": kib_per_lot <= KIB_PER_LOT_TARGET, "cpu_share": share < CPU_SHARE_TARGET}
    figures: dict[str, Any] = {
        "lots": args.lots,
        "connected": int(connected),
        "bind_seconds": round(bind_seconds, 1),
        "rss_before_mib": round(rss_before / 2**20, 2),
        "rss_after_mib": round(rss_after / 2**20, 2),
        "kib_per_lot": round(kib_per_lot, 3),
        "idle_cpu_share": round(idle_cpu, 4),
        "window_seconds": args.window,
        "heartbeats_in": int(heartbeats_in),
        "heartbeats_out": int(heartbeats_out),
        "cpu_share": round(share, 4),
        "cpu_us_per_heartbeat": round(share * args.window / max(heartbeats_in, 1) * 1e6, 1),
        "fleet": fleet_report,
        "targets": {"kib_per_lot": KIB_PER_LOT_TARGET, "cpu_share": CPU_SHARE_TARGET},
        "met": met,
    }
    rows = [
        ("lots bound", f"{connected:.0f} of {args.lots}", "", None),
        ("bind time", f"{bind_seconds:.1f} s", "", None),
        ("RSS before binding", f"{rss_before / 2**20:.1f} MiB", "", None),
        ("RSS with the lots bound", f"{rss_after / 2**20:.1f} MiB", "", None),
        ("RSS per bound lot", f"{kib_per_lot:.2f} KiB", f"<= {KIB_PER_LOT_TARGET:g} KiB", met["kib_per_lot"]),
        ("CPU before binding", f"{idle_cpu:.2%}", "", None),
        ("heartbeats in / out", f"{heartbeats_in:.0f} / {heartbeats_out:.0f} in {args.window:g} s", "", None),
        ("CPU with heartbeats", f"{share:.2%} of a core", f"< {CPU_SHARE_TARGET:.0%}", met["cpu_share"]),
        ("fleet failures", str(fleet_report.get("failures", "?")), "0", None),
    ]
    print(f"{'figure':<24} {'value':>28} {'target':>12}  met?")
    for name, value, target, ok in rows:
        mark = "" if ok is None else "yes" if ok else "NO"
        print(f"{name:<24} {value:>28} {target:>12}  {mark}")
    print(f"wrote {write_result('idle_lots', figures)}")


def cpu_share(pid: int, seconds: float) -> float:
    """The share of one core process `pid` uses over the next `seconds`."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


if __name__ == "__main__":
    main()

"""A restart storm: 10,000 lots with valid tokens reconnect at once when the gateway comes back.

Usage: python -m bench.restart_storm [--lots N] [--processes P] [--kill]

The gateway runs under twistd (journal.fsync = "always") and N lots bind to
it from processes of their own (`bench.rollover`'s lots), each logging in
once with its password. Then the gateway is stopped (SIGTERM, or SIGKILL with
`--kill`) and started again on the same journal: every lot is cut off, tries
to connect every 0.5-1.5 s while the gateway is down, and once it answers,
binds by a heartbeat carrying the token it had (CONTRACT §5; the tokens live
through the restart in the journal's `token` records), as a real lot does;
a lot whose token were refused would log in with its password again.

Target (issue 25): every lot bound again within 20 s. Reported: the seconds
from the new gateway's start (its process launched) and from its downlink
listening to the last lot bound, how many bound by token and how many had
to log in, and the gateway's CPU. Writes bench/results/restart_storm.json.
"""

from __future__ import annotations

import argparse
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.harness import cpu_seconds, free_port, metric, wait_for, write_result
from bench.lotfleet import gateway_config
from bench.rollover import arguments, lots, start_gateway, stop_gateway, with_backlog
from gateway.limits import BACKLOG

REBOUND_TARGET_S = 20.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arguments(parser)
    parser.add_argument("--kill", action="store_true", help="stop the gateway with SIGKILL, not SIGTERM")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cpmi-bench-storm-"))
    uplink, downlink, api = free_port(), free_port(), free_port()
    config = work / "gateway.toml"
    config.write_text(
        with_backlog(
            gateway_config(work, uplink=uplink, downlink=downlink, api=api, lots=args.lots), args.backlog
        )
    )
    results: dict[str, Any] = {
        "lots": args.lots,
        "stop": "SIGKILL" if args.kill else "SIGTERM",
        "backlog": args.backlog or BACKLOG,
    }
    server = start_gateway(work, config)
    try:
        wait_for(downlink, server, seconds=120.0)
        with lots(args, downlink, uplink) as herd:
            bound_at = herd.wait("bound", 300.0)
            if bound_at is None:
                raise SystemExit(f"the lots did not all bind: {herd.counters()}")
            time.sleep(2.0)  # the last binds' records are durable, the lots idle
            before = herd.counters()
            results["first_stop"] = stop_gateway(server, signal.SIGKILL if args.kill else signal.SIGTERM)
            started = time.time()
            server = start_gateway(work, config)
            wait_for(downlink, server, seconds=120.0)
            listening = time.time()
            cpu = cpu_seconds(server.pid)
            rebound_at = herd.wait("rebound", 120.0)
            results["gateway_cpu_s"] = round(cpu_seconds(server.pid) - cpu, 2)
            results["lots_connected"] = int(metric(api, "cpmi_lots_connected"))
            after = herd.stop()
            time.sleep(2.0)  # the lots' going offline logged, before the SIGTERM
        results["startup_s"] = round(listening - started, 2)
        results["rebound_since_start_s"] = round(rebound_at - started, 2) if rebound_at else None
        results["rebound_since_listening_s"] = round(rebound_at - listening, 2) if rebound_at else None
        results["binds_by_token"] = after.get("binds_by_token", 0) - before.get("binds_by_token", 0)
        results["logins"] = after.get("logins", 0) - before.get("logins", 0)
        results["lots_counters"] = after
    finally:
        results["last_stop"] = stop_gateway(server)
    results["met"] = bool(
        results["rebound_since_start_s"] is not None and results["rebound_since_start_s"] <= REBOUND_TARGET_S
    )
    print(
        f"restart storm of {args.lots} lots ({results['stop']}): all bound again "
        f"{results['rebound_since_start_s']} s after the new gateway started "
        f"({results['startup_s']} s to listen, then {results['rebound_since_listening_s']} s; "
        f"target <= {REBOUND_TARGET_S:.0f} s); {results['binds_by_token']} bound by token, "
        f"{results['logins']} logged in; gateway CPU {results['gateway_cpu_s']} s\n"
        f"lots: {after}"
    )
    write_result("restart_storm", results)


if __name__ == "__main__":
    main()

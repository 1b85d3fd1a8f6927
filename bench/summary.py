"""The table of issues 10, 19, 23 and 25's targets against the figures in bench/results/ (not run by pytest).

Usage: python -m bench.summary [--markdown]

Reads the JSON each benchmark wrote and prints one row per target: what was
measured, the target, and whether it is met. A benchmark not run yet shows
as "not run". `--markdown` prints the table as docs/benchmarks.md has it.
Under the table, each target not met that knows its limit says it: what the
same run measured of where the time goes, and what it would take (issue 25:
"for a target that cannot be met here, the profile that shows the limit and
what it would take").
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from statistics import median
from typing import Any

from attrs import frozen

from bench.harness import RESULTS


@frozen
class Target:
    """One row: the benchmark's result file, the figure read from it, and whether it is met."""

    what: str
    result: str
    target: str
    figure: Callable[[dict[str, Any]], str]
    met: Callable[[dict[str, Any]], bool]
    limit: Callable[[dict[str, Any], Path], str] | None = None
    """When not met: the limit the same results show, and what it would take (given the results' folder)."""


REACTOR_BOUND = 0.95
"""The reactor's busy share above which its CPU a request is what limits the uplink's rate."""


def uplink_limit(r: dict[str, Any], results: Path) -> str:
    """Why durable/never falls short: the reactor's CPU, the commit's cost a batch, the batch it takes."""
    cost = r["commit"]
    busy = cost["reactor_busy_durable"]["median"]
    text = (
        f"the reactor is the limit ({busy:.0%} of a core busy durable): "
        if busy >= REACTOR_BOUND
        else f"the reactor waits for the commit {1 - busy:.0%} of the durable run, and besides: "
    )
    text += (
        f"{cost['reactor_us_durable']['median']:.0f} us of its CPU a durable uplink against "
        f"{cost['reactor_us_never']['median']:.0f} with fsync never; waiting for the commit costs it "
        f"{cost['per_batch_us']['median']:.0f} us a batch ({cost['per_batch_us']['min']:.0f}-"
        f"{cost['per_batch_us']['max']:.0f}: the helper's request and answer, more turns of its loop and "
        f"wake-ups) over {cost['records_a_fsync']['median']:.1f} records a fsync"
    )
    if "nodisk_vs_never" in r:
        text += (
            f"; with a helper syncing nothing {r['nodisk_vs_never']['median']:.2f} x never, so not the disk"
        )
    text += (
        f". It would take {cost['records_needed']['median']:.1f} records a fsync "
        f"({cost['records_needed']['min']:.1f}-{cost['records_needed']['max']:.1f}): more lots posting "
        f"at once than {r.get('connections', 16)}, whose two halves take turns at the one batch in flight"
    )
    more = results / "uplink_more.json"
    if more.exists():
        m = json.loads(more.read_text())
        text += (
            f"; measured with {m['connections']} connections: {m['durable_vs_never']['median']:.2f} x never "
            f"({m['durable_vs_never']['min']:.2f}-{m['durable_vs_never']['max']:.2f}), "
            f"{m['records_per_fsync']['median']:.1f} records a fsync, p99 {m['p99_ms']['median']:.1f} ms"
        )
    return text


GATE_OPEN_P99_MS = 10.0


def gate_open_limit(r: dict[str, Any], results: Path) -> str:
    """Why a gateOpen run missed: the floor (a bare relay) measured beside it says machine or gateway."""
    floor = r["floor"]
    gateway_p99, floor_p99 = r["p99_runs_ms"], floor["p99_runs_ms"]
    ratio = median([g / f for g, f in zip(gateway_p99, floor_p99, strict=False)])
    missed = len(floor_p99) - floor["met_runs"]
    shown = ", ".join(f"{p:.1f}" for p in floor_p99)
    if missed:
        text = (
            f"the machine is the limit: the floor ({floor['what']}: no journal, signature or lot; the same "
            f"client and rate, interleaved with the runs) missed {GATE_OPEN_P99_MS:g} ms too, in {missed} of "
            f"{len(floor_p99)} runs: p99 {shown} ms, the client's own send lag up to "
            f"{max(floor['max_send_lag_ms']):.1f} ms"
        )
    else:
        text = f"the gateway is the limit: the floor ({floor['what']}) met it in every run: p99 {shown} ms"
    text += f"; the gateway's p99 was {ratio:.1f} x the floor's (the median of the runs' ratios)"
    if "runs" in r:
        gateway_us = median([run["gateway_cpu_us_per_command"] for run in r["runs"]])
        relay_us = median([run["relay_cpu_us_per_command"] for run in floor["runs"]])
        text += f", its CPU {gateway_us:.0f} us a command against the relay's {relay_us:.0f}"
    return text + (
        f". At {ratio:.1f} x its floor, the gateway would meet it on a machine whose floor stays under "
        f"{GATE_OPEN_P99_MS / ratio:.1f} ms in every run (here {min(floor_p99):.1f}-{max(floor_p99):.1f} ms)"
    )


ROLLOVER_P99_MS = 25.0
ROLLOVER_UPLOADED_S = 60.0


def rollover_limit(r: dict[str, Any], results: Path) -> str:
    """Why the rollover missed: its lots' return, or the probe's p99 against the floor probed beside it."""
    probe, floor = r["probe"], r["floor"]
    found = []
    if r["uploaded_s"] is None or r["uploaded_s"] > ROLLOVER_UPLOADED_S:
        found.append(
            f"the lots were not all uploading again within {ROLLOVER_UPLOADED_S:g} s ({r['uploaded_s']} s), "
            "which the floor does not speak to"
        )
    if probe["p99_ms"] > ROLLOVER_P99_MS:
        ratio = probe["p99_ms"] / floor["p99_ms"]
        found.append(
            f"the probe's p99 {probe['p99_ms']:.1f} ms against the floor's {floor['p99_ms']:.1f} ms "
            f"({floor['what']}; p50 {floor['p50_ms']:.1f} against {probe['p50_ms']:.1f}), {ratio:.1f} x: "
            + (
                f"the machine is the limit, the floor itself over {ROLLOVER_P99_MS:g} ms"
                if floor["p99_ms"] > ROLLOVER_P99_MS
                else "the gateway is the limit, the floor under it"
            )
            + f". At {ratio:.1f} x its floor, the probe would meet it on a machine whose floor's p99 "
            f"stays under {ROLLOVER_P99_MS / ratio:.1f} ms during the rollover (here {floor['p99_ms']:.1f})"
        )
    return "; ".join(found) or "met"


TARGETS = (
    Target(
        "durable signed carIn uplinks/s, 16 wrk clients, vs fsync never and vs bare twisted.web",
        "uplink",
        ">= 0.9 x never, >= 1.0 x bare, p99 <= 25 ms",
        lambda r: (
            f"{r['durable_vs_never']['median']:.2f} x never "
            f"({r['durable_vs_never']['min']:.2f}-{r['durable_vs_never']['max']:.2f}), "
            f"{r['durable_vs_bare']['median']:.2f} x bare "
            f"({r['durable_vs_bare']['min']:.2f}-{r['durable_vs_bare']['max']:.2f}), "
            f"p99 {r['p99_ms']['median']:.1f} ms; medians of {r['rounds']} rounds"
            f" with {r.get('connections', 16)} connections, "
            f"fsync {r['fsync_ms']['median']:.2f} ms, {r['records_per_fsync']['median']:.1f} records a fsync"
            + (
                f"; without the disk (--no-disk) {r['nodisk_vs_never']['median']:.2f} x never"
                if "nodisk_vs_never" in r
                else ""
            )
            + (f"; {r['busy_cores']['median']:.2f} cores busy" if "busy_cores" in r else "")
        ),
        lambda r: bool(
            r["durable_vs_never"]["median"] >= 0.9
            and r["durable_vs_bare"]["median"] >= 1.0
            and r["p99_ms"]["median"] <= 25
        ),
        uplink_limit,
    ),
    Target(
        "RSS per bound idle lot (10,000 lots)",
        "idle_lots",
        "<= 4 KiB",
        lambda r: f"{r['kib_per_lot']:.2f} KiB ({r['lots']:,} lots)",
        lambda r: bool(r["kib_per_lot"] <= 4),
    ),
    Target(
        "heartbeats of 10,000 lots every 60 s",
        "idle_lots",
        "< 10 % of a core",
        lambda r: (
            f"{r['cpu_share']:.1%} of a core "
            f"({r['heartbeats_in']:,} heartbeats in {r['window_seconds']:.0f} s)"
        ),
        lambda r: bool(r["cpu_share"] < 0.10),
    ),
    Target(
        "gateOpen API -> lot -> API, 10,000 lots, 300/s, 5 runs",
        "gate_open",
        "p99 <= 10 ms in every run",
        lambda r: (
            f"p99 {', '.join(f'{p:.1f}' for p in r['p99_runs_ms'])} ms; met in {r['met_runs']} of "
            f"{len(r['p99_runs_ms'])}; {r['errors']} errors; client CPU "
            f"{min(r['client_cpu_share']):.0%}-{max(r['client_cpu_share']):.0%} of a core, machine busy "
            f"{min(r['machine_busy_share']):.0%}-{max(r['machine_busy_share']):.0%}"
            + (
                # From the client's send, not its schedule: what the client's own lag added.
                "; p99 from the send "
                + ", ".join(f"{run['from_sent']['p99_ms']:.1f}" for run in r["runs"])
                + " ms, gateway CPU "
                + ", ".join(f"{run['gateway_cpu_share']:.0%}" for run in r["runs"])
                if "runs" in r
                else ""
            )
        ),
        lambda r: bool(r["met_runs"] == len(r["p99_runs_ms"]) and r["errors"] == 0),
        gate_open_limit,
    ),
    Target(
        "backlog drain, 100,000 journaled events, local receiver",
        "backlog_drain",
        ">= 10,000 events/s, memory flat",
        lambda r: (
            f"{r['events_per_s']:,.0f} events/s; RSS +{r['rss_rise_mib']:.1f} MiB at the start, "
            f"+{r['rss_late_growth_mib']:.1f} MiB over the second half; {r['duplicates']} duplicates"
        ),
        lambda r: bool(r["events_per_s"] >= 10_000 and r["met"]),
    ),
    Target(
        "month's rollover: 10,000 lots log in again when their tokens expire",
        "rollover",
        "all uploading again <= 60 s, probe p99 <= 25 ms",
        lambda r: (
            f"all bound again {r['rebound_s']} s, uploading {r['uploaded_s']} s after the turn "
            f"({r['lots']:,} lots, next requests over {r['spread_s']:g} s); "
            f"probe p99 {r['probe']['p99_ms']:.1f} ms (p50 {r['probe']['p50_ms']:.1f}); "
            f"{r['argon2_checks']} Argon2id checks, {r['busy_answers']} busy"
            + (f"; the floor's p99 {r['floor']['p99_ms']:.1f} ms" if "floor" in r else "")
        ),
        lambda r: bool(r["met"]),
        rollover_limit,
    ),
    Target(
        "restart storm: 10,000 lots with valid tokens bind again",
        "restart_storm",
        "all bound <= 20 s",
        lambda r: (
            f"{r['rebound_since_start_s']} s from the new gateway's start ({r['startup_s']} s to listen); "
            f"{r['binds_by_token']:,} bound by token, {r['logins']} logins"
        ),
        lambda r: bool(r["met"]),
    ),
    Target(
        "start-up to ready, 1 GiB journal",
        "startup",
        "<= 5 s",
        lambda r: (
            f"{r['process_killed_s']:.2f} s after kill -9, {r['process_stopped_s']:.2f} s after a stop "
            f"({r['mib']} MiB)"
        ),
        lambda r: bool(max(r["process_killed_s"], r["process_stopped_s"]) <= 5 and r["mib"] >= 1024),
    ),
    Target(
        "honest lot's uplink p99 under 4 attacks at once (issue 19), vs quiet",
        "hostile",
        "<= 3 x quiet",
        lambda r: (
            f"{r['p99_ratio']:.2f} x (p99 {r['quiet']['p99_ms']:.1f} -> {r['attacked']['p99_ms']:.1f} ms, "
            f"p50 {r['quiet']['p50_ms']:.1f} -> {r['attacked']['p50_ms']:.1f} ms), "
            f"{sum(r['connections'].values()):,} attack connections"
        ),
        lambda r: bool(r["p99_ratio"] <= 3),
    ),
    Target(
        "gateway RSS under those attacks",
        "hostile",
        "<= +64 MiB",
        lambda r: (
            f"{r['rss_growth_mib']:+.0f} MiB at the peak, the gateway and its workers "
            f"({r['rss_total_quiet_mib']:.0f} -> {r['rss_total_peak_mib']:.0f}: the gateway "
            f"{r['rss_gateway_quiet_mib']:.0f} -> {r['rss_gateway_peak_mib']:.0f}, Argon2id in it "
            f"{r['argon2_in_gateway_peak_mib']:.0f} at most, the password worker "
            f"{r['rss_passwords_quiet_mib']:.0f} -> {r['rss_passwords_peak_mib']:.0f}, the body workers "
            f"{r['rss_bodies_quiet_mib']:.0f} -> {r['rss_bodies_peak_mib']:.0f}), "
            f"{r['rss_retained_mib']:+.0f} MiB after"
        ),
        lambda r: bool(r["rss_growth_mib"] <= 64),
    ),
    Target(
        "file descriptors under those attacks",
        "hostile",
        "no exhaustion",
        lambda r: (
            f"peak {r['fds_peak']:,} of {r['fds_limit']:,}; honest lot failed to connect "
            f"{r['honest_connect_failures']} times; EMFILE {r['emfile_log_lines']}"
        ),
        lambda r: bool(
            r["fds_peak"] < r["fds_limit"]
            and r["honest_connect_failures"] == 0
            and r["emfile_log_lines"] == 0
        ),
    ),
    Target(
        "backlog drain into JetStream, 100,000 events (issue 23), nats-server on the same cores",
        "nats_drain",
        ">= 20,000 events/s, memory flat",
        lambda r: (
            f"{r['events_per_s']:,.0f} events/s; RSS +{r['rss_rise_mib']:.1f} MiB; "
            f"stream holds {r['stream_messages']:,}, {r['stream_out_of_order']} out of order"
        ),
        lambda r: bool(
            r["events_per_s"] >= 20_000
            and r["rss_rise_mib"] <= 32
            and r["stream_messages"] == r["events"]
            and r["stream_out_of_order"] == 0
        ),
    ),
    Target(
        "uplinks/s with the nats sink live vs log-only, fsync always, same rounds (issue 23)",
        "uplink",
        ">= 0.9 x",
        lambda r: (
            f"{r['nats']['vs_durable']['median']:.2f} x "
            f"({r['nats']['vs_durable']['min']:.2f}-{r['nats']['vs_durable']['max']:.2f}), "
            f"{r['rps']['nats']['median']:,.0f} vs {r['rps']['always']['median']:,.0f}/s, "
            f"p50 {r['nats']['p50_ms']['median']:.2f} vs {r['nats']['durable_p50_ms']['median']:.2f} ms; "
            f"medians of {r['rounds']} rounds"
            if "nats" in r
            else "not run (bench.uplink --nats)"
        ),
        lambda r: bool("nats" in r and r["nats"]["vs_durable"]["median"] >= 0.9),
    ),
)


def rows(results: Path = RESULTS) -> list[tuple[str, str, str, str]]:
    """(what, figure, target, met) for every target, from the results in `results`."""
    table = []
    for target in TARGETS:
        path = results / f"{target.result}.json"
        if not path.exists():
            table.append((target.what, "not run", target.target, "-"))
            continue
        result = json.loads(path.read_text())
        try:
            figure, met = target.figure(result), "yes" if target.met(result) else "NO"
        except KeyError as missing:
            figure, met = f"{path.name} lacks {missing}", "-"
        table.append((target.what, figure, target.target, met))
    return table


def limits(results: Path = RESULTS) -> list[tuple[str, str]]:
    """(what, its limit and what it would take) for each target not met that can say so."""
    found = []
    for target in TARGETS:
        path = results / f"{target.result}.json"
        if target.limit is None or not path.exists():
            continue
        result = json.loads(path.read_text())
        try:
            if target.met(result):
                continue
            found.append((target.what, target.limit(result, results)))
        except KeyError as missing:
            found.append((target.what, f"{path.name} lacks {missing}"))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = parser.parse_args()
    table = rows()
    if args.markdown:
        print("| what | measured | target | met |\n| --- | --- | --- | --- |")
        for row in table:
            print("| " + " | ".join(row) + " |")
    else:
        width = max(len(row[0]) for row in table)
        for what, figure, target, met in table:
            print(f"{what:<{width}}  {met:>4}  {figure}  (target {target})")
    for what, limit in limits():
        print(f"\nnot met: {what}\n  {limit}")


if __name__ == "__main__":
    main()

"""bench.summary: the table of issue 10's targets read from the benchmarks' JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench.hostile import Sample, memory_figures
from bench.summary import TARGETS, limits, rows


def write(directory: Path, name: str, figures: dict[str, object]) -> None:
    (directory / f"{name}.json").write_text(json.dumps(figures))


def test_each_target_reads_met_or_not_from_its_results(tmp_path: Path) -> None:
    """A figure inside its target reads "yes", one outside "NO"; a missing benchmark "not run"."""
    write(tmp_path, "uplink", uplink_result(never=0.95, bare=1.05, p99=30.0))
    write(tmp_path, "startup", {"mib": 1024, "process_killed_s": 2.0, "process_stopped_s": 1.0})
    table = {row[0]: row for row in rows(tmp_path)}
    uplink = table[TARGETS[0].what]
    assert uplink[3] == "NO" and "p99 30.0 ms" in uplink[1]  # the ratios are met, the p99 is not
    assert table["start-up to ready, 1 GiB journal"][3] == "yes"
    assert table["RSS per bound idle lot (10,000 lots)"][1:] == ("not run", "<= 4 KiB", "-")


def uplink_result(never: float, bare: float, p99: float) -> dict[str, object]:
    """bench.uplink's figures with these medians (each range one value)."""

    def spread(value: float) -> dict[str, float]:
        return {"median": value, "min": value, "max": value}

    return {
        "durable_vs_never": spread(never),
        "durable_vs_bare": spread(bare),
        "p99_ms": spread(p99),
        "fsync_ms": spread(0.2),
        "records_per_fsync": spread(7.5),
        "rounds": 3,
    }


def test_the_uplink_target_is_durable_against_never_and_bare(tmp_path: Path) -> None:
    """Met only with durable/never >= 0.9, durable/bare >= 1.0 (medians) and p99 <= 25 ms."""
    what = TARGETS[0].what
    assert "never" in what and "bare" in what
    for never, bare, p99, met in (
        (0.92, 1.01, 9.0, "yes"),
        (0.85, 1.2, 9.0, "NO"),
        (0.95, 0.97, 9.0, "NO"),
    ):
        write(tmp_path, "uplink", uplink_result(never, bare, p99))
        row = {row[0]: row for row in rows(tmp_path)}[what]
        assert row[3] == met and f"{never:.2f} x never" in row[1]
    assert not any("os.write" in target.what for target in TARGETS)  # that ratio is retired


def commit_figures(never_us: float, durable_us: float, per_batch: float, needed: float) -> dict[str, object]:
    """bench.uplink's "commit" figures with these medians (each range one value)."""

    def spread(value: float) -> dict[str, float]:
        return {"median": value, "min": value, "max": value}

    return {
        "reactor_us_never": spread(never_us),
        "reactor_us_durable": spread(durable_us),
        "reactor_busy_durable": spread(0.98),
        "per_batch_us": spread(per_batch),
        "records_a_fsync": spread(7.7),
        "records_needed": spread(needed),
    }


def test_an_unmet_uplink_target_says_its_limit_and_what_it_would_take(tmp_path: Path) -> None:
    """Under the table, the durable uplink's row not met gives the reactor's CPU a request in both
    modes, the commit's cost a batch, the batch it would take, and the run with more connections."""
    what = TARGETS[0].what
    figures = {
        **uplink_result(never=0.84, bare=1.3, p99=5.0),
        "connections": 16,
        "commit": commit_figures(100.0, 119.0, 146.3, 13.2),
        "nodisk_vs_never": {"median": 0.88, "min": 0.87, "max": 0.89},
    }
    write(tmp_path, "uplink", figures)
    [(named, limit)] = limits(tmp_path)
    assert named == what and limit.startswith("the reactor is the limit (98% of a core busy durable): ")
    assert "119 us of its CPU a durable uplink against 100 with fsync never" in limit
    assert "146 us a batch" in limit and "7.7 records a fsync" in limit
    assert "0.88 x never, so not the disk" in limit
    assert "13.2 records a fsync" in limit and "more lots posting at once than 16" in limit
    assert "measured with" not in limit  # no run with more connections yet
    more = {**uplink_result(never=0.95, bare=1.4, p99=21.0), "connections": 64}
    more["records_per_fsync"] = {"median": 28.3, "min": 28.0, "max": 29.0}
    write(tmp_path, "uplink_more", more)
    [(_, limit)] = limits(tmp_path)
    assert (
        "measured with 64 connections: 0.95 x never (0.95-0.95), 28.3 records a fsync, p99 21.0 ms" in limit
    )
    # Met, it says nothing; from an older bench.uplink without the figures, what is missing.
    write(tmp_path, "uplink", {**figures, **uplink_result(never=0.92, bare=1.3, p99=5.0)})
    assert limits(tmp_path) == []
    write(tmp_path, "uplink", uplink_result(never=0.84, bare=1.3, p99=5.0))
    assert limits(tmp_path) == [(what, "uplink.json lacks 'commit'")]
    # A reactor idle part of the durable run is not called the limit: the wait is, and it says so.
    idle = commit_figures(100.0, 119.0, 146.3, 13.2)
    idle["reactor_busy_durable"] = {"median": 0.86, "min": 0.85, "max": 0.9}
    write(tmp_path, "uplink", {**figures, "commit": idle})
    [(_, limit)] = limits(tmp_path)
    assert limit.startswith("the reactor waits for the commit 14% of the durable run, and besides: 119 us")


def test_gate_open_is_met_only_in_every_run(tmp_path: Path) -> None:
    """gateOpen's row lists each run's p99 and is met only when every run is, with no errors."""
    figures = {
        "p99_runs_ms": [7.5, 8.0, 10.4, 9.0, 6.0],
        "met_runs": 4,
        "errors": 0,
        "client_cpu_share": [0.2, 0.25, 0.3, 0.2, 0.2],
        "machine_busy_share": [0.8, 0.9, 1.0, 0.85, 0.8],
    }
    write(tmp_path, "gate_open", figures)
    [row] = [row for row in rows(tmp_path) if row[0].startswith("gateOpen")]
    assert row[3] == "NO" and "7.5, 8.0, 10.4, 9.0, 6.0" in row[1] and "met in 4 of 5" in row[1]
    write(tmp_path, "gate_open", {**figures, "p99_runs_ms": [7.5] * 5, "met_runs": 5})
    [row] = [row for row in rows(tmp_path) if row[0].startswith("gateOpen")]
    assert row[3] == "yes" and "client CPU 20%-30%" in row[1] and "from the send" not in row[1]
    # With each run's figures, the p99 from the client's send (its own lag left out) and the gateway's CPU.
    runs = [{"from_sent": {"p99_ms": p99 - 0.7}, "gateway_cpu_share": 0.45} for p99 in figures["p99_runs_ms"]]
    write(tmp_path, "gate_open", {**figures, "runs": runs})
    [row] = [row for row in rows(tmp_path) if row[0].startswith("gateOpen")]
    assert row[1].endswith(
        "; p99 from the send 6.8, 7.3, 9.7, 8.3, 5.3 ms, gateway CPU 45%, 45%, 45%, 45%, 45%"
    )


def test_the_rollover_and_the_restart_storm_read_their_verdicts(tmp_path: Path) -> None:
    """The rollover and restart-storm rows show their seconds and take met from the benchmark."""
    probe = {"p50_ms": 3.0, "p99_ms": 30.0}
    rollover = {
        "rebound_s": 31.0,
        "uploaded_s": 31.5,
        "lots": 10000,
        "spread_s": 30.0,
        "probe": probe,
        "argon2_checks": 0,
        "busy_answers": 0,
        "met": False,
    }
    write(tmp_path, "rollover", rollover)
    storm = {
        "rebound_since_start_s": 5.3,
        "startup_s": 1.8,
        "binds_by_token": 10000,
        "logins": 0,
        "met": True,
    }
    write(tmp_path, "restart_storm", storm)
    table = {row[0]: row for row in rows(tmp_path)}
    [roll] = [row for what, row in table.items() if "rollover" in what]
    [restart] = [row for what, row in table.items() if "restart storm" in what]
    assert roll[3] == "NO" and "uploading 31.5 s" in roll[1] and "probe p99 30.0 ms" in roll[1]
    assert restart[3] == "yes" and "5.3 s from the new gateway's start" in restart[1]
    assert "floor" not in roll[1]  # from before the floor: the row as it was
    write(
        tmp_path, "rollover", {**rollover, "floor": {"what": "a bare resource", "p50_ms": 2.0, "p99_ms": 6.0}}
    )
    [roll] = [row for what, row in {row[0]: row for row in rows(tmp_path)}.items() if "rollover" in what]
    assert roll[1].endswith("0 busy; the floor's p99 6.0 ms")


def test_an_unmet_rollover_says_whether_the_probe_or_the_return_and_whose_limit(tmp_path: Path) -> None:
    """The probe's p99 against the floor's: over 25 ms the machine's, under it the gateway's."""
    what = next(target.what for target in TARGETS if target.result == "rollover")
    rollover = {
        "rebound_s": 31.0,
        "uploaded_s": 31.5,
        "lots": 10000,
        "spread_s": 30.0,
        "probe": {"p50_ms": 4.0, "p99_ms": 35.0},
        "floor": {"what": "a bare resource", "p50_ms": 2.0, "p99_ms": 7.0},
        "argon2_checks": 0,
        "busy_answers": 0,
        "met": False,
    }
    write(tmp_path, "rollover", rollover)
    [(named, limit)] = limits(tmp_path)
    assert named == what
    assert limit == (
        "the probe's p99 35.0 ms against the floor's 7.0 ms (a bare resource; p50 2.0 against 4.0), 5.0 x: "
        "the gateway is the limit, the floor under it. At 5.0 x its floor, the probe would meet it on a "
        "machine whose floor's p99 stays under 5.0 ms during the rollover (here 7.0)"
    )
    write(
        tmp_path,
        "rollover",
        {**rollover, "floor": {"what": "a bare resource", "p50_ms": 2.0, "p99_ms": 28.0}},
    )
    [(_, limit)] = limits(tmp_path)
    assert "1.2 x: the machine is the limit, the floor itself over 25 ms" in limit
    late = {**rollover, "uploaded_s": 75.0, "probe": {"p50_ms": 3.0, "p99_ms": 9.0}}
    write(tmp_path, "rollover", late)
    [(_, limit)] = limits(tmp_path)
    assert limit == (
        "the lots were not all uploading again within 60 s (75.0 s), which the floor does not speak to"
    )
    write(tmp_path, "rollover", {**late, "uploaded_s": 31.5, "met": True})
    assert limits(tmp_path) == []


def test_a_result_without_the_figure_says_which_is_missing(tmp_path: Path) -> None:
    """A results file from another version of a benchmark names the missing key, and is not met."""
    write(tmp_path, "startup", {"mib": 1024})
    row = {row[0]: row for row in rows(tmp_path)}["start-up to ready, 1 GiB journal"]
    assert "process_killed_s" in row[1] and row[3] == "-"


def test_the_hostile_targets_read_the_ratio_the_rss_and_the_fds(tmp_path: Path) -> None:
    """bench.hostile's three rows: a p99 ratio over 3 is not met, RSS and fds within bounds are."""
    write(
        tmp_path,
        "hostile",
        {
            "p99_ratio": 3.4,
            "quiet": {"p50_ms": 2.0, "p99_ms": 10.0},
            "attacked": {"p50_ms": 4.0, "p99_ms": 34.0},
            "connections": {"slowloris": 800, "dollar": 8, "junk": 12, "flood": 180},
            **memory_figures(
                [sample("quiet", 100, 90, 40), sample("attack", 104, 91, 76)], sample("after", 102, 90, 44)
            ),
            "fds_peak": 1020,
            "fds_limit": 20000,
            "honest_connect_failures": 0,
            "emfile_log_lines": 0,
        },
    )
    hostile = [row for row in rows(tmp_path) if "attack" in row[0]]
    assert [row[3] for row in hostile] == ["NO", "yes", "yes"]
    assert "3.40 x" in hostile[0][1] and "1,000 attack connections" in hostile[0][1]
    # The RSS row reads what bench.hostile writes (memory_figures), each part as well as the whole.
    assert hostile[1][1].startswith("+41 MiB at the peak, the gateway and its workers (230 -> 271")
    assert "the body workers 40 -> 76" in hostile[1][1] and "+6 MiB after" in hostile[1][1]


def sample(phase: str, gateway: int, passwords: int, bodies: int) -> Sample:
    """A bench.hostile memory sample in MiB, no Argon2id in the gateway."""
    mib = 2**20
    return Sample(
        phase, gateway * mib, 0, 10, {"body": bodies * mib, "password": passwords * mib, "other": 0}
    )


def test_the_nats_uplink_target_reads_the_per_round_ratio_against_the_durable_gateway(tmp_path: Path) -> None:
    """bench.uplink --nats writes the median of nats/durable over the rounds: met at >= 0.9; a run
    without --nats says how to get the figure."""
    what = next(target.what for target in TARGETS if "nats sink" in target.what)

    def spread(value: float) -> dict[str, float]:
        return {"median": value, "min": value, "max": value}

    plain = uplink_result(never=0.95, bare=1.05, p99=9.0)
    write(tmp_path, "uplink", plain)
    assert {row[0]: row for row in rows(tmp_path)}[what][1] == "not run (bench.uplink --nats)"
    for ratio, met in ((0.93, "yes"), (0.76, "NO")):
        nats = {
            "vs_durable": spread(ratio),
            "p50_ms": spread(4.0),
            "durable_p50_ms": spread(3.4),
            "p99_ms": spread(16.0),
            "events_forwarded": 19696.0,
            "backlog": 0.0,
        }
        rps = {"always": spread(4336.0), "nats": spread(4336.0 * ratio)}
        write(tmp_path, "uplink", {**plain, "nats": nats, "rps": rps})
        row = {row[0]: row for row in rows(tmp_path)}[what]
        assert row[3] == met and row[1].startswith(f"{ratio:.2f} x") and "p50 4.00 vs 3.40 ms" in row[1]


def gate_open_figures(gateway_p99: list[float], floor_p99: list[float]) -> dict[str, object]:
    """bench.gate_open's figures with these runs' p99s, the floor's interleaved with them."""
    return {
        "p99_runs_ms": gateway_p99,
        "met_runs": sum(1 for p99 in gateway_p99 if p99 <= 10),
        "errors": 0,
        "client_cpu_share": [0.1] * len(gateway_p99),
        "machine_busy_share": [0.5] * len(gateway_p99),
        "runs": [
            {"from_sent": {"p99_ms": p99}, "gateway_cpu_share": 0.5, "gateway_cpu_us_per_command": 1600.0}
            for p99 in gateway_p99
        ],
        "floor": {
            "what": "a bare relay",
            "runs": [{"relay_cpu_us_per_command": 400.0} for _ in floor_p99],
            "p99_runs_ms": floor_p99,
            "met_runs": sum(1 for p99 in floor_p99 if p99 <= 10),
            "max_send_lag_ms": [3.0, 53.5, 4.0][: len(floor_p99)],
        },
    }


def test_an_unmet_gate_open_target_says_whether_the_machine_or_the_gateway_is_the_limit(
    tmp_path: Path,
) -> None:
    """The floor missing 10 ms too makes the machine the limit; the floor meeting it, the gateway."""
    what = next(target.what for target in TARGETS if target.result == "gate_open")
    write(tmp_path, "gate_open", gate_open_figures([20.0, 30.0, 12.0], [4.0, 15.0, 3.0]))
    [(named, limit)] = limits(tmp_path)
    assert named == what
    assert limit.startswith("the machine is the limit: the floor (a bare relay: ")
    assert "missed 10 ms too, in 1 of 3 runs: p99 4.0, 15.0, 3.0 ms" in limit
    assert "send lag up to 53.5 ms" in limit
    # Ratios 5.0, 2.0 and 4.0: their median.
    assert "the gateway's p99 was 4.0 x the floor's" in limit
    assert "its CPU 1600 us a command against the relay's 400" in limit
    assert limit.endswith("on a machine whose floor stays under 2.5 ms in every run (here 3.0-15.0 ms)")
    write(tmp_path, "gate_open", gate_open_figures([20.0, 30.0, 12.0], [4.0, 6.0, 3.0]))
    [(_, limit)] = limits(tmp_path)
    assert limit.startswith("the gateway is the limit: the floor (a bare relay) met it in every run")
    write(tmp_path, "gate_open", gate_open_figures([8.0, 9.0, 7.0], [4.0, 15.0, 3.0]))
    assert limits(tmp_path) == []  # met: nothing to explain
    figures = gate_open_figures([20.0, 30.0, 12.0], [4.0, 15.0, 3.0])
    del figures["floor"]
    write(tmp_path, "gate_open", figures)
    assert limits(tmp_path) == [(what, "gate_open.json lacks 'floor'")]  # from before the floor

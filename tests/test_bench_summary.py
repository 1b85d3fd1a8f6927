"""bench.summary: the table of issue 10's targets read from the benchmarks' JSON."""

from __future__ import annotations

import json
from pathlib import Path

from bench.summary import TARGETS, rows


def write(directory: Path, name: str, figures: dict[str, object]) -> None:
    (directory / f"{name}.json").write_text(json.dumps(figures))


def test_each_target_reads_met_or_not_from_its_results(tmp_path: Path) -> None:
    """A figure inside its target reads "yes", one outside "NO"; a missing benchmark "not run"."""
    write(
        tmp_path,
        "uplink",
        {"ratio": 0.75, "gateway": {"rps": 750, "p99_ms": 30.0}, "baseline": {"rps": 1000}},
    )
    write(tmp_path, "startup", {"mib": 1024, "process_killed_s": 2.0, "process_stopped_s": 1.0})
    table = {row[0]: row for row in rows(tmp_path)}
    uplink = table[TARGETS[0].what]
    assert uplink[3] == "NO" and "p99 30.0 ms" in uplink[1]  # the ratio is met, the p99 is not
    assert table["start-up to ready, 1 GiB journal"][3] == "yes"
    assert table["RSS per bound idle lot (10,000 lots)"][1:] == ("not run", "<= 4 KiB", "-")


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
            "rss_growth_mib": 40.0,
            "argon2_peak_mib": 0.0,
            "rss_growth_outside_argon2_mib": 40.0,
            "rss_retained_mib": 3.0,
            "fds_peak": 1020,
            "fds_limit": 20000,
            "honest_connect_failures": 0,
            "emfile_log_lines": 0,
        },
    )
    hostile = [row for row in rows(tmp_path) if "attack" in row[0]]
    assert [row[3] for row in hostile] == ["NO", "yes", "yes"]
    assert "3.40 x" in hostile[0][1] and "1,000 attack connections" in hostile[0][1]

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

"""bench.uplink: what waiting for the commit costs the reactor, from a round's figures (nothing timed)."""

from __future__ import annotations

from typing import Any

import pytest

from bench.uplink import TARGET, commit_cost, reactor_us_per_request


def run(reactor_share: float, rps: float, records_per_fsync: float | None = None) -> dict[str, Any]:
    """One wrk run's figures as `loaded` and the journal counts leave them."""
    figures: dict[str, Any] = {"rps": rps, "thread_cpu_share": {"main": reactor_share, "child 7": 0.14}}
    if records_per_fsync is not None:
        figures["records_per_fsync"] = records_per_fsync
    return figures


def test_the_reactor_cpu_a_request_is_its_thread_share_over_the_rate() -> None:
    """The fsync helper's share (a child) is not the reactor's."""
    assert reactor_us_per_request(run(1.0, 10_000)) == pytest.approx(100.0)
    assert reactor_us_per_request(run(0.98, 8_000)) == pytest.approx(122.5)


def test_the_commit_cost_a_batch_and_the_batch_that_would_meet_the_target() -> None:
    """(durable - never) a request times the records a fsync; the records a fsync that make the ratio 0.9."""
    cost = commit_cost(run(0.98, 8_000, 7.5), run(1.0, 10_000))
    assert cost["reactor_us_never"] == pytest.approx(100.0)
    assert cost["reactor_us_durable"] == pytest.approx(122.5)
    assert cost["reactor_busy_durable"] == 0.98
    assert cost["per_batch_us"] == pytest.approx(22.5 * 7.5)
    assert cost["records_needed"] == pytest.approx(22.5 * 7.5 / (100.0 * (1 / 0.9 - 1)))
    # At that batch the same cost a batch, spread over its records, leaves the reactor at 0.9 of "never".
    n, k, b = cost["reactor_us_never"], cost["per_batch_us"], cost["records_needed"]
    assert n / (n + k / b) == pytest.approx(TARGET)


@pytest.mark.parametrize("records", [4.0, 7.7, 31.0])
@pytest.mark.parametrize("durable_rps", [8_200.0, 8_800.0, 9_400.0])
def test_a_batch_at_least_the_one_needed_is_a_ratio_at_least_the_target(
    records: float, durable_rps: float
) -> None:
    """The model agrees with the runs it reads: the measured batch is at least the one needed exactly
    when the reactor's CPU a request durable is within 1/0.9 of "never"'s."""
    cost = commit_cost(run(0.99, durable_rps, records), run(1.0, 10_000))
    ratio = cost["reactor_us_never"] / cost["reactor_us_durable"]
    assert (records >= cost["records_needed"]) == (ratio >= TARGET)


def test_a_durable_reactor_cheaper_than_never_costs_nothing_a_batch() -> None:
    """Noise can make the durable round the cheaper one: no negative cost, nothing needed."""
    cost = commit_cost(run(1.0, 10_500, 8.0), run(1.0, 10_000))
    assert cost["per_batch_us"] == 0.0 and cost["records_needed"] == 0.0

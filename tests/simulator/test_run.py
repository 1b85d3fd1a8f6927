"""Many lots at once, in memory: pacing, the summary against what the gateway stored, soak lines, stats."""

from __future__ import annotations

import io
import json
from typing import Any

from twisted.internet.defer import Deferred

from gateway.lotclient.credentials import LotCredentials
from gateway.simulator.run import ProgressBar, Settings, Simulation
from gateway.simulator.stats import LatencyHistogram, Summary
from tests.lots.harness import PASSWORD, Uplink, lot_entry

SUMMARY_KEYS = ["lots", "sent", "acked", "retried", "errors", "p50_ms", "p99_ms", "downlinks_replied"]


def gateway_and_lots(count: int, bad: int = 0) -> tuple[Uplink, list[LotCredentials]]:
    """An in-memory gateway uplink with `count` lots, and their credentials (the last `bad` wrong)."""
    entries = [lot_entry(park_code=f"P{n:03d}", username=f"lot{n:03d}") for n in range(count)]
    credentials = [
        LotCredentials(f"P{n:03d}", f"lot{n:03d}", PASSWORD if n < count - bad else "wrong", "s3cret")
        for n in range(count)
    ]
    return Uplink(lots=entries), credentials


def simulation(gateway: Uplink, lots: list[LotCredentials], **settings: Any) -> Simulation:
    return Simulation(
        lots=lots,
        http=gateway.treq,
        uplink_url="http://gw/uplink",
        clock=gateway.clock,
        settings=Settings(seed=1, **settings),
    )


def drive(gateway: Uplink, run: Simulation, stop_after: float | None = None, step: float = 0.02) -> Summary:
    """Run the simulation on the gateway's clock, flushing HTTP as it goes; its summary."""
    results: list[Any] = []
    Deferred.fromCoroutine(run.run()).addBoth(results.append)
    elapsed = 0.0
    while not results:
        gateway.treq.flush()
        gateway.clock.advance(step)
        elapsed += step
        if stop_after is not None and elapsed >= stop_after:
            run.stop()
        assert elapsed < 600, "the simulation did not end"
    summary = results[0]
    assert isinstance(summary, Summary), summary
    return summary


def test_the_summary_agrees_with_what_the_gateway_stored() -> None:
    """20 lots at 50 events/s for 2 s: every message acknowledged is stored once, and nothing else is."""
    gateway, lots = gateway_and_lots(20)
    run = simulation(gateway, lots, rate=50, duration=2, drain=5)
    acked: list[tuple[str, str]] = []
    run.stats.acked_listeners.append(lambda park, code, opr: acked.append((park, opr)))
    summary = drive(gateway, run)
    stored = [(r.park, r.opr) for r in gateway.journal.records if r.kind == "uplink"]
    assert summary.lots == 20 and summary.errors == 0 and summary.retried == 0
    assert summary.sent == summary.acked == len(stored) == len(set(stored))
    assert sorted(acked) == sorted(stored)
    set_up = 20 * 6
    assert 100 * 2 <= summary.sent - set_up <= 100 * 4  # 100 events, 1 to 3 messages each
    assert json.loads(summary.line()) == {key: getattr(summary, key) for key in SUMMARY_KEYS}
    assert list(json.loads(summary.line())) == SUMMARY_KEYS


def test_a_lot_that_cannot_log_in_is_an_error() -> None:
    """A lot whose password is wrong is left out and counted as an error; the others run."""
    gateway, lots = gateway_and_lots(3, bad=1)
    run = simulation(gateway, lots, rate=10, duration=1)
    summary = drive(gateway, run)
    assert summary.lots == 2 and summary.errors == 1 and summary.acked > 0
    assert list(run.stats.reasons) == ["login 9003: 用户名密码错误: parkUserName or parkUserPwd is wrong"]


def test_a_soak_writes_a_line_every_interval_until_stopped() -> None:
    """Without a duration the run goes on, a summary line each interval, until stop; then the summary."""
    gateway, lots = gateway_and_lots(2)
    out = io.StringIO()
    run = Simulation(
        lots=lots,
        http=gateway.treq,
        uplink_url="http://gw/uplink",
        clock=gateway.clock,
        settings=Settings(seed=2, rate=20, duration=None, summary_interval=1.0),
        summaries=out,
    )
    summary = drive(gateway, run, stop_after=3.5)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert len(lines) == 3
    for line in lines:
        assert {"time", "window_s", "acked_per_s", "errors", "p99_ms", "reconnects", "pending"} <= set(line)
        assert line["lots"] == 2 and line["errors"] == 0 and line["acked"] > 0
    assert sum(line["acked"] for line in lines) <= summary.acked
    assert summary.errors == 0


def test_latency_percentiles() -> None:
    """Percentiles come from 2 % buckets: within 2 % of the true value."""
    histogram = LatencyHistogram()
    assert histogram.percentile(0.5) == 0.0
    for ms in range(1, 1001):
        histogram.add(float(ms))
    assert abs(histogram.percentile(0.50) - 500) <= 10
    assert abs(histogram.percentile(0.99) - 990) <= 20


def test_progress_bar_redraws_one_line() -> None:
    """The bar (tqdm) redraws its line in place, and ends it with a newline before a line without bar."""
    stream = io.StringIO()
    bar = ProgressBar(stream)
    bar.draw(0.5, "sent 10")
    bar.draw(None, "soak")
    bar.finish()
    text = stream.getvalue()
    half = text.index("\r" + "#" * 15 + " " * 15 + "  50% sent 10")
    assert text.startswith("\r") and "\n" not in text[:half]
    assert "\n" in text[half : text.index("\rsoak")]
    assert "\rsoak" in text and text.endswith("\n")

"""bench.gate_open's floor: the bare relay answers the benchmark's own client (nothing timed)."""

from __future__ import annotations

import argparse

from bench.gate_open import client_run, floor_run, relay


def test_the_floor_answers_every_command_of_the_client_through_the_echo_process() -> None:
    """The client's check (200, resultCode 0000, the barCode it sent) holds for each of its commands."""
    args = argparse.Namespace(lots=10, rate=40.0, seconds=1.0, connections=2)
    with relay() as (port, pid):
        run = floor_run(client_run(args, port, pid))
    assert run["client"]["requests"] == run["client"]["answered_ok"] == 40
    assert run["errors"] == 0 and run["client"]["statuses"] == {"200": 40}
    assert "relay_cpu_share" in run and not any(key.startswith("server_") for key in run)

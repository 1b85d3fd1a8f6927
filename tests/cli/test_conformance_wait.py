"""`cpmictl conformance platform` without --api does not wait for downlinks nobody will trigger (item 8)."""

from __future__ import annotations

import time

import pytest_twisted

from tests.conformance.fakes import reference, rows_of, run_kit, serve


@pytest_twisted.ensureDeferred
async def test_without_api_or_wait_the_downlink_checks_are_skipped_at_once() -> None:
    """No --api and no --wait: every downlink check is SKIP saying what to give, within seconds."""
    served = serve(reference())
    started = time.monotonic()
    try:
        code, text = await run_kit([*served.options()[:4], "--only", "downlink,tcp.escaped-out"])
    finally:
        await served.stop()
    elapsed = time.monotonic() - started
    rows = rows_of(text)
    downlinks = {name: row for name, row in rows.items() if name.startswith("downlink.")}
    assert code == 0
    assert len(downlinks) >= 10
    reason = "needs --api, or --wait S to trigger each downlink by hand on the platform"
    assert set(downlinks.values()) == {("SKIP", reason)}
    assert rows["tcp.escaped-out"][0] == "SKIP"
    assert "trigger" not in text.split(reason, 1)[0]  # nobody was asked to trigger anything
    assert elapsed < 30

"""docs/nats.md's sample consumer runs as written against a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from pathlib import Path
from typing import Any

import nats
import pytest

from tests.cluster.natsserver import NatsServer

DOC = Path(__file__).parent.parent.parent / "docs" / "nats.md"


def test_the_sample_consumer_reads_each_event(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nats-py consumer of docs/nats.md prints each event of CPMI_EVENTS with its Nats-Msg-Id."""
    (code,) = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    assert code.rstrip().endswith("asyncio.run(main())")
    namespace: dict[str, Any] = {}
    exec(code.replace("nats://nats-1:4222", nats_server.url).replace("asyncio.run(main())", ""), namespace)

    async def run() -> None:
        nc = await nats.connect(nats_server.url)
        js = nc.jetstream()
        await js.add_stream(name="CPMI_EVENTS", subjects=["cpmi.events.>"])
        for n in range(3):
            event = {
                "id": f"gw-{n}",
                "type": "org.cpmi.t002.carIn.v1",
                "source": "urn:cpmi:park:P001",
                "data": n,
            }
            await js.publish(
                "cpmi.events.P001.carIn", json.dumps(event).encode(), headers={"Nats-Msg-Id": f"P001:o-{n}"}
            )
        await nc.close()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(namespace["main"](), 2)

    asyncio.run(run())
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"P001:o-{n} org.cpmi.t002.carIn.v1 P001 {n}" for n in range(3)]

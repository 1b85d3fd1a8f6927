"""docs/nats.md's sample consumer runs as written against a real JetStream."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import textwrap
import tomllib
from pathlib import Path
from typing import Any

import nats
import pytest

from gateway import config
from tests.cluster.natsserver import NatsServer
from tests.lots.harness import HASH

DOC = Path(__file__).parent.parent.parent / "docs" / "nats.md"


def test_the_sample_consumer_reads_each_event(
    nats_server: NatsServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """The nats-py consumer of docs/nats.md prints each event of CPMI_EVENTS with its Nats-Msg-Id."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)
    (code,) = [block for block in blocks if "pull_subscribe" in block]
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


def test_the_forward_examples_are_configurations_the_gateway_takes() -> None:
    """Each `[cloud]` + `[[forward]]` example of docs/nats.md loads with [cluster] and a lot (t002 in
    [cloud] with nats in a [[forward]] among them); t002 as a [[forward]] is refused, as the page says."""
    text = DOC.read_text(encoding="utf-8")
    examples = [
        textwrap.dedent(block)
        for block in re.findall(r"```toml\n(.*?)```", text, re.S)
        if "[[forward]]" in block
    ]
    assert len(examples) == 2
    lot = {
        "park_code": "P001",
        "username": "lot001",
        "password": HASH,
        "secret": "k",
        "upstream_username": "up1",
        "upstream_password": "pw1",
    }
    sinks = []
    for example in examples:
        document = {**tomllib.loads(example), "cluster": {"servers": ["nats://127.0.0.1:4222"]}, "lot": [lot]}
        settings = config.parse(document, environ={})
        sinks.append((settings.cloud.sink, [each.cloud.sink for each in settings.forwards]))
    assert sinks == [("nats", ["cloudevents"]), ("t002", ["nats"])]
    t002 = {
        "name": "city",
        "sink": "t002",
        "url": "https://city.example/cpmi",
    }
    with pytest.raises(config.ConfigError, match="t002"):
        config.parse({"forward": [t002], "lot": [lot]}, environ={})

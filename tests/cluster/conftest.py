"""The real nats-server the cluster tests run against, started and killed by the fixture."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster.natsserver import NatsServer


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    """A nats-server with JetStream (-js -sd tmp -p free port), its output to a file; killed at the end.

    ``stop()`` and ``start()`` restart it on the same port and store.
    """
    server = NatsServer(tmp_path / "nats")
    server.work.mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()

"""[cluster] in the service tree: the NATS connection between the journal and the parts."""

from __future__ import annotations

import threading
from pathlib import Path

from gateway import tap
from gateway.cluster.connection import CLOSED, CONNECTING
from gateway.cluster.service import ClusterService
from tests.cluster.natsserver import free_port
from tests.test_tap import MemoryReactor, stop, write_config


def make(tmp_path: Path, extra: str) -> tuple[tap.GatewayService, MemoryReactor]:
    options = tap.Options()
    options.parseOptions(
        ["--config", write_config(tmp_path, (Path(tap.__file__).parent / "example.toml").read_text() + extra)]
    )
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    assert isinstance(service, tap.GatewayService)
    return service, reactor


def test_without_cluster_there_is_no_nats_connection(tmp_path: Path) -> None:
    """With [cluster] unset the tree has no cluster service (and no NATS thread)."""
    service, reactor = make(tmp_path, "")
    assert [child.name for child in service] == ["journal", "parts"]
    stop(service, reactor)


def test_cluster_sits_between_the_journal_and_the_parts(tmp_path: Path) -> None:
    """With [cluster] the connection starts after the journal and before the parts, and stops after
    them; stopping it joins its loop thread even while it never connected."""
    service, reactor = make(tmp_path, f'\n[cluster]\nservers = ["nats://127.0.0.1:{free_port()}"]\n')
    assert [child.name for child in service] == ["journal", "cluster", "parts"]
    cluster = service.getServiceNamed("cluster")
    assert isinstance(cluster, ClusterService)
    service.startService()
    assert cluster.connection.state == CONNECTING
    stop(service, reactor)
    assert cluster.connection.state == CLOSED
    assert not any(thread.name == "nats" for thread in threading.enumerate())

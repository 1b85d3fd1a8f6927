"""[cluster] in the service tree: the NATS connection between the journal and the parts."""

from __future__ import annotations

import threading
from pathlib import Path
from zoneinfo import ZoneInfo

from twisted.internet.task import Clock

from gateway import tap
from gateway.cluster.connection import CLOSED, CONNECTING
from gateway.cluster.service import ClusterService
from gateway.forwarding import Progress
from gateway.journal.record import Record
from gateway.lots.parks import ParkTotals
from gateway.lots.sessions import Sessions
from gateway.state import StartState
from tests.ports import free_port
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


def test_each_forward_is_an_engine_of_its_own_in_the_parts(tmp_path: Path) -> None:
    """Each [[forward]] is a forwarding service of its own, named after it, with its own progress name;
    with sink nats the main engine publishes to JetStream."""
    service, reactor = make(
        tmp_path,
        f'\n[cluster]\nservers = ["nats://127.0.0.1:{free_port()}"]\n'
        '[[forward]]\nname = "city"\nsink = "cloudevents"\nurl = "http://127.0.0.1:9/events"\n',
    )
    parts = service.getServiceNamed("parts")
    city = parts.getServiceNamed("forwarding city")
    assert city.engine.progress == "city" and city.progress.sink == "city"
    stop(service, reactor)


def test_forward_progress_survives_a_checkpoint() -> None:
    """A checkpoint keeps each named sink's progress, so a forward resumes where it was after a restart."""

    state = StartState()
    for seq, body in enumerate(
        ({"through": 5}, {"through": 3, "sink": "city"}, {"through": 4, "sink": "ops"}), 1
    ):
        state.observe(Record(seq, "2026-12-05T00:00:00Z", "forwarded", "", "", "", body, ""))
    restored = StartState.from_body(state.body(0.0))
    assert restored.forwarded == 5 and restored.forwarded_by == {"city": 3, "ops": 4}
    city, other = Progress("city"), Progress("elsewhere")
    sessions = Sessions(Clock(), ZoneInfo("Asia/Shanghai"))
    restored.apply(sessions=sessions, totals=ParkTotals(), sync=None, progress=None, forwards=[city, other])
    assert (city.through, other.through) == (3, 0)

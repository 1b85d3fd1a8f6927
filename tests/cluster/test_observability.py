"""The NATS state beside /readyz, in /metrics and on the status page; the [[forward]] metrics."""

from __future__ import annotations

from typing import Any

from attrs import Factory, define
from prometheus_client import CollectorRegistry, generate_latest
from treq.testing import StubTreq

from gateway.cloud.api import CommandApi
from gateway.cloud.metrics import register_forwards, register_nats
from tests.cloud.test_api import Api
from tests.cloud.test_status import _report


@define
class FakeNats:
    state: str = "connected"
    reconnects: int = 0
    last_error: str = ""


@define
class FakeEngine:
    backlog: int = 0
    done_through: int = 0
    counters: dict[str, int] = Factory(dict)

    def lag(self, now: float) -> float | None:
        return None


def readyz(nats: FakeNats, ready: tuple[bool, str]) -> tuple[int, Any]:
    gw = Api()
    gw.api = CommandApi(
        config=gw.api._config,
        lots=gw.lots,
        journal=gw.journal,
        clock=gw.clock,
        registry=CollectorRegistry(),
        ready=lambda: ready,
        nats=nats,
    )
    gw.treq = StubTreq(gw.api.resource())
    status, _, body = gw.call("GET", "/readyz", token=None)
    return status, body


def test_readyz_stays_200_while_nats_is_down_and_shows_its_state() -> None:
    """/readyz answers on the journal alone: 200 while NATS reconnects, with the NATS state beside."""
    status, body = readyz(FakeNats("reconnecting", 3, "ConnectionRefusedError"), (True, "journal open"))
    assert status == 200
    assert body == {
        "status": "ready",
        "reason": "journal open",
        "nats": {"state": "reconnecting", "error": "ConnectionRefusedError"},
    }
    status, body = readyz(FakeNats("connected"), (False, "disk full"))
    assert status == 503 and body["nats"]["state"] == "connected"


def test_readyz_without_cluster_has_no_nats_key() -> None:
    """With [cluster] unset /readyz answers as before, without a nats key."""
    _, _, body = Api().call("GET", "/readyz", token=None)
    assert "nats" not in body


def test_metrics_show_the_nats_state_and_reconnects() -> None:
    """cpmi_nats_connected is 1 only while connected; cpmi_nats_state marks the state; reconnects count."""
    registry = CollectorRegistry()
    nats = FakeNats("reconnecting", 2)
    register_nats(registry, nats)
    text = generate_latest(registry).decode()
    assert "cpmi_nats_connected 0.0" in text
    assert 'cpmi_nats_state{state="reconnecting"} 1.0' in text
    assert 'cpmi_nats_state{state="connected"} 0.0' in text
    assert "cpmi_nats_reconnects_total 2.0" in text
    nats.state = "connected"
    assert "cpmi_nats_connected 1.0" in generate_latest(registry).decode()


def test_each_forward_has_its_own_backlog_and_counters() -> None:
    """The [[forward]] engines' metrics are labelled by forward name, each with its own values."""
    registry = CollectorRegistry()
    city = FakeEngine(backlog=40, done_through=7, counters={"events": 5, "retries": 3})
    ops = FakeEngine(backlog=0, done_through=47, counters={"events": 45})
    register_forwards(registry, {"city": city, "ops": ops})
    text = generate_latest(registry).decode()
    assert 'cpmi_forward_sink_backlog_records{sink="city"} 40.0' in text
    assert 'cpmi_forward_sink_backlog_records{sink="ops"} 0.0' in text
    assert 'cpmi_forward_sink_events_total{sink="ops"} 45.0' in text
    assert 'cpmi_forward_sink_retries_total{sink="city"} 3.0' in text
    assert 'cpmi_forward_sink_done_seq{sink="city"} 7.0' in text


def test_the_status_report_shows_nats_and_the_forwards() -> None:
    """The status JSON carries the NATS state and each [[forward]]'s backlog; null nats without [cluster]."""
    report = _report(
        nats=FakeNats("connected", 1), forwards=[("city", "cloudevents", FakeEngine(backlog=12))]
    ).report()
    assert report["nats"] == {"state": "connected", "reconnects": 1, "error": ""}
    assert report["forwards"] == [{"name": "city", "sink": "cloudevents", "backlog": 12, "lagSeconds": None}]
    plain = _report().report()
    assert plain["nats"] is None and plain["forwards"] == []

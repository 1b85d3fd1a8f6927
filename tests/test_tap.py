"""The twistd plugin: options, makeService with a MemoryReactor, one-line config errors."""

from __future__ import annotations

import gc
import os
import queue
import resource
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import pytest
from treq.testing import StubTreq
from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.protocol import ServerFactory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.plugin import getPlugins
from twisted.python.threadpool import ThreadPool
from twisted.web.test.requesthelper import DummyChannel

from gateway import tap
from gateway.heap import SETTLE_AFTER, BindSettler
from gateway.journal.reader import read_records, verify
from gateway.journal.segments import list_segments
from gateway.limits import GuardedFactory
from gateway.lots.http import UplinkSite
from gateway.lots.httpbounds import GuardedSite
from tests.journal.helpers import Harness

ROOT = Path(__file__).parent.parent
SHIPPED = (ROOT / "conf" / "gateway.toml").read_text()


class MemoryReactor(MemoryReactorClock):
    """A memory reactor whose thread pools' results are run when the test pumps them."""

    def __init__(self) -> None:
        super().__init__()
        self.from_threads: queue.Queue[tuple[Callable[..., Any], Any, Any]] = queue.Queue()
        self.pool: ThreadPool | None = None

    def callFromThread(self, f: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.from_threads.put((f, args, kwargs))

    # Every pool made, so that tests/conftest.py stops what a test left running: a pool's
    # threads are not daemons, and one left running keeps pytest from exiting at the end.
    started: ClassVar[list[ThreadPool]] = []

    def getThreadPool(self) -> ThreadPool:
        """A real pool, whose results come back through callFromThread (see `wait_for`)."""
        if self.pool is None:
            self.pool = ThreadPool(minthreads=1, maxthreads=1, name="test-reactor")
            self.pool.start()
            MemoryReactor.started.append(self.pool)
        return self.pool

    def stop_pool(self) -> None:
        if self.pool is not None:
            self.pool.stop()

    def wait_until(self, condition: Callable[[], bool], timeout: float = 60.0) -> None:
        """Run what is due on the clock now and what threads hand back, until `condition` holds."""
        deadline = time.monotonic() + timeout
        while not condition():
            self.advance(0)
            try:
                f, args, kwargs = self.from_threads.get(timeout=0.01)
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise
                continue
            f(*args, **kwargs)

    def wait_for(self, deferred: Deferred[Any], timeout: float = 60.0) -> Any:
        """Run what is due and what threads hand back until `deferred` has a result."""
        results: list[Any] = []
        deferred.addBoth(results.append)
        self.wait_until(lambda: bool(results), timeout)
        return results[0]


def stop(service: MultiService, reactor: MemoryReactor) -> None:
    """Stop the service (started first if need be), letting the journal's fsync thread finish."""
    if not service.running:
        service.startService()
    result = reactor.wait_for(maybeDeferred(service.stopService))
    assert not hasattr(result, "raiseException"), result


def write_config(tmp_path: Path, text: str = SHIPPED) -> str:
    text = (
        text.replace('"var/journal"', f'"{tmp_path / "journal"}"')
        .replace('"conf/gateway.key"', f'"{tmp_path / "gateway.key"}"')
        .replace('"var/api-token"', f'"{tmp_path / "api-token"}"')
    )
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path)


def test_plugin_is_discovered() -> None:
    """twistd finds the cpmi-gateway plugin, pointing at gateway.tap."""
    import twisted.plugins

    makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker, twisted.plugins)}
    assert makers["cpmi-gateway"].module == "gateway.tap"


def test_make_service_listens_on_the_three_endpoints(tmp_path: Path) -> None:
    """makeService builds a MultiService listening on the uplink, downlink and API ports."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    assert isinstance(service, MultiService)
    service.startService()
    try:
        ports = {port[0]: port[3] for port in reactor.tcpServers}
        assert ports == {8080: "", 9000: "", 8081: "127.0.0.1"}
    finally:
        stop(service, reactor)


def test_the_service_tree_closes_the_journal_after_the_parts_stop(tmp_path: Path) -> None:
    """The tree is the journal, then the parts (lots, API); the journal closes only once they stopped."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    assert [child.name for child in service] == ["journal", "parts"]
    parts = service.getServiceNamed("parts")
    assert isinstance(parts, MultiService)
    assert [child.name for child in parts] == ["lots", "api"]  # the shipped sink is log-only
    journal = service.getServiceNamed("journal")
    lots = parts.getServiceNamed("lots")
    stopping = lots.stopService
    held: Deferred[object] = Deferred()

    def stop_lots() -> Deferred[object]:
        """The lots' stop takes its time (a connection slow to close)."""
        stopped = maybeDeferred(stopping)
        return stopped.addCallback(lambda _: held)

    lots.stopService = stop_lots  # type: ignore[method-assign]
    service.startService()
    stopped = service.stopService()
    # Everything else has stopped and sealed; the journal still waits for the lots.
    with pytest.raises(queue.Empty):
        reactor.wait_until(lambda: journal.journal._closed, timeout=1.0)  # type: ignore[attr-defined]
    held.callback(None)
    result = reactor.wait_for(stopped)
    assert not hasattr(result, "raiseException"), result
    assert journal.journal._closed  # type: ignore[attr-defined]


BOLINK_LOT = """
[listen]
bolink = "tcp:6789"

[[lot]]
park_code = "B001"
dialect = "bolink"
secret = "s3"
"""


def test_a_dialect_lot_gets_its_dialects_listener(tmp_path: Path) -> None:
    """A bolink lot in the config adds the bolink listener beside the three, with its dialect's factory."""
    text = SHIPPED.replace("[listen]", '[listen]\nbolink = "tcp:6789"', 1) + BOLINK_LOT.split("\n\n", 1)[1]
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, text)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        factories = {port[0]: port[1] for port in reactor.tcpServers}
        assert set(factories) == {8080, 9000, 8081, 6789}
        # The dialect's factory, under the connection caps every lot-facing listener has.
        assert isinstance(factories[6789], GuardedFactory)
        dialect_factory = factories[6789].wrappedFactory
        assert isinstance(dialect_factory, ServerFactory)
        assert type(dialect_factory).__module__ == "gateway.dialects.bolink"
        assert service.getServiceNamed("parts").getServiceNamed("lots").getServiceNamed("bolink") is not None
    finally:
        stop(service, reactor)


def test_a_dialect_lot_without_its_listener_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A bolink lot with no [listen] bolink stops start-up with the one line naming the key."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, SHIPPED + BOLINK_LOT.split("\n\n", 1)[1])])
    with pytest.raises(SystemExit):
        tap.makeService(options, MemoryReactor())
    assert capsys.readouterr().err == "cpmi-gateway: listen.bolink: required: lot[1] speaks bolink\n"


def test_first_start_creates_the_signing_key_0600(tmp_path: Path) -> None:
    """A missing signing key is created with mode 0600 at first start, and kept after."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    stop(tap.makeService(options, reactor), reactor)
    key = tmp_path / "gateway.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    before = key.read_bytes()
    stop(tap.makeService(options, reactor), reactor)
    assert key.read_bytes() == before


def test_config_error_is_one_line_and_exit_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A bad config stops start-up with exit 1 and one line on stderr naming the key."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, SHIPPED.replace('"required"', '"maybe"'))])
    with pytest.raises(SystemExit) as exited:
        tap.makeService(options, MemoryReactor())
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "lot[0].signature: 'maybe' is not one of required, optional, off" in err


def test_unwritable_journal_is_one_line_and_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A journal path that cannot be created stops start-up with one line."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    text = SHIPPED.replace('"var/journal"', f'"{blocker / "journal"}"')
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, text)])
    with pytest.raises(SystemExit):
        tap.makeService(options, MemoryReactor())
    assert capsys.readouterr().err.count("\n") == 1


def test_journal_in_use_by_another_gateway_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second gateway on the same journal stops with one line instead of corrupting it."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    first = tap.makeService(options, reactor)
    try:
        with pytest.raises(SystemExit):
            tap.makeService(options, MemoryReactor())
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "open in another process" in err
    finally:
        stop(first, reactor)


def test_twistd_help_documents_the_plugin() -> None:
    """`twistd cpmi-gateway --help` describes the plugin and its --config option."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", "from twisted.scripts.twistd import run; run()", "cpmi-gateway", "--help"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert "--config" in result.stdout and "T/CPMI 002-2018" in result.stdout


def journal_of_segments(tmp_path: Path, records: int = 300) -> None:
    """A closed journal of several 64 KiB segments, made a day before the gateway starts on it."""
    h = Harness(tmp_path / "journal", segment_bytes=65536)
    for i in range(records):
        h.journal.append("uplink", "P001", "carIn", f"opr-{i}", {"carNum": "京A12345", "pad": "x" * 900})
    h.settle()
    h.close()


RETAINED = """
[journal]
path = "var/journal"
segment_bytes = 65536
retain_bytes = 131072
checkpoint_records = 1
"""


@contextmanager
def running(tmp_path: Path, text: str) -> Iterator[MemoryReactor]:
    """The gateway of `text` started on a MemoryReactor, stopped (and its pool) afterwards."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path, text)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    service.startService()
    try:
        yield reactor
    finally:
        try:
            stop(service, reactor)
        finally:
            reactor.stop_pool()


def test_retention_removes_old_segments_once_checkpointed(tmp_path: Path) -> None:
    """With log-only, retention removes the oldest segments down to retain_bytes, keeping the chain whole."""
    journal_of_segments(tmp_path)
    before = list_segments(tmp_path / "journal")
    with running(tmp_path, SHIPPED.replace('[journal]\npath = "var/journal"', RETAINED.strip())) as reactor:
        reactor.advance(0)  # the first retention pass
        reactor.wait_until(lambda: len(list_segments(tmp_path / "journal")) < len(before))
    after = list_segments(tmp_path / "journal")
    assert sum(os.path.getsize(s.path) for s in after) <= 131072 + 65536
    [removal] = [r for r in read_records(tmp_path / "journal") if r.kind == "retention"]
    removed = removal.body["removed"]  # type: ignore[index]
    assert removed == [s.name for s in before[: len(removed)]]
    assert after[0].first_seq > before[len(removed) - 1].first_seq
    verify(tmp_path / "journal")


def test_retention_keeps_what_the_cloud_has_not_acknowledged(tmp_path: Path) -> None:
    """With a cloud that has acknowledged nothing yet, no segment is removed, however large the journal."""
    journal_of_segments(tmp_path)
    before = list_segments(tmp_path / "journal")
    text = SHIPPED.replace('[journal]\npath = "var/journal"', RETAINED.strip()).replace(
        'sink = "log-only"\nurl = ""', 'sink = "cloudevents"\nurl = "http://127.0.0.1:9/events"'
    )
    with running(tmp_path, text) as reactor:
        reactor.advance(0)
        reactor.advance(60)  # a second pass
        time.sleep(0.5)  # time enough for a pass that would remove something
        assert list_segments(tmp_path / "journal")[: len(before)] == before
        assert not any(r.kind == "retention" for r in read_records(tmp_path / "journal"))


T002 = """
[cloud]
sink = "t002"
url = "http://127.0.0.1:9901/uplink"
downlink = "127.0.0.1:9902"

[[lot]]
park_code = "P001"
username = "lot001"
password = "$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$Ed6CfvYqHRVcmvbRyh1LZw"
upstream_username = "p001-upstream"
upstream_password = "env:P001_UPSTREAM"
"""


def test_the_t002_sink_connects_each_lot_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With sink t002, each lot gets a TCP link to cloud.downlink at start, and /metrics counts the links."""
    monkeypatch.setenv("P001_UPSTREAM", "upstream-password")
    text = SHIPPED.split("[cloud]", 1)[0] + T002
    with running(tmp_path, text) as reactor:
        reactor.advance(0)
        assert [(host, port) for host, port, *_ in reactor.tcpClients] == [("127.0.0.1", 9902)]
        metrics = tap_metrics(reactor)
        assert "cpmi_upstream_links_bound 0.0" in metrics
        assert "upstream-password" not in metrics


def tap_metrics(reactor: MemoryReactor) -> str:
    """The gateway's /metrics text, through its API resource."""
    [site] = [port[1] for port in reactor.tcpServers if port[0] == 8081]
    stub = StubTreq(site.resource)
    response = reactor.wait_for(stub.get("http://127.0.0.1:8081/metrics"))
    return str(reactor.wait_for(response.text()))


def test_make_service_tells_how_many_lots_the_fd_limit_allows(tmp_path: Path) -> None:
    """Start-up raises the file-descriptor limit and logs the room it leaves for lot connections."""
    events: list[dict[str, Any]] = []
    globalLogPublisher.addObserver(events.append)
    try:
        options = tap.Options()
        options.parseOptions(["--config", write_config(tmp_path)])
        reactor = MemoryReactor()
        service = tap.makeService(options, reactor)
    finally:
        globalLogPublisher.removeObserver(events.append)
    try:
        [told] = [e for e in events if "lot connections" in e.get("log_format", "")]
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        assert told["lots"] == soft - 64
    finally:
        stop(service, reactor)


def test_start_up_objects_are_frozen_once_the_reactor_runs(tmp_path: Path) -> None:
    """When the reactor runs, what start-up built is frozen out of the collector's full passes."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    assert gc.get_freeze_count() == 0
    try:
        for hook in reactor.whenRunningHooks:
            hook[0](*hook[1], **hook[2])
        assert gc.get_freeze_count() > 10_000
    finally:
        gc.unfreeze()
        stop(service, reactor)


def started(tmp_path: Path) -> tuple[MultiService, MemoryReactor]:
    """The gateway on the shipped configuration, started on a memory reactor."""
    options = tap.Options()
    options.parseOptions(["--config", write_config(tmp_path)])
    reactor = MemoryReactor()
    service = tap.makeService(options, reactor)
    service.startService()
    return service, reactor


def test_lot_binds_reach_the_heap_settler(tmp_path: Path) -> None:
    """Every bind on the standard downlink tells the settler, which freezes the heap after the wave."""
    service, reactor = started(tmp_path)
    try:
        [guarded] = [port[1] for port in reactor.tcpServers if port[0] == 9000]
        factory = guarded.wrappedFactory
        settler = service.getServiceNamed("parts").getServiceNamed("lots").settler
        assert isinstance(settler, BindSettler)
        for listener in factory.handler.bound_listeners:
            listener("P001")
        reactor.advance(SETTLE_AFTER - 0.001)
        assert settler.settled == 0
        reactor.advance(0.001)
        assert settler.settled == 1 and gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        stop(service, reactor)


def test_the_api_does_not_parse_bodies_as_forms(tmp_path: Path) -> None:
    """The API site's requests leave the body to the API (JSON): no form parse per command."""
    service, reactor = started(tmp_path)
    try:
        [site] = [port[1] for port in reactor.tcpServers if port[0] == 8081]
        request = site.requestFactory(DummyChannel())
        assert request._parsePOSTFormSubmission is False
    finally:
        stop(service, reactor)


def test_every_listener_is_bounded_by_the_configured_keys(tmp_path: Path) -> None:
    """The uplink and API sites take their [uplink] limits, the downlink is capped; /metrics shows them."""
    text = SHIPPED.replace("max_connections_per_peer = 64", "max_connections_per_peer = 7", 1).replace(
        "# api_max_connections = 256", "api_max_connections = 9", 1
    )
    assert text != SHIPPED
    with running(tmp_path, text) as reactor:
        factories = {port[0]: port[1] for port in reactor.tcpServers}
        uplink, downlink, api = factories[8080], factories[9000], factories[8081]
        assert isinstance(uplink, UplinkSite) and isinstance(api, GuardedSite)
        assert uplink.limits.max_body_bytes == 16 * 2**20 and uplink.guard.max_per_peer == 7
        assert (api.limits.max_body_bytes, api.guard.max_total, api.guard.max_per_peer) == (2**20, 9, 7)
        assert isinstance(downlink, GuardedFactory)
        assert (downlink.guard.max_per_peer, downlink.guard.max_total) == (7, 20000)
        metrics = tap_metrics(reactor)
        for listener in ("uplink", "downlink", "api"):
            assert f'cpmi_listener_connections{{listener="{listener}"}}' in metrics


def test_the_lot_routers_counters_are_the_standard_downlinks(tmp_path: Path) -> None:
    """The metrics' downlink counters are the standard dialect's own, live, not a copy."""
    service, reactor = started(tmp_path)
    try:
        lots = service.getServiceNamed("parts").getServiceNamed("lots")
        downlinks = lots.servers["standard"].downlinks
        assert lots.router.counters is downlinks.counters
        downlinks.counters["connections"] += 1
        assert lots.router.counters["connections"] == 1
    finally:
        stop(service, reactor)

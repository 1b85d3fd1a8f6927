"""What ships for operating the appliance: the systemd unit and the Grafana dashboard."""

from __future__ import annotations

import configparser
import json
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from treq.testing import StubTreq

from tests.test_tap import SHIPPED, running

ROOT = Path(__file__).parent.parent
UNIT = ROOT / "conf" / "cpmi-gateway.service"
DASHBOARD = ROOT / "docs" / "grafana-dashboard.json"
INSTALLED_BIN = "/opt/cpmi-gateway/bin/"  # the virtual environment of docs/operations.md


# --- the systemd unit ---------------------------------------------------------------------------


def read_unit(path: Path = UNIT) -> configparser.ConfigParser:
    """The unit as INI: keys keep their case; a key given twice keeps its last value."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(path.read_text())
    return parser


def values_of(key: str, path: Path = UNIT) -> list[str]:
    """Every value of `key` in the unit, in order (systemd allows some keys, e.g. ExecReload, twice)."""
    return [
        line.split("=", 1)[1].strip() for line in path.read_text().splitlines() if line.startswith(f"{key}=")
    ]


def test_unit_runs_twistd_in_the_foreground_with_the_etc_config() -> None:
    """ExecStart runs twistd by absolute path, in the foreground, without a pid file, on /etc's config."""
    service = read_unit()["Service"]
    argv = shlex.split(service["ExecStart"])
    assert argv[0].startswith("/") and argv[0].endswith("/twistd")
    assert argv[1:] == ["-n", "--pidfile=", "cpmi-gateway", "--config", "/etc/cpmi-gateway/gateway.toml"]


def test_unit_restarts_reloads_and_limits_as_the_issue_asks() -> None:
    """Restart on failure, SIGHUP to reload, a stop timeout and descriptors for 10,000 lots."""
    service = read_unit()["Service"]
    assert service["Restart"] == "on-failure"
    assert values_of("ExecReload")[-1] == "/bin/kill -HUP $MAINPID"
    assert service["TimeoutStopSec"]
    assert int(service["LimitNOFILE"]) >= 65536
    assert read_unit()["Install"]["WantedBy"] == "multi-user.target"


def test_unit_checks_the_config_before_sending_sighup() -> None:
    """A reload first runs `cpmictl config check` on the same file, so a broken file is not sent a HUP."""
    reload = values_of("ExecReload")
    assert len(reload) == 2
    check = shlex.split(reload[0])
    assert check[0].endswith("/cpmictl")
    assert check[1:] == ["config", "check", "/etc/cpmi-gateway/gateway.toml"]
    assert check[0].rsplit("/", 1)[0] == shlex.split(read_unit()["Service"]["ExecStart"])[0].rsplit("/", 1)[0]


def test_unit_runs_unprivileged_and_hardened() -> None:
    """Its own user, a state directory it may write and a read-only rest of the system."""
    service = read_unit()["Service"]
    assert service["User"] == "cpmi-gateway"
    assert service["Group"] == "cpmi-gateway"
    assert service["WorkingDirectory"] == "/var/lib/cpmi-gateway"
    assert "/var/lib/cpmi-gateway" in service["ReadWritePaths"].split()
    assert service["ProtectSystem"] == "strict"
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[key] == "true", key
    # Only in a comment: the shipped ports need no capability.
    assert "AmbientCapabilities" not in service
    assert service["CapabilityBoundingSet"] == ""


def verify_unit(unit: Path) -> tuple[int, list[str]]:
    """`systemd-analyze verify` of `unit`: its exit status and the lines it printed."""
    systemd_analyze = shutil.which("systemd-analyze")
    assert systemd_analyze is not None
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.returncode, (result.stdout + result.stderr).splitlines()


PROBLEM = re.compile(r"Unknown|Failed to parse|Invalid|bad unit file|fatal|not executable|Refusing|ignoring")


def complaints(unit: Path, lines: list[str]) -> list[str]:
    """The printed lines about `unit` itself: a setting at a line of it, or the unit refused."""
    return [line for line in lines if str(unit) in line or (unit.name in line and PROBLEM.search(line))]


@pytest.fixture
def installable_unit(tmp_path: Path) -> Iterator[Path]:
    """The unit with its commands pointed at this machine's twistd and cpmictl (verify runs them not,
    but checks they exist); skipped where systemd-analyze or the tools are missing."""
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed: cannot verify the unit")
    tools = {name: shutil.which(name) for name in ("twistd", "cpmictl")}
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not on PATH: the unit's commands could not be verified")
    text = UNIT.read_text()
    for name, path in tools.items():
        assert f"{INSTALLED_BIN}{name} " in text
        text = text.replace(f"{INSTALLED_BIN}{name} ", f"{path} ")
    unit = tmp_path / UNIT.name
    unit.write_text(text)
    yield unit


def test_systemd_analyze_verifies_the_unit(installable_unit: Path) -> None:
    """`systemd-analyze verify` accepts the unit and says nothing about any of its lines.

    verify exits 0 on a misspelt key or a bad value (it ignores them), so the
    printed lines are checked too; a missing `cpmi-gateway` user is not
    reported by it, and the user and paths are checked above instead.
    """
    status, lines = verify_unit(installable_unit)
    assert status == 0, lines
    assert complaints(installable_unit, lines) == []


@pytest.mark.parametrize(
    ("line", "mistake"),
    [
        ("Restart=on-failure", "Restrat=on-failure"),
        ("ProtectSystem=strict", "ProtectSystem=strickt"),
        ("LimitNOFILE=65536", "LimitNOFILE=many"),
        ("WorkingDirectory=/var/lib/cpmi-gateway", "WorkingDirectory=var/lib/cpmi-gateway"),
        ("TimeoutStopSec=60s", "TimeoutStopSec=60q"),
        ("SystemCallFilter=@system-service", "SystemCallFilter=@system-servis"),
    ],
)
def test_verification_catches_a_unit_mistake(installable_unit: Path, line: str, mistake: str) -> None:
    """The check above is not vacuous: one misspelt key or bad value in the unit makes it fail."""
    text = installable_unit.read_text()
    assert f"\n{line}\n" in text
    installable_unit.write_text(text.replace(f"\n{line}\n", f"\n{mistake}\n"))
    status, lines = verify_unit(installable_unit)
    assert status != 0 or complaints(installable_unit, lines), lines


# --- the Grafana dashboard ----------------------------------------------------------------------


def load_dashboard() -> dict[str, Any]:
    dashboard: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return dashboard


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict[str, Any]) -> list[str]:
    """Every PromQL text: the panels' targets and the template variables' queries."""
    texts = [target["expr"] for panel in all_panels(dashboard) for target in panel.get("targets", [])]
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if variable.get("type") == "query" and query:
            texts.append(query)
    return texts


def series_names(exposition: str) -> set[str]:
    """The series names Prometheus stores from a scrape, from every family even without samples yet.

    Counters are stored as `name_total`, histograms as `_bucket`, `_sum` and
    `_count`; a labelled family shows no sample before its first use, so names
    come from the families' types, not from the samples.
    """
    suffixes = {
        "counter": ("_total", "_created"),
        "histogram": ("_bucket", "_sum", "_count", "_created"),
        "summary": ("", "_sum", "_count", "_created"),
        "gauge": ("",),
    }
    names: set[str] = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ("",)))
    return names


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The series a real gateway (built by makeService, forwarding to a cloud) shows on /metrics."""
    tmp_path = tmp_path_factory.mktemp("gateway")
    text = SHIPPED.replace(
        'sink = "log-only"\nurl = ""', 'sink = "cloudevents"\nurl = "http://127.0.0.1:9/events"'
    )
    assert text != SHIPPED
    with running(tmp_path, text) as reactor:
        [site] = [factory for port, factory, _, _ in reactor.tcpServers if port == 8081]
        # treq's request methods are made at run time, unseen by mypy.
        stub: Any = StubTreq(site.resource)  # type: ignore[attr-defined]
        got: list[Any] = []
        stub.get("http://127.0.0.1:8081/metrics").addCallback(stub.content).addBoth(got.append)
        stub.flush()
    [body] = got
    assert isinstance(body, bytes), body
    return series_names(body.decode("utf-8"))


def test_exported_names_follow_the_exposition(exported: set[str]) -> None:
    """The metric names the dashboard is checked against come from each part of the gateway."""
    for name in (
        "cpmi_lots_connected",
        "cpmi_downlink_frames_in_total",
        "cpmi_journal_fsync_seconds_bucket",
        "cpmi_journal_free_bytes",
        "cpmi_forward_backlog_records",
        "cpmi_command_seconds_bucket",
        "cpmi_api_requests_total",
    ):
        assert name in exported
    assert "cpmi_downlink_frames_in" not in exported  # a counter is stored with its _total


def test_dashboard_imports_with_a_prometheus_input() -> None:
    """The dashboard is Grafana JSON with a DS_PROMETHEUS input that every panel and query uses."""
    dashboard = load_dashboard()
    assert 36 <= dashboard["schemaVersion"] <= 41
    assert dashboard["id"] is None and dashboard["uid"]
    [source] = dashboard["__inputs"]
    assert source["name"] == "DS_PROMETHEUS"
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    panels = all_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, panel["title"]
        assert panel["targets"], panel["title"]
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], panel["title"]


def test_every_query_uses_only_exported_metrics(exported: set[str]) -> None:
    """Each query names at least one gateway metric and only ones the gateway exports: a rename breaks it."""
    texts = queries(load_dashboard())
    assert len(texts) > 20
    for text in texts:
        names = set(re.findall(r"\bcpmi_[a-z0-9_]+", text))
        assert names, text
        assert names <= exported, (sorted(names - exported), text)
        # A typo in PromQL's brackets is caught here, as there is no PromQL parser to hand.
        for opening, closing in ("()", "{}", "[]"):
            assert text.count(opening) == text.count(closing), text


def test_dashboard_shows_what_the_operator_needs() -> None:
    """Lots, commands with their p99, the journal, forwarding and the API each have their panels."""
    texts = "\n".join(queries(load_dashboard()))
    for needed in (
        "cpmi_lots_connected",
        "cpmi_lots_configured",
        "rate(cpmi_downlink_binds_total",
        "rate(cpmi_downlink_frames_in_total",
        "rate(cpmi_downlink_frames_out_total",
        "histogram_quantile(0.99, sum by (le, code) (rate(cpmi_command_seconds_bucket",
        "rate(cpmi_downlink_command_timeouts_total",
        "cpmi_journal_last_seq",
        "cpmi_journal_committed_seq",
        "cpmi_journal_fsync_seconds_bucket",
        "cpmi_journal_free_bytes",
        "cpmi_journal_space_low",
        "cpmi_forward_backlog_records",
        "cpmi_sync_queued_entries",
        "rate(cpmi_forward_events_total",
        "rate(cpmi_forward_retries_total",
        "rate(cpmi_forward_rejected_total",
        "sum by (status) (rate(cpmi_api_requests_total",
    ):
        assert needed in texts, needed

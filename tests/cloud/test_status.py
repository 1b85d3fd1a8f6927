"""The status report (`GET /v1/status`), the status page's files, and the admin reload route."""

from __future__ import annotations

import configparser
import hashlib
import json
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from attrs import define, field
from prometheus_client import CollectorRegistry
from treq.testing import StubTreq
from twisted.internet.defer import Deferred, fail, succeed

from gateway import config
from gateway.cloud.api import CommandApi
from gateway.cloud.status import (
    LOG_ONLY_NOTE,
    PAGE_ASSETS,
    CommandLatency,
    StatusReport,
    page_assets,
    rfc3339,
)
from gateway.interfaces import LotState
from tests.cloud.test_api import CLOUD_TOKEN, START, TOKENS, Api
from tests.lots.harness import HASH, fired

ROOT = Path(__file__).parent.parent.parent
ROLES = {"reader": ["read"], "commander": ["command"], "syncer": ["sync"], "root": ["admin"]}


def _settings(gateway_id: str = "gw-status", lots: tuple[tuple[str, str], ...] = ()) -> config.Config:
    """Three lots (P001 standard, P002 bolink, P003 standard) unless `lots` names others."""
    lots = lots or (("P001", "standard"), ("P002", "bolink"), ("P003", "standard"))
    return config.parse(
        {
            "gateway": {"id": gateway_id},
            "listen": {"bolink": "tcp:0"},
            "cloud": {"api_token": CLOUD_TOKEN},
            "api_client": [
                {
                    "name": name,
                    "token_sha256": hashlib.sha256(token.encode()).hexdigest(),
                    "roles": ROLES[name],
                }
                for name, token in TOKENS.items()
            ],
            "lot": [
                {"park_code": park, "username": f"u{park}", "password": HASH}
                if dialect == "standard"
                else {"park_code": park, "dialect": dialect, "secret": "s"}
                for park, dialect in lots
            ],
        }
    )


@define
class FakeJournal:
    """The journal's position, as set by the test."""

    last_seq: int = 42
    committed_seq: int = 41
    problem: str | None = None
    quarantined: list[object] = field(factory=list)


@define
class FakeForwarding:
    """Forwarding progress, as set by the test; notes the times it was asked about."""

    backlog: int = 0
    behind: float | None = None
    asked: list[float] = field(factory=list)

    def lag(self, now: float) -> float | None:
        """`behind`, noting `now`."""
        self.asked.append(now)
        return self.behind


@define
class FakeReload:
    """A reload whose outcome the test sets; notes the reasons it was asked with."""

    ok: bool = True
    body: dict[str, object] = field(factory=lambda: {"changed": ["lot P004 added"]})
    reasons: list[str] = field(factory=list)

    def as_json(self) -> dict[str, object]:
        """The body set by the test."""
        return self.body

    def __call__(self, reason: str) -> Deferred[FakeReload]:
        """Reload, at once."""
        self.reasons.append(reason)
        return succeed(self)


class StatusApi(Api):
    """The command API of tests/cloud/test_api.py, with a status report and a reload."""

    def __init__(
        self, *, status: bool = True, reload: Any = None, forwarding: FakeForwarding | None = None
    ) -> None:
        super().__init__()
        self.settings = _settings()
        self.journal_head = FakeJournal()
        self.rejections: list[dict[str, object]] = []
        self.registry = CollectorRegistry()  # the one Api's own CommandApi registered in is taken
        self.report = StatusReport(
            config=lambda: self.settings,
            clock=self.clock,
            started=START - 3600,
            lots=self.lots,
            backlog=self.sync.pending,
            journal=self.journal_head,
            ready=lambda: self.readiness,
            forwarding=forwarding,
            rejections=lambda: self.rejections,
        )
        self.api = CommandApi(
            config=self.settings,
            lots=self.lots,
            journal=self.journal,
            clock=self.clock,
            registry=self.registry,
            ready=lambda: self.readiness,
            sync=self.sync,
            status=self.report if status else None,
            reload=reload,
        )
        self.treq = StubTreq(self.api.resource())

    def status(self, token: str = TOKENS["reader"]) -> dict[str, Any]:
        """GET /v1/status, which must answer 200."""
        code, headers, body = self.call("GET", "/v1/status", token)
        assert code == 200, body
        assert headers["cache-control"] == "no-store"
        assert isinstance(body, dict)
        return body


def _json(report: StatusReport) -> dict[str, Any]:
    """The report, typed for indexing."""
    return report.report()


def _report(**overrides: Any) -> StatusReport:
    """A StatusReport on fakes, for the tests that need no HTTP."""
    gw = Api()
    settings = overrides.pop("settings", _settings())
    arguments: dict[str, Any] = {
        "config": lambda: settings,
        "clock": gw.clock,
        "started": START,
        "lots": gw.lots,
        "backlog": lambda park: 0,
        "journal": FakeJournal(),
        "ready": lambda: (True, "journal writable"),
    }
    arguments.update(overrides)
    return StatusReport(**arguments)


@pytest.fixture
def gw() -> StatusApi:
    """A command API with a status report (log-only: no forwarder) and no reload."""
    return StatusApi()


# --- authentication -----------------------------------------------------------


def test_status_needs_a_bearer_token(gw: StatusApi) -> None:
    """/v1/status without a token, or with a wrong one, is 401 with a Bearer challenge."""
    for token in (None, "nope"):
        status, headers, body = gw.call("GET", "/v1/status", token)
        assert status == 401
        assert headers["www-authenticate"].startswith("Bearer")
        assert "gateway" not in body


def test_status_needs_the_read_role(gw: StatusApi) -> None:
    """A client without `read` is refused 403; `read`, `admin` and the cloud token may look."""
    for name in ("commander", "syncer"):
        status, _, body = gw.call("GET", "/v1/status", TOKENS[name])
        assert status == 403
        assert name in body["error"]
    for token in (TOKENS["reader"], TOKENS["root"], CLOUD_TOKEN):
        assert gw.call("GET", "/v1/status", token)[0] == 200


def test_status_without_a_report_is_501() -> None:
    """A CommandApi built without a status report answers /v1/status 501, after the token check."""
    gw = StatusApi(status=False)
    assert gw.call("GET", "/v1/status", token=None)[0] == 401
    status, _, body = gw.call("GET", "/v1/status", TOKENS["reader"])
    assert status == 501
    assert "status" in body["error"]


def test_status_requests_are_counted(gw: StatusApi) -> None:
    """Answers of /v1/status are counted by status like the other routes."""
    gw.status()
    gw.call("GET", "/v1/status", None)
    sample = gw.registry.get_sample_value
    assert sample("cpmi_api_requests_total", {"route": "/v1/status", "status": "200"}) == 1.0
    assert sample("cpmi_api_requests_total", {"route": "/v1/status", "status": "401"}) == 1.0


# --- the report ------------------------------------------------------------------


def test_the_whole_report(gw: StatusApi) -> None:
    """The report names the gateway, its readiness, journal, forwarding, commands, lots and rejections."""
    gw.journal_head.problem = None
    gw.rejections.append(
        {
            "time": START - 5,
            "event": "lot.rejected",
            "park": "P001",
            "code": "carIn",
            "result": "1003",
            "reason": "data.carNum: missing",
        }
    )
    body = gw.status()
    assert body["gateway"] == {
        "id": "gw-status",
        "now": "2026-11-18T11:06:40.000Z",
        "started": "2026-11-18T10:06:40.000Z",
        "uptimeSeconds": 3600.0,
    }
    assert body["ready"] == {"ok": True, "reason": "journal open"}
    assert body["journal"] == {"lastSeq": 42, "committedSeq": 41, "problem": None}
    assert body["forwarding"] == {
        "sink": "log-only",
        "backlog": None,
        "lagSeconds": None,
        "note": LOG_ONLY_NOTE,
    }
    assert body["commands"]["count"] == 0 and body["commands"]["p50Ms"] is None
    assert body["lots"] == {
        "online": 1,
        "offline": 2,
        "items": [
            {
                "parkCode": "P002",
                "dialect": "bolink",
                "connected": False,
                "since": None,
                "lastSeen": None,
                "peer": "",
                "backlog": 0,
            },
            {
                "parkCode": "P003",
                "dialect": "standard",
                "connected": False,
                "since": None,
                "lastSeen": None,
                "peer": "",
                "backlog": 0,
            },
            {
                "parkCode": "P001",
                "dialect": "standard",
                "connected": True,
                "since": "2026-11-18T11:05:40.000Z",
                "lastSeen": "2026-11-18T11:06:40.000Z",
                "peer": "10.0.0.5:4711",
                "backlog": 0,
            },
        ],
    }
    assert body["rejections"] == [
        {
            "time": "2026-11-18T11:06:35.000Z",
            "event": "lot.rejected",
            "park": "P001",
            "code": "carIn",
            "result": "1003",
            "reason": "data.carNum: missing",
        }
    ]


def test_readiness_and_journal_problem_are_shown(gw: StatusApi) -> None:
    """A gateway that is not ready says why, and the journal's problem is shown as it is."""
    gw.readiness = (False, "journal cannot write: disk full")
    gw.journal_head.problem = "disk full"
    body = gw.status()
    assert body["ready"] == {"ok": False, "reason": "journal cannot write: disk full"}
    assert body["journal"]["problem"] == "disk full"


def test_lot_backlog_is_the_sync_queues(gw: StatusApi) -> None:
    """Each lot's backlog is its sync entries still to deliver."""
    for plate in ("京A1", "京A2"):
        assert gw.call("POST", "/v1/parks/P002/commands/blacklist", body={"carNum": plate})[0] == 202
    lots = {lot["parkCode"]: lot for lot in gw.status()["lots"]["items"]}
    assert lots["P002"]["backlog"] == 2 and lots["P001"]["backlog"] == 0


def test_offline_lots_first_then_by_park_code() -> None:
    """Offline lots come first, each group ordered by park code, whatever the configuration's order."""
    parks = ("Z9", "P001", "A1", "M5", "B2")
    online = {"Z9", "A1"}

    class Lots:
        def states(self) -> list[LotState]:
            return [
                LotState(park, park in online, START, START, "peer" if park in online else "")
                for park in parks
            ]

    settings = _settings(lots=tuple((park, "standard") for park in parks))
    report = _json(_report(settings=settings, lots=Lots()))
    assert [lot["parkCode"] for lot in report["lots"]["items"]] == ["B2", "M5", "P001", "A1", "Z9"]
    assert (report["lots"]["online"], report["lots"]["offline"]) == (2, 3)


def test_configuration_is_read_on_each_report(gw: StatusApi) -> None:
    """After a reload the report shows the new configuration's id and lots, without being rebuilt."""
    gw.settings = _settings(gateway_id="gw-renamed", lots=(("P001", "standard"), ("P009", "standard")))
    body = gw.status()
    assert body["gateway"]["id"] == "gw-renamed"
    assert sorted(lot["parkCode"] for lot in body["lots"]["items"]) == ["P001", "P009"]


def test_lots_the_downlink_does_not_report_are_offline() -> None:
    """A configured lot missing from the states is offline; a state for an unconfigured park is left out."""

    class Lots:
        def states(self) -> list[LotState]:
            return [LotState("GONE", True, START, START, "1.2.3.4:5")]

    report = _json(_report(lots=Lots()))
    lots = report["lots"]
    assert [lot["parkCode"] for lot in lots["items"]] == ["P001", "P002", "P003"]
    assert lots == {**lots, "online": 0, "offline": 3}


def test_forwarding_backlog_and_lag() -> None:
    """With a forwarder, the backlog and the lag at the clock's now are shown, with the sink."""
    forwarding = FakeForwarding(backlog=7, behind=11520.25)
    gw = StatusApi(forwarding=forwarding)
    assert gw.status()["forwarding"] == {
        "sink": "log-only",  # as configured: the fake stands in for a forwarder
        "backlog": 7,
        "lagSeconds": 11520.25,
        "note": None,
    }
    assert forwarding.asked == [START]
    forwarding.backlog, forwarding.behind = 0, None
    assert gw.status()["forwarding"]["lagSeconds"] is None


def test_no_forwarder_with_another_sink_says_so() -> None:
    """Should no forwarder be given with a forwarding sink, the report says so rather than log-only."""
    settings = config.parse({"cloud": {"sink": "cloudevents", "url": "https://cloud.example/events"}})
    forwarding = _json(_report(settings=settings))["forwarding"]
    assert forwarding["sink"] == "cloudevents"
    assert forwarding["note"] != LOG_ONLY_NOTE and forwarding["backlog"] is None


def test_rejections_latest_first_at_most_fifty() -> None:
    """Rejections are shown newest first, 50 at most, whatever order they come in; equal times keep theirs."""
    rejections: list[dict[str, object]] = [
        {
            "time": START + i,
            "event": "cloud.rejected",
            "park": "P001",
            "code": "carIn",
            "result": 422,
            "reason": str(i),
        }
        for i in (*range(40, 80), *range(40))
    ]
    rejections.insert(0, {**rejections[39], "reason": "79 too, given first"})
    for given in (rejections, rejections[::-1]):
        shown = _json(_report(rejections=lambda given=given: given))["rejections"]
        assert isinstance(shown, list) and len(shown) == 50
        assert [item["reason"] for item in shown[2:4]] == ["78", "77"]
        assert shown[-1]["reason"] == "31"
        assert shown[2]["time"] == rfc3339(START + 78) and shown[2]["result"] == 422
    first = _json(_report(rejections=lambda: rejections))["rejections"]
    assert [item["reason"] for item in first[:2]] == ["79 too, given first", "79"]


def test_the_status_answer_stays_small_whatever_the_rejections_hold() -> None:
    """Rejections holding 1 MiB values (as an unclipped list might) give a report of tens of KiB, not MiB.

    Issue 19 item 1: /v1/status became a 200 MiB answer; each shown value is clipped here too.
    """
    huge = "R" * 2**20
    rejections = [
        {"time": START + i, "event": huge, "park": huge, "code": huge, "result": huge, "reason": huge}
        for i in range(500)
    ]
    shown = _json(_report(rejections=lambda: rejections))
    assert len(json.dumps(shown).encode("utf-8")) < 64 * 1024
    assert len(shown["rejections"]) == 50
    first = shown["rejections"][0]
    assert first["code"].startswith("R" * 36 + "…") and len(first["code"]) < 36 + 16
    assert len(first["reason"]) < 240 + 16


def test_rejection_fields_are_made_json() -> None:
    """Only the known fields are shown; a missing one is null, odd values become text, a bad time null."""
    odd = {
        "time": "yesterday",
        "event": "lot.rejected",
        "code": b"carIn",
        "result": float("nan"),
        "secret": "x",
    }
    [shown] = _json(_report(rejections=lambda: [odd]))["rejections"]
    assert shown == {
        "time": None,
        "event": "lot.rejected",
        "park": None,
        "code": "b'carIn'",
        "result": None,
        "reason": None,
    }


def test_ten_thousand_lots_in_one_report() -> None:
    """A report over 10,000 configured lots lists them all, offline first, with their counts."""
    parks = tuple((f"P{n:05d}", "standard") for n in range(10_000))
    settings = _settings(lots=parks)
    calls: list[str] = []

    class Lots:
        def states(self) -> list[LotState]:
            calls.append("states")
            return [LotState(park, n % 2 == 0, START, START, "") for n, (park, _) in enumerate(parks)]

    report = _json(_report(settings=settings, lots=Lots(), backlog=lambda park: len(park)))
    lots = report["lots"]
    assert calls == ["states"]
    assert (lots["online"], lots["offline"]) == (5000, 5000)
    items = lots["items"]
    assert len(items) == 10_000
    assert items[0]["parkCode"] == "P00001" and items[4999]["parkCode"] == "P09999"
    assert items[5000]["parkCode"] == "P00000" and items[5000]["connected"] is True
    assert items[0]["backlog"] == 6


# --- command latency ------------------------------------------------------------


def test_latency_percentiles_nearest_rank() -> None:
    """p50, p90, p99 and max are nearest-rank over the window, in milliseconds, overall and by outcome."""
    latency = CommandLatency()
    for n in range(100, 0, -1):
        latency.record("ok" if n <= 90 else "deadline", n / 1000)
    summary = latency.summary()
    assert {key: summary[key] for key in ("count", "total", "p50Ms", "p90Ms", "p99Ms", "maxMs")} == {
        "count": 100,
        "total": 100,
        "p50Ms": 50.0,
        "p90Ms": 90.0,
        "p99Ms": 99.0,
        "maxMs": 100.0,
    }
    assert summary["byOutcome"] == {
        "deadline": {"count": 10, "p50Ms": 95.0, "p90Ms": 99.0, "p99Ms": 100.0, "maxMs": 100.0},
        "ok": {"count": 90, "p50Ms": 45.0, "p90Ms": 81.0, "p99Ms": 90.0, "maxMs": 90.0},
    }


def test_latency_keeps_the_last_window() -> None:
    """Only the last `window` commands count; the total counts every one since start."""
    latency = CommandLatency(window=10)
    for n in range(15):
        latency.record("ok", float(n))
    summary = latency.summary()
    assert (summary["count"], summary["total"], summary["window"]) == (10, 15, 10)
    assert (summary["p50Ms"], summary["maxMs"]) == (9000.0, 14000.0)


def test_latency_without_commands() -> None:
    """With no commands yet, the figures are null, not zero."""
    summary = CommandLatency().summary()
    assert summary == {
        "window": 1000,
        "total": 0,
        "count": 0,
        "p50Ms": None,
        "p90Ms": None,
        "p99Ms": None,
        "maxMs": None,
        "byOutcome": {},
    }


def test_commands_feed_the_latency(gw: StatusApi) -> None:
    """Each command the API answers is timed on the clock into the report's latency, by outcome."""
    gw.lots.mode = "never"
    pending = gw.start("POST", "/v1/parks/P001/commands/gateOpen", body={"barCode": "B1"})
    gw.clock.advance(1.5)
    gw.lots.waiting[0].callback(gw.lots.reply)
    gw.treq.flush()
    assert gw.finish(pending)[0] == 200
    gw.lots.mode = "not-connected"
    assert gw.gate()[0] == 409
    commands = gw.status()["commands"]
    assert commands["count"] == 2 and commands["maxMs"] == 1500.0
    assert commands["byOutcome"]["ok"]["p50Ms"] == 1500.0
    assert commands["byOutcome"]["not_connected"]["count"] == 1


# --- the admin reload route ----------------------------------------------------


def test_reload_that_takes_is_200() -> None:
    """An admin's reload that is in force answers 200 with its outcome, naming the client as the reason."""
    reload = FakeReload()
    gw = StatusApi(reload=reload)
    status, headers, body = gw.call("POST", "/v1/admin/reload", TOKENS["root"])
    assert status == 200
    assert headers["content-type"] == "application/json; charset=utf-8"
    assert body == {"changed": ["lot P004 added"]}
    assert reload.reasons == ["api client root"]
    assert gw.call("POST", "/v1/admin/reload", CLOUD_TOKEN)[0] == 200
    assert reload.reasons[-1] == "api client cloud"


def test_refused_reload_is_400_with_its_error() -> None:
    """A reload the gateway refuses answers 400 with the outcome, whose error line says why."""
    reload = FakeReload(ok=False, body={"error": "lot[1].password: not an argon2id hash"})
    gw = StatusApi(reload=reload)
    status, _, body = gw.call("POST", "/v1/admin/reload", TOKENS["root"])
    assert status == 400
    assert body == {"error": "lot[1].password: not an argon2id hash"}


def test_reload_needs_the_admin_role() -> None:
    """Clients without `admin` are refused 403 and nothing is reloaded; no token is 401."""
    reload = FakeReload()
    gw = StatusApi(reload=reload)
    for name in ("reader", "commander", "syncer"):
        status, _, body = gw.call("POST", "/v1/admin/reload", TOKENS[name])
        assert status == 403
        assert "admin" in body["error"]
    assert gw.call("POST", "/v1/admin/reload", None)[0] == 401
    assert reload.reasons == []


def test_reload_without_a_reloader_is_501(gw: StatusApi) -> None:
    """A CommandApi built without a reload answers 501 to an admin, and 403 to others first."""
    status, _, body = gw.call("POST", "/v1/admin/reload", TOKENS["root"])
    assert status == 501
    assert "reload" in body["error"]
    assert gw.call("POST", "/v1/admin/reload", TOKENS["reader"])[0] == 403


def test_reload_answers_when_it_is_done() -> None:
    """The answer waits for the reload (which reads and checks the file) to finish."""
    done: Deferred[FakeReload] = Deferred()
    gw = StatusApi(reload=lambda reason: done)
    pending = gw.start("POST", "/v1/admin/reload", TOKENS["root"])
    assert not fired(pending)
    done.callback(FakeReload())
    gw.treq.flush()
    assert gw.finish(pending)[0] == 200


def test_reload_that_fails_is_500_and_counted() -> None:
    """A reload that raises is answered 500 without its detail; each answer is counted by status."""
    gw = StatusApi(reload=lambda reason: fail(RuntimeError("secret detail")))
    status, _, body = gw.call("POST", "/v1/admin/reload", TOKENS["root"])
    assert status == 500
    assert "secret" not in body["error"]
    gw.call("POST", "/v1/admin/reload", TOKENS["reader"])
    sample = gw.registry.get_sample_value
    assert sample("cpmi_api_requests_total", {"route": "/v1/admin/reload", "status": "500"}) == 1.0
    assert sample("cpmi_api_requests_total", {"route": "/v1/admin/reload", "status": "403"}) == 1.0


def test_reload_is_post_only(gw: StatusApi) -> None:
    """GET on the reload route is 405."""
    assert gw.call("GET", "/v1/admin/reload", TOKENS["root"])[0] == 405


# --- the page -------------------------------------------------------------------


class _Markup(HTMLParser):
    """Notes what the CSP would stop: inline scripts, style elements and attributes, handlers."""

    def __init__(self) -> None:
        super().__init__()
        self.inline: list[str] = []
        self.scripts: list[str] = []
        self.styles: list[str] = []
        self.inputs: dict[str, dict[str, str | None]] = {}
        self.labels: set[str] = set()
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "script":
            self.scripts.append(named.get("src") or "")
            self._in_script = True
        if tag == "style":
            self.inline.append("<style>")
        if tag == "link" and named.get("rel") == "stylesheet":
            self.styles.append(named.get("href") or "")
        if tag == "input" and named.get("id"):
            self.inputs[str(named["id"])] = named
        if tag == "label" and named.get("for"):
            self.labels.add(str(named["for"]))
        self.inline += [name for name in named if name == "style" or name.startswith("on")]
        self.inline += [f"{name}={value}" for name, value in attrs if (value or "").startswith("javascript:")]

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("<script>…</script>")


def test_page_is_served_without_a_token_with_a_strict_policy(gw: StatusApi) -> None:
    """GET / is the page, without a token, with a CSP allowing only its own files, no-store and DENY."""
    status, headers, body = gw.call("GET", "/", token=None)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-store"
    assert headers["x-frame-options"] == "DENY"
    assert headers["x-content-type-options"] == "nosniff"
    policy = dict(
        (directive.split()[0], directive.split()[1:])
        for directive in headers["content-security-policy"].split(";")
    )
    assert policy["default-src"] == ["'none'"]
    assert policy["script-src"] == ["'self'"] and policy["style-src"] == ["'self'"]
    assert policy["connect-src"] == ["'self'"] and policy["frame-ancestors"] == ["'none'"]
    assert "unsafe" not in headers["content-security-policy"]
    assert b"gw-status" not in body  # the page holds no data


def test_page_has_no_inline_code_and_a_labelled_password_field(gw: StatusApi) -> None:
    """The page loads its own script and style sheet only; the token field is a labelled password."""
    markup = _Markup()
    markup.feed(gw.call("GET", "/", token=None)[2].decode())
    assert markup.inline == []
    assert markup.scripts == ["/status.js"] and markup.styles == ["/status.css"]
    assert markup.inputs["token"]["type"] == "password"
    assert {"token", "filter"} <= markup.labels


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/status.js", "text/javascript; charset=utf-8"), ("/status.css", "text/css; charset=utf-8")],
)
def test_page_files_are_served(gw: StatusApi, path: str, content_type: str) -> None:
    """The script and the style sheet are served without a token, with their types and the same headers."""
    status, headers, body = gw.call("GET", path, token=None)
    assert status == 200 and body
    assert headers["content-type"] == content_type
    assert headers["cache-control"] == "no-store"
    assert "default-src 'none'" in headers["content-security-policy"]


def test_script_never_writes_markup(gw: StatusApi) -> None:
    """The page's script puts data in as text: no innerHTML, outerHTML, insertAdjacentHTML or eval."""
    script = gw.call("GET", "/status.js", token=None)[2].decode()
    for risky in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert risky not in script, risky
    assert "sessionStorage" in script and "textContent" in script


def test_page_files_are_package_data() -> None:
    """Each page file is read with importlib.resources and listed in setup.cfg's package_data."""
    assets = page_assets()
    assert sorted(assets) == sorted(route for route, _, _ in PAGE_ASSETS)
    parser = configparser.ConfigParser()
    parser.read(ROOT / "setup.cfg")
    shipped = {name.strip() for name in parser["options.package_data"]["gateway.cloud"].split(",")}
    for route, name, _ in PAGE_ASSETS:
        assert name in shipped, name
        assert assets[route].body == (ROOT / "gateway" / "cloud" / name).read_bytes()

"""`cpmictl conformance platform` against cpmi-gateway (every check passes) and broken platforms."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import maybeDeferred
from twisted.internet.utils import getProcessOutputAndValue
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from gateway import tap
from gateway.conformance.checks import platform_checks
from gateway.conformance.samples import AUTO_PAY_ANSWER
from gateway.journal import Journal
from gateway.journal.kinds import TOKEN_RECORD
from gateway.lots.sessions import token_digest
from tests.conformance.fakes import (
    DeafToHeartbeats,
    ForgetfulRepeats,
    RawDollars,
    reference,
    rows_of,
    run_kit,
    serve,
    unsigned_uplink,
)
from tests.lots.harness import HASH, PASSWORD
from tests.ports import free_port
from tests.processes import ROOT, gateway_toml

KIT_TOKEN = "conformance-kit-token"
EXPIRED_TOKEN = "0123456789abcdef0123456789abcdef"


class Cloud(Resource):
    """The gateway's cloud: takes event batches (204) and answers autoPay queries: paid."""

    isLeaf = True

    def render_POST(self, request: Request) -> bytes:
        if request.path.endswith(b"/query"):
            request.setHeader(b"content-type", b"application/json")
            return json.dumps(AUTO_PAY_ANSWER).encode()
        request.setResponseCode(204)
        return b""


async def expired_token_in(journal_path: Path) -> None:
    """Journal a token of lot001 that expired yesterday, as if issued last month."""
    journal = Journal.open(journal_path, reactor=reactor)
    body = {"user": "lot001", "park": "P001", "token_sha256": token_digest(EXPIRED_TOKEN)}
    await journal.append(
        TOKEN_RECORD, "P001", "login", "old", {**body, "expires": "2020-01-01T00:00:00+08:00"}
    )
    await journal.close()


def gateway_config(tmp_path: Path, cloud: int) -> tuple[str, dict[str, int]]:
    """A gateway with short idle timers, a small frame limit, a query cloud and the kit's API client."""
    ports = {name: free_port() for name in ("uplink", "downlink", "api")}
    digest = hashlib.sha256(KIT_TOKEN.encode()).hexdigest()
    text = f"""
{gateway_toml(tmp_path, "gw-conformance", **ports)}
[tcp]
read_idle = 3
write_idle = 1
all_idle = 0
max_frame_bytes = 65536
[cloud]
sink = "cloudevents"
url = "http://127.0.0.1:{cloud}/events"
query_url = "http://127.0.0.1:{cloud}/query"
[[api_client]]
name = "conformance-kit"
token_sha256 = "{digest}"
roles = ["command", "sync", "read"]
[[lot]]
park_code = "P001"
username = "lot001"
password = "{HASH}"
secret = "k"
"""
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return str(path), ports


@pytest_twisted.ensureDeferred
async def test_every_check_passes_against_the_gateway_and_junit_counts_them(tmp_path: Path) -> None:
    """The kit, run as `cpmictl`, passes every check against cpmi-gateway (idle timers, the expired
    token and the command API included), exits 0, and writes JUnit XML with one testcase per check."""
    tcp: Any = reactor
    cloud = tcp.listenTCP(0, Site(Cloud()), interface="127.0.0.1")
    config, ports = gateway_config(tmp_path, cloud.getHost().port)
    await expired_token_in(tmp_path / "journal")
    options = tap.Options()
    options.parseOptions(["--config", config])
    service = tap.makeService(options, reactor)
    service.startService()
    junit, report = tmp_path / "kit.xml", tmp_path / "kit.md"
    try:
        out, err, code = await getProcessOutputAndValue(
            sys.executable,
            [
                "-m", "gateway.cli.main", "conformance", "platform",
                "--uplink", f"http://127.0.0.1:{ports['uplink']}",
                "--downlink", f"127.0.0.1:{ports['downlink']}",
                "--api", f"http://127.0.0.1:{ports['api']}", "--api-token", KIT_TOKEN,
                "--user", "lot001", "--password", PASSWORD, "--secret", "k",
                "--read-idle", "3", "--write-idle", "1", "--max-frame-bytes", "65536",
                "--expired-token", EXPIRED_TOKEN, "--timeout", "5",
                "--junit", str(junit), "--markdown", str(report),
            ],
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            path=str(ROOT),
        )  # fmt: skip
    finally:
        await maybeDeferred(service.stopService)
        await cloud.stopListening()
    text = out.decode()
    rows = rows_of(text)
    assert code == 0, text + err.decode()
    assert set(rows) == {check.name for check in platform_checks()}
    assert {outcome for outcome, _ in rows.values()} == {"PASS"}, text
    suite = ElementTree.parse(junit).getroot()
    assert suite.tag == "testsuites"
    assert (suite.get("tests"), suite.get("failures"), suite.get("skipped")) == (str(len(rows)), "0", "0")
    assert len(suite.findall("./testsuite/testcase")) == len(rows)
    assert "| PASS | `downlink.gateOpen` |" in report.read_text()


@pytest_twisted.ensureDeferred
async def test_the_reference_platform_passes_what_it_can_be_asked() -> None:
    """Against the kit's own reference platform nothing fails: what it cannot show is SKIP, with why."""
    served = serve(reference(deadline=2.0))
    try:
        code, text = await run_kit([*served.options(), "--timeout", "2"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 0, text
    skipped = {name for name, (outcome, _) in rows.items() if outcome == "SKIP"}
    assert skipped == {"token.expired", "idle.write", "idle.read"}, text
    assert "--expired-token" in rows["token.expired"][1]
    assert "--write-idle" in rows["idle.write"][1]


@pytest_twisted.ensureDeferred
async def test_a_platform_that_does_not_sign_its_answers_fails() -> None:
    """Answers without a signature fail login and every uplink, naming B.3.7; exit 1."""
    platform = reference()
    served = serve(platform, uplink=unsigned_uplink(platform))
    try:
        code, text = await run_kit([*served.options(), "--only", "login,uplink.carIn,uplink.heartbeat"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    for name in ("login.accepted", "uplink.carIn", "uplink.heartbeat"):
        outcome, reason = rows[name]
        assert outcome == "FAIL" and "signature" in reason and "B.3.7" in reason, text
    assert rows["login.refused"][0] == "PASS"  # errors need no signature


@pytest_twisted.ensureDeferred
async def test_a_platform_that_takes_wrong_signatures_fails() -> None:
    """An account with signatures off lets unsigned and wrongly signed requests in: both FAIL."""
    served = serve(reference(signature="off"))
    try:
        code, text = await run_kit([*served.options(), "--only", "signature"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    assert rows["signature.missing"] == ("FAIL", "a request without a signature was accepted "
                                         "(is the lot's signature mode 'required'?)")  # fmt: skip
    assert (
        rows["signature.wrong"][0] == "FAIL" and "wrongly signed was accepted" in rows["signature.wrong"][1]
    )
    assert rows["signature.as-written"][0] == "PASS"


@pytest_twisted.ensureDeferred
async def test_a_platform_that_processes_repeats_again_fails() -> None:
    """A platform that forgets oprNums processes a repeat anew (its own answer, not the first) and
    never answers 9007: both repeat checks FAIL, saying so."""
    served = serve(reference(repeats=ForgetfulRepeats(reactor)))
    try:
        code, text = await run_kit([*served.options(), "--only", "repeat"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    outcome, reason = rows["repeat.first-answer"]
    assert (
        outcome == "FAIL"
        and "was processed again: answered 9010" in reason
        and "first answer was 0000" in reason
    )
    outcome, reason = rows["repeat.limit"]
    assert (
        outcome == "FAIL" and "repeat 6 within the hour was answered 0000" in reason and "not 9007" in reason
    )


@pytest_twisted.ensureDeferred
async def test_a_platform_that_writes_dollars_raw_in_frames_fails() -> None:
    """An ACK with a raw `$` in its JSON fails the escaping check, which names the character."""
    served = serve(reference(deadline=2.0), protocol=RawDollars)
    try:
        code, text = await run_kit(
            [*served.options(), "--only", "tcp.escaped-out,tcp.escaped-in", "--timeout", "2"]
        )
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    outcome, reason = rows["tcp.escaped-out"]
    assert outcome == "FAIL" and "raw '$' inside the frame" in reason, text
    assert rows["tcp.escaped-in"][0] == "PASS"  # reading escapes is not writing them


@pytest_twisted.ensureDeferred
async def test_a_platform_that_never_answers_heartbeats_fails() -> None:
    """A bound connection whose heartbeats go unanswered fails tcp.heartbeat with "no answer"."""
    served = serve(reference(), protocol=DeafToHeartbeats)
    try:
        code, text = await run_kit([*served.options(), "--only", "tcp.heartbeat,tcp.bind", "--timeout", "1"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    assert rows["tcp.heartbeat"] == ("FAIL", "no answer"), text
    assert rows["tcp.bind-heartbeat"][0] == "PASS"

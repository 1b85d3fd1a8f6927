"""`cpmictl conformance`: options, usage errors, and a run without the command API or the downlink."""

from __future__ import annotations

import io

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from gateway.cli.conformance import platform_main
from gateway.cli.main import build_parser, main
from tests.conformance.fakes import PASSWORD, SECRET, reference, rows_of, run_kit, serve
from tests.ports import free_port

ACCOUNT = ["--user", "lot001", "--password", "pw"]


def test_help_lists_the_issues_options(capsys: pytest.CaptureFixture[str]) -> None:
    """Both verbs' help exits 0 and names the options the issue gives them."""
    assert main(["conformance", "platform", "--help"]) == 0
    out = capsys.readouterr().out
    for option in (
        "--uplink",
        "--downlink",
        "--user",
        "--password",
        "--api",
        "--api-token",
        "--junit",
        "--markdown",
    ):
        assert option in out
    for option in ("--read-idle", "--write-idle", "--wait", "--expired-token", "--only"):
        assert option in out
    assert main(["conformance", "lot", "--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--uplink-listen", "--downlink-listen", "--secret", "--duration", "--junit", "--markdown"):
        assert option in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["platform", "--uplink", "gw:8080", *ACCOUNT], "not an http(s) URL"),
        (["platform", "--uplink", "http://gw", "--downlink", "gw", *ACCOUNT], "HOST:PORT"),
        (["platform", "--uplink", "http://gw", "--api", "http://gw:8081", *ACCOUNT], "go together"),
        (["platform", "--uplink", "http://gw", "--only", "nothing", *ACCOUNT], "selects no check"),
        (["platform", "--uplink", "http://gw", "--timezone", "Mars/Base", *ACCOUNT], "unknown zone"),
        (["lot", "--uplink-listen", "carrier-pigeon:1", *ACCOUNT], "--uplink-listen: not a usable endpoint"),
    ],
)
def test_usage_errors_exit_2_before_anything_runs(
    capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    """A bad option is one line on standard error and exit 2; nothing is run."""
    assert main(["conformance", *argv]) == 2
    assert message in capsys.readouterr().err


@pytest_twisted.ensureDeferred
async def test_without_a_downlink_the_tcp_checks_are_skipped_saying_why() -> None:
    """No --downlink: the HTTP checks run, every TCP, idle and downlink check is SKIP with the reason."""
    served = serve(reference())
    try:
        code, text = await run_kit(["--uplink", served.options()[1], "--only", "login,tcp,idle,downlink"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 0
    assert rows["login.accepted"][0] == "PASS"
    assert rows["tcp.oversize"] == ("SKIP", "skipped: no --downlink given, so no TCP checks")
    assert rows["downlink.gateOpen"][0] == "SKIP"


@pytest_twisted.ensureDeferred
async def test_without_the_api_an_operator_is_asked_to_trigger_each_downlink() -> None:
    """No --api: the kit tells the operator what to trigger and waits; a downlink triggered in time
    is checked (PASS), one nobody triggers is SKIP after --wait."""
    served = serve(reference())
    options = [*served.options()[:4], "--only", "downlink.gateOpen,downlink.gateState", "--wait", "1"]
    args = build_parser().parse_args(
        ["conformance", "platform", "--user", "lot001", "--password", PASSWORD, "--secret", SECRET, *options]
    )
    out = io.StringIO()
    running = Deferred.fromCoroutine(platform_main(args, reactor, out))
    try:
        while "trigger gateOpen" not in out.getvalue():
            await deferLater(reactor, 0.02, lambda: None)
        reply = await served.platform.downlinks.command("P001", "gateOpen", {"barCode": "G1", "isOpen": 1})
        code = await running
    finally:
        await served.stop()
    text = out.getvalue()
    rows = rows_of(text)
    assert code == 0 and reply.result_code == "0000"
    assert "No --api given: trigger each downlink for park P001" in text
    assert "→ trigger gateOpen (远程开闸) for park P001 now" in text
    assert (
        rows["downlink.gateOpen"][0] == "PASS" and "REPLY is not observable" in rows["downlink.gateOpen"][1]
    )
    assert rows["downlink.gateState"] == ("SKIP", "no gateState ACK within --wait 1 s (nobody triggered it)")


@pytest_twisted.ensureDeferred
async def test_an_unreachable_platform_fails_login_and_skips_the_rest() -> None:
    """Nothing listening: login.accepted FAILs with the connection error, every other check is SKIP."""
    code, text = await run_kit(["--uplink", f"http://127.0.0.1:{free_port()}", "--only", "login,token"])
    rows = rows_of(text)
    assert code == 1
    assert rows["login.accepted"][0] == "FAIL" and "ConnectionRefusedError" in rows["login.accepted"][1]
    assert rows["token.revoked"] == ("SKIP", "skipped: the lot could not log in (see login.accepted)")


@pytest_twisted.ensureDeferred
async def test_a_downlink_nobody_listens_on_fails_the_tcp_checks_with_the_error() -> None:
    """A --downlink that refuses connections: each planned TCP check FAILs saying it could not be run."""
    served = serve(reference())
    try:
        options = ["--uplink", served.options()[1], "--downlink", f"127.0.0.1:{free_port()}"]
        code, text = await run_kit([*options, "--only", "tcp.heartbeat,tcp.oversize"])
    finally:
        await served.stop()
    rows = rows_of(text)
    assert code == 1
    for name in ("tcp.heartbeat", "tcp.oversize"):
        assert rows[name][0] == "FAIL" and "could not be run: ConnectionRefusedError" in rows[name][1], text

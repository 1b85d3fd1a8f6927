"""The gateway's log: the JSON-lines observer, redaction, recent rejections and ``--log-format json``."""

from __future__ import annotations

import io
import json
import signal
import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.application.service import Application, IServiceCollection, MultiService, Service
from twisted.logger import ILogObserver, LogEvent, Logger, LogLevel, formatEvent, globalLogPublisher
from twisted.python import log as legacy_log
from twisted.python import usage
from twisted.python.logfile import LogFile
from twisted.scripts.twistd import ServerOptions

from gateway import tap
from gateway.logs import (
    ECHO_CHARS,
    KEPT_REJECTIONS,
    REASON_CHARS,
    RecentRejections,
    WithLogObserver,
    check_log_format,
    clip,
    is_secret_name,
    json_observer,
    log_stream,
    lot_rejected,
)
from gateway.protocol.framing import FrameDecoder, encode_frame
from gateway.protocol.signing import compact, sign
from tests.lots.harness import PASSWORD
from tests.processes import start_twistd, wait_for_port
from tests.test_end_to_end import api_config
from tests.test_tap import MemoryReactor, stop, write_config


@contextmanager
def captured(name: str | None = None) -> Iterator[list[LogEvent]]:
    """The events published while the block runs (only those whose ``event`` is `name`, when given)."""
    events: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if name is None or event.get("event") == name:
            events.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(observer)


def lines_of(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def logger_to(stream: io.StringIO, namespace: str = "gateway.test") -> Logger:
    return Logger(namespace=namespace, observer=json_observer(stream))


# the JSON observer


def test_a_line_holds_time_level_namespace_event_message_and_the_events_keys() -> None:
    """Each event is one JSON line: RFC 3339 UTC time in ms, level, namespace, event, message, its keys."""
    stream = io.StringIO()
    observer = json_observer(stream)
    observer(
        {
            "log_time": 1795480200.1239,
            "log_level": LogLevel.info,
            "log_namespace": "gateway.lots.downlink",
            "log_format": "lot {park} bound from {peer} by {how}",
            "log_source": None,
            "event": "lot.online",
            "park": "P001",
            "peer": "10.0.0.7:5123",
            "how": "login",
            "dialect": "standard",
        }
    )
    assert stream.getvalue().count("\n") == 1
    [line] = lines_of(stream)
    assert line == {
        "time": "2026-11-24T00:30:00.123Z",
        "level": "info",
        "namespace": "gateway.lots.downlink",
        "event": "lot.online",
        "message": "lot P001 bound from 10.0.0.7:5123 by login",
        "park": "P001",
        "peer": "10.0.0.7:5123",
        "how": "login",
        "dialect": "standard",
    }
    assert list(line)[:5] == ["time", "level", "namespace", "event", "message"]


def test_every_level_is_written_by_name_and_an_event_without_a_name_has_no_event_key() -> None:
    """debug, info, warn, error and critical appear as such; `event` only when the event has one."""
    stream = io.StringIO()
    log = logger_to(stream)
    log.debug("d")
    log.info("i")
    log.warn("w")
    log.error("e")
    log.critical("c")
    lines = lines_of(stream)
    assert [line["level"] for line in lines] == ["debug", "info", "warn", "error", "critical"]
    assert [line["message"] for line in lines] == ["d", "i", "w", "e", "c"]
    assert all("event" not in line and line["namespace"] == "gateway.test" for line in lines)


def test_a_failure_is_written_with_its_traceback() -> None:
    """log.failure gives a critical line whose message is the format and `traceback` the failure's."""
    stream = io.StringIO()
    log = logger_to(stream)
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        log.failure("handling a frame from {peer} failed", peer="10.0.0.7:5123")
    [line] = lines_of(stream)
    assert line["level"] == "critical"
    assert line["message"] == "handling a frame from 10.0.0.7:5123 failed"
    assert line["peer"] == "10.0.0.7:5123"
    assert "ZeroDivisionError" in line["traceback"] and "Traceback" in line["traceback"]
    assert not any(key.startswith("log_") for key in line)


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "upstream_password",
        "parkUserPwd",
        "passwd",
        "token",
        "api_token",
        "Authorization",
        "secret",
        "client_secret",
        "api_key",
        "X-Api-Key",
    ],
)
def test_a_key_named_like_a_secret_is_redacted_in_the_keys_and_the_message(name: str) -> None:
    """A password, token, secret, authorization or API key is "***" in its key and in the message text."""
    stream = io.StringIO()
    logger_to(stream).info("value: {" + name + "}", **{name: "hunter2-s3cret"})
    assert "hunter2" not in stream.getvalue()
    [line] = lines_of(stream)
    assert line[name] == "***" and line["message"] == "value: ***"


def test_digests_and_empty_values_are_not_redacted() -> None:
    """A `_sha256` name is a digest, not a secret; "" and None hide nothing and stay as they are."""
    stream = io.StringIO()
    logger_to(stream).info("x", token_sha256="9f86d0", password="", token=None, park="P001")
    [line] = lines_of(stream)
    assert line["token_sha256"] == "9f86d0" and line["password"] == "" and line["token"] is None
    assert not is_secret_name("token_SHA256") and is_secret_name("parkUserPwd")


def test_the_gateways_own_counts_and_flags_are_not_secrets_but_a_numeric_password_in_a_body_is() -> None:
    """Booleans, and numbers among the event's keys, are kept (tokens=3); a number in a dict is hidden."""
    stream = io.StringIO()
    logger_to(stream).info(
        "{tokens} tokens in force", tokens=3, apiTokenChanged=True, body={"parkUserPwd": 123456, "n": 1}
    )
    [line] = lines_of(stream)
    assert line["message"] == "3 tokens in force"
    assert line["tokens"] == 3 and line["apiTokenChanged"] is True
    assert line["body"] == {"parkUserPwd": "***", "n": 1} and "123456" not in stream.getvalue()


def test_secrets_nested_in_dicts_and_lists_are_redacted_everywhere() -> None:
    """A lot's request body with parkUserPwd, nested at any depth, is redacted in its key and message."""
    stream = io.StringIO()
    body = {
        "parkUserName": "lot001",
        "parkUserPwd": "hunter2",
        "items": [{"token": "abcdef0123456789abcdef0123456789", "carNum": "京A12345"}],
        "headers": {"Authorization": "Bearer cloud-token"},
    }
    event_body = json.loads(json.dumps(body))
    logger_to(stream).warn("refused {body}", body=event_body)
    text = stream.getvalue()
    for secret in ("hunter2", "abcdef0123456789abcdef0123456789", "cloud-token"):
        assert secret not in text
    [line] = lines_of(stream)
    assert line["body"] == {
        "parkUserName": "lot001",
        "parkUserPwd": "***",
        "items": [{"token": "***", "carNum": "京A12345"}],
        "headers": {"Authorization": "***"},
    }
    assert "'parkUserPwd': '***'" in line["message"]
    assert event_body == body, "the event itself is left as it was, for the other observers"


def test_values_json_cannot_hold_are_written_as_text() -> None:
    """Objects, bytes, sets and non-finite floats become strings; tuples lists; dict keys strings."""
    stream = io.StringIO()

    class Thing:
        def __str__(self) -> str:
            return "a thing"

    logger_to(stream).info(
        "x",
        thing=Thing(),
        raw=b"\x00ab",
        nan=float("nan"),
        pair=(1, 2.5),
        keyed={1: "one", "nested": {"deep": [True, None]}},
        time="yesterday",
    )
    [line] = lines_of(stream)
    assert line["thing"] == "a thing"
    assert line["raw"] == "b'\\x00ab'"
    assert line["nan"] == "nan"
    assert line["pair"] == [1, 2.5]
    assert line["keyed"] == {"1": "one", "nested": {"deep": [True, None]}}
    # An own key named like one of the line's own is kept, renamed.
    assert line["time"].endswith("Z") and line["time_"] == "yesterday"


def test_an_own_key_named_message_does_not_replace_the_message() -> None:
    """An event key `message` is written as `message_`; `message` stays the formatted text."""
    stream = io.StringIO()
    logger_to(stream).error("journal retention: {message}", message="disk full")
    [line] = lines_of(stream)
    assert line["message"] == "journal retention: disk full" and line["message_"] == "disk full"


def test_non_ascii_text_is_written_as_utf8_and_a_lone_surrogate_escaped() -> None:
    """Chinese text stays as it is (ensure_ascii off); text that is not UTF-8 is escaped, never raised."""
    buffer = io.BytesIO()
    stream = io.TextIOWrapper(buffer, encoding="utf-8", errors="strict", write_through=True)
    log = Logger(namespace="gateway.test", observer=json_observer(cast(Any, stream)))
    log.info("{carNum}", carNum="京A12345")
    log.info("{peer}", peer="bad\udcff")
    first, second = buffer.getvalue().split(b"\n")[:2]
    assert "京A12345".encode() in first
    assert json.loads(first.decode("utf-8"))["carNum"] == "京A12345"
    assert json.loads(second.decode("utf-8"))["peer"] == "bad\udcff"


def test_legacy_log_msg_events_are_written_without_twisteds_internal_keys() -> None:
    """A twisted.python.log.msg line is written with its text; isError, system and friends are left out."""
    stream = io.StringIO()
    observer = json_observer(stream)
    globalLogPublisher.addObserver(observer)
    try:
        legacy_log.msg("Starting factory", port=8080)
    finally:
        globalLogPublisher.removeObserver(observer)
    [line] = [line for line in lines_of(stream) if line["message"] == "Starting factory"]
    assert line["port"] == 8080 and line["namespace"] == "log_legacy"
    assert not {"isError", "system", "format"} & set(line)
    assert isinstance(line["time"], str) and line["time"].endswith("Z")


def test_the_rejection_helper_writes_what_is_known() -> None:
    """lot_rejected logs one warn lot.rejected event; its text names the park and peer only when known."""
    stream = io.StringIO()
    log = logger_to(stream)
    lot_rejected(log, park="", code="login", result="9003", reason="bad", dialect="standard", via="http")
    lot_rejected(
        log,
        park="P001",
        peer="10.0.0.7:5123",
        code="",
        result="9002",
        reason="报文格式错误",
        dialect="standard",
        via="tcp",
    )
    first, second = lines_of(stream)
    assert first["level"] == "warn" and first["event"] == "lot.rejected"
    assert first["message"] == "refused login over http: 9003 bad"
    assert second["message"] == "refused a message of lot P001 from 10.0.0.7:5123 over tcp: 9002 报文格式错误"
    assert {k: second[k] for k in ("park", "peer", "code", "result", "dialect", "via")} == {
        "park": "P001",
        "peer": "10.0.0.7:5123",
        "code": "",
        "result": "9002",
        "dialect": "standard",
        "via": "tcp",
    }


def test_a_refusal_of_a_huge_value_is_logged_as_its_first_36_characters() -> None:
    """A 5 MiB code, park, peer and reason make one line of a few hundred bytes, text and JSON alike.

    Issue 19 item 1: such a code was logged in full, 400 MiB of log for 40 requests.
    """
    stream = io.StringIO()
    huge = "C" * (5 * 2**20)
    events: list[LogEvent] = []
    to_json = json_observer(stream)

    def observe(event: LogEvent) -> None:
        events.append(event)
        to_json(event)

    lot_rejected(
        Logger(namespace="gateway.test", observer=cast(ILogObserver, observe)),
        park=huge,
        peer=huge,
        code=huge,
        result="9002",
        reason=f"code: {huge} unknown",
        dialect=huge,
        via="http",
    )
    [line] = stream.getvalue().splitlines()
    assert len(line.encode("utf-8")) < 2048
    [event] = events
    assert len(formatEvent(event)) < 1024
    logged = json.loads(line)
    assert logged["code"] == "C" * ECHO_CHARS + f"…(+{len(huge) - ECHO_CHARS})"
    assert logged["park"].startswith("C" * ECHO_CHARS + "…") and len(logged["reason"]) < REASON_CHARS + 16


def test_clip_keeps_short_text_and_does_not_clip_twice() -> None:
    """clip leaves short text alone, marks what it cut, and clipping its result again changes nothing."""
    assert clip("carIn") == "carIn" and clip("x" * ECHO_CHARS) == "x" * ECHO_CHARS
    once = clip("x" * 100)
    assert once == "x" * ECHO_CHARS + "…(+64)" and clip(once) == once
    assert clip(12345, 3) == "123…(+2)"


# recent rejections


def test_recent_rejections_hold_a_bounded_count_of_bounded_entries() -> None:
    """Thousands of rejections of 1 MiB values keep `KEPT_REJECTIONS` entries of under 1 KiB each.

    Issue 19 item 1: the list kept every refused value whole, and the status answer grew to 200 MiB.
    Entries logged by anyone, not only through lot_rejected, are clipped.
    """
    recent = RecentRejections()
    huge = "V" * 2**20
    for n in range(KEPT_REJECTIONS + 300):
        values = {key: huge for key in ("park", "code", "result", "reason", "peer", "via")}
        recent(rejection(n, **values, count=10**400, file=[huge]))
    assert len(recent) == KEPT_REJECTIONS
    kept = recent.recent(limit=10**6)
    assert len(kept) == KEPT_REJECTIONS
    sizes = [len(json.dumps(entry, ensure_ascii=False).encode("utf-8")) for entry in kept]
    assert max(sizes) < 1024
    first = kept[0]
    assert first["code"] == "V" * ECHO_CHARS + f"…(+{len(huge) - ECHO_CHARS})"
    assert str(first["reason"]).startswith("V" * REASON_CHARS + "…")


def rejection(n: int, name: str = "lot.rejected", **keys: Any) -> LogEvent:
    return {
        "log_time": 1000.0 + n,
        "log_level": LogLevel.warn,
        "log_namespace": "gateway.test",
        "log_format": "refused {code}",
        "event": name,
        "park": f"P{n:03d}",
        "code": "carIn",
        "result": "9010",
        "reason": f"reason {n}",
        **keys,
    }


def test_recent_rejections_are_newest_first_and_limited() -> None:
    """recent() gives the kept rejections newest first, at most `limit`; the deque keeps `maxlen`."""
    recent = RecentRejections(maxlen=5)
    for n in range(8):
        recent(rejection(n, via="http", dialect="standard"))
    assert len(recent) == 5
    assert [r["park"] for r in recent.recent()] == ["P007", "P006", "P005", "P004", "P003"]
    assert [r["park"] for r in recent.recent(limit=2)] == ["P007", "P006"]
    assert recent.recent(limit=0) == []
    assert recent.recent(1) == [
        {
            "time": 1007.0,
            "event": "lot.rejected",
            "park": "P007",
            "code": "carIn",
            "result": "9010",
            "reason": "reason 7",
            "dialect": "standard",
            "via": "http",
        }
    ]


def test_recent_rejections_keep_cloud_and_config_refusals_and_nothing_else() -> None:
    """cloud.rejected (with its status) and config.refused (its error as reason) are kept; others not."""
    recent = RecentRejections()
    recent(rejection(1, "lot.online"))
    recent({"log_time": 1.0, "log_format": "hello"})
    recent(
        {
            "log_time": 2.0,
            "log_format": "forwarder: ...",
            "event": "cloud.rejected",
            "status": 400,
            "count": 3,
            "first": 10,
            "last": 12,
            "reason": "bad event",
            "park": "",
            "code": "",
        }
    )
    recent(
        {
            "log_time": 3.0,
            "log_format": "configuration not reloaded ({source}): {error}",
            "event": "config.refused",
            "source": "SIGHUP",
            "error": "gateway.toml: lot[0].secret: must be a string",
            "file": "gateway.toml",
        }
    )
    config_refused, cloud_rejected = recent.recent()
    assert cloud_rejected == {
        "time": 2.0,
        "event": "cloud.rejected",
        "park": "",
        "code": "",
        "result": "",
        "reason": "bad event",
        "status": 400,
        "count": 3,
        "first": 10,
        "last": 12,
    }
    assert config_refused["reason"] == "gateway.toml: lot[0].secret: must be a string"
    assert config_refused["source"] == "SIGHUP" and config_refused["event"] == "config.refused"
    json.dumps(recent.recent())


def test_recent_rejections_are_json_safe_and_redacted_and_their_copies_are_the_callers() -> None:
    """Odd values are kept as bounded text, secrets as "***"; changing what recent() gave changes nothing."""
    recent = RecentRejections()
    recent(rejection(1, reason=ValueError("boom"), peer={"token": "abc"}))
    [kept] = recent.recent()
    assert kept["reason"] == "boom" and kept["peer"] == "{'token': '***'}"
    kept["park"] = "changed"
    assert recent.recent()[0]["park"] == "P001"


def test_recent_rejections_observe_the_global_publisher() -> None:
    """Added to the log publisher, it sees the gateway's lot.rejected events as they are logged."""
    recent = RecentRejections()
    globalLogPublisher.addObserver(recent)
    try:
        lot_rejected(
            Logger(), park="P001", code="login", result="9003", reason="wrong", dialect="standard", via="tcp"
        )
    finally:
        globalLogPublisher.removeObserver(recent)
    [kept] = recent.recent()
    assert (kept["park"], kept["code"], kept["result"], kept["via"]) == ("P001", "login", "9003", "tcp")


# --log-format


def test_log_format_defaults_to_text_and_refuses_other_values(tmp_path: Path) -> None:
    """--log-format is text unless given; json is accepted; anything else is a usage error."""
    options = tap.Options()
    options.parseOptions(["--config", "x.toml"])
    assert options["log-format"] == "text"
    options = tap.Options()
    options.parseOptions(["--config", "x.toml", "--log-format", "json"])
    assert options["log-format"] == "json"
    with pytest.raises(usage.UsageError, match="xml"):
        tap.Options().parseOptions(["--config", "x.toml", "--log-format", "xml"])


def twistd_options(*args: str) -> ServerOptions:
    options = ServerOptions()
    options.parseOptions(list(args))
    return options


def test_json_needs_a_place_twistd_can_write_it() -> None:
    """json with --syslog, or on standard output without -n, is a usage error before anything starts."""
    with pytest.raises(usage.UsageError, match="syslog"):
        twistd_options("--syslog", "cpmi-gateway", "--log-format", "json")
    with pytest.raises(usage.UsageError, match="standard output"):
        twistd_options("--logfile", "-", "cpmi-gateway", "--log-format", "json")
    with pytest.raises(usage.UsageError):
        check_log_format("yaml", None)
    twistd_options("--syslog", "cpmi-gateway")  # text: twistd's own business


def test_the_stream_is_where_twistd_would_write_its_text(tmp_path: Path) -> None:
    """-n writes to standard output, --logfile to that file (rotated by SIGUSR1), no -n to twistd.log."""
    import sys

    reactor = MemoryReactor()
    assert log_stream(None, reactor) is sys.stdout
    assert log_stream(twistd_options("-n", "cpmi-gateway"), reactor) is sys.stdout
    assert log_stream(twistd_options("-n", "--logfile", "-", "cpmi-gateway"), reactor) is sys.stdout
    before = signal.getsignal(signal.SIGUSR1)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        path = tmp_path / "gateway.log"
        stream = log_stream(twistd_options("-n", "--logfile", str(path), "cpmi-gateway"), reactor)
        assert isinstance(stream, LogFile) and Path(stream.path) == path
        handler = signal.getsignal(signal.SIGUSR1)
        assert callable(handler)
        json_observer(stream)({"log_time": 0.0, "log_format": "ok {n}", "n": 1})
        handler(signal.SIGUSR1, None)
        f, _, _ = reactor.from_threads.get_nowait()
        assert f == stream.rotate
        stream.close()
        assert json.loads(path.read_text())["message"] == "ok 1"
    finally:
        signal.signal(signal.SIGUSR1, before)


def test_twistds_own_logger_option_takes_the_stdout_observer() -> None:
    """`twistd --logger gateway.logs.stdout_json_observer` names a factory of a JSON-lines observer."""
    import sys

    from gateway.logs import stdout_json_observer

    options = twistd_options("-n", "--logger", "gateway.logs.stdout_json_observer", "cpmi-gateway")
    assert options["logger"] is stdout_json_observer
    assert ILogObserver.providedBy(stdout_json_observer())
    assert stdout_json_observer()._stream is sys.stdout  # type: ignore[attr-defined]


def test_the_wrapper_gives_the_application_its_observer_and_runs_the_gateway() -> None:
    """Attached to twistd's application, WithLogObserver sets its ILogObserver and runs the gateway."""
    made: list[ILogObserver] = []

    def observer() -> ILogObserver:
        made.append(json_observer(io.StringIO()))
        return made[-1]

    gateway = MultiService()
    part = Service()
    part.setServiceParent(gateway)
    wrapper = WithLogObserver(gateway, observer)
    assert made == [], "nothing is opened before twistd attaches the service"
    application = Application("cpmi-gateway")
    wrapper.setServiceParent(application)
    assert made and application.getComponent(ILogObserver) is made[0]
    assert list(IServiceCollection(application)) == [wrapper] and list(wrapper) == [gateway]
    wrapper.startService()
    assert part.running
    wrapper.stopService()
    assert not part.running


def test_make_service_wraps_the_gateway_only_for_json(tmp_path: Path) -> None:
    """With --log-format json makeService returns the gateway inside WithLogObserver; text, as it was."""
    reactor = MemoryReactor()
    try:
        for log_format, wrapped in (("text", False), ("json", True)):
            options = tap.Options()
            options.parseOptions(["--config", write_config(tmp_path), "--log-format", log_format])
            service = tap.makeService(options, reactor)
            assert isinstance(service, WithLogObserver) is wrapped
            stop(service, reactor)
    finally:
        reactor.stop_pool()


# twistd end to end


def tcp_login(port: int, password: str) -> dict[str, Any]:
    """Log lot001 in over the TCP downlink; the gateway's answer (the connection is left to close)."""
    data = {"parkUserName": "lot001", "parkUserPwd": password}
    frame = {
        "token": "",
        "code": "login",
        "oprNum": f"login-{password}",
        "signature": sign(compact(data), "", "k"),
        "data": data,
    }
    decoder = FrameDecoder(2**20)
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(encode_frame(frame))
        while True:
            chunk = connection.recv(65536)
            assert chunk, "the gateway closed the connection without answering"
            for payload in decoder.feed(chunk):
                assert isinstance(payload, bytes)
                answer: dict[str, Any] = json.loads(payload)
                return answer


@pytest.mark.parametrize("where", ["stdout", "logfile"])
def test_twistd_with_log_format_json_writes_json_lines_without_secrets(tmp_path: Path, where: str) -> None:
    """twistd --log-format json: every line is JSON, lot.rejected and lot.online are there, no secret is."""
    config, downlink, _ = api_config(tmp_path)
    if where == "stdout":
        process = start_twistd(
            tmp_path, config, ["--log-format", "json"], logfile=None, stdout=subprocess.PIPE
        )
    else:
        process = start_twistd(tmp_path, config, ["--log-format", "json"], logfile="gateway.log")
    wrong = "wrong-password-4711"
    try:
        wait_for_port(downlink, process)
        refused = tcp_login(downlink, wrong)
        assert refused["resultCode"] == "9003"
        answer = tcp_login(downlink, PASSWORD)
        assert answer["resultCode"] == "0000"
        token = answer["data"]["token"]
        assert len(token) == 32
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == -signal.SIGTERM, stderr.decode()  # twistd exits by the signal it got
    output = stdout.decode() if where == "stdout" else (tmp_path / "gateway.log").read_text()
    lines = [json.loads(line) for line in output.splitlines()]
    assert lines and all({"time", "level", "namespace", "message"} <= set(line) for line in lines)
    for secret in (wrong, PASSWORD, token, "cloud-token"):
        assert secret not in output
    [rejected] = [line for line in lines if line.get("event") == "lot.rejected"]
    assert rejected["level"] == "warn"
    assert {k: rejected[k] for k in ("park", "code", "result", "dialect", "via")} == {
        "park": "P001",
        "code": "login",
        "result": "9003",
        "dialect": "standard",
        "via": "tcp",
    }
    assert rejected["peer"].startswith("127.0.0.1:") and "parkUserPwd" in rejected["reason"]
    [online] = [line for line in lines if line.get("event") == "lot.online"]
    assert (online["park"], online["how"], online["dialect"]) == ("P001", "login", "standard")
    assert online["peer"].startswith("127.0.0.1:")
    # The lot's connection closes as the test's socket does, or as the gateway stops: once either way.
    [offline] = [line for line in lines if line.get("event") == "lot.offline"]
    assert offline["park"] == "P001" and offline["dialect"] == "standard"
    assert any("twistd" in line["message"] and "starting up" in line["message"] for line in lines)

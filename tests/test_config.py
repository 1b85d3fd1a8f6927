"""The TOML configuration: the shipped file loads, and each problem is one line naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from attrs import evolve
from twisted.internet import endpoints
from twisted.internet.testing import MemoryReactor

from gateway import config
from gateway.config import ConfigError

HASH = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA"
SHIPPED = Path(__file__).parent.parent / "conf" / "gateway.toml"


def lot(**changes: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {"park_code": "P1", "username": "u1", "password": HASH}
    entry.update(changes)
    return entry


def test_shipped_config_loads_with_log_only_sink() -> None:
    """conf/gateway.toml loads as shipped: log-only sink, fsync always, one demo lot."""
    settings = config.load(str(SHIPPED))
    assert settings.cloud.sink == "log-only"
    assert settings.journal.fsync == "always"
    assert settings.gateway.timezone.key == "Asia/Shanghai"
    assert [lot.park_code for lot in settings.lots] == ["P001"]
    assert settings.lots[0].signature == "required"


def test_defaults_follow_the_contract() -> None:
    """An empty document gives the contract's defaults."""
    settings = config.parse({})
    assert settings.gateway.id == "gw-01"
    assert settings.listen.uplink == "tcp:8080"
    assert settings.listen.api == "tcp:8081:interface=127.0.0.1"
    assert (settings.tcp.read_idle, settings.tcp.write_idle, settings.tcp.all_idle) == (
        180,
        60,
        300,
    )
    assert settings.tcp.max_frame_bytes == 1048576
    assert settings.lots == () and settings.api_clients == ()


def test_hostile_client_bounds_follow_the_contract() -> None:
    """The bounds of CONTRACT §4 "Hostile and faulty clients" default as §8 gives them."""
    settings = config.parse({})
    up = settings.uplink
    assert (up.max_body_bytes, up.header_timeout, up.min_body_rate) == (16 * 2**20, 10, 1024)
    assert (up.max_connections_per_peer, up.max_connections, up.max_pending_logins) == (64, 20000, 256)
    assert up.api_max_body_bytes < up.max_body_bytes
    assert settings.tcp.max_unbound_bytes == 65536
    assert (up.inline_body_bytes, up.body_workers, up.max_pending_bodies) == (16384, 2, 8)


def test_hostile_client_bounds_are_read_and_checked() -> None:
    """Each bound is read from its table, and one below its minimum is a one-line error."""
    settings = config.parse(
        {
            "uplink": {"max_connections_per_peer": 3, "max_pending_logins": 9},
            "tcp": {"max_unbound_bytes": 100},
        }
    )
    assert settings.uplink.max_connections_per_peer == 3 and settings.uplink.max_pending_logins == 9
    assert settings.tcp.max_unbound_bytes == 100
    with pytest.raises(config.ConfigError, match=r"^uplink.max_pending_logins: must be at least 1$"):
        config.parse({"uplink": {"max_pending_logins": 0}})
    with pytest.raises(config.ConfigError, match=r"^tcp.max_unbound_bytes: must be at least 64$"):
        config.parse({"tcp": {"max_unbound_bytes": 1}})


@pytest.mark.parametrize(
    ("endpoint", "line"),
    [
        ("tcp:8080:backlog=0", "listen.uplink: backlog=0 is not 1-65535: 'tcp:8080:backlog=0'"),
        (
            "haproxy:tcp:8080:backlog=70000",
            "listen.uplink: backlog=70000 is not 1-65535: 'haproxy:tcp:8080:backlog=70000'",
        ),
        ("tcp:8080:backlog=-1", "listen.uplink: backlog=-1 is not 1-65535: 'tcp:8080:backlog=-1'"),
        (
            "tcp:8080:backlog=many",
            "listen.uplink: not a usable endpoint 'tcp:8080:backlog=many': invalid literal",
        ),
    ],
)
def test_a_bad_backlog_is_one_line(endpoint: str, line: str) -> None:
    """A listener's `backlog=` that is not a count of 1-65535 is a one-line error naming the key."""
    with pytest.raises(config.ConfigError) as raised:
        config.parse({"listen": {"uplink": endpoint}})
    assert str(raised.value).startswith(line) and "\n" not in str(raised.value)


def test_an_explicit_backlog_is_kept() -> None:
    """A good `backlog=` is read as written (the listener adds the default only when none is named)."""
    assert (
        config.parse({"listen": {"downlink": "tcp:9000:backlog=4096"}}).listen.downlink
        == "tcp:9000:backlog=4096"
    )


def test_body_worker_keys_are_read_and_checked() -> None:
    """The big-body worker keys are read; no workers (all bodies parsed in the gateway) is allowed,
    a queue of none is a one-line error."""
    up = config.parse({"uplink": {"inline_body_bytes": 0, "body_workers": 0, "max_pending_bodies": 1}}).uplink
    assert (up.inline_body_bytes, up.body_workers, up.max_pending_bodies) == (0, 0, 1)
    with pytest.raises(config.ConfigError, match=r"^uplink.max_pending_bodies: must be at least 1$"):
        config.parse({"uplink": {"max_pending_bodies": 0}})
    with pytest.raises(config.ConfigError, match=r"^uplink.body_workers: must be at least 0$"):
        config.parse({"uplink": {"body_workers": -1}})


def test_lot_defaults_and_lookups() -> None:
    """A lot's signature defaults to required, its dialect to standard; lots are found by account and park."""
    settings = config.parse({"lot": [lot(), lot(park_code="P2", username="u2", signature="off")]})
    assert settings.lots[0].signature == "required" and settings.lots[0].dialect == "standard"
    assert settings.lot_by_username("u2") is settings.lots[1]
    assert settings.lot_by_park("P1") is settings.lots[0]
    assert settings.lot_by_username("nobody") is None


@pytest.mark.parametrize(
    ("document", "line"),
    [
        (
            {"lot": [lot(), lot(park_code="P2", username="u2", password="secret")]},
            "lot[1].password: not an argon2id hash",
        ),
        (
            {"lot": [lot(signature="maybe")]},
            "lot[0].signature: 'maybe' is not one of required, optional, off",
        ),
        ({"lot": [lot(singature="off")]}, "lot[0].singature: unknown key"),
        ({"lot": [lot(), lot(username="u2")]}, "lot[1].park_code: 'P1' is used twice"),
        ({"lot": [lot(), lot(park_code="P2")]}, "lot[1].username: 'u1' is used twice"),
        ({"lot": [lot(park_code="")]}, "lot[0].park_code: must not be empty"),
        ({"lot": [lot(dialect="acme")]}, "lot[0].dialect: 'acme' is not an installed dialect ("),
        ({"lot": {"park_code": "P1"}}, "lot: must be an array of tables"),
        (
            {"gateway": {"timezone": "Mars/Olympus"}},
            "gateway.timezone: unknown time zone 'Mars/Olympus'",
        ),
        ({"gateway": {"id": "a b"}}, "gateway.id: letters, digits"),
        ({"listen": {"uplink": "nonsense:1"}}, "listen.uplink: not a usable endpoint"),
        (
            {"journal": {"fsync": "sometimes"}},
            "journal.fsync: 'sometimes' is not one of always, interval, never",
        ),
        ({"tcp": {"read_idle": -1}}, "tcp.read_idle: must be at least 0"),
        ({"tcp": {"bind_timeout": "10"}}, "tcp.bind_timeout: must be a whole number"),
        ({"tcp": {"bind_timeout": True}}, "tcp.bind_timeout: must be a whole number"),
        (
            {"cloud": {"sink": "kafka"}},
            "cloud.sink: 'kafka' is not one of log-only, cloudevents, t002",
        ),
        (
            {"api_client": [{"name": "m", "token_sha256": "xyz", "roles": ["read"]}]},
            "api_client[0].token_sha256: not 64 lower-case hex digits",
        ),
        (
            {"api_client": [{"name": "m", "token_sha256": "a" * 64, "roles": ["god"]}]},
            "api_client[0].roles: 'god' is not one of",
        ),
        ({"gateway": "x"}, "gateway: must be a table"),
        ({"extra": {}}, "extra: unknown key"),
        ({"deadlines": {"carIn": 5}}, "deadlines.carIn: not an interface sent down to lots, nor a query"),
        ({"journal": {"seal_interval": 0}}, "journal.seal_interval: must be more than 0 seconds"),
        ({"journal": {"seal_records": 0}}, "journal.seal_records: must be at least 1"),
        ({"journal": {"min_free_bytes": -1}}, "journal.min_free_bytes: must be at least 0"),
        ({"journal": {"checkpoint_records": 0}}, "journal.checkpoint_records: must be at least 1"),
        ({"journal": {"retain_days": -1}}, "journal.retain_days: must be 0 (keep) or more"),
        (
            {"journal": {"segment_bytes": 65536, "retain_bytes": 100000}},
            "journal.retain_bytes: must be 0 (no limit) or at least twice segment_bytes (131072)",
        ),
        ({"cloud": {"url": "ftp://cloud/events"}}, "cloud.url: not an http:// or https:// URL"),
        ({"cloud": {"sink": "cloudevents"}}, "cloud.url: required with sink 'cloudevents'"),
        ({"cloud": {"url": "http://c/e", "query_url": "c/q"}}, "cloud.query_url: not an http://"),
        ({"cloud": {"batch_max_events": 0}}, "cloud.batch_max_events: must be at least 1"),
        ({"cloud": {"batch_max_bytes": 100}}, "cloud.batch_max_bytes: must be at least 1024"),
        ({"cloud": {"batch_max_delay": -1}}, "cloud.batch_max_delay: must be more than 0 seconds"),
        ({"cloud": {"retry_min_delay": 0}}, "cloud.retry_min_delay: must be more than 0 seconds"),
        ({"cloud": {"request_timeout": "30"}}, "cloud.request_timeout: must be a number"),
        (
            {"cloud": {"retry_min_delay": 5, "retry_max_delay": 1}},
            "cloud.retry_max_delay: must not be less than cloud.retry_min_delay",
        ),
        ({"deadlines": {"gateOpen": 0}}, "deadlines.gateOpen: must be more than 0 seconds"),
        ({"deadlines": {"gateOpen": "2s"}}, "deadlines.gateOpen: must be a number"),
    ],
)
def test_each_problem_is_one_line_naming_the_key(document: dict[str, Any], line: str) -> None:
    """A bad value is refused with one line that starts with the key's path."""
    with pytest.raises(ConfigError) as caught:
        config.parse(document)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(line)


def test_unreadable_and_invalid_files_name_the_file(tmp_path: Path) -> None:
    """A missing file or broken TOML is one line naming the file."""
    with pytest.raises(ConfigError, match=r"nope\.toml"):
        config.load(str(tmp_path / "nope.toml"))
    broken = tmp_path / "broken.toml"
    broken.write_text("[gateway\nid = 1\n")
    with pytest.raises(ConfigError) as caught:
        config.load(str(broken))
    assert str(caught.value).startswith(f"{broken}: not valid TOML")
    assert "\n" not in str(caught.value)


def test_a_cloud_url_selects_the_cloudevents_sink_with_forwarding_defaults() -> None:
    """With a URL and no sink, events go to the cloud; the batch and retry bounds have defaults."""
    cloud = config.parse({"cloud": {"url": "https://cloud.example/events"}}).cloud
    assert cloud.sink == "cloudevents"
    assert (cloud.batch_max_events, cloud.batch_max_bytes, cloud.batch_max_delay) == (500, 2**20, 0.1)
    assert (cloud.retry_min_delay, cloud.retry_max_delay, cloud.request_timeout) == (0.5, 60.0, 30.0)
    tuned = config.parse(
        {"cloud": {"url": "http://c/e", "batch_max_events": 10, "batch_max_delay": 0, "retry_max_delay": 5}}
    ).cloud
    assert (tuned.batch_max_events, tuned.batch_max_delay, tuned.retry_max_delay) == (10, 0.0, 5.0)


def test_lookups_stay_right_with_many_lots() -> None:
    """With thousands of lots, each account and park finds its own lot."""
    lots = [lot(park_code=f"P{i}", username=f"u{i}") for i in range(3000)]
    settings = config.parse({"lot": lots})
    for i in (0, 1234, 2999):
        assert settings.lot_by_username(f"u{i}") is settings.lot_by_park(f"P{i}") is settings.lots[i]
    assert settings.lot_by_username("u3000") is None


def test_deadlines_override_the_contract_table_by_code_or_number() -> None:
    """[deadlines] sets a downlink's or a query's deadline in seconds, named by code or Table-1 number."""
    settings = config.parse({"deadlines": {"gateOpen": 3, "22": 12.5, "autoPay": 2}})
    assert settings.deadlines == {"gateOpen": 3.0, "gateState": 12.5, "autoPay": 2.0}
    assert config.parse({}).deadlines == {}


def test_values_are_frozen() -> None:
    """Config values cannot be changed after loading."""
    settings = config.parse({"lot": [lot()]})
    with pytest.raises(AttributeError):
        settings.lots[0].secret = "x"  # type: ignore[misc]


UPSTREAM = {"upstream_username": "up1", "upstream_password": "pw1"}


def t002(downlink: str = "upstream.example:9000", **changes: Any) -> dict[str, Any]:
    """A [cloud] table for the t002 sink, with `changes` on top."""
    table: dict[str, Any] = {"sink": "t002", "url": "https://upstream.example/uplink", "downlink": downlink}
    table.update(changes)
    return table


def refusal(document: dict[str, Any], environ: dict[str, str] | None = None) -> str:
    """The one line `document` is refused with."""
    with pytest.raises(ConfigError) as caught:
        config.parse(document, environ=environ or {})
    message = str(caught.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("downlink", "endpoint"),
    [
        ("upstream.example:9000", "tcp:host=upstream.example:port=9000"),
        ("192.0.2.7:9000", "tcp:host=192.0.2.7:port=9000"),
        ("[::1]:9000", "tcp:host=\\:\\:1:port=9000"),
        ("[2001:db8::7]:65535", "tcp:host=2001\\:db8\\:\\:7:port=65535"),
        ("upstream.example:09000", "tcp:host=upstream.example:port=9000"),
        ("tcp:upstream.example:9000", "tcp:upstream.example:9000"),
        ("tcp:host=upstream.example:port=9000:timeout=5", "tcp:host=upstream.example:port=9000:timeout=5"),
        ("tls:upstream.example:9000", "tls:upstream.example:9000"),
    ],
)
def test_t002_sink_takes_the_downlink_as_a_client_endpoint(downlink: str, endpoint: str) -> None:
    """With sink t002, cloud.downlink (host:port, [v6]:port, tcp:, tls:) becomes a client endpoint."""
    settings = config.parse({"cloud": t002(downlink), "lot": [lot(**UPSTREAM)]}, environ={})
    assert settings.cloud.sink == "t002"
    assert settings.cloud.url == "https://upstream.example/uplink"
    assert settings.cloud.downlink == downlink
    assert settings.cloud.downlink_endpoint == endpoint


def test_the_downlink_endpoint_builds_to_the_address_written() -> None:
    """The normalized description of host:port and [v6]:port builds a TCP client to that host and port."""
    for downlink, host in (("upstream.example:9000", "upstream.example"), ("[::1]:9000", "::1")):
        cloud = config.parse({"cloud": t002(downlink)}, environ={}).cloud
        endpoint = endpoints.clientFromString(MemoryReactor(), cloud.downlink_endpoint)
        assert isinstance(endpoint, endpoints.TCP4ClientEndpoint)
        assert (endpoint._host, endpoint._port) == (host, 9000)


def test_other_sinks_have_no_downlink_endpoint() -> None:
    """Without sink t002, downlink_endpoint stays empty."""
    assert config.parse({}).cloud.downlink_endpoint == ""
    assert config.parse({"cloud": {"url": "https://c/e"}}).cloud.downlink_endpoint == ""


@pytest.mark.parametrize(
    ("downlink", "line"),
    [
        ("xyz", "cloud.downlink: not host:port or a tcp:/tls: endpoint: 'xyz'"),
        ("upstream.example", "cloud.downlink: not host:port or a tcp:/tls: endpoint: 'upstream.example'"),
        ("::1:9000", "cloud.downlink: not host:port or a tcp:/tls: endpoint: '::1:9000'"),
        ("[upstream]:9000", "cloud.downlink: not host:port or a tcp:/tls: endpoint: '[upstream]:9000'"),
        ("h:port", "cloud.downlink: not host:port or a tcp:/tls: endpoint: 'h:port'"),
        ("unix:/run/up.sock", "cloud.downlink: not host:port or a tcp:/tls: endpoint: 'unix:/run/up.sock'"),
        ("h:0", "cloud.downlink: port 0 is not 1-65535: 'h:0'"),
        ("h:65536", "cloud.downlink: port 65536 is not 1-65535: 'h:65536'"),
        ("[::1]:70000", "cloud.downlink: port 70000 is not 1-65535: '[::1]:70000'"),
        ("tcp:h:70000", "cloud.downlink: port 70000 is not 1-65535: 'tcp:h:70000'"),
        ("tls:h:0", "cloud.downlink: port 0 is not 1-65535: 'tls:h:0'"),
        ("tcp:h", "cloud.downlink: not a usable endpoint 'tcp:h': "),
        ("tcp:h:9000:colour=blue", "cloud.downlink: not a usable endpoint 'tcp:h:9000:colour=blue': "),
    ],
)
def test_a_bad_downlink_is_one_line(downlink: str, line: str) -> None:
    """A downlink that is not host:port or a buildable tcp:/tls: endpoint, port 1-65535, is refused."""
    assert refusal({"cloud": t002(downlink)}).startswith(line)


@pytest.mark.parametrize(
    ("cloud", "line"),
    [
        (t002(downlink=""), "cloud.downlink: required with sink 't002' (the upstream's TCP host:port)"),
        ({"sink": "t002", "downlink": "h:9000"}, "cloud.url: required with sink 't002'"),
        (t002(url="ftp://up/uplink"), "cloud.url: not an http:// or https:// URL: 'ftp://up/uplink'"),
        (
            t002(query_url="https://up/query"),
            "cloud.query_url: not used with sink 't002' (queries go to the upstream at cloud.url)",
        ),
        ({"url": "https://c/e", "downlink": "h:9000"}, "cloud.downlink: only used with sink 't002'"),
        ({"sink": "log-only", "downlink": "h:9000"}, "cloud.downlink: only used with sink 't002'"),
    ],
)
def test_the_t002_sink_needs_its_cloud_keys(cloud: dict[str, Any], line: str) -> None:
    """Sink t002 needs url and downlink and no query_url; other sinks refuse a downlink."""
    assert refusal({"cloud": cloud}) == line


@pytest.mark.parametrize(
    ("lots", "line"),
    [
        ([lot()], "lot[0].upstream_username: required with sink 't002'"),
        (
            [
                lot(park_code="P1", username="u1", **UPSTREAM),
                lot(park_code="P2", username="u2", upstream_username="up2", upstream_password="pw2"),
                lot(park_code="P3", username="u3", upstream_password="pw3"),
            ],
            "lot[2].upstream_username: required with sink 't002'",
        ),
        (
            [lot(**UPSTREAM), lot(park_code="P2", username="u2", upstream_username="up2")],
            "lot[1].upstream_password: required with sink 't002'",
        ),
        (
            [lot(**UPSTREAM), lot(park_code="P2", username="u2", **UPSTREAM)],
            "lot[1].upstream_username: 'up1' is used twice",
        ),
    ],
)
def test_every_lot_needs_its_own_upstream_account_with_t002(lots: list[dict[str, Any]], line: str) -> None:
    """With sink t002 each lot needs an upstream username and password, the username its own."""
    assert refusal({"cloud": t002(), "lot": lots}) == line


def test_upstream_keys_are_allowed_and_unneeded_with_other_sinks() -> None:
    """Without sink t002, lots may leave out the upstream keys or set them; they are kept, unused."""
    settings = config.parse({"lot": [lot(), lot(park_code="P2", username="u2", **UPSTREAM)]}, environ={})
    assert settings.lots[0].upstream_username == "" and settings.lots[1].upstream_password == "pw1"


def test_secrets_are_read_from_the_environment() -> None:
    """env:NAME is the value of environment variable NAME, for each lot secret and cloud.api_token."""
    environ = {"UP_PW": "from env", "UP_SECRET": "k2", "LOT_SECRET": "k1", "API_TOKEN": "t0k3n"}
    document = {
        "cloud": t002(api_token="env:API_TOKEN"),
        "lot": [
            lot(
                secret="env:LOT_SECRET",
                upstream_username="up1",
                upstream_password="env:UP_PW",
                upstream_secret="env:UP_SECRET",
            )
        ],
    }
    settings = config.parse(document, environ=environ)
    first = settings.lots[0]
    assert (first.secret, first.upstream_password, first.upstream_secret) == ("k1", "from env", "k2")
    assert settings.cloud.api_token == "t0k3n"


def test_secrets_come_from_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without an environ argument, env:NAME is looked up in the process environment."""
    monkeypatch.setenv("CPMI_TEST_API_TOKEN", "from the process")
    assert (
        config.parse({"cloud": {"api_token": "env:CPMI_TEST_API_TOKEN"}}).cloud.api_token
        == "from the process"
    )


@pytest.mark.parametrize(
    ("document", "line"),
    [
        (
            {"lot": [lot(upstream_password="env:UP_PW")]},
            "lot[0].upstream_password: environment variable UP_PW is not set",
        ),
        (
            {"lot": [lot(), lot(park_code="P2", username="u2", secret="env:NOPE")]},
            "lot[1].secret: environment variable NOPE is not set",
        ),
        ({"cloud": {"api_token": "env:TOKEN"}}, "cloud.api_token: environment variable TOKEN is not set"),
        (
            {"lot": [lot(upstream_secret="env:UP-SECRET")]},
            "lot[0].upstream_secret: 'UP-SECRET' is not an environment variable name",
        ),
        ({"lot": [lot(secret="env:9LIVES")]}, "lot[0].secret: '9LIVES' is not an environment variable name"),
        ({"lot": [lot(secret="env:")]}, "lot[0].secret: '' is not an environment variable name"),
        ({"lot": [lot(secret="file:")]}, "lot[0].secret: file: needs a path (file:PATH)"),
        ({"lot": [lot(secret=7)]}, "lot[0].secret: must be a string"),
    ],
)
def test_an_unusable_env_secret_is_one_line(document: dict[str, Any], line: str) -> None:
    """An env: secret whose variable is unset or misnamed is refused naming the key and the variable."""
    assert refusal(document, environ={"OTHER": "x"}).startswith(line)


def test_an_empty_environment_variable_is_an_empty_value() -> None:
    """A set but empty variable gives "", refused only where a value is required."""
    settings = config.parse({"lot": [lot(secret="env:EMPTY")]}, environ={"EMPTY": ""})
    assert settings.lots[0].secret == ""
    document = {"cloud": t002(), "lot": [lot(upstream_username="up1", upstream_password="env:EMPTY")]}
    assert refusal(document, environ={"EMPTY": ""}) == "lot[0].upstream_password: required with sink 't002'"


@pytest.mark.parametrize(
    ("content", "value"),
    [
        (b"s3cret", "s3cret"),
        (b"s3cret\n", "s3cret"),
        (b"s3cret\r\n", "s3cret"),
        (b"s3cret\n\n", "s3cret\n"),
        (b" spaced \n", " spaced "),
        ("密钥\n".encode(), "密钥"),
    ],
)
def test_secrets_are_read_from_files(tmp_path: Path, content: bytes, value: str) -> None:
    """file:PATH is the file's UTF-8 content with one trailing newline (LF or CRLF) taken off."""
    secret = tmp_path / "secret"
    secret.write_bytes(content)
    settings = config.parse({"lot": [lot(upstream_password=f"file:{secret}")]}, environ={})
    assert settings.lots[0].upstream_password == value


def test_a_relative_secret_file_is_read_from_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relative file: path is taken from the working directory, as other relative paths are."""
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api-token").write_text("t0k3n\n")
    monkeypatch.chdir(tmp_path)
    settings = config.parse({"cloud": {"api_token": "file:secrets/api-token"}}, environ={})
    assert settings.cloud.api_token == "t0k3n"


def test_secret_files_are_read_by_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """load() resolves env: and file: secrets, from the process environment and the working directory."""
    (tmp_path / "upstream.pw").write_text("pw from file\n")
    (tmp_path / "gateway.toml").write_text(
        '[cloud]\nsink = "t002"\nurl = "https://up.example/uplink"\ndownlink = "up.example:9000"\n'
        'api_token = "env:CPMI_TEST_TOKEN"\n'
        f'[[lot]]\npark_code = "P1"\nusername = "u1"\npassword = "{HASH}"\n'
        'upstream_username = "up1"\nupstream_password = "file:upstream.pw"\n'
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CPMI_TEST_TOKEN", "t0k3n")
    settings = config.load("gateway.toml")
    assert (settings.cloud.api_token, settings.lots[0].upstream_password) == ("t0k3n", "pw from file")


def test_an_unreadable_secret_file_is_one_line(tmp_path: Path) -> None:
    """A missing, unreadable or non-UTF-8 secret file is refused naming the key, the file and why."""
    missing = tmp_path / "missing"
    document = {"lot": [lot(upstream_password=f"file:{missing}")]}
    assert (
        refusal(document)
        == f"lot[0].upstream_password: cannot read file {missing}: No such file or directory"
    )
    document = {"cloud": {"api_token": f"file:{tmp_path}"}}
    assert refusal(document) == f"cloud.api_token: cannot read file {tmp_path}: Is a directory"
    latin = tmp_path / "latin1"
    latin.write_bytes(b"caf\xe9\n")
    document = {"lot": [lot(), lot(park_code="P2", username="u2", secret=f"file:{latin}")]}
    assert refusal(document) == f"lot[1].secret: cannot read file {latin}: not UTF-8 text"


def test_an_empty_secret_file_is_an_empty_value(tmp_path: Path) -> None:
    """An empty file (or one newline) gives "", refused only where a value is required."""
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert config.parse({"lot": [lot(secret=f"file:{empty}")]}, environ={}).lots[0].secret == ""
    document = {"cloud": t002(), "lot": [lot(upstream_username="up1", upstream_password=f"file:{empty}")]}
    assert refusal(document) == "lot[0].upstream_password: required with sink 't002'"


def test_repr_hides_secrets() -> None:
    """The repr of a Config (logged with errors) shows no secret, api token or upstream password."""
    environ = {"PW": "env-password-9"}
    document = {
        "cloud": t002(api_token="api-token-1"),
        "lot": [
            lot(
                secret="lot-secret-2",
                upstream_username="up1",
                upstream_password="env:PW",
                upstream_secret="upstream-secret-3",
            )
        ],
    }
    settings = config.parse(document, environ=environ)
    text = repr(settings)
    for secret in ("api-token-1", "lot-secret-2", "env-password-9", "upstream-secret-3"):
        assert secret not in text
    assert "up1" in text and "upstream.example" in text
    # Hidden from the repr, still compared: a changed secret is a changed config.
    assert settings.lots[0] != evolve(settings.lots[0], secret="other")


@pytest.mark.parametrize(
    ("description", "fields"),
    [
        ("tcp:8080", (["8080"], {})),
        ("tcp:8081:interface=127.0.0.1", (["8081"], {"interface": "127.0.0.1"})),
        ("tcp:host=2001\\:db8\\:\\:7:port=65535", ([], {"host": "2001:db8::7", "port": "65535"})),
        ("tls:upstream.example:9000:timeout=5", (["upstream.example", "9000"], {"timeout": "5"})),
        ("unix:/run/a\\\\b.sock", (["/run/a\\b.sock"], {})),
    ],
)
def test_endpoint_fields_split_as_twisted_does(
    description: str, fields: tuple[list[str], dict[str, str]]
) -> None:
    """A description's fields after its type: `:` separates, a backslash escapes, name=value is named."""
    assert config.endpoint_fields(description) == fields

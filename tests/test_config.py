"""The TOML configuration: the shipped file loads, and each problem is one line naming its key."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

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
        ({"cloud": {"sink": "t002", "url": "http://c/u"}}, "cloud.sink: 't002' is not available"),
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

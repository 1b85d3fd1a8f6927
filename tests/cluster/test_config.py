"""[cluster] and [[forward]] in the configuration (CONTRACT §8, §9): values, defaults, one-line errors."""

from __future__ import annotations

from typing import Any

import pytest

from gateway import config
from gateway.config import ConfigError

HASH = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$aGFzaA"
CLUSTER = {"servers": ["nats://127.0.0.1:4222"]}


def lot(park: str = "P1", **changes: Any) -> dict[str, Any]:
    return {"park_code": park, "username": f"u-{park}", "password": HASH, **changes}


def test_cluster_is_none_when_unset() -> None:
    """Without [cluster] the gateway works alone: Config.cluster is None, no forwards."""
    settings = config.parse({})
    assert settings.cluster is None
    assert settings.forwards == ()


def test_cluster_defaults_follow_the_contract() -> None:
    """[cluster] with servers alone: prefix cpmi, replicas 1, no name, creds, token or TLS."""
    cluster = config.parse({"cluster": CLUSTER}).cluster
    assert cluster is not None
    assert cluster.servers == ("nats://127.0.0.1:4222",)
    assert (cluster.prefix, cluster.replicas, cluster.name, cluster.creds, cluster.token) == (
        "cpmi",
        1,
        "",
        "",
        "",
    )
    assert cluster.tls is None


def test_cluster_keys_are_read_and_the_token_never_shown() -> None:
    """Every [cluster] key is read; the token may come from the environment and repr hides it."""
    cluster = config.parse(
        {
            "cluster": {
                "servers": ["nats://a:4222", "tls://b:4222"],
                "prefix": "park.ops",
                "replicas": 3,
                "name": "gw-01",
                "token": "env:NATS_TOKEN",
                "tls": {"ca_file": "ca.pem", "cert_file": "c.pem", "key_file": "k.pem", "hostname": "n"},
            }
        },
        environ={"NATS_TOKEN": "s3cret"},
    ).cluster
    assert cluster is not None
    assert cluster.token == "s3cret" and "s3cret" not in repr(cluster)
    assert (cluster.prefix, cluster.replicas, cluster.name) == ("park.ops", 3, "gw-01")
    assert cluster.tls is not None and cluster.tls.ca_file == "ca.pem" and cluster.tls.hostname == "n"
    assert config.parse({"cluster": {**CLUSTER, "tls": True}}).cluster.tls is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("document", "line"),
    [
        ({"cluster": {}}, "cluster.servers: required: a list of nats:// URLs"),
        ({"cluster": {"servers": "nats://a:4222"}}, "cluster.servers: must be a list"),
        ({"cluster": {"servers": ["http://a"]}}, "cluster.servers: not a nats://host:port URL: 'http://a'"),
        ({"cluster": {"servers": [4222]}}, "cluster.servers: must be strings (nats:// URLs)"),
        ({"cluster": {**CLUSTER, "prefix": "a.*"}}, "cluster.prefix: subject tokens"),
        ({"cluster": {**CLUSTER, "replicas": 0}}, "cluster.replicas: must be at least 1"),
        ({"cluster": {**CLUSTER, "replicas": 7}}, "cluster.replicas: must be 1 to 5"),
        ({"cluster": {**CLUSTER, "creds": "a.creds", "token": "t"}}, "cluster.token: set either"),
        ({"cluster": {**CLUSTER, "tls": "yes"}}, "cluster.tls: must be true, false or a table"),
        ({"cluster": {**CLUSTER, "tls": {"cert_file": "c"}}}, "cluster.tls.key_file: cert_file and"),
        ({"cluster": {**CLUSTER, "tls": {"cafile": "c"}}}, "cluster.tls.cafile: unknown key"),
        ({"cluster": {**CLUSTER, "servrs": []}}, "cluster.servrs: unknown key"),
        ({"cloud": {"sink": "nats"}}, "cloud.sink: 'nats' needs [cluster] servers"),
        ({"cloud": {"sink": "nats", "url": "http://x"}, "cluster": CLUSTER}, "cloud.url: not used with"),
    ],
)
def test_each_cluster_problem_is_one_line_naming_the_key(document: dict[str, Any], line: str) -> None:
    """A bad [cluster] stops start-up with one line naming the key."""
    with pytest.raises(ConfigError) as error:
        config.parse(document)
    assert str(error.value).startswith(line)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("park", ["P.1", "P*", "P>", "P 1", "P\t1"])
def test_park_codes_that_cannot_be_subject_tokens_are_refused_with_cluster(park: str) -> None:
    """With [cluster] on, a park code holding . * > or whitespace is refused, naming the lot."""
    with pytest.raises(ConfigError, match=r"^lot\[1\]\.park_code: .* holds \. \* > or whitespace"):
        config.parse({"cluster": CLUSTER, "lot": [lot("P0"), lot(park)]})
    # Without [cluster] such codes stay allowed, as before.
    assert config.parse({"lot": [lot(park)]}).lots[0].park_code == park


def test_forward_tables_take_a_sink_and_its_keys() -> None:
    """Each [[forward]] has a name, a sink and that sink's keys (batching and retry with their defaults)."""
    settings = config.parse(
        {
            "cluster": CLUSTER,
            "cloud": {"sink": "nats"},
            "forward": [
                {
                    "name": "city",
                    "sink": "cloudevents",
                    "url": "https://city.example/events",
                    "retry_max_delay": 5,
                },
            ],
        }
    )
    assert settings.cloud.sink == "nats"
    (city,) = settings.forwards
    assert city.name == "city"
    assert (city.cloud.sink, city.cloud.url) == ("cloudevents", "https://city.example/events")
    assert (city.cloud.retry_max_delay, city.cloud.batch_max_events) == (5.0, 500)


@pytest.mark.parametrize(
    ("forwards", "line"),
    [
        ([{"sink": "cloudevents", "url": "http://x"}], "forward[0].name: required"),
        ([{"name": "a"}], "forward[0].sink: required (one of cloudevents, nats)"),
        ([{"name": "a", "sink": "t002", "url": "http://x"}], "forward[0].sink: 't002' is not one of"),
        ([{"name": "a", "sink": "log-only"}], "forward[0].sink: 'log-only' is not one of"),
        ([{"name": "a", "sink": "cloudevents"}], "forward[0].url: required with sink 'cloudevents'"),
        ([{"name": "a", "sink": "cloudevents", "url": "ftp://x"}], "forward[0].url: not an http"),
        (
            [{"name": "a", "sink": "cloudevents", "url": "http://x", "api_token": "t"}],
            "forward[0].api_token: only in [cloud]",
        ),
        (
            [{"name": "a", "sink": "cloudevents", "url": "http://x", "colour": 1}],
            "forward[0].colour: unknown",
        ),
        (
            [{"name": "a", "sink": "cloudevents", "url": "http://x"}, {"name": "a", "sink": "nats"}],
            "forward[1].name: 'a' is used twice",
        ),
        ([{"name": "a", "sink": "nats"}], "forward[0].sink: 'nats' needs [cluster] servers"),
        ({"name": "a"}, "forward: must be an array of tables"),
    ],
)
def test_each_forward_problem_is_one_line_naming_the_key(forwards: Any, line: str) -> None:
    """A bad [[forward]] stops start-up with one line naming the table and key."""
    with pytest.raises(ConfigError) as error:
        config.parse({"forward": forwards})
    assert str(error.value).startswith(line), str(error.value)


def test_nats_may_be_one_sink_only() -> None:
    """The nats sink twice ([cloud] and a [[forward]]) is refused: the stream takes each event once."""
    with pytest.raises(ConfigError, match=r"^forward\[0\]\.sink: 'nats' is already a sink"):
        config.parse(
            {"cluster": CLUSTER, "cloud": {"sink": "nats"}, "forward": [{"name": "a", "sink": "nats"}]}
        )


def test_the_nats_sink_batches_larger_by_default() -> None:
    """The nats sink's batches default to 2000 events / 4 MiB (pipelined publishes); set keys win."""
    cloud = config.parse({"cluster": CLUSTER, "cloud": {"sink": "nats"}}).cloud
    assert (cloud.batch_max_events, cloud.batch_max_bytes) == (2000, 4 * 2**20)
    cloud = config.parse({"cluster": CLUSTER, "cloud": {"sink": "nats", "batch_max_events": 100}}).cloud
    assert cloud.batch_max_events == 100
    assert config.parse({"cloud": {"url": "http://x/e"}}).cloud.batch_max_events == 500


def test_a_reload_that_changes_cluster_or_forwards_needs_a_restart() -> None:
    """[cluster] and [[forward]] are read at start: a reload names them as needing a restart and keeps
    the running ones."""
    from gateway.reload import compare

    running = config.parse({"cluster": CLUSTER, "cloud": {"sink": "nats"}})
    loaded = config.parse(
        {
            "cluster": {**CLUSTER, "replicas": 3},
            "cloud": {"sink": "nats"},
            "forward": [{"name": "city", "sink": "cloudevents", "url": "http://x/e"}],
        }
    )
    new, changes = compare(running, loaded, frozenset({"standard"}))
    assert changes.restart_needed == ("cluster", "forward")
    assert new.cluster == running.cluster and new.forwards == ()
    _, same = compare(running, running, frozenset({"standard"}))
    assert same.restart_needed == ()

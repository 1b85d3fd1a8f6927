"""The TOML configuration (CONTRACT §8): read, checked, and made frozen values.

The values (`Config`, `LotConfig`, ...) are `gateway.settings`'; they are
re-exported here for the readers of a configuration (the plugin, cpmictl).
Checking a lot needs its dialect, so this module imports `gateway.dialects`;
the dialects and the lots import `gateway.settings`, never this module.

Every problem is reported as one line naming the key, in jq's path syntax with
0-based indexes: `lot[0].password: not an argon2id hash` is the first `[[lot]]`.
Unknown keys are errors too, so a typo never silently falls back to a default.

Secrets (a lot's `secret`, `upstream_password` and `upstream_secret`, and
`cloud.api_token`) may be written `env:NAME` or `file:PATH` to keep them out of
the file; the Config holds the value read, and its repr never shows them.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from attrs import evolve
from twisted.internet import endpoints

from gateway.dialects import DialectConflict, installed
from gateway.limits import BACKLOG_MAX, endpoint_fields
from gateway.protocol.catalog import DeliveryClass, lookup
from gateway.protocol.signing import SIGNATURE_MODES
from gateway.settings import (
    ApiClient,
    CloudConfig,
    ClusterSettings,
    ClusterTls,
    Config,
    ConfigError,
    ForwardConfig,
    GatewayConfig,
    JournalConfig,
    ListenConfig,
    LotConfig,
    TcpConfig,
    UplinkConfig,
)

T = TypeVar("T")

FSYNC_MODES = ("always", "interval", "never")
SINKS = ("log-only", "cloudevents", "t002", "nats")
# The sinks a [[forward]] table may name: t002 acts as each lot upstream, so it is [cloud]'s alone.
FORWARD_SINKS = ("cloudevents", "nats")
ROLES = ("read", "command", "sync", "admin")
_GATEWAY_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
# How a secret's value may be kept out of the file: env:NAME, file:PATH.
SECRET_SOURCES = ("env:", "file:")
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# cloud.downlink as host:port (a name or IPv4 address) or [IPv6 address]:port.
_HOST_PORT = re.compile(r"(?P<host>[^\s:\[\]/\\=]+):(?P<port>[0-9]+)")
_BRACKETED_HOST_PORT = re.compile(r"\[(?P<host>[^\]]+)\]:(?P<port>[0-9]+)")


class _Table:
    """One TOML table being read: takes keys off it and reports what is left as unknown."""

    def __init__(self, path: str, raw: object) -> None:
        if not isinstance(raw, Mapping):
            raise ConfigError(f"{path}: must be a table")
        self.path = path
        self.raw = dict(raw)

    def key(self, name: str) -> str:
        return f"{self.path}.{name}" if self.path else name

    def take(self, name: str, kind: type[T], default: T) -> T:
        value = self.raw.pop(name, default)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ConfigError(f"{self.key(name)}: must be {_KIND_NAMES[kind]}")
        return value

    def text(self, name: str, default: str, check: Callable[[str], str | None] | None = None) -> str:
        value = self.take(name, str, default)
        problem = check(value) if check else None
        if problem:
            raise ConfigError(f"{self.key(name)}: {problem}")
        return value

    def choice(self, name: str, default: str, choices: tuple[str, ...]) -> str:
        value = self.take(name, str, default)
        if value not in choices:
            allowed = ", ".join(choices)
            raise ConfigError(f"{self.key(name)}: {value!r} is not one of {allowed}")
        return value

    def secret(self, name: str, environ: Mapping[str, str]) -> str:
        """A secret's value: as written, or read from `env:NAME` or `file:PATH` (see resolve_secret)."""
        value = self.take(name, str, "")
        try:
            return resolve_secret(value, environ)
        except ConfigError as error:
            raise ConfigError(f"{self.key(name)}: {error}") from None

    def number(self, name: str, default: int, minimum: int) -> int:
        value = self.take(name, int, default)
        if value < minimum:
            raise ConfigError(f"{self.key(name)}: must be at least {minimum}")
        return value

    def done(self) -> None:
        if self.raw:
            raise ConfigError(f"{self.key(sorted(self.raw)[0])}: unknown key")


_KIND_NAMES: dict[type, str] = {
    str: "a string",
    int: "a whole number",
    float: "a number",
    list: "a list",
    bool: "true or false",
}


def _not_empty(value: str) -> str | None:
    return None if value else "must not be empty"


def _endpoint(value: str) -> str | None:
    """Why `value` is no server endpoint string, or None: it is parsed and built, never listened on.

    An endpoint keeps its reactor only for `listen()`, so none is given: no
    reactor is imported (twistd picks it later) and no test double is needed.
    """
    try:
        endpoints.serverFromString(None, value)
    except Exception as error:  # any failure to build the endpoint is the operator's to fix
        return f"not a usable endpoint {value!r}: {error}"
    backlog = endpoint_fields(value)[1].get("backlog")
    if backlog is not None and not (backlog.strip().isdigit() and 1 <= int(backlog) <= BACKLOG_MAX):
        return f"backlog={backlog} is not 1-{BACKLOG_MAX}: {value!r}"
    return None


def resolve_secret(value: str, environ: Mapping[str, str]) -> str:
    """The value a secret's `value` stands for; raise ConfigError saying why it cannot be read.

    `env:NAME` is the environment variable NAME of `environ`; `file:PATH` is the
    file's UTF-8 content without one trailing newline (PATH relative to the
    working directory); anything else is the value itself.
    """
    if value.startswith("env:"):
        name = value[len("env:") :]
        if not _ENV_NAME.fullmatch(name):
            raise ConfigError(f"{name!r} is not an environment variable name (letters, digits, _)")
        if name not in environ:
            raise ConfigError(f"environment variable {name} is not set")
        return environ[name]
    if value.startswith("file:"):
        path = value[len("file:") :]
        if not path:
            raise ConfigError("file: needs a path (file:PATH)")
        try:
            with open(path, "rb") as file:
                content = file.read()
        except OSError as error:
            raise ConfigError(f"cannot read file {path}: {error.strerror or error}") from None
        try:
            text = content.decode("utf-8")
        except UnicodeDecodeError:
            raise ConfigError(f"cannot read file {path}: not UTF-8 text") from None
        return text.removesuffix("\r\n") if text.endswith("\r\n") else text.removesuffix("\n")
    return value


def _token_file(cloud: CloudConfig) -> str:
    """cloud.api_token read from cloud.api_token_file; "" while the file does not exist yet."""
    if cloud.api_token:
        raise ConfigError("cloud.api_token_file: set either api_token or api_token_file, not both")
    if not os.path.exists(cloud.api_token_file):
        return ""  # created at first start (gateway.tap)
    try:
        token = resolve_secret(f"file:{cloud.api_token_file}", {})
    except ConfigError as error:
        raise ConfigError(f"cloud.api_token_file: {error}") from None
    if not token:
        raise ConfigError(f"cloud.api_token_file: {cloud.api_token_file} is empty")
    return token


CONFIG_ENVIRONMENT = "CPMI_GATEWAY_CONFIG"
"""The environment variable naming the configuration file when --config does not."""
SYSTEM_CONFIG = "/etc/cpmi-gateway/gateway.toml"
LOCAL_CONFIG = "conf/gateway.toml"
CONFIG_SEARCH = f"${CONFIG_ENVIRONMENT}, else {SYSTEM_CONFIG} if it exists, else {LOCAL_CONFIG}"
"""Where the gateway and cpmictl look for the configuration without --config, for --help."""


def find_config(given: str | None, environ: Mapping[str, str] | None = None) -> str:
    """The configuration file to read: `given` (--config), else $CPMI_GATEWAY_CONFIG,
    else /etc/cpmi-gateway/gateway.toml if it exists, else conf/gateway.toml."""
    if given:
        return given
    named = (os.environ if environ is None else environ).get(CONFIG_ENVIRONMENT, "")
    if named:
        return named
    return SYSTEM_CONFIG if os.path.exists(SYSTEM_CONFIG) else LOCAL_CONFIG


def _downlink_endpoint(value: str) -> str:
    """cloud.downlink as a Twisted client endpoint description; raise ConfigError if it is not one.

    host:port and [IPv6 address]:port become `tcp:host=H:port=P`; a `tcp:` or
    `tls:` description is kept as written. Either must build with Twisted's own
    parser with a port 1-65535. As for the listeners (`_endpoint`), no reactor
    is given: a client endpoint keeps its reactor only for `connect()`.
    """
    if value.startswith(("tcp:", "tls:")):
        description = value
    else:
        match = _HOST_PORT.fullmatch(value)
        bracketed = _BRACKETED_HOST_PORT.fullmatch(value)
        if bracketed is not None and _is_ipv6(bracketed["host"]):
            match = bracketed
        if match is None:
            raise ConfigError(f"cloud.downlink: not host:port or a tcp:/tls: endpoint: {value!r}")
        host = endpoints.quoteStringArgument(match["host"])
        description = f"tcp:host={host}:port={int(match['port'])}"
    try:
        built_client(description)
    except Exception as error:  # any failure to build the endpoint is the operator's to fix
        raise ConfigError(f"cloud.downlink: not a usable endpoint {value!r}: {error}") from None
    port = _client_port(description)
    if not 1 <= port <= 65535:
        raise ConfigError(f"cloud.downlink: port {port} is not 1-65535: {value!r}")
    return description


def built_client(description: str) -> object:
    """The client endpoint ``description`` builds to, with no reactor: it is only looked at.

    A client endpoint keeps its reactor only for ``connect()``. ``tls:`` builds a
    ``HostnameEndpoint``, which warns that a reactor without a name resolver is
    deprecated: nothing is resolved or connected here, so that warning is not shown.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Passing HostnameEndpoint a reactor", DeprecationWarning)
        return endpoints.clientFromString(None, description)


def _client_port(description: str) -> int:
    """The port of a `tcp:` or `tls:` client description that Twisted's parser has built
    (it has read the port as an integer): ``port=``, else the field after the host."""
    positional, named = endpoint_fields(description)
    return int(named["port"] if "port" in named else positional[1])


def _is_ipv6(host: str) -> bool:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        return False
    return True


def _argon2id(value: str) -> str | None:
    return None if value.startswith("$argon2id$") else "not an argon2id hash (cpmictl passwd)"


def _gateway(raw: object) -> GatewayConfig:
    table = _Table("gateway", raw)
    gateway_id = table.text(
        "id", "gw-01", lambda v: None if _GATEWAY_ID.fullmatch(v) else "letters, digits, . _ -"
    )
    zone_name = table.text("timezone", "Asia/Shanghai", _not_empty)
    try:
        zone = ZoneInfo(zone_name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"gateway.timezone: unknown time zone {zone_name!r}") from None
    signing_key = table.text("signing_key", "conf/gateway.key", _not_empty)
    table.done()
    return GatewayConfig(id=gateway_id, timezone=zone, signing_key=signing_key)


def _listen(raw: object, dialect_listeners: set[str]) -> ListenConfig:
    """[listen]: the three fixed endpoints, and one for each dialect listener that is configured."""
    table = _Table("listen", raw)
    uplink = table.text("uplink", "tcp:8080", _endpoint)
    downlink = table.text("downlink", "tcp:9000", _endpoint)
    api = table.text("api", "tcp:8081:interface=127.0.0.1", _endpoint)
    dialects = tuple(
        (name, table.text(name, "", _endpoint)) for name in sorted(table.raw) if name in dialect_listeners
    )
    table.done()
    return ListenConfig(uplink=uplink, downlink=downlink, api=api, dialects=dialects)


def _journal(raw: object) -> JournalConfig:
    table = _Table("journal", raw)
    result = JournalConfig(
        path=table.text("path", "var/journal", _not_empty),
        fsync=table.choice("fsync", "always", FSYNC_MODES),
        segment_bytes=table.number("segment_bytes", 64 * 2**20, 2**16),
        interval=table.take("interval", float, 1.0),
        seal_interval=_seconds(table, "seal_interval", 60.0),
        seal_records=table.number("seal_records", 10_000, 1),
        min_free_bytes=table.number("min_free_bytes", 64 * 2**20, 0),
        checkpoint_records=table.number("checkpoint_records", 100_000, 1),
        retain_bytes=table.number("retain_bytes", 0, 0),
        retain_days=table.take("retain_days", float, 0.0),
    )
    if result.interval <= 0:
        raise ConfigError("journal.interval: must be more than 0")
    if result.retain_days < 0:
        raise ConfigError("journal.retain_days: must be 0 (keep) or more")
    if 0 < result.retain_bytes < 2 * result.segment_bytes:
        raise ConfigError(
            f"journal.retain_bytes: must be 0 (no limit) or at least twice segment_bytes "
            f"({2 * result.segment_bytes})"
        )
    table.done()
    return result


def _uplink(raw: object) -> UplinkConfig:
    table = _Table("uplink", raw)
    result = UplinkConfig(
        max_body_bytes=table.number("max_body_bytes", 16 * 2**20, 1024),
        header_timeout=table.number("header_timeout", 10, 1),
        min_body_rate=table.number("min_body_rate", 1024, 0),
        max_connections_per_peer=table.number("max_connections_per_peer", 64, 1),
        max_connections=table.number("max_connections", 20000, 1),
        max_pending_logins=table.number("max_pending_logins", 256, 1),
        login_workers=table.number("login_workers", 1, 1),
        api_max_body_bytes=table.number("api_max_body_bytes", 2**20, 1024),
        api_max_connections=table.number("api_max_connections", 256, 1),
        inline_body_bytes=table.number("inline_body_bytes", 16384, 0),
        body_workers=table.number("body_workers", 2, 0),
        max_pending_bodies=table.number("max_pending_bodies", 8, 1),
    )
    table.done()
    return result


def _tcp(raw: object) -> TcpConfig:
    table = _Table("tcp", raw)
    result = TcpConfig(
        read_idle=table.number("read_idle", 180, 0),
        write_idle=table.number("write_idle", 60, 0),
        all_idle=table.number("all_idle", 300, 0),
        bind_timeout=table.number("bind_timeout", 10, 1),
        max_frame_bytes=table.number("max_frame_bytes", 2**20, 64),
        max_unbound_bytes=table.number("max_unbound_bytes", 65536, 64),
    )
    table.done()
    return result


def _cloud(raw: object, environ: Mapping[str, str]) -> CloudConfig:
    return _sink_table(_Table("cloud", raw), environ, SINKS)


def _sink_table(table: _Table, environ: Mapping[str, str], sinks: tuple[str, ...]) -> CloudConfig:
    """[cloud], or a [[forward]] table (its `name` already taken): a sink and its keys."""
    url = table.take("url", str, "")
    default = "cloudevents" if url else ("log-only" if "log-only" in sinks else "")
    sink = table.choice("sink", default, sinks)
    key = table.key
    result = CloudConfig(
        sink=sink,
        url=table.text("url", url, _http_url),
        downlink=table.text("downlink", ""),
        query_url=table.text("query_url", "", _http_url),
        api_token=table.secret("api_token", environ),
        api_token_file=table.text("api_token_file", ""),
        # JetStream takes a batch as pipelined publishes, not one body: larger batches, fewer waits.
        batch_max_events=table.number("batch_max_events", 2000 if sink == "nats" else 500, 1),
        batch_max_bytes=table.number("batch_max_bytes", 4 * 2**20 if sink == "nats" else 2**20, 1024),
        batch_max_delay=_seconds(table, "batch_max_delay", 0.1, allow_zero=True),
        retry_min_delay=_seconds(table, "retry_min_delay", 0.5),
        retry_max_delay=_seconds(table, "retry_max_delay", 60.0),
        request_timeout=_seconds(table, "request_timeout", 30.0),
    )
    table.done()
    if sink in ("cloudevents", "t002") and not url:
        raise ConfigError(f"{key('url')}: required with sink {sink!r}")
    if sink == "nats" and url:
        raise ConfigError(f"{key('url')}: not used with sink 'nats' (events go to [cluster] servers)")
    if result.api_token_file:
        result = evolve(result, api_token=_token_file(result))
    if sink == "t002":
        if not result.downlink:
            raise ConfigError("cloud.downlink: required with sink 't002' (the upstream's TCP host:port)")
        result = evolve(result, downlink_endpoint=_downlink_endpoint(result.downlink))
        if result.query_url:
            raise ConfigError(
                "cloud.query_url: not used with sink 't002' (queries go to the upstream at cloud.url)"
            )
    elif result.downlink:
        # Most likely a forgotten sink = "t002": with a url the sink defaults to cloudevents.
        raise ConfigError(f"{key('downlink')}: only used with sink 't002'")
    if result.retry_max_delay < result.retry_min_delay:
        raise ConfigError(f"{key('retry_max_delay')}: must not be less than {key('retry_min_delay')}")
    return result


def _forward(index: int, raw: object, environ: Mapping[str, str]) -> ForwardConfig:
    """One [[forward]] table: `name`, `sink` and that sink's keys (CONTRACT §9)."""
    table = _Table(f"forward[{index}]", raw)
    name = table.text(
        "name", "", lambda v: None if _GATEWAY_ID.fullmatch(v) else "required: letters, digits, . _ -"
    )
    if "sink" not in table.raw:
        raise ConfigError(f"{table.key('sink')}: required (one of {', '.join(FORWARD_SINKS)})")
    # The command API's keys and queries are [cloud]'s; a [[forward]] only forwards.
    for key in ("api_token", "api_token_file", "query_url", "downlink"):
        if key in table.raw:
            raise ConfigError(f"{table.key(key)}: only in [cloud], not in a [[forward]]")
    return ForwardConfig(name=name, cloud=_sink_table(table, environ, FORWARD_SINKS))


# A park code becomes a subject token with [cluster] on: none of NATS's separators or wildcards.
_SUBJECT_UNSAFE = re.compile(r"[.*>\s]")
_SUBJECT_PREFIX = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_NATS_URL_SCHEMES = ("nats", "tls", "ws", "wss")


def _nats_url(value: str) -> str | None:
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError:
        return f"not a nats:// URL with a valid port: {value!r}"
    if parts.scheme not in _NATS_URL_SCHEMES or not parts.hostname or (port is not None and port < 1):
        return f"not a nats://host:port URL: {value!r}"
    return None


def _cluster(raw: object, environ: Mapping[str, str]) -> ClusterSettings:
    """[cluster] (CONTRACT §9): the NATS servers and how to reach them."""
    table = _Table("cluster", raw)
    servers = table.take("servers", list, [])
    if not servers:
        raise ConfigError("cluster.servers: required: a list of nats:// URLs")
    for server in servers:
        problem = _nats_url(server) if isinstance(server, str) else "must be strings (nats:// URLs)"
        if problem:
            raise ConfigError(f"cluster.servers: {problem}")
    prefix = table.text(
        "prefix",
        "cpmi",
        lambda v: (
            None if _SUBJECT_PREFIX.fullmatch(v) else "subject tokens: letters, digits, _ - joined by ."
        ),
    )
    tls_raw = table.raw.pop("tls", None)
    tls: ClusterTls | None = None
    if tls_raw is True:
        tls = ClusterTls()
    elif isinstance(tls_raw, Mapping):
        tls_table = _Table("cluster.tls", tls_raw)
        tls = ClusterTls(
            ca_file=tls_table.text("ca_file", ""),
            cert_file=tls_table.text("cert_file", ""),
            key_file=tls_table.text("key_file", ""),
            hostname=tls_table.text("hostname", ""),
        )
        tls_table.done()
        if bool(tls.cert_file) != bool(tls.key_file):
            raise ConfigError("cluster.tls.key_file: cert_file and key_file go together")
    elif tls_raw is not None and tls_raw is not False:
        raise ConfigError("cluster.tls: must be true, false or a table (ca_file, cert_file, key_file)")
    result = ClusterSettings(
        servers=tuple(servers),
        prefix=prefix,
        replicas=table.number("replicas", 1, 1),
        name=table.text("name", ""),
        creds=table.text("creds", ""),
        token=table.secret("token", environ),
        tls=tls,
        connect_timeout=_seconds(table, "connect_timeout", 5.0),
        request_timeout=_seconds(table, "request_timeout", 10.0),
        reconnect_min_delay=_seconds(table, "reconnect_min_delay", 0.25),
        reconnect_max_delay=_seconds(table, "reconnect_max_delay", 10.0),
    )
    table.done()
    if result.replicas > 5:
        raise ConfigError("cluster.replicas: must be 1 to 5 (JetStream's limit)")
    if result.creds and result.token:
        raise ConfigError("cluster.token: set either creds or token, not both")
    if result.reconnect_max_delay < result.reconnect_min_delay:
        raise ConfigError("cluster.reconnect_max_delay: must not be less than cluster.reconnect_min_delay")
    return result


def _http_url(value: str) -> str | None:
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"not an http:// or https:// URL: {value!r}"
    return None


def _seconds(table: _Table, name: str, default: float, *, allow_zero: bool = False) -> float:
    value = table.take(name, float, default)
    if value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(f"{table.key(name)}: must be more than 0 seconds")
    return value


def _api_client(index: int, raw: object) -> ApiClient:
    table = _Table(f"api_client[{index}]", raw)
    name = table.text("name", "", _not_empty)
    digest = table.text(
        "token_sha256",
        "",
        lambda v: None if _SHA256_HEX.fullmatch(v) else "not 64 lower-case hex digits",
    )
    roles = table.take("roles", list, [])
    for role in roles:
        if role not in ROLES:
            raise ConfigError(f"{table.key('roles')}: {role!r} is not one of {', '.join(ROLES)}")
    table.done()
    return ApiClient(name=name, token_sha256=digest, roles=tuple(roles))


def _lot(index: int, raw: object, dialects: tuple[str, ...], environ: Mapping[str, str]) -> LotConfig:
    table = _Table(f"lot[{index}]", raw)
    park_code = table.text(
        "park_code", "", lambda v: _not_empty(v) or (None if len(v) <= 50 else "longer than 50")
    )
    result = LotConfig(
        park_code=park_code,
        # Required by the dialects that log lots in with an account (the standard's check_lot).
        username=table.text("username", ""),
        password=table.text("password", "", lambda v: _argon2id(v) if v else None),
        signature=table.choice("signature", "required", SIGNATURE_MODES),
        secret=table.secret("secret", environ),
        dialect=table.text(
            "dialect",
            "standard",
            lambda v: None if v in dialects else f"{v!r} is not an installed dialect ({', '.join(dialects)})",
        ),
        upstream_username=table.text("upstream_username", ""),
        upstream_password=table.secret("upstream_password", environ),
        upstream_secret=table.secret("upstream_secret", environ),
        framing=table.choice("framing", "cloud", ("cloud", "lines")),
    )
    table.done()
    return result


def _deadlines(raw: object) -> tuple[tuple[str, float], ...]:
    table = _Table("deadlines", raw)
    overrides = []
    for name in list(table.raw):
        interface = lookup(name)
        if interface is None or (interface.downlink is None and interface.uplink is not DeliveryClass.QUERY):
            raise ConfigError(f"deadlines.{name}: not an interface sent down to lots, nor a query")
        seconds = table.take(name, float, 0.0)
        if seconds <= 0:
            raise ConfigError(f"deadlines.{name}: must be more than 0 seconds")
        overrides.append((interface.code, seconds))
    return tuple(overrides)


def _array(document: dict[str, Any], name: str) -> list[object]:
    value = document.pop(name, [])
    if not isinstance(value, list):
        raise ConfigError(f"{name}: must be an array of tables ([[{name}]])")
    return value


def _unique(items: tuple[T, ...], prefix: str, attribute: str) -> None:
    seen: set[object] = set()
    for index, item in enumerate(items):
        value = getattr(item, attribute)
        if value == "":
            continue  # not set: an optional key, nothing to tell apart
        if value in seen:
            raise ConfigError(f"{prefix}[{index}].{attribute}: {value!r} is used twice")
        seen.add(value)


def _installed_dialects() -> Mapping[str, Any]:
    try:
        return installed()
    except DialectConflict as error:
        raise ConfigError(f"dialects: {error}") from None


def parse(
    document: Mapping[str, Any],
    dialects: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Config:
    """Turn a parsed TOML document into a Config, or raise ConfigError.

    `dialects` are the dialect plugins by name (``IDialect`` providers); by
    default, those installed (``gateway.dialects.installed``). `environ` is
    where `env:NAME` secrets are looked up; by default, ``os.environ``.
    """
    if dialects is None:
        dialects = _installed_dialects()
    if environ is None:
        environ = os.environ
    names = tuple(sorted(dialects))
    listeners = {key for dialect in dialects.values() for key in dialect.listeners}
    document = dict(document)
    lots = tuple(_lot(i, raw, names, environ) for i, raw in enumerate(_array(document, "lot")))
    clients = tuple(_api_client(i, raw) for i, raw in enumerate(_array(document, "api_client")))
    config = Config(
        gateway=_gateway(document.pop("gateway", {})),
        listen=_listen(document.pop("listen", {}), listeners),
        journal=_journal(document.pop("journal", {})),
        uplink=_uplink(document.pop("uplink", {})),
        tcp=_tcp(document.pop("tcp", {})),
        cloud=_cloud(document.pop("cloud", {}), environ),
        api_clients=clients,
        lots=lots,
        deadline_overrides=_deadlines(document.pop("deadlines", {})),
        cluster=_cluster(document["cluster"], environ) if "cluster" in document else None,
        forwards=tuple(_forward(i, raw, environ) for i, raw in enumerate(_array(document, "forward"))),
    )
    document.pop("cluster", None)
    if document:
        raise ConfigError(f"{sorted(document)[0]}: unknown key")
    _unique(lots, "lot", "park_code")
    _unique(lots, "lot", "username")
    _unique(clients, "api_client", "name")
    _unique(config.forwards, "forward", "name")
    _check_cluster(config)
    if config.cloud.sink == "t002":
        _check_upstream_accounts(lots)
    for index, lot in enumerate(lots):
        dialect = dialects[lot.dialect]
        problem = dialect.check_lot(lot)
        if problem:
            raise ConfigError(f"lot[{index}].{problem}")
        for key in dialect.listeners:
            if config.listen.endpoint(key) is None:
                raise ConfigError(f"listen.{key}: required: lot[{index}] speaks {lot.dialect}")
    return config


def _check_cluster(config: Config) -> None:
    """The nats sink needs [cluster]; with [cluster] on, every park code must be a subject token."""
    sinks = [("cloud.sink", config.cloud.sink)]
    sinks += [(f"forward[{i}].sink", each.cloud.sink) for i, each in enumerate(config.forwards)]
    if config.cluster is None:
        for key, sink in sinks:
            if sink == "nats":
                raise ConfigError(f"{key}: 'nats' needs [cluster] servers")
        return
    for index, lot in enumerate(config.lots):
        if _SUBJECT_UNSAFE.search(lot.park_code):
            raise ConfigError(
                f"lot[{index}].park_code: {lot.park_code!r} holds . * > or whitespace, "
                "which NATS subjects cannot carry ([cluster] is on)"
            )
    if sum(1 for _, sink in sinks if sink == "nats") > 1:
        key = [key for key, sink in sinks if sink == "nats"][1]
        raise ConfigError(f"{key}: 'nats' is already a sink: one stream takes each event once")


def _check_upstream_accounts(lots: tuple[LotConfig, ...]) -> None:
    """With sink t002 every lot logs in upstream, each with its own account."""
    for index, lot in enumerate(lots):
        for key in ("upstream_username", "upstream_password"):
            if not getattr(lot, key):
                raise ConfigError(f"lot[{index}].{key}: required with sink 't002'")
    # A second login of one account replaces its token: two lots sharing one would log each other out.
    _unique(lots, "lot", "upstream_username")


def load(path: str) -> Config:
    """Read and check the configuration file at `path`."""
    try:
        with open(path, "rb") as file:
            document = tomllib.load(file)
    except OSError as error:
        raise ConfigError(f"{path}: {error.strerror or error}") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse(document)

"""The configuration's values (CONTRACT §8): frozen, as `gateway.config` reads them.

These are what the rest of the gateway holds and passes around; reading and
checking a TOML document is `gateway.config`'s, which imports the dialects to
check each lot against its dialect. Keeping the values apart lets the lots and
the dialects name them without importing the reader that imports them.
"""

from __future__ import annotations

from functools import cached_property
from zoneinfo import ZoneInfo

from attrs import field, frozen

__all__ = [
    "ApiClient",
    "CloudConfig",
    "ClusterSettings",
    "ClusterTls",
    "Config",
    "ConfigError",
    "ForwardConfig",
    "GatewayConfig",
    "JournalConfig",
    "ListenConfig",
    "LotConfig",
    "TcpConfig",
    "UplinkConfig",
]


class ConfigError(Exception):
    """A configuration problem; `str()` is the one line to show the operator."""


@frozen
class GatewayConfig:
    id: str
    timezone: ZoneInfo
    signing_key: str


@frozen
class ListenConfig:
    uplink: str
    downlink: str
    api: str
    # The endpoints of the dialects' own listeners: [listen] bolink = "tcp:6789".
    dialects: tuple[tuple[str, str], ...] = ()

    def endpoint(self, name: str) -> str | None:
        """The endpoint configured for the listener `name`, or None."""
        if name in ("uplink", "downlink", "api"):
            return str(getattr(self, name))
        return dict(self.dialects).get(name)


@frozen
class JournalConfig:
    path: str
    fsync: str
    segment_bytes: int
    interval: float
    # A seal record signs the chain head every seal_interval seconds, or after
    # seal_records records, whichever comes first (when anything was appended).
    seal_interval: float = 60.0
    seal_records: int = 10_000
    # Below this many free bytes on the journal's file system, appends are refused.
    min_free_bytes: int = 64 * 2**20
    # A checkpoint record (what start-up rebuilds) after this many records, and at stop.
    checkpoint_records: int = 100_000
    # Retention: the oldest segments go once the journal is larger than retain_bytes
    # or their records older than retain_days (0: no limit), unless still needed.
    retain_bytes: int = 0
    retain_days: float = 0.0


@frozen
class UplinkConfig:
    """The HTTP listeners' bounds against hostile and faulty clients (CONTRACT §4)."""

    max_body_bytes: int
    # Seconds a client has to send its whole request head; then it is closed.
    header_timeout: int = 10
    # Bytes a second a body must arrive at, once header_timeout has passed.
    min_body_rate: int = 1024
    # Open connections from one peer address, and in all, on the uplink port.
    max_connections_per_peer: int = 64
    max_connections: int = 20000
    # Logins waiting for a password check; more are answered 9999 "busy, retry".
    max_pending_logins: int = 256
    # Worker processes checking passwords, one check each at a time (64 MiB each, held).
    login_workers: int = 1
    # The command API's own, smaller body limit and connection cap, so operators
    # always reach /healthz while the uplink port is flooded.
    api_max_body_bytes: int = 2**20
    api_max_connections: int = 256
    # Bodies over inline_body_bytes are parsed by body_workers worker processes
    # (0: all on the reactor); at most max_pending_bodies wait or are parsed,
    # more are answered 9999 "busy, retry".
    inline_body_bytes: int = 16384
    body_workers: int = 2
    max_pending_bodies: int = 8


@frozen
class TcpConfig:
    read_idle: int
    write_idle: int
    all_idle: int
    bind_timeout: int
    max_frame_bytes: int
    # Bytes a connection may send before it binds; then it is closed (CONTRACT §4).
    max_unbound_bytes: int = 65536


@frozen
class CloudConfig:
    sink: str
    # cloudevents: the events endpoint; t002: the upstream platform's uplink URL.
    url: str
    # t002 only: the upstream's TCP downlink as written (host:port, tcp:..., tls:...).
    downlink: str
    query_url: str
    api_token: str = field(repr=False)
    # t002 only: cloud.downlink as a Twisted client endpoint description, for
    # endpoints.clientFromString (host:port becomes tcp:host=H:port=P); "" otherwise.
    downlink_endpoint: str = ""
    # A file holding api_token, created with a new random token at first start when
    # missing (as gateway.signing_key is): the shipped config's way to a token per install.
    api_token_file: str = ""
    # Forwarding (sink "cloudevents"): a batch is sent once it holds
    # batch_max_events events or batch_max_bytes of body, or batch_max_delay
    # seconds after its first event; retries back off from retry_min_delay,
    # doubling up to retry_max_delay, each wait drawn between half and all of it.
    # Sink t002 forwards each uplink as its own request, retried like events (CONTRACT §6).
    batch_max_events: int = 500
    batch_max_bytes: int = 2**20
    batch_max_delay: float = 0.1
    retry_min_delay: float = 0.5
    retry_max_delay: float = 60.0
    request_timeout: float = 30.0


@frozen
class ClusterTls:
    """[cluster.tls]: TLS towards the NATS servers, as nats-py takes it (an ``ssl.SSLContext``).

    ``ca_file`` verifies the servers (the system's CAs when empty); ``cert_file`` and
    ``key_file`` are the gateway's client certificate; ``hostname`` overrides the name checked.
    """

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    hostname: str = ""


@frozen
class ClusterSettings:
    """[cluster] (CONTRACT §9): the NATS servers the gateway connects to, and how.

    ``prefix`` starts every subject (``{prefix}.events.{park}.{suffix}``); ``replicas``
    is given to the streams the gateway creates. ``creds`` is a NATS credentials file,
    ``token`` a bearer token (never shown by repr); ``tls`` None for plain TCP.
    Reconnection backs off from ``reconnect_min_delay`` doubling to ``reconnect_max_delay``.
    """

    servers: tuple[str, ...]
    prefix: str = "cpmi"
    replicas: int = 1
    name: str = ""
    creds: str = ""
    token: str = field(default="", repr=False)
    tls: ClusterTls | None = None
    connect_timeout: float = 5.0
    request_timeout: float = 10.0
    reconnect_min_delay: float = 0.25
    reconnect_max_delay: float = 10.0


@frozen
class ForwardConfig:
    """One [[forward]] table: a further sink named ``name`` over the same journal.

    ``cloud`` holds that sink's keys as [cloud] would (its ``sink``, ``url``, batching
    and retry); its progress records, backlog and retention floor are its own.
    """

    name: str
    cloud: CloudConfig


@frozen
class ApiClient:
    name: str
    token_sha256: str
    roles: tuple[str, ...]


@frozen
class LotConfig:
    park_code: str
    username: str
    password: str
    signature: str
    secret: str = field(repr=False)
    dialect: str
    # Sink t002: the account this lot logs in with upstream, and its key-pool secret there.
    upstream_username: str
    upstream_password: str = field(repr=False)
    upstream_secret: str = field(repr=False)
    # How a dialect writes frames to the lot (bolink: "cloud" = "\n" + JSON + "\r", "lines" = JSON + "\n").
    framing: str = "cloud"


@frozen
class Config:
    gateway: GatewayConfig
    listen: ListenConfig
    journal: JournalConfig
    uplink: UplinkConfig
    tcp: TcpConfig
    cloud: CloudConfig
    api_clients: tuple[ApiClient, ...]
    lots: tuple[LotConfig, ...]
    # [deadlines]: seconds per downlink or query code, overriding CONTRACT §3's table.
    deadline_overrides: tuple[tuple[str, float], ...] = ()
    # [cluster] (CONTRACT §9): None when the gateway works alone.
    cluster: ClusterSettings | None = None
    # [[forward]]: further sinks over the same journal, each with its own progress.
    forwards: tuple[ForwardConfig, ...] = ()

    @property
    def deadlines(self) -> dict[str, float]:
        """The configured deadline overrides, by interface code."""
        return dict(self.deadline_overrides)

    @cached_property
    def _by_username(self) -> dict[str, LotConfig]:
        # Lots of a dialect that logs in without an account have no username.
        return {lot.username: lot for lot in self.lots if lot.username}

    @cached_property
    def _by_park(self) -> dict[str, LotConfig]:
        return {lot.park_code: lot for lot in self.lots}

    def lot_by_username(self, username: str) -> LotConfig | None:
        """The lot whose login account is `username` (asked on every request: a dict lookup)."""
        return self._by_username.get(username)

    def lot_by_park(self, park_code: str) -> LotConfig | None:
        """The lot whose park code is `park_code`."""
        return self._by_park.get(park_code)

"""The one configuration object, read from environment variables and/or a TOML file.

Environment variables use the prefix ``IGBUTTON_`` and ``__`` between nested names, for
example ``IGBUTTON_GRAPH__API_VERSION=v25.0``. Lists and objects are JSON, for example
``IGBUTTON_ACCOUNTS='[{"id": "17841400000000000", "access_token_file": "/run/secrets/ig"}]'``.
A TOML file named by ``IGBUTTON_CONFIG_FILE`` (or ``--config``) holds the same keys;
environment variables win over the file. Every secret can come from a file instead
(container secret mounts). Settings are validated at start and a bad one stops the
process with a message naming the setting.
"""

from __future__ import annotations

import contextvars
import json
import os
import re
import tomllib
from pathlib import Path
from typing import Any, Literal, Self, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)

# Meta retired v20.0 on 2026-09-24; v21.0 to v26.0 are current (instagram-platform.md).
DEFAULT_GRAPH_API_VERSION = "v25.0"
_VERSION_RE = re.compile(r"^v\d+\.\d+$")
ACCOUNT_ID_RE = re.compile(r"^[0-9A-Za-z_.-]{1,64}$")
"""An IG ID as igbutton accepts it, in configuration and in requests."""


CONFIG_FILE_VARIABLE = "IGBUTTON_CONFIG_FILE"
"""The environment variable naming the TOML configuration file."""


class ConfigError(Exception):
    """The configuration is invalid; the message, one line, names every bad setting."""


# The file given to Settings.load (``--config``); it wins over IGBUTTON_CONFIG_FILE.
_config_file: contextvars.ContextVar[tuple[Path, str] | None] = contextvars.ContextVar(
    "config_file", default=None
)


def _read_config_file(path: Path, named_by: str) -> dict[str, Any]:
    """The TOML file's settings; a file that was named must exist, be readable and parse."""
    where = f"config file {path} (named by {named_by})"
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {where}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where} is not UTF-8 text: byte {exc.start}") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{where} is not valid TOML: {exc}") from None


def _read_secret_file(path: Path, what: str) -> str:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ValueError(f"cannot read {what} file {path}: {exc.strerror}") from None
    if not value:
        raise ValueError(f"{what} file {path} is empty")
    return value


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Account(_Section):
    """An Instagram professional account igbutton may send from."""

    id: str
    """The account's IG ID, as used in ``/{IG_ID}/messages``."""
    access_token: SecretStr | None = None
    """The Instagram User access token for this account."""
    access_token_file: Path | None = None
    """A file holding the access token (wins over ``access_token``)."""
    rate_per_second: float | None = Field(default=None, gt=0)
    """This account's send rate limit; default ``rate_limit.per_account_per_second``."""

    @field_validator("id")
    @classmethod
    def _check_id(cls, value: str) -> str:
        if not ACCOUNT_ID_RE.match(value):
            raise ValueError("must be 1-64 letters, digits, '.', '_' or '-'")
        return value

    @model_validator(mode="after")
    def _load_token(self) -> Self:
        if self.access_token_file is not None:
            token = _read_secret_file(self.access_token_file, "access token")
            object.__setattr__(self, "access_token", SecretStr(token))
        if self.access_token is None or not self.access_token.get_secret_value():
            raise ValueError(f"account {self.id}: access_token or access_token_file is required")
        return self

    def token(self) -> str:
        """The access token in clear, for the Graph client only."""
        assert self.access_token is not None  # guaranteed by _load_token
        return self.access_token.get_secret_value()


class GraphSettings(_Section):
    """How igbutton reaches Meta's Graph API."""

    base_url: str = "https://graph.instagram.com"
    """Base URL of the Graph API (the sandbox's URL in sandbox mode)."""
    api_version: str = DEFAULT_GRAPH_API_VERSION
    """Graph API version, such as ``v25.0``."""
    token_in: Literal["header", "query"] = "header"  # noqa: S105 - a mode, not a secret
    """Send the token as ``Authorization: Bearer`` (default) or as ``?access_token=``."""
    default_timeout_seconds: float = Field(default=20.0, gt=0, le=300)
    """Deadline for a send when the caller gave none."""
    max_attempts: int = Field(default=4, ge=1, le=10)
    """Attempts per send, counting the first, for failures Meta surely did not act on."""
    backoff_initial_seconds: float = Field(default=0.2, gt=0)
    """First retry delay; doubled per attempt, with full jitter."""
    backoff_max_seconds: float = Field(default=5.0, gt=0)
    """Longest retry delay."""
    max_connections: int = Field(default=200, ge=1)
    """Size of the keep-alive connection pool to the Graph API."""

    @field_validator("api_version")
    @classmethod
    def _check_version(cls, value: str) -> str:
        if not _VERSION_RE.match(value):
            raise ValueError("must look like v25.0")
        if value == "v20.0" or int(value[1:].split(".")[0]) < 21:
            raise ValueError(f"{value} is retired by Meta; use v21.0 or newer")
        return value

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an absolute http(s) URL")
        return value.rstrip("/")


class TlsSettings(_Section):
    """TLS for the gRPC port; with ``client_ca_file`` callers must present a certificate."""

    cert_file: Path | None = None
    """PEM certificate chain of the server."""
    key_file: Path | None = None
    """PEM private key of the server."""
    client_ca_file: Path | None = None
    """PEM CA bundle; when set, mutual TLS is required."""

    @model_validator(mode="after")
    def _pair(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be set together")
        if self.client_ca_file is not None and self.cert_file is None:
            raise ValueError("client_ca_file (mutual TLS) needs cert_file and key_file")
        for path in (self.cert_file, self.key_file, self.client_ca_file):
            if path is not None and not path.is_file():
                raise ValueError(f"{path} does not exist")
        return self

    @property
    def enabled(self) -> bool:
        """Whether the gRPC port serves TLS."""
        return self.cert_file is not None


class Caller(_Section):
    """A calling service: a bearer token and the accounts it may use."""

    name: str
    """A label for logs and metrics (never the token)."""
    token: SecretStr | None = None
    """The bearer token the caller sends as ``authorization: Bearer <token>``."""
    token_file: Path | None = None
    """A file holding the token (wins over ``token``)."""
    accounts: list[str] = Field(default_factory=lambda: ["*"])
    """IG IDs this caller may use; ``*`` means all."""
    admin: bool = False
    """May log in to the web console and call the administrative RPCs (GroupService), over
    the groups of its accounts."""

    @model_validator(mode="after")
    def _load_token(self) -> Self:
        if self.token_file is not None:
            object.__setattr__(
                self, "token", SecretStr(_read_secret_file(self.token_file, "caller token"))
            )
        if self.token is None or len(self.token.get_secret_value()) < 16:
            raise ValueError(f"caller {self.name}: token (at least 16 characters) is required")
        return self

    def allows(self, account_id: str) -> bool:
        """Whether this caller may use the account."""
        return "*" in self.accounts or account_id in self.accounts


class GrpcSettings(_Section):
    """The gRPC listener."""

    listen: str = "127.0.0.1:50051"
    """host:port for gRPC; port 0 picks a free port."""
    tls: TlsSettings = TlsSettings()
    """Optional TLS and mutual TLS."""
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    """How long in-flight calls may finish after SIGTERM."""
    max_concurrent_streams: int = Field(default=1000, ge=1)
    """Most concurrent streams per HTTP/2 connection; a client queues the ones beyond it."""
    max_pending_rpcs: int = Field(default=20000, ge=2)
    """Calls the transport accepted but the event loop has not picked up yet. Past half of
    it grpc refuses new calls at random (more as it fills), at it every one; refused calls
    end CANCELLED. grpc's own 1000 and 3000 cut bursts of reconnecting subscribers."""
    keepalive_time_seconds: float = Field(default=30.0, gt=0)
    """Ping each connection after this long without a read, calls or not, so that load
    balancers' idle timeouts do not cut quiet streams."""
    keepalive_timeout_seconds: float = Field(default=20.0, gt=0)
    """Close a connection whose peer has not answered a ping within this long, ending its
    streams: a client gone without a FIN does not keep its streams open."""
    min_client_ping_interval_seconds: float = Field(default=5.0, gt=0)
    """Shortest interval between client pings that is not a strike (two strikes: GOAWAY
    ENHANCE_YOUR_CALM "too_many_pings"), with calls or without. grpc's default is 5 min; this
    lets clients ping every 10 s, a common keepalive behind load balancers."""
    max_connection_age_seconds: float | None = Field(default=None, gt=0)
    """Send GOAWAY to a connection this old (with 10 % jitter) so clients reconnect and
    spread over new replicas after a scale-up; None (default): never."""
    max_connection_age_grace_seconds: float = Field(default=300.0, ge=0)
    """After that GOAWAY, how long the connection's calls may go on before it is closed;
    streams cut then end UNAVAILABLE and clients resume them on a new connection."""


class HttpSettings(_Section):
    """The operations HTTP listener: /healthz, /readyz, /metrics (and /console)."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(default=9090, ge=0, le=65535)
    """Port; 0 picks a free port."""


class WebhookSettings(_Section):
    """Meta's webhook endpoint."""

    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(default=8080, ge=0, le=65535)
    """Port; 0 picks a free port."""
    path: str = "/webhook"
    """URL path Meta POSTs to."""
    verify_token: SecretStr | None = None
    """The token Meta echoes in the GET handshake."""
    verify_token_file: Path | None = None
    """A file holding the verify token."""
    app_secrets: list[SecretStr] = Field(default_factory=list)
    """App secrets accepted for X-Hub-Signature-256; several allow rotation."""
    app_secret_files: list[Path] = Field(default_factory=list)
    """Files holding app secrets, added to ``app_secrets``."""
    allow_unsigned: bool = False
    """Accept unsigned POSTs. Only for local experiments; logged loudly."""
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024)
    """Largest accepted body; Meta batches up to 1000 updates."""
    max_connections: int = Field(default=256, ge=1)
    """Open webhook connections at most; one over the cap is closed when accepted, unread.
    Bounds the file descriptors a flood of connections can take from the gRPC and ops ports."""
    header_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time a client has to send a request's headers, from connecting or from its first byte
    after an answer; then the connection is closed."""
    body_timeout_seconds: float = Field(default=10.0, gt=0)
    """Time a POST's whole body may take once its headers are in; then 408 and close."""
    keepalive_timeout_seconds: float = Field(default=15.0, gt=0)
    """Idle time after an answer before a kept-alive connection is closed."""
    accept_unknown_accounts: bool = False
    """Store postbacks for IG IDs not in ``accounts`` (skipped and counted by default)."""

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must start with /")
        return value

    @model_validator(mode="after")
    def _load_secrets(self) -> Self:
        if self.verify_token_file is not None:
            token = _read_secret_file(self.verify_token_file, "verify token")
            object.__setattr__(self, "verify_token", SecretStr(token))
        extra = [SecretStr(_read_secret_file(p, "app secret")) for p in self.app_secret_files]
        if extra:
            object.__setattr__(self, "app_secrets", [*self.app_secrets, *extra])
        return self

    def secrets(self) -> list[bytes]:
        """The app secrets in clear, for signature checks only."""
        return [s.get_secret_value().encode() for s in self.app_secrets]


class NatsSettings(_Section):
    """NATS JetStream, the scale-out backend."""

    servers: list[str] = Field(default_factory=lambda: ["nats://127.0.0.1:4222"])
    """NATS server URLs."""
    creds_file: Path | None = None
    """NATS credentials file (JWT + nkey)."""
    tls_ca_file: Path | None = None
    """CA bundle for TLS to NATS."""
    stream: str = "IGBUTTON_POSTBACKS"
    """JetStream stream holding the postback log."""
    subject_prefix: str = "igbutton.postbacks"
    """Subject prefix; each postback is published on ``<prefix>.<account>.<mid>``."""
    idempotency_bucket: str = "igbutton_idempotency"
    """KV bucket for idempotency records."""
    replicas: int = Field(default=1, ge=1, le=5)
    """Stream and bucket replicas (3 in a cluster)."""


class StorageSettings(_Section):
    """Where the postback log, group state and idempotency records live."""

    backend: Literal["sqlite", "nats"] = "sqlite"
    """``sqlite`` (embedded, one process) or ``nats`` (JetStream, many replicas)."""
    sqlite_path: Path = Path("data/igbutton.db")
    """SQLite database file; its folder is created."""
    nats: NatsSettings = NatsSettings()
    """NATS settings, used with backend ``nats``."""


class RateLimitSettings(_Section):
    """Per-account send rate limit (token bucket; shared by the replicas on NATS)."""

    per_account_per_second: float = Field(default=100.0, gt=0)
    """Sends per second per account (Meta documents 100/s for Instagram)."""
    burst: int = Field(default=100, ge=1)
    """Bucket size: how many sends may go at once after a quiet spell."""
    lease_fraction: float = Field(default=0.1, gt=0, le=1)
    """With the NATS backend (one bucket per account shared by every replica): the share of
    an account's per-second rate a replica takes from the shared bucket at once."""
    nats_bucket: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_-]+$")
    """With the NATS backend: the KV bucket holding the shared buckets and holds; unset,
    ``<storage.nats.stream>_ratelimit``, so each postback log has its own, as its other
    buckets do."""


class TokenSettings(_Section):
    """How igbutton keeps each account's access token alive (refresh_access_token)."""

    refresh_margin_seconds: float = Field(default=53 * 24 * 3600, gt=0)
    """Refresh a token once it expires within this long. Meta's tokens live 60 days, so the
    default refreshes every 7 days; a token whose expiry is unknown (never refreshed by
    igbutton) is taken to expire 60 days after igbutton first saw it."""
    min_age_seconds: float = Field(default=24 * 3600, ge=0)
    """Never refresh a token younger than this (Meta refuses tokens under 24 hours old)."""
    expiring_seconds: float = Field(default=7 * 24 * 3600, gt=0)
    """An account whose token expires within this long has token status EXPIRING."""
    check_interval_seconds: float = Field(default=10.0, gt=0)
    """How often each account's token file, stored record and refresh due time are
    checked (SIGHUP checks at once)."""
    retry_initial_seconds: float = Field(default=60.0, gt=0)
    """First wait after a failed refresh; doubled per failure, with jitter."""
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    """Longest wait between refresh attempts."""
    lease_seconds: float = Field(default=60.0, gt=0)
    """How long a replica may take to refresh before another one may try."""
    timeout_seconds: float = Field(default=20.0, gt=0)
    """Deadline of one call to Meta for the account (refresh, me, subscribed_apps)."""


class SendSettings(_Section):
    """Checks on the send path before Meta is asked."""

    messaging_window_check: Literal["off", "enforce"] = "off"
    """``enforce``: a send to a person whose messaging window igbutton knows to be closed
    (24 h after their last message seen in the webhook, 7 days with HUMAN_AGENT) fails at
    once with OUTSIDE_MESSAGING_WINDOW, without calling Meta; a person igbutton has seen
    nothing from is sent to. ``off``: Meta decides every send."""


class IdempotencySettings(_Section):
    """How long a request_id is honoured."""

    ttl_seconds: int = Field(default=24 * 3600, ge=60)
    """A repeat within this time returns the first result."""


class PostbackSettings(_Section):
    """The postback log and consumer groups."""

    retention_seconds: int = Field(default=7 * 24 * 3600, ge=60)
    """How long postbacks are kept."""
    prune_interval_seconds: float = Field(default=60.0, gt=0)
    """How often expired postbacks are removed."""
    default_ack_deadline_seconds: float = Field(default=30.0, ge=1, le=600)
    """Ack deadline when a subscription sets none."""
    max_delivery_attempts: int = Field(default=5, ge=1, le=100)
    """Deliveries before an unacknowledged postback is dead-lettered."""
    default_max_unacked: int = Field(default=100, ge=1, le=10000)
    """Per-member cap on unacknowledged postbacks when a subscription sets none."""
    max_groups_per_caller: int = Field(default=100, ge=1, le=100_000)
    """Most consumer groups one caller (in open mode: everyone) may have; joining a new
    group beyond it is refused with RESOURCE_EXHAUSTED."""
    group_metrics_interval_seconds: float = Field(default=15.0, ge=0)
    """How often the groups are read to set the per-group backlog, unacknowledged and
    oldest-unacknowledged-age gauges (0: only when GetGroup or ListGroups reads them)."""
    group_idle_retention_seconds: int = Field(default=7 * 24 * 3600, ge=1)
    """A group with no member connected that nobody joined or acknowledged in for this
    long is deleted (checked every ``prune_interval_seconds``)."""


class SandboxSettings(_Section):
    """The local Instagram stand-in, for a first run without a Meta app."""

    enabled: bool = False
    """Start the sandbox in-process and point the Graph client and accounts at it."""
    host: str = "127.0.0.1"
    """Address to bind."""
    port: int = Field(default=8765, ge=0, le=65535)
    """Port; 0 picks a free port."""
    token_lifetime_seconds: float = Field(default=60 * 24 * 3600, gt=0)
    """How long tokens the sandbox issues on refresh are valid (Meta: 60 days)."""
    min_refresh_age_seconds: float = Field(default=24 * 3600, ge=0)
    """How old a token must be before the sandbox refreshes it (Meta: 24 hours)."""


class ConsoleSettings(_Section):
    """The web console at ``/console`` on the operations HTTP port."""

    enabled: bool | None = None
    """Serve the console; unset: only in sandbox mode. With ``callers`` configured it asks
    for the token of a caller with ``admin = true``."""
    session_seconds: int = Field(default=8 * 3600, ge=60, le=30 * 24 * 3600)
    """How long a console login lasts (the cookie's lifetime)."""
    secure_cookie: bool = False
    """Mark the console's cookies ``Secure``: set this when browsers reach the console
    over HTTPS (a TLS-terminating proxy in front of the operations port)."""


class LogSettings(_Section):
    """Logging."""

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Log level."""
    format: Literal["json", "text"] = "json"
    """JSON lines (default) or plain text."""


class TracingSettings(_Section):
    """OpenTelemetry tracing; off unless an OTLP endpoint is set, here or in the standard
    ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` / ``OTEL_EXPORTER_OTLP_ENDPOINT``. Each setting
    here, when set, wins over its ``OTEL_*`` variable (see the tracing module)."""

    otlp_endpoint: str | None = None
    """OTLP/gRPC collector, such as ``http://otel-collector:4317``; unset: the OTEL_* endpoint
    variables, and without them no tracing."""
    service_name: str | None = None
    """The ``service.name`` resource attribute; unset: ``OTEL_SERVICE_NAME``, else igbutton."""
    sample_ratio: float | None = Field(default=None, ge=0, le=1)
    """Fraction of new traces recorded (parent-based); unset: ``OTEL_TRACES_SAMPLER`` (and
    ``_ARG``), else every trace."""
    insecure: bool | None = None
    """Plaintext to the collector; unset: ``OTEL_EXPORTER_OTLP_INSECURE``, else plaintext
    unless the endpoint is ``https://`` (the usual sidecar setup is plaintext)."""


class Settings(BaseSettings):
    """Everything igbutton can be told. Build with :meth:`Settings.load`."""

    model_config = SettingsConfigDict(
        env_prefix="IGBUTTON_",
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    event_loop: Literal["uvloop", "asyncio"] = "uvloop"
    """The asyncio event loop; uvloop measured 7-8 % more sends/s (docs/performance.md)."""
    accounts: list[Account] = Field(default_factory=list)
    """Instagram accounts to send from."""
    callers: list[Caller] = Field(default_factory=list)
    """Calling services; when empty, gRPC calls need no token."""
    graph: GraphSettings = GraphSettings()
    grpc: GrpcSettings = GrpcSettings()
    http: HttpSettings = HttpSettings()
    webhook: WebhookSettings = WebhookSettings()
    storage: StorageSettings = StorageSettings()
    rate_limit: RateLimitSettings = RateLimitSettings()
    idempotency: IdempotencySettings = IdempotencySettings()
    tokens: TokenSettings = TokenSettings()
    send: SendSettings = SendSettings()
    postbacks: PostbackSettings = PostbackSettings()
    sandbox: SandboxSettings = SandboxSettings()
    console: ConsoleSettings = ConsoleSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    @field_validator("accounts")
    @classmethod
    def _unique_accounts(cls, value: list[Account]) -> list[Account]:
        ids = [a.id for a in value]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"account ids configured twice: {', '.join(dupes)}")
        return value

    @model_validator(mode="after")
    def _webhook_needs_a_secret(self) -> Self:
        needs_secret = not self.sandbox.enabled and not self.webhook.allow_unsigned
        if needs_secret and not self.webhook.app_secrets:
            raise ValueError(
                "webhook.app_secrets (or app_secret_files) is required "
                "unless webhook.allow_unsigned or sandbox.enabled is set"
            )
        return self

    @model_validator(mode="after")
    def _console_needs_an_admin(self) -> Self:
        if self.console.enabled and self.callers and not any(c.admin for c in self.callers):
            raise ValueError(
                "console.enabled needs a caller with admin = true to log in with, "
                "since callers are configured"
            )
        return self

    @property
    def console_enabled(self) -> bool:
        """Whether the web console is served: ``console.enabled``, or else sandbox mode."""
        if self.console.enabled is None:
            return self.sandbox.enabled
        return self.console.enabled

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        # Not sources igbutton reads; pydantic-settings passes them by keyword, so named as-is.
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _sources(settings_cls, init_settings, env_settings)

    @classmethod
    def load(cls, config_file: Path | None = None, **overrides: Any) -> Settings:
        """Read and validate the configuration, or raise ConfigError naming each problem.

        ``config_file`` (``--config``) wins over ``IGBUTTON_CONFIG_FILE``; a file named
        either way that is missing, unreadable or not TOML is an error, as is an
        environment variable that should hold JSON and does not.
        """
        return _load(cls, config_file, overrides)

    def account(self, account_id: str) -> Account | None:
        """The configured account with this IG ID, if any."""
        return next((a for a in self.accounts if a.id == account_id), None)


class _HttpOnly(BaseSettings):
    """The ``http`` section alone, from the same sources as :class:`Settings`. The other
    sections are not read, so a probe is not failed by a setting it does not use (the
    webhook secret a server started with ``--sandbox`` does without, an account token file
    only the server's user can read)."""

    model_config = SettingsConfigDict(
        env_prefix="IGBUTTON_",
        env_nested_delimiter="__",
        extra="ignore",
        frozen=True,
    )

    http: HttpSettings = HttpSettings()

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,  # noqa: ARG003
        file_secret_settings: PydanticBaseSettingsSource,  # noqa: ARG003
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return _sources(settings_cls, init_settings, env_settings)


def load_http_settings(config_file: Path | None = None) -> HttpSettings:
    """The operations listener's settings as the server reads them (environment, then the
    TOML file), without validating the rest; ConfigError as :meth:`Settings.load`."""
    return _load(_HttpOnly, config_file, {}).http


_S = TypeVar("_S", bound=BaseSettings)


def _sources(
    settings_cls: type[BaseSettings],
    init_settings: PydanticBaseSettingsSource,
    env_settings: PydanticBaseSettingsSource,
) -> tuple[PydanticBaseSettingsSource, ...]:
    sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
    named = _config_file.get()
    if named is None and os.environ.get(CONFIG_FILE_VARIABLE):
        named = (Path(os.environ[CONFIG_FILE_VARIABLE]), CONFIG_FILE_VARIABLE)
    if named is not None:
        # Read here, not by pydantic-settings' TOML source: that one takes a missing
        # file for an empty one, and a misspelt name would drop every setting in it.
        values = _read_config_file(*named)
        sources.append(InitSettingsSource(settings_cls, init_kwargs=values))
    return tuple(sources)


def _load(cls: type[_S], config_file: Path | None, overrides: dict[str, Any]) -> _S:
    token = _config_file.set(None if config_file is None else (config_file, "--config"))
    try:
        return cls(**overrides)
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
    except SettingsError as exc:
        raise ConfigError(_describe_source_error(exc)) from None
    finally:
        _config_file.reset(token)


def _describe(exc: ValidationError) -> str:
    problems = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        env = "IGBUTTON_" + "__".join(str(p) for p in err["loc"] if isinstance(p, str)).upper()
        problems.append(f"{where} ({env}): {err['msg']}")
    return "invalid configuration: " + "; ".join(problems)


def _describe_source_error(exc: SettingsError) -> str:
    """Name the environment variable pydantic-settings could not parse as JSON."""
    cause = exc.__cause__
    if isinstance(cause, json.JSONDecodeError):
        names = sorted(
            name
            for name, value in os.environ.items()
            if name.upper().startswith("IGBUTTON_") and value == cause.doc
        )
        if names:
            return f"{' and '.join(names)}: not valid JSON ({cause})"
    return f"invalid configuration: {exc}" + (f" ({cause})" if cause is not None else "")

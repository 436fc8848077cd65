"""One settings object for every K2 process: `Settings`, read from environment variables `K2_*` and nowhere else.

Everything local lives under `home` ($K2_HOME, default ./.k2). Leaving `kafka_bootstrap` or
`schema_registry_url` unset means "K2 starts its own" (see k2.bus.stack).

Object storage: `K2_WAREHOUSE=s3://bucket/prefix` puts the lake on S3 or any S3-compatible store; the endpoint and
credentials come from K2_S3_* or, when those are unset, the standard AWS_* variables. The secret is a SecretStr:
it shows as '**********' in reprs and logs, and only `catalog_config` / `s3_environment()` hand it out.

The HTTP API's options (`K2_API_*`) and logging (`K2_LOG_*`) are nested groups of the same object
(`settings.api`, `settings.log`). Settings given as JSON in the environment (K2_KAFKA_EXTRA, K2_CATALOG_PROPERTIES,
K2_SHED_PRIORITIES) are typed here, so a malformed value fails at start with the variable's name.
The README's configuration table is generated from these fields (`k2 settings --markdown`); a test keeps them equal.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from k2.redact import redact, redact_mapping


class ApiSettings(BaseSettings):
    """The HTTP API (`k2 serve`, `k2 up`)."""

    model_config = SettingsConfigDict(env_prefix="K2_API_", extra="ignore")

    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per minute per API key (token bucket; the burst is the same size)"
    )
    auth_failures_per_minute: int = Field(
        default=10,
        ge=1,
        description="Unknown API keys one client address may present per minute (the same burst); then 429",
    )
    query_timeout_seconds: float = Field(
        default=30.0, gt=0, description="A read taking longer answers 504; also the limit per replay batch"
    )
    max_body_bytes: int = Field(default=1024 * 1024, ge=0, description="Larger request bodies answer 413")
    max_url_bytes: int = Field(default=8192, ge=256, description="Longer path + query strings answer 414")
    query_workers: int = Field(default=4, ge=1, description="Threads running queries (the engine runs one at a time)")
    refresh_seconds: float = Field(
        default=1.0,
        ge=0,
        description="Re-read the catalog for new commits at most this often (a refresh costs ~20 ms); 0: every read",
    )
    breaker_timeouts: int = Field(
        default=5,
        ge=1,
        description="Consecutive query timeouts after which new queries are refused (503) for breaker_reset_seconds:"
        " a timed-out query keeps the engine busy, so more would only queue behind it",
    )
    breaker_reset_seconds: float = Field(default=30.0, gt=0, description="How long the query breaker stays open")
    fresh_budget_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long a fresh=true read may spend on the Kafka tail; past it the rows read so far are used"
        " and the response says X-K2-Fresh-Caught-Up: false",
    )
    replay_batch_rows: int = Field(
        default=1000, ge=1, description="Rows read per replay query, and most records per subscription frame"
    )
    subscriptions_per_key: int = Field(
        default=4, ge=1, description="Open /v1/subscribe WebSockets one API key may hold; one more is closed with 4429"
    )
    subscribe_buffer_records: int = Field(
        default=20_000,
        ge=1,
        description="Records a live subscriber may fall behind (its send buffer) before it is closed with 4008 and"
        " its cursor",
    )


class LogSettings(BaseSettings):
    """Structured logs on stderr (k2.logs)."""

    model_config = SettingsConfigDict(env_prefix="K2_LOG_", extra="ignore", populate_by_name=True)

    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="WARNING", description="Lowest level logged (`-v` on a command means INFO)"
    )
    json_lines: bool = Field(
        default=False,
        validation_alias=AliasChoices("K2_LOG_JSON"),
        description="One JSON object per line instead of console text (for log shippers)",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value


class BrokerKind(StrEnum):
    """Which broker K2 starts when none is configured or running (`k2 stack --broker`, k2.bus.stack.Stack)."""

    tansu = "tansu"  # the embedded default: milliseconds to start, memory storage unless K2_BROKER_STORAGE says
    kafka = "kafka"  # Apache Kafka in KRaft mode, one node, its log under $K2_HOME/kafka (k2.bus.apache_kafka)


class KafkaSecurityProtocol(StrEnum):
    """librdkafka's security.protocol: how K2's clients talk to the brokers."""

    plaintext = "PLAINTEXT"
    ssl = "SSL"
    sasl_plaintext = "SASL_PLAINTEXT"
    sasl_ssl = "SASL_SSL"


class SaslMechanism(StrEnum):
    scram_sha_512 = "SCRAM-SHA-512"
    scram_sha_256 = "SCRAM-SHA-256"
    plain = "PLAIN"


class Settings(BaseSettings):
    # populate_by_name: fields with AWS_* fallbacks are still set as Settings(s3_endpoint=...)
    model_config = SettingsConfigDict(env_prefix="K2_", extra="ignore", populate_by_name=True)

    home: Path = Field(
        default=Path(".k2"), description="All local state: broker log, registry, catalog, warehouse, logs"
    )

    # --- Kafka -----------------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(
        default=None, description="Bootstrap servers of a real Kafka-wire cluster; unset = the embedded broker"
    )
    kafka_extra: dict[str, str | int | float | bool] = Field(
        default_factory=dict,
        description="JSON object of extra librdkafka settings applied to every client (the escape hatch for options"
        " K2 has no setting of its own for)",
    )
    kafka_security_protocol: KafkaSecurityProtocol = Field(
        default=KafkaSecurityProtocol.plaintext,
        description="How clients talk to the brokers: PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: SaslMechanism = Field(
        default=SaslMechanism.scram_sha_512,
        description="SASL mechanism with a SASL_* protocol: SCRAM-SHA-512, SCRAM-SHA-256 or PLAIN",
    )
    kafka_sasl_username: str | None = Field(default=None, description="SASL user (needed with a SASL_* protocol)")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="SASL password (needed with a SASL_* protocol; never logged)"
    )
    kafka_ssl_ca_location: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed the brokers' certificates (SSL, SASL_SSL); unset = the"
        " system's trusted CAs",
    )
    topic_partitions: int = Field(default=3, ge=1, description="Partitions of topics K2 creates")
    topic_replication: int = Field(default=1, ge=1, description="Replication factor of topics K2 creates")
    topic_retention_ms: int = Field(
        default=7 * 24 * 3600 * 1000, description="retention.ms of topics K2 creates (default 7 days)"
    )
    producer_compression: str = Field(default="zstd", description="Producer compression.type")
    producer_linger_ms: int = Field(default=10, ge=0, description="Producer linger.ms")

    # --- Schema registry -------------------------------------------------------------------------------------
    schema_registry_url: str | None = Field(
        default=None, description="Confluent-compatible registry URL; unset = the embedded registry"
    )
    schema_registry_username: str | None = Field(
        default=None, description="Registry basic-auth user (else a user:password in the URL)"
    )
    schema_registry_password: SecretStr | None = Field(
        default=None, description="Registry basic-auth password (with the user; never logged)"
    )
    schema_registry_ca_location: Path | None = Field(
        default=None,
        description="PEM file of the CA(s) that signed an https:// registry's certificate; unset = the system's"
        " trusted CAs",
    )

    # --- Iceberg ---------------------------------------------------------------------------------------------
    catalog_name: str = Field(default="k2", description="Name of the Iceberg catalog")
    catalog_uri: str | None = Field(
        default=None,
        description="pyiceberg SQL catalog URI (e.g. postgresql+psycopg2://...); unset = SQLite under home",
    )
    catalog_properties: dict[str, Any] = Field(
        default_factory=dict,
        description='JSON object of extra pyiceberg catalog properties (e.g. {"type": "rest", "uri": ...})',
    )
    warehouse: str | None = Field(
        default=None, description="Warehouse location, e.g. s3://bucket/prefix; unset = directory under home"
    )

    # --- Object storage (S3 and S3-compatible) --------------------------------------------------------------
    # Explicit aliases: the K2_ name wins, then the variable the AWS SDKs and CLIs read.
    s3_endpoint: str | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
        description="S3-compatible endpoint URL (http://host:port); unset = AWS S3",
    )
    s3_access_key_id: str | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"),
        description="S3 access key id; unset = the AWS credential chain",
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"),
        description="S3 secret access key (never logged)",
    )
    s3_session_token: SecretStr | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"),
        description="S3 session token for temporary credentials (never logged)",
    )
    s3_region: str | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_REGION", "AWS_REGION", "AWS_DEFAULT_REGION"),
        description="Bucket region; with an endpoint and no region, us-east-1",
    )
    s3_path_style: bool | None = Field(
        default=None,
        validation_alias=AliasChoices("K2_S3_PATH_STYLE"),
        description="Path-style URLs (endpoint/bucket/key); unset = path-style exactly when an endpoint is set",
    )

    # --- Embedded broker -------------------------------------------------------------------------------------
    broker_storage: str = Field(
        default="memory://tansu/",
        description="Embedded broker storage: memory:// (lost on restart) or s3://bucket/ (durable, K2_S3_* endpoint)",
    )

    # --- Apache Kafka (`k2 stack --broker kafka`, k2.bus.apache_kafka) -------------------------------------------
    apache_kafka_cache: Path | None = Field(
        default=None,
        description="Where Maven puts Apache Kafka's jars once (apache-kafka-<version>/); unset = ~/.cache/k2",
    )

    # --- Sink ------------------------------------------------------------------------------------------------
    sink_group: str = Field(default="k2-sink", description="Consumer group of the sink workers")
    # 100k-row commits run ~4x faster than 10k-row ones and write 10x fewer files (docs/stack-notes.md, "Iceberg")
    sink_commit_rows: int = Field(default=100_000, ge=1, description="Iceberg commit after this many rows")
    sink_commit_seconds: float = Field(default=5.0, gt=0, description="... or after this many seconds")
    load_timeout_seconds: float = Field(
        default=900.0, description="How long `k2 load` waits for the sink group to commit what it produced"
    )
    book_checkpoint_seconds: float = Field(
        default=60.0,
        ge=0,
        description="Venue time between the order-book checkpoints a depth stream or capture load writes per symbol"
        " (book_snapshots_v2 snapshot_type checkpoint: a book at any instant replays at most this much; 0: none)",
    )

    # --- Degradation (k2.ingest.degradation) --------------------------------------------------------------------
    memory_limit_mb: int | None = Field(
        default=None,
        ge=64,
        description="Memory a producing process may use; degradation levels rise from 50 % of it (unset: memory is"
        " not a signal)",
    )
    shed_priorities: dict[str, int] = Field(
        default_factory=dict,
        description='JSON {"asset_class/exchange": 0|1|2}: under load, priority 2 is spilled to disk first, 0 last'
        " (unset: all 1)",
    )

    # --- k2 up -----------------------------------------------------------------------------------------------
    asx_sample: Path | None = Field(
        default=None, description="The ASX folder `k2 up` loads; unset = the repository's data/samples/asx"
    )

    # --- Nested groups (their own prefixes) ------------------------------------------------------------------
    api: ApiSettings = Field(default_factory=ApiSettings, description="The HTTP API (K2_API_*)")
    log: LogSettings = Field(default_factory=LogSettings, description="Logging (K2_LOG_*)")

    @field_validator("shed_priorities")
    @classmethod
    def _priorities(cls, value: dict[str, int]) -> dict[str, int]:
        if not all(0 <= v <= 2 for v in value.values()):
            raise ValueError('must map "asset_class/exchange" to 0, 1 or 2, e.g. {"crypto/binance": 2}')
        return {k.lower(): v for k, v in value.items()}

    @model_validator(mode="after")
    def _credentials_complete(self) -> Settings:
        # Raised here, at start, rather than as a broker's "authentication failed" minutes into a load.
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"K2_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs K2_KAFKA_SASL_USERNAME and"
                " K2_KAFKA_SASL_PASSWORD"
            )
        if bool(self.schema_registry_username) != bool(self.schema_registry_password):
            raise ValueError("K2_SCHEMA_REGISTRY_USERNAME and K2_SCHEMA_REGISTRY_PASSWORD go together: set both")
        for name in ("kafka_ssl_ca_location", "schema_registry_ca_location"):
            path = getattr(self, name)
            if path is not None and not path.expanduser().is_file():
                raise ValueError(f"K2_{name.upper()}: no such file: {path}")
        return self

    @property
    def kafka_security_config(self) -> dict[str, str]:
        """The librdkafka settings of the typed K2_KAFKA_* security settings (empty for PLAINTEXT). Holds the
        password: pass it to a client, never log it."""
        protocol = self.kafka_security_protocol
        if protocol is KafkaSecurityProtocol.plaintext:
            return {}
        config = {"security.protocol": protocol.value}
        if protocol.startswith("SASL_") and self.kafka_sasl_username and self.kafka_sasl_password:
            config["sasl.mechanism"] = self.kafka_sasl_mechanism.value
            config["sasl.username"] = self.kafka_sasl_username
            config["sasl.password"] = self.kafka_sasl_password.get_secret_value()
        if protocol.endswith("SSL") and self.kafka_ssl_ca_location is not None:
            config["ssl.ca.location"] = str(self.kafka_ssl_ca_location.expanduser())
        return config

    @property
    def schema_registry_auth(self) -> tuple[str, str] | None:
        """(user, password) for the registry's basic auth, when set. Holds the password: never log it."""
        if self.schema_registry_username and self.schema_registry_password:
            return self.schema_registry_username, self.schema_registry_password.get_secret_value()
        return None

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Passwords in URIs (K2_CATALOG_URI) and secret values in JSON settings (K2_KAFKA_EXTRA's sasl.password,
        # K2_CATALOG_PROPERTIES' credentials) never reach a repr, so never a log or a test report.
        for name, value in super().__repr_args__():
            if isinstance(value, str):
                yield name, redact(value)
            elif isinstance(value, dict):
                yield name, redact_mapping(value)
            else:
                yield name, value

    @property
    def book_checkpoint_us(self) -> int | None:
        """`book_checkpoint_seconds` in microseconds; None when checkpoints are off."""
        return round(self.book_checkpoint_seconds * 1_000_000) or None

    @cached_property
    def home_dir(self) -> Path:
        path = self.home.expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def run_dir(self) -> Path:
        path = self.home_dir / "run"
        path.mkdir(exist_ok=True)
        return path

    @property
    def catalog_config(self) -> dict[str, Any]:
        props: dict[str, Any] = {
            "type": "sql",
            "uri": self.catalog_uri or f"sqlite:///{self.home_dir / 'catalog.db'}",
            "warehouse": self.warehouse or (self.home_dir / "warehouse").as_uri(),
        }
        if is_s3(props["warehouse"]) or self.s3_endpoint:
            props.update(self.s3_properties)
        props.update(self.catalog_properties)
        return props

    @property
    def s3_path_style_urls(self) -> bool:
        return self.s3_path_style if self.s3_path_style is not None else self.s3_endpoint is not None

    @property
    def s3_region_or_default(self) -> str | None:
        # With a custom endpoint a region must be given: without one pyiceberg asks AWS where the bucket lives.
        return self.s3_region or ("us-east-1" if self.s3_endpoint else None)

    @property
    def s3_properties(self) -> dict[str, str]:
        """pyiceberg FileIO properties (`s3.*`) for the configured endpoint and credentials; unset ones are left
        out, so pyiceberg's own defaults (the AWS credential chain) apply to them. Holds the secret: never log it."""
        props: dict[str, str] = {}
        if self.s3_endpoint:
            props["s3.endpoint"] = self.s3_endpoint
        if self.s3_access_key_id:
            props["s3.access-key-id"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            props["s3.secret-access-key"] = self.s3_secret_access_key.get_secret_value()
        if self.s3_session_token:
            props["s3.session-token"] = self.s3_session_token.get_secret_value()
        if region := self.s3_region_or_default:
            props["s3.region"] = region
        if self.s3_endpoint or self.s3_path_style is not None:
            props["s3.force-virtual-addressing"] = str(not self.s3_path_style_urls).lower()
        return props

    def s3_environment(self) -> dict[str, str]:
        """The same endpoint and credentials as the AWS_* variables Rust's object_store reads (the Tansu broker's
        s3:// storage). Holds the secret: pass it to a child process's environment, never log it."""
        env: dict[str, str] = {}
        if self.s3_endpoint:
            env["AWS_ENDPOINT"] = self.s3_endpoint
            env["AWS_ALLOW_HTTP"] = str(self.s3_endpoint.startswith("http://")).lower()
        if self.s3_access_key_id:
            env["AWS_ACCESS_KEY_ID"] = self.s3_access_key_id
        if self.s3_secret_access_key:
            env["AWS_SECRET_ACCESS_KEY"] = self.s3_secret_access_key.get_secret_value()
        if self.s3_session_token:
            env["AWS_SESSION_TOKEN"] = self.s3_session_token.get_secret_value()
        if region := self.s3_region_or_default:
            env["AWS_DEFAULT_REGION"] = env["AWS_REGION"] = region
        if self.s3_endpoint or self.s3_path_style is not None:
            env["AWS_VIRTUAL_HOSTED_STYLE_REQUEST"] = str(not self.s3_path_style_urls).lower()
        return env


def is_s3(location: str | None) -> bool:
    """True for the URI schemes pyiceberg and DuckDB read through S3."""
    return bool(location) and location.split("://", 1)[0].lower() in ("s3", "s3a", "s3n")


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)


def _default_text(field: FieldInfo) -> str:
    value = field.get_default(call_default_factory=True)
    if value is None:
        return "unset"
    if isinstance(value, Path):
        return f"`./{value}`" if not value.is_absolute() else f"`{value}`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, dict):
        return "`{}`" if not value else f"`{value}`"
    return f"`{value}`"


def environment_variables(model: type[BaseSettings] = Settings) -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting, nested groups included, in declaration order: the README's
    configuration table. A setting without a description raises: every variable is documented."""
    prefix = model.model_config.get("env_prefix", "")
    rows: list[tuple[str, str, str]] = []
    for name, field in model.model_fields.items():
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, BaseSettings):
            rows.extend(environment_variables(kind))
            continue
        if not field.description:
            raise ValueError(f"{model.__name__}.{name} has no description")
        alias = field.validation_alias
        names = list(alias.choices) if isinstance(alias, AliasChoices) else [f"{prefix}{name}".upper()]
        meaning = field.description
        if len(names) > 1:
            meaning += " (else " + ", ".join(f"`{n}`" for n in names[1:]) + ")"
        rows.append((str(names[0]), _default_text(field), meaning))
    return rows


def describe_errors(exc: ValidationError | SettingsError) -> list[str]:
    """One line per invalid setting, naming its environment variable (never its value: it may be a secret)."""
    if isinstance(exc, SettingsError):  # a JSON setting that is not JSON: pydantic-settings fails before validating
        field = re.search(r'field "(\w+)"', str(exc))
        variable = f"K2_{field[1]}".upper() if field else "a K2_* setting"
        return [f"{variable}: not valid JSON ({exc.__cause__})"]
    model = next((m for m in (Settings, ApiSettings, LogSettings) if m.__name__ == exc.title), Settings)
    prefix = model.model_config.get("env_prefix", "")
    lines = []
    for error in exc.errors():
        if not error["loc"]:  # a rule over several settings (Settings._credentials_complete) names them itself
            lines.append(str(error["msg"]).removeprefix("Value error, "))
            continue
        name = str(error["loc"][0])
        variable = name if name.isupper() else f"{prefix}{name}".upper()
        lines.append(f"{variable}: {error['msg']}")
    return lines


def settings_table() -> str:
    """The Markdown table of every K2_* variable (README.md, "Configuration"; `k2 settings --markdown`)."""
    lines = ["| variable | default | meaning |", "|---|---|---|"]
    for name, default, meaning in environment_variables():
        cell = meaning.replace("|", r"\|")
        lines.append(f"| `{name}` | {default} | {cell} |")
    return "\n".join(lines) + "\n"

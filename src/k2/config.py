"""One settings object for every K2 process (environment variables `K2_*`).

Everything local lives under `home` ($K2_HOME, default ./.k2). Leaving `kafka_bootstrap` or
`schema_registry_url` unset means "K2 starts its own" (see k2.bus.stack).

Object storage: `K2_WAREHOUSE=s3://bucket/prefix` puts the lake on S3 or any S3-compatible store; the endpoint and
credentials come from K2_S3_* or, when those are unset, the standard AWS_* variables. The secret is a SecretStr:
it shows as '**********' in reprs and logs, and only `catalog_config` / `s3_environment()` hand it out.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from enum import StrEnum
from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from k2.redact import redact


class BrokerKind(StrEnum):
    """Which broker K2 starts when none is configured or running (`k2 stack --broker`, k2.bus.stack.Stack)."""

    tansu = "tansu"  # the embedded default: milliseconds to start, memory storage unless K2_BROKER_STORAGE says
    kafka = "kafka"  # Apache Kafka in KRaft mode, one node, its log under $K2_HOME/kafka (k2.bus.apache_kafka)


class Settings(BaseSettings):
    # populate_by_name: fields with AWS_* fallbacks are still set as Settings(s3_endpoint=...)
    model_config = SettingsConfigDict(env_prefix="K2_", extra="ignore", populate_by_name=True)

    home: Path = Field(default=Path(".k2"), description="All local state: broker, registry, catalog, warehouse")

    # --- Kafka -----------------------------------------------------------------------------------------------
    kafka_bootstrap: str | None = Field(default=None, description="Bootstrap servers; unset = embedded broker")
    kafka_extra: str = Field(
        default="{}",
        description="JSON object of extra librdkafka settings (SASL/SSL) applied to every client",
    )
    topic_partitions: int = 3
    topic_replication: int = 1
    topic_retention_ms: int = 7 * 24 * 3600 * 1000
    producer_compression: str = "zstd"
    producer_linger_ms: int = 10

    # --- Schema registry -------------------------------------------------------------------------------------
    schema_registry_url: str | None = Field(default=None, description="Registry URL; unset = embedded registry")

    # --- Iceberg ---------------------------------------------------------------------------------------------
    catalog_name: str = "k2"
    catalog_uri: str | None = Field(default=None, description="SQL catalog URI; unset = SQLite under home")
    catalog_properties: str = Field(default="{}", description="JSON of extra pyiceberg catalog properties")
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
        default=None, validation_alias=AliasChoices("K2_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID")
    )
    s3_secret_access_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("K2_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY")
    )
    s3_session_token: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("K2_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN")
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
        description="Tansu storage engine: memory:// (lost on restart) or s3://bucket/ (durable, K2_S3_* endpoint)",
    )

    # --- Apache Kafka (`k2 stack --broker kafka`, k2.bus.apache_kafka) -------------------------------------------
    apache_kafka_cache: Path | None = Field(
        default=None,
        description="Where Maven puts Apache Kafka's jars once (apache-kafka-<version>/); unset = ~/.cache/k2",
    )

    # --- Sink ------------------------------------------------------------------------------------------------
    sink_group: str = "k2-sink"
    # 100k-row commits run ~4x faster than 10k-row ones and write 10x fewer files (STACK-NOTES.md)
    sink_commit_rows: int = 100_000
    sink_commit_seconds: float = 5.0
    load_timeout_seconds: float = Field(
        default=900.0, description="How long `k2 load` waits for the sink group to commit what it produced"
    )

    # --- Degradation (k2.ops.degradation) --------------------------------------------------------------------
    memory_limit_mb: int | None = Field(
        default=None, ge=64, description="Memory a producing process may use; degradation levels rise from 50 % of it"
    )
    shed_priorities: str = Field(
        default="{}",
        description='JSON {"asset_class/exchange": 0|1|2}: under load, priority 2 is spilled to disk first, 0 last',
    )

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Passwords in URIs (K2_CATALOG_URI) and secret values in JSON settings (K2_KAFKA_EXTRA's sasl.password,
        # K2_CATALOG_PROPERTIES' credentials) never reach a repr, so never a log or a test report.
        for name, value in super().__repr_args__():
            yield name, redact(value) if isinstance(value, str) else value

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
        props.update(json.loads(self.catalog_properties))
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

    @property
    def kafka_extra_config(self) -> dict[str, Any]:
        return json.loads(self.kafka_extra)


def is_s3(location: str | None) -> bool:
    """True for the URI schemes pyiceberg and DuckDB read through S3."""
    return bool(location) and location.split("://", 1)[0].lower() in ("s3", "s3a", "s3n")


def load_settings(**overrides: Any) -> Settings:
    return Settings(**overrides)

"""Settings of the HTTP API (environment variables `K2_API_*`), beside the platform's own `k2.config.Settings`."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

KEYS_FILE = "api_keys.db"
"""The SQLite file under `Settings.home_dir` holding the hashed API keys."""

MAX_PAGE_ROWS = 10_000
"""The largest `limit` a page may ask for; OpenAPI documents it, so it is fixed, not configured."""


class ApiSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="K2_API_", extra="ignore")

    rate_limit_per_minute: int = Field(
        default=600, ge=1, description="Requests per minute per API key (token bucket; the burst is the same size)"
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
    replay_batch_rows: int = Field(default=1000, ge=1, description="Rows read per replay query")

"""Fixed facts of the HTTP API. Its options (`K2_API_*`) are `k2.config.ApiSettings`, a group of `Settings`."""

from __future__ import annotations

KEYS_FILE = "api_keys.db"
"""The SQLite file under `Settings.home_dir` holding the hashed API keys."""

MAX_PAGE_ROWS = 10_000
"""The largest `limit` a page may ask for; OpenAPI documents it, so it is fixed, not configured."""

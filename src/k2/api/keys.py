"""API keys: created once, stored only as salted HMAC-SHA256 digests in SQLite under `settings.home_dir`.

A key reads `k2_<key_id>_<secret>`. `key_id` is public (it names the key in `list_keys`/`revoke_key` and logs);
the secret exists only in the string `create_key` returns, so a lost key is revoked and replaced, never recovered.
Keys carry 256 bits of randomness, so one HMAC round is enough (slow password hashes protect low-entropy input).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from k2.api.settings import KEYS_FILE
from k2.config import Settings
from k2.core.errors import UserError

_PREFIX = "k2"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    salt BLOB NOT NULL,
    digest BLOB NOT NULL,
    created_at TEXT NOT NULL,
    revoked_at TEXT,
    rate_limit_per_minute INTEGER
)"""
# Compared against when the key id is unknown, so a miss costs the same HMAC as a hit.
_DUMMY_SALT = secrets.token_bytes(16)


@dataclass(frozen=True)
class ApiKey:
    """What is known about a key besides its secret."""

    key_id: str
    name: str
    created_at: datetime
    revoked_at: datetime | None
    rate_limit_per_minute: int | None  # None: the server's default

    @property
    def active(self) -> bool:
        return self.revoked_at is None


def keys_path(settings: Settings) -> Path:
    return settings.home_dir / KEYS_FILE


@contextmanager
def _connect(path: Path) -> Iterator[sqlite3.Connection]:
    created = not path.exists()
    with closing(sqlite3.connect(path, timeout=10)) as con, con:
        if created:
            path.chmod(0o600)  # digests only, but still nobody else's business
        con.execute(_SCHEMA)
        yield con


def _digest(salt: bytes, key: str) -> bytes:
    return hmac.new(salt, key.encode(), hashlib.sha256).digest()


def _row_key(row: tuple) -> ApiKey:
    key_id, name, created, revoked, limit = row
    return ApiKey(
        key_id, name, datetime.fromisoformat(created), datetime.fromisoformat(revoked) if revoked else None, limit
    )


def create_key(settings: Settings, name: str, *, rate_limit_per_minute: int | None = None) -> str:
    """Make a key named `name` and return its plaintext: the only time it exists. Store it now; only a salted
    digest is kept. `rate_limit_per_minute` overrides the server default for this key.
    """
    if not name or not name.strip():
        raise UserError("a key needs a name, e.g. the person or service that will use it: k2 keys create research")
    if rate_limit_per_minute is not None and rate_limit_per_minute < 1:
        raise UserError(f"the rate limit is requests per minute, at least 1 (got {rate_limit_per_minute})")
    key_id = secrets.token_hex(6)
    key = f"{_PREFIX}_{key_id}_{secrets.token_urlsafe(32)}"
    salt = secrets.token_bytes(16)
    with _connect(keys_path(settings)) as con:
        con.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?)",
            (key_id, name.strip(), salt, _digest(salt, key), datetime.now(UTC).isoformat(), rate_limit_per_minute),
        )
    return key


def list_keys(settings: Settings) -> list[ApiKey]:
    """Every key ever made, revoked ones included (`active` tells them apart), oldest first."""
    with _connect(keys_path(settings)) as con:
        rows = con.execute(
            "SELECT key_id, name, created_at, revoked_at, rate_limit_per_minute FROM api_keys ORDER BY created_at"
        ).fetchall()
    return [_row_key(row) for row in rows]


def revoke_key(settings: Settings, key_id: str) -> bool:
    """Revoke the key `key_id` (as `list_keys` shows it; a full key is accepted too). False: no such active key.
    Takes effect on the next request: keys are checked against the file every time.
    """
    parts = key_id.split("_", 2)
    if len(parts) == 3 and parts[0] == _PREFIX:
        key_id = parts[1]
    with _connect(keys_path(settings)) as con:
        cursor = con.execute(
            "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL",
            (datetime.now(UTC).isoformat(), key_id),
        )
        return cursor.rowcount == 1


def verify_key(path: Path, presented: str) -> ApiKey | None:
    """The active key whose secret is `presented`, or None (unknown, malformed or revoked)."""
    parts = presented.split("_", 2)
    key_id = parts[1] if len(parts) == 3 and parts[0] == _PREFIX else ""
    with _connect(path) as con:
        row = con.execute(
            "SELECT key_id, name, created_at, revoked_at, rate_limit_per_minute, salt, digest FROM api_keys "
            "WHERE key_id = ?",
            (key_id,),
        ).fetchone()
    if row is None:
        hmac.compare_digest(_digest(_DUMMY_SALT, presented), _digest(_DUMMY_SALT, ""))
        return None
    *info, salt, digest = row
    if not hmac.compare_digest(_digest(salt, presented), digest):
        return None
    key = _row_key(tuple(info))
    return key if key.active else None

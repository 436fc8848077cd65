"""Secrets out of anything K2 prints or logs: passwords in URLs and values of secret-looking settings.

K2 takes credentials from configuration (K2_CATALOG_URI with a password, K2_SCHEMA_REGISTRY_URL with user:password,
SASL/SSL settings in K2_KAFKA_EXTRA, S3 keys); every repr, log line and error message that may hold them passes
through `redact`. The typed secrets (K2_KAFKA_SASL_PASSWORD, K2_SCHEMA_REGISTRY_PASSWORD, K2_S3_SECRET_ACCESS_KEY)
are SecretStr: masked in any repr, handed out only where a client is built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

MASK = "***"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<user>[^:/@\s]*):(?P<password>[^@/\s]+)@")
_SECRET_KEY = re.compile(r"(password|passwd|secret|token|credential|api[_.\-]?key|access[_.\-]?key|private)", re.I)
# "key": "value" / key=value pairs in JSON or librdkafka-style text whose key looks secret
_SECRET_PAIR = re.compile(
    r"""(?P<key>["']?[\w.\-]*(?:password|passwd|secret|token|credential|api[_.\-]?key|access[_.\-]?key|private)"""
    r"""[\w.\-]*["']?\s*[:=]\s*)(?P<quote>["']?)(?P<value>[^"',}\s]+)""",
    re.I,
)


# K2's API keys (k2.api.keys: k2_<key id>_<secret>) wherever they appear; the key id is no secret and stays
_API_KEY = re.compile(r"\b(?P<id>k2_[0-9a-f]{12}_)[A-Za-z0-9_\-]{16,}")


def redact(text: str) -> str:
    """`text` with URL passwords, K2 API keys and the values of secret-looking keys replaced by ***."""
    text = _URL_PASSWORD.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    text = _API_KEY.sub(lambda m: f"{m['id']}{MASK}", text)
    return _SECRET_PAIR.sub(lambda m: f"{m['key']}{m['quote']}{MASK}", text)


def redact_mapping(values: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `values` with secret-looking keys masked and URLs in the rest redacted."""
    return {
        key: MASK if _SECRET_KEY.search(key) else (redact(value) if isinstance(value, str) else value)
        for key, value in values.items()
    }

"""Credentials given to K2 never show in what it prints or logs."""

from __future__ import annotations

import pytest

from k2.config import Settings
from k2.redact import redact, redact_mapping

SECRETS = ["s3cr3t", "hunter2", "pw0rd", "AKIAXXXX", "sk-live-123"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("postgresql+psycopg2://k2:s3cr3t@db:5432/k2", "postgresql+psycopg2://k2:***@db:5432/k2"),
        ("https://user:pw0rd@registry.example/path", "https://user:***@registry.example/path"),
        ('{"sasl.password": "hunter2", "sasl.username": "k2"}', '{"sasl.password": "***", "sasl.username": "k2"}'),
        ("sasl.password=hunter2 security.protocol=SASL_SSL", "sasl.password=*** security.protocol=SASL_SSL"),
        (
            '{"s3.secret-access-key": "sk-live-123", "s3.endpoint": "http://127.0.0.1:9000"}',
            '{"s3.secret-access-key": "***", "s3.endpoint": "http://127.0.0.1:9000"}',
        ),
        ("no secrets here: http://127.0.0.1:8000/v1/trades", "no secrets here: http://127.0.0.1:8000/v1/trades"),
    ],
)
def test_redact_masks_passwords_and_secret_values_only(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_mapping_masks_secret_keys_and_urls() -> None:
    masked = redact_mapping(
        {"s3.access-key-id": "AKIAXXXX", "uri": "postgresql://a:s3cr3t@h/d", "type": "sql", "port": 5}
    )
    assert masked == {"s3.access-key-id": "***", "uri": "postgresql://a:***@h/d", "type": "sql", "port": 5}
    assert not any(secret in str(masked) for secret in SECRETS)


def test_settings_repr_shows_no_credentials() -> None:
    settings = Settings(
        catalog_uri="postgresql+psycopg2://k2:s3cr3t@db:5432/k2",
        kafka_extra={"security.protocol": "SASL_SSL", "sasl.password": "hunter2"},
        schema_registry_url="https://k2:pw0rd@registry.example",
    )
    shown = repr(settings)
    assert not any(secret in shown for secret in SECRETS), shown
    assert "postgresql+psycopg2://k2:***@db:5432/k2" in shown and "SASL_SSL" in shown
    assert settings.catalog_config["uri"] == "postgresql+psycopg2://k2:s3cr3t@db:5432/k2"  # the real value is kept


def test_k2_api_keys_are_masked_wherever_they_appear_but_keep_their_id() -> None:
    key = "k2_0afd971e71e9_" + "Ab-_9" * 9
    assert redact(f"GET /v1/trades?key={key}&symbol=BHP") == "GET /v1/trades?key=k2_0afd971e71e9_***&symbol=BHP"
    assert redact(f"X-API-Key: {key}") == "X-API-Key: ***"  # the header name looks secret: all of it goes

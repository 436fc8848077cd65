"""One typed Settings: every variable documented in the README, malformed values refused with the variable's name."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from k2.bus.clients import base_config
from k2.config import Settings, environment_variables, settings_table

# No K2_* of the machine; PYTHONPATH kept, so the subprocess imports the k2 under test.
_BARE_ENV = {"PATH": "/usr/bin:/bin", "PYTHONPATH": os.environ.get("PYTHONPATH", "")}
README = Path(__file__).resolve().parents[1] / "README.md"
TABLE = re.compile(r"<!-- settings-table:begin -->\n(.*?)<!-- settings-table:end -->", re.S)


def test_the_readme_table_is_the_one_generated_from_the_settings() -> None:
    match = TABLE.search(README.read_text())
    assert match is not None, "README.md lost its settings-table markers"
    assert match[1] == settings_table(), (
        "README.md's table is stale: paste `k2 settings --markdown` between the markers"
    )


def test_every_variable_the_product_reads_is_in_the_table() -> None:
    documented = {name for name, _, _ in environment_variables()}
    # Every K2_ name in the product's code is a documented setting (test-only knobs live in tests/).
    source = Path(__file__).resolve().parents[1] / "src" / "k2"
    mentioned = {m for path in source.rglob("*.py") for m in re.findall(r"\bK2_[A-Z0-9_]+[A-Z0-9]\b", path.read_text())}
    families = {name for name in mentioned if name.endswith("_")}  # K2_S3_, K2_API_: prefixes named in prose
    assert mentioned - families - documented == set()
    assert {"K2_HOME", "K2_API_RATE_LIMIT_PER_MINUTE", "K2_LOG_JSON", "K2_ASX_SAMPLE"} <= documented


def test_json_settings_are_typed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("K2_KAFKA_EXTRA", '{"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}')
    monkeypatch.setenv("K2_SHED_PRIORITIES", '{"Crypto/Binance": 2}')
    monkeypatch.setenv("K2_CATALOG_PROPERTIES", '{"type": "rest", "uri": "http://127.0.0.1:8181"}')
    monkeypatch.setenv("K2_API_RATE_LIMIT_PER_MINUTE", "7")
    monkeypatch.setenv("K2_LOG_LEVEL", "info")
    settings = Settings()
    assert settings.kafka_extra == {"security.protocol": "SASL_SSL", "sasl.password": "hunter2"}
    assert settings.shed_priorities == {"crypto/binance": 2}
    assert settings.catalog_config["uri"] == "http://127.0.0.1:8181"
    assert (settings.api.rate_limit_per_minute, settings.log.level) == (7, "INFO")
    assert "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("K2_KAFKA_EXTRA", "{not json", "error: K2_KAFKA_EXTRA: not valid JSON"),
        ("K2_SHED_PRIORITIES", '{"crypto/binance": 7}', "error: K2_SHED_PRIORITIES: Value error, must map"),
        ("K2_API_QUERY_WORKERS", "0", "error: K2_API_QUERY_WORKERS: Input should be greater than or equal to 1"),
    ],
)
def test_a_malformed_setting_is_one_line_naming_it_and_exit_2(variable: str, value: str, message: str) -> None:
    env = {**_BARE_ENV, variable: value}
    done = subprocess.run([sys.executable, "-m", "k2.cli", "settings"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    assert done.stderr.startswith(message)
    assert len(done.stderr.strip().splitlines()) == 1
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("variables", "line"),
    [
        (
            {"K2_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"},
            "error: K2_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs K2_KAFKA_SASL_USERNAME and K2_KAFKA_SASL_PASSWORD",
        ),
        (
            {"K2_SCHEMA_REGISTRY_PASSWORD": "hunter2"},
            "error: K2_SCHEMA_REGISTRY_USERNAME and K2_SCHEMA_REGISTRY_PASSWORD go together: set both",
        ),
        ({"K2_KAFKA_SSL_CA_LOCATION": "/nonexistent/ca.pem"}, "error: K2_KAFKA_SSL_CA_LOCATION: no such file"),
        ({"K2_KAFKA_SECURITY_PROTOCOL": "TLS"}, "error: K2_KAFKA_SECURITY_PROTOCOL: Input should be 'PLAINTEXT'"),
    ],
)
def test_incomplete_or_wrong_security_settings_are_one_line_and_exit_2(
    tmp_path: Path, variables: dict[str, str], line: str
) -> None:
    env = {**_BARE_ENV, "K2_HOME": str(tmp_path), **variables}
    done = subprocess.run([sys.executable, "-m", "k2.cli", "settings"], env=env, capture_output=True, text=True)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(line), done.stderr
    assert "hunter2" not in done.stdout + done.stderr


def test_typed_kafka_security_settings_become_librdkafka_settings_and_stay_out_of_reprs(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    settings = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="k2",
        kafka_sasl_password="hunter2",
        kafka_ssl_ca_location=ca,
        kafka_extra={"ssl.endpoint.identification.algorithm": "none"},
        schema_registry_username="k2",
        schema_registry_password="registry-hunter2",
    )
    config = base_config(settings, "broker:9093")
    assert {k: config[k] for k in ("security.protocol", "sasl.mechanism", "sasl.username", "sasl.password")} == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "k2",
        "sasl.password": "hunter2",
    }
    assert config["ssl.ca.location"] == str(ca)
    assert config["ssl.endpoint.identification.algorithm"] == "none"  # K2_KAFKA_EXTRA still applies, last
    assert settings.schema_registry_auth == ("k2", "registry-hunter2")
    assert "hunter2" not in repr(settings)
    assert Settings().kafka_security_config == {}  # PLAINTEXT: nothing added

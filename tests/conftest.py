"""Shared fixtures: the real sample data shipped in data/samples, and an isolated K2_HOME per test."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2.bus.apache_kafka import ApacheKafkaCluster
from k2.config import Settings
from k2.samples import ASX_SAMPLE
from tests.apache_kafka import empty
from tests.postgres import PostgresServer
from tests.s3 import S3Server


@pytest.fixture(scope="session")
def asx_sample() -> Path:
    """The ASX sample shipped in data/samples/asx (200,545 trades, 169,629 quotes)."""
    return ASX_SAMPLE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "faults: kill -9 drills over a million messages (minutes; run by `make faults`)")
    config.addinivalue_line(
        "markers", "spark: a real Spark JVM reads and writes K2's tables over REST and JDBC (`spark` extra, Java 17)"
    )
    config.addinivalue_line(
        "markers",
        "apache_kafka: starts Apache Kafka itself (needs a JDK and Maven; run with K2_TEST_BROKER=apache_kafka)",
    )


# K2_TEST_CATALOG=postgres runs every test that uses `settings` on a PostgreSQL SQL catalog (a database per test)
TEST_CATALOG = os.environ.get("K2_TEST_CATALOG", "sqlite")


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    # Not under pytest's tmp dir: that is private to root, and the server runs as the `postgres` user.
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="k2-pg-"))).start()
    try:
        yield server
    finally:
        server.stop()


# K2_TEST_WAREHOUSE=s3 puts the warehouse of every test that uses `settings` on a local S3 endpoint (s3rver, a bucket
# per test); it combines with K2_TEST_CATALOG.
TEST_WAREHOUSE = os.environ.get("K2_TEST_WAREHOUSE", "file")
S3_VARS = (
    "K2_S3_ENDPOINT",
    "K2_S3_ACCESS_KEY_ID",
    "K2_S3_SECRET_ACCESS_KEY",
    "K2_S3_SESSION_TOKEN",
    "K2_S3_REGION",
    "K2_S3_PATH_STYLE",
    "K2_BROKER_STORAGE",
    # the AWS_* fallbacks of the K2_S3_* settings: the machine's own must not leak into a test
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
)


# A machine's own Kafka/registry credentials must not reach a test's embedded, unsecured broker and registry.
SECURITY_VARS = (
    "K2_KAFKA_SECURITY_PROTOCOL",
    "K2_KAFKA_SASL_MECHANISM",
    "K2_KAFKA_SASL_USERNAME",
    "K2_KAFKA_SASL_PASSWORD",
    "K2_KAFKA_SSL_CA_LOCATION",
    "K2_SCHEMA_REGISTRY_USERNAME",
    "K2_SCHEMA_REGISTRY_PASSWORD",
    "K2_SCHEMA_REGISTRY_CA_LOCATION",
)


# K2_TEST_BROKER=apache_kafka points every test that uses `settings` at one Apache Kafka broker (KRaft, 127.0.0.1)
# started for the session, emptied before each test (tests/apache_kafka.py); it combines with the two above.
TEST_BROKER = os.environ.get("K2_TEST_BROKER", "tansu")
ON_APACHE_KAFKA = TEST_BROKER == "apache_kafka"
only_on_tansu = pytest.mark.skipif(ON_APACHE_KAFKA, reason="Tansu-specific: the broker is the session's Apache Kafka")
# Tests whose broker is incidental (the lake on S3, catalog races, the REST catalog, the dashboard's drawing) run once,
# on the embedded broker: on Apache Kafka they would cost minutes of CI and test nothing of the broker.
broker_incidental = pytest.mark.skipif(ON_APACHE_KAFKA, reason="the broker is incidental here: run on Tansu only")
# Likewise a test whose catalog and warehouse are incidental (a browser drawing what the API answers) runs on the
# default SQLite catalog and file warehouse only; the API over PostgreSQL and S3 has its own tests.
lake_incidental = pytest.mark.skipif(
    TEST_CATALOG != "sqlite" or TEST_WAREHOUSE != "file", reason="the catalog and warehouse are incidental here"
)


@pytest.fixture(scope="session")
def apache_kafka() -> Iterator[ApacheKafkaCluster]:
    root = Path(tempfile.mkdtemp(prefix="k2-kafka-"))
    try:
        with ApacheKafkaCluster(root) as cluster:
            yield cluster
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def s3() -> Iterator[S3Server]:
    server = S3Server(Path(tempfile.mkdtemp(prefix="k2-s3-"))).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """A fresh K2_HOME; also exported so subprocesses (`k2 sink`) see the same home and catalog."""
    return isolated_settings(tmp_path / "k2home", monkeypatch, request)


def isolated_settings(home: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """Settings for a fresh `home` on the catalog under test, exported to the environment through `monkeypatch`
    (a fixture of any scope may pass `pytest.MonkeyPatch.context()`)."""
    monkeypatch.setenv("K2_HOME", str(home))
    for var in (
        "K2_KAFKA_BOOTSTRAP",
        "K2_SCHEMA_REGISTRY_URL",
        "K2_CATALOG_URI",
        "K2_WAREHOUSE",
        *S3_VARS,
        *SECURITY_VARS,
    ):
        monkeypatch.delenv(var, raising=False)
    if TEST_CATALOG == "postgres":
        uri = request.getfixturevalue("postgres").create_database()
        monkeypatch.setenv("K2_CATALOG_URI", uri)
    if ON_APACHE_KAFKA:
        kafka: ApacheKafkaCluster = request.getfixturevalue("apache_kafka")
        empty(kafka.bootstrap)
        monkeypatch.setenv("K2_KAFKA_BOOTSTRAP", kafka.bootstrap)
    if TEST_WAREHOUSE == "s3":
        s3: S3Server = request.getfixturevalue("s3")
        for name, value in s3.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("K2_WAREHOUSE", f"s3://{s3.create_bucket()}/warehouse")
    # Built from the environment just exported, as a `k2` subprocess will build its own.
    return Settings(home=home)

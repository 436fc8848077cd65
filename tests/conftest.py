"""Shared fixtures: where the real sample data lives, and an isolated K2_HOME per test."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from k2.config import Settings
from tests.postgres import PostgresServer

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("K2_SHARED_DIR", REPO.parent / "shared"))
ASX_SAMPLE = SHARED / "data" / "asx-sample"


@pytest.fixture(scope="session")
def asx_sample() -> Path:
    if not ASX_SAMPLE.exists():
        pytest.fail(f"ASX sample not found at {ASX_SAMPLE}: set K2_SHARED_DIR to the folder holding data/")
    return ASX_SAMPLE


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "faults: kill -9 drills over a million messages (minutes; `make test` runs them once, on SQLite)"
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


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """A fresh K2_HOME; also exported so subprocesses (`k2 sink`) see the same home and catalog."""
    return isolated_settings(tmp_path / "k2home", monkeypatch, request)


def isolated_settings(home: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> Settings:
    """Settings for a fresh `home` on the catalog under test, exported to the environment through `monkeypatch`
    (a fixture of any scope may pass `pytest.MonkeyPatch.context()`)."""
    monkeypatch.setenv("K2_HOME", str(home))
    for var in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL", "K2_CATALOG_URI", "K2_WAREHOUSE"):
        monkeypatch.delenv(var, raising=False)
    if TEST_CATALOG == "postgres":
        uri = request.getfixturevalue("postgres").create_database()
        monkeypatch.setenv("K2_CATALOG_URI", uri)
        return Settings(home=home, catalog_uri=uri)
    return Settings(home=home)

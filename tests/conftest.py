"""Shared fixtures: where the real sample data lives, and an isolated K2_HOME per test."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from k2.config import Settings

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("K2_SHARED_DIR", REPO.parent / "shared"))
ASX_SAMPLE = SHARED / "data" / "asx-sample"


@pytest.fixture(scope="session")
def asx_sample() -> Path:
    if not ASX_SAMPLE.exists():
        pytest.fail(f"ASX sample not found at {ASX_SAMPLE}: set K2_SHARED_DIR to the folder holding data/")
    return ASX_SAMPLE


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A fresh K2_HOME; also exported so subprocesses (`k2 sink`) see the same home."""
    home = tmp_path / "k2home"
    monkeypatch.setenv("K2_HOME", str(home))
    for var in ("K2_KAFKA_BOOTSTRAP", "K2_SCHEMA_REGISTRY_URL", "K2_CATALOG_URI", "K2_WAREHOUSE"):
        monkeypatch.delenv(var, raising=False)
    return Settings(home=home)

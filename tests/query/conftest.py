"""A real SQLite catalog and file warehouse per test, with the K2 tables created (empty)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return open_catalog(Settings(home=tmp_path))


@pytest.fixture
def tables(catalog: Catalog) -> dict[str, Table]:
    return ensure_tables(catalog)

"""A real SQLite catalog and file warehouse per test, with the K2 tables created (empty); `live`: a real embedded
stack beside a lake (tests/query/live_stack.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pyiceberg.catalog import Catalog
from pyiceberg.table import Table

from k2.bus.registry_client import RegistryClient
from k2.bus.stack import Stack
from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from tests.query.live_stack import Live


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    return open_catalog(Settings(home=tmp_path))


@pytest.fixture
def tables(catalog: Catalog) -> dict[str, Table]:
    return ensure_tables(catalog)


@pytest.fixture
def live(settings: Settings) -> Iterator[Live]:
    stack = Stack(settings)
    with stack as endpoints, RegistryClient(endpoints.registry_url) as registry:
        yield Live(stack, endpoints, settings, registry)

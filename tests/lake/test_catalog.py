"""The catalog K2 opens is the one configured: SQLite under K2_HOME by default, PostgreSQL when asked."""

from __future__ import annotations

from sqlalchemy import create_engine, text

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_tables
from tests.conftest import TEST_CATALOG


def test_tables_are_created_in_the_configured_catalog(settings: Settings) -> None:
    ensure_tables(open_catalog(settings))
    uri = settings.catalog_config["uri"]
    assert uri.startswith("postgresql" if TEST_CATALOG == "postgres" else "sqlite")
    with create_engine(uri).connect() as conn:
        names = conn.execute(text("SELECT table_name FROM iceberg_tables ORDER BY table_name")).scalars().all()
    assert {"trades_v2", "quotes_v2", "reference_data_v2", "bars_v2", "stream_gaps"} <= set(names)

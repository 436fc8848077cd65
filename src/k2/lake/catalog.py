"""The Iceberg catalog K2 uses: SQLite under $K2_HOME by default, any pyiceberg catalog by configuration."""

from __future__ import annotations

from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog

from k2.config import Settings

NAMESPACE = "market_data"


def open_catalog(settings: Settings) -> Catalog:
    props = settings.catalog_config
    warehouse = props.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    return load_catalog(settings.catalog_name, **props)

"""The Iceberg catalog K2 uses: SQLite under $K2_HOME by default, any pyiceberg catalog by configuration."""

from __future__ import annotations

import random
import time
from pathlib import Path

from pyiceberg.catalog import Catalog, load_catalog
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

from k2.config import Settings

NAMESPACE = "market_data"

# Two processes creating the same catalog tables or namespace at once (two sink workers starting together on a
# fresh catalog) lose the race with these, not with pyiceberg's *AlreadyExists errors (SQLite even reports "table
# already exists" as an OperationalError).
CREATION_RACE_ERRORS = (IntegrityError, OperationalError, ProgrammingError)
_OPEN_ATTEMPTS = 4


def open_catalog(settings: Settings) -> Catalog:
    props = settings.catalog_config
    warehouse = props.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    for attempt in range(_OPEN_ATTEMPTS):
        try:
            return load_catalog(settings.catalog_name, **props)
        except CREATION_RACE_ERRORS:
            # Another process created the catalog tables between our "exists?" and our CREATE: the next attempt
            # finds them. A persistent error (bad permissions, say) still surfaces after the last attempt.
            if attempt == _OPEN_ATTEMPTS - 1:
                raise
            time.sleep(random.uniform(0.05, 0.2))
    raise AssertionError("unreachable")

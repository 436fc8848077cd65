"""The Iceberg catalog K2 uses: SQLite under $K2_HOME by default, any pyiceberg catalog by configuration.

The warehouse is a local directory by default or S3 (`K2_WAREHOUSE=s3://bucket/prefix`, endpoint and credentials
from k2.config); pyiceberg's pyarrow FileIO reads and writes it with the `s3.*` properties of the catalog config.
"""

from __future__ import annotations

import os
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

# Since early 2025 the AWS SDKs send every upload as aws-chunked with a trailing CRC checksum by default. S3-compatible
# stores that predate that (s3rver stores the chunk framing as the object's bytes, seen here with pyarrow 26) need the
# old behaviour: checksums only where an API requires them. AWS itself accepts both. The C++ SDK under pyarrow reads
# these when each S3 client is created; a value the user set is kept.
_COMPATIBLE_CHECKSUMS = {
    "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
    "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
}


def use_compatible_s3_checksums() -> None:
    """Make this process's pyarrow S3 clients talk to S3-compatible endpoints (see _COMPATIBLE_CHECKSUMS)."""
    for name, value in _COMPATIBLE_CHECKSUMS.items():
        os.environ.setdefault(name, value)


def open_catalog(settings: Settings) -> Catalog:
    props = settings.catalog_config
    warehouse = props.get("warehouse", "")
    if warehouse.startswith("file://"):
        Path(warehouse.removeprefix("file://")).mkdir(parents=True, exist_ok=True)
    if props.get("s3.endpoint"):
        use_compatible_s3_checksums()
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

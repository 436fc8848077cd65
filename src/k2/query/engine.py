"""The SQL engine behind `k2 sql`: DuckDB over the Iceberg tables, named as `market_data.<table>`.

Scan path: DuckDB's iceberg extension, loaded offline from the PyPI wheels (duckdb-extension-iceberg and
duckdb-extension-avro 1.5.5), reading each table's current metadata file with `iceberg_scan(...)`. It reads the
file:// tables pyiceberg writes to the SQLite catalog, prunes data files from the manifests' partition values and
column bounds (EXPLAIN ANALYZE reports "Total Files Read"), applies delete files and resolves columns by field id.
The other path, pyiceberg `plan_files()` -> `read_parquet([...])`, is not used: it ignores delete files and
(unless told not to) adds the hive path column timestamp_day to every table.

Measured here through this class (1 M trades in 10 files / 10 manifests, 2 cores): open 0.22 s (extension load),
refresh with nothing new 3 ms, one-day count 13 ms, 1-min OHLCV of a symbol-day 17 ms, last 1000 trades of a symbol
36 ms. iceberg_scan re-reads the manifests on every query, ~0.4 ms each: at 100 manifests a one-day count takes
~47 ms where read_parquet over pre-planned files takes 9 ms. Fewer, larger commits and compaction keep it fast.
"""

from __future__ import annotations

import importlib.util
import threading
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import duckdb
import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError

from k2.lake.catalog import NAMESPACE
from k2.lake.tables import table_identifier
from k2.schema.arrow import arrow_schema
from k2.schema.fields import ALL_RECORDS, RecordSpec

TABLES: tuple[str, ...] = tuple(table_identifier(spec) for spec in ALL_RECORDS)

# Holds the typed empty stand-ins for tables the catalog does not have yet.
_EMPTY_SCHEMA = "_k2_empty"

_TABLES_HINT = (
    f"Tables you can query: {', '.join(TABLES)}. "
    f"`DESCRIBE {TABLES[0]}` lists a table's columns; filter on `timestamp` ranges and `exchange` to read less."
)

_PARAMS_HINT = "Pass one value per `?` or `$1` placeholder as a list, or a dict for `$name` placeholders."


class QueryError(Exception):
    """The query could not run; the message says why and what to try next."""


def _extension_file(package: str, name: str) -> Path:
    """The extension binary shipped inside a PyPI wheel, for the DuckDB version that is installed."""
    wheel = f"{package.replace('_', '-')}=={duckdb.__version__}"
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise QueryError(f"the DuckDB {name} extension is not installed: pip install {wheel}")
    path = Path(spec.origin).parent / "extensions" / f"v{duckdb.__version__}" / f"{name}.duckdb_extension"
    if not path.exists():
        raise QueryError(f"no {name} extension for DuckDB {duckdb.__version__} at {path}: pip install {wheel}")
    return path


def _literal(text: str) -> str:
    """A SQL string literal; only for paths K2 itself supplies (DDL takes no bind parameters)."""
    return "'" + text.replace("'", "''") + "'"


class QueryEngine:
    """A DuckDB session where `market_data.trades_v2`, `market_data.quotes_v2` and `market_data.reference_data_v2`
    are views over the tables' current Iceberg snapshots.

    The views are fixed when the engine opens: call `refresh()` to see later commits. One query runs at a time
    (a lock serialises callers from several threads).
    """

    def __init__(self, catalog: Catalog) -> None:
        self._catalog = catalog
        self._lock = threading.Lock()
        self._locations: dict[str, str | None] = {}
        self._snapshot_ids: dict[str, int | None] = {}
        # No network ever: a missing extension must fail here, not hang on a download attempt.
        self._con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False})
        try:
            self._con.execute("SET TimeZone = 'UTC'")
            # LOAD from the file, not INSTALL: nothing is copied into ~/.duckdb. iceberg needs avro (manifests)
            # loaded first, or it tries to fetch it.
            for package, name in (("duckdb_extension_avro", "avro"), ("duckdb_extension_iceberg", "iceberg")):
                self._con.execute(f"LOAD {_literal(str(_extension_file(package, name)))}")
            self._con.execute(f"CREATE SCHEMA {NAMESPACE}")
            self._con.execute(f"CREATE SCHEMA {_EMPTY_SCHEMA}")
            self.refresh()
        except BaseException:
            self._con.close()
            raise

    @property
    def tables(self) -> tuple[str, ...]:
        """The names a query can use, e.g. `market_data.trades_v2`."""
        return TABLES

    @property
    def snapshot_ids(self) -> dict[str, int | None]:
        """Table name -> the Iceberg snapshot the views read (None: the table has no data yet)."""
        return dict(self._snapshot_ids)

    def refresh(self) -> None:
        """Re-point every view at its table's newest snapshot (tables that did not change are left alone)."""
        with self._lock:
            for spec in ALL_RECORDS:
                self._point_view(spec)

    def _point_view(self, spec: RecordSpec) -> None:
        try:
            table = self._catalog.load_table(table_identifier(spec))
        except NoSuchTableError:
            table = None
        location = table.metadata_location if table is not None else None
        if spec.name in self._locations and self._locations[spec.name] == location:
            return
        view = f"{NAMESPACE}.{spec.name}"
        try:
            if location is None:
                # Not created yet: an empty relation with the V2 columns, so queries still bind.
                self._con.register("_k2_arrow", arrow_schema(spec).empty_table())
                try:
                    self._con.execute(f"CREATE OR REPLACE TABLE {_EMPTY_SCHEMA}.{spec.name} AS SELECT * FROM _k2_arrow")
                finally:
                    self._con.unregister("_k2_arrow")
                self._con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM {_EMPTY_SCHEMA}.{spec.name}")
            else:
                # A table with no snapshot yet scans as empty with its schema's columns.
                self._con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM iceberg_scan({_literal(location)})")
        except duckdb.Error as exc:
            raise QueryError(f"cannot read the Iceberg metadata of {view} at {location}: {exc}") from exc
        self._locations[spec.name] = location
        self._snapshot_ids[spec.name] = table.metadata.current_snapshot_id if table is not None else None

    def sql(self, query: str, params: list[Any] | dict[str, Any] | None = None) -> pa.Table:
        """Run one query and return its result as an Arrow table.

        Values go in `params`, never into the query text: positional for `?` / `$1`, a dict for `$name`.
        Decimals come back as decimal128(18, 8) and timestamps as timestamp[us, tz=UTC].
        """
        with self._lock:
            try:
                return self._con.execute(query, params).to_arrow_table()
            except (duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException) as exc:
                raise QueryError(f"{exc}\n\n{_TABLES_HINT}") from exc
            except duckdb.Error as exc:
                if "parameter" in str(exc).lower():
                    raise QueryError(f"{exc}\n\n{_PARAMS_HINT}") from exc
                raise QueryError(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

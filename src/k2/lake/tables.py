"""Table definitions: market_data.{trades_v2,quotes_v2,reference_data_v2}, created by library code."""

from __future__ import annotations

import contextlib

import pyarrow as pa
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import CommitFailedException, NamespaceAlreadyExistsError, TableAlreadyExistsError
from pyiceberg.table import Table

from k2.lake.catalog import CREATION_RACE_ERRORS, NAMESPACE
from k2.schema.fields import ALL_RECORDS, RecordSpec
from k2.schema.iceberg import ROW_GROUP_ROWS, SORT_KEYS, iceberg_schema, partition_spec, sort_order

TABLE_PROPERTIES = {
    "write.format.default": "parquet",
    "write.parquet.compression-codec": "zstd",
    "format-version": "2",
    "write.parquet.row-group-limit": str(ROW_GROUP_ROWS),
}


def in_write_order(rows: pa.Table) -> pa.Table:
    """`rows` in the tables' sort order (k2.schema.iceberg.SORT_KEYS; nulls last), as every writer must append
    them: Iceberg does not apply the table's sort order on write (docs/stack-notes.md, "Iceberg")."""
    return rows.sort_by([(name, "ascending") for name in SORT_KEYS if name in rows.column_names])


def table_identifier(spec: RecordSpec) -> str:
    return f"{NAMESPACE}.{spec.name}"


def ensure_table(catalog: Catalog, spec: RecordSpec) -> Table:
    """Open the table for `spec`, creating namespace and table on first use (safe to race)."""
    with contextlib.suppress(NamespaceAlreadyExistsError, *CREATION_RACE_ERRORS):
        catalog.create_namespace(NAMESPACE)
    ident = table_identifier(spec)
    if catalog.table_exists(ident):
        return with_new_columns(catalog, catalog.load_table(ident), spec)
    try:
        return catalog.create_table(
            ident,
            schema=iceberg_schema(spec),
            partition_spec=partition_spec(spec),
            sort_order=sort_order(spec),
            properties=TABLE_PROPERTIES,
        )
    except TableAlreadyExistsError:
        return catalog.load_table(ident)


def with_new_columns(catalog: Catalog, table: Table, spec: RecordSpec) -> Table:
    """`table` with every column `spec` has gained since the table was made: only optional columns are ever added
    to a spec, so rows written before read them as null (safe to race: a writer that lost reloads)."""
    have = set(table.schema().column_names)
    if all(name in have for name in spec.field_names):
        return table
    try:
        with table.update_schema() as update:
            update.union_by_name(iceberg_schema(spec))
    except CommitFailedException:
        pass  # another writer added them first
    return catalog.load_table(table_identifier(spec))


def ensure_tables(catalog: Catalog) -> dict[str, Table]:
    return {spec.name: ensure_table(catalog, spec) for spec in ALL_RECORDS}

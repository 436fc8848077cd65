"""What the lake costs, from what was measured and stored: bytes per million records, compression, CPU per million.

Every figure is read, none estimated:
- records and stored bytes come from the manifests of each table's current snapshot (data files only);
- the compression ratio from the Parquet footers of those same files (column chunks' total_uncompressed_size over
  total_compressed_size, read through the table's FileIO, so it works on S3 too);
- CPU seconds from `k2.cpu-seconds` in the snapshot summaries the sink wrote; a lake whose appends carry no such
  figure reports "not measured" (None), never a guess. CPU per million is given for the lake as a whole only: one
  sink process decodes and writes every table, and each append carries the process's CPU since its previous append
  (of any table), so a per-table split would be an accident of commit order, not a measurement.
The monthly storage line is the one input from outside: a price per GB-month, printed as an assumption.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyiceberg.catalog import Catalog
from pyiceberg.exceptions import NoSuchTableError
from pyiceberg.table import Table
from pyiceberg.table.snapshots import Operation, Snapshot, ancestors_of
from rich.console import Console
from rich.table import Table as RichTable

from k2.lake.offsets import CPU_KEY
from k2.lake.tables import table_identifier
from k2.schema.fields import ALL_RECORDS, RecordSpec

# The sink's process CPU time for the rows of one append (k2.lake.sink).
# Iceberg's standard snapshot summary field: rows the snapshot added.
ADDED_RECORDS_KEY = "added-records"
# S3 Standard list price, us-east-1, first 50 TB (USD per GB-month): a default to be replaced by the caller's own.
DEFAULT_PRICE_PER_GB_MONTH = 0.023
DEFAULT_CURRENCY = "USD"
GB = 2**30
MILLION = 1_000_000
NOT_MEASURED = "not measured"


@dataclass(frozen=True)
class TableCost:
    """One table at its current snapshot. A None figure could not be computed (no rows, or nothing measured)."""

    table: str
    records: int
    data_files: int
    stored_bytes: int  # data files, as the manifests record their sizes
    uncompressed_bytes: int  # Parquet column chunks before the codec (footer: total_uncompressed_size)
    compressed_bytes: int  # the same column chunks after it (footer: total_compressed_size)
    codecs: list[str]
    cpu_seconds: float | None  # k2.cpu-seconds summed over the appends in the lineage that carry it (as recorded)
    cpu_records: int  # records those appends added
    appended_records: int  # records every append in the lineage added, measured or not

    @property
    def bytes_per_million(self) -> float | None:
        return self.stored_bytes / self.records * MILLION if self.records else None

    @property
    def compression_ratio(self) -> float | None:
        return self.uncompressed_bytes / self.compressed_bytes if self.compressed_bytes else None

    @classmethod
    def empty(cls, table: str) -> TableCost:
        """A table not created yet, or with no snapshot."""
        return cls(table, 0, 0, 0, 0, 0, [], None, 0, 0)

    def to_dict(self) -> dict[str, Any]:
        derived = ("bytes_per_million", "compression_ratio")
        return asdict(self) | {name: getattr(self, name) for name in derived}


@dataclass(frozen=True)
class CostReport:
    """Per table and in total; `monthly_storage_cost` = stored bytes / GB * price_per_gb_month."""

    tables: list[TableCost]
    price_per_gb_month: float = DEFAULT_PRICE_PER_GB_MONTH
    currency: str = DEFAULT_CURRENCY
    assumptions: list[str] = field(default_factory=list)

    @property
    def total(self) -> TableCost:
        cpu = [t.cpu_seconds for t in self.tables if t.cpu_seconds is not None]
        return TableCost(
            table="total",
            records=sum(t.records for t in self.tables),
            data_files=sum(t.data_files for t in self.tables),
            stored_bytes=sum(t.stored_bytes for t in self.tables),
            uncompressed_bytes=sum(t.uncompressed_bytes for t in self.tables),
            compressed_bytes=sum(t.compressed_bytes for t in self.tables),
            codecs=sorted({c for t in self.tables for c in t.codecs}),
            cpu_seconds=sum(cpu) if cpu else None,
            cpu_records=sum(t.cpu_records for t in self.tables),
            appended_records=sum(t.appended_records for t in self.tables),
        )

    @property
    def cpu_seconds_per_million(self) -> float | None:
        """Measured CPU seconds over the records the measured appends added, times a million (None: not measured)."""
        total = self.total
        if total.cpu_seconds is None or not total.cpu_records:
            return None
        return total.cpu_seconds / total.cpu_records * MILLION

    def monthly_storage_cost(self, table: TableCost) -> float:
        return table.stored_bytes / GB * self.price_per_gb_month

    def to_dict(self) -> dict[str, Any]:
        rows = [*self.tables, self.total]
        return {
            "tables": [t.to_dict() | {"monthly_storage_cost": self.monthly_storage_cost(t)} for t in rows],
            "cpu_seconds_per_million": self.cpu_seconds_per_million,
            "price_per_gb_month": self.price_per_gb_month,
            "currency": self.currency,
            "assumptions": self.assumptions,
        }


def _footer_sizes(table: Table, paths: Iterable[str]) -> tuple[int, int, set[str]]:
    """(uncompressed, compressed) column-chunk bytes summed over every row group of these Parquet files, and the
    codecs they use. Only the footers are read."""
    uncompressed = compressed = 0
    codecs: set[str] = set()
    for path in paths:
        with table.io.new_input(path).open(seekable=True) as stream:
            metadata = pq.read_metadata(stream)
        for g in range(metadata.num_row_groups):
            group = metadata.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                uncompressed += chunk.total_uncompressed_size
                compressed += chunk.total_compressed_size
                codecs.add(chunk.compression)
    return uncompressed, compressed, codecs


def _cpu(snapshots: Iterable[Snapshot]) -> tuple[float | None, int, int]:
    """(CPU seconds, records they cover, records all appends added) over the appends among `snapshots`. Compaction
    and deletes rewrite rows the sink already paid for, so only appends count."""
    cpu: float | None = None
    covered = appended = 0
    for snapshot in snapshots:
        if snapshot.summary is None or snapshot.summary.operation != Operation.APPEND:
            continue
        summary = snapshot.summary.additional_properties
        added = int(summary.get(ADDED_RECORDS_KEY, "0"))
        appended += added
        if CPU_KEY in summary:
            cpu = (cpu or 0.0) + float(summary[CPU_KEY])
            covered += added
    return cpu, covered, appended


def table_cost(table: Table, name: str) -> TableCost:
    """The cost figures of one pyiceberg table at its current snapshot."""
    snapshot = table.current_snapshot()
    if snapshot is None:
        return TableCost.empty(name)
    files = table.inspect.data_files(snapshot.snapshot_id)
    uncompressed, compressed, codecs = _footer_sizes(table, files.column("file_path").to_pylist())
    cpu, covered, appended = _cpu(ancestors_of(snapshot, table.metadata))
    return TableCost(
        table=name,
        records=pc.sum(files.column("record_count")).as_py() or 0,
        data_files=files.num_rows,
        stored_bytes=pc.sum(files.column("file_size_in_bytes")).as_py() or 0,
        uncompressed_bytes=uncompressed,
        compressed_bytes=compressed,
        codecs=sorted(codecs),
        cpu_seconds=cpu,
        cpu_records=covered,
        appended_records=appended,
    )


def assumptions(report_tables: list[TableCost], price_per_gb_month: float, currency: str) -> list[str]:
    """What a reader must know to use the figures: where each comes from and what it leaves out."""
    notes = [
        "Records and stored bytes: data files of each table's current snapshot, from its manifests. Manifests, "
        "metadata files, files kept only for time travel (older snapshots), Kafka logs and the DLQ are not counted.",
        "Compression ratio: Parquet column chunks' total_uncompressed_size / total_compressed_size, summed over the "
        "row groups in those files' footers. 'Uncompressed' is the encoded pages before the codec, so savings from "
        "dictionary and run-length encoding are not in the ratio.",
        f"CPU seconds per million: {CPU_KEY} from the snapshot summaries, summed over every table's appends, per "
        "million records those appends added. Each append records the sink process's CPU time since its previous "
        "append of any table (so the last append's own Parquet write is not counted); that is why only the total "
        "is given, not a per-table split. Under `k2 load` / `k2 stream` the source and producer run in the sink's "
        "process and are included; the Kafka broker is another process and is not. "
        f"Appends without {CPU_KEY} are {NOT_MEASURED!r} and left out of the ratio.",
        f"Storage cost: stored bytes / 2^30 x {price_per_gb_month:g} {currency} per GB-month "
        "(default: S3 Standard list price, us-east-1, first 50 TB; pass your own price). Requests, transfer and "
        "replication are not included.",
    ]
    if any(t.appended_records for t in report_tables) and all(t.cpu_seconds is None for t in report_tables):
        notes.append(
            f"CPU {NOT_MEASURED}: no append in this lake carries {CPU_KEY}, so there is no figure to report "
            "(the sink writes it from the version that records its CPU time on)."
        )
    partial = [t for t in report_tables if t.cpu_seconds is not None and t.cpu_records < t.appended_records]
    for t in partial:
        notes.append(
            f"{t.table}: CPU measured on {t.cpu_records:,} of {t.appended_records:,} appended records "
            "(earlier appends predate the measurement or were not written by the sink)."
        )
    return notes


def cost_report(
    catalog: Catalog,
    *,
    price_per_gb_month: float = DEFAULT_PRICE_PER_GB_MONTH,
    currency: str = DEFAULT_CURRENCY,
    specs: Iterable[RecordSpec] = ALL_RECORDS,
) -> CostReport:
    """The cost of every K2 table in `catalog` (tables not created yet report zeros), with the assumptions."""
    tables = []
    for spec in specs:
        name = table_identifier(spec)
        try:
            table = catalog.load_table(name)
        except NoSuchTableError:
            tables.append(TableCost.empty(name))
            continue
        tables.append(table_cost(table, name))
    return CostReport(tables, price_per_gb_month, currency, assumptions(tables, price_per_gb_month, currency))


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def render(report: CostReport, console: Console) -> None:
    """The report as a rich table (one row per table, then the total) followed by its assumptions."""
    grid = RichTable(title="K2 storage and ingest cost", title_justify="left")
    for header in ("table", "records", "data files", "stored", "per M records", "compression"):
        grid.add_column(header, justify="left" if header == "table" else "right")
    grid.add_column("CPU s / M records", justify="right")
    grid.add_column(f"{report.currency} / month", justify="right")
    rows = [*report.tables, report.total]
    for row in rows:
        per_million = row.bytes_per_million
        ratio = row.compression_ratio
        if row is rows[-1]:
            cpu = NOT_MEASURED if report.cpu_seconds_per_million is None else f"{report.cpu_seconds_per_million:,.2f}"
        else:
            cpu = NOT_MEASURED if row.cpu_seconds is None else "in total"
        grid.add_row(
            row.table,
            f"{row.records:,}",
            f"{row.data_files:,}",
            _size(row.stored_bytes),
            "-" if per_million is None else _size(per_million),
            "-" if ratio is None else f"{ratio:.2f}x {'/'.join(row.codecs)}",
            cpu,
            f"{report.monthly_storage_cost(row):.6f}",
            end_section=row is rows[-2],
        )
    console.print(grid)
    console.print("Assumptions:")
    for note in report.assumptions:
        console.print(f"  - {note}", highlight=False)

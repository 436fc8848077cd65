"""A table made before its spec gained optional columns gains them on open; its old rows read them as null."""

from __future__ import annotations

import dataclasses

import pyarrow as pa

from k2.config import Settings
from k2.lake.catalog import open_catalog
from k2.lake.tables import ensure_table
from k2.schema.arrow import records_to_arrow
from k2.schema.fields import STREAM_GAPS

ADDED = ("stream", "reason", "missing_from", "missing_to")
OLD_GAPS = dataclasses.replace(STREAM_GAPS, fields=tuple(f for f in STREAM_GAPS.fields if f.name not in ADDED))

ROW = {
    "message_id": "m1",
    "symbol": "BTCUSDT",
    "exchange": "binance",
    "asset_class": "crypto",
    "channel": "aggTrade",
    "first_missing": 5,
    "last_missing": 7,
    "missing_count": 3,
    "filled_count": 3,
    "status": "filled",
    "timestamp": 1_700_000_000_000_000,
    "detail": None,
}


def test_an_older_stream_gaps_table_gains_the_new_optional_columns(settings: Settings) -> None:
    catalog = open_catalog(settings)
    old = ensure_table(catalog, OLD_GAPS)
    old.append(records_to_arrow(OLD_GAPS, [ROW]))
    table = ensure_table(catalog, STREAM_GAPS)
    assert table.schema().column_names == STREAM_GAPS.field_names
    assert all(not table.schema().find_field(name).required for name in ADDED)
    new_row = ROW | {"message_id": "m2", "stream": "btcusdt@bookTicker", "reason": "disconnect"}
    new_row |= {"missing_from": 1_700_000_000_000_001, "missing_to": 1_700_000_000_500_000}
    table.append(records_to_arrow(STREAM_GAPS, [new_row]))
    rows = table.scan(selected_fields=("message_id", *ADDED)).to_arrow().sort_by("message_id")
    assert rows.to_pylist()[0] == {
        "message_id": "m1",
        "stream": None,
        "reason": None,
        "missing_from": None,
        "missing_to": None,
    }
    assert rows.column("missing_to").cast(pa.int64()).to_pylist() == [None, 1_700_000_000_500_000]
    assert ensure_table(catalog, STREAM_GAPS).schema() == table.schema()  # nothing more to add

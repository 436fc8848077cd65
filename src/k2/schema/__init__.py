"""The V2 schemas, defined once in k2.schema.fields; Avro, Arrow and Iceberg forms derive from them."""

from k2.schema.fields import (
    ALL_RECORDS,
    BOOK_DEPTH_V2,
    BOOK_SNAPSHOTS_V2,
    BOOK_UPDATES_V2,
    QUOTES_V2,
    RECORDS_BY_TYPE,
    REFERENCE_DATA_V2,
    TRADES_V2,
    AssetClass,
    BookSide,
    DataType,
    RecordSpec,
    Side,
)

__all__ = [
    "ALL_RECORDS",
    "BOOK_DEPTH_V2",
    "BOOK_SNAPSHOTS_V2",
    "BOOK_UPDATES_V2",
    "QUOTES_V2",
    "RECORDS_BY_TYPE",
    "REFERENCE_DATA_V2",
    "TRADES_V2",
    "AssetClass",
    "BookSide",
    "DataType",
    "RecordSpec",
    "Side",
]

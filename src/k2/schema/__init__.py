"""The V2 schemas, defined once in k2.schema.fields; Avro, Arrow and Iceberg forms derive from them."""

from k2.schema.fields import (
    ALL_RECORDS,
    QUOTES_V2,
    RECORDS_BY_TYPE,
    REFERENCE_DATA_V2,
    TRADES_V2,
    AssetClass,
    DataType,
    RecordSpec,
    Side,
)

__all__ = [
    "ALL_RECORDS",
    "QUOTES_V2",
    "RECORDS_BY_TYPE",
    "REFERENCE_DATA_V2",
    "TRADES_V2",
    "AssetClass",
    "DataType",
    "RecordSpec",
    "Side",
]

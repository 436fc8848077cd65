"""ASX equities files (trades, quotes, reference data) → V2 records: `AsxSource` is the source.

- `source`: `AsxSource`, the directory of vendor files → `SourceBatch`es (reference data first, then ticks).
- `reference`: company_info, dividends, mergers, stock_splits → reference_data_v2 records, and the company map.
- `rows`: the row parser, one tick file line by line; explains every odd row as a `Reject`.
- `columnar`: the fast path for tick files in the plain common shape, identical to the row parser's output.
- `rules`: what both tick parsers follow (dates, times, prices, quantities, message-id text, vendor_data keys).

Nothing here knows about Kafka or Iceberg.
"""

from k2.sources.asx.source import AsxSource

__all__ = ["AsxSource"]

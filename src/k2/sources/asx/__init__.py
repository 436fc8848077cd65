"""ASX equities files (trades, quotes, reference data) → V2 records: `AsxSource` is the source.

Nothing here knows about Kafka or Iceberg.
"""

from k2.sources.asx.rows import AsxSource

__all__ = ["AsxSource"]

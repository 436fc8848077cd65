"""What the engine has computed of single data files, kept: data files are never changed, only replaced by new
ones, so an answer about one file never goes stale and is worth keeping for as long as memory allows.

Two kinds, each a least-recently-used cache (cachetools): query results over one file (minute partials, newest
rows; `QueryEngine.file_fact`), bounded by their Arrow bytes, and each file's rows per symbol (every planned query
asks it of each candidate file), bounded by count. Not thread-safe: the engine calls it under the lock it holds
for its DuckDB connection anyway.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

import pyarrow as pa
from cachetools import LRUCache

# Bytes of per-file results kept (minute partials, newest rows): an API process's cache stays small.
FILE_FACT_BYTES_KEPT = 64 << 20
SYMBOL_COUNTS_KEPT = 16_384  # data files whose rows per symbol are kept; a few hundred bytes each
SYMBOL_COUNTS_QUERY = "SELECT symbol, count(*) AS n FROM read_parquet(?) WHERE symbol IS NOT NULL GROUP BY symbol"

# Runs SQL text with its parameters (the engine's DuckDB connection).
Run = Callable[[str, list[Any]], pa.Table]


class FileFacts:
    """Per-file query results and per-file symbol counts, computed by `run` on first use and kept."""

    def __init__(self, max_bytes: int = FILE_FACT_BYTES_KEPT, max_symbol_counts: int = SYMBOL_COUNTS_KEPT) -> None:
        # A result larger than the whole budget counts as the whole budget: it is kept alone (until the next one)
        # instead of being refused, so the newest answer is always at hand.
        self._facts: LRUCache[tuple[Any, ...], pa.Table] = LRUCache(
            maxsize=max_bytes, getsizeof=lambda table: min(table.nbytes, max_bytes)
        )
        self._symbol_counts: LRUCache[str, Mapping[str, int]] = LRUCache(maxsize=max_symbol_counts)

    def fact(self, path: str, query: str, params: Sequence[Any], run: Run) -> pa.Table:
        """`query` over the one data file `path` (its first `?`; `params` fill the rest), run once and kept.

        The least recently used results go first once they hold more than the byte budget. `query` must come from
        K2's own code: it is SQL text.
        """
        key = (path, query, *params)
        if (kept := self._facts.get(key)) is not None:  # get() marks it recently used
            return kept
        found = run(query, [path, *params])
        self._facts[key] = found
        return found

    def has_fact(self, path: str, query: str, params: Sequence[Any]) -> bool:
        """Whether `fact(path, query, params, ...)` is kept (answers without reading the file or touching the
        order in which results go)."""
        return (path, query, *params) in self._facts

    def symbol_counts(self, path: str, run: Run) -> Mapping[str, int]:
        """Rows per symbol in data file `path`: read once (its symbol column only), then kept as a mapping, so it
        is not rebuilt from Arrow per call."""
        if (kept := self._symbol_counts.get(path)) is not None:
            return kept
        counts = run(SYMBOL_COUNTS_QUERY, [path])
        found = MappingProxyType(dict(zip(counts.column(0).to_pylist(), counts.column(1).to_pylist(), strict=True)))
        self._symbol_counts[path] = found
        return found

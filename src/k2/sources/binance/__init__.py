"""Binance spot (and public-data futures files) → V2 records.

- `symbols`: exchangeInfo → quote asset per symbol (`SymbolDirectory`).
- `normalize`: WebSocket / REST payloads → trades_v2 and quotes_v2 record dicts, or a `Reject`.
- `capture`: reader for recorded cryptofeed sessions (`<time>: <frame>` lines), for the emulator and tests.
- `capture_source`: `CaptureSource`, a recorded capture's trades and quotes as data (`k2 load capture`).
- `files`: `BinanceFileSource` for data.binance.vision CSV/zip files (trades, aggTrades, klines → bars_v2).

Nothing here knows about Kafka or Iceberg.
"""

from k2.sources.binance.symbols import SymbolDirectory, SymbolInfo, UnknownSymbolError, shipped_directory

__all__ = ["SymbolDirectory", "SymbolInfo", "UnknownSymbolError", "shipped_directory"]

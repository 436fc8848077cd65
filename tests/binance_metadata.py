"""Symbol metadata for tests that load the data.binance.vision kline samples.

The shipped exchangeInfo recording lists 15 symbols; the kline samples' pairs are stated here as exchangeInfo lists
them (ADA/BTC, DOGE/USDT), the way a user passes a full exchangeInfo with `--exchange-info`.
"""

from __future__ import annotations

from k2.sources.binance.symbols import SymbolDirectory, SymbolInfo, shipped_directory

SAMPLE_PAIRS = SymbolDirectory(
    [
        *shipped_directory(),
        SymbolInfo("ADABTC", "ADA", "BTC", "TRADING"),
        SymbolInfo("DOGEUSDT", "DOGE", "USDT", "TRADING"),
    ]
)

"""Symbol metadata for tests that load the data.binance.vision kline samples.

The shipped exchangeInfo excerpt lists 20 symbols (DOGEUSDT among them) but not ADABTC: that pair is stated here as
exchangeInfo lists it (ADA/BTC), the way a user passes a full exchangeInfo with `--exchange-info`.
"""

from __future__ import annotations

from k2.sources.binance.symbols import SymbolDirectory, SymbolInfo, shipped_directory

SAMPLE_PAIRS = SymbolDirectory([*shipped_directory(), SymbolInfo("ADABTC", "ADA", "BTC", "TRADING")])

"""Symbol metadata for tests that load the data.binance.vision kline samples.

The shipped exchangeInfo excerpt lists both kline sample pairs (ADABTC as ADA/BTC, DOGEUSDT as DOGE/USDT), so the
samples load with the metadata `k2 load binance-files` uses by default.
"""

from __future__ import annotations

from k2.sources.binance.symbols import shipped_directory

SAMPLE_PAIRS = shipped_directory()

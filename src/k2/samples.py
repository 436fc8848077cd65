"""The sample data that ships with the repository (data/samples/, each source with its licence and attribution).

`make run`, `k2 up`, the Binance emulator, the tests and the benchmarks read these files, so a clone runs with
nothing beside it. They live at the top of the repository, not inside the package: a wheel stays small, and an
installed K2 is given its input files explicitly (`k2 load asx DIR`, `k2 up --asx DIR`, `--capture FILE`).
"""

from __future__ import annotations

from pathlib import Path

SAMPLES_DIR = Path(__file__).resolve().parents[2] / "data" / "samples"

# data/samples/asx/README.md: four ASX companies, 10-14 March 2014; 200,545 trades and 169,629 quotes.
ASX_SAMPLE = SAMPLES_DIR / "asx"

BINANCE_SAMPLES = SAMPLES_DIR / "binance"
# The two recorded combined streams (data/samples/binance/README.md): BTCUSDT/ETHUSDT/DOTUSDT aggTrades, depth and
# klines over 92 s; then NKNUSDT/BLZETH/LRCBTC/RUNEEUR bookTickers (the only recorded quotes) over 30 s.
BINANCE_CAPTURE_2021_04_04 = BINANCE_SAMPLES / "cryptofeed-ws-capture-2021-04-04" / "BINANCE-ee25be.0"
BINANCE_CAPTURE_2021_10_12 = BINANCE_SAMPLES / "cryptofeed-ws-capture-2021-10-12" / "BINANCE.ws.1.0"
BINANCE_DEPTH_SNAPSHOTS_2021_10_12 = BINANCE_SAMPLES / "cryptofeed-ws-capture-2021-10-12" / "BINANCE.http.0.0"
# A symbol-filtered cut of the exchangeInfo response recorded at the start of the 2021-10-12 session.
BINANCE_EXCHANGE_INFO = BINANCE_SAMPLES / "cryptofeed-ws-capture-2021-10-12" / "exchangeInfo.2021-10-12.excerpt.json"
BINANCE_REST_RESPONSES = BINANCE_SAMPLES / "rest-responses"
BINANCE_PUBLIC_DATA = BINANCE_SAMPLES / "data-binance-vision"

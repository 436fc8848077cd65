"""Binance symbols → base asset, quote asset and trading status, from a recorded `GET /api/v3/exchangeInfo`.

The quote asset is the currency of every price on a symbol (BTCUSDT prices are in USDT), so each normaliser asks a
`QuoteResolver` for it. `SymbolDirectory` answers from exchangeInfo; `SuffixQuotes` guesses from the symbol's
ending for backfill files read without exchangeInfo at hand.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import orjson

UNKNOWN_SYMBOL = "unknown_symbol"  # the Reject reason for a symbol no resolver knows


class UnknownSymbolError(KeyError):
    """A symbol that is not in the directory; `reason` is the Reject reason code."""

    reason = UNKNOWN_SYMBOL

    def __init__(self, symbol: str, detail: str) -> None:
        super().__init__(symbol)
        self.symbol = symbol
        self.detail = detail

    def __str__(self) -> str:
        return self.detail


class QuoteResolver(Protocol):
    """Anything that names the quote asset of a symbol, raising UnknownSymbolError when it cannot."""

    def quote_asset(self, symbol: str) -> str: ...


@dataclass(frozen=True)
class SymbolInfo:
    symbol: str
    base_asset: str
    quote_asset: str
    status: str  # TRADING, BREAK, HALT, ... as exchangeInfo says


class SymbolDirectory:
    """Symbols of one exchangeInfo response. Lookups are exact (Binance symbols are upper case in every payload)."""

    def __init__(self, infos: Iterable[SymbolInfo], source: str = "exchangeInfo") -> None:
        self._infos = {info.symbol: info for info in infos}
        self.source = source

    @classmethod
    def from_json(cls, raw: bytes | str, source: str = "exchangeInfo") -> SymbolDirectory:
        """Build from the exchangeInfo body; ValueError naming the problem if it is not one."""
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise ValueError(f"{source}: not JSON ({exc})") from None
        symbols = body.get("symbols") if isinstance(body, dict) else None
        if not isinstance(symbols, list):
            raise ValueError(f"{source}: no 'symbols' list; expected a GET /api/v3/exchangeInfo response body")
        infos = []
        for n, item in enumerate(symbols):
            try:
                infos.append(SymbolInfo(item["symbol"], item["baseAsset"], item["quoteAsset"], item["status"]))
            except (KeyError, TypeError):
                raise ValueError(f"{source}: symbols[{n}] lacks symbol/baseAsset/quoteAsset/status") from None
        return cls(infos, source)

    @classmethod
    def from_file(cls, path: Path | str) -> SymbolDirectory:
        path = Path(path)
        return cls.from_json(path.read_bytes(), source=str(path))

    def __len__(self) -> int:
        return len(self._infos)

    def __iter__(self) -> Iterator[SymbolInfo]:
        return iter(self._infos.values())

    def __contains__(self, symbol: object) -> bool:
        return symbol in self._infos

    def get(self, symbol: str) -> SymbolInfo | None:
        return self._infos.get(symbol)

    def __getitem__(self, symbol: str) -> SymbolInfo:
        info = self._infos.get(symbol)
        if info is None:
            raise UnknownSymbolError(
                symbol,
                f"symbol {symbol!r} is not in {self.source} ({len(self._infos)} symbols);"
                " refresh exchangeInfo if Binance listed it since",
            )
        return info

    def quote_asset(self, symbol: str) -> str:
        return self[symbol].quote_asset


# Longest first, so FDUSD wins over USD and BUSD over USD. The list is the quote assets with the most spot pairs
# in the 2021-10-12 exchangeInfo (1,695 symbols) plus FDUSD (listed 2023); USD is for coin-margined futures.
COMMON_QUOTES: tuple[str, ...] = ("FDUSD", "USDT", "BUSD", "USDC", "BTC", "ETH", "BNB", "EUR", "TRY", "USD")
# Futures contract suffixes: BTCUSD_PERP (perpetual), BTCUSD_231229 (quarterly delivery).
_CONTRACT_SUFFIX = re.compile(r"_(?:PERP|\d{6})$")


def infer_quote_asset(symbol: str) -> str | None:
    """The quote asset by suffix (BTCUSDT → USDT, BTCUSD_PERP → USD), or None when no common quote fits."""
    pair = _CONTRACT_SUFFIX.sub("", symbol)
    for quote in COMMON_QUOTES:
        if pair.endswith(quote) and len(pair) > len(quote):
            return quote
    return None


class SuffixQuotes:
    """A QuoteResolver that guesses from the symbol's ending: used for files when no exchangeInfo is given.

    A guess can be wrong for an unusual pair (a base asset ending in a quote's letters); pass a SymbolDirectory
    for certainty.
    """

    def quote_asset(self, symbol: str) -> str:
        quote = infer_quote_asset(symbol)
        if quote is None:
            raise UnknownSymbolError(
                symbol,
                f"cannot tell the quote asset of {symbol!r} from its name (known endings: {', '.join(COMMON_QUOTES)});"
                " pass a SymbolDirectory built from exchangeInfo",
            )
        return quote

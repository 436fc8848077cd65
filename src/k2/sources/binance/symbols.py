"""Binance symbols → base asset, quote asset and trading status, from a `GET /api/v3/exchangeInfo` response.

The quote asset is the currency of every price on a symbol (BTCUSDT prices are in USDT), so each normaliser asks a
`QuoteResolver` for it. There is one source of that metadata, a `SymbolDirectory` built from an exchangeInfo
document: the live response (cached under $K2_HOME with its fetch time), or offline the recorded response shipped
in data/samples (`shipped_directory`). Nothing is guessed from a symbol's letters: BTCAUD is quoted in AUD and
ETHBRL in BRL because exchangeInfo says so, and a symbol exchangeInfo does not list is `unknown_symbol`.
"""

from __future__ import annotations

import gzip
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Protocol

import orjson

from k2.samples import BINANCE_EXCHANGE_INFO

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


def exchange_info_bytes(path: Path) -> bytes:
    """The bytes of an exchangeInfo body kept in a file; a `.gz` file (a full response is ~2 MB) is gunzipped."""
    raw = path.read_bytes()
    return gzip.decompress(raw) if path.suffix == ".gz" else raw


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
        """An exchangeInfo body saved as a file (see `exchange_info_bytes`)."""
        return cls.from_json(exchange_info_bytes(Path(path)), source=str(path))

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


@cache
def shipped_directory() -> SymbolDirectory:
    """The exchangeInfo recorded on 2021-10-12 that ships in data/samples: metadata when no live response is at hand."""
    return SymbolDirectory.from_file(BINANCE_EXCHANGE_INFO)


# A live response is saved as {"fetched_at_us": ..., "source": ..., "body": <exchangeInfo>}.
def save_exchange_info(path: Path, raw: bytes, source: str) -> SymbolDirectory:
    """Parse a freshly fetched exchangeInfo body and keep it at `path` with its fetch time (written atomically)."""
    directory = SymbolDirectory.from_json(raw, source=source)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    document = {"fetched_at_us": time.time_ns() // 1_000, "source": source, "body": orjson.Fragment(raw)}
    partial.write_bytes(orjson.dumps(document))
    partial.replace(path)
    return directory


def load_saved_exchange_info(path: Path) -> tuple[SymbolDirectory, int]:
    """The directory kept by `save_exchange_info` and when it was fetched (unix microseconds)."""
    try:
        document = orjson.loads(path.read_bytes())
        fetched_at = int(document["fetched_at_us"])
        body = orjson.dumps(document["body"])
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"{path}: not a saved exchangeInfo ({exc})") from None
    return SymbolDirectory.from_json(
        body, source=f"{document.get('source', 'exchangeInfo')} (saved {path})"
    ), fetched_at

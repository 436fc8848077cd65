"""Synthetic market: N symbols of bookTicker, trade and aggTrade frames at a steady rate, ids always increasing.

Ids start where a busy 2021 spot market was (aggregate ids ~6.6e8, raw trade ids ~7.6e8, book update ids ~9.9e9)
so clients exercise the same integer widths as with the captures.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from k2.sources.binance.emulator.feed import Hub


@dataclass(frozen=True, slots=True)
class SyntheticSpec:
    """``symbols`` names SYN0USDT, SYN1USDT, ...; ``rate`` is frames per second across all of them."""

    symbols: int = 3
    rate: float = 100.0
    seed: int = 0

    def names(self) -> list[str]:
        return [f"SYN{index}USDT" for index in range(self.symbols)]

    def exchange_info_symbols(self) -> list[dict[str, Any]]:
        """This market's own exchangeInfo entries: SYN<i> quoted in USDT, prices to 0.01 (as `_money` prints)."""
        return [
            {
                "symbol": f"SYN{index}USDT",
                "status": "TRADING",
                "baseAsset": f"SYN{index}",
                "quoteAsset": "USDT",
                "filters": [
                    {
                        "filterType": "PRICE_FILTER",
                        "minPrice": "0.01000000",
                        "maxPrice": "1000000.00000000",
                        "tickSize": "0.01000000",
                    },
                ],
                "permissions": ["SPOT"],
            }
            for index in range(self.symbols)
        ]


@dataclass(slots=True)
class _Market:
    symbol: str
    price: Decimal
    agg_id: int
    trade_id: int
    update_id: int
    trade_ms: int = 0  # the last trade time: Binance's trade times never go back as ids go up


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01000000')):f}"


def _book_ticker(market: _Market, rng: random.Random) -> dict[str, Any]:
    market.update_id += rng.randint(1, 5)
    spread = Decimal("0.01") * rng.randint(1, 3)
    return {
        "u": market.update_id,
        "s": market.symbol,
        "b": _money(market.price - spread),
        "B": f"{Decimal(rng.randint(1, 500000)) / 100000:.8f}",
        "a": _money(market.price + spread),
        "A": f"{Decimal(rng.randint(1, 500000)) / 100000:.8f}",
    }


def _agg_trade(market: _Market, rng: random.Random) -> dict[str, Any]:
    market.price = max(Decimal("1"), market.price + Decimal("0.01") * rng.randint(-20, 20))
    count = rng.choice((1, 1, 1, 2, 3))
    event_ms = int(time.time() * 1000)
    market.trade_ms = max(market.trade_ms, event_ms - rng.randint(0, 5))
    frame = {
        "e": "aggTrade",
        "E": event_ms,
        "s": market.symbol,
        "a": market.agg_id,
        "p": _money(market.price),
        "q": f"{Decimal(rng.randint(1, 100000) * count) / 100000:.8f}",
        "f": market.trade_id,
        "l": market.trade_id + count - 1,
        "T": market.trade_ms,
        "m": rng.random() < 0.5,
        "M": True,
    }
    market.agg_id += 1
    market.trade_id += count
    return frame


async def run_synthetic(hub: Hub, spec: SyntheticSpec) -> None:
    """Publish forever at ``spec.rate``: alternately a bookTicker update, or an aggTrade and its raw trades."""
    rng = random.Random(spec.seed)
    markets = [
        _Market(
            name,
            Decimal(rng.randint(100, 60000)),
            665_000_000 + i * 10**7,
            760_000_000 + i * 10**7,
            9_890_000_000 + i * 10**8,
        )
        for i, name in enumerate(spec.names())
    ]
    for market in markets:
        hub.symbols.add(market.symbol)
        hub.publish(f"{market.symbol.lower()}@bookTicker", _book_ticker(market, rng))
    loop = asyncio.get_running_loop()
    interval = 1.0 / spec.rate if spec.rate > 0 else 0.0
    next_at = loop.time()
    tick = 0
    while True:
        market = markets[tick % len(markets)]
        tick += 1
        stream = market.symbol.lower()
        if rng.random() < 0.5:
            hub.publish(f"{stream}@bookTicker", _book_ticker(market, rng))
            published = 1
        else:
            agg = _agg_trade(market, rng)
            hub.publish(f"{stream}@aggTrade", agg)
            first, last = agg["f"], agg["l"]
            for trade in hub.trades[market.symbol].from_id(first, last - first + 1):
                hub.publish(
                    f"{stream}@trade",
                    {
                        "e": "trade",
                        "E": agg["E"],
                        "s": market.symbol,
                        "t": trade["id"],
                        "p": trade["price"],
                        "q": trade["qty"],
                        "T": trade["time"],
                        "m": trade["isBuyerMaker"],
                        "M": True,
                    },
                )
            published = 2 + last - first
        next_at += interval * published
        delay = next_at - loop.time()
        await asyncio.sleep(delay if delay > 0 else 0)

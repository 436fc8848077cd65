"""Synthetic market: N symbols of bookTicker, trade and aggTrade frames at a steady rate, ids always increasing.

Ids start where a busy 2021 spot market was (aggregate ids ~6.6e8, raw trade ids ~7.6e8, book update ids ~9.9e9)
so clients exercise the same integer widths as with the captures.

Each symbol has an order book: every bookTicker step is one book update event (a range of update ids, as on the
venue) that moves the best levels to the ticker's and changes one deeper level; the bookTicker is the book's top
after it. Once a client subscribes to a symbol's diff depth stream (@depth or @depth@100ms), the book is handed to
the hub as a snapshot at its current update id and every later event is published as a depthUpdate, so the hub's
book (and so GET /api/v3/depth) follows the replay exactly and a client's diffs continue that snapshot. Before that
no depth is published: a market nobody reads the depth of costs nothing for it.
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
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
    bids: dict[Decimal, Decimal] = field(default_factory=dict)
    asks: dict[Decimal, Decimal] = field(default_factory=dict)
    depth_published: bool = False  # the hub holds this book and every event since goes out as a depthUpdate


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01000000')):f}"


_TICK = Decimal("0.01")
_BOOK_LEVELS = 40  # per side; the deepest level goes when a new one would make more


def _quantity(rng: random.Random) -> Decimal:
    return Decimal(rng.randint(1, 500000)) / 100000


def _levels(changes: dict[Decimal, Decimal]) -> list[list[str]]:
    return [[_money(price), f"{quantity:.8f}"] for price, quantity in changes.items()]


def _seed_book(market: _Market, rng: random.Random) -> None:
    for level in range(1, _BOOK_LEVELS // 2 + 1):
        market.bids[market.price - _TICK * level] = _quantity(rng)
        market.asks[market.price + _TICK * level] = _quantity(rng)


def _book_event(market: _Market, rng: random.Random) -> tuple[dict[str, Any], dict[str, Any]]:
    """One book update event: (its depthUpdate, the bookTicker of the book after it)."""
    first = market.update_id + 1
    market.update_id += rng.randint(1, 5)
    spread = _TICK * rng.randint(1, 3)
    bid, ask = market.price - spread, market.price + spread
    bid_changes = {price: Decimal(0) for price in market.bids if price > bid}
    ask_changes = {price: Decimal(0) for price in market.asks if price < ask}
    bid_changes[bid], ask_changes[ask] = _quantity(rng), _quantity(rng)
    deeper = rng.randint(1, _BOOK_LEVELS // 2)
    if rng.random() < 0.5:
        bid_changes[bid - _TICK * deeper] = _quantity(rng) if rng.random() < 0.8 else Decimal(0)
    else:
        ask_changes[ask + _TICK * deeper] = _quantity(rng) if rng.random() < 0.8 else Decimal(0)
    for side, changes, deepest in ((market.bids, bid_changes, min), (market.asks, ask_changes, max)):
        for price, quantity in changes.items():
            if quantity:
                side[price] = quantity
            else:
                side.pop(price, None)
        while len(side) > _BOOK_LEVELS:
            gone = deepest(side)
            del side[gone]
            changes[gone] = Decimal(0)
    diff = {
        "e": "depthUpdate",
        "E": int(time.time() * 1000),
        "s": market.symbol,
        "U": first,
        "u": market.update_id,
        "b": _levels(bid_changes),
        "a": _levels(ask_changes),
    }
    ticker = {
        "u": market.update_id,
        "s": market.symbol,
        "b": _money(bid),
        "B": f"{market.bids[bid]:.8f}",
        "a": _money(ask),
        "A": f"{market.asks[ask]:.8f}",
    }
    return diff, ticker


def _snapshot(market: _Market) -> dict[str, Any]:
    """The book as GET /api/v3/depth answers it: best first."""
    return {
        "lastUpdateId": market.update_id,
        "bids": _levels({price: market.bids[price] for price in sorted(market.bids, reverse=True)}),
        "asks": _levels({price: market.asks[price] for price in sorted(market.asks)}),
    }


def _depth_streams(symbol: str) -> tuple[str, str]:
    stream = symbol.lower()
    return f"{stream}@depth@100ms", f"{stream}@depth"


def _publish_book_event(hub: Hub, market: _Market, rng: random.Random) -> int:
    """One book event as a bookTicker, and as a depthUpdate on the diff depth streams once one was subscribed to;
    the number of frames published."""
    streams = _depth_streams(market.symbol)
    if not market.depth_published and any(hub.subscribers.get(name) for name in streams):
        hub.add_snapshot(market.symbol, _snapshot(market))  # the book before this event, which its diff continues
        market.depth_published = True
    diff, ticker = _book_event(market, rng)
    published = 1
    if market.depth_published:
        for name in streams:
            hub.publish(name, diff)  # to the hub's book the second is stale: the first moved it
        published += len(streams)
    hub.publish(f"{market.symbol.lower()}@bookTicker", ticker)
    return published


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
    """Publish forever at ``spec.rate``: alternately a book event (bookTicker, depthUpdates), or an aggTrade and its
    raw trades."""
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
        _seed_book(market, rng)
        _publish_book_event(hub, market, rng)
    loop = asyncio.get_running_loop()
    interval = 1.0 / spec.rate if spec.rate > 0 else 0.0
    next_at = loop.time()
    tick = 0
    while True:
        market = markets[tick % len(markets)]
        tick += 1
        stream = market.symbol.lower()
        if rng.random() < 0.5:
            published = _publish_book_event(hub, market, rng)
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

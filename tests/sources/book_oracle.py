"""An independent order-book reconstruction from the capture files, for checking K2's: no K2 code at all.

It reads the capture lines itself (`<time>: <frame>` and `<url> -> <time>: <body>`), keeps each side as a plain
dict {Decimal price: Decimal quantity}, and applies Binance's rules written out again: drop diffs with
u <= lastUpdateId, the first one applied has U <= lastUpdateId + 1 <= u, every next one U == previous u + 1.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


@dataclass
class OracleDiff:
    symbol: str
    first: int
    last: int
    event_ms: int
    bids: list[tuple[Decimal, Decimal]]
    asks: list[tuple[Decimal, Decimal]]


@dataclass
class OracleSnapshot:
    symbol: str
    last_update_id: int
    bids: dict[Decimal, Decimal]
    asks: dict[Decimal, Decimal]
    received_us: int = 0


def _micros(seconds_text: str) -> int:
    whole, _, fraction = seconds_text.partition(".")
    return int(whole) * 1_000_000 + int(fraction[:6].ljust(6, "0"))


def _pairs(rows: list) -> list[tuple[Decimal, Decimal]]:
    return [(Decimal(row[0]), Decimal(row[1])) for row in rows]


def read_depth(*paths: Path) -> tuple[dict[str, list[OracleDiff]], dict[str, list[OracleSnapshot]]]:
    """Per symbol: the depth diffs in file order, and the REST depth snapshots."""
    diffs: dict[str, list[OracleDiff]] = {}
    snapshots: dict[str, list[OracleSnapshot]] = {}
    for path in paths:
        for line in path.read_text().splitlines():
            head, sep, rest = line.partition(": ")
            if not sep:
                continue
            if " -> " in head:
                url, received = head.split(" -> ")
                body = json.loads(rest)
                symbol = parse_qs(urlsplit(url).query)["symbol"][0]
                bids, asks = dict(_pairs(body["bids"])), dict(_pairs(body["asks"]))
                snap = OracleSnapshot(symbol, body["lastUpdateId"], bids, asks, _micros(received))
                snapshots.setdefault(symbol, []).append(snap)
                continue
            frame = json.loads(rest)
            data = frame.get("data", frame)
            if data.get("e") == "depthUpdate":
                diff = OracleDiff(data["s"], data["U"], data["u"], data["E"], _pairs(data["b"]), _pairs(data["a"]))
                diffs.setdefault(diff.symbol, []).append(diff)
    return diffs, snapshots


def _apply(side: dict[Decimal, Decimal], levels: list[tuple[Decimal, Decimal]]) -> None:
    for price, quantity in levels:
        if quantity == 0:
            side.pop(price, None)
        else:
            side[price] = quantity


def replay(snapshot: OracleSnapshot, diffs: Sequence[OracleDiff]) -> Iterator[tuple[OracleDiff, dict, dict]]:
    """The book after each diff applied over `snapshot` (the same two dicts, changed in place, each time)."""
    bids, asks = dict(snapshot.bids), dict(snapshot.asks)
    previous = None
    for diff in diffs:
        if diff.last <= snapshot.last_update_id:
            continue
        if previous is None:
            assert diff.first <= snapshot.last_update_id + 1 <= diff.last, "the snapshot is not bridged"
        else:
            assert diff.first == previous + 1, f"diff {diff.first}-{diff.last} does not follow {previous}"
        _apply(bids, diff.bids)
        _apply(asks, diff.asks)
        previous = diff.last
        yield diff, bids, asks

"""Hand-made V2 trades and quotes for query tests, and appending them the way the sink does (sorted by time)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from pyiceberg.table import Table

from k2.lake.tables import in_write_order
from k2.schema.arrow import records_to_arrow
from k2.schema.codecs import micros_from_datetime
from k2.schema.fields import QUOTES_V2, TRADES_V2, RecordSpec

MONDAY = datetime(2024, 3, 4, tzinfo=UTC)
TEN = MONDAY + timedelta(hours=10)


def at(hh: int, mm: int = 0, ss: int = 0, us: int = 0, *, day: int = 0) -> datetime:
    """A UTC instant on Monday 2024-03-04 (or `day` days later)."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm, seconds=ss, microseconds=us)


def _common(moment: datetime, symbol: str, exchange: str, seq: int | None, mid: str | None, kind: str) -> dict:
    ts = micros_from_datetime(moment)
    return {
        "message_id": mid or f"{kind}-{exchange}-{symbol}-{ts}-{seq}",
        "symbol": symbol,
        "exchange": exchange,
        "asset_class": "equities",
        "timestamp": ts,
        "currency": "AUD",
        "source_sequence": seq,
        "ingestion_timestamp": ts + 1_000,
        "platform_sequence": seq,
        "vendor_data": None,
    }


def trade(
    moment: datetime,
    price: str,
    quantity: str,
    seq: int | None,
    *,
    symbol: str = "BHP",
    exchange: str = "asx",
    mid: str | None = None,
    conditions: tuple[str, ...] = (),
    vendor: dict[str, str] | None = None,
) -> dict:
    return {
        **_common(moment, symbol, exchange, seq, mid, "t"),
        "trade_id": str(seq),
        "price": Decimal(price),
        "quantity": Decimal(quantity),
        "side": "UNKNOWN",
        "trade_conditions": list(conditions),
        "vendor_data": vendor,
    }


def quote(
    moment: datetime,
    bid: str | None,
    ask: str | None,
    seq: int | None,
    *,
    symbol: str = "BHP",
    exchange: str = "asx",
) -> dict:
    return {
        **_common(moment, symbol, exchange, seq, None, "q"),
        "quote_id": str(seq),
        "bid_price": None if bid is None else Decimal(bid),
        "bid_quantity": None if bid is None else Decimal(100),
        "ask_price": None if ask is None else Decimal(ask),
        "ask_quantity": None if ask is None else Decimal(200),
    }


def append(table: Table, spec: RecordSpec, rows: list[dict], summary: dict[str, str] | None = None) -> int:
    """Append like the sink (in the tables' write order) and return the new snapshot id."""
    arrow = in_write_order(records_to_arrow(spec, rows))
    table.append(arrow, snapshot_properties=summary or {})
    snapshot = table.current_snapshot()
    assert snapshot is not None
    return snapshot.snapshot_id


def append_trades(table: Table, rows: list[dict], summary: dict[str, str] | None = None) -> int:
    return append(table, TRADES_V2, rows, summary)


def append_quotes(table: Table, rows: list[dict]) -> int:
    return append(table, QUOTES_V2, rows)

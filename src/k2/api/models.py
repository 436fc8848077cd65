"""Response shapes for OpenAPI. Handlers return rendered bytes, so these document the JSON and never validate it.

Row models come from the V2 record specs (k2.schema.fields), so the documented fields cannot drift from the tables.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, Field, create_model

from k2.schema.fields import QUOTES_V2, TRADES_V2, Kind, RecordSpec

RowT = TypeVar("RowT")

_TYPES: dict[Kind, Any] = {
    Kind.STRING: str,
    Kind.LONG: int,
    Kind.BOOLEAN: bool,
    Kind.DECIMAL: str,
    Kind.TIMESTAMP: str,
    Kind.DATE: str,
    Kind.STRING_LIST: list[str],
    Kind.STRING_MAP: dict[str, str],
}
_NOTES = {
    Kind.DECIMAL: ' JSON: exact decimal text, e.g. "36.66700000".',
    Kind.TIMESTAMP: " JSON: ISO-8601 UTC with a Z, e.g. 2024-03-04T10:00:00.123456Z.",
}


def _row_model(spec: RecordSpec, title: str) -> type[BaseModel]:
    fields: dict[str, Any] = {}
    for f in spec.fields:
        kind = _TYPES[f.kind]
        fields[f.name] = (kind if f.required else kind | None, Field(description=f.doc + _NOTES.get(f.kind, "")))
    return create_model(title, __doc__=spec.doc, **fields)


TradeRow = _row_model(TRADES_V2, "TradeRow")
QuoteRow = _row_model(QUOTES_V2, "QuoteRow")


_PRICE = 'decimal(18,8) as exact text, e.g. "36.66700000"'


class BarRow(BaseModel):
    """One OHLCV bar computed from trades (k2.query.bars)."""

    symbol: str = Field(description="Instrument symbol as the venue lists it")
    exchange: str = Field(description="Venue code, lower case")
    timestamp: str = Field(
        description="Bar open, ISO-8601 UTC with a Z; a daily bar opens at its trading day's midnight (asx: Sydney)"
    )
    open: str = Field(description=f"First counted trade's price in event order; {_PRICE}")
    high: str = Field(description=f"Highest counted trade price; {_PRICE}")
    low: str = Field(description=f"Lowest counted trade price; {_PRICE}")
    close: str = Field(description=f"Last counted trade's price in event order; {_PRICE}")
    volume: str = Field(description="Sum of quantity, decimal(38,8) as exact text")
    vwap: str | None = Field(description="quote_volume / volume rounded half-even to 8 places; null with no volume")
    quote_volume: str = Field(description="Sum of price x quantity, exact, decimal(38,16) as text")
    trade_count: int = Field(description="Trades counted in the bar (0 for a gap-filled bar)")
    partial: bool = Field(
        description="True when the requested range cuts the bar (start after its open or end before its close):"
        " it then covers only part of its interval, under the whole bar's timestamp"
    )


class Envelope(BaseModel, Generic[RowT]):
    data: list[RowT] = Field(description="The rows; decimals and timestamps are strings so nothing rounds them")
    next_cursor: str | None = Field(
        default=None, description="Pass as `cursor` for the next page; null when there is nothing more"
    )
    snapshot_id: int | None = Field(
        default=None, description="The Iceberg snapshot read; pass as `as_of` to read exactly this data again"
    )


class Health(BaseModel):
    status: str = Field(description="`ok` (alive) or `ready` (catalog reachable and every table present)")
    tables: dict[str, int | None] | None = Field(
        default=None, description="On /ready: each table's current snapshot id (null: no data yet)"
    )


TradesEnvelope = Envelope[TradeRow]  # type: ignore[valid-type]
QuotesEnvelope = Envelope[QuoteRow]  # type: ignore[valid-type]
BarsEnvelope = Envelope[BarRow]
RowsEnvelope = Envelope[dict[str, Any]]

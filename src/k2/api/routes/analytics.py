"""Computed from trades: OHLCV bars at any interval from 1 s to 1 d, and the daily summary per symbol."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from k2.api.errors import ApiError, documented
from k2.api.formats import content_docs, negotiate, render
from k2.api.models import BarsEnvelope, RowsEnvelope
from k2.api.params import AsOfParam, End, Exchange, FormatParam, NameList, Start, parse_as_of, symbols_param
from k2.api.state import request_state
from k2.query.bars import NO_EXCLUSIONS, bars, parse_codes, parse_interval
from k2.query.summary import daily_summary
from k2.schema.fields import TRADES_V2

router = APIRouter(tags=["analytics"])

# Bars per series a gap-filled response may hold: a week of 10 s bars, a day of 1 s bars.
MAX_FILLED_BARS = 100_000

Accept = Annotated[str | None, Header(include_in_schema=False)]
Symbols = Annotated[list[str] | None, Depends(symbols_param)]
BarsTz = Annotated[
    str | None,
    Query(
        max_length=64,
        description="IANA zone whose midnight starts bars' days, e.g. UTC. Omit for each exchange's trading day"
        " (asx: Australia/Sydney, binance and others: UTC)",
    ),
]
ExcludeConditions = Annotated[
    NameList,
    Query(
        description="Trade condition codes left out of bars (not in OHLC, volume, vwap or trade_count),"
        f" comma-separated and/or repeated, e.g. 1,3,9; `{NO_EXCLUSIONS}` counts every trade. Omit for each"
        " exchange's default (asx: 1,3,9, the prints its files mark off-book with venue X; others: none)",
    ),
]
ExcludeVenues = Annotated[
    NameList,
    Query(
        description="Venue marks (vendor_data venue, e.g. X on ASX) whose trades are left out of bars,"
        " comma-separated and/or repeated. Omit to leave none out",
    ),
]
_ERRORS = documented(400, 401, 404, 406, 413, 414, 422, 429, 500, 504)


@router.get(
    "/bars",
    summary="OHLCV bars from trades",
    description=(
        "Per (symbol, exchange, bar): timestamp (bar open), open, high, low, close, volume, quote_volume, vwap,"
        " trade_count, partial, ordered by symbol, exchange, timestamp (k2.query.bars documents each column)."
        " Bars start at midnight of `tz`, by default each exchange's trading day (asx: Australia/Sydney, binance"
        " and others: UTC). Trades with a condition code in `exclude_conditions` (default: the exchange's, asx:"
        " 1,3,9, its off-book prints) or a venue in `exclude_venues` are left out of the bar entirely. `partial`"
        " is true for a bar the range cuts (start after its open, or end before its close). With `gap_fill`"
        " (needs start and end; at most 100000 bars per symbol), empty bars carry the previous close with volume 0."
    ),
    response_model=BarsEnvelope,
    responses={200: content_docs("Bars"), **_ERRORS},
)
async def get_bars(
    request: Request,
    symbols: Symbols,
    interval: Annotated[
        str,
        Query(
            max_length=8,
            pattern=r"^[1-9][0-9]*[smhd]$",
            description="Bar width: a number and s/m/h/d from 1s to 1d dividing a day, e.g. 1s, 1m, 15m, 1h, 1d",
        ),
    ] = "1m",
    start: Start = None,
    end: End = None,
    exchange: Exchange = None,
    gap_fill: Annotated[bool, Query(description="Add bars with no trades (previous close, volume 0)")] = False,
    tz: BarsTz = None,
    exclude_conditions: ExcludeConditions = None,
    exclude_venues: ExcludeVenues = None,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    if gap_fill:
        _check_gap_fill(interval, start, end)
    excluded = parse_codes(exclude_conditions, "exclude_conditions")
    excluded_venues = parse_codes(exclude_venues, "exclude_venues") or ()
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    table, snapshot = await state.read(
        TRADES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: bars(
            engine,
            symbols,
            interval,
            start,
            end,
            exchange=exchange,
            gap_fill=gap_fill,
            tz=tz,
            exclude_conditions=excluded,
            exclude_venues=excluded_venues,
            as_of=pinned,
        ),
    )
    return render(table, chosen, snapshot_id=snapshot)


def _check_gap_fill(interval: str, start: datetime | None, end: datetime | None) -> None:
    """Gap fill makes rows where no trade was, so the API bounds it up front (the library only when both ends are
    given, at a limit sized for research, not for a response).
    """
    if start is None or end is None:
        raise ApiError(400, "gap_fill needs both start and end: pass them, or drop gap_fill", code="invalid_query")
    per_series = (end - start) // parse_interval(interval).width
    if per_series > MAX_FILLED_BARS:
        raise ApiError(
            400,
            f"gap fill would make {per_series} bars per symbol (at most {MAX_FILLED_BARS}): use a longer interval or"
            " a shorter range",
            code="invalid_query",
        )


@router.get(
    "/summary/daily",
    summary="Daily open, high, low, close, volume, vwap and trade count per symbol",
    description=(
        "One row per (date, symbol, exchange) with trades in [start, end). Days are each exchange's trading days"
        " (asx: Australia/Sydney, so a session is one day; binance and others: UTC), or `tz` days when given."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("Daily summary rows"), **_ERRORS},
)
async def get_daily_summary(
    request: Request,
    symbols: Symbols,
    start: Start = None,
    end: End = None,
    exchange: Exchange = None,
    tz: BarsTz = None,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    table, snapshot = await state.read(
        TRADES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: daily_summary(engine, symbols, start, end, exchange=exchange, tz=tz, as_of=pinned),
    )
    return render(table, chosen, snapshot_id=snapshot)

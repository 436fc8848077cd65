"""Computed from trades: OHLCV bars at any interval from 1 s to 1 d, and the daily summary per symbol."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from k2.api.errors import ApiError, documented
from k2.api.formats import content_docs, negotiate, render
from k2.api.models import RowsEnvelope
from k2.api.params import AsOfParam, End, Exchange, FormatParam, Start, Tz, parse_as_of, symbols_param
from k2.api.state import request_state
from k2.query.bars import bars, parse_interval
from k2.query.summary import daily_summary
from k2.schema.fields import TRADES_V2

router = APIRouter(tags=["analytics"])

# Bars per series a gap-filled response may hold: a week of 10 s bars, a day of 1 s bars.
MAX_FILLED_BARS = 100_000

Accept = Annotated[str | None, Header(include_in_schema=False)]
Symbols = Annotated[list[str] | None, Depends(symbols_param)]
_ERRORS = documented(400, 401, 404, 406, 413, 414, 422, 429, 500, 504)


@router.get(
    "/bars",
    summary="OHLCV bars from trades",
    description=(
        "Per (symbol, exchange, bar): timestamp (bar open), open, high, low, close, volume, quote_volume, vwap,"
        " trade_count, ordered by symbol, exchange, timestamp (k2.query.bars documents each column). Bars start at"
        " midnight of `tz`. With `gap_fill` (needs start and end; at most 100000 bars per symbol), empty bars"
        " carry the previous close with volume 0."
    ),
    response_model=RowsEnvelope,
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
    tz: Tz = "UTC",
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    if gap_fill:
        _check_gap_fill(interval, start, end)
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    table, snapshot = await state.read(
        TRADES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: bars(
            engine, symbols, interval, start, end, exchange=exchange, gap_fill=gap_fill, tz=tz, as_of=pinned
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
        "One row per (date, symbol, exchange) with trades in [start, end). Days are `tz` days: pass the venue's"
        " zone (Australia/Sydney for ASX) so a session is one day."
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
    tz: Tz = "UTC",
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

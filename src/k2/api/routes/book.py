"""Order books: the book at a moment, the top of the book at interval boundaries, and trades with the book that
stood before them (k2.query.book, k2.query.book_series)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from k2.api.errors import ApiError, documented
from k2.api.formats import content_docs, negotiate, render
from k2.api.models import RowsEnvelope
from k2.api.params import SYMBOL_PATTERN, AsOfParam, FormatParam, Instant, parse_as_of
from k2.api.state import request_state
from k2.query.book_series import IMBALANCE_SCALE, MAX_SERIES_POINTS, book_levels, book_series, trades_with_book
from k2.schema.codecs import micros_from_datetime
from k2.schema.fields import BOOK_UPDATES_V2, TRADES_V2

router = APIRouter(tags=["order books"])

MAX_DEPTH = 5000  # Binance's deepest REST snapshot
Accept = Annotated[str | None, Header(include_in_schema=False)]
Symbol = Annotated[
    str, Query(max_length=66, pattern=SYMBOL_PATTERN, description="One symbol as the venue lists it, e.g. BTCUSDT")
]
BookExchange = Annotated[str, Query(min_length=1, max_length=64, description="Venue code, lower case")]
Depth = Annotated[int, Query(ge=1, le=MAX_DEPTH, description="Price levels per side, best first")]
Start = Annotated[Instant, Query(description="Inclusive start, ISO-8601 with a zone, e.g. 2021-04-04T20:03:00Z")]
End = Annotated[Instant, Query(description="Exclusive end, ISO-8601 with a zone")]
_ERRORS = documented(400, 401, 404, 406, 413, 414, 422, 429, 500, 503, 504)
_TOP_OF_BOOK = (
    "bid_price, bid_quantity, ask_price, ask_quantity (the best level of each side), mid ((bid + ask) / 2, 9 places),"
    " spread (ask - bid), bid_depth and ask_depth (quantity summed over the top `depth` levels), imbalance"
    f" ((bid_depth - ask_depth) / (bid_depth + ask_depth), rounded half-even to {IMBALANCE_SCALE} places),"
    " book_update_id and book_exact (false after a hole in the update ids, until the next snapshot); null where no"
    " snapshot precedes the row"
)


def _one_symbol(request: Request, symbol: str) -> str:
    """The symbol, given once (the list routes let `symbol` repeat; a book is one symbol's)."""
    if len(request.query_params.getlist("symbol")) > 1:
        raise ApiError(
            422,
            "symbol given more than once: an order book is one symbol's, so pass symbol once",
            details=[{"loc": ["query", "symbol"], "msg": "repeated", "type": "repeated_parameter"}],
        )
    return symbol.strip(" ")


@router.get(
    "/book",
    summary="The order book of one symbol at a moment",
    description=(
        "The book at microsecond `at`: the newest full snapshot at or before it, then every update after the"
        " snapshot up to `at` (k2.query.book). Rows side (BID, then ASK), level (1 = best), price, quantity, each"
        " with book_update_id (the update id the book reflects), snapshot_update_id and snapshot_timestamp (the"
        " snapshot it started from), updates_applied, book_exact, and gap_first_update_id / gap_last_update_id"
        " (the first hole in the update ids when the book is not exact). No snapshot at or before `at` answers 400."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("The book's levels"), **_ERRORS},
)
async def get_book(
    request: Request,
    symbol: Symbol,
    at: Annotated[Instant, Query(description="The moment, ISO-8601 with a zone, microseconds allowed")],
    exchange: BookExchange = "binance",
    depth: Depth = 10,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    name, chosen, at_us = _one_symbol(request, symbol), negotiate(fmt, accept), micros_from_datetime(at)
    table, snapshot = await request_state(request).read(
        BOOK_UPDATES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: book_levels(engine, name, at_us, depth, exchange=exchange, as_of=pinned),
    )
    return render(table, chosen, snapshot_id=snapshot)


@router.get(
    "/book/series",
    summary="The top of one symbol's book at every interval boundary",
    description=(
        "One row per multiple of `every` (counted from the UTC epoch) in [start, end), at most"
        f" {MAX_SERIES_POINTS}: timestamp, then the book as /v1/book gives it at that microsecond: {_TOP_OF_BOOK}."
        " One snapshot and a forward replay of the updates (k2.query.book_series)."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("The book series"), **_ERRORS},
)
async def get_book_series(
    request: Request,
    symbol: Symbol,
    start: Start,
    end: End,
    every: Annotated[
        str,
        Query(
            max_length=8,
            pattern=r"^[1-9][0-9]*[smhd]$",
            description="Interval between books: a number and s/m/h/d from 1s to 1d dividing a day, e.g. 1s, 1m",
        ),
    ] = "1s",
    exchange: BookExchange = "binance",
    depth: Depth = 10,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    name, chosen = _one_symbol(request, symbol), negotiate(fmt, accept)
    table, snapshot = await request_state(request).read(
        BOOK_UPDATES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: book_series(engine, name, start, end, every, depth, exchange=exchange, as_of=pinned),
    )
    return render(table, chosen, snapshot_id=snapshot)


@router.get(
    "/trades/with-book",
    summary="Trades of one symbol with the order book that stood before each",
    description=(
        "Each trade in [start, end), in event order, with its columns as /v1/asof gives them, then the book that"
        f" stood strictly before it (the book one microsecond earlier): {_TOP_OF_BOOK}."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("Trades with the book"), **_ERRORS},
)
async def get_trades_with_book(
    request: Request,
    symbol: Symbol,
    start: Start,
    end: End,
    exchange: BookExchange = "binance",
    depth: Depth = 10,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    name, chosen = _one_symbol(request, symbol), negotiate(fmt, accept)
    table, snapshot = await request_state(request).read(
        TRADES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: trades_with_book(engine, name, start, end, depth, exchange=exchange, as_of=pinned),
    )
    return render(table, chosen, snapshot_id=snapshot)

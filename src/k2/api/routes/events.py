"""Trades and quotes as recorded: keyset pages, the latest rows per symbol, and trades with their prevailing quote."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Annotated

import pyarrow as pa
from confluent_kafka import KafkaException
from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import Response

from k2.api.errors import ApiError, documented
from k2.api.formats import Format, content_docs, negotiate, render
from k2.api.models import QuotesEnvelope, RowsEnvelope, TradesEnvelope
from k2.api.params import (
    AsOfParam,
    CursorParam,
    End,
    Exchange,
    FormatParam,
    FreshParam,
    Instant,
    Limit,
    Start,
    decode_cursor,
    encode_cursor,
    paging_as_of,
    parse_as_of,
    symbols_param,
)
from k2.api.state import request_state, snapshot_of
from k2.query import market
from k2.query.asof import DEFAULT_QUOTE_LOOKBACK, trades_with_quotes
from k2.query.engine import QueryEngine
from k2.query.filters import record_spec
from k2.query.fresh import FreshReader, Tail, fresh_events, fresh_latest
from k2.schema.fields import TRADES_V2

router = APIRouter(tags=["market data"])

Accept = Annotated[str | None, Header(include_in_schema=False)]
Symbols = Annotated[list[str] | None, Depends(symbols_param)]
_ERRORS = documented(400, 401, 404, 406, 413, 414, 422, 429, 500, 503, 504)
FRESH_HEADER = "X-K2-Fresh-Caught-Up"

FreshQuery = Callable[[QueryEngine, FreshReader, Tail], pa.Table]


async def _fresh(
    request: Request,
    kind: str,
    symbols: list[str] | None,
    exchange: str | None,
    cursor: str | None,
    as_of: str | None,
    chosen: Format,
    query: FreshQuery,
) -> Response:
    """`query` over the lake plus the Kafka tail beyond it (k2.query.fresh), as one page."""
    if cursor is not None or as_of is not None:
        raise ApiError(
            400,
            "fresh=true reads the newest data as one page: drop `cursor` and `as_of`, or `fresh`",
            code="invalid_query",
        )
    state = request_state(request)

    def work() -> tuple[pa.Table, Tail]:
        with state.reading() as engine:
            reader = state.fresh_reader()
            try:
                tail = reader.tail(engine, kind, exchange=exchange, symbols=symbols)
            except KafkaException as exc:
                raise ApiError(
                    503,
                    f"the Kafka log did not answer ({exc.args[0]}): check the broker at {reader.source.bootstrap}",
                    code="kafka_unavailable",
                ) from None
            return query(engine, reader, tail), tail

    rows, tail = await state.run(work)
    return render(rows, chosen, snapshot_id=tail.snapshot_id, headers={FRESH_HEADER: str(tail.caught_up).lower()})


async def _page(
    request: Request,
    kind: str,
    symbols: list[str] | None,
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
    limit: int,
    cursor: str | None,
    as_of: str | None,
    fmt: Format | None,
    accept: str | None,
    fresh: bool,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    if fresh:
        return await _fresh(
            request,
            kind,
            symbols,
            exchange,
            cursor,
            as_of,
            chosen,
            lambda engine, reader, tail: fresh_events(
                engine, reader, kind, symbols, start, end, exchange=exchange, limit=limit, tail=tail
            ),
        )
    cursor_snapshot, position = decode_cursor(cursor)
    wanted = paging_as_of(parse_as_of(as_of), cursor_snapshot)
    table = record_spec(kind).name

    def work() -> tuple[market.Page, int | None]:
        with state.reading() as engine:
            snapshot = snapshot_of(engine, table, wanted)
            # Pages read the snapshot the first one did, even if commits land in between: pin by id, unless that is
            # what the engine reads now anyway (pinning costs a catalog read).
            current = wanted is None or snapshot == engine.snapshot_ids.get(table)
            pinned = None if current else (wanted if snapshot is None else snapshot)
            page = market.page(
                engine, kind, symbols, start, end, exchange=exchange, after=position, limit=limit, as_of=pinned
            )
            return page, snapshot

    page, snapshot = await state.run(work)
    next_cursor = encode_cursor(snapshot, page.next_cursor) if page.next_cursor is not None else None
    return render(page.rows, chosen, next_cursor=next_cursor, snapshot_id=snapshot)


_PAGE_DOC = (
    "Rows in event order (timestamp, source_sequence, message_id), `limit` per page. Pass `next_cursor` back as"
    " `cursor` for the next page: every row is visited once, and later pages read the snapshot the first did."
)


@router.get(
    "/trades",
    summary="Trades by symbols, exchange and time range (keyset pages)",
    description=_PAGE_DOC,
    response_model=TradesEnvelope,
    responses={200: content_docs("A page of trades"), **_ERRORS},
)
async def get_trades(
    request: Request,
    symbols: Symbols,
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 1000,
    cursor: CursorParam = None,
    as_of: AsOfParam = None,
    fresh: FreshParam = False,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    return await _page(request, "trades", symbols, exchange, start, end, limit, cursor, as_of, fmt, accept, fresh)


@router.get(
    "/quotes",
    summary="Quotes by symbols, exchange and time range (keyset pages)",
    description=_PAGE_DOC,
    response_model=QuotesEnvelope,
    responses={200: content_docs("A page of quotes"), **_ERRORS},
)
async def get_quotes(
    request: Request,
    symbols: Symbols,
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    limit: Limit = 1000,
    cursor: CursorParam = None,
    as_of: AsOfParam = None,
    fresh: FreshParam = False,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    return await _page(request, "quotes", symbols, exchange, start, end, limit, cursor, as_of, fmt, accept, fresh)


async def _latest(
    request: Request,
    kind: str,
    symbols: list[str] | None,
    n: int,
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
    as_of: str | None,
    fmt: Format | None,
    accept: str | None,
    fresh: bool,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    if fresh:
        return await _fresh(
            request,
            kind,
            symbols,
            exchange,
            None,
            as_of,
            chosen,
            lambda engine, reader, tail: fresh_latest(
                engine, reader, kind, symbols, n, exchange=exchange, start=start, end=end, tail=tail
            ),
        )
    table, snapshot = await state.read(
        record_spec(kind).name,
        parse_as_of(as_of),
        lambda engine, pinned: market.latest(
            engine, kind, symbols, n, exchange=exchange, start=start, end=end, as_of=pinned
        ),
    )
    return render(table, chosen, snapshot_id=snapshot)


N = Annotated[int, Query(ge=1, le=1000, description="Rows per (symbol, exchange)")]
_LATEST_DOC = (
    "The newest `n` rows per (symbol, exchange), oldest first within each. Without `start` every file is read:"
    " pass a recent `start` when the latest rows are known to be there."
)


@router.get(
    "/trades/latest",
    summary="The latest trades per symbol",
    description=_LATEST_DOC,
    response_model=TradesEnvelope,
    responses={200: content_docs("The latest trades"), **_ERRORS},
)
async def get_latest_trades(
    request: Request,
    symbols: Symbols,
    n: N = 1,
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    as_of: AsOfParam = None,
    fresh: FreshParam = False,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    return await _latest(request, "trades", symbols, n, exchange, start, end, as_of, fmt, accept, fresh)


@router.get(
    "/quotes/latest",
    summary="The latest quotes per symbol",
    description=_LATEST_DOC,
    response_model=QuotesEnvelope,
    responses={200: content_docs("The latest quotes"), **_ERRORS},
)
async def get_latest_quotes(
    request: Request,
    symbols: Symbols,
    n: N = 1,
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    as_of: AsOfParam = None,
    fresh: FreshParam = False,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    return await _latest(request, "quotes", symbols, n, exchange, start, end, as_of, fmt, accept, fresh)


@router.get(
    "/asof",
    summary="Trades with the quote prevailing when they printed",
    description=(
        "Each trade in [start, end) joined to the latest quote of its symbol and exchange at or before it: bid/ask,"
        " mid, spread and effective_spread (k2.query.asof). Quotes older than `quote_lookback_seconds` before"
        " `start` count as none."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("Trades with quotes"), **_ERRORS},
)
async def get_asof(
    request: Request,
    symbols: Symbols,
    start: Annotated[Instant, Query(description="Inclusive start of the trades, ISO-8601 with a zone")],
    end: Annotated[Instant, Query(description="Exclusive end of the trades, ISO-8601 with a zone")],
    exchange: Exchange = None,
    quote_lookback_seconds: Annotated[
        float, Query(ge=0, le=31 * 86_400, description="How far before `start` a prevailing quote may be")
    ] = DEFAULT_QUOTE_LOOKBACK.total_seconds(),
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    lookback = timedelta(seconds=quote_lookback_seconds)
    table, snapshot = await state.read(
        TRADES_V2.name,
        parse_as_of(as_of),
        lambda engine, pinned: trades_with_quotes(
            engine, symbols, start, end, exchange=exchange, quote_lookback=lookback, as_of=pinned
        ),
    )
    return render(table, chosen, snapshot_id=snapshot)

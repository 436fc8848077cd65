"""What the lake holds: symbols per table, table sizes, and each table's snapshots (the valid `as_of` values)."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from fastapi.responses import Response

from k2.api.errors import documented
from k2.api.formats import content_docs, negotiate, render
from k2.api.models import RowsEnvelope
from k2.api.params import AsOfParam, End, Exchange, FormatParam, Start, parse_as_of
from k2.api.state import request_state
from k2.query.filters import record_spec
from k2.query.snapshots import snapshots
from k2.query.summary import symbols, table_stats
from k2.schema.fields import TRADES_V2

router = APIRouter(tags=["catalog"])

Accept = Annotated[str | None, Header(include_in_schema=False)]
_ERRORS = documented(400, 401, 404, 406, 413, 414, 422, 429, 500, 504)


class EventKind(StrEnum):
    TRADES = "trades"
    QUOTES = "quotes"


class TableName(StrEnum):
    TRADES = "trades"
    QUOTES = "quotes"
    REFERENCE_DATA = "reference_data"


@router.get(
    "/symbols",
    summary="Symbols a table holds",
    description="One row per (symbol, exchange): first_seen, last_seen (event time, UTC) and count of rows.",
    response_model=RowsEnvelope,
    responses={200: content_docs("Symbols"), **_ERRORS},
)
async def get_symbols(
    request: Request,
    kind: Annotated[EventKind, Query(description="Which table to list")] = EventKind.TRADES,
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    table, snapshot = await state.read(
        record_spec(kind.value).name,
        parse_as_of(as_of),
        lambda engine, pinned: symbols(engine, kind.value, exchange=exchange, start=start, end=end, as_of=pinned),
    )
    return render(table, chosen, snapshot_id=snapshot)


@router.get(
    "/stats",
    summary="Size of each table",
    description=(
        "One row per table at the snapshot read: snapshot_id, committed_at, rows, data_files, bytes, snapshots and"
        " partitions. `snapshot_id` in the envelope is the trades table's."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("Table statistics"), **_ERRORS},
)
async def get_stats(
    request: Request, as_of: AsOfParam = None, fmt: FormatParam = None, accept: Accept = None
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    table, snapshot = await state.read(
        TRADES_V2.name, parse_as_of(as_of), lambda engine, pinned: table_stats(engine, as_of=pinned)
    )
    return render(table, chosen, snapshot_id=snapshot)


@router.get(
    "/snapshots",
    summary="A table's snapshots (commits), oldest first",
    description=(
        "snapshot_id, parent_id, committed_at, operation, rows, kafka_offsets and the summary map of each commit in"
        " the lineage. Any snapshot_id or committed_at here is a valid `as_of` for every read."
    ),
    response_model=RowsEnvelope,
    responses={200: content_docs("Snapshots"), **_ERRORS},
)
async def get_snapshots(
    request: Request,
    table: Annotated[TableName, Query(description="Which table's snapshots")] = TableName.TRADES,
    as_of: AsOfParam = None,
    fmt: FormatParam = None,
    accept: Accept = None,
) -> Response:
    state = request_state(request)
    chosen = negotiate(fmt, accept)
    result, snapshot = await state.read(
        record_spec(table.value).name,
        parse_as_of(as_of),
        lambda engine, pinned: snapshots(engine, table.value, as_of=pinned),
    )
    return render(result, chosen, snapshot_id=snapshot)

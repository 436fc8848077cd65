"""Replay trades or quotes in event order, paced by `speed`, as NDJSON over HTTP or JSON messages over a WebSocket.

Both send one record per line (message), then the trailer `{"end_of_replay": {"cursor", "snapshot_id",
"records"}}`; pass its `cursor` back to continue after the last record, over the same snapshot. A failure after
records went out ends the stream with an error envelope line instead of the trailer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated

import orjson
from fastapi import APIRouter, Depends, Query, Request, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import StreamingResponse

from k2.api.auth import authenticate
from k2.api.errors import ApiError, documented, error_body, from_exception
from k2.api.formats import MEDIA_TYPES, SNAPSHOT_HEADER, Format
from k2.api.params import (
    AsOfParam,
    CursorParam,
    End,
    Exchange,
    Start,
    decode_cursor,
    paging_as_of,
    parse_as_of,
    parse_instant,
    symbols_param,
)
from k2.api.replay import ReplaySession
from k2.api.state import api_state, request_state

router = APIRouter(tags=["replay"])
ws_router = APIRouter(tags=["replay"])

Symbols = Annotated[list[str] | None, Depends(symbols_param)]
Kind = Annotated[str, Query(pattern="^(trades|quotes)$", description="trades or quotes")]
Speed = Annotated[
    float, Query(ge=0, le=1_000_000, description="Pace: 1 = as recorded, 10 = ten times faster, 0 = no waiting")
]


def _session_args(
    request_or_ws: Request | WebSocket,
    kind: str,
    symbols: list[str] | None,
    exchange: str | None,
    start: datetime | None,
    end: datetime | None,
    speed: float,
    cursor: str | None,
    as_of: str | None,
) -> ReplaySession:
    snapshot, position = decode_cursor(cursor)
    return ReplaySession(
        state=api_state(request_or_ws),
        kind=kind,
        symbols=symbols,
        start=start,
        end_time=end,
        exchange=exchange,
        after=position,
        as_of=paging_as_of(parse_as_of(as_of), snapshot),
        speed=speed,
    )


@router.get(
    "/replay",
    summary="Replay records in event order as NDJSON",
    description=__doc__ or "",
    responses={
        200: {
            "description": "One JSON record per line, then the end_of_replay trailer line",
            "content": {MEDIA_TYPES[Format.NDJSON]: {"schema": {"type": "string"}}},
        },
        **documented(400, 401, 404, 413, 414, 422, 429, 500, 504),
    },
    response_class=StreamingResponse,
)
async def get_replay(
    request: Request,
    symbols: Symbols,
    kind: Kind = "trades",
    exchange: Exchange = None,
    start: Start = None,
    end: End = None,
    speed: Speed = 0.0,
    cursor: CursorParam = None,
    as_of: AsOfParam = None,
) -> StreamingResponse:
    request_state(request).require_engine()
    session = _session_args(request, kind, symbols, exchange, start, end, speed, cursor, as_of)
    await session.open()

    async def lines() -> AsyncIterator[bytes]:
        try:
            async for chunk in session.chunks():
                yield b"".join(orjson.dumps(record) + b"\n" for record in chunk)
        except Exception as exc:  # the status line is gone: the envelope becomes the last line
            error = from_exception(exc)
            yield orjson.dumps(error_body(error.status, error.message, code=error.code)) + b"\n"
            return
        yield orjson.dumps(session.end()) + b"\n"

    headers = {SNAPSHOT_HEADER: str(session.snapshot_id)} if session.snapshot_id is not None else {}
    return StreamingResponse(lines(), media_type=MEDIA_TYPES[Format.NDJSON], headers=headers)


@ws_router.websocket("/replay/ws")
async def replay_ws(
    websocket: WebSocket,
    kind: str = "trades",
    symbols: list[str] | None = Query(None),
    symbol: list[str] | None = Query(None),
    exchange: str | None = None,
    start: str | None = None,
    end: str | None = None,
    speed: str = "0",
    cursor: str | None = None,
    as_of: str | None = None,
) -> None:
    """The NDJSON replay as WebSocket text messages (same query parameters and key headers). On an error the server
    sends the error envelope and closes with code 4000 + HTTP status (4401, 4429, 4400, ...).
    """
    await websocket.accept()
    try:
        await run_in_threadpool(authenticate, websocket)
        pace = _speed(speed)
        if kind not in ("trades", "quotes") or pace is None:
            raise ApiError(
                400, "kind must be trades or quotes, and speed a number from 0 to 1000000", code="invalid_query"
            )
        session = _session_args(
            websocket,
            kind,
            symbols_param(symbols, symbol),
            exchange or None,
            parse_instant(start, "start") if start else None,
            parse_instant(end, "end") if end else None,
            pace,
            cursor,
            as_of,
        )
        await session.open()
        async for chunk in session.chunks():
            for record in chunk:
                await websocket.send_text(orjson.dumps(record).decode())
        await websocket.send_text(orjson.dumps(session.end()).decode())
        await websocket.close(1000)
    except (WebSocketDisconnect, OSError):
        return  # the client went away (uvicorn raises an OSError on send after a disconnect)
    except Exception as exc:
        error = from_exception(exc)
        try:
            await websocket.send_text(orjson.dumps(error_body(error.status, error.message, code=error.code)).decode())
            await websocket.close(4000 + error.status)
        except (WebSocketDisconnect, OSError, RuntimeError):
            return  # the client is gone: nobody to tell


def _speed(text: str) -> float | None:
    """The WebSocket `speed` parameter, or None when it is not a number from 0 to 1000000."""
    try:
        value = float(text)
    except ValueError:
        return None
    return value if 0 <= value <= 1_000_000 else None

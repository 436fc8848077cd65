"""`/v1/subscribe`: one WebSocket that delivers history from the lake, then what Kafka holds beyond it, then live
records (k2.query.subscribe), or bars built from the trades as they form (k2.query.bar_stream); frames and
buffering in k2.api.subscribe.

Close codes: 1000 never (a subscription does not end by itself); 4008 a live subscriber too slow for its buffer
(the reason, or the error message before it, carries the cursor to resume from); 4000 + HTTP status on an error,
after the error envelope: 4400 bad parameters or cursor, 4401 no or unknown key, 4429 over the rate limit or over
K2_API_SUBSCRIPTIONS_PER_KEY subscriptions, 4503 no Kafka to read or the engine not open.
"""

from __future__ import annotations

from fastapi import APIRouter, Query, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from k2.api.auth import WEBSOCKET_PROTOCOL, authenticate
from k2.api.errors import ApiError, error_body, from_exception
from k2.api.params import parse_instant, symbols_param
from k2.api.state import api_state
from k2.api.subscribe import SLOW_SUBSCRIBER, SlowSubscriber, SubscriptionSession, say_goodbye
from k2.core import metrics

ws_router = APIRouter(tags=["subscribe"])

_MAX_CURSOR_CHARS = 8192  # a bars cursor carries a mark per series (at most 100 symbols)


@ws_router.websocket("/subscribe")
async def subscribe_ws(
    websocket: WebSocket,
    kind: str = "trades",
    symbols: list[str] | None = Query(None),
    symbol: list[str] | None = Query(None),
    exchange: str | None = None,
    since: str | None = None,
    cursor: str | None = None,
    interval: str | None = None,
) -> None:
    """Records of `kind` (trades, quotes, or bars of `interval` built from trades) for `symbols` (comma-separated;
    omit for all; bars need them) of `exchange`: with `since` (ISO-8601 with a zone) the lake's rows from then on
    first, else live from now; with `cursor` (the `cursor` of a frame) the same subscription resumed after that
    frame. Key in the handshake's `X-API-Key` header, or as the subprotocol `k2.key.<key>` beside `k2` (browsers).
    """
    offered = websocket.scope.get("subprotocols", [])
    await websocket.accept(subprotocol=WEBSOCKET_PROTOCOL if WEBSOCKET_PROTOCOL in offered else None)
    try:
        key = await run_in_threadpool(authenticate, websocket)
        if kind not in ("trades", "quotes", "bars"):
            raise ApiError(400, "kind must be trades, quotes or bars", code="invalid_query")
        if (kind == "bars") != (interval is not None):
            raise ApiError(400, "interval goes with kind=bars, and bars need one (e.g. 1s, 1m)", code="invalid_query")
        if cursor is not None and not 0 < len(cursor) <= _MAX_CURSOR_CHARS:
            raise ApiError(400, "cursor is not one a K2 subscription issued: pass back the last cursor unchanged")
        state = api_state(websocket)
        session = SubscriptionSession(
            state,
            kind,
            symbols_param(symbols, symbol),
            exchange or None,
            parse_instant(since, "since") if since else None,
            cursor,
            interval,
        )
        with state.subscription_slot(key.key_id):
            await session.run(websocket)
        metrics.API_SUBSCRIPTIONS_CLOSED.labels("client").inc()
    except (WebSocketDisconnect, OSError):
        metrics.API_SUBSCRIPTIONS_CLOSED.labels("client").inc()  # uvicorn raises an OSError on send after it left
    except SlowSubscriber as slow:
        metrics.API_SUBSCRIPTIONS_CLOSED.labels("slow").inc()
        await say_goodbye(websocket, slow.message(), SLOW_SUBSCRIBER, slow.reason())
    except Exception as exc:
        metrics.API_SUBSCRIPTIONS_CLOSED.labels("error").inc()
        error = from_exception(exc)
        body = error_body(error.status, error.message, code=error.code, details=error.details)
        await say_goodbye(websocket, body, 4000 + error.status)

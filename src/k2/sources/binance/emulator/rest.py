"""The Binance spot REST market-data endpoints, answered from what the feed has actually streamed.

Weights are the spot "Market Data endpoints" figures (developers.binance.com/docs/binance-spot-api-docs/rest-api/
market-data-endpoints); limits and error bodies follow "LIMITS" and "Error codes" of the same docs.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse

from k2.samples import BINANCE_EXCHANGE_INFO
from k2.sources.binance.emulator.feed import Hub
from k2.sources.binance.emulator.limits import Limits
from k2.sources.binance.symbols import exchange_info_bytes

log = structlog.get_logger(__name__)

# How long a depth request waits for the replay to reach the symbol's captured snapshot.
DEPTH_WAIT_SECONDS = 5.0

# Request weights, rest-api market-data-endpoints.
_WEIGHTS = {"/api/v3/ping": 1, "/api/v3/time": 1, "/api/v3/exchangeInfo": 20, "/api/v3/trades": 25}
_WEIGHTS |= {"/api/v3/historicalTrades": 25, "/api/v3/aggTrades": 4}


def depth_weight(limit: int) -> int:
    """GET /api/v3/depth: limit 1-100 weight 5, 101-500 25, 501-1000 50, 1001-5000 250."""
    if limit <= 100:
        return 5
    if limit <= 500:
        return 25
    return 50 if limit <= 1000 else 250


class BinanceError(Exception):
    """An error Binance answers with ``{"code": .., "msg": ..}`` and an HTTP 4xx status."""

    def __init__(self, code: int, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.code, self.msg, self.status = code, msg, status


def _int(request: Request, name: str, default: int | None = None) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or len(raw) > 20:
        raise BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


def _limit(request: Request, default: int, maximum: int) -> int:
    limit = _int(request, "limit", default)
    assert limit is not None
    if not 1 <= limit <= maximum:
        raise BinanceError(-1130, "Data sent for parameter 'limit' is not valid.")
    return limit


def load_exchange_info(
    path: Path, symbols: set[str], weight_limit: int, own_symbols: Sequence[dict[str, Any]] = ()
) -> tuple[dict[str, Any], list[str]]:
    """The recorded exchangeInfo as Binance sent it, plus `own_symbols` (a synthetic market's own definitions), and
    the served symbols it does not list: those are reported, never made up from the symbol's letters."""
    info = json.loads(exchange_info_bytes(path))
    info["symbols"] = [*info["symbols"], *own_symbols]
    known = {entry["symbol"] for entry in info["symbols"]}
    for rule in info["rateLimits"]:
        if rule["rateLimitType"] == "REQUEST_WEIGHT":
            rule["limit"] = weight_limit  # what this emulator enforces, so clients that read it pace correctly
    return info, sorted(symbols - known)


class WeightMeter:
    """REQUEST_WEIGHT per IP in fixed windows, as Binance counts it ("LIMITS": per-minute buckets)."""

    def __init__(self, limits: Limits) -> None:
        self.limit = limits.rest_weight_limit
        self.window = limits.rest_window
        self._used: dict[str, tuple[int, int]] = {}  # ip -> (window index, used weight)

    def charge(self, ip: str, weight: int) -> tuple[bool, int, float]:
        """(allowed, used weight in this window, seconds until the window resets)."""
        now = time.monotonic()
        index = math.floor(now / self.window)
        window, used = self._used.get(ip, (index, 0))
        if window != index:
            used = 0
        reset_in = (index + 1) * self.window - now
        if used + weight > self.limit:
            self._used[ip] = (index, used)
            return False, used, reset_in
        self._used[ip] = (index, used + weight)
        return True, used + weight, reset_in


def create_app(
    hub: Hub,
    limits: Limits,
    exchange_info_path: Path = BINANCE_EXCHANGE_INFO,
    own_symbols: Sequence[dict[str, Any]] = (),
) -> FastAPI:
    """The REST app; ``hub`` is read on the emulator's loop, where uvicorn serves too.

    exchangeInfo is the recorded response at ``exchange_info_path`` plus ``own_symbols`` (a synthetic market's).
    """
    # No /docs or /redoc: it answers Binance's own REST API, and FastAPI's pages load from a CDN (blank offline).
    app = FastAPI(title="K2 Binance spot emulator", docs_url=None, redoc_url=None)
    meter = WeightMeter(limits)
    info_cache: dict[str, Any] = {}

    def exchange_info() -> dict[str, Any]:
        if info_cache.get("symbols_seen") != len(hub.symbols):
            body, missing = load_exchange_info(exchange_info_path, hub.symbols, limits.rest_weight_limit, own_symbols)
            if missing:
                log.warning(
                    "emulator.symbols_not_in_exchange_info",
                    symbols=missing,
                    exchange_info=str(exchange_info_path),
                    detail="exchangeInfo does not list them; clients reject their data as unknown_symbol",
                )
            info_cache.update(body=body, missing=missing, symbols_seen=len(hub.symbols))
        return info_cache["body"]

    def symbol_of(request: Request) -> str:
        symbol = request.query_params.get("symbol")
        if not symbol:
            raise BinanceError(-1102, "Mandatory parameter 'symbol' was not sent, was empty/null, or malformed.")
        if symbol not in hub.symbols and symbol not in {s["symbol"] for s in exchange_info()["symbols"]}:
            raise BinanceError(-1121, "Invalid symbol.")
        return symbol

    @app.middleware("http")
    async def request_weight(request: Request, call_next: Any) -> Response:
        path = request.url.path
        if path == "/api/v3/depth":
            raw = request.query_params.get("limit", "100")
            weight = depth_weight(int(raw) if raw.isdigit() else 100)
        else:
            weight = _WEIGHTS.get(path, 1)
        ip = request.client.host if request.client else "?"
        allowed, used, reset_in = meter.charge(ip, weight)
        headers = {"X-MBX-USED-WEIGHT-1M": str(used)}
        if not allowed:
            # "LIMITS": a 429 once the weight limit is broken; Retry-After says how many seconds to wait.
            headers["Retry-After"] = str(max(1, math.ceil(reset_in)))
            body = {
                "code": -1003,
                "msg": f"Too much request weight used; current limit is {meter.limit} request weight per 1 MINUTE. "
                "Please use WebSocket Streams for live updates to avoid polling the API.",
            }
            return JSONResponse(body, status_code=429, headers=headers)
        response: Response = await call_next(request)
        response.headers.update(headers)
        return response

    @app.exception_handler(BinanceError)
    async def binance_error(_: Request, error: BinanceError) -> Response:
        return JSONResponse({"code": error.code, "msg": error.msg}, status_code=error.status)

    @app.get("/api/v3/ping")
    async def ping() -> dict[str, Any]:
        """Connectivity check: ``{}``."""
        return {}

    @app.get("/api/v3/time")
    async def server_time() -> dict[str, int]:
        """``{"serverTime": <ms>}`` from the host clock."""
        return {"serverTime": int(time.time() * 1000)}

    @app.get("/api/v3/exchangeInfo")
    async def get_exchange_info(request: Request) -> dict[str, Any]:
        """The recorded exchangeInfo (data/samples, 2021-10-12); ``symbol=`` narrows it.

        A streamed symbol the recording does not list is not made up: ``symbol=`` naming it answers -1121, as
        Binance does for a symbol it does not know.
        """
        body = dict(exchange_info(), serverTime=int(time.time() * 1000))
        if "symbol" in request.query_params:
            symbol = symbol_of(request)
            body["symbols"] = [s for s in body["symbols"] if s["symbol"] == symbol]
            if not body["symbols"]:
                raise BinanceError(-1121, "Invalid symbol.")
        return body

    @app.get("/api/v3/depth")
    async def depth(request: Request) -> dict[str, Any]:
        """The book of ``symbol`` as of the last diff the replay published (its captured snapshot moved by the diffs
        since; the answer waits for the replay to reach that snapshot), cut to ``limit``. Without one to answer
        from: the captured snapshot as recorded, else (synthetic symbols) the current best bid/ask."""
        symbol = symbol_of(request)
        limit = _limit(request, 100, 5000)
        book = await hub.current_book(symbol, DEPTH_WAIT_SECONDS)
        if book is not None:
            bids, asks = book.top(limit)
            return {
                "lastUpdateId": book.last_update_id,
                "bids": [[f"{price:f}", f"{quantity:f}"] for price, quantity in bids],
                "asks": [[f"{price:f}", f"{quantity:f}"] for price, quantity in asks],
            }
        snapshot = hub.snapshots.get(symbol)
        if snapshot is None:
            ticker = hub.book_tickers.get(symbol)
            if ticker is None:
                return {"lastUpdateId": hub.last_update_id.get(symbol, 0), "bids": [], "asks": []}
            snapshot = {
                "lastUpdateId": ticker["u"],
                "bids": [[ticker["b"], ticker["B"]]],
                "asks": [[ticker["a"], ticker["A"]]],
            }
        return {
            "lastUpdateId": snapshot["lastUpdateId"],
            "bids": snapshot["bids"][:limit],
            "asks": snapshot["asks"][:limit],
        }

    @app.get("/api/v3/aggTrades")
    async def agg_trades(request: Request) -> list[dict[str, Any]]:
        """Aggregate trades the feed has published (dropped frames included), oldest first.

        ``fromId`` is inclusive; ``startTime``/``endTime`` filter on ``T``; with neither, the most recent ``limit``.
        """
        symbol = symbol_of(request)
        limit = _limit(request, 500, 1000)
        from_id, start, end = _int(request, "fromId"), _int(request, "startTime"), _int(request, "endTime")
        if start is not None and end is not None and end - start > 3_600_000:
            raise BinanceError(-1127, "More than 1 hours between startTime and endTime.")
        book = hub.agg_trades.get(symbol)
        if book is None:
            return []
        if from_id is None and start is None and end is None:
            return book.recent(limit)
        rows = book.from_id(from_id, len(book.rows)) if from_id is not None else book.rows
        out = []
        for row in rows:
            if (start is not None and row["T"] < start) or (end is not None and row["T"] > end):
                continue
            out.append(row)
            if len(out) == limit:
                break
        return out

    @app.get("/api/v3/trades")
    async def trades(request: Request) -> list[dict[str, Any]]:
        """The most recent raw trades, derived from published aggTrades' f..l ranges (see feed.derive_trades)."""
        symbol = symbol_of(request)
        book = hub.trades.get(symbol)
        return book.recent(_limit(request, 500, 1000)) if book else []

    @app.get("/api/v3/historicalTrades")
    async def historical_trades(request: Request) -> list[dict[str, Any]]:
        """Raw trades from ``fromId`` (inclusive), or the most recent when it is absent."""
        symbol = symbol_of(request)
        limit = _limit(request, 500, 1000)
        from_id = _int(request, "fromId")
        book = hub.trades.get(symbol)
        if book is None:
            return []
        return book.recent(limit) if from_id is None else book.from_id(from_id, limit)

    return app

"""A Python client for the K2 HTTP API: tables come back as Arrow (or pandas / polars), errors as exceptions.

    from k2.client import Client

    with Client("http://127.0.0.1:8000", api_key="k2_...") as k2:
        trades = k2.trades("BHP", start=datetime(2024, 3, 4, tzinfo=UTC))     # every row, all pages followed
        bars = k2.bars("BHP", "5m", start, end, output="pandas")
        book = k2.book_series("BTCUSDT", start, end, every="1s", depth=10)   # top of the book every second
        for record in k2.replay("trades", "BHP", start, end, speed=10):
            ...
        for record in k2.subscribe("trades", ["BHP"], since=start):   # history, then live; never ends by itself
            ...

Reads ask for `format=arrow` (Arrow IPC stream), so decimals stay decimal128(18, 8) and timestamps
timestamp[us, tz=UTC] with no text round trip. The API's page cursor travels in the `X-K2-Next-Cursor` header and
the snapshot read in `X-K2-Snapshot-Id`; the client follows the cursor for you, and every table it returns carries
the snapshot id in its schema metadata (`snapshot_id(table)`), to pass as `as_of` for a repeatable read.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlencode

import httpx
import pyarrow as pa
import pyarrow.ipc
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

NEXT_CURSOR_HEADER = "X-K2-Next-Cursor"
SNAPSHOT_HEADER = "X-K2-Snapshot-Id"
SNAPSHOT_METADATA = b"k2.snapshot_id"
ARROW_MEDIA_TYPE = "application/vnd.apache.arrow.stream"
# The close code of a live subscriber that fell behind (k2.api.subscribe.SLOW_SUBSCRIBER): resume from the cursor.
SLOW_SUBSCRIBER = 4008
# The API's largest page (k2.api.settings.MAX_PAGE_ROWS): fewest round trips when following cursors.
MAX_PAGE_ROWS = 10_000

Output = Literal["arrow", "pandas", "polars"]
Symbols = str | Sequence[str] | None
Moment = datetime | str | None
AsOf = int | datetime | str | None


class K2APIError(Exception):
    """The API answered with an error: `status` (HTTP), `code` (stable, e.g. invalid_query, unauthorized),
    `message` (what went wrong and what to do next) and `details` (structured context, may be None)."""

    def __init__(self, status: int, code: str, message: str, details: Any = None) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message, self.details = status, code, message, details


class RateLimitedError(K2APIError):
    """429: this API key spent its requests for now; wait `retry_after` seconds (None if the server said not)."""

    def __init__(
        self, status: int, code: str, message: str, details: Any = None, retry_after: float | None = None
    ) -> None:
        super().__init__(status, code, message, details)
        self.retry_after = retry_after


class K2ConnectionError(ConnectionError):
    """The API could not be reached (refused, timed out, reset): check `base_url` and that the server runs."""


class MissingDependencyError(ImportError):
    """An optional library (pandas, polars) the requested output needs is not installed."""


def snapshot_id(table: pa.Table) -> int | None:
    """The lake snapshot a table returned by the client was read from (None when the server named none)."""
    value = (table.schema.metadata or {}).get(SNAPSHOT_METADATA)
    return int(value) if value else None


def to_pandas(table: pa.Table) -> Any:
    """The table as a pandas DataFrame (decimals become Python Decimal objects, exact). Needs pandas."""
    _require("pandas", "pandas")
    return table.to_pandas()


def to_polars(table: pa.Table) -> Any:
    """The table as a polars DataFrame (decimals stay Decimal(18, 8)). Needs polars."""
    polars = _require("polars", "polars")
    return polars.from_arrow(table)


def _require(module: str, package: str) -> Any:
    try:
        return __import__(module)
    except ImportError:
        raise MissingDependencyError(
            f"output={module!r} needs {package}, which is not installed: `pip install {package}`, "
            f"or ask for output='arrow' and convert yourself"
        ) from None


def _convert(table: pa.Table, output: Output) -> Any:
    if output == "arrow":
        return table
    if output == "pandas":
        return to_pandas(table)
    if output == "polars":
        return to_polars(table)
    raise ValueError(f"output must be 'arrow', 'pandas' or 'polars', not {output!r}")


def _moment(value: Moment, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime or ISO-8601 text, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name}={value.isoformat()} has no time zone: pass e.g. datetime(..., tzinfo=UTC)")
    return value.isoformat()


def _as_of(value: AsOf) -> str | None:
    if isinstance(value, bool):
        raise TypeError("as_of must be a snapshot id, a datetime or ISO-8601 text, not a bool")
    if isinstance(value, int):
        return str(value)
    return _moment(value, "as_of")


def _symbols(symbols: Symbols) -> str | None:
    if symbols is None:
        return None
    names = [symbols] if isinstance(symbols, str) else list(symbols)
    if not names or not all(isinstance(s, str) and s and "," not in s for s in names):
        raise ValueError(f"symbols must be one symbol or a non-empty list of them (no commas), got {symbols!r}")
    return ",".join(names)


def _codes(codes: Sequence[str] | None, name: str) -> str | None:
    """Codes as the API takes them: comma-separated, "none" for an empty list (leave nothing out)."""
    if codes is None:
        return None
    values = list(codes) if not isinstance(codes, str) else None
    if values is None or not all(isinstance(c, str) and c and "," not in c for c in values):
        raise ValueError(f"{name} must be a list of codes (strings, no commas), got {codes!r}")
    return ",".join(values) or "none"


def _params(**values: Any) -> dict[str, str]:
    """Query parameters with None left out and booleans as the API spells them."""
    out = {}
    for name, value in values.items():
        if value is None:
            continue
        out[name] = ("true" if value else "false") if isinstance(value, bool) else str(value)
    return out


def _error_from(response: httpx.Response) -> K2APIError:
    """The exception for an error response: the API's envelope when there is one, else the raw status."""
    code, message, details = "http_error", response.reason_phrase or "error", None
    try:
        body = json.loads(response.read())
        error = body["error"]
        code, message, details = str(error["code"]), str(error["message"]), error.get("details")
    except (ValueError, KeyError, TypeError):
        text = response.text.strip()
        if text:
            message = f"{message}: {text[:200]}"
    if response.status_code == 429:
        retry_after = response.headers.get("Retry-After")
        try:
            wait = float(retry_after) if retry_after is not None else None
        except ValueError:
            wait = None
        if wait is None and isinstance(details, Mapping) and "retry_after_seconds" in details:
            wait = float(details["retry_after_seconds"])
        return RateLimitedError(response.status_code, code, message, details, retry_after=wait)
    return K2APIError(response.status_code, code, message, details)


class Replay:
    """Records of a replay, one dict per record as the API sends it (decimals and timestamps as exact strings).

    Iterate it once. When the stream ends, `cursor` (pass it back as `cursor=` to continue after the last record,
    over the same snapshot), `snapshot_id` and `records` hold the server's trailer. A failure the server reports
    mid-stream raises K2APIError from the iteration.
    """

    def __init__(self, client: Client, params: dict[str, str]) -> None:
        self._client = client
        self._params = params
        self.cursor: str | None = None
        self.snapshot_id: int | None = None
        self.records: int | None = None
        self.finished = False

    def __iter__(self) -> Iterator[dict[str, Any]]:
        with self._client._stream("/v1/replay", self._params) as response:
            for line in response.iter_lines():
                if not line.strip():
                    continue
                item = json.loads(line)
                if isinstance(item, dict) and "end_of_replay" in item:
                    trailer = item["end_of_replay"]
                    self.cursor, self.snapshot_id, self.records = (
                        trailer.get("cursor"),
                        trailer.get("snapshot_id"),
                        trailer.get("records"),
                    )
                    self.finished = True
                    return
                if isinstance(item, dict) and set(item) == {"error"}:
                    error = item["error"]
                    raise K2APIError(
                        response.status_code, str(error.get("code")), str(error.get("message")), error.get("details")
                    )
                yield item
        raise K2ConnectionError(
            "the replay stream ended without its end_of_replay trailer (connection cut?): "
            "replay again from the last record's timestamp"
        )


class Subscription:
    """Records of a subscription as they arrive, one dict per record as the API sends it (decimals and timestamps
    as exact strings); it never ends by itself: stop iterating when you have what you need.

    `cursor` resumes after the last record of the last complete frame handed out (the cursor moves when a frame's
    last record is yielded: stopping mid-frame and resuming repeats that frame's earlier records). `phase` is the
    last frame's: history, tail or live (caught up). A connection that drops, or that the server closes because the
    subscriber fell behind (4008), is opened again from `cursor`, after a pause that doubles from `backoff` seconds
    up to 10 s; after `reconnects` failures in a row it raises K2ConnectionError. An error the server reports (bad
    parameters, key, too many subscriptions) raises K2APIError.
    """

    def __init__(self, client: Client, params: dict[str, str], reconnects: int, backoff: float) -> None:
        self._client = client
        self._params = params
        self.reconnects = reconnects
        self.backoff = backoff
        self.cursor: str | None = params.get("cursor")
        self.phase: str | None = None
        self.resumed = 0  # connections opened again (from the cursor) after the first
        self._last_error: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[dict[str, Any]]:
        failures = opened = 0
        while True:
            try:
                with self._connect() as ws:
                    opened += 1
                    self.resumed = opened - 1
                    for message in ws:
                        *records, trailer = [json.loads(line) for line in str(message).splitlines() if line.strip()]
                        if not records and set(trailer) == {"error"}:  # the reason of the close that follows
                            self._last_error = trailer["error"]
                            continue
                        failures = 0
                        for at, record in enumerate(records):
                            if at == len(records) - 1:
                                self.cursor = trailer["cursor"]
                            yield record
                        self.cursor, self.phase = trailer["cursor"], trailer["phase"]
            except ConnectionClosed as closed:
                self._raise_reported(closed)
            except (OSError, InvalidHandshake, TimeoutError) as exc:
                if isinstance(exc, InvalidStatus):
                    raise K2APIError(exc.response.status_code, "handshake_refused", str(exc)) from exc
                if not opened:  # never reached: a wrong address, not a drop
                    raise K2ConnectionError(
                        f"cannot reach the K2 API at {self._client.base_url} ({type(exc).__name__}: {exc}): "
                        f"check base_url and that the server is running"
                    ) from exc
            failures += 1
            if failures > self.reconnects:
                raise K2ConnectionError(
                    f"the subscription at {self._client.base_url} dropped {failures} times in a row: check that the"
                    f" server runs, then subscribe again with cursor={self.cursor!r}"
                )
            time.sleep(min(self.backoff * 2 ** (failures - 1), 10.0))

    def _connect(self) -> ClientConnection:
        params = dict(self._params)
        if self.cursor is not None:
            params.pop("since", None)  # the cursor carries it
            params["cursor"] = self.cursor
        url = self._client.base_url.replace("http", "ws", 1) + "/v1/subscribe?" + urlencode(params)
        headers = {k: v for k, v in self._client._http.headers.items() if k.lower() in ("x-api-key", "authorization")}
        return ws_connect(url, additional_headers=headers, open_timeout=self._client.timeout)

    def _raise_reported(self, closed: ConnectionClosed) -> None:
        """Raise the error the server closed with; return for a drop or a too-slow close (resume from the cursor)."""
        code = closed.rcvd.code if closed.rcvd is not None else None
        if code is None or code == SLOW_SUBSCRIBER or not 4000 <= code < 5000:
            return
        error = self._last_error or {}
        raise K2APIError(
            code - 4000,
            str(error.get("code", "error")),
            str(error.get("message", closed.rcvd.reason if closed.rcvd else "")),
            error.get("details"),
        )


class Client:
    """K2 API client over httpx. Thread-safe for concurrent calls; close it (or use `with`) when done.

    `output` sets what reads return by default: "arrow" (pyarrow.Table), "pandas" or "polars" DataFrames; each read
    also takes `output=`. `rate_limit_retries` > 0 sleeps `Retry-After` and retries that many times on 429 before
    raising RateLimitedError. `transport` replaces the network (tests, custom proxies).
    """

    def __init__(
        self,
        base_url: str = "http://127.0.0.1:8000",
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        output: Output = "arrow",
        rate_limit_retries: int = 0,
        transport: httpx.BaseTransport | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if output not in ("arrow", "pandas", "polars"):
            raise ValueError(f"output must be 'arrow', 'pandas' or 'polars', not {output!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.output: Output = output
        self.rate_limit_retries = rate_limit_retries
        sent = {"User-Agent": "k2-client", **(headers or {})}
        if api_key:
            sent["X-API-Key"] = api_key
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, headers=sent, transport=transport)

    # --- market data --------------------------------------------------------------------------------------------
    def trades(
        self,
        symbols: Symbols = None,
        start: Moment = None,
        end: Moment = None,
        exchange: str | None = None,
        limit: int | None = None,
        as_of: AsOf = None,
        *,
        fresh: bool = False,
        output: Output | None = None,
    ) -> Any:
        """Trades in [start, end) in event order (timestamp, source_sequence, message_id).

        `limit` None returns every row, following the API's pages (all read from one snapshot); otherwise at most
        `limit` rows. `symbols` None means every symbol. Returns a pyarrow.Table (or `output`'s DataFrame).
        `fresh` adds what Kafka holds beyond the lake's last commit, in one page of at most `limit` (default and
        maximum 10,000) rows; not with `as_of`.
        """
        return self._rows("/v1/trades", symbols, start, end, exchange, limit, as_of, output, fresh)

    def quotes(
        self,
        symbols: Symbols = None,
        start: Moment = None,
        end: Moment = None,
        exchange: str | None = None,
        limit: int | None = None,
        as_of: AsOf = None,
        *,
        fresh: bool = False,
        output: Output | None = None,
    ) -> Any:
        """Quotes in [start, end) in event order; see `trades`."""
        return self._rows("/v1/quotes", symbols, start, end, exchange, limit, as_of, output, fresh)

    def latest(
        self,
        kind: Literal["trades", "quotes"],
        symbols: Symbols = None,
        n: int = 1,
        *,
        exchange: str | None = None,
        start: Moment = None,
        end: Moment = None,
        as_of: AsOf = None,
        fresh: bool = False,
        output: Output | None = None,
    ) -> Any:
        """The newest `n` trades or quotes per (symbol, exchange), oldest first within each; `fresh` counts what
        Kafka holds beyond the lake's last commit too."""
        if kind not in ("trades", "quotes"):
            raise ValueError(f"kind must be 'trades' or 'quotes', not {kind!r}")
        params = _params(
            symbols=_symbols(symbols),
            n=n,
            exchange=exchange,
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            as_of=_as_of(as_of),
            fresh=fresh or None,
        )
        return self._table(f"/v1/{kind}/latest", params, output)

    def bars(
        self,
        symbol: Symbols,
        interval: str = "1m",
        start: Moment = None,
        end: Moment = None,
        gap_fill: bool = False,
        *,
        exchange: str | None = None,
        tz: str | None = None,
        exclude_conditions: Sequence[str] | None = None,
        exclude_venues: Sequence[str] | None = None,
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """OHLCV bars from trades, `interval` like 1s, 1m, 15m, 1h, 1d: timestamp (bar open), open, high, low,
        close, volume, quote_volume, vwap, trade_count, partial per (symbol, exchange, bar). `gap_fill` adds empty
        bars carrying the previous close. Bars start at midnight of `tz`, by default each exchange's trading day
        (asx: Australia/Sydney, binance: UTC). Trades with a condition code in `exclude_conditions` (None: the
        exchange's default, asx: 1, 3, 9; [] counts every trade) or a venue in `exclude_venues` are left out.
        `partial` is true for a bar the range cuts (start after its open or end before its close)."""
        params = _params(
            symbols=_symbols(symbol),
            interval=interval,
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            exchange=exchange,
            gap_fill=gap_fill,
            tz=tz,
            exclude_conditions=_codes(exclude_conditions, "exclude_conditions"),
            exclude_venues=_codes(exclude_venues, "exclude_venues"),
            as_of=_as_of(as_of),
        )
        return self._table("/v1/bars", params, output)

    def asof(
        self,
        symbols: Symbols,
        start: Moment,
        end: Moment,
        *,
        exchange: str | None = None,
        quote_lookback_seconds: float | None = None,
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """Each trade in [start, end) with the quote prevailing when it printed (bid/ask, mid, spreads)."""
        if start is None or end is None:
            raise ValueError("asof needs both start and end: the join is bounded in time")
        params = _params(
            symbols=_symbols(symbols),
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            exchange=exchange,
            quote_lookback_seconds=quote_lookback_seconds,
            as_of=_as_of(as_of),
        )
        return self._table("/v1/asof", params, output)

    def book(
        self,
        symbol: str,
        at: Moment,
        depth: int = 10,
        *,
        exchange: str = "binance",
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """The order book of `symbol` at `at` (to the microsecond): rows side (BID, then ASK), level (1 = best),
        price, quantity, each with book_update_id, snapshot_update_id, snapshot_timestamp, updates_applied,
        book_exact and the first hole's gap_first_update_id / gap_last_update_id when it is not exact."""
        if at is None:
            raise ValueError("book needs `at`: the moment of the book")
        params = _params(symbol=symbol, at=_moment(at, "at"), depth=depth, exchange=exchange, as_of=_as_of(as_of))
        return self._table("/v1/book", params, output)

    def book_series(
        self,
        symbol: str,
        start: Moment,
        end: Moment,
        every: str = "1s",
        depth: int = 10,
        *,
        exchange: str = "binance",
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """The top of `symbol`'s book at every `every` boundary (1s .. 1d) in [start, end): timestamp, best bid/ask
        price and quantity, mid, spread, bid_depth/ask_depth and imbalance over `depth` levels, book_update_id,
        book_exact (k2.query.book_series documents each column)."""
        if start is None or end is None:
            raise ValueError("book_series needs both start and end")
        params = _params(
            symbol=symbol,
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            every=every,
            depth=depth,
            exchange=exchange,
            as_of=_as_of(as_of),
        )
        return self._table("/v1/book/series", params, output)

    def trades_with_book(
        self,
        symbol: str,
        start: Moment,
        end: Moment,
        depth: int = 10,
        *,
        exchange: str = "binance",
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """Each trade of `symbol` in [start, end) with the book that stood strictly before it: the columns of
        `asof`'s trades, then those of `book_series` (without timestamp)."""
        if start is None or end is None:
            raise ValueError("trades_with_book needs both start and end: the join is bounded in time")
        params = _params(
            symbol=symbol,
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            depth=depth,
            exchange=exchange,
            as_of=_as_of(as_of),
        )
        return self._table("/v1/trades/with-book", params, output)

    def daily_summary(
        self,
        symbols: Symbols = None,
        start: Moment = None,
        end: Moment = None,
        *,
        exchange: str | None = None,
        tz: str | None = None,
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """Open, high, low, close, volume, vwap and trade count per (date, symbol, exchange); days are `tz` days."""
        params = _params(
            symbols=_symbols(symbols),
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            exchange=exchange,
            tz=tz,
            as_of=_as_of(as_of),
        )
        return self._table("/v1/summary/daily", params, output)

    # --- catalog ------------------------------------------------------------------------------------------------
    def symbols(
        self,
        kind: Literal["trades", "quotes"] = "trades",
        *,
        exchange: str | None = None,
        start: Moment = None,
        end: Moment = None,
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """One row per (symbol, exchange) in the table: first_seen, last_seen and count."""
        params = _params(
            kind=kind, exchange=exchange, start=_moment(start, "start"), end=_moment(end, "end"), as_of=_as_of(as_of)
        )
        return self._table("/v1/symbols", params, output)

    def snapshots(
        self,
        table: Literal["trades", "quotes", "reference_data"] = "trades",
        *,
        as_of: AsOf = None,
        output: Output | None = None,
    ) -> Any:
        """The table's snapshots (commits), oldest first; any snapshot_id or committed_at is a valid `as_of`."""
        return self._table("/v1/snapshots", _params(table=table, as_of=_as_of(as_of)), output)

    def stats(self, *, as_of: AsOf = None, output: Output | None = None) -> Any:
        """One row per table: snapshot_id, committed_at, rows, data_files, bytes, snapshots, partitions."""
        return self._table("/v1/stats", _params(as_of=_as_of(as_of)), output)

    def health(self) -> dict[str, Any]:
        """The server's /ready answer (status and tables) — raises K2APIError 503 while the lake is unreachable."""
        return dict(self._request("GET", "/ready", {}).json())

    # --- replay ---------------------------------------------------------------------------------------------------
    def replay(
        self,
        kind: Literal["trades", "quotes"] = "trades",
        symbols: Symbols = None,
        start: Moment = None,
        end: Moment = None,
        *,
        exchange: str | None = None,
        speed: float = 0.0,
        cursor: str | None = None,
        as_of: AsOf = None,
    ) -> Replay:
        """Records in event order as they stream (NDJSON), paced by `speed` (1 = as recorded, 0 = no waiting).

        Returns a Replay: iterate it for dicts; afterwards its `cursor` continues where it stopped.
        """
        params = _params(
            kind=kind,
            symbols=_symbols(symbols),
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            exchange=exchange,
            speed=speed,
            cursor=cursor,
            as_of=_as_of(as_of),
        )
        return Replay(self, params)

    def subscribe(
        self,
        kind: Literal["trades", "quotes", "bars"] = "trades",
        symbols: Symbols = None,
        *,
        exchange: str | None = None,
        since: Moment = None,
        cursor: str | None = None,
        interval: str | None = None,
        reconnects: int = 10,
        backoff: float = 0.5,
    ) -> Subscription:
        """Records as they arrive over the WebSocket /v1/subscribe: with `since`, the lake's from then on first, then
        what Kafka holds beyond the lake, then live ones (each message_id once); without, live from now. `cursor`:
        a Subscription's `cursor`, to resume after it. Returns a Subscription: iterate it for dicts; it resumes from
        its cursor by itself when the connection drops.

        kind="bars" with `interval` (e.g. "1s", "1m") and `symbols`: bars built from the trades, the forming bar
        each time it changes (`final` false) and the bar once closed (`final` true, the values /v1/bars gives).
        """
        if isinstance(reconnects, bool) or not isinstance(reconnects, int) or reconnects < 0:
            raise ValueError(f"reconnects must be a whole number >= 0, got {reconnects!r}")
        if (kind == "bars") != (interval is not None):
            raise ValueError("interval goes with kind='bars', and bars need one (e.g. interval='1m')")
        params = _params(
            kind=kind,
            symbols=_symbols(symbols),
            exchange=exchange,
            since=_moment(since, "since"),
            cursor=cursor,
            interval=interval,
        )
        return Subscription(self, params, reconnects, backoff)

    # --- plumbing -------------------------------------------------------------------------------------------------
    def _rows(
        self,
        path: str,
        symbols: Symbols,
        start: Moment,
        end: Moment,
        exchange: str | None,
        limit: int | None,
        as_of: AsOf,
        output: Output | None,
        fresh: bool = False,
    ) -> Any:
        """Follow `X-K2-Next-Cursor` until the rows run out or `limit` is reached; one Arrow table. A fresh read
        is one page (the API issues no cursor for it)."""
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ValueError(f"limit must be a positive integer or None (every row), got {limit!r}")
        if fresh and as_of is not None:
            raise ValueError("fresh reads the newest data: drop as_of, or fresh")
        base = _params(
            symbols=_symbols(symbols),
            start=_moment(start, "start"),
            end=_moment(end, "end"),
            exchange=exchange,
            as_of=_as_of(as_of),
            fresh=fresh or None,
        )
        pages: list[pa.Table] = []
        got, cursor, snapshot = 0, None, None
        while True:
            size = MAX_PAGE_ROWS if limit is None else min(MAX_PAGE_ROWS, limit - got)
            params = {**base, "limit": str(size), **({"cursor": cursor} if cursor else {})}
            response = self._request("GET", path, {**params, "format": "arrow"})
            page = _read_arrow(response)
            pages.append(page)
            got += page.num_rows
            snapshot = snapshot or response.headers.get(SNAPSHOT_HEADER)
            cursor = response.headers.get(NEXT_CURSOR_HEADER)
            if not cursor or page.num_rows == 0 or (limit is not None and got >= limit):
                break
        table = pa.concat_tables(pages) if len(pages) > 1 else pages[0]
        return _convert(_with_snapshot(table, snapshot), output or self.output)

    def _table(self, path: str, params: dict[str, str], output: Output | None) -> Any:
        response = self._request("GET", path, {**params, "format": "arrow"})
        table = _with_snapshot(_read_arrow(response), response.headers.get(SNAPSHOT_HEADER))
        return _convert(table, output or self.output)

    def _request(self, method: str, path: str, params: dict[str, str]) -> httpx.Response:
        for attempt in range(self.rate_limit_retries + 1):
            try:
                response = self._http.request(method, path, params=params)
            except httpx.TransportError as exc:
                raise K2ConnectionError(
                    f"cannot reach the K2 API at {self.base_url} ({type(exc).__name__}: {exc}): "
                    f"check base_url and that the server is running"
                ) from exc
            if response.is_success:
                return response
            error = _error_from(response)
            if isinstance(error, RateLimitedError) and attempt < self.rate_limit_retries:
                time.sleep(error.retry_after if error.retry_after is not None else 1.0)
                continue
            raise error
        raise AssertionError("unreachable")  # the loop returns or raises

    def _stream(self, path: str, params: dict[str, str]) -> _Stream:
        return _Stream(self, path, params)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class _Stream:
    """A streamed GET whose error status becomes a K2APIError before any line is read."""

    def __init__(self, client: Client, path: str, params: dict[str, str]) -> None:
        self._client, self._path, self._params = client, path, params
        self._context: Any = None

    def __enter__(self) -> httpx.Response:
        try:
            self._context = self._client._http.stream("GET", self._path, params=self._params)
            response = self._context.__enter__()
        except httpx.TransportError as exc:
            raise K2ConnectionError(
                f"cannot reach the K2 API at {self._client.base_url} ({type(exc).__name__}: {exc}): "
                f"check base_url and that the server is running"
            ) from exc
        if not response.is_success:
            response.read()
            error = _error_from(response)
            self._context.__exit__(None, None, None)
            raise error
        return response

    def __exit__(self, *exc_info: object) -> None:
        self._context.__exit__(*exc_info)


def _read_arrow(response: httpx.Response) -> pa.Table:
    media = response.headers.get("content-type", "").split(";")[0].strip()
    if media != ARROW_MEDIA_TYPE:
        raise K2APIError(
            response.status_code,
            "unexpected_content",
            f"asked for an Arrow IPC stream, got {media or 'no content type'}: is {response.url} a K2 API?",
        )
    try:
        return pa.ipc.open_stream(response.content).read_all()
    except pa.ArrowInvalid as exc:
        raise K2APIError(
            response.status_code, "unexpected_content", f"the Arrow stream did not parse ({exc}): retry the request"
        ) from exc


def _with_snapshot(table: pa.Table, snapshot: str | None) -> pa.Table:
    if not snapshot:
        return table
    return table.replace_schema_metadata({**(table.schema.metadata or {}), SNAPSHOT_METADATA: snapshot.encode()})
